"""Helpers shared by the test modules: safetensors and .wbs builders and the round-trip checker.

`assert_roundtrip` is the one place that states what a round trip through wcodec must
preserve. Every test that encodes and decodes a model goes through it.

The .wbs builder serializes fields itself, following docs/bitstream.md, instead of calling
the container writer. Tests can therefore write fields that the writer never would
(redundant varint bytes, unknown codes, wrong CRCs), and compare the writer's bytes
against an independent rendering of the format.
"""

from __future__ import annotations

import fnmatch
import math
import os
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

import wcodec
from wcodec.formats import container
from wcodec.formats.dtypes import dtype_by_torch, tensor_from_bytes, tensor_to_bytes
from wcodec.formats.safetensors_io import SafetensorsReader, SafetensorsWriter, TensorInfo

TESTS_DIR = Path(__file__).resolve().parent
DATA_DIR = TESTS_DIR / "data"
PNET = DATA_DIR / "facenet_pnet.safetensors"
ONET = DATA_DIR / "facenet_onet.safetensors"

MODELS_DIR_VARIABLE = "WCODEC_MODELS_DIR"
DEFAULT_QP = -32
FINE_QP_OFFSET = -24  # floating tensors with fewer than two dimensions use qp - 24
MAX_LEVEL = 2**50

MODE_RAW = 0
MODE_QUANTIZED = 1
MODE_INTEGER = 2
MODE_ALIAS = 3
FRAME_TRANSFORM = 4  # frame_mode of an intra frame coded as DCT coefficients

DTYPE_CODES = {
    "BOOL": 1, "U8": 2, "I8": 3, "U16": 4, "I16": 5, "U32": 6, "I32": 7, "U64": 8,
    "I64": 9, "F16": 10, "BF16": 11, "F32": 12, "F64": 13, "F8_E4M3": 14, "F8_E5M2": 15,
}  # fmt: skip
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2")

# (mantissa bits, exponent of the smallest normal number) of each floating dtype.
FLOAT_FORMATS = {
    "F64": (52, -1022),
    "F32": (23, -126),
    "F16": (10, -14),
    "BF16": (7, -126),
    "F8_E4M3": (3, -6),
    "F8_E5M2": (2, -14),
}


# ---------------------------------------------------------------- model folders


def shared_models_dir() -> Path | None:
    """Return the folder of real models, or None when it does not exist.

    WCODEC_MODELS_DIR overrides the default, ../shared/models relative to the repository.
    """
    override = os.environ.get(MODELS_DIR_VARIABLE)
    folder = Path(override) if override else Path(__file__).resolve().parents[2] / "shared" / "models"
    return folder if folder.is_dir() else None


def shared_model_names() -> list[str]:
    """Return the safetensors file names in the shared models folder, sorted; [] without it."""
    folder = shared_models_dir()
    if folder is None:
        return []
    return sorted(path.name for path in folder.glob("*.safetensors"))


# ---------------------------------------------------------------- safetensors files


def write_safetensors(path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    """Write `tensors` to a safetensors file whose header lists them in dict order."""
    infos = [TensorInfo(name, dtype_by_torch(t.dtype).name, tuple(t.shape)) for name, t in tensors.items()]
    with SafetensorsWriter(path, infos, metadata) as writer:
        for name, tensor in tensors.items():
            writer.write(name, tensor_to_bytes(tensor))
    return Path(path)


def read_safetensors(path) -> tuple[dict[str, str] | None, dict[str, torch.Tensor]]:
    """Return the metadata and the tensors of a safetensors file, in header order."""
    with SafetensorsReader(path) as reader:
        return reader.metadata, {info.name: reader.read(info.name) for info in reader.tensors}


def tensor_of_bytes(data: bytes, dtype_name: str, shape: tuple[int, ...]) -> torch.Tensor:
    """Return a tensor of `dtype_name` holding exactly the little-endian bytes `data`.

    torch.Tensor.clone rewrites BOOL bytes other than 0 and 1, so this helper never clones.
    """
    return tensor_from_bytes(data, dtype_name, shape)


def tiny_model(seed: int = 0) -> dict[str, torch.Tensor]:
    """Return a small float32 model: a 4-D conv, its bias, a 2-D linear layer and its bias."""
    generator = torch.Generator().manual_seed(seed)
    return {
        "conv.weight": 0.1 * torch.randn(8, 3, 3, 3, generator=generator),
        "conv.bias": 0.01 * torch.randn(8, generator=generator),
        "fc.weight": 0.05 * torch.randn(10, 72, generator=generator),
        "fc.bias": 0.01 * torch.randn(10, generator=generator),
    }


# ---------------------------------------------------------------- expected precision


def float_spacing(values: np.ndarray, dtype_name: str) -> np.ndarray:
    """Return the distance from each |value| to the next larger number of the floating dtype."""
    mantissa_bits, min_exponent = FLOAT_FORMATS[dtype_name]
    magnitude = np.abs(np.asarray(values, dtype=np.float64))
    _, exponent = np.frexp(magnitude)  # magnitude = fraction * 2**exponent, fraction in [0.5, 1)
    exponent = np.maximum(exponent - 1, min_exponent)
    return np.ldexp(1.0, exponent - mantissa_bits)


def qp_step(qp: int) -> float:
    """Return the quantization step of docs/bitstream.md, computed here independently."""
    return (4 + qp % 4) * 2.0 ** (qp // 4 - 2)


def expected_qp(shape: tuple[int, ...], qp: int) -> int:
    """Return the qp the encoder must use for a floating tensor of `shape` at the user's `qp`."""
    return qp if len(shape) >= 2 else qp + FINE_QP_OFFSET


def quantization_error_bound(original: np.ndarray, restored: np.ndarray, dtype_name: str, step: float,
                             error_steps: float = 0.5) -> np.ndarray:
    """Return the largest allowed |original - restored| per element.

    The decoder rounds the reconstruction (within `error_steps` steps of the original, 0.5
    for the uniform quantizer) to the dtype, which adds half a spacing of the dtype.
    torch 2.13 rounds float64 to the 8- and 16-bit dtypes through float32, so that double
    rounding may add half a float32 spacing.
    """
    larger = np.maximum(np.abs(original), np.abs(restored))
    bound = error_steps * step + float_spacing(larger, dtype_name) / 2
    if dtype_name not in ("F64", "F32"):
        bound = bound + float_spacing(larger, "F32") / 2
    return bound * (1 + 1e-12)


def matches_keep(name: str, patterns) -> bool:
    """Return whether `name` matches a --keep pattern: a whole-name glob or regular expression."""
    for pattern in patterns:
        if fnmatch.fnmatchcase(name, pattern):
            return True
        try:
            if re.fullmatch(pattern, name):
                return True
        except re.error:
            pass
    return False


def must_be_lossless(name: str, tensor: torch.Tensor, keep) -> bool:
    """Return whether wcodec must store `tensor` bit-exact: integers, bool, --keep, NaN or Inf."""
    if not tensor.dtype.is_floating_point:
        return True
    if matches_keep(name, keep):
        return True
    return tensor.numel() > 0 and not bool(torch.isfinite(tensor.to(torch.float64)).all())


# ---------------------------------------------------------------- the round-trip checker


def _fresh_directory(tmp_path: Path) -> Path:
    """Return a new empty directory under `tmp_path`, so one test can round-trip many times."""
    index = 0
    while (tmp_path / f"roundtrip{index}").exists():
        index += 1
    folder = tmp_path / f"roundtrip{index}"
    folder.mkdir()
    return folder


def _check_record(name, original, record, records_by_index, keep, qp):
    """Check that the coding mode and qp of `record` (or of its alias target) fit `original`."""
    if record.coding_mode == MODE_ALIAS:
        target = records_by_index[record.alias_of]
        assert target.coding_mode != MODE_ALIAS, f"{name}: alias of an alias"
        assert target.dtype == record.dtype, f"{name}: alias target dtype differs"
        assert tuple(target.shape) == tuple(record.shape), f"{name}: alias target shape differs"
        record = target

    dtype_name = dtype_by_torch(original.dtype).name
    if must_be_lossless(name, original, keep):
        assert record.coding_mode in (MODE_RAW, MODE_INTEGER), f"{name}: lossless tensor coded as {record.mode_name}"
        return
    if record.coding_mode == MODE_QUANTIZED:
        assert dtype_name in FLOAT_DTYPES, f"{name}: {dtype_name} tensor coded as quantized"
        # NOTE: the qp of a tensor without elements is not checked, because the encoder
        # writes the user's qp there even for fewer than two dimensions (test_empty_vector_qp).
        if original.numel():
            assert record.qp == expected_qp(tuple(original.shape), qp), f"{name}: qp {record.qp}"


def assert_roundtrip(tmp_path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None,
                     **encode_options) -> dict:
    """Encode `tensors` to .wbs, decode them back twice and check everything wcodec promises.

    Writes a safetensors file (header in dict order), encodes it with `wcodec.encode_file`,
    decodes it with `wcodec.decode_file` and with `wcodec.load`, and checks that names,
    order, dtypes, shapes and metadata survive (None and {} are different); that integer,
    bool, --keep and NaN/Inf tensors come back bit-exact; that quantized floating tensors
    come back within step / 2 plus half a spacing of their dtype, with the step of the
    record's qp; that both decoders agree bit for bit; and that a second encode writes
    identical bytes. Returns {"header", "wbs", "restored"} for further checks: the
    parsed header, the path of the .wbs file and the tensors that `wcodec.load` returned.
    """
    folder = _fresh_directory(Path(tmp_path))
    source = write_safetensors(folder / "model.safetensors", tensors, metadata)
    keep = tuple(encode_options.get("keep", ()))
    qp = int(encode_options.get("qp", DEFAULT_QP))
    # NOTE: the step / 2 bound holds for the default uniform quantizer without RDOQ. With
    # quantizer="dependent" or rdoq=True the encoder trades distortion for rate and promises
    # no bound per weight, so the check allows 2 steps (O-Net measured up to 1.65).
    uniform = encode_options.get("quantizer", "uniform") == "uniform" and not encode_options.get("rdoq", False)
    error_steps = 0.5 if uniform else 2.0

    wbs = folder / "model.wbs"
    header = wcodec.encode_file(source, wbs, **encode_options)
    second = folder / "second.wbs"
    wcodec.encode_file(source, second, **encode_options)
    assert wbs.read_bytes() == second.read_bytes(), "two encodes of one input differ"

    decoded_path = folder / "restored.safetensors"
    wcodec.decode_file(wbs, decoded_path)
    restored_metadata, restored = read_safetensors(decoded_path)
    loaded = wcodec.load(wbs)
    assert sorted(os.listdir(folder)) == ["model.safetensors", "model.wbs", "restored.safetensors", "second.wbs"]

    names = list(tensors)
    assert [record.name for record in header.tensors] == names
    assert list(restored) == names
    assert list(loaded) == names
    assert restored_metadata == metadata
    assert (restored_metadata is None) == (metadata is None)
    assert header.metadata == metadata
    assert (header.metadata is None) == (metadata is None)

    records_by_index = dict(enumerate(header.tensors))
    for record, (name, original) in zip(header.tensors, tensors.items()):
        from_file = restored[name]
        from_load = loaded[name]
        dtype_name = dtype_by_torch(original.dtype).name
        assert record.dtype == dtype_name, name
        assert tuple(record.shape) == tuple(original.shape), name
        assert from_file.dtype == original.dtype, name
        assert from_load.dtype == original.dtype, name
        assert tuple(from_file.shape) == tuple(original.shape), name
        assert tuple(from_load.shape) == tuple(original.shape), name
        assert tensor_to_bytes(from_load) == tensor_to_bytes(from_file), f"{name}: decode_file and load differ"

        _check_record(name, original, record, records_by_index, keep, qp)
        coded = records_by_index[record.alias_of] if record.coding_mode == MODE_ALIAS else record
        if must_be_lossless(name, original, keep) or coded.coding_mode in (MODE_RAW, MODE_INTEGER):
            assert tensor_to_bytes(from_file) == tensor_to_bytes(original), f"{name}: not bit-exact"
            continue

        x = original.to(torch.float64).numpy().reshape(-1)
        y = from_file.to(torch.float64).numpy().reshape(-1)
        if x.size == 0:
            continue
        assert np.isfinite(y).all(), f"{name}: finite weights decoded to NaN or Inf"
        step = qp_step(coded.qp)
        error = np.abs(x - y)
        # A transform frame quantizes DCT coefficients: each coefficient within the bound,
        # so a weight, a sum of K coefficients with unit-norm weights, within sqrt(K) times it.
        record_steps = error_steps
        if coded.coding_mode == MODE_QUANTIZED and coded.frame_mode == FRAME_TRANSFORM:
            record_steps = error_steps * math.sqrt(math.prod(coded.shape[2:])) * 1.001
        bound = quantization_error_bound(x, y, dtype_name, step, record_steps)
        worst = int(np.argmax(error - bound))
        assert error[worst] <= bound[worst], (
            f"{name}: element {worst} is {x[worst]!r}, decoded {y[worst]!r}; error {error[worst]:.3g} exceeds "
            f"{bound[worst]:.3g} at qp {coded.qp}")

    return {"header": header, "wbs": wbs, "restored": loaded}


def record_frame_encodes(monkeypatch) -> list[tuple[int, int]]:
    """Return a list that gets (frame_mode, rows) of every later frame_coder.encode_frame call."""
    from wcodec.codec import frame_coder

    calls = []
    original = frame_coder.encode_frame

    def recording_encode_frame(values, step, frame_mode, *args, **kwargs):
        calls.append((frame_mode, values.shape[0]))
        return original(values, step, frame_mode, *args, **kwargs)

    monkeypatch.setattr(frame_coder, "encode_frame", recording_encode_frame)
    return calls


# ---------------------------------------------------------------- .wbs builder


def varint(value: int) -> bytes:
    """Return the shortest LEB128 encoding of an unsigned integer."""
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def svarint(value: int) -> bytes:
    """Return the zigzag varint of a signed integer: 2n for n >= 0, -2n - 1 below."""
    return varint(2 * value if value >= 0 else -2 * value - 1)


def string(text: str | bytes) -> bytes:
    """Return a length-prefixed string field; bytes are written as given (for invalid UTF-8)."""
    data = text.encode("utf-8") if isinstance(text, str) else text
    return varint(len(data)) + data


def field(value, encode) -> bytes:
    """Encode `value` with `encode`, unless it is already bytes, which are used verbatim."""
    return value if isinstance(value, (bytes, bytearray)) else encode(value)


def shared_name(name: str, previous_name: str) -> bytes:
    """Return a version 2 name field: the byte count shared with the previous name, then the rest."""
    data, previous = name.encode("utf-8"), previous_name.encode("utf-8")
    shared = 0
    while shared < min(len(data), len(previous)) and data[shared] == previous[shared]:
        shared += 1
    return varint(shared) + varint(len(data) - shared) + data[shared:]


def record_bytes(name, dtype, shape, mode, *, qp=0, quantizer=0, frame_mode=0, refs=(), pred_gain=0,
                 alias_of=0, payload_offset=0, payload_length=0, payload_crc32=0,
                 previous_name: str | None = None) -> bytes:
    """Return one tensor record; `dtype` is a name or a wire code, any field may be raw bytes.

    The quantized mode fields are qp, quantizer, frame_mode, refs and pred_gain, in the
    order that wcodec/formats/container.py writes them. The record follows version 1, or
    version 2 when `previous_name` (the name of the record before, "" for the first) is
    given: the name shares a prefix with it, and payload_offset is left out.
    """
    code = DTYPE_CODES[dtype] if isinstance(dtype, str) else dtype
    if isinstance(name, bytes):
        out = name
    elif previous_name is None:
        out = string(name)
    else:
        out = shared_name(name, previous_name)
    out += bytes([code])
    if isinstance(shape, (bytes, bytearray)):
        out += shape
    else:
        out += bytes([len(shape)]) + b"".join(varint(dim) for dim in shape)
    out += bytes([mode])
    if mode == MODE_QUANTIZED:
        out += field(qp, svarint) + bytes([quantizer, frame_mode])
        out += field(refs, lambda items: varint(len(items)) + b"".join(varint(i) for i in items))
        out += field(pred_gain, varint)
    elif mode == MODE_ALIAS:
        out += field(alias_of, varint)
    if previous_name is None:
        out += field(payload_offset, varint)
    out += field(payload_length, varint)
    out += struct.pack("<I", payload_crc32)
    return out


def header_bytes(records: list[bytes], metadata: dict[str, str] | None = None,
                 order=None) -> bytes:
    """Return a header: the metadata fields, the tensor count, the record bytes and the coding order.

    `order` lists record indexes (default: record order); bytes are used verbatim.
    """
    if metadata is None:
        out = b"\x00"
    else:
        out = b"\x01" + varint(len(metadata))
        for key, value in metadata.items():
            out += string(key) + string(value)
    if order is None:
        order = range(len(records))
    coding_order = field(order, lambda items: b"".join(varint(i) for i in items))
    return out + varint(len(records)) + b"".join(records) + coding_order


def wbs_bytes(header: bytes, payload_area: bytes = b"", *, magic=container.MAGIC, version=1, flags=0,
              header_length=None, header_crc32=None) -> bytes:
    """Return a whole .wbs file: preamble, header and payload area, with correct lengths by default."""
    if header_length is None:
        header_length = len(header)
    if header_crc32 is None:
        header_crc32 = zlib.crc32(header)
    return struct.pack("<8sHHII", magic, version, flags, header_length, header_crc32) + header + payload_area


def build_wbs(tensors: list[dict], metadata: dict[str, str] | None = None, trailing: bytes = b"",
              order=None, version: int = 1) -> bytes:
    """Return a .wbs file from record dicts with a "payload" entry; offsets, lengths, CRCs follow.

    Each dict contains the keyword arguments of `record_bytes` plus "payload" (bytes, placed in
    list order). Explicit payload_offset, payload_length or payload_crc32 entries win over
    the computed ones, so a test can break one of them on purpose. Names follow the
    layout of `version`.
    """
    records = []
    area = b""
    previous_name = ""
    for entry in tensors:
        entry = dict(entry)
        payload = entry.pop("payload", b"")
        entry.setdefault("payload_offset", len(area))
        entry.setdefault("payload_length", len(payload))
        entry.setdefault("payload_crc32", zlib.crc32(payload))
        if version >= 2:
            entry.setdefault("previous_name", previous_name)
            previous_name = entry["name"] if isinstance(entry["name"], str) else ""
        records.append(record_bytes(**entry))
        area += payload
    return wbs_bytes(header_bytes(records, metadata, order), area + trailing, version=version)


def split_wbs(data: bytes) -> tuple[bytes, bytes, bytes]:
    """Return (preamble, header, payload area) of a .wbs file, trusting its header_length."""
    header_length = struct.unpack_from("<I", data, 12)[0]
    return data[:20], data[20:20 + header_length], data[20 + header_length:]


def refresh_header_crc(data: bytes) -> bytes:
    """Return `data` with header_crc32 recomputed, after a test edited header bytes."""
    preamble, header, area = split_wbs(data)
    return preamble[:16] + struct.pack("<I", zlib.crc32(header)) + header + area

"""Tests for wcodec.formats: dtype conversions, the safetensors reader and writer, atomic output."""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from wcodec.errors import InputError, WbsFormatError
from wcodec.formats.atomic import atomic_output
from wcodec.formats.dtypes import (
    DTYPES,
    dtype_by_name,
    dtype_by_torch,
    dtype_by_wire_code,
    float64_to_tensor,
    int64_to_tensor,
    tensor_byte_view,
    tensor_from_bytes,
    tensor_to_bytes,
    tensor_to_float64,
    tensor_to_int64,
)
from wcodec.formats.safetensors_io import (
    MAX_HEADER_BYTES,
    SafetensorsReader,
    SafetensorsWriter,
    TensorInfo,
)

DATA_DIR = Path(__file__).parent / "data"
REAL_MODELS = ["facenet_pnet.safetensors", "facenet_onet.safetensors"]
DTYPE_NAMES = [dtype.name for dtype in DTYPES]

# Bit patterns that a careless conversion would change, as little-endian bytes per dtype:
# NaNs with payloads (signalling ones included), infinities, negative zero, extremes.
SPECIAL_BYTES = {
    "BOOL": [b"\x00", b"\x01"],
    "U8": [b"\xff"],
    "I8": [b"\x80", b"\x7f"],
    "U16": [b"\xff\xff"],
    "I16": [b"\x00\x80"],
    "U32": [b"\xff\xff\xff\xff"],
    "I32": [b"\x00\x00\x00\x80"],
    "U64": [b"\xff" * 8, b"\x00" * 7 + b"\x80"],
    "I64": [b"\x00" * 7 + b"\x80", b"\xff" * 7 + b"\x7f"],
    "F16": [b"\x01\x7c", b"\x01\x7e", b"\x00\xfc", b"\x00\x80"],
    "BF16": [b"\x81\x7f", b"\xc1\x7f", b"\x80\xff", b"\x00\x80"],
    "F32": [b"\x01\x00\x80\x7f", b"\x45\x23\xc1\xff", b"\x00\x00\x80\x7f", b"\x00\x00\x00\x80"],
    "F64": [b"\x01\x00\x00\x00\x00\x00\xf0\x7f", b"\x00" * 7 + b"\x80"],
    "F8_E4M3": [b"\x7f", b"\xff", b"\x80", b"\x7e"],
    "F8_E5M2": [b"\x7d", b"\x7e", b"\x7c", b"\xfc", b"\x80"],
}


def random_bytes(dtype_name: str, count: int, seed: int = 0) -> bytes:
    """Return `count` elements of random bit patterns, starting with the special ones."""
    itemsize = dtype_by_name(dtype_name).itemsize
    rng = np.random.default_rng(seed)
    if dtype_name == "BOOL":
        data = rng.integers(0, 2, size=count, dtype=np.uint8).tobytes()
    else:
        data = rng.integers(0, 256, size=count * itemsize, dtype=np.uint8).tobytes()
    special = b"".join(SPECIAL_BYTES[dtype_name])[: count * itemsize]
    return special + data[len(special) :]


def write_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None) -> None:
    infos = [TensorInfo(name, dtype_by_torch(t.dtype).name, tuple(t.shape)) for name, t in tensors.items()]
    with SafetensorsWriter(path, infos, metadata) as writer:
        for name, tensor in tensors.items():
            writer.write(name, tensor_to_bytes(tensor))


def header_of(path: Path) -> tuple[int, bytes]:
    """Return the header length field and the raw header bytes of a safetensors file."""
    blob = path.read_bytes()
    length = int.from_bytes(blob[:8], "little")
    return length, blob[8 : 8 + length]


def build_file(header: object, data: bytes = b"", *, raw_header: bytes | None = None) -> bytes:
    """Return the bytes of a safetensors file with the given header object or raw header bytes."""
    encoded = raw_header if raw_header is not None else json.dumps(header).encode("utf-8")
    return len(encoded).to_bytes(8, "little") + encoded + data


def entry(dtype: str, shape: list, offsets: list) -> dict:
    return {"dtype": dtype, "shape": shape, "data_offsets": offsets}


# ---------------------------------------------------------------- dtypes


def test_wire_codes_are_fixed():
    expected = {
        "BOOL": 1, "U8": 2, "I8": 3, "U16": 4, "I16": 5, "U32": 6, "I32": 7, "U64": 8,
        "I64": 9, "F16": 10, "BF16": 11, "F32": 12, "F64": 13, "F8_E4M3": 14, "F8_E5M2": 15,
    }  # fmt: skip
    assert {dtype.name: dtype.wire_code for dtype in DTYPES} == expected


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_NAMES)
def test_dtype_table_matches_torch(dtype):
    assert dtype.torch_dtype.itemsize == dtype.itemsize
    assert dtype.torch_dtype.is_floating_point == (dtype.kind == "float")
    assert dtype_by_name(dtype.name) is dtype
    assert dtype_by_wire_code(dtype.wire_code) is dtype
    assert dtype_by_torch(dtype.torch_dtype) is dtype


def test_dtype_lookup_errors_name_value():
    with pytest.raises(InputError, match="'C64'"):
        dtype_by_name("C64")
    with pytest.raises(WbsFormatError, match="wire code 99"):
        dtype_by_wire_code(99)
    with pytest.raises(InputError, match="complex64"):
        dtype_by_torch(torch.complex64)


@pytest.mark.parametrize("shape", [(), (0,), (4, 0, 3), (3, 5)], ids=str)
@pytest.mark.parametrize("dtype_name", DTYPE_NAMES)
def test_bytes_round_trip_exact(dtype_name, shape):
    count = int(np.prod(shape))
    data = random_bytes(dtype_name, count)
    tensor = tensor_from_bytes(data, dtype_name, shape)
    assert tensor.dtype == dtype_by_name(dtype_name).torch_dtype
    assert tuple(tensor.shape) == shape
    assert tensor_to_bytes(tensor) == data
    assert tensor_to_bytes(tensor_from_bytes(memoryview(data), dtype_name, shape)) == data


def test_tensor_to_bytes_is_little_endian_c_order():
    tensor = torch.tensor([[1, 2], [3, 4]], dtype=torch.int16).t()
    assert tensor_to_bytes(tensor) == b"\x01\x00\x03\x00\x02\x00\x04\x00"


def test_tensor_to_bytes_odd_strides():
    # torch counts these one-element tensors as contiguous, but their stride is not 1.
    assert tensor_to_bytes(torch.tensor(2.0).expand(1)) == b"\x00\x00\x00\x40"
    assert tensor_to_bytes(torch.arange(10.0)[::5][:1]) == b"\x00\x00\x00\x00"


def test_tensor_from_bytes_length_mismatch():
    with pytest.raises(ValueError, match=r"data has 20 bytes but shape \[2, 3\] of F32 needs 24"):
        tensor_from_bytes(b"\x00" * 20, "F32", (2, 3))


def test_tensor_from_bytes_copies_buffer():
    buffer = bytearray(b"\x01\x00")
    tensor = tensor_from_bytes(buffer, "I16", (1,))
    buffer[0] = 9
    assert tensor.item() == 1


@pytest.mark.parametrize("shape", [(), (0,), (3, 5)], ids=str)
@pytest.mark.parametrize("dtype_name", [d.name for d in DTYPES if d.kind == "float"])
def test_float64_round_trip_non_nan(dtype_name, shape):
    data = random_bytes(dtype_name, int(np.prod(shape)), seed=1)
    tensor = tensor_from_bytes(data, dtype_name, shape)
    values = tensor_to_float64(tensor)
    assert values.dtype == np.float64
    assert values.shape == shape
    restored = float64_to_tensor(values, dtype_name, shape)
    assert restored.dtype == tensor.dtype
    not_nan = ~torch.isnan(tensor)
    # Compare bit patterns, so that -0.0 and 0.0 count as different.
    assert tensor_to_bytes(restored[not_nan]) == tensor_to_bytes(tensor[not_nan])
    assert torch.equal(torch.isnan(restored), torch.isnan(tensor))


def test_tensor_to_float64_returns_copy():
    tensor = torch.ones(3, dtype=torch.float64)
    values = tensor_to_float64(tensor)
    values[0] = 5.0
    assert tensor[0].item() == 1.0


@pytest.mark.parametrize("dtype_name", [d.name for d in DTYPES if d.kind == "float"])
def test_tensor_to_float64_signalling_nan_no_warning(dtype_name):
    tensor = tensor_from_bytes(b"".join(SPECIAL_BYTES[dtype_name]), dtype_name,
                               (len(SPECIAL_BYTES[dtype_name]),))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        values = tensor_to_float64(tensor)

    assert values.dtype == np.float64
    assert np.array_equal(np.isnan(values), torch.isnan(tensor).numpy())


@pytest.mark.parametrize("dtype_name", DTYPE_NAMES)
def test_tensor_byte_view_matches_bytes(dtype_name):
    tensor = tensor_from_bytes(random_bytes(dtype_name, 12, seed=3), dtype_name, (3, 4))
    view = tensor_byte_view(tensor)

    assert view.dtype == np.uint8
    assert view.tobytes() == tensor_to_bytes(tensor)
    assert tensor_byte_view(tensor[:, ::2]).tobytes() == tensor_to_bytes(tensor[:, ::2])
    assert tensor_byte_view(tensor[:0]).size == 0


def test_float64_to_tensor_rounds_to_nearest():
    # BF16 has a spacing of 2**-7 above 1.0, and ties round to the even neighbour.
    values = np.array([1.0 + 2.0**-9, 1.0 + 3 * 2.0**-9, 1.0 + 2.0**-8, 1.0 + 3 * 2.0**-8])
    restored = float64_to_tensor(values, "BF16", (4,))
    assert restored.to(torch.float64).tolist() == [1.0, 1.0 + 2.0**-7, 1.0, 1.0 + 2.0**-6]


def test_float64_to_tensor_out_of_range():
    values = np.array([1e6, np.inf, -np.inf])
    assert float64_to_tensor(values, "F16", (3,)).tolist() == [np.inf, np.inf, -np.inf]
    assert float64_to_tensor(values, "F8_E5M2", (3,)).to(torch.float64).tolist() == [np.inf, np.inf, -np.inf]
    assert float64_to_tensor(values, "F8_E4M3", (3,)).to(torch.float64).tolist() == [448.0, 448.0, -448.0]


def test_float_helpers_reject_other_kinds():
    with pytest.raises(ValueError, match="I32"):
        tensor_to_float64(torch.zeros(2, dtype=torch.int32))
    with pytest.raises(ValueError, match="U8"):
        float64_to_tensor(np.zeros(2), "U8", (2,))
    with pytest.raises(ValueError, match=r"3 elements but shape \[2\] needs 2"):
        float64_to_tensor(np.zeros(3), "F32", (2,))


@pytest.mark.parametrize("shape", [(), (0,), (3, 5)], ids=str)
@pytest.mark.parametrize("dtype_name", [d.name for d in DTYPES if d.kind != "float"])
def test_int64_round_trip_exact(dtype_name, shape):
    data = random_bytes(dtype_name, int(np.prod(shape)), seed=2)
    if dtype_name == "U64":
        # Clear every top bit so that all values fit int64.
        data = bytes(byte & 0x7F if index % 8 == 7 else byte for index, byte in enumerate(data))
    tensor = tensor_from_bytes(data, dtype_name, shape)
    values = tensor_to_int64(tensor)
    assert values is not None
    assert values.dtype == np.int64
    assert values.shape == shape
    restored = int64_to_tensor(values, dtype_name, shape)
    assert restored.dtype == tensor.dtype
    assert tensor_to_bytes(restored) == data


def test_int64_values_match_torch():
    tensor = torch.tensor([-128, -1, 0, 127], dtype=torch.int8)
    assert tensor_to_int64(tensor).tolist() == [-128, -1, 0, 127]
    assert tensor_to_int64(torch.tensor([True, False])).tolist() == [1, 0]
    assert tensor_to_int64(torch.tensor([2**63 - 1], dtype=torch.uint64)).tolist() == [2**63 - 1]


def test_tensor_to_int64_u64_overflow_is_none():
    for value in (2**63, 2**64 - 1):
        tensor = tensor_from_bytes(value.to_bytes(8, "little"), "U64", (1,))
        assert tensor_to_int64(tensor) is None


def test_tensor_to_int64_bool_byte_two_is_none():
    tensor = tensor_from_bytes(b"\x01\x02", "BOOL", (2,))
    assert tensor_to_int64(tensor) is None


def test_tensor_to_int64_returns_copy():
    tensor = torch.ones(2, dtype=torch.int64)
    values = tensor_to_int64(tensor)
    values[0] = 7
    assert tensor[0].item() == 1


def test_int64_to_tensor_rejects_out_of_range():
    cases = [
        ("U8", 256, "0 to 255"),
        ("I8", -129, "-128 to 127"),
        ("BOOL", 2, "0 to 1"),
        ("U64", -1, "0 to 9223372036854775807"),
    ]
    for dtype_name, value, expected_range in cases:
        with pytest.raises(ValueError, match=f"outside the range of {dtype_name} \\({expected_range}\\)"):
            int64_to_tensor(np.array([0, value]), dtype_name, (2,))
    with pytest.raises(ValueError, match="outside the range of U64"):
        int64_to_tensor(np.array([2**64 - 1], dtype=np.uint64), "U64", (1,))


def test_int64_to_tensor_rejects_floats():
    with pytest.raises(ValueError, match="integer array"):
        int64_to_tensor(np.array([1.5]), "I32", (1,))
    with pytest.raises(ValueError, match="F32"):
        tensor_to_int64(torch.zeros(1))


# ---------------------------------------------------------------- writer and reader


@pytest.mark.parametrize("dtype_name", DTYPE_NAMES)
def test_writer_reader_round_trip_every_dtype(tmp_path, dtype_name):
    path = tmp_path / "model.safetensors"
    shapes = {"matrix": (3, 7), "scalar": (), "empty": (2, 0)}
    data = {}
    for seed, (name, shape) in enumerate(shapes.items()):
        data[name] = random_bytes(dtype_name, int(np.prod(shape)), seed=seed)
    infos = [TensorInfo(name, dtype_name, shape) for name, shape in shapes.items()]
    with SafetensorsWriter(path, infos, {"format": "pt"}) as writer:
        for name in shapes:
            writer.write(name, data[name])

    with SafetensorsReader(path) as reader:
        assert reader.tensors == infos
        for name, shape in shapes.items():
            tensor = reader.read(name)
            assert tensor.dtype == dtype_by_name(dtype_name).torch_dtype
            assert tuple(tensor.shape) == shape
            assert tensor_to_bytes(tensor) == data[name]

    loaded = load_file(path)
    assert sorted(loaded) == sorted(shapes)
    for name, shape in shapes.items():
        assert loaded[name].dtype == dtype_by_name(dtype_name).torch_dtype
        assert tuple(loaded[name].shape) == shape
        assert tensor_to_bytes(loaded[name]) == data[name]


def test_writer_output_loads_with_safe_open(tmp_path):
    path = tmp_path / "mixed.safetensors"
    tensors = {
        "layer.weight": torch.randn(4, 3, generator=torch.Generator().manual_seed(0)),
        "layer.bias": torch.arange(4, dtype=torch.bfloat16),
        "step": torch.tensor(2**64 - 1, dtype=torch.uint64),
        "mask": torch.tensor([True, False, True]),
        "scale": tensor_from_bytes(b"\x7f\x01\x38", "F8_E4M3", (3,)),
    }
    write_tensors(path, tensors, {"source": "test", "ünïcode": "välue"})

    with safe_open(path, framework="pt") as file:
        assert file.metadata() == {"source": "test", "ünïcode": "välue"}
        assert sorted(file.keys()) == sorted(tensors)
        for name, tensor in tensors.items():
            loaded = file.get_tensor(name)
            assert loaded.dtype == tensor.dtype
            assert loaded.shape == tensor.shape
            assert tensor_to_bytes(loaded) == tensor_to_bytes(tensor)


def test_reader_read_without_copy(tmp_path):
    path = tmp_path / "model.safetensors"
    tensors = {"weight": torch.arange(12, dtype=torch.float32).reshape(3, 4),
               "flags": torch.tensor([True, False, True])}
    write_tensors(path, tensors, None)
    with SafetensorsReader(path) as reader:
        for name, tensor in tensors.items():
            view = reader.read(name, copy=False)
            copy = reader.read(name)

            assert view.dtype == tensor.dtype
            assert torch.equal(view, tensor)
            assert torch.equal(copy, tensor)
            assert view.data_ptr() != copy.data_ptr()
        # Two views of one tensor share the memory map.
        assert reader.read("weight", copy=False).data_ptr() == \
            reader.read("weight", copy=False).data_ptr()


def test_u64_max_round_trips(tmp_path):
    path = tmp_path / "u64.safetensors"
    tensor = torch.tensor([0, 2**63, 2**64 - 1], dtype=torch.uint64)
    write_tensors(path, {"counter": tensor}, None)
    with SafetensorsReader(path) as reader:
        restored = reader.read("counter")
    assert tensor_to_bytes(restored) == b"\x00" * 8 + b"\x00" * 7 + b"\x80" + b"\xff" * 8
    assert tensor_to_int64(restored) is None


def test_nan_payloads_round_trip(tmp_path):
    path = tmp_path / "nan.safetensors"
    float_names = [d.name for d in DTYPES if d.kind == "float"]
    data = {name: b"".join(SPECIAL_BYTES[name]) for name in float_names}
    infos = [TensorInfo(name, name, (len(SPECIAL_BYTES[name]),)) for name in float_names]
    with SafetensorsWriter(path, infos, None) as writer:
        for name in float_names:
            writer.write(name, data[name])

    with SafetensorsReader(path) as reader:
        for name in float_names:
            assert tensor_to_bytes(reader.read(name)) == data[name], name
    loaded = load_file(path)
    for name in float_names:
        assert tensor_to_bytes(loaded[name]) == data[name], name


def test_zero_sized_and_scalar_shapes(tmp_path):
    path = tmp_path / "shapes.safetensors"
    tensors = {
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0),
        "empty3d": torch.zeros(2, 0, 5, dtype=torch.int16),
        "after": torch.tensor([1.0, 2.0]),
        "empty_last": torch.zeros(0, 3, dtype=torch.bfloat16),
    }
    write_tensors(path, tensors, None)

    _, header = header_of(path)
    parsed = json.loads(header)
    assert parsed["scalar"] == entry("F32", [], [0, 4])
    assert parsed["empty"] == entry("F32", [0], [4, 4])
    assert parsed["empty3d"] == entry("I16", [2, 0, 5], [4, 4])
    assert parsed["empty_last"] == entry("BF16", [0, 3], [12, 12])

    with SafetensorsReader(path) as reader:
        for name, tensor in tensors.items():
            restored = reader.read(name)
            assert restored.shape == tensor.shape, name
            assert restored.dtype == tensor.dtype, name
            assert torch.equal(restored, tensor), name
    loaded = load_file(path)
    assert {name: tuple(t.shape) for name, t in loaded.items()} == {n: tuple(t.shape) for n, t in tensors.items()}


def test_file_without_tensors(tmp_path):
    path = tmp_path / "none.safetensors"
    with SafetensorsWriter(path, [], None):
        pass
    with SafetensorsReader(path) as reader:
        assert reader.tensors == []
        assert reader.metadata is None
    assert load_file(path) == {}


@pytest.mark.parametrize("metadata", [None, {}, {"format": "pt", "note": "a b"}], ids=["none", "empty", "content"])
def test_metadata_none_empty_content(tmp_path, metadata):
    path = tmp_path / "meta.safetensors"
    write_tensors(path, {"w": torch.ones(2)}, metadata)

    _, header = header_of(path)
    assert header.startswith(b'{"__metadata__":') == (metadata is not None)
    with SafetensorsReader(path) as reader:
        assert reader.metadata == metadata
        assert (reader.metadata is None) == (metadata is None)
    with safe_open(path, framework="pt") as file:
        assert file.metadata() == metadata


def test_reader_metadata_after_tensors(tmp_path):
    path = tmp_path / "late.safetensors"
    header = {"w": entry("F32", [1], [0, 4]), "__metadata__": {"k": "v"}}
    path.write_bytes(build_file(header, b"\x00" * 4))
    with SafetensorsReader(path) as reader:
        assert reader.metadata == {"k": "v"}
        assert [info.name for info in reader.tensors] == ["w"]


def test_header_order_kept(tmp_path):
    path = tmp_path / "order.safetensors"
    names = ["zeta", "alpha", "mid.b", "mid.a", "10", "2"]
    tensors = {name: torch.full((index + 1,), float(index)) for index, name in enumerate(names)}
    write_tensors(path, tensors, {"b": "1", "a": "2"})

    _, header = header_of(path)
    parsed = json.loads(header)
    assert list(parsed) == ["__metadata__", *names]
    assert list(parsed["__metadata__"]) == ["b", "a"]
    begins = [parsed[name]["data_offsets"][0] for name in names]
    assert begins == sorted(begins)

    with SafetensorsReader(path) as reader:
        assert [info.name for info in reader.tensors] == names
        assert list(reader.metadata) == ["b", "a"]


def test_reader_keeps_order_of_foreign_file(tmp_path):
    path = tmp_path / "foreign.safetensors"
    header = {"b": entry("F32", [1], [4, 8]), "a": entry("F32", [1], [0, 4])}
    path.write_bytes(build_file(header, b"\x00\x00\x80\x3f\x00\x00\x00\x40"))
    with SafetensorsReader(path) as reader:
        assert [info.name for info in reader.tensors] == ["b", "a"]
        assert reader.read("a").item() == 1.0
        assert reader.read("b").item() == 2.0


def test_header_layout_and_padding(tmp_path):
    for count in range(1, 9):
        path = tmp_path / f"pad{count}.safetensors"
        tensors = {"x" * count: torch.zeros(count, dtype=torch.uint8)}
        write_tensors(path, tensors, None)
        length, header = header_of(path)
        assert length % 8 == 0
        assert header == header.rstrip(b" ") + b" " * (length - len(header.rstrip(b" ")))
        assert len(header.rstrip(b" ")) > length - 8
        assert path.stat().st_size == 8 + length + count


def test_writer_matches_safetensors_save_file(tmp_path):
    # save_file sorts its tensors, so give the writer the same order to compare bytes.
    tensors = {"a.bias": torch.arange(3.0), "a.weight": torch.arange(6.0).reshape(2, 3)}
    expected_path = tmp_path / "expected.safetensors"
    save_file(tensors, expected_path, metadata={"format": "pt"})
    path = tmp_path / "ours.safetensors"
    write_tensors(path, tensors, {"format": "pt"})
    assert path.read_bytes() == expected_path.read_bytes()


def test_reader_on_save_file_output(tmp_path):
    path = tmp_path / "lib.safetensors"
    tensors = {"w": torch.randn(3, 4, generator=torch.Generator().manual_seed(1)), "i": torch.arange(5)}
    save_file(tensors, path)
    with SafetensorsReader(path) as reader:
        assert reader.metadata is None
        assert {info.name: (info.dtype, info.shape) for info in reader.tensors} == {
            "w": ("F32", (3, 4)),
            "i": ("I64", (5,)),
        }
        for name, tensor in tensors.items():
            assert torch.equal(reader.read(name), tensor)


def test_read_returns_independent_tensor(tmp_path):
    path = tmp_path / "copy.safetensors"
    write_tensors(path, {"w": torch.zeros(4)}, None)
    with SafetensorsReader(path) as reader:
        first = reader.read("w")
        first += 1
        assert torch.equal(reader.read("w"), torch.zeros(4))


def test_read_unknown_tensor(tmp_path):
    path = tmp_path / "one.safetensors"
    write_tensors(path, {"w": torch.zeros(1)}, None)
    with SafetensorsReader(path) as reader:
        with pytest.raises(InputError, match=r"one\.safetensors: no tensor named 'missing'"):
            reader.read("missing")


def test_tensor_info_sizes():
    info = TensorInfo("w", "BF16", (3, 4))
    assert info.numel == 12
    assert info.nbytes == 24
    assert TensorInfo("s", "F64", ()).nbytes == 8


# ---------------------------------------------------------------- malformed files

GOOD_ENTRY = entry("F32", [2, 3], [0, 24])
DATA_24 = b"\x00" * 24

# Each case: file bytes and the fragments that the error message must contain.
MALFORMED_FILES = {
    "empty": (b"", ["file is empty"]),
    "shorter_than_length": (b"\x05\x00\x00", ["only 3 bytes"]),
    "length_past_end": (b"\xff\x00\x00\x00\x00\x00\x00\x00{}", ["header length 255", "truncated"]),
    "text_file": (b"This is a plain text file, not a model.\n", ["exceeds", "not a safetensors file"]),
    "truncated_header": (build_file({"w": GOOD_ENTRY}, DATA_24)[:40], ["exceeds", "truncated"]),
    "truncated_data": (build_file({"w": GOOD_ENTRY}, DATA_24[:12]), ["tensor 'w'", "end past the data area"]),
    "bad_json": (build_file(None, raw_header=b'{"w": {"dtype": "F32",'), ["not valid JSON"]),
    "zero_length_header": (build_file(None, raw_header=b""), ["not valid JSON"]),
    "not_utf8": (build_file(None, raw_header=b'{"\xff": 1}'), ["not valid UTF-8"]),
    "top_level_array": (build_file([1, 2]), ["the header must be a JSON object"]),
    "duplicate_name": (
        build_file(
            None,
            raw_header=b'{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
            b'"w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}',
        )
        + b"\x00" * 8,
        ["names 'w' twice"],
    ),
    "duplicate_field": (
        build_file(None, raw_header=b'{"w":{"dtype":"F32","dtype":"F16","shape":[1],"data_offsets":[0,4]}}')
        + b"\x00" * 4,
        ["tensor 'w'", "'dtype' twice"],
    ),
    "entry_not_object": (build_file({"w": [1, 2]}), ["tensor 'w'", "must be a JSON object"]),
    "missing_shape": (
        build_file({"w": {"dtype": "F32", "data_offsets": [0, 24]}}, DATA_24),
        ["tensor 'w'", "missing field 'shape'"],
    ),
    "missing_offsets": (
        build_file({"w": {"dtype": "F32", "shape": [2, 3]}}, DATA_24),
        ["tensor 'w'", "missing field 'data_offsets'"],
    ),
    "unknown_dtype": (build_file({"w": entry("F4", [2], [0, 1])}, b"\x00"), ["tensor 'w'", "dtype 'F4'"]),
    "lowercase_dtype": (build_file({"w": entry("f32", [2, 3], [0, 24])}, DATA_24), ["tensor 'w'", "'f32'"]),
    "dtype_not_string": (build_file({"w": entry(12, [2, 3], [0, 24])}, DATA_24), ["tensor 'w'", "dtype must"]),
    "negative_dim": (build_file({"w": entry("F32", [2, -3], [0, 24])}, DATA_24), ["tensor 'w'", "shape", "[2, -3]"]),
    "float_dim": (build_file({"w": entry("F32", [2, 3.0], [0, 24])}, DATA_24), ["tensor 'w'", "shape"]),
    "bool_dim": (build_file({"w": entry("F32", [True, 3], [0, 12])}, DATA_24[:12]), ["tensor 'w'", "shape"]),
    "shape_not_array": (build_file({"w": entry("F32", 6, [0, 24])}, DATA_24), ["tensor 'w'", "shape"]),
    "three_offsets": (build_file({"w": entry("F32", [2, 3], [0, 12, 24])}, DATA_24), ["tensor 'w'", "data_offsets"]),
    "negative_offset": (build_file({"w": entry("F32", [1], [-4, 0])}, DATA_24), ["tensor 'w'", "data_offsets"]),
    "offsets_reversed": (build_file({"w": entry("F32", [0], [8, 4])}, DATA_24), ["tensor 'w'", "end before"]),
    "offsets_wrong_size": (
        build_file({"conv1.weight": entry("F32", [2, 3], [0, 12])}, DATA_24[:12]),
        ["tensor 'conv1.weight': data_offsets [0, 12] hold 12 bytes but shape [2, 3] of F32 needs 24"],
    ),
    "offsets_out_of_range": (
        build_file({"a": entry("F32", [1], [0, 4]), "b": entry("F32", [2], [4, 12])}, b"\x00" * 8),
        ["tensor 'b'", "[4, 12]", "end past the data area, which has 8 bytes"],
    ),
    "overlap": (
        build_file({"a": entry("F32", [2], [0, 8]), "b": entry("F32", [2], [4, 12])}, b"\x00" * 12),
        ["tensor 'b'", "overlap tensor 'a' at [0, 8]"],
    ),
    "same_offsets": (
        build_file({"a": entry("F32", [2], [0, 8]), "b": entry("I32", [2], [0, 8])}, b"\x00" * 8),
        ["overlap tensor"],
    ),
    "empty_tensor_inside_other": (
        build_file({"a": entry("F32", [2], [0, 8]), "e": entry("F32", [0], [4, 4])}, b"\x00" * 8),
        ["tensor 'e'", "overlap tensor 'a'"],
    ),
    "gap": (
        build_file({"a": entry("F32", [1], [0, 4]), "b": entry("F32", [1], [8, 12])}, b"\x00" * 12),
        ["tensor 'b'", "bytes 4 to 8", "unused"],
    ),
    "trailing_bytes": (build_file({"w": GOOD_ENTRY}, DATA_24 + b"\x00" * 4), ["cover 24 bytes", "has 28"]),
    "metadata_number": (
        build_file({"__metadata__": {"epoch": 3}, "w": GOOD_ENTRY}, DATA_24),
        ["__metadata__", "'epoch'", "number"],
    ),
    "metadata_not_object": (build_file({"__metadata__": "pt", "w": GOOD_ENTRY}, DATA_24), ["__metadata__", "object"]),
    "lone_surrogate_name": (build_file(None, raw_header=b'{"\\ud800":1}'), ["not valid Unicode"]),
}


@pytest.mark.parametrize("case", list(MALFORMED_FILES))
def test_malformed_file_rejected(tmp_path, case):
    blob, fragments = MALFORMED_FILES[case]
    path = tmp_path / "model.safetensors"
    path.write_bytes(blob)
    with pytest.raises(InputError) as caught:
        SafetensorsReader(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ")
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


def test_header_length_over_maximum(tmp_path):
    path = tmp_path / "huge.safetensors"
    with open(path, "wb") as file:
        file.write((MAX_HEADER_BYTES + 1).to_bytes(8, "little"))
        file.truncate(8 + MAX_HEADER_BYTES + 16)  # sparse on most file systems
    with pytest.raises(InputError, match="exceeds the safetensors maximum"):
        SafetensorsReader(path)


def test_reader_extra_field_ignored(tmp_path):
    # safetensors 0.8 ignores unknown fields in a tensor entry, so the reader does too.
    path = tmp_path / "extra.safetensors"
    path.write_bytes(build_file({"w": {**GOOD_ENTRY, "quant": "none"}}, DATA_24))
    with SafetensorsReader(path) as reader:
        assert reader.tensors == [TensorInfo("w", "F32", (2, 3))]
        assert torch.equal(reader.read("w"), torch.zeros(2, 3))


def test_reader_missing_file(tmp_path):
    path = tmp_path / "absent.safetensors"
    with pytest.raises(InputError, match=r"absent\.safetensors: file not found"):
        SafetensorsReader(path)


def test_reader_directory(tmp_path):
    with pytest.raises(InputError, match="is a directory"):
        SafetensorsReader(tmp_path)


# ---------------------------------------------------------------- writer misuse


def test_writer_any_order(tmp_path):
    path = tmp_path / "out.safetensors"
    infos = [TensorInfo("a", "F32", (1,)), TensorInfo("b", "F32", (2,))]
    with SafetensorsWriter(path, infos, None) as writer:
        writer.write("b", np.array([2.0, 3.0], dtype="<f4").tobytes())
        writer.write("a", np.array([1.0], dtype="<f4").tobytes())
        with pytest.raises(InputError, match="'b' was not declared, or was already written"):
            writer.write("b", b"\x00" * 8)
    loaded = load_file(path)
    assert list(loaded) == ["a", "b"]
    assert loaded["a"].tolist() == [1.0]
    assert loaded["b"].tolist() == [2.0, 3.0]


def test_writer_wrong_byte_count(tmp_path):
    infos = [TensorInfo("a", "BF16", (2, 3))]
    with SafetensorsWriter(tmp_path / "out.safetensors", infos, None) as writer:
        with pytest.raises(InputError, match=r"tensor 'a': got 10 bytes but shape \[2, 3\] of BF16 needs 12"):
            writer.write("a", b"\x00" * 10)
        writer.write("a", b"\x00" * 12)


def test_writer_close_reports_missing_tensor(tmp_path):
    infos = [TensorInfo("a", "F32", (1,)), TensorInfo("b", "F32", (1,)), TensorInfo("c", "F32", (1,))]
    writer = SafetensorsWriter(tmp_path / "out.safetensors", infos, None)
    writer.write("a", b"\x00" * 4)
    with pytest.raises(InputError, match="2 of 3 tensors were never written, the first of them is 'b'"):
        writer.close()
    writer.close()  # a second call does nothing


def test_writer_exception_skips_completeness_check(tmp_path):
    infos = [TensorInfo("a", "F32", (1,))]
    with pytest.raises(RuntimeError, match="body failed"):
        with SafetensorsWriter(tmp_path / "out.safetensors", infos, None):
            raise RuntimeError("body failed")


@pytest.mark.parametrize(
    ("infos", "metadata", "fragment"),
    [
        ([TensorInfo("a", "F32", (1,)), TensorInfo("a", "F32", (2,))], None, "'a' appears more than once"),
        ([TensorInfo("__metadata__", "F32", (1,))], None, "invalid tensor name '__metadata__'"),
        ([TensorInfo("a", "C64", (1,))], None, "tensor 'a': dtype 'C64' is not supported"),
        ([TensorInfo("a", "F32", (2, -1))], None, "tensor 'a': shape [2, -1]"),
        ([TensorInfo("a", "F32", (1,))], {"epoch": 3}, "metadata key 'epoch'"),
    ],
    ids=["duplicate", "reserved_name", "dtype", "shape", "metadata"],
)
def test_writer_rejects_bad_arguments(tmp_path, infos, metadata, fragment):
    path = tmp_path / "out.safetensors"
    with pytest.raises(InputError) as caught:
        SafetensorsWriter(path, infos, metadata)
    assert fragment in str(caught.value)
    assert not path.exists()


# ---------------------------------------------------------------- real models


@pytest.mark.parametrize("filename", REAL_MODELS)
def test_real_model_read(filename):
    path = DATA_DIR / filename
    expected = load_file(path)
    with safe_open(path, framework="pt") as file:
        expected_metadata = file.metadata()

    with SafetensorsReader(path) as reader:
        assert reader.metadata == expected_metadata
        assert reader.metadata["source_package"] == "facenet-pytorch"
        _, header = header_of(path)
        assert [info.name for info in reader.tensors] == [k for k in json.loads(header) if k != "__metadata__"]
        assert sorted(info.name for info in reader.tensors) == sorted(expected)
        for info in reader.tensors:
            tensor = reader.read(info.name)
            assert info.dtype == "F32"
            assert tuple(tensor.shape) == info.shape == tuple(expected[info.name].shape)
            assert tensor_to_bytes(tensor) == tensor_to_bytes(expected[info.name])


@pytest.mark.parametrize("filename", REAL_MODELS)
def test_real_model_rewrite_identical(tmp_path, filename):
    source = DATA_DIR / filename
    target = tmp_path / filename
    with SafetensorsReader(source) as reader:
        with SafetensorsWriter(target, reader.tensors, reader.metadata) as writer:
            for info in reader.tensors:
                writer.write(info.name, tensor_to_bytes(reader.read(info.name)))
    assert target.read_bytes() == source.read_bytes()


def test_real_model_float64_round_trip():
    with SafetensorsReader(DATA_DIR / "facenet_pnet.safetensors") as reader:
        for info in reader.tensors:
            tensor = reader.read(info.name)
            restored = float64_to_tensor(tensor_to_float64(tensor), info.dtype, info.shape)
            assert tensor_to_bytes(restored) == tensor_to_bytes(tensor), info.name


# ---------------------------------------------------------------- atomic_output


def test_atomic_output_success(tmp_path):
    target = tmp_path / "out.bin"
    with atomic_output(target, force=False) as temporary:
        assert os.path.dirname(temporary) == str(tmp_path)
        assert os.path.exists(temporary)
        assert not target.exists()
        Path(temporary).write_bytes(b"payload")
    assert target.read_bytes() == b"payload"
    assert sorted(os.listdir(tmp_path)) == ["out.bin"]


def test_atomic_output_permissions_follow_umask(tmp_path):
    target = tmp_path / "out.bin"
    previous = os.umask(0o022)
    try:
        with atomic_output(target, force=False) as temporary:
            Path(temporary).write_bytes(b"x")
    finally:
        os.umask(previous)
    assert target.stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("error", [RuntimeError("encoder failed"), KeyboardInterrupt()], ids=["error", "interrupt"])
def test_atomic_output_cleans_up_on_exception(tmp_path, error):
    target = tmp_path / "out.bin"
    with pytest.raises(type(error)):
        with atomic_output(target, force=False) as temporary:
            Path(temporary).write_bytes(b"half")
            raise error
    assert os.listdir(tmp_path) == []


def test_atomic_output_keeps_old_file_on_exception(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_output(target, force=True) as temporary:
            Path(temporary).write_bytes(b"new")
            raise RuntimeError("encoder failed")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["out.bin"]


def test_atomic_output_with_writer_cleans_up(tmp_path):
    target = tmp_path / "model.safetensors"
    infos = [TensorInfo("a", "F32", (1,)), TensorInfo("b", "F32", (1,))]
    with pytest.raises(InputError, match="never written"):
        with atomic_output(target, force=False) as temporary:
            with SafetensorsWriter(temporary, infos, None) as writer:
                writer.write("a", b"\x00" * 4)
    assert os.listdir(tmp_path) == []


def test_atomic_output_existing_needs_force(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(InputError, match=r"out\.bin exists; pass --force to replace it"):
        with atomic_output(target, force=False):
            pytest.fail("the body must not run")
    assert target.read_bytes() == b"old"

    with atomic_output(target, force=True) as temporary:
        Path(temporary).write_bytes(b"new")
    assert target.read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["out.bin"]


def test_atomic_output_dangling_symlink_needs_force(tmp_path):
    target = tmp_path / "link"
    target.symlink_to(tmp_path / "nowhere")
    with pytest.raises(InputError, match="exists"):
        with atomic_output(target, force=False):
            pytest.fail("the body must not run")


def test_atomic_output_rejects_input(tmp_path, monkeypatch):
    source = tmp_path / "model.safetensors"
    shutil.copyfile(DATA_DIR / "facenet_pnet.safetensors", source)
    (tmp_path / "sub").mkdir()
    link = tmp_path / "link.safetensors"
    link.symlink_to(source)
    hard_link = tmp_path / "hard.safetensors"
    os.link(source, hard_link)
    monkeypatch.chdir(tmp_path / "sub")

    for output in [source, "../model.safetensors", link, hard_link]:
        with pytest.raises(InputError, match="is the input; choose another path"):
            with atomic_output(output, force=True, inputs=(source,)):
                pytest.fail("the body must not run")
    assert source.read_bytes() == (DATA_DIR / "facenet_pnet.safetensors").read_bytes()


def test_atomic_output_missing_directory(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        with atomic_output(tmp_path / "absent" / "out.bin", force=True):
            pytest.fail("the body must not run")


def test_atomic_output_path_is_directory(tmp_path):
    (tmp_path / "dir").mkdir()
    with pytest.raises(InputError, match="is a directory"):
        with atomic_output(tmp_path / "dir", force=True):
            pytest.fail("the body must not run")


def test_atomic_output_relative_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with atomic_output("out.bin", force=False) as temporary:
        Path(temporary).write_bytes(b"x")
    assert (tmp_path / "out.bin").read_bytes() == b"x"
    assert os.listdir(tmp_path) == ["out.bin"]

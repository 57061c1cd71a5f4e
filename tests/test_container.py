"""The .wbs container: field layout, varints, every rejection rule, truncation and bit flips.

Bad files are built by hand with the builder in common.py, which sets lengths and CRCs
right unless a case breaks them on purpose. Each rejection is checked twice: by the
header reader on bytes in memory, and through the public decoders (`wcodec.load` and
`wcodec.decode_file`), which must raise WbsFormatError and write no output.
"""

import os
import re
import struct
import tracemalloc
import zlib

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import wcodec
from common import (
    MODE_ALIAS,
    MODE_INTEGER,
    MODE_QUANTIZED,
    MODE_RAW,
    PNET,
    build_wbs,
    header_bytes,
    record_bytes,
    refresh_header_crc,
    split_wbs,
    string,
    svarint,
    varint,
    wbs_bytes,
    write_safetensors,
)
from wcodec.codec import residual_coding
from wcodec.decoder import open_wbs
from wcodec.errors import WbsFormatError
from wcodec.formats import container

W_LEVELS = np.array([[1, -2, 0], [0, 3, 1]], dtype=np.int64)
W_PAYLOAD = residual_coding.encode_levels(W_LEVELS, 1)
IDS_PAYLOAD = residual_coding.encode_levels(np.array([[1, 2, 3, 4]], dtype=np.int64), 1)
B_PAYLOAD = struct.pack("<3f", 0.5, -1.0, 2.0)


def base_records() -> list[dict]:
    """Return the records of a small valid file: a quantized frame, raw, integer and alias."""
    return [
        dict(name="w", dtype="F32", shape=(2, 3), mode=MODE_QUANTIZED, qp=-32, payload=W_PAYLOAD),
        dict(name="b", dtype="F32", shape=(3,), mode=MODE_RAW, payload=B_PAYLOAD),
        dict(name="ids", dtype="I32", shape=(4,), mode=MODE_INTEGER, payload=IDS_PAYLOAD),
        dict(name="w_tied", dtype="F32", shape=(2, 3), mode=MODE_ALIAS, alias_of=0),
    ]


def variant(index=None, *, extra=(), metadata=None, trailing=b"", **changes) -> bytes:
    """Return the base file with `changes` applied to record `index` and `extra` records appended."""
    records = base_records()
    if index is not None:
        records[index].update(changes)
    records.extend(extra)
    return build_wbs(records, metadata, trailing)


def with_header(header: bytes, area: bytes = b"") -> bytes:
    return wbs_bytes(header, area)


def inter_frame(**changes) -> dict:
    """Return a collocated frame predicted from record 0 ("w"), with `changes` applied."""
    record = dict(name="w2", dtype="F32", shape=(2, 3), mode=MODE_QUANTIZED, qp=-32, frame_mode=1, refs=(0,),
                  pred_gain=64, payload=W_PAYLOAD)
    record.update(changes)
    return record


def base_bytes() -> bytes:
    return variant()


# ---------------------------------------------------------------- the rejection table

# id -> (file bytes, text the message must contain, stage). The header reader alone catches
# the "preamble" and "header" cases; the "payload" cases fail only while a payload is decoded.
REJECTIONS = {
    # preamble
    "empty_file": (b"", "not a", "preamble"),
    "short_file": (base_bytes()[:10], "preamble", "preamble"),
    "magic": (wbs_bytes(split_wbs(base_bytes())[1], split_wbs(base_bytes())[2], magic=b"\x89WBS\r\n\x1a\x0b"),
              "magic", "preamble"),
    "version": (wbs_bytes(split_wbs(base_bytes())[1], split_wbs(base_bytes())[2], version=3), "version",
                "preamble"),
    "flags": (wbs_bytes(split_wbs(base_bytes())[1], split_wbs(base_bytes())[2], flags=1), "flags", "preamble"),
    "header_length_past_end": (
        wbs_bytes(split_wbs(base_bytes())[1], split_wbs(base_bytes())[2],
                  header_length=len(base_bytes()) - 19), "header_length", "preamble"),
    "header_crc32": (
        wbs_bytes(split_wbs(base_bytes())[1], split_wbs(base_bytes())[2],
                  header_crc32=zlib.crc32(split_wbs(base_bytes())[1]) ^ 1), "header_crc32", "preamble"),
    # metadata
    "metadata_present_2": (with_header(b"\x02\x00"), "metadata_present", "header"),
    "metadata_count_large": (with_header(b"\x01" + varint(1000) + b"\x00"), "metadata_count", "header"),
    "metadata_duplicate_key": (
        with_header(b"\x01\x02" + string("k") + string("1") + string("k") + string("2") + b"\x00"),
        "duplicate metadata key", "header"),
    "metadata_key_utf8": (with_header(b"\x01\x01" + string(b"\xff") + string("v") + b"\x00"), "key", "header"),
    # varints and strings
    "tensor_count_redundant_zero": (with_header(b"\x00\x80\x00"), "tensor_count", "header"),
    "tensor_count_11_bytes": (with_header(b"\x00" + b"\x80" * 10 + b"\x01"), "tensor_count", "header"),
    "tensor_count_2_63": (with_header(b"\x00" + b"\xff" * 8 + b"\x80\x01"), "tensor_count", "header"),
    "tensor_count_above_records": (
        with_header(b"\x00" + varint(2) + record_bytes("a", "U8", (1,), MODE_RAW, payload_length=1,
                                                       payload_crc32=zlib.crc32(b"\x01")), b"\x01"),
        "name", "header"),
    "name_65537_bytes": (variant(1, name="n" * 65537), "name length", "header"),
    "name_utf8": (variant(1, name=b"\x02\xc3\x28"), "name", "header"),
    "name_duplicate": (variant(1, name="w"), "duplicate tensor name", "header"),
    "dtype_code_0": (variant(1, dtype=0), "dtype", "header"),
    "dtype_code_16": (variant(1, dtype=16), "dtype", "header"),
    "ndim_33": (variant(1, shape=bytes([33]) + b"\x01" * 33), "ndim", "header"),
    "shape_redundant_zero": (variant(1, shape=b"\x01\x83\x00"), "shape[0]", "header"),
    "coding_mode_4": (variant(1, mode=4), "coding_mode", "header"),
    "qp_redundant_zero": (variant(0, qp=b"\xc0\x00"), "qp", "header"),
    "refs_count_large": (variant(0, refs=varint(10**6)), "refs count", "header"),
    "header_trailing_byte": (
        wbs_bytes(split_wbs(base_bytes())[1] + b"\x00", split_wbs(base_bytes())[2]),
        "left after the last tensor record", "header"),
    # payload ranges
    "payload_gap": (variant(0, payload_offset=1), "payload_offset", "header"),
    "payload_overlap": (variant(2, payload_offset=0), "payload_offset", "header"),
    "payload_past_end": (variant(2, payload_length=len(IDS_PAYLOAD) + 5), "payload_length", "header"),
    "bytes_after_last_payload": (variant(trailing=b"\x00"), "payload area", "header"),
    "raw_length": (variant(1, payload=B_PAYLOAD[:8]), "payload_length", "header"),
    "empty_tensor_with_payload": (
        variant(extra=[dict(name="e", dtype="F32", shape=(0, 3), mode=MODE_QUANTIZED, qp=-32, payload=b"\x01")]),
        "payload_length", "header"),
    # modes that do not fit the dtype
    "quantized_integer_dtype": (variant(0, dtype="I32"), "coding_mode", "header"),
    "quantized_bool_dtype": (variant(0, dtype="BOOL"), "coding_mode", "header"),
    "integer_float_dtype": (variant(2, dtype="F32"), "coding_mode", "header"),
    # frame fields
    "quantizer_2": (variant(0, quantizer=2), "quantizer", "header"),
    "dependent_quantizer_vector": (
        variant(extra=[dict(name="v", dtype="F32", shape=(3,), mode=MODE_QUANTIZED, qp=-56, quantizer=1,
                            payload=IDS_PAYLOAD)]), "quantizer", "header"),
    "frame_mode_4": (variant(0, frame_mode=4), "frame_mode", "header"),
    "intra_with_refs": (variant(extra=[inter_frame(frame_mode=0)]), "refs", "header"),
    "intra_with_pred_gain": (variant(0, pred_gain=3), "pred_gain", "header"),
    "inter_without_refs": (variant(extra=[inter_frame(refs=())]), "refs", "header"),
    "inter_pred_gain_0": (variant(extra=[inter_frame(pred_gain=0)]), "pred_gain", "header"),
    "inter_pred_gain_129": (variant(extra=[inter_frame(pred_gain=129)]), "pred_gain", "header"),
    "inter_vector": (variant(extra=[inter_frame(shape=(6,))]), "frame_mode", "header"),
    "inter_ref_later": (variant(extra=[inter_frame(refs=(5,)), inter_frame(name="w3", frame_mode=0, refs=(),
                                                                           pred_gain=0)]),
                        "refs", "header"),
    "inter_ref_self": (variant(extra=[inter_frame(refs=(4,))]), "refs", "header"),
    "inter_ref_raw": (variant(extra=[inter_frame(refs=(1,))]), "refs", "header"),
    "inter_ref_other_kernel": (
        variant(extra=[dict(name="conv", dtype="F32", shape=(1, 1, 2), mode=MODE_QUANTIZED, qp=-32,
                            payload=residual_coding.encode_levels(np.array([[1, 1]]), 2)),
                       inter_frame(refs=(4,))]), "refs", "header"),
    "collocated_two_refs": (variant(extra=[inter_frame(refs=(0, 0))]), "refs", "header"),
    "full_nine_refs": (variant(extra=[inter_frame(frame_mode=3, refs=(0,) * 9)]), "refs", "header"),
    # aliases
    "alias_out_of_range": (variant(3, alias_of=9), "alias_of", "header"),
    "alias_of_itself": (variant(3, alias_of=3), "alias_of", "header"),
    "alias_of_later": (
        build_wbs([dict(name="t", dtype="F32", shape=(2, 3), mode=MODE_ALIAS, alias_of=1),
                   dict(name="w", dtype="F32", shape=(2, 3), mode=MODE_QUANTIZED, qp=-32, payload=W_PAYLOAD)]),
        "alias_of", "header"),
    "alias_of_alias": (variant(extra=[dict(name="t2", dtype="F32", shape=(2, 3), mode=MODE_ALIAS, alias_of=3)]),
                       "alias_of", "header"),
    "alias_other_dtype": (variant(3, dtype="F64"), "alias_of", "header"),
    "alias_other_shape": (variant(3, shape=(3, 2)), "alias_of", "header"),
    "alias_with_payload": (variant(3, payload=b"\x01"), "payload_length", "header"),
    # limits
    "elements_2_45": (variant(extra=[dict(name="huge", dtype="F32", shape=(2**45,), mode=MODE_QUANTIZED,
                                          qp=-56)]), "shape", "header"),
    "output_above_64_gib": (
        variant(extra=[dict(name=f"big{i}", dtype="F64", shape=(2**32,), mode=MODE_QUANTIZED, qp=-56)
                       for i in range(3)]), "decoded size", "header"),
    # payload contents, checked while decoding
    "payload_crc32": (variant(0, payload_crc32=zlib.crc32(W_PAYLOAD) ^ 1), "payload_crc32", "payload"),
    "arithmetic_code_inconsistent": (variant(2, payload=b"\xff" * 64), "inconsistent", "payload"),
    "payload_bytes_left": (variant(0, payload=W_PAYLOAD + b"\x00\x00\x00\x00\x00\x01"), "left after the last level",
                           "payload"),
    "qp_300": (variant(0, qp=300), "qp", "payload"),
    "integer_outside_u8": (
        variant(2, dtype="U8", shape=(2,), payload=residual_coding.encode_levels(np.array([[300, 1]]), 1)),
        "U8", "payload"),
    "integer_bool_level_2": (
        variant(2, dtype="BOOL", shape=(2,), payload=residual_coding.encode_levels(np.array([[2, 1]]), 1)),
        "BOOL", "payload"),
}


@pytest.mark.parametrize("case", [case for case, (_, _, stage) in REJECTIONS.items() if stage != "payload"])
def test_reader_rejects(case):
    data, fragment, _ = REJECTIONS[case]
    with pytest.raises(WbsFormatError) as caught:
        container.read_container(data, "bad.wbs")

    message = str(caught.value)
    assert fragment in message
    assert message.startswith("bad.wbs: ")
    assert "\n" not in message


@pytest.mark.parametrize("case", list(REJECTIONS))
def test_decoders_reject(tmp_path, case):
    data, fragment, _ = REJECTIONS[case]
    path = tmp_path / "bad.wbs"
    path.write_bytes(data)

    with pytest.raises(WbsFormatError, match=re.escape(fragment)):
        wcodec.load(path)
    with pytest.raises(WbsFormatError, match=re.escape(fragment)):
        wcodec.decode_file(path, tmp_path / "out.safetensors")
    assert [p.name for p in tmp_path.iterdir()] == ["bad.wbs"]


def test_base_file_decodes(tmp_path):
    path = tmp_path / "good.wbs"
    path.write_bytes(base_bytes())
    tensors = wcodec.load(path)

    assert list(tensors) == ["w", "b", "ids", "w_tied"]
    assert torch.equal(tensors["w"], torch.from_numpy(W_LEVELS * 2.0**-8).float())
    assert tensors["b"].tolist() == [0.5, -1.0, 2.0]
    assert tensors["ids"].tolist() == [1, 2, 3, 4]
    assert tensors["ids"].dtype == torch.int32
    assert torch.equal(tensors["w_tied"], tensors["w"])


# ---------------------------------------------------------------- layout of written files


def test_empty_model_bytes(tmp_path):
    path = tmp_path / "empty.wbs"
    with open(path, "wb") as stream:
        container.write_container(stream, container.WbsHeader(None), [])

    assert path.read_bytes() == wbs_bytes(b"\x00\x00", version=2)
    assert len(path.read_bytes()) == 22
    assert wcodec.load(path) == {}


def test_empty_metadata_distinct_from_none():
    for metadata, header in ((None, b"\x00\x00"), ({}, b"\x01\x00\x00")):
        parsed, payload_base = container.read_container(wbs_bytes(header), "x.wbs")
        assert parsed.metadata == metadata
        assert (parsed.metadata is None) == (metadata is None)
        assert payload_base == 20 + len(header)


def test_writer_matches_spec_layout():
    metadata = {"format": "pt", "ключ": "значение", "": ""}
    payloads = {0: W_PAYLOAD, 1: B_PAYLOAD, 2: IDS_PAYLOAD, 3: b"", 4: W_PAYLOAD + b"\x07"}
    records = [
        container.TensorRecord("w", "F32", (2, 3), MODE_QUANTIZED, qp=-32),
        container.TensorRecord("b", "F32", (3,), MODE_RAW),
        container.TensorRecord("ids", "I32", (4,), MODE_INTEGER),
        container.TensorRecord("w_tied", "F32", (2, 3), MODE_ALIAS, alias_of=0),
        container.TensorRecord("w2", "BF16", (2, 3), MODE_QUANTIZED, qp=-256, quantizer=1, frame_mode=3,
                               refs=(0, 0), pred_gain=128),
    ]
    header = container.WbsHeader(metadata, records)
    out = bytearray()

    class Sink:
        def write(self, data):
            out.extend(data)

    container.write_container(Sink(), header, list(payloads.items()))
    expected = build_wbs([
        dict(name="w", dtype="F32", shape=(2, 3), mode=MODE_QUANTIZED, qp=-32, payload=payloads[0]),
        dict(name="b", dtype="F32", shape=(3,), mode=MODE_RAW, payload=payloads[1]),
        dict(name="ids", dtype="I32", shape=(4,), mode=MODE_INTEGER, payload=payloads[2]),
        dict(name="w_tied", dtype="F32", shape=(2, 3), mode=MODE_ALIAS, alias_of=0, payload=payloads[3]),
        dict(name="w2", dtype="BF16", shape=(2, 3), mode=MODE_QUANTIZED, qp=-256, quantizer=1, frame_mode=3,
             refs=(0, 0), pred_gain=128, payload=payloads[4]),
    ], metadata, version=2)

    assert bytes(out) == expected
    parsed, _ = container.read_container(expected, "x.wbs")
    assert parsed.metadata == metadata
    assert list(parsed.metadata) == list(metadata)
    assert parsed.tensors == records


def test_encoded_pnet_layout(tmp_path):
    path = tmp_path / "pnet.wbs"
    wcodec.encode_file(PNET, path)
    data = path.read_bytes()
    magic, version, flags, header_length, header_crc = struct.unpack_from("<8sHHII", data)
    header, payload_base = container.read_container(data, "pnet.wbs")

    assert magic == b"\x89WBS\r\n\x1a\n"
    assert version == 2  # the 3x3 convolutions are transform frames
    assert flags == 0
    assert header_crc == zlib.crc32(data[20:20 + header_length])
    assert payload_base == 20 + header_length
    assert sum(record.payload_length for record in header.tensors) == len(data) - payload_base
    for record in header.tensors:
        start = payload_base + record.payload_offset
        assert zlib.crc32(data[start:start + record.payload_length]) == record.payload_crc32, record.name


def test_string_of_65536_bytes_accepted():
    name = "n" * 65536
    data = build_wbs([dict(name=name, dtype="U8", shape=(1,), mode=MODE_RAW, payload=b"\x05")])
    header, _ = container.read_container(data, "x.wbs")

    assert header.tensors[0].name == name


def test_ndim_32_accepted():
    shape = (1,) * 32
    data = build_wbs([dict(name="deep", dtype="U8", shape=shape, mode=MODE_RAW, payload=b"\x05")])
    header, _ = container.read_container(data, "x.wbs")

    assert header.tensors[0].shape == shape


# ---------------------------------------------------------------- varints


@pytest.mark.parametrize(("value", "encoded"), [
    (0, b"\x00"),
    (1, b"\x01"),
    (127, b"\x7f"),
    (128, b"\x80\x01"),
    (300, b"\xac\x02"),
    (2**63 - 1, b"\xff" * 8 + b"\x7f"),
], ids=str)
def test_varint_encoding(value, encoded):
    writer = container._Writer()
    writer.varint(value)
    reader = container._Reader(encoded, "x.wbs")

    assert bytes(writer.out) == encoded
    assert varint(value) == encoded
    assert reader.varint("field") == value
    assert reader.pos == len(encoded)


@pytest.mark.parametrize(("value", "encoded"), [
    (0, b"\x00"), (-1, b"\x01"), (1, b"\x02"), (-256, b"\xff\x03"), (255, b"\xfe\x03"), (-32, b"\x3f"),
], ids=str)
def test_svarint_encoding(value, encoded):
    writer = container._Writer()
    writer.svarint(value)
    reader = container._Reader(encoded, "x.wbs")

    assert bytes(writer.out) == encoded
    assert svarint(value) == encoded
    assert reader.svarint("qp") == value


@pytest.mark.parametrize(("encoded", "fragment"), [
    (b"\x80\x00", "redundant zero byte"),
    (b"\xff\x80\x00", "redundant zero byte"),
    (b"\x80" * 9 + b"\x01", "exceeds 2**63 - 1"),
    (b"\xff" * 9 + b"\x7f", "exceeds 2**63 - 1"),
    (b"\x80" * 10 + b"\x01", "longer than 10 bytes"),
    (b"\x80", "needs 1 bytes"),
    (b"", "needs 1 bytes"),
], ids=lambda value: value.hex() if isinstance(value, bytes) else value)
def test_varint_rejected(encoded, fragment):
    reader = container._Reader(encoded, "x.wbs")
    with pytest.raises(WbsFormatError) as caught:
        reader.varint("tensor_count")

    assert fragment in str(caught.value)
    assert "tensor_count" in str(caught.value)


# ---------------------------------------------------------------- truncation and damage


@pytest.fixture(scope="module")
def pnet_wbs(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("pnet") / "pnet.wbs"
    wcodec.encode_file(PNET, path)
    return path.read_bytes()


def test_truncation_rejected_by_reader(pnet_wbs):
    for length in range(len(pnet_wbs)):
        with pytest.raises(WbsFormatError):
            container.read_container(pnet_wbs[:length], "cut.wbs")


def test_truncation_rejected_by_load(tmp_path, pnet_wbs):
    path = tmp_path / "cut.wbs"
    path.write_bytes(pnet_wbs)
    # Shortening one file in place is several times faster than writing a new file per length.
    for length in range(len(pnet_wbs) - 1, -1, -1):
        os.truncate(path, length)
        with pytest.raises(WbsFormatError):
            wcodec.load(path)


def test_header_bit_flips_rejected(pnet_wbs):
    # CRC-32 detects every single-bit error, so each flip in the preamble or header must fail.
    header_end = 20 + struct.unpack_from("<I", pnet_wbs, 12)[0]
    for bit in range(8 * header_end):
        damaged = bytearray(pnet_wbs)
        damaged[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(WbsFormatError):
            container.read_container(bytes(damaged), "flip.wbs")


@given(st.data())
def test_bit_flips_rejected(tmp_path_factory, pnet_wbs, data):
    # CRC-32 detects every error of up to three bits in a region this short, and a flip in
    # the preamble breaks the magic, version, flags, header_length or header_crc32 check.
    flips = data.draw(st.lists(st.integers(0, 8 * len(pnet_wbs) - 1), min_size=1, max_size=3, unique=True))
    damaged = bytearray(pnet_wbs)
    for bit in flips:
        damaged[bit // 8] ^= 1 << (bit % 8)
    path = tmp_path_factory.mktemp("flip") / "flip.wbs"
    path.write_bytes(bytes(damaged))

    with pytest.raises(WbsFormatError):
        wcodec.load(path)


def test_payload_bit_flip_names_crc(tmp_path, pnet_wbs):
    damaged = bytearray(pnet_wbs)
    damaged[-1] ^= 0x04
    path = tmp_path / "flip.wbs"
    path.write_bytes(bytes(damaged))

    with pytest.raises(WbsFormatError, match="payload_crc32"):
        wcodec.load(path)


@given(st.data())
def test_mutated_header_rejected_or_decoded(tmp_path_factory, data):
    """Random byte edits of a valid header, with its CRC fixed, must fail cleanly or decode."""
    original = base_bytes()
    _, header, area = split_wbs(original)
    edits = data.draw(st.lists(st.tuples(st.integers(0, len(header) - 1), st.integers(0, 255)), min_size=1,
                               max_size=4))
    mutated = bytearray(header)
    for position, value in edits:
        mutated[position] = value
    damaged = refresh_header_crc(original[:20] + bytes(mutated) + area)
    # Small limits keep a mutated shape from asking for gigabytes.
    limits = container.DecodeLimits(max_output_bytes=1 << 20, max_tensor_elements=1 << 16)

    try:
        container.read_container(damaged, "mutated.wbs", limits)
    except WbsFormatError:
        return
    path = tmp_path_factory.mktemp("mutated") / "mutated.wbs"
    path.write_bytes(damaged)
    try:
        with open_wbs(path, limits) as wbs:
            for _ in wbs.iter_tensors():
                pass
    except WbsFormatError:
        pass


# ---------------------------------------------------------------- limits


def test_limits_checked_before_allocation():
    data = REJECTIONS["elements_2_45"][0]
    tracemalloc.start()
    try:
        with pytest.raises(WbsFormatError, match="limit of 1099511627776 elements"):
            container.read_container(data, "huge.wbs")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert peak < 1 << 20


def test_custom_limits_enforced(pnet_wbs):
    elements = container.DecodeLimits(max_tensor_elements=1000)
    output = container.DecodeLimits(max_output_bytes=10_000)
    header = container.DecodeLimits(max_header_bytes=100)

    with pytest.raises(WbsFormatError, match="limit of 1000 elements"):
        container.read_container(pnet_wbs, "pnet.wbs", elements)
    with pytest.raises(WbsFormatError, match="limit of 10000 bytes"):
        container.read_container(pnet_wbs, "pnet.wbs", output)
    with pytest.raises(WbsFormatError, match="header_length"):
        container.read_container(pnet_wbs, "pnet.wbs", header)


def test_default_limits_accept_pnet(pnet_wbs):
    header, _ = container.read_container(pnet_wbs, "pnet.wbs")

    assert len(header.tensors) == 13


# ---------------------------------------------------------------- empty models


def test_empty_safetensors_roundtrip(tmp_path):
    source = write_safetensors(tmp_path / "empty.safetensors", {}, None)
    header = wcodec.encode_file(source, tmp_path / "empty.wbs")
    wcodec.decode_file(tmp_path / "empty.wbs", tmp_path / "restored.safetensors")

    assert header.tensors == []
    assert (tmp_path / "empty.wbs").read_bytes() == wbs_bytes(header_bytes([], None), version=2)
    assert wcodec.load(tmp_path / "empty.wbs") == {}


def test_version_2_names_share_prefixes(tmp_path):
    path = tmp_path / "names.wbs"
    data = build_wbs([dict(name="block.0.weight", dtype="F32", shape=(2,), mode=MODE_RAW, payload=bytes(8)),
                      dict(name="block.0.bias", dtype="F32", shape=(2,), mode=MODE_RAW, payload=bytes(8))],
                     version=2)
    path.write_bytes(data)

    assert b"block.0.bias" not in data
    assert list(wcodec.load(path)) == ["block.0.weight", "block.0.bias"]


@pytest.mark.parametrize("shared, message", [(1, "exceeds the 0 bytes of the previous name"),
                                             (0, "not valid UTF-8")])
def test_version_2_name_rejected(shared, message):
    name = varint(shared) + varint(1) + b"\xff"
    data = build_wbs([dict(name=name, dtype="F32", shape=(2,), mode=MODE_RAW, payload=bytes(8))], version=2)

    with pytest.raises(WbsFormatError, match=message):
        container.read_container(data, "x.wbs")

"""Fuzzing of the .wbs decoder, and hostile or unusual input to the encoder and the command line.

The decoder's promise: any file either decodes into tensors of the declared dtypes and
shapes or raises WbsFormatError naming the tensor or field, without another exception,
without hanging, and without allocating more than DecodeLimits allows.

The seeded corpus starts from small valid files that the encoder writes (every coding
mode, frame mode and quantizer) and mutates them in four families:

- "bytes": bit flips, overwrites, inserted, duplicated or removed ranges, truncation, with
  no checksum fixed. The CRCs must catch every one of them.
- "payload": edits of one payload with its CRC and the header recomputed, so that the
  arithmetic decoder itself decodes garbage.
- "field": one header or preamble field set to an extreme or inconsistent value, with a
  correct header_crc32.
- "header": random header bytes overwritten, header_crc32 recomputed.

Environment variables: WCODEC_FUZZ_CASES (mutated files in the corpus, default 3000),
WCODEC_FUZZ_SEED (random seed of the corpus, default 0) and HYPOTHESIS_PROFILE=slow (many
more Hypothesis examples, see tests/conftest.py). `pytest -s` prints the outcome counts,
which also appear in the terminal summary.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import logging
import math
import os
import random
import struct
import subprocess
import sys
import textwrap
import threading
import traceback
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

import wcodec
from common import (
    DTYPE_CODES,
    MODE_ALIAS,
    MODE_INTEGER,
    MODE_QUANTIZED,
    MODE_RAW,
    read_safetensors,
    record_bytes,
    string,
    svarint,
    varint,
    wbs_bytes,
    write_safetensors,
)
from wcodec import cli, rate_control
from wcodec.codec import block_syntax, cabac, frame_coder, residual_coding
from wcodec.decoder import open_wbs
from wcodec.errors import WbsFormatError
from wcodec.formats import container
from wcodec.formats.dtypes import dtype_by_name, tensor_to_bytes
from wcodec.formats.safetensors_io import SafetensorsReader

FUZZ_CASES = int(os.environ.get("WCODEC_FUZZ_CASES", "3000"))
FUZZ_SEED = int(os.environ.get("WCODEC_FUZZ_SEED", "0"))
DECODE_TIMEOUT = 5.0  # seconds for one small file; the seeds decode in about a millisecond

# Limits for mutated files: a mutated shape must not make a test allocate gigabytes.
SMALL_LIMITS = container.DecodeLimits(max_header_bytes=1 << 20, max_output_bytes=1 << 20,
                                      max_tensor_elements=1 << 18)
# Pure Python decoding (NUMBA_DISABLE_JIT=1) of the seeds measured 17 times slower than compiled code.
TINY_LIMITS = container.DecodeLimits(max_header_bytes=1 << 20, max_output_bytes=1 << 16,
                                     max_tensor_elements=1 << 12)

REPO_DIR = Path(__file__).resolve().parents[1]
TESTS_DIR = Path(__file__).resolve().parent

# Broken varints: >= 2**63 (-1 as int64), 11 bytes long, a redundant zero byte, and a
# lone continuation byte that swallows the first byte of the next field.
BAD_VARINTS = (b"\xff" * 9 + b"\x01", b"\x80" * 9 + b"\x01", b"\x80" * 10 + b"\x01", b"\x80\x00",
               b"\xff\x80\x00", b"\x80")
EXTREME_COUNTS = (0, 1, 2, 3, 255, 2**31, 2**32 + 1, 2**40, 2**62, 2**63 - 1)

_SUMMARY_LINES: list[str] = []


class _FuzzSummary:
    """Plugin that prints the corpus outcome counts in pytest's terminal summary."""

    def pytest_terminal_summary(self, terminalreporter):
        if _SUMMARY_LINES:
            terminalreporter.section("wcodec fuzz summary")
            for line in _SUMMARY_LINES:
                terminalreporter.write_line(line)


@pytest.fixture(scope="module", autouse=True)
def fuzz_summary(request):
    manager = request.config.pluginmanager
    if not manager.has_plugin("wcodec-fuzz-summary"):
        manager.register(_FuzzSummary(), "wcodec-fuzz-summary")


def report(line: str) -> None:
    print(line)
    _SUMMARY_LINES.append(line)


# ---------------------------------------------------------------- seed files


def seed_models() -> dict[str, tuple[dict[str, torch.Tensor], dict[str, str] | None, dict]]:
    """Return name -> (tensors, metadata, encode options) of the seed files.

    Together the seeds contain every coding mode, every frame mode, both quantizers, a
    coding order other than the record order, metadata and tensors without elements.
    Every seed is small, so that pure Python decoding (NUMBA_DISABLE_JIT=1) stays fast.
    """
    generator = torch.Generator().manual_seed(20240611)

    def randn(*shape, scale=0.1):
        return scale * torch.randn(*shape, generator=generator)

    frame = randn(6, 8)
    conv = randn(4, 3, 2, 2)
    chain = randn(5, 6)
    tied = randn(3, 4)
    uint64_max = torch.tensor([-1, 5], dtype=torch.int64).view(torch.uint64)
    return {
        "intra": ({
            "conv": randn(4, 2, 3, 3),
            "bias": randn(4, scale=0.01),
            "fc": randn(6, 12).to(torch.bfloat16),
            "scale": torch.tensor(0.75, dtype=torch.float16),
            "f8": randn(3, 5).to(torch.float8_e4m3fn),
        }, None, dict(mode="intra")),
        "dependent": ({
            "a": randn(6, 10),
            "b": randn(3, 4, 2).half(),
            "c": randn(5),
        }, None, dict(mode="intra", quantizer="dependent")),
        "collocated": ({
            "f0": frame,
            "f1": frame + randn(6, 8, scale=0.005),
            "f2": randn(8, 9),
        }, None, dict(mode="collocated")),
        "adjacent": ({
            "c0": conv,
            "c1": conv[:, torch.tensor([2, 0, 1])] + randn(4, 3, 2, 2, scale=0.005),
            "c2": -conv[torch.tensor([3, 1, 2, 0])],
        }, None, dict(mode="adjacent")),
        "full": ({
            "later": chain.flip(0) + randn(5, 6, scale=0.004),
            "first": chain,
            "second": -chain + randn(5, 6, scale=0.004),
            "wide": torch.cat([chain, chain], dim=1),
        }, None, dict(mode="full", quantizer="dependent", order="greedy")),
        "rdoq": ({
            "w0": frame,
            "w1": 0.5 * frame + randn(6, 8, scale=0.01),
            "v": randn(7, scale=0.02),
        }, None, dict(mode="auto", rdoq=True, qp=-28)),
        "integer": ({
            "i64": torch.tensor([[-2**40, 5, 0], [7, 2**40, -1]]),
            "u8": torch.arange(24, dtype=torch.uint8).reshape(4, 6),
            "flags": torch.tensor([True, False, True, True]),
            "i8": torch.tensor([-128, 127, 0, -1], dtype=torch.int8),
            "u64": torch.tensor([2**62, 3], dtype=torch.uint64),
            "i16": torch.arange(-6, 6, dtype=torch.int16).reshape(2, 3, 2),
        }, None, {}),
        "raw": ({
            "kept": randn(3, 4),
            "nan": torch.tensor([1.0, float("nan"), -2.0], dtype=torch.float16),
            "inf": torch.tensor([[0.5, float("inf")], [-1.0, 2.0]]),
            "huge": torch.tensor([1e300, -3.0], dtype=torch.float64),
            "u64_max": uint64_max,
        }, None, dict(keep=("kept",))),
        "alias": ({
            "emb": tied,
            "head": tied.clone(),
            "ids": torch.tensor([3, 1, 4, 1, 5]),
            "ids_copy": torch.tensor([3, 1, 4, 1, 5]),
            "kept_a": randn(2, 2),
            "kept_b": None,  # filled below with a copy of kept_a
            "norm": randn(4, scale=0.01),
        }, None, dict(keep=("kept_*",))),
        "metadata": ({
            "w": randn(3, 3),
            "empty2d": torch.zeros(0, 3),
            "empty_ints": torch.zeros(0, dtype=torch.int32),
            "scalar_int": torch.tensor(7),
        }, {"format": "pt", "ключ": "значение", "": ""}, {}),
    }


@dataclasses.dataclass
class Seed:
    """A valid .wbs file split into the parts that mutations change, with its decoded tensors."""

    name: str
    data: bytes
    metadata: dict | None
    records: list[dict]  # keyword arguments of common.record_bytes, without payload fields
    payloads: list[bytes]  # by record index
    order: list[int]
    expected: dict[int, bytes]  # record index -> decoded tensor bytes

    def expected_digest(self) -> str:
        """Return a SHA-256 of the decoded tensors, to compare decoders across processes."""
        digest = hashlib.sha256()
        for index in sorted(self.expected):
            digest.update(self.expected[index])
        return digest.hexdigest()

    def dependencies(self, index: int) -> tuple[int, ...]:
        record = self.records[index]
        if record["mode"] == MODE_ALIAS:
            return (record["alias_of"],)
        return tuple(record.get("refs", ()))


def record_to_fields(record: container.TensorRecord) -> dict:
    """Return the record_bytes keyword arguments of a parsed record, payload fields excluded."""
    fields = dict(name=record.name, dtype=record.dtype, shape=tuple(record.shape), mode=record.coding_mode)
    if record.coding_mode == MODE_QUANTIZED:
        fields.update(qp=record.qp, quantizer=record.quantizer, frame_mode=record.frame_mode,
                      refs=tuple(record.refs), pred_gain=record.pred_gain)
    elif record.coding_mode == MODE_ALIAS:
        fields.update(alias_of=record.alias_of)
    return fields


def split_seed(name: str, data: bytes, expected: dict[int, bytes]) -> Seed:
    header, payload_base = container.read_container(data, name)
    payloads = []
    for record in header.tensors:
        start = payload_base + record.payload_offset
        payloads.append(data[start:start + record.payload_length])
    return Seed(name, data, header.metadata, [record_to_fields(r) for r in header.tensors], payloads,
                header.coding_order(), expected)


def encode_seeds(folder: Path) -> dict[str, Seed]:
    """Encode every seed model into `folder` and return the seeds by name."""
    seeds = {}
    for name, (tensors, metadata, options) in seed_models().items():
        if "kept_b" in tensors:
            tensors["kept_b"] = tensors["kept_a"].clone()
        source = write_safetensors(folder / f"{name}.safetensors", tensors, metadata)
        path = folder / f"{name}.wbs"
        wcodec.encode_file(source, path, **options)
        with open_wbs(path) as wbs:
            expected = {index: tensor_to_bytes(tensor) for index, tensor in wbs.iter_tensors()}
        seeds[name] = split_seed(name, path.read_bytes(), expected)
    return seeds


@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> dict[str, Seed]:
    return encode_seeds(tmp_path_factory.mktemp("seeds"))


# ---------------------------------------------------------------- building mutated files


@dataclasses.dataclass
class Layout:
    """The parts of a .wbs file, for editing. `assemble` computes offsets, lengths and CRCs.

    A record dict may carry explicit payload_offset, payload_length or payload_crc32
    entries, which win over the computed ones. The *_bytes fields replace the
    corresponding header part verbatim when set.
    """

    metadata: dict | None
    records: list[dict]
    payloads: list[bytes]
    order: list[int]
    metadata_bytes: bytes | None = None
    count_bytes: bytes | None = None
    order_bytes: bytes | None = None
    version: int = 1

    @classmethod
    def of(cls, seed: Seed) -> Layout:
        return cls(None if seed.metadata is None else dict(seed.metadata), [dict(r) for r in seed.records],
                   list(seed.payloads), list(seed.order), version=struct.unpack_from("<H", seed.data, 8)[0])


def assemble(layout: Layout) -> bytes:
    """Return the file bytes: payloads follow the coding order, then any record it misses."""
    count = len(layout.records)
    placement = []
    for index in layout.order:
        if isinstance(index, int) and 0 <= index < count and index not in placement:
            placement.append(index)
    placement += [index for index in range(count) if index not in placement]

    area = b""
    computed = {}
    for index in placement:
        payload = layout.payloads[index]
        computed[index] = dict(payload_offset=len(area), payload_length=len(payload),
                               payload_crc32=zlib.crc32(payload))
        area += payload
    records = []
    previous_name = ""
    for index, fields in enumerate(layout.records):
        fields = {**computed[index], **fields}
        if layout.version >= 2:
            fields["previous_name"] = previous_name
            previous_name = fields["name"] if isinstance(fields["name"], str) else ""
        records.append(record_bytes(**fields))

    if layout.metadata_bytes is not None:
        header = layout.metadata_bytes
    elif layout.metadata is None:
        header = b"\x00"
    else:
        header = b"\x01" + varint(len(layout.metadata))
        for key, value in layout.metadata.items():
            header += string(key) + string(value)
    header += layout.count_bytes if layout.count_bytes is not None else varint(count)
    header += b"".join(records)
    if layout.order_bytes is not None:
        header += layout.order_bytes
    else:
        header += b"".join(varint(index) for index in layout.order)
    return wbs_bytes(header, area, version=layout.version)


@dataclasses.dataclass
class Mutant:
    """A mutated file and what a decoder may do with it."""

    family: str  # "seed", "bytes", "payload", "field" or "header"
    operation: str
    data: bytes
    crc_fixed: bool  # False: every CRC is left as it was, so the file must be rejected
    intact: frozenset  # seed record indexes whose record and payload bytes are unchanged


def _changed_byte(rng: random.Random, old: int) -> int:
    return old ^ rng.randrange(1, 256)


def mutate_bytes(rng: random.Random, seed: Seed) -> Mutant:
    """Edit the raw file bytes without fixing any checksum."""
    data = bytearray(seed.data)
    size = len(data)
    operation = rng.choice(["bit_flip", "overwrite", "insert", "remove", "duplicate", "truncate", "append",
                            "zero_range"])
    if operation == "bit_flip":
        for bit in rng.sample(range(8 * size), rng.randint(1, 3)):
            data[bit // 8] ^= 1 << (bit % 8)
    elif operation == "overwrite":
        for position in rng.sample(range(size), rng.randint(1, 4)):
            data[position] = _changed_byte(rng, data[position])
    elif operation == "insert":
        position = rng.randrange(size + 1)
        data[position:position] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
    elif operation == "remove":
        start = rng.randrange(size)
        del data[start:start + rng.randint(1, 16)]
    elif operation == "duplicate":
        start = rng.randrange(size)
        chunk = data[start:start + rng.randint(1, 32)]
        position = rng.randrange(size + 1)
        data[position:position] = chunk
    elif operation == "truncate":
        del data[rng.randrange(size):]
    elif operation == "append":
        data += bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
    else:
        start = rng.randrange(size)
        end = min(size, start + rng.randint(1, 16))
        if any(data[start:end]):
            data[start:end] = bytes(end - start)
        else:
            data[start] = 0xFF
    return Mutant("bytes", operation, bytes(data), False, frozenset())


def _mutate_payload_bytes(rng: random.Random, payload: bytes) -> tuple[str, bytes]:
    size = len(payload)
    operation = rng.choice(["bit_flip", "overwrite", "truncate", "extend", "random", "zeros", "ones", "insert",
                            "remove"] if size else ["extend", "random", "ones"])
    data = bytearray(payload)
    if operation == "bit_flip":
        for bit in rng.sample(range(8 * size), min(8 * size, rng.randint(1, 4))):
            data[bit // 8] ^= 1 << (bit % 8)
    elif operation == "overwrite":
        for position in rng.sample(range(size), min(size, rng.randint(1, 4))):
            data[position] = _changed_byte(rng, data[position])
    elif operation == "truncate":
        del data[rng.randrange(size):]
    elif operation == "extend":
        filler = rng.choice([b"\x00", b"\xff", None])
        count = rng.randint(1, 8)
        data += filler * count if filler else bytes(rng.randrange(256) for _ in range(count))
    elif operation == "random":
        data = bytearray(rng.randrange(256) for _ in range(rng.randint(0, 2 * size + 8)))
    elif operation == "zeros":
        data = bytearray(size)
    elif operation == "ones":
        data = bytearray(b"\xff" * max(size, rng.randint(1, 64)))
    elif operation == "insert":
        position = rng.randrange(size + 1)
        data[position:position] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
    else:
        start = rng.randrange(size)
        del data[start:start + rng.randint(1, 8)]
    return operation, bytes(data)


def mutate_payload(rng: random.Random, seed: Seed) -> Mutant:
    """Edit one payload (or swap two) and recompute its CRC and the header around it."""
    layout = Layout.of(seed)
    count = len(layout.records)
    coded = [i for i, r in enumerate(layout.records) if r["mode"] in (MODE_QUANTIZED, MODE_INTEGER)]
    candidates = coded if coded and rng.random() < 0.85 else list(range(count))
    index = rng.choice(candidates)
    if rng.random() < 0.1 and len(coded) >= 2:
        first, second = rng.sample(coded, 2)
        layout.payloads[first], layout.payloads[second] = layout.payloads[second], layout.payloads[first]
        operation, touched = "swap", {first, second}
    else:
        operation, layout.payloads[index] = _mutate_payload_bytes(rng, layout.payloads[index])
        touched = {index}
    touched = {i for i in touched if layout.payloads[i] != seed.payloads[i]}
    return Mutant("payload", operation, assemble(layout), True, frozenset(set(range(count)) - touched))


def _pick_other(rng: random.Random, count: int, index: int) -> int:
    others = [i for i in range(count) if i != index]
    return rng.choice(others) if others else index


def mutate_field(rng: random.Random, seed: Seed, limits=SMALL_LIMITS) -> Mutant:
    """Set one header field to an extreme or inconsistent value, with a correct header_crc32."""
    layout = Layout.of(seed)
    records = layout.records
    count = len(records)
    index = rng.randrange(count) if count else 0
    intact = set(range(count)) - {index}
    operation = rng.choice([
        "name", "dtype", "ndim", "dim", "dim_varint", "mode", "qp", "quantizer", "frame_mode", "refs",
        "pred_gain", "alias_of", "payload_offset", "payload_length", "payload_crc32", "tensor_count",
        "metadata", "order", "record_drop", "record_copy", "header_length", "preamble",
    ] if count else ["tensor_count", "metadata", "header_length", "preamble"])
    record = records[index] if count else None

    if operation == "name":
        choice = rng.randrange(5)
        if choice == 0:
            record["name"] = records[_pick_other(rng, count, index)]["name"]
        elif choice == 1:
            record["name"] = "__metadata__"
        elif choice == 2:
            record["name"] = string(b"w\xff\xfe")
        elif choice == 3:
            record["name"] = varint(2**40) + b"w"
        else:
            record["name"] = varint(65537) + b"n" * 65537
    elif operation == "dtype":
        record["dtype"] = rng.choice(list(DTYPE_CODES) + [0, 16, 255])
    elif operation == "ndim":
        shape = tuple(record["shape"])
        choice = rng.randrange(4)
        if choice == 0:
            record["shape"] = bytes([33]) + b"\x01" * 33
        elif choice == 1:
            record["shape"] = shape + (1,)
        elif choice == 2:
            record["shape"] = shape[:-1]
        else:
            record["shape"] = (math.prod(shape),) if len(shape) != 1 else (1,) + shape
    elif operation == "dim":
        shape = list(record["shape"]) or [1]
        if rng.random() < 0.2:
            # A tensor without elements, which has an empty payload in every mode.
            shape = [0] + [rng.choice(EXTREME_COUNTS) for _ in range(rng.randint(1, 3))]
            rng.shuffle(shape)
            layout.payloads[index] = b""
        else:
            shape[rng.randrange(len(shape))] = rng.choice(EXTREME_COUNTS)
        record["shape"] = tuple(shape)
    elif operation == "dim_varint":
        shape = list(record["shape"]) or [1]
        parts = [varint(dim) for dim in shape]
        parts[rng.randrange(len(parts))] = rng.choice(BAD_VARINTS)
        record["shape"] = bytes([len(parts)]) + b"".join(parts)
    elif operation == "mode":
        record["mode"] = rng.choice([MODE_RAW, MODE_QUANTIZED, MODE_INTEGER, MODE_ALIAS, 4, 127, 255])
        if record["mode"] == MODE_QUANTIZED:
            record.setdefault("qp", -32)
    elif operation == "qp":
        record["mode"] = MODE_QUANTIZED
        record["qp"] = rng.choice([-257, 256, -2**40, 2**40, 2**62, -256, 255, 0, -32] + list(BAD_VARINTS))
    elif operation == "quantizer":
        record["mode"] = MODE_QUANTIZED
        record.setdefault("qp", -32)
        record["quantizer"] = rng.choice([0, 1, 2, 255])
    elif operation == "frame_mode":
        record["mode"] = MODE_QUANTIZED
        record.setdefault("qp", -32)
        record["frame_mode"] = rng.choice([0, 1, 2, 3, 4, 255])
        if record["frame_mode"] and not record.get("refs"):
            record["refs"] = (_pick_other(rng, count, index),)
            record["pred_gain"] = 64
    elif operation == "refs":
        record["mode"] = MODE_QUANTIZED
        record.setdefault("qp", -32)
        other = _pick_other(rng, count, index)
        record["refs"] = rng.choice([
            (), (index,), (other,), (other, other), (count,), (2**40,), tuple(range(9)),
            tuple(rng.randrange(count) for _ in range(rng.randint(1, 8))),
            varint(2**62), varint(3) + b"\x80\x00", varint(1) + rng.choice(BAD_VARINTS),
        ])
        record["frame_mode"] = rng.choice([1, 2, 3, record.get("frame_mode", 0)])
        record["pred_gain"] = record.get("pred_gain") or 64
    elif operation == "pred_gain":
        record["mode"] = MODE_QUANTIZED
        record.setdefault("qp", -32)
        record["pred_gain"] = rng.choice([0, 1, 63, 64, 128, 129, 2**32, 2**63 - 1] + list(BAD_VARINTS))
    elif operation == "alias_of":
        record["mode"] = MODE_ALIAS
        record["alias_of"] = rng.choice([index, index + 1, count, 2**62, _pick_other(rng, count, index)])
    elif operation == "payload_offset":
        record["payload_offset"] = rng.choice([1, 2**32, 2**62, 2**63 - 1])
    elif operation == "payload_length":
        record["payload_length"] = len(layout.payloads[index]) + rng.choice([-1, 1, 2**32, 2**62])
        if record["payload_length"] < 0:
            record["payload_length"] = 2**63 - 1
    elif operation == "payload_crc32":
        record["payload_crc32"] = zlib.crc32(layout.payloads[index]) ^ (1 << rng.randrange(32))
    elif operation == "tensor_count":
        layout.count_bytes = rng.choice([varint(count + 1), varint(max(0, count - 1)), varint(count + 1000),
                                         varint(2**40)] + list(BAD_VARINTS))
        intact = set()
    elif operation == "metadata":
        layout.metadata_bytes = rng.choice([
            b"\x02", b"\x01" + varint(2**40), b"\x01\x02" + string("k") + string("a") + string("k") + string("b"),
            b"\x01\x01" + string(b"\xc3\x28") + string("v"), b"\x01" + rng.choice(BAD_VARINTS), b"\x00",
            b"\x01\x00", b"\x01\x01" + varint(2**40) + b"k",
        ])
        intact = set(range(count))
    elif operation == "order":
        order = layout.order
        choice = rng.randrange(4)
        if choice == 0 and count >= 2:
            a, b = rng.sample(range(count), 2)
            order[a], order[b] = order[b], order[a]
            intact = set(range(count))
        elif choice == 1 and count >= 2:
            a, b = rng.sample(range(count), 2)
            order[a] = order[b]
        elif choice == 2:
            order[rng.randrange(count)] = rng.choice([count, count + 1, 2**40])
        else:
            layout.order_bytes = b"".join(varint(i) for i in order[:-1]) + rng.choice([b"", b"\x00"])
    elif operation == "record_drop":
        del layout.records[index]
        del layout.payloads[index]
        layout.order = [i - (i > index) for i in layout.order if i != index]
        intact = set()
    elif operation == "record_copy":
        copy = dict(record, name=record["name"] + ".copy")
        layout.records.append(copy)
        layout.payloads.append(layout.payloads[index])
        layout.order.append(count)
        intact = set(range(count))
    elif operation == "preamble":  # magic, version or flags, which no CRC covers
        data = bytearray(assemble(layout))
        choice = rng.randrange(3)
        if choice == 0:
            data[rng.randrange(8)] ^= 1 << rng.randrange(8)
        elif choice == 1:
            struct.pack_into("<H", data, 8, rng.choice([0, 2, 0x100, 0xFFFF]))
        else:
            struct.pack_into("<H", data, 10, rng.choice([1, 0x8000, 0xFFFF]))
        return Mutant("field", operation, bytes(data), True, frozenset())
    else:  # header_length: the declared header takes one byte more or less, CRC over the new range
        data = assemble(layout)
        header_length = struct.unpack_from("<I", data, 12)[0] + rng.choice([-1, 1])
        header = data[20:20 + header_length]
        data = data[:12] + struct.pack("<II", header_length, zlib.crc32(header)) + data[20:]
        return Mutant("field", operation, data, True, frozenset())

    return Mutant("field", operation, assemble(layout), True, frozenset(intact))


def mutate_header(rng: random.Random, seed: Seed) -> Mutant:
    """Overwrite random header bytes and recompute header_crc32."""
    data = bytearray(seed.data)
    header_length = struct.unpack_from("<I", data, 12)[0]
    for position in rng.sample(range(20, 20 + header_length), min(header_length, rng.randint(1, 4))):
        data[position] = rng.randrange(256) if rng.random() < 0.5 else _changed_byte(rng, data[position])
    struct.pack_into("<I", data, 16, zlib.crc32(bytes(data[20:20 + header_length])))
    return Mutant("header", "overwrite", bytes(data), True, frozenset())


def build_corpus(seeds: dict[str, Seed], cases: int, rng_seed: int, limits=SMALL_LIMITS) -> list[tuple]:
    """Return [(case id, seed, mutant)]: each seed unchanged, then `cases` mutants."""
    rng = random.Random(rng_seed)
    corpus = [(f"{name}/seed", seed, Mutant("seed", "none", seed.data, True, frozenset(range(len(seed.records)))))
              for name, seed in seeds.items()]
    families = [(mutate_bytes, 25), (mutate_payload, 35), (mutate_field, 30), (mutate_header, 10)]
    names = sorted(seeds)
    for case in range(cases):
        seed = seeds[rng.choice(names)]
        mutate = rng.choices([f for f, _ in families], weights=[w for _, w in families])[0]
        mutant = mutate_field(rng, seed, limits) if mutate is mutate_field else mutate(rng, seed)
        if mutant.data == seed.data:
            mutant = dataclasses.replace(mutant, crc_fixed=True)
        corpus.append((f"{seed.name}/{case}", seed, mutant))
    return corpus


# ---------------------------------------------------------------- decoding with a time bound


@dataclasses.dataclass
class Outcome:
    """The result of decoding one file."""

    status: str  # "decoded", "rejected", "crashed" or "hung"
    message: str = ""
    header: container.WbsHeader | None = None
    tensors: dict | None = None  # record index -> tensor


def run_with_timeout(function, seconds: float):
    """Run `function` in a daemon thread; return ("ok", value), ("error", exception) or ("hung", None).

    A hung decode cannot be stopped (compiled Numba code does not check for signals), so
    the thread is left running as a daemon and the test reports the case.
    """
    result = {}

    def target():
        try:
            result["value"] = function()
        except BaseException as error:  # noqa: BLE001 - the caller classifies every exception
            result["error"] = error

    thread = threading.Thread(target=target, name="wcodec-fuzz-decode", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        return "hung", None
    if "error" in result:
        return "error", result["error"]
    return "ok", result["value"]


def decode_outcome(path: Path, limits: container.DecodeLimits, timeout: float = DECODE_TIMEOUT) -> Outcome:
    """Decode `path` with open_wbs and iter_tensors under `limits` and a time bound."""

    def decode():
        with open_wbs(path, limits) as wbs:
            return wbs.header, dict(wbs.iter_tensors())

    status, value = run_with_timeout(decode, timeout)
    if status == "hung":
        return Outcome("hung", f"no result after {timeout} s")
    if status == "error":
        if isinstance(value, WbsFormatError):
            return Outcome("rejected", str(value))
        text = "".join(traceback.format_exception(value))
        return Outcome("crashed", text[-2000:])
    header, tensors = value
    return Outcome("decoded", header=header, tensors=tensors)


# Words after the path that name where a file is wrong: a tensor, a field or a part of the file.
_LOCATIONS = ("tensor ", "field ", "header", "metadata entry", "payload area", "file ")


def problems_of(outcome: Outcome, mutant: Mutant, seed: Seed, path: Path) -> list[str]:
    """Return what is wrong with the outcome of one case; [] when the decoder kept its promise."""
    if outcome.status in ("crashed", "hung"):
        return [f"{outcome.status}: {outcome.message}"]
    if outcome.status == "rejected":
        problems = []
        message = outcome.message
        prefix = f"{path}: "
        if not message.startswith(prefix) or not message[len(prefix):].startswith(_LOCATIONS):
            problems.append(f"message does not name the path and a tensor or field: {message[:300]!r}")
        if "\n" in message:
            problems.append(f"message has several lines: {message[:300]!r}")
        if mutant.family == "seed":
            problems.append(f"valid seed rejected: {message[:300]}")
        return problems

    if not mutant.crc_fixed:
        return ["damaged file decoded although no CRC was recomputed"]
    header, tensors = outcome.header, outcome.tensors
    problems = []
    if sorted(tensors) != list(range(len(header.tensors))):
        problems.append(f"decoded records {sorted(tensors)} for {len(header.tensors)} records")
    for index, tensor in tensors.items():
        record = header.tensors[index]
        problems += check_tensor(record, tensor, header)
    reliable = set()
    for index in seed.order:
        if index in mutant.intact and all(dep in reliable for dep in seed.dependencies(index)):
            reliable.add(index)
    for index in sorted(reliable):
        if index in tensors and tensor_to_bytes(tensors[index]) != seed.expected[index]:
            problems.append(f"record {index} ({seed.records[index]['name']!r}) is unchanged but decoded "
                            f"differently")
    return problems


def check_tensor(record: container.TensorRecord, tensor: torch.Tensor, header: container.WbsHeader) -> list[str]:
    """Return problems with one decoded tensor: dtype, shape, and finite values for lossy records."""
    problems = []
    expected_dtype = dtype_by_name(record.dtype).torch_dtype
    if tensor.dtype != expected_dtype:
        problems.append(f"{record.name!r}: dtype {tensor.dtype}, declared {record.dtype}")
    if tuple(tensor.shape) != tuple(record.shape):
        problems.append(f"{record.name!r}: shape {tuple(tensor.shape)}, declared {record.shape}")
    coded = header.tensors[record.alias_of] if record.coding_mode == MODE_ALIAS else record
    if coded.coding_mode == MODE_QUANTIZED and tensor.numel():
        if not bool(torch.isfinite(tensor.to(torch.float64)).all()):
            problems.append(f"{record.name!r}: quantized tensor decoded to NaN or Inf")
    return problems


def run_corpus(corpus, folder: Path, limits: container.DecodeLimits, also_load_every: int = 0):
    """Decode every case of `corpus`; return (outcome counts, failures).

    With `also_load_every` = n > 0, every n-th payload case is also decoded with
    wcodec.load, which decodes in several threads and must agree with open_wbs. load
    uses the default limits, which is safe here because payload edits keep the shapes.
    """
    counts = collections.Counter()
    failures = []
    path = folder / "case.wbs"
    for number, (case_id, seed, mutant) in enumerate(corpus):
        path.write_bytes(mutant.data)
        outcome = decode_outcome(path, limits)
        counts[(mutant.family, outcome.status)] += 1
        problems = problems_of(outcome, mutant, seed, path)
        if also_load_every and mutant.family == "payload" and number % also_load_every == 0:
            problems += load_agrees(path, outcome)
        if problems:
            keep = folder / f"failure-{len(failures)}.wbs"
            keep.write_bytes(mutant.data)
            failures.append(f"{case_id} {mutant.family}/{mutant.operation} (file {keep}): {problems[0]}")
    return counts, failures


def load_agrees(path: Path, outcome: Outcome) -> list[str]:
    status, value = run_with_timeout(lambda: wcodec.load(path), DECODE_TIMEOUT)
    if status == "hung":
        return ["wcodec.load hung"]
    if status == "error":
        if not isinstance(value, WbsFormatError):
            return ["wcodec.load crashed: " + "".join(traceback.format_exception(value))[-1500:]]
        return [] if outcome.status == "rejected" else [f"wcodec.load rejected what open_wbs decoded: {value}"]
    if outcome.status != "decoded":
        return ["wcodec.load decoded what open_wbs rejected"]
    for index, record in enumerate(outcome.header.tensors):
        if tensor_to_bytes(value[record.name]) != tensor_to_bytes(outcome.tensors[index]):
            return [f"wcodec.load and open_wbs differ on {record.name!r}"]
    return []


def format_counts(counts: collections.Counter) -> str:
    families = sorted({family for family, _ in counts})
    parts = []
    for family in families:
        statuses = {status: n for (f, status), n in counts.items() if f == family}
        parts.append(f"{family}: " + ", ".join(f"{n} {status}" for status, n in sorted(statuses.items())))
    return "; ".join(parts)


# ---------------------------------------------------------------- the seeded corpus


def test_seeds_cover_every_mode(seeds):
    records = [r for seed in seeds.values() for r in seed.records]
    modes = {r["mode"] for r in records}
    frame_modes = {r["frame_mode"] for r in records if r["mode"] == MODE_QUANTIZED}
    quantizers = {(r["quantizer"], r["frame_mode"] > 0) for r in records if r["mode"] == MODE_QUANTIZED}

    assert modes == {MODE_RAW, MODE_QUANTIZED, MODE_INTEGER, MODE_ALIAS}
    assert frame_modes == {0, 1, 2, 3, 4}
    assert quantizers == {(0, False), (0, True), (1, False), (1, True)}
    assert any(seed.order != sorted(seed.order) for seed in seeds.values())
    assert any(seed.metadata for seed in seeds.values())
    assert all(len(seed.data) < 4096 for seed in seeds.values())


def test_seed_layout_reassembles(seeds):
    # The mutations edit a Layout, so an unchanged Layout must give back the seed's bytes.
    for seed in seeds.values():
        assert assemble(Layout.of(seed)) == seed.data, seed.name


def test_mutation_corpus(seeds, tmp_path):
    corpus = build_corpus(seeds, FUZZ_CASES, FUZZ_SEED)
    counts, failures = run_corpus(corpus, tmp_path, SMALL_LIMITS, also_load_every=4)

    report(f"fuzz corpus (seed {FUZZ_SEED}): {len(corpus)} cases; {format_counts(counts)}")
    assert not failures, f"{len(failures)} of {len(corpus)} cases failed:\n" + "\n".join(failures[:20])
    # A corpus in which nothing decodes, or nothing is rejected, tests little.
    assert counts[("payload", "decoded")] > 0
    assert counts[("payload", "rejected")] > 0
    assert counts[("field", "decoded")] > 0


def test_truncation_every_offset(seeds, tmp_path):
    # Every prefix of a file with inter frames, aliases and a reordered coding order is damaged.
    data = seeds["full"].data
    path = tmp_path / "cut.wbs"
    path.write_bytes(data)
    for length in range(len(data) - 1, -1, -1):
        os.truncate(path, length)
        outcome = decode_outcome(path, container.DecodeLimits())
        assert outcome.status == "rejected", f"prefix of {length} bytes: {outcome.status} {outcome.message}"


def test_corpus_without_jit(seeds, tmp_path):
    """Decode a small corpus in pure Python, where an out-of-range index raises IndexError.

    Compiled Numba code does not check array bounds, so an index error there could read or
    write outside an array unnoticed; with NUMBA_DISABLE_JIT=1 it becomes an exception.
    """
    for seed in seeds.values():
        (tmp_path / f"{seed.name}.wbs").write_bytes(seed.data)
    script = textwrap.dedent(f"""
        import json, sys
        from pathlib import Path
        sys.path.insert(0, {str(TESTS_DIR)!r})
        import test_fuzz
        folder = Path({str(tmp_path)!r})
        seeds = {{}}
        for path in sorted(folder.glob("*.wbs")):
            with test_fuzz.open_wbs(path) as wbs:
                expected = {{i: test_fuzz.tensor_to_bytes(t) for i, t in wbs.iter_tensors()}}
            seeds[path.stem] = test_fuzz.split_seed(path.stem, path.read_bytes(), expected)
        work = folder / "work"
        work.mkdir()
        corpus = test_fuzz.build_corpus(seeds, {max(60, FUZZ_CASES // 8)}, {FUZZ_SEED + 1},
                                        test_fuzz.TINY_LIMITS)
        counts, failures = test_fuzz.run_corpus(corpus, work, test_fuzz.TINY_LIMITS)
        decoded = {{name: seed.expected_digest() for name, seed in seeds.items()}}
        print(json.dumps({{"cases": len(corpus), "counts": test_fuzz.format_counts(counts),
                          "failures": failures, "seeds": decoded}}))
    """)
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                               timeout=240, cwd=REPO_DIR)
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(completed.stdout.strip().splitlines()[-1])

    report(f"fuzz corpus without JIT: {result['cases']} cases; {result['counts']}")
    assert not result["failures"], "\n".join(result["failures"][:20])
    # The pure Python decoder must agree with the compiled one on the unchanged seeds.
    assert result["seeds"] == {name: seed.expected_digest() for name, seed in seeds.items()}


# ---------------------------------------------------------------- Hypothesis: payloads and header fields

SEED_NAMES = ("intra", "dependent", "collocated", "adjacent", "full", "rdoq", "integer", "raw", "alias",
              "metadata")


def check_case(seed: Seed, mutant: Mutant, folder: Path) -> None:
    path = folder / "case.wbs"
    path.write_bytes(mutant.data)
    outcome = decode_outcome(path, SMALL_LIMITS)
    assert problems_of(outcome, mutant, seed, path) == []


@given(st.data())
def test_payload_bytes_decode_or_reject(seeds, tmp_path_factory, data):
    seed = seeds[data.draw(st.sampled_from(SEED_NAMES), label="seed")]
    coded = [i for i, r in enumerate(seed.records) if r["mode"] in (MODE_QUANTIZED, MODE_INTEGER)]
    index = data.draw(st.sampled_from(coded or range(len(seed.records))), label="record")
    original = seed.payloads[index]
    if original and data.draw(st.booleans(), label="edit the payload"):
        edits = data.draw(st.lists(st.tuples(st.integers(0, len(original) - 1), st.integers(0, 255)), min_size=1,
                                   max_size=6), label="edits")
        payload = bytearray(original)
        for position, value in edits:
            payload[position] = value
        payload = bytes(payload)
    else:
        payload = data.draw(st.binary(max_size=2 * len(original) + 16), label="payload")
    layout = Layout.of(seed)
    layout.payloads[index] = payload
    intact = set(range(len(seed.records))) - ({index} if payload != original else set())
    mutant = Mutant("payload", "hypothesis", assemble(layout), True, frozenset(intact))

    check_case(seed, mutant, tmp_path_factory.mktemp("payload"))


# Field -> strategy of its values for the header field test. Varint fields take any 64-bit value.
FIELD_VALUES = {
    "dtype": st.integers(0, 255),
    "shape": st.lists(st.integers(0, 2**64 - 1) | st.integers(0, 16), max_size=4).map(tuple),
    "mode": st.integers(0, 255),
    "qp": st.integers(-2**64, 2**64),
    "quantizer": st.integers(0, 255),
    "frame_mode": st.integers(0, 255),
    "refs": st.lists(st.integers(0, 12) | st.integers(0, 2**64 - 1), max_size=10).map(tuple),
    "pred_gain": st.integers(0, 2**64 - 1) | st.integers(0, 200),
    "alias_of": st.integers(0, 12) | st.integers(0, 2**64 - 1),
    "payload_offset": st.integers(0, 2**64 - 1) | st.integers(0, 600),
    "payload_length": st.integers(0, 2**64 - 1) | st.integers(0, 600),
}


@given(st.data())
def test_header_field_decode_or_reject(seeds, tmp_path_factory, data):
    seed = seeds[data.draw(st.sampled_from(SEED_NAMES), label="seed")]
    index = data.draw(st.integers(0, len(seed.records) - 1), label="record")
    layout = Layout.of(seed)
    record = layout.records[index]
    for _ in range(data.draw(st.integers(1, 3), label="fields")):
        name = data.draw(st.sampled_from(sorted(FIELD_VALUES)), label="field")
        record[name] = data.draw(FIELD_VALUES[name], label=name)
    mutant = Mutant("field", "hypothesis", assemble(layout), True, frozenset(set(range(len(seed.records))) - {index}))

    check_case(seed, mutant, tmp_path_factory.mktemp("field"))


@given(rows=st.integers(1, 5), cols=st.integers(1, 6), block_size=st.integers(1, 4),
       frame_mode=st.sampled_from([0, 1, 2, 3]), quantizer=st.sampled_from([0, 1]),
       ref_shapes=st.lists(st.tuples(st.integers(1, 5), st.integers(1, 6)), min_size=1, max_size=8),
       pred_gain=st.integers(1, 128), payload=st.binary(max_size=80), values_seed=st.integers(0, 2**32 - 1))
def test_frame_decoder_invariants(rows, cols, block_size, frame_mode, quantizer, ref_shapes, pred_gain, payload,
                                  values_seed):
    """Garbage payloads give levels, block modes and reference indexes within their ranges."""
    if frame_mode in (block_syntax.FRAME_COLLOCATED, block_syntax.FRAME_ADJACENT):
        ref_shapes = ref_shapes[:1]
    rng = np.random.default_rng(values_seed)
    refs = [rng.standard_normal((r, c, block_size)) for r, c in ref_shapes]
    recon, levels, syntax, coder = frame_coder.decode_frame(payload, (rows, cols, block_size), 2.0**-8, frame_mode,
                                                            refs if frame_mode else [], pred_gain, quantizer)

    assert recon.shape == (rows, cols, block_size)
    assert np.isfinite(recon).all()
    assert np.abs(levels).max() <= residual_coding.MAX_LEVEL
    assert coder[cabac.ERROR] in (0, 1)
    assert coder[cabac.POS] >= 4
    if frame_mode == block_syntax.FRAME_INTRA:
        assert syntax is None
        return
    modes = syntax.modes
    assert set(np.unique(modes)) <= {block_syntax.BLOCK_INTRA, block_syntax.BLOCK_INTER, block_syntax.BLOCK_SKIP}
    predicted = modes != block_syntax.BLOCK_INTRA
    slots = syntax.slots[predicted]
    indexes = syntax.indexes[predicted]
    assert ((slots >= 0) & (slots < len(refs))).all()
    sizes = np.array([r * c for r, c in ref_shapes])[slots]
    assert ((indexes >= 0) & (indexes < sizes)).all()
    assert set(np.unique(syntax.signs[predicted])) <= {-1, 1}
    if frame_mode == block_syntax.FRAME_COLLOCATED:
        o, i = np.nonzero(predicted)
        assert (o < ref_shapes[0][0]).all()
        assert (i < ref_shapes[0][1]).all()
        assert (indexes == o * ref_shapes[0][1] + i).all()


@given(rows=st.integers(1, 4), blocks=st.integers(1, 12), block_size=st.integers(1, 5), payload=st.binary(max_size=64))
def test_level_decoder_invariants(rows, blocks, block_size, payload):
    levels, coder = residual_coding.decode_levels(payload, (rows, blocks * block_size), block_size)

    assert levels.shape == (rows, blocks * block_size)
    assert levels.dtype == np.int64
    assert np.abs(levels).max() <= residual_coding.MAX_LEVEL
    # A read past the end returns a zero byte, so trailing zero bytes change nothing.
    stripped, stripped_coder = residual_coding.decode_levels(payload.rstrip(b"\x00"), levels.shape, block_size)
    assert np.array_equal(stripped, levels)
    assert stripped_coder[cabac.ERROR] == coder[cabac.ERROR]


# ---------------------------------------------------------------- limits and memory

# Tiny files that declare more than the default limits allow (2**40 elements per tensor,
# 64 GiB of output). name -> (records, text the message must contain). Each first tensor
# needs hundreds of GiB of working memory, so if a limit check broke, numpy would raise
# MemoryError instead of filling the machine's memory.
HUGE_DECLARATIONS = {
    "f32_2_40_elements": ([dict(name="huge", dtype="F32", shape=(2**40,), mode=MODE_QUANTIZED, qp=-32)],
                          "decoded size exceeds the limit"),
    "u8_2_40_plus_1024": ([dict(name="huge", dtype="U8", shape=(2**20, 2**20 + 1), mode=MODE_INTEGER)],
                          "exceeds the limit of 1099511627776 elements"),
    "dim_2_63_minus_1": ([dict(name="huge", dtype="U8", shape=(2**63 - 1,), mode=MODE_RAW)], "limit of"),
    "dims_past_2_64": ([dict(name="huge", dtype="BOOL", shape=(2**32, 2**32, 2**32), mode=MODE_INTEGER)],
                       "limit of"),
    "ndim_32_of_4": ([dict(name="huge", dtype="F16", shape=(4,) * 32, mode=MODE_QUANTIZED, qp=-32)], "limit of"),
    "three_32_gib_tensors": ([dict(name=f"huge{i}", dtype="F8_E5M2", shape=(2**17, 2**18), mode=MODE_QUANTIZED,
                                   qp=-32) for i in range(3)], "tensor 'huge2': decoded size exceeds the limit"),
    "alias_doubles_64_gib": ([dict(name="huge", dtype="F8_E4M3", shape=(2**18, 2**18), mode=MODE_QUANTIZED, qp=-32),
                              dict(name="tied", dtype="F8_E4M3", shape=(2**18, 2**18), mode=MODE_ALIAS, alias_of=0)],
                             "tensor 'tied': decoded size exceeds the limit"),
}


@pytest.mark.parametrize("case", sorted(HUGE_DECLARATIONS))
def test_huge_declaration_rejected_before_allocation(tmp_path, case):
    records, fragment = HUGE_DECLARATIONS[case]
    path = tmp_path / "huge.wbs"
    path.write_bytes(build_wbs_file(records))
    assert path.stat().st_size < 1024

    tracemalloc.start()
    try:
        outcome = decode_outcome(path, container.DecodeLimits())
        with pytest.raises(WbsFormatError) as caught:
            wcodec.load(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert outcome.status == "rejected", outcome.message
    assert fragment in outcome.message
    assert "tensor 'huge" in outcome.message or "tensor 'tied'" in outcome.message
    assert str(caught.value) == outcome.message
    assert peak < 1 << 20


def build_wbs_file(records: list[dict]) -> bytes:
    """Return a .wbs file of `records` (record_bytes arguments) whose payloads are all empty."""
    return assemble(Layout(None, [dict(r) for r in records], [b""] * len(records), list(range(len(records)))))


@pytest.mark.parametrize("mode", [
    MODE_RAW,
    MODE_QUANTIZED,
    MODE_INTEGER,
], ids=["raw", "quantized", "integer"])
def test_zero_dimension_with_huge_dims(tmp_path, mode):
    # A tensor without elements whose other dimensions multiply past 2**63.
    path = tmp_path / "zero.wbs"
    path.write_bytes(build_wbs_file([dict(name="empty", dtype="F32" if mode != MODE_INTEGER else "I32",
                                          shape=(0, 2**62, 2**62), mode=mode, qp=-32)]))

    with pytest.raises(WbsFormatError, match=r"tensor 'empty': field shape"):
        wcodec.load(path)


def test_output_limit_via_open_wbs(tmp_path):
    # 2 MiB of U8 output declared by a file of a few dozen bytes with an empty payload.
    path = tmp_path / "zeros.wbs"
    path.write_bytes(build_wbs_file([dict(name="zeros", dtype="U8", shape=(512, 4096), mode=MODE_INTEGER)]))
    declared = 512 * 4096

    assert path.stat().st_size < 64
    with pytest.raises(WbsFormatError, match=r"tensor 'zeros': decoded size exceeds the limit of 2097151 bytes"):
        with open_wbs(path, container.DecodeLimits(max_output_bytes=declared - 1)):
            pass
    with pytest.raises(WbsFormatError, match=r"tensor 'zeros': field shape \[512, 4096\] exceeds the limit of"):
        with open_wbs(path, container.DecodeLimits(max_tensor_elements=declared - 1)):
            pass
    with pytest.raises(WbsFormatError, match="field header_length"):
        with open_wbs(path, container.DecodeLimits(max_header_bytes=4)):
            pass
    with open_wbs(path, container.DecodeLimits(max_output_bytes=declared, max_tensor_elements=declared)) as wbs:
        tensors = dict(wbs.iter_tensors())
    assert tuple(tensors[0].shape) == (512, 4096)
    assert tensors[0].dtype == torch.uint8


# Measured peak of numpy memory per element of the largest frame, for an inter frame of F8
# weights (the worst case: 1-byte output, int64 levels, float64 reconstruction, prediction
# and reference). docs/security.md quotes this bound.
WORKING_BYTES_PER_ELEMENT = 80


def test_decoder_working_memory_per_element(tmp_path):
    rows, cols = 512, 1024
    path = tmp_path / "frames.wbs"
    path.write_bytes(build_wbs_file([
        dict(name="intra", dtype="F8_E4M3", shape=(rows, cols), mode=MODE_QUANTIZED, qp=-32),
        dict(name="inter", dtype="F8_E4M3", shape=(rows, cols), mode=MODE_QUANTIZED, qp=-32, frame_mode=1,
             refs=(0,), pred_gain=64),
    ]))

    tracemalloc.start()
    try:
        with open_wbs(path) as wbs:
            shapes = [tuple(tensor.shape) for _, tensor in wbs.iter_tensors()]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert shapes == [(rows, cols)] * 2
    report(f"decoder working memory: {peak / (rows * cols):.1f} bytes per element of an F8 inter frame")
    assert peak < WORKING_BYTES_PER_ELEMENT * rows * cols


def test_huge_declarations_rss_in_subprocess(tmp_path):
    # Resident memory also counts what tracemalloc does not see (torch, Numba runtime).
    for case, (records, _) in HUGE_DECLARATIONS.items():
        (tmp_path / f"{case}.wbs").write_bytes(build_wbs_file(records))
    warm_up = tmp_path / "warm_up.bin"
    warm_up.write_bytes(build_wbs_file([dict(name="w", dtype="F32", shape=(4, 4), mode=MODE_QUANTIZED, qp=-32)]))
    script = textwrap.dedent(f"""
        import json, resource
        from pathlib import Path
        import wcodec
        from wcodec.errors import WbsFormatError
        wcodec.load({str(warm_up)!r})
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        outcomes = {{}}
        for path in sorted(Path({str(tmp_path)!r}).glob("*.wbs")):
            try:
                wcodec.load(path)
                outcomes[path.stem] = "decoded"
            except WbsFormatError:
                outcomes[path.stem] = "rejected"
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({{"outcomes": outcomes, "growth_kib": after - before}}))
    """)
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                               cwd=REPO_DIR)
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(completed.stdout.strip().splitlines()[-1])

    assert result["outcomes"] == {case: "rejected" for case in HUGE_DECLARATIONS}
    assert result["growth_kib"] < 32 * 1024


# ---------------------------------------------------------------- the command line


def run_main(*args) -> tuple[int, str, str]:
    """Run the `wcodec` entry point in process; return (exit status, stdout, stderr).

    cli.main is what the console script calls: it turns usage errors into one line and
    exit status 1, which CliRunner.invoke on the click group would not show.
    """
    runner = CliRunner()
    saved_argv = sys.argv
    with runner.isolation() as (stdout, stderr, _):
        sys.argv = ["wcodec", *(str(arg) for arg in args)]
        try:
            cli.main()
            status = 0
        except SystemExit as exit_:
            status = exit_.code if isinstance(exit_.code, int) else 1
        finally:
            sys.argv = saved_argv
    return status, stdout.getvalue().decode(), stderr.getvalue().decode()


def assert_one_line_error(result: tuple[int, str, str], status: int, *fragments: str) -> None:
    code, stdout, stderr = result
    lines = stderr.splitlines()
    assert code == status, (code, stdout, stderr)
    assert len(lines) == 1, stderr
    assert lines[0].startswith("wcodec: error: ")
    assert "Traceback" not in stdout + stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_cli_exit_2_for_damaged_files(seeds, tmp_path):
    # Up to three rejected files of each mutation, decoded and analysed by the command line.
    corpus = build_corpus(seeds, 600, FUZZ_SEED + 2)
    probe = tmp_path / "probe.wbs"
    damaged = []
    per_operation = collections.Counter()
    for case_id, _, mutant in corpus:
        key = (mutant.family, mutant.operation)
        if per_operation[key] >= 3:
            continue
        probe.write_bytes(mutant.data)
        if decode_outcome(probe, SMALL_LIMITS).status == "rejected":
            damaged.append((case_id, mutant.data))
            per_operation[key] += 1
    folder = tmp_path / "cli"
    folder.mkdir()
    path = folder / "damaged.wbs"
    output = folder / "out.safetensors"

    stats_statuses = collections.Counter()
    for case_id, data in damaged:
        path.write_bytes(data)
        assert_one_line_error(run_main("decode", path, "-o", output), 2, str(path))
        assert sorted(os.listdir(folder)) == ["damaged.wbs"], case_id
        if data.startswith(container.MAGIC):
            # stats reads a file without the magic as safetensors, which is exit status 1.
            # NOTE: stats reads neither raw payloads nor integer ranges, so it succeeds on
            # some damaged files (test_stats_rejects_damaged_file); status 0 is allowed here.
            result = run_main("stats", path)
            stats_statuses[result[0]] += 1
            if result[0] != 0:
                assert_one_line_error(result, 2, str(path))
    report(f"command line: {len(damaged)} damaged files from {len(per_operation)} mutations; decode exit "
           f"status 2 for all, stats exit status {dict(sorted(stats_statuses.items()))}")


@pytest.mark.parametrize("damage", ["raw_payload_crc32", "integer_out_of_range"])
def test_stats_rejects_damaged_file(tmp_path, damage):
    if damage == "raw_payload_crc32":
        records = [dict(name="raw", dtype="U8", shape=(3,), mode=MODE_RAW, payload_crc32=zlib.crc32(b"abc") ^ 1)]
        payloads = [b"abc"]
    else:
        records = [dict(name="flags", dtype="BOOL", shape=(2,), mode=MODE_INTEGER)]
        payloads = [residual_coding.encode_levels(np.array([[2, 1]]), 1)]
    path = tmp_path / "damaged.wbs"
    path.write_bytes(assemble(Layout(None, records, payloads, [0])))

    assert decode_outcome(path, container.DecodeLimits()).status == "rejected"
    assert_one_line_error(run_main("stats", path), 2, str(path))


def test_cli_zero_dimension_exit_2(tmp_path):
    path = tmp_path / "zero.wbs"
    path.write_bytes(build_wbs_file([dict(name="empty", dtype="F32", shape=(0, 2**62, 2**62), mode=MODE_RAW)]))

    assert_one_line_error(run_main("decode", path, "-o", tmp_path / "out.safetensors"), 2, "'empty'")


def test_cli_decodes_crc_fixed_garbage(seeds, tmp_path):
    # A payload of garbage with a correct CRC may decode; the command line then succeeds.
    layout = Layout.of(seeds["intra"])
    index = next(i for i, r in enumerate(layout.records) if r["name"] == "conv")
    layout.payloads[index] = b"\x5a\x13\xc7"
    path = tmp_path / "garbage.wbs"
    path.write_bytes(assemble(layout))
    outcome = decode_outcome(path, container.DecodeLimits())
    assert outcome.status == "decoded", outcome.message

    status, _, stderr = run_main("decode", path, "-o", tmp_path / "out.safetensors")
    _, restored = read_safetensors(tmp_path / "out.safetensors")
    assert (status, stderr) == (0, "")
    assert tuple(restored["conv"].shape) == (4, 2, 3, 3)
    assert bool(torch.isfinite(restored["conv"]).all())


def test_cli_exit_1_for_other_failures(seeds, tmp_path):
    good = tmp_path / "good.wbs"
    good.write_bytes(seeds["intra"].data)
    existing = tmp_path / "existing.safetensors"
    write_safetensors(existing, {"w": torch.ones(2, 2)})
    existing_bytes = existing.read_bytes()
    cases = {
        "missing input": (("decode", tmp_path / "missing.wbs", "-o", tmp_path / "a.safetensors"), "not found"),
        "input is a directory": (("decode", tmp_path, "-o", tmp_path / "a.safetensors"), "directory"),
        "output exists": (("decode", good, "-o", existing), "exists"),
        "output folder missing": (("decode", good, "-o", tmp_path / "no" / "a.safetensors"), "does not exist"),
        "output is the input": (("decode", good, "-o", good, "--force"), "is the input"),
        "unknown option": (("decode", good, "--bogus"), "--bogus"),
        "missing output option": (("decode", good), "-o"),
        "qp out of range": (("encode", existing, "-o", tmp_path / "a.wbs", "--qp", "100000"), "qp"),
    }
    before = sorted(os.listdir(tmp_path))

    for name, (args, fragment) in cases.items():
        result = run_main(*args)
        assert_one_line_error(result, 1, fragment)
        assert sorted(os.listdir(tmp_path)) == before, name
    assert existing.read_bytes() == existing_bytes


# ---------------------------------------------------------------- the encoder on unusual checkpoints

LONG_NAME = "layer." + "x" * 10_000
CYRILLIC_NAME = "слой.0.вес"
CJK_NAME = "权重/😀"
BRACKET_NAME = "w[0].weight"
SPECIAL_NAME = "a*b?[c](d)+e.^$\\f"
UNUSUAL_NAMES = (LONG_NAME, CYRILLIC_NAME, CJK_NAME, BRACKET_NAME, SPECIAL_NAME)


def unusual_model() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(7)
    return {name: 0.1 * torch.randn(3, 4 + i, generator=generator) for i, name in enumerate(UNUSUAL_NAMES)}


# case -> (--keep pattern, names it must keep); a pattern is a whole-name glob or regular expression.
KEEP_PATTERNS = {
    "star": ("*", set(UNUSUAL_NAMES)),
    "cyrillic_glob": ("слой.*", {CYRILLIC_NAME}),
    "unicode_regex": (r"\w+/\S+", {CJK_NAME}),
    "long_glob": ("layer.x*", {LONG_NAME}),
    "long_literal": (LONG_NAME, {LONG_NAME}),
    "escaped_regex": (r"w\[0\]\.weight", {BRACKET_NAME}),
    "escaped_glob": ("w[[]0[]].weight", {BRACKET_NAME}),
    "special_glob": ("a[*]b[?]*", {SPECIAL_NAME}),
    "special_regex": (r"a\*b\?\[c\]\(d\)\+e\.\^\$\\f", {SPECIAL_NAME}),
    "invalid_regex": ("([", set()),  # neither a glob that matches nor a valid regular expression
    "question_mark": ("?", set()),
}


@pytest.mark.filterwarnings("ignore:Possible nested set:FutureWarning")
@pytest.mark.parametrize("case", list(KEEP_PATTERNS))
def test_cli_keep_unusual_names(tmp_path, case):
    pattern, kept_names = KEEP_PATTERNS[case]
    tensors = unusual_model()
    source = write_safetensors(tmp_path / "model.safetensors", tensors)
    wbs = tmp_path / "model.wbs"

    status, stdout, stderr = run_main("encode", source, "-o", wbs, "--mode", "intra", "--keep", pattern)
    assert (status, stderr) == (0, "")
    assert stdout.count("\n") == 1
    with open_wbs(wbs) as opened:
        modes = {record.name: record.mode_name for record in opened.header.tensors}
    restored = wcodec.load(wbs)

    assert list(modes) == list(tensors)
    assert {name for name, mode in modes.items() if mode == "raw"} == kept_names
    assert list(restored) == list(tensors)
    for name in kept_names:
        assert tensor_to_bytes(restored[name]) == tensor_to_bytes(tensors[name]), name[:40]


@pytest.mark.parametrize("name", [BRACKET_NAME, SPECIAL_NAME], ids=["brackets", "special"])
def test_keep_pattern_equal_to_name(tmp_path, name):
    source = write_safetensors(tmp_path / "model.safetensors", {name: torch.ones(2, 3) / 3, "other": torch.ones(3)})
    header = wcodec.encode_file(source, tmp_path / "model.wbs", keep=[name])

    assert header.tensors[0].mode_name == "raw"


def test_cli_tied_tensors_stored_once(tmp_path):
    shared = 0.1 * torch.randn(5, 6, generator=torch.Generator().manual_seed(3))
    tensors = {LONG_NAME: shared, "bias": torch.ones(5) / 7, CYRILLIC_NAME: shared.clone(),
               SPECIAL_NAME: shared.clone(), "ids": torch.arange(4), "ids.tied": torch.arange(4)}
    source = write_safetensors(tmp_path / "model.safetensors", tensors)
    wbs = tmp_path / "model.wbs"
    restored_path = tmp_path / "restored.safetensors"

    assert run_main("encode", source, "-o", wbs)[0] == 0
    assert run_main("decode", wbs, "-o", restored_path)[0] == 0
    with open_wbs(wbs) as opened:
        records = opened.header.tensors
    _, restored = read_safetensors(restored_path)
    loaded = wcodec.load(wbs)

    tied = [0, 2, 3]
    stored = [i for i in tied if records[i].mode_name != "alias"]
    assert [record.name for record in records] == list(tensors)
    assert len(stored) == 1
    assert records[stored[0]].mode_name == "quantized"
    assert [records[i].alias_of for i in tied if i not in stored] == stored * 2
    assert [records[4].mode_name, records[5].mode_name] == ["integer", "alias"]
    assert records[5].alias_of == 4
    assert sum(record.payload_length for record in records if record.mode_name == "alias") == 0
    assert list(restored) == list(tensors)
    for name in (CYRILLIC_NAME, SPECIAL_NAME):
        assert torch.equal(restored[name], restored[LONG_NAME])
        assert torch.equal(loaded[name], loaded[LONG_NAME])
    loaded[LONG_NAME].zero_()  # load returns one tensor per name, so tied names stay unchanged
    assert torch.equal(loaded[CYRILLIC_NAME], restored[CYRILLIC_NAME])
    assert torch.equal(restored["ids.tied"], tensors["ids"])


def test_cli_metadata_without_tensors(tmp_path):
    metadata = {"format": "pt", "note": "no tensors", "ключ": "значение"}
    source = write_safetensors(tmp_path / "meta.safetensors", {}, metadata)
    wbs = tmp_path / "meta.wbs"

    encoded = run_main("encode", source, "-o", wbs)
    decoded = run_main("decode", wbs, "-o", tmp_path / "restored.safetensors")
    restored_metadata, restored = read_safetensors(tmp_path / "restored.safetensors")

    assert encoded[0] == 0
    assert "0 tensors, 0 weights" in encoded[1]
    assert decoded[0] == 0
    assert restored_metadata == metadata
    assert restored == {}


def safetensors_bytes(header: bytes | str, data: bytes = b"", length: int | None = None) -> bytes:
    """Return a safetensors file: 8-byte header length, the header as given, then `data`."""
    header = header.encode("utf-8") if isinstance(header, str) else header
    return struct.pack("<Q", len(header) if length is None else length) + header + data


GOOD_ENTRY = '{"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}'
MALFORMED_SAFETENSORS = {
    "empty_file": (b"", "empty"),
    "seven_bytes": (b"\x01" * 7, "too short"),
    "header_length_past_end": (safetensors_bytes("{}", length=4096), "header length"),
    "header_length_2_63": (safetensors_bytes("{}", length=2**63), "header length"),
    "truncated_json": (safetensors_bytes('{"w": ' + GOOD_ENTRY)[:-9], "header length"),
    "cut_json": (safetensors_bytes('{"w": ' + GOOD_ENTRY[:20]), "not valid JSON"),
    "truncated_data": (safetensors_bytes('{"w": ' + GOOD_ENTRY + "}", b"\x00" * 5), "data_offsets"),
    "not_utf8": (safetensors_bytes(b'{"\xff\xfe": 1}'), "UTF-8"),
    "json_array": (safetensors_bytes("[]"), "JSON object"),
    "deeply_nested": (safetensors_bytes("[" * 100_000 + "]" * 100_000), "safetensors"),
    "duplicate_names": (safetensors_bytes('{"w": ' + GOOD_ENTRY + ', "w": ' + GOOD_ENTRY + "}", b"\x00" * 8),
                        "'w' twice"),
    "unsupported_dtype": (safetensors_bytes('{"w": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}}',
                                            b"\x00" * 8), "C64"),
    "negative_dim": (safetensors_bytes('{"w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}',
                                       b"\x00" * 8), "shape"),
    "zip_archive": (b"PK\x03\x04" + bytes(range(256)) * 4, "header length"),
    "text_file": (b"weights: [1, 2, 3]\n" * 20, "header length"),
    "wbs_file": (wbs_bytes(b"\x00\x00"), "header length"),
}


@pytest.mark.parametrize("case", list(MALFORMED_SAFETENSORS))
def test_cli_rejects_malformed_safetensors(tmp_path, case):
    data, fragment = MALFORMED_SAFETENSORS[case]
    source = tmp_path / "input.safetensors"
    source.write_bytes(data)

    assert_one_line_error(run_main("encode", source, "-o", tmp_path / "out.wbs"), 1, str(source), fragment)
    assert sorted(os.listdir(tmp_path)) == ["input.safetensors"]


def test_cli_rejects_directory_input(tmp_path):
    assert_one_line_error(run_main("encode", tmp_path, "-o", tmp_path / "out.wbs"), 1, "is a directory")
    assert_one_line_error(run_main("stats", tmp_path), 1, "is a directory")
    assert os.listdir(tmp_path) == []


def test_script_rejects_malformed_input(tmp_path):
    # The installed console script, in a subprocess: one line on stderr and no traceback.
    source = tmp_path / "input.safetensors"
    source.write_bytes(MALFORMED_SAFETENSORS["duplicate_names"][0])
    script = Path(sys.executable).parent / "wcodec"
    completed = subprocess.run([str(script), "encode", str(source), "-o", str(tmp_path / "out.wbs")],
                               capture_output=True, text=True, timeout=120)

    assert completed.returncode == 1
    assert completed.stdout == ""
    assert len(completed.stderr.splitlines()) == 1, completed.stderr
    assert completed.stderr.startswith(f"wcodec: error: {source}: ")
    assert "'w' twice" in completed.stderr
    assert sorted(os.listdir(tmp_path)) == ["input.safetensors"]


def test_cli_float8_and_non_finite(tmp_path, caplog):
    generator = torch.Generator().manual_seed(11)
    tensors = {
        "e4m3": (0.2 * torch.randn(4, 6, generator=generator)).to(torch.float8_e4m3fn),
        "e5m2": (0.2 * torch.randn(4, 6, generator=generator)).to(torch.float8_e5m2),
        "e4m3.nan": torch.tensor([[0.5, float("nan")], [448.0, -1.0]]).to(torch.float8_e4m3fn),
        "e5m2.inf": torch.tensor([float("inf"), -2.0, 0.25]).to(torch.float8_e5m2),
        "bf16.nan": torch.tensor([[1.0, float("nan"), -float("inf")]], dtype=torch.bfloat16),
    }
    source = write_safetensors(tmp_path / "model.safetensors", tensors)
    wbs = tmp_path / "model.wbs"

    with caplog.at_level(logging.WARNING, logger="wcodec"):
        status, _, stderr = run_main("encode", source, "-o", wbs)
    with open_wbs(wbs) as opened:
        modes = {record.name: record.mode_name for record in opened.header.tensors}
    restored = wcodec.load(wbs)

    assert (status, stderr) == (0, "")
    assert modes == {"e4m3": "quantized", "e5m2": "quantized", "e4m3.nan": "raw", "e5m2.inf": "raw",
                     "bf16.nan": "raw"}
    warned = sorted(name for name in tensors if any(f"{name!r}" in r.getMessage() for r in caplog.records
                                                   if r.levelno == logging.WARNING))
    assert warned == ["bf16.nan", "e4m3.nan", "e5m2.inf"]
    for name in ("e4m3.nan", "e5m2.inf", "bf16.nan"):
        assert tensor_to_bytes(restored[name]) == tensor_to_bytes(tensors[name])
    for name in ("e4m3", "e5m2"):
        error = (restored[name].double() - tensors[name].double()).abs().max().item()
        # Half a step at qp -32 (2**-9) plus half an F8 spacing at |x| < 1 (2**-4 for E4M3, 2**-3 for E5M2).
        assert error <= 2**-9 + 2**-3, name
        assert bool(torch.isfinite(restored[name].double()).all())


@pytest.mark.parametrize("case", ["name_70000_bytes", "metadata_value_70000_bytes", "ndim_33"])
def test_encoder_output_always_decodes(tmp_path, case):
    tensors = {"w": torch.ones(2, 3)}
    metadata = None
    if case == "name_70000_bytes":
        tensors = {"n" * 70_000: torch.ones(2, 3)}
    elif case == "metadata_value_70000_bytes":
        metadata = {"config": "x" * 70_000}
    else:
        tensors = {"w": torch.ones((1,) * 33)}
    source = write_safetensors(tmp_path / "model.safetensors", tensors, metadata)
    wbs = tmp_path / "model.wbs"

    # Rejecting the input at encode time would also keep the promise.
    try:
        wcodec.encode_file(source, wbs)
    except wcodec.InputError:
        assert not wbs.exists()
        return
    assert list(wcodec.load(wbs)) == list(tensors)


def test_sqnr_target_with_nan_frame(tmp_path):
    generator = torch.Generator().manual_seed(13)
    tensors = {"w0": 0.1 * torch.randn(8, 12, generator=generator),
               "w1": 0.1 * torch.randn(8, 12, generator=generator),
               "nan": torch.tensor([[float("nan"), 1.0], [2.0, 3.0]])}
    source = write_safetensors(tmp_path / "model.safetensors", tensors)

    result = rate_control.encode_to_target(source, tmp_path / "model.wbs", sqnr=30.0)
    assert result.sqnr_db >= 30.0 - rate_control.SQNR_TOLERANCE_DB


@pytest.mark.parametrize("reader", ["wbs", "safetensors"])
def test_fifo_input_rejected(tmp_path, reader):
    fifo = tmp_path / "input"
    os.mkfifo(fifo)

    def read():
        if reader == "wbs":
            with open_wbs(fifo):
                pass
        else:
            SafetensorsReader(fifo)

    try:
        status, value = run_with_timeout(read, 1.0)
    finally:
        # A writer that opens and closes the FIFO ends a read stuck in open().
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass
    assert status == "error", status
    assert isinstance(value, wcodec.WcodecError), value


# ---------------------------------------------------------------- determinism


def determinism_model() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(5)
    base = 0.1 * torch.randn(6, 4, 3, generator=generator)
    return {
        "layer.10.weight": base + 0.01 * torch.randn(6, 4, 3, generator=generator),
        "layer.9.weight": base,
        "layer.2.weight": -base.flip(1),
        "layer.2.bias": 0.01 * torch.randn(6, generator=generator),
        "head": 0.1 * torch.randn(5, 8, generator=generator),
        "head.tied": None,
        "steps": torch.arange(7, dtype=torch.int32),
    }


DETERMINISM_OPTIONS = {
    "intra": dict(mode="intra"),
    "auto_dependent": dict(mode="auto", quantizer="dependent"),
    "full_rdoq_greedy": dict(mode="full", rdoq=True, order="greedy"),
    "adjacent_keep_natural": dict(mode="adjacent", keep=("*.bias",), order="natural", qp=-20),
}


@pytest.fixture(scope="module")
def determinism_source(tmp_path_factory) -> Path:
    tensors = determinism_model()
    tensors["head.tied"] = tensors["head"].clone()
    return write_safetensors(tmp_path_factory.mktemp("determinism") / "model.safetensors", tensors,
                             {"format": "pt"})


@pytest.mark.parametrize("options", list(DETERMINISM_OPTIONS))
def test_encode_deterministic(determinism_source, tmp_path, options):
    first, second = tmp_path / "first.wbs", tmp_path / "second.wbs"
    wcodec.encode_file(determinism_source, first, **DETERMINISM_OPTIONS[options])
    wcodec.encode_file(determinism_source, second, **DETERMINISM_OPTIONS[options])

    assert first.read_bytes() == second.read_bytes()


def test_encode_deterministic_across_processes(determinism_source, tmp_path):
    # Another process with another hash seed must write the same bytes for every option set.
    script = textwrap.dedent(f"""
        import wcodec
        options = {DETERMINISM_OPTIONS!r}
        for name, values in options.items():
            wcodec.encode_file({str(determinism_source)!r}, {str(tmp_path)!r} + "/" + name + ".wbs", **values)
    """)
    env = dict(os.environ, PYTHONHASHSEED="12345")
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=180,
                               cwd=REPO_DIR)
    assert completed.returncode == 0, completed.stderr[-3000:]

    for name, values in DETERMINISM_OPTIONS.items():
        local = tmp_path / f"{name}.local.wbs"
        wcodec.encode_file(determinism_source, local, **values)
        assert (tmp_path / f"{name}.wbs").read_bytes() == local.read_bytes(), name

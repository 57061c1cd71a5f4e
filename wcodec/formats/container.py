"""The ``.wbs`` container: a fixed preamble, a header that lists every tensor, and payloads.

``docs/bitstream.md`` specifies the layout field by field; the names of fields here are
the names used there. Writer and reader walk the same field tables (``_RECORD_FIELDS``
and ``_MODE_FIELDS``), so the two cannot disagree on the syntax.

The reader trusts nothing: every length, count, index and range is checked against the
bytes present and against the limits in :class:`DecodeLimits` before anything is
allocated, and every failure raises :class:`WbsFormatError` naming the tensor and field.
"""

import struct
import zlib
from dataclasses import dataclass, field
from math import prod

from wcodec.codec.quantization import QP_MAX, QP_MIN
from wcodec.codec import transform
from wcodec.codec.block_syntax import (FRAME_ADJACENT, FRAME_COLLOCATED, FRAME_FULL,
                                       FRAME_INTRA, FRAME_TRANSFORM, MAX_REFS)
from wcodec.errors import InputError, WbsFormatError
from wcodec.formats import dtypes

MAGIC = b"\x89WBS\r\n\x1a\n"
VERSION = 2  # the version this wcodec writes
VERSIONS = (1, 2)  # the versions it reads
PREAMBLE = struct.Struct("<8sHHII")  # magic, version, flags, header_length, header_crc32
PREAMBLE_SIZE = PREAMBLE.size

MODE_RAW = 0
MODE_QUANTIZED = 1
MODE_INTEGER = 2
MODE_ALIAS = 3
MODE_NAMES = {MODE_RAW: "raw", MODE_QUANTIZED: "quantized", MODE_INTEGER: "integer",
              MODE_ALIAS: "alias"}

FRAME_MODE_NAMES = {FRAME_INTRA: "intra", FRAME_COLLOCATED: "collocated",
                    FRAME_ADJACENT: "adjacent", FRAME_FULL: "full", FRAME_TRANSFORM: "transform"}
PRED_GAIN_MAX = 128
QUANTIZER_NAMES = {0: "uniform", 1: "dependent"}

MAX_NDIM = 32
MAX_NAME_BYTES = 1 << 16
MAX_VARINT_BYTES = 10


@dataclass(frozen=True)
class DecodeLimits:
    """Limits a reader enforces before it allocates, against hostile headers."""

    max_header_bytes: int = 256 << 20
    max_output_bytes: int = 64 << 30
    max_tensor_elements: int = 1 << 40


@dataclass
class TensorRecord:
    """One tensor of the header: what it is, how it is coded and where its payload lies."""

    name: str
    dtype: str
    shape: tuple
    coding_mode: int
    qp: int = 0
    frame_mode: int = FRAME_INTRA
    refs: tuple = ()
    pred_gain: int = 0
    quantizer: int = 0
    alias_of: int = 0
    payload_offset: int = 0
    payload_length: int = 0
    payload_crc32: int = 0

    @property
    def num_elements(self):
        return prod(self.shape)

    @property
    def mode_name(self):
        return MODE_NAMES[self.coding_mode]


@dataclass
class WbsHeader:
    """The parsed header: safetensors metadata (None when absent), the tensor records and
    the coding order (record indexes in the order their payloads follow each other)."""

    metadata: dict | None
    tensors: list = field(default_factory=list)
    order: list = field(default_factory=list)
    version: int = VERSION  # of the file read; a writer always writes VERSION

    def coding_order(self):
        """Return record indexes in payload order, the order in which they must be decoded."""
        return list(self.order)


# Field tables shared by writer and reader: (attribute, wire type).
_RECORD_FIELDS = (("name", "name"), ("dtype", "dtype"), ("shape", "shape"),
                  ("coding_mode", "u8"))
_MODE_FIELDS = {
    MODE_RAW: (),
    MODE_QUANTIZED: (("qp", "svarint"), ("quantizer", "u8"), ("frame_mode", "u8"),
                     ("refs", "index_list"), ("pred_gain", "varint")),
    MODE_INTEGER: (),
    MODE_ALIAS: (("alias_of", "varint"),),
}
_PAYLOAD_FIELDS = (("payload_offset", "varint"), ("payload_length", "varint"),
                   ("payload_crc32", "u32"))


def _shared_prefix(previous, current):
    """Return the number of leading bytes that two byte strings share."""
    limit = min(len(previous), len(current))
    count = 0
    while count < limit and previous[count] == current[count]:
        count += 1
    return count


class _Writer:
    def __init__(self):
        self.out = bytearray()
        self.previous_name = b""

    def u8(self, value):
        self.out.append(value)

    def u32(self, value):
        self.out += struct.pack("<I", value)

    def varint(self, value):
        if value < 0:
            raise ValueError(f"varint field cannot hold negative value {value}")
        while True:
            byte = value & 0x7F
            value >>= 7
            if value:
                self.out.append(byte | 0x80)
            else:
                self.out.append(byte)
                return

    def svarint(self, value):
        self.varint((value << 1) if value >= 0 else ((-value << 1) - 1))

    @staticmethod
    def _utf8(value):
        data = value.encode("utf-8")
        if len(data) > MAX_NAME_BYTES:
            raise InputError(f"string {value[:40]!r}... is {len(data)} bytes in UTF-8; a .wbs "
                             f"file holds at most {MAX_NAME_BYTES}")
        return data

    def string(self, value):
        data = self._utf8(value)
        self.varint(len(data))
        self.out += data

    def name(self, value):
        """Write a tensor name: the byte count it shares with the previous name, then the rest."""
        data = self._utf8(value)
        shared = _shared_prefix(self.previous_name, data)
        self.varint(shared)
        self.varint(len(data) - shared)
        self.out += data[shared:]
        self.previous_name = data

    def dtype(self, value):
        self.u8(dtypes.dtype_by_name(value).wire_code)

    def shape(self, value):
        if len(value) > MAX_NDIM:
            raise InputError(f"shape {list(value)} has {len(value)} dimensions; a .wbs file "
                             f"holds at most {MAX_NDIM}")
        self.u8(len(value))
        for dim in value:
            self.varint(dim)

    def index_list(self, value):
        self.varint(len(value))
        for index in value:
            self.varint(index)


class _Reader:
    """Bounds-checked cursor over the header bytes; ``where`` names what is being read."""

    def __init__(self, data, path, version=VERSION):
        self.data = data
        self.pos = 0
        self.path = path
        self.where = "header"
        self.version = version
        self.previous_name = b""

    def fail(self, message):
        raise WbsFormatError(f"{self.path}: {self.where}: {message}")

    def take(self, n, field_name):
        if n > len(self.data) - self.pos:
            self.fail(f"field {field_name} needs {n} bytes but the header has "
                      f"{len(self.data) - self.pos} left; the file is damaged")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def u8(self, field_name):
        return self.take(1, field_name)[0]

    def u32(self, field_name):
        return struct.unpack("<I", self.take(4, field_name))[0]

    def varint(self, field_name):
        value = 0
        for i in range(MAX_VARINT_BYTES):
            byte = self.u8(field_name)
            value |= (byte & 0x7F) << (7 * i)
            if not byte & 0x80:
                if byte == 0 and i > 0:
                    self.fail(f"field {field_name} is a varint with a redundant zero byte")
                if value >= 1 << 63:
                    self.fail(f"field {field_name} value {value} exceeds 2**63 - 1")
                return value
        self.fail(f"field {field_name} is a varint longer than {MAX_VARINT_BYTES} bytes")

    def svarint(self, field_name):
        value = self.varint(field_name)
        return (value >> 1) if not value & 1 else -((value + 1) >> 1)

    def string(self, field_name, prefix=b""):
        length = self.varint(field_name + " length")
        if len(prefix) + length > MAX_NAME_BYTES:
            self.fail(f"field {field_name} length {len(prefix) + length} exceeds "
                      f"{MAX_NAME_BYTES} bytes")
        raw = prefix + self.take(length, field_name)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            self.fail(f"field {field_name} is not valid UTF-8")

    def name(self, field_name):
        """Read a tensor name; from version 2 on it starts with bytes of the previous name."""
        prefix = b""
        if self.version >= 2:
            shared = self.varint(field_name + " shared")
            if shared > len(self.previous_name):
                self.fail(f"field {field_name} shared: {shared} bytes exceeds the "
                          f"{len(self.previous_name)} bytes of the previous name")
            prefix = self.previous_name[:shared]
        value = self.string(field_name, prefix)
        self.previous_name = value.encode("utf-8")
        return value

    def dtype(self, field_name):
        code = self.u8(field_name)
        try:
            return dtypes.dtype_by_wire_code(code).name
        except WbsFormatError:
            self.fail(f"field {field_name} has unknown dtype code {code}")

    def shape(self, field_name):
        ndim = self.u8("ndim")
        if ndim > MAX_NDIM:
            self.fail(f"field ndim is {ndim}, more than the {MAX_NDIM} dimensions allowed")
        return tuple(self.varint(f"{field_name}[{i}]") for i in range(ndim))

    def index_list(self, field_name):
        count = self.varint(field_name + " count")
        if count > len(self.data) - self.pos:
            self.fail(f"field {field_name} count {count} exceeds the bytes left in the header")
        return tuple(self.varint(f"{field_name}[{i}]") for i in range(count))


def _record_fields(record_or_mode, version=VERSION):
    mode = record_or_mode if isinstance(record_or_mode, int) else record_or_mode.coding_mode
    # From version 2 on, payload offsets follow from the coding order and are not stored.
    payload_fields = _PAYLOAD_FIELDS if version < 2 else _PAYLOAD_FIELDS[1:]
    return _RECORD_FIELDS, _MODE_FIELDS[mode], payload_fields


def write_container(stream, header, payloads):
    """Write preamble, header and payloads (in coding order) to a binary stream.

    ``payloads`` maps record index to bytes; the records' payload fields are filled in
    here, in the order the payloads are given, so a caller only decides the order.
    """
    header.order = [index for index, _ in payloads]
    offset = 0
    for index, data in payloads:
        record = header.tensors[index]
        record.payload_offset = offset
        record.payload_length = len(data)
        record.payload_crc32 = zlib.crc32(data)
        offset += len(data)

    writer = _Writer()
    if header.metadata is None:
        writer.u8(0)
    else:
        writer.u8(1)
        writer.varint(len(header.metadata))
        for key, value in header.metadata.items():
            writer.string(key)
            writer.string(value)
    writer.varint(len(header.tensors))
    for record in header.tensors:
        for group in _record_fields(record):
            for name, kind in group:
                getattr(writer, kind)(getattr(record, name))
    for index in header.order:
        writer.varint(index)
    body = bytes(writer.out)
    stream.write(PREAMBLE.pack(MAGIC, VERSION, 0, len(body), zlib.crc32(body)))
    stream.write(body)
    for _, data in payloads:
        stream.write(data)


def read_preamble(data, path):
    """Check the preamble of ``data`` (bytes-like, the whole file); return header length."""
    if len(data) < PREAMBLE_SIZE:
        raise WbsFormatError(f"{path}: file has {len(data)} bytes, fewer than the "
                             f"{PREAMBLE_SIZE}-byte preamble; it is not a complete .wbs file")
    magic, version, flags, header_length, header_crc = PREAMBLE.unpack_from(data, 0)
    if magic != MAGIC:
        raise WbsFormatError(f"{path}: field magic: not a .wbs file (found {bytes(magic)!r})")
    if version not in VERSIONS:
        raise WbsFormatError(f"{path}: field version: this wcodec reads bitstream versions "
                             f"{VERSIONS[0]} to {VERSIONS[-1]}, found {version}; use the wcodec "
                             f"release that wrote it")
    if flags != 0:
        raise WbsFormatError(f"{path}: field flags: expected 0, found {flags}")
    if header_length > len(data) - PREAMBLE_SIZE:
        raise WbsFormatError(f"{path}: field header_length: {header_length} bytes declared, "
                             f"{len(data) - PREAMBLE_SIZE} present; the file is truncated")
    header_bytes = bytes(data[PREAMBLE_SIZE:PREAMBLE_SIZE + header_length])
    if zlib.crc32(header_bytes) != header_crc:
        raise WbsFormatError(f"{path}: field header_crc32: checksum mismatch; the header is "
                             f"damaged")
    return header_length


def read_container(data, path, limits=DecodeLimits()):
    """Parse and validate the header of a whole ``.wbs`` file given as a bytes-like object.

    Returns ``(header, payload_base)``; a record's payload is
    ``data[payload_base + payload_offset:][:payload_length]``.
    """
    header_length = read_preamble(data, path)
    if header_length > limits.max_header_bytes:
        raise WbsFormatError(f"{path}: field header_length: {header_length} bytes exceeds the "
                             f"limit of {limits.max_header_bytes}")
    version = PREAMBLE.unpack_from(data, 0)[1]
    reader = _Reader(bytes(data[PREAMBLE_SIZE:PREAMBLE_SIZE + header_length]), path, version)
    metadata = None
    present = reader.u8("metadata_present")
    if present > 1:
        reader.fail(f"field metadata_present must be 0 or 1, found {present}")
    if present:
        count = reader.varint("metadata_count")
        if count > header_length:
            reader.fail(f"field metadata_count {count} exceeds the header size")
        metadata = {}
        for i in range(count):
            reader.where = f"metadata entry {i}"
            key = reader.string("key")
            value = reader.string("value")
            if key in metadata:
                reader.fail(f"duplicate metadata key {key!r}")
            metadata[key] = value
    reader.where = "header"
    count = reader.varint("tensor_count")
    if count > header_length:
        reader.fail(f"field tensor_count {count} exceeds the header size")

    header = WbsHeader(metadata, version=version)
    names = set()
    for index in range(count):
        reader.where = f"tensor #{index}"
        values = {}
        for name, kind in _RECORD_FIELDS:
            values[name] = getattr(reader, kind)(name)
            if name == "name":
                reader.where = f"tensor {values['name']!r}"
        mode = values["coding_mode"]
        if mode not in _MODE_FIELDS:
            reader.fail(f"field coding_mode has unknown value {mode}")
        for group in _record_fields(mode, version)[1:]:
            for name, kind in group:
                values[name] = getattr(reader, kind)(name)
        record = TensorRecord(**values)
        if record.name in names:
            reader.fail("duplicate tensor name")
        if record.name == "__metadata__":
            reader.fail("field name: __metadata__ is reserved for the safetensors metadata")
        names.add(record.name)
        header.tensors.append(record)
    reader.where = "header"
    seen = set()
    for rank in range(count):
        index = reader.varint(f"coding_order[{rank}]")
        if index >= count or index in seen:
            reader.fail(f"field coding_order[{rank}]: {index} is not an unused record index "
                        f"below {count}")
        seen.add(index)
        header.order.append(index)
    if reader.pos != len(reader.data):
        raise WbsFormatError(f"{path}: header: {len(reader.data) - reader.pos} bytes left after "
                             f"the last tensor record; expected none")
    if version >= 2:
        offset = 0
        for index in header.order:
            header.tensors[index].payload_offset = offset
            offset += header.tensors[index].payload_length

    payload_base = PREAMBLE_SIZE + header_length
    _validate_records(header, len(data) - payload_base, path, limits)
    return header, payload_base


def _validate_records(header, payload_area, path, limits):
    total_output = 0
    position_in_order = {}
    expected_offset = 0
    for rank, index in enumerate(header.coding_order()):
        record = header.tensors[index]
        where = f"{path}: tensor {record.name!r}"
        position_in_order[index] = rank
        if record.payload_offset != expected_offset:
            raise WbsFormatError(
                f"{where}: field payload_offset: expected {expected_offset} (payloads follow "
                f"each other without gaps), found {record.payload_offset}")
        expected_offset += record.payload_length
        if expected_offset > payload_area:
            raise WbsFormatError(
                f"{where}: field payload_length: payload ends at {expected_offset} but the "
                f"payload area has {payload_area} bytes; the file is truncated")

        # The product of the nonzero dimensions is bounded too: a zero dimension makes the
        # tensor empty, but numpy and torch still compute strides from the others.
        elements = 1
        nonzero = 1
        for dim in record.shape:
            elements *= dim
            nonzero *= max(dim, 1)
            if nonzero > limits.max_tensor_elements:
                raise WbsFormatError(
                    f"{where}: field shape {list(record.shape)} exceeds the limit of "
                    f"{limits.max_tensor_elements} elements")
        info = dtypes.dtype_by_name(record.dtype)
        total_output += elements * info.itemsize
        if total_output > limits.max_output_bytes:
            raise WbsFormatError(
                f"{where}: decoded size exceeds the limit of {limits.max_output_bytes} bytes; "
                f"raise the limit only for a file you trust")

        mode = record.coding_mode
        if mode == MODE_RAW and record.payload_length != elements * info.itemsize:
            raise WbsFormatError(
                f"{where}: field payload_length: raw {record.dtype} {list(record.shape)} needs "
                f"{elements * info.itemsize} bytes, found {record.payload_length}")
        if mode == MODE_QUANTIZED:
            if info.kind != "float":
                raise WbsFormatError(f"{where}: field coding_mode: quantized, but dtype "
                                     f"{record.dtype} is not floating point")
            _validate_frame(header, index, record, position_in_order, where)
        if mode == MODE_INTEGER and info.kind == "float":
            raise WbsFormatError(f"{where}: field coding_mode: integer, but dtype "
                                 f"{record.dtype} is floating point")
        if mode in (MODE_QUANTIZED, MODE_INTEGER) and elements == 0 and record.payload_length:
            raise WbsFormatError(f"{where}: field payload_length: a tensor without elements "
                                 f"has no payload, found {record.payload_length} bytes")
        if mode == MODE_ALIAS:
            source = record.alias_of
            if source >= len(header.tensors) or source not in position_in_order \
                    or source == index:
                raise WbsFormatError(
                    f"{where}: field alias_of: {source} is not a tensor coded before this one")
            target = header.tensors[source]
            if target.coding_mode == MODE_ALIAS or target.dtype != record.dtype \
                    or target.shape != record.shape:
                raise WbsFormatError(
                    f"{where}: field alias_of: tensor {target.name!r} differs in dtype, shape "
                    f"or is itself an alias")
            if record.payload_length:
                raise WbsFormatError(f"{where}: field payload_length: an alias has no payload, "
                                     f"found {record.payload_length} bytes")
    if expected_offset != payload_area:
        raise WbsFormatError(
            f"{path}: payload area: {payload_area - expected_offset} bytes after the last "
            f"payload; expected none")


def _validate_transform_frame(header, record, where):
    if header.version < 2:
        raise WbsFormatError(f"{where}: field frame_mode: transform frames need bitstream "
                             f"version 2, the file declares {header.version}")
    if prod(record.shape) == 0 or not transform.is_eligible(record.shape[2:]):
        raise WbsFormatError(f"{where}: field frame_mode: a transform frame needs one or two "
                             f"kernel dimensions of 1 to {transform.MAX_KERNEL_SIDE} taps, more "
                             f"than one tap in all and no empty dimension, found shape "
                             f"{list(record.shape)}")


def _validate_frame(header, index, record, position_in_order, where):
    """Check the frame fields of a quantized record against the records coded before it."""
    frame_mode = record.frame_mode
    if not QP_MIN <= record.qp <= QP_MAX:
        raise WbsFormatError(f"{where}: field qp: {record.qp} is outside [{QP_MIN}, {QP_MAX}]")
    if record.quantizer not in QUANTIZER_NAMES:
        raise WbsFormatError(f"{where}: field quantizer has unknown value {record.quantizer}")
    is_frame = len(record.shape) >= 2 and prod(record.shape) > 0
    if record.quantizer != 0 and not is_frame:
        raise WbsFormatError(f"{where}: field quantizer: dependent quantization needs a shape "
                             f"of two or more nonzero dimensions, found {list(record.shape)}")
    if frame_mode not in FRAME_MODE_NAMES:
        raise WbsFormatError(f"{where}: field frame_mode has unknown value {frame_mode}")
    if frame_mode == FRAME_TRANSFORM:
        _validate_transform_frame(header, record, where)
    if frame_mode in (FRAME_INTRA, FRAME_TRANSFORM):
        if record.refs:
            raise WbsFormatError(f"{where}: field refs: an intra frame has no references, "
                                 f"found {len(record.refs)}")
        if record.pred_gain != 0:
            raise WbsFormatError(f"{where}: field pred_gain: expected 0 for an intra frame, "
                                 f"found {record.pred_gain}")
        return
    allowed = MAX_REFS if frame_mode == FRAME_FULL else 1
    if not 1 <= len(record.refs) <= allowed:
        raise WbsFormatError(f"{where}: field refs: frame mode {FRAME_MODE_NAMES[frame_mode]} has "
                             f"1 to {allowed} references, found {len(record.refs)}")
    if not 1 <= record.pred_gain <= PRED_GAIN_MAX:
        raise WbsFormatError(f"{where}: field pred_gain: expected 1 to {PRED_GAIN_MAX}, found "
                             f"{record.pred_gain}")
    if not is_frame:
        raise WbsFormatError(f"{where}: field frame_mode: an inter frame needs a shape of two "
                             f"or more nonzero dimensions, found {list(record.shape)}")
    for ref in record.refs:
        if ref >= len(header.tensors) or ref == index or ref not in position_in_order:
            raise WbsFormatError(f"{where}: field refs: {ref} is not a tensor coded before "
                                 f"this one")
        target = header.tensors[ref]
        if target.coding_mode != MODE_QUANTIZED or len(target.shape) < 2 \
                or prod(target.shape) == 0 or target.shape[2:] != record.shape[2:]:
            raise WbsFormatError(f"{where}: field refs: tensor {target.name!r} is not a "
                                 f"quantized frame with kernel shape {list(record.shape[2:])}")

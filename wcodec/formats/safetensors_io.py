"""Streaming reader and writer for safetensors files.

A safetensors file is an 8-byte little-endian header length N, N bytes of UTF-8 JSON,
then the tensor data. The JSON object maps each tensor name to its dtype, shape and
`data_offsets` [begin, end], counted from the start of the data area, and may contain
a `__metadata__` object of string values. The reader enforces the header rules that
safetensors 0.8 enforces: string metadata, contiguous tensor data without overlaps or
trailing bytes, and a header of at most 100,000,000 bytes. It also rejects dtypes that
wcodec does not support. The reader and the writer keep only one tensor in memory.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from safetensors import SafetensorError, safe_open

from wcodec.formats.inputs import check_regular_file
from wcodec.errors import InputError
from wcodec.formats.dtypes import dtype_by_name

__all__ = ["TensorInfo", "SafetensorsReader", "SafetensorsWriter", "MAX_HEADER_BYTES"]

MAX_HEADER_BYTES = 100_000_000
"""Maximum JSON header size that the safetensors package accepts."""

_METADATA_KEY = "__metadata__"
_TENSOR_FIELDS = ("dtype", "shape", "data_offsets")


@dataclass(frozen=True)
class TensorInfo:
    """Name, safetensors dtype name (for example "F32") and shape of one tensor."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * dtype_by_name(self.dtype).itemsize


class _JsonObject(list):
    """Key-value pairs of one JSON object in file order, with duplicates kept for checking."""


def _json_type(value: object) -> str:
    if isinstance(value, _JsonObject):
        return "object"
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return "null"


def _describe(value: object) -> str:
    """Return a short JSON rendering of a scalar or an array of scalars, else its JSON type."""
    if isinstance(value, _JsonObject):
        return "an object"
    if isinstance(value, list) and any(isinstance(item, list) for item in value):
        return "an array that contains arrays or objects"
    text = json.dumps(value, ensure_ascii=False)
    if len(text) > 60:
        text = text[:57] + "..."
    return text


def _is_count(value: object) -> bool:
    """Return whether `value` is a non-negative JSON integer (JSON booleans excluded)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_valid_unicode(text: str) -> bool:
    # Python's json module decodes an escaped lone surrogate such as "\ud800", which the
    # safetensors package rejects and which cannot be encoded as UTF-8 again.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class _HeaderParser:
    """Parse and validate the header of one safetensors file.

    Every error is an InputError whose message starts with the file path.
    """

    def __init__(self, path: str) -> None:
        self.path = path

    def error(self, message: str) -> InputError:
        return InputError(f"{self.path}: {message}")

    def tensor_error(self, name: str, message: str) -> InputError:
        return self.error(f"tensor {name!r}: {message}")

    def parse(self) -> tuple[dict[str, str] | None, list[TensorInfo], dict[str, tuple[int, int]]]:
        """Return the metadata, the tensors in header order and each tensor's data offsets."""
        header, data_size = self.read_header()
        header_object = self.decode_json(header)

        metadata: dict[str, str] | None = None
        infos: list[TensorInfo] = []
        offsets: dict[str, tuple[int, int]] = {}
        for key, value in self.to_dict(header_object, "the header").items():
            if not _is_valid_unicode(key):
                raise self.error(f"tensor name {key!r} is not valid Unicode")
            if key == _METADATA_KEY:
                metadata = self.parse_metadata(value)
                continue
            info, tensor_offsets = self.parse_tensor(key, value, data_size)
            infos.append(info)
            offsets[key] = tensor_offsets

        self.check_layout(infos, offsets, data_size)
        return metadata, infos, offsets

    def read_header(self) -> tuple[bytes, int]:
        """Read the JSON header bytes and return them with the size of the data area."""
        if os.path.isdir(self.path):
            raise self.error("is a directory, not a safetensors file")
        if os.path.exists(self.path):
            check_regular_file(self.path, "a safetensors file")
        try:
            with open(self.path, "rb") as file:
                file_stat = os.fstat(file.fileno())
                if not stat.S_ISREG(file_stat.st_mode):
                    raise self.error("is not a regular file")
                file_size = file_stat.st_size
                if file_size == 0:
                    raise self.error("file is empty, not a safetensors file")
                if file_size < 8:
                    raise self.error(
                        f"file has only {file_size} bytes, too short for the 8-byte header length of a safetensors file"
                    )

                header_size = int.from_bytes(file.read(8), "little")
                if header_size > file_size - 8:
                    raise self.error(
                        f"header length {header_size} in the first 8 bytes exceeds the {file_size - 8} bytes"
                        " that follow; the file is truncated or not a safetensors file"
                    )
                if header_size > MAX_HEADER_BYTES:
                    raise self.error(
                        f"header length {header_size} exceeds the safetensors maximum of {MAX_HEADER_BYTES} bytes"
                    )
                header = file.read(header_size)
        except FileNotFoundError:
            raise self.error("file not found") from None
        except OSError as error:
            raise self.error(f"cannot read the file: {error.strerror or error}") from None

        if len(header) != header_size:
            raise self.error("file shrank while its header was read")
        return header, file_size - 8 - header_size

    def decode_json(self, header: bytes) -> object:
        try:
            text = header.decode("utf-8")
        except UnicodeDecodeError as error:
            raise self.error(
                f"header is not valid UTF-8 (byte {error.start} of the header);"
                " the file is not a safetensors file or is damaged"
            ) from None
        try:
            return json.loads(text, object_pairs_hook=_JsonObject)
        except json.JSONDecodeError as error:
            raise self.error(
                f"header is not valid JSON ({error.msg} at line {error.lineno} column {error.colno});"
                " the file is not a safetensors file or is damaged"
            ) from None
        except RecursionError:
            raise self.error("header is not valid safetensors JSON: objects are nested too deeply") from None

    def to_dict(self, value: object, where: str) -> dict[str, object]:
        """Convert a parsed JSON object to a dict, rejecting duplicate keys."""
        if not isinstance(value, _JsonObject):
            raise self.error(f"{where} must be a JSON object, but it is {_describe(value)}")
        result: dict[str, object] = {}
        for key, item in value:
            if key in result:
                if where == "the header":
                    raise self.error(f"the header names {key!r} twice")
                raise self.error(f"{where} has the key {key!r} twice")
            result[key] = item
        return result

    def parse_metadata(self, value: object) -> dict[str, str]:
        metadata = self.to_dict(value, _METADATA_KEY)
        for key, item in metadata.items():
            if not isinstance(item, str):
                raise self.error(
                    f"{_METADATA_KEY} values must be strings, but key {key!r} has a {_json_type(item)}"
                )
            if not (_is_valid_unicode(key) and _is_valid_unicode(item)):
                raise self.error(f"{_METADATA_KEY} key {key!r} or its value is not valid Unicode")
        return metadata  # type: ignore[return-value]

    def parse_tensor(self, name: str, value: object, data_size: int) -> tuple[TensorInfo, tuple[int, int]]:
        if not isinstance(value, _JsonObject):
            raise self.tensor_error(
                name, f"entry must be a JSON object with dtype, shape and data_offsets, but it is {_describe(value)}"
            )
        fields = self.to_dict(value, f"tensor {name!r}")
        for field in _TENSOR_FIELDS:
            if field not in fields:
                raise self.tensor_error(name, f"missing field {field!r}")
        # Like the safetensors package, ignore any other field.

        dtype_name = fields["dtype"]
        if not isinstance(dtype_name, str):
            raise self.tensor_error(name, f"dtype must be a string, but it is {_describe(dtype_name)}")
        try:
            dtype = dtype_by_name(dtype_name)
        except InputError as error:
            raise self.tensor_error(name, str(error)) from None

        shape = fields["shape"]
        if not (isinstance(shape, list) and all(_is_count(dim) for dim in shape)):
            raise self.tensor_error(
                name, f"shape must be an array of non-negative integers, but it is {_describe(shape)}"
            )

        data_offsets = fields["data_offsets"]
        if not (isinstance(data_offsets, list) and len(data_offsets) == 2 and all(map(_is_count, data_offsets))):
            raise self.tensor_error(
                name,
                "data_offsets must be two non-negative integers [begin, end],"
                f" but it is {_describe(data_offsets)}",
            )
        begin, end = data_offsets
        if end < begin:
            raise self.tensor_error(name, f"data_offsets [{begin}, {end}] end before they begin")

        needed = math.prod(shape) * dtype.itemsize
        if end - begin != needed:
            raise self.tensor_error(
                name,
                f"data_offsets [{begin}, {end}] hold {end - begin} bytes"
                f" but shape {shape} of {dtype.name} needs {needed}",
            )
        if end > data_size:
            raise self.tensor_error(
                name,
                f"data_offsets [{begin}, {end}] end past the data area, which has {data_size} bytes;"
                " the file is truncated or its offsets are wrong",
            )
        return TensorInfo(name, dtype.name, tuple(shape)), (begin, end)

    def check_layout(self, infos: list[TensorInfo], offsets: dict[str, tuple[int, int]], data_size: int) -> None:
        """Check that the tensors cover the data area without overlaps, gaps or trailing bytes.

        The safetensors package rejects a file with a gap or trailing bytes too.
        """
        ordered = sorted(infos, key=lambda info: offsets[info.name])
        position = 0
        previous: str | None = None
        for info in ordered:
            begin, end = offsets[info.name]
            if begin < position:
                previous_begin, previous_end = offsets[previous]  # type: ignore[index]
                raise self.tensor_error(
                    info.name,
                    f"data_offsets [{begin}, {end}] overlap tensor {previous!r} at [{previous_begin}, {previous_end}]",
                )
            if begin > position:
                raise self.tensor_error(
                    info.name,
                    f"data_offsets [{begin}, {end}] leave bytes {position} to {begin} of the data area unused;"
                    " safetensors requires the tensor data to be contiguous",
                )
            if end > begin:
                position = end
                previous = info.name
        if position != data_size:
            raise self.error(
                f"the tensors cover {position} bytes but the data area has {data_size};"
                " safetensors rejects trailing bytes"
            )


class SafetensorsReader:
    """Reader for one safetensors file that loads one tensor at a time.

    The constructor parses and validates the header and raises InputError for a
    missing, unreadable or malformed file. `read` memory-maps the file with the
    safetensors package on first use. Use the reader as a context manager, or call
    `close`, to release the mapping.
    """

    metadata: dict[str, str] | None
    """The `__metadata__` entries, or None when the header has no `__metadata__` key."""
    tensors: list[TensorInfo]
    """Every tensor in header order."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self.metadata, self.tensors, self._offsets = _HeaderParser(self.path).parse()
        self._infos = {info.name: info for info in self.tensors}
        self._open_files = contextlib.ExitStack()
        self._handle = None

    def __enter__(self) -> SafetensorsReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._open_files.close()
        self._handle = None

    def info(self, name: str) -> TensorInfo:
        """Return the dtype and shape of a tensor; raise InputError for an unknown name."""
        info = self._infos.get(name)
        if info is None:
            raise InputError(f"{self.path}: no tensor named {name!r}")
        return info

    def read(self, name: str, copy: bool = True) -> torch.Tensor:
        """Return one tensor as a CPU tensor, by default a new copy in memory.

        With `copy` false the result is a view of the reader's private memory map: it
        costs no copy, but it is valid only until `close`, and an in-place edit of it
        shows up in later reads of the same tensor.
        """
        info = self.info(name)
        try:
            if self._handle is None:
                self._handle = self._open_files.enter_context(safe_open(self.path, framework="pt"))
            tensor = self._handle.get_tensor(name)
        except (SafetensorError, OSError) as error:
            raise InputError(f"{self.path}: cannot load tensor {name!r}: {error}") from None

        if tuple(tensor.shape) != info.shape or tensor.dtype != dtype_by_name(info.dtype).torch_dtype:
            raise InputError(f"{self.path}: tensor {name!r} changed while the file was read")
        if not copy:
            return tensor
        # safetensors 0.8 returns a view of a private memory map, so an in-place edit of
        # the result would show up in later reads of the same tensor. The copy prevents that.
        if tensor.dtype == torch.bool:
            # Cloning a bool tensor maps every nonzero byte to 1; copy the bytes instead.
            return tensor.view(torch.uint8).clone().view(torch.bool)
        return tensor.clone()


class SafetensorsWriter:
    """Writer for one safetensors file that receives the tensor data one tensor at a time.

    The constructor writes the header. The header lists `__metadata__` first (unless
    `metadata` is None) and then the tensors in the order of `infos`. The data follows
    in the same order without gaps. The header is padded with spaces to a multiple of
    8 bytes, as the safetensors package does. Call `write` once per tensor, in any
    order (each tensor's offset is known from the header), then `close`. Argument
    errors and repeated or unknown names raise InputError.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        infos: Sequence[TensorInfo],
        metadata: Mapping[str, str] | None,
    ) -> None:
        self.path = os.fspath(path)
        self._infos = list(infos)
        self._sizes = [self._check_info(info) for info in self._infos]
        self._check_unique_names()
        self._index_by_name = {info.name: i for i, info in enumerate(self._infos)}
        self._written = [False] * len(self._infos)
        self._offsets = [0] * len(self._infos)
        for i in range(1, len(self._infos)):
            self._offsets[i] = self._offsets[i - 1] + self._sizes[i - 1]

        header = self._build_header(metadata)
        try:
            self._file = open(self.path, "wb")
        except OSError as error:
            raise InputError(f"{self.path}: cannot create the file: {error.strerror or error}") from None
        try:
            self._file.write(len(header).to_bytes(8, "little"))
            self._file.write(header)
            self._data_start = 8 + len(header)
        except BaseException:
            self._file.close()
            raise

    def _check_info(self, info: TensorInfo) -> int:
        """Validate one entry of `infos` and return its data size in bytes."""
        if not isinstance(info.name, str) or info.name == _METADATA_KEY:
            raise InputError(f"{self.path}: invalid tensor name {info.name!r}")
        shape = tuple(info.shape)
        if not all(isinstance(dim, int) and not isinstance(dim, bool) and dim >= 0 for dim in shape):
            raise InputError(
                f"{self.path}: tensor {info.name!r}: shape {list(shape)} must contain non-negative integers"
            )
        try:
            dtype = dtype_by_name(info.dtype)
        except InputError as error:
            raise InputError(f"{self.path}: tensor {info.name!r}: {error}") from None
        return math.prod(shape) * dtype.itemsize

    def _check_unique_names(self) -> None:
        seen: set[str] = set()
        for info in self._infos:
            if info.name in seen:
                raise InputError(f"{self.path}: tensor name {info.name!r} appears more than once")
            seen.add(info.name)

    def _build_header(self, metadata: Mapping[str, str] | None) -> bytes:
        header: dict[str, object] = {}
        if metadata is not None:
            for key, value in metadata.items():
                if not (isinstance(key, str) and isinstance(value, str)):
                    raise InputError(f"{self.path}: metadata key {key!r} and its value must both be strings")
            header[_METADATA_KEY] = dict(metadata)

        begin = 0
        for info, size in zip(self._infos, self._sizes):
            header[info.name] = {
                "dtype": info.dtype,
                "shape": list(info.shape),
                "data_offsets": [begin, begin + size],
            }
            begin += size

        try:
            encoded = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        except UnicodeEncodeError as error:
            raise InputError(f"{self.path}: a tensor name or metadata string is not valid Unicode: {error}") from None
        encoded += b" " * (-len(encoded) % 8)
        if len(encoded) > MAX_HEADER_BYTES:
            raise InputError(
                f"{self.path}: the header needs {len(encoded)} bytes, more than the safetensors maximum of"
                f" {MAX_HEADER_BYTES}"
            )
        return encoded

    def __enter__(self) -> SafetensorsWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, traceback: object) -> None:
        if exc_type is None:
            self.close()
        else:
            # The file is incomplete anyway, so skip the check that every tensor arrived.
            self._file.close()

    def write(self, name: str, data: bytes | bytearray | memoryview) -> None:
        """Append the raw little-endian bytes of the next tensor."""
        if self._file.closed:
            raise InputError(f"{self.path}: cannot write tensor {name!r} because the writer is closed")
        index = self._index_by_name.get(name)
        if index is None or self._written[index]:
            raise InputError(f"{self.path}: tensor {name!r} was not declared, or was already written")
        expected = self._infos[index]
        size = memoryview(data).nbytes
        if size != self._sizes[index]:
            raise InputError(
                f"{self.path}: tensor {name!r}: got {size} bytes but shape {list(expected.shape)}"
                f" of {expected.dtype} needs {self._sizes[index]}"
            )
        self._file.seek(self._data_start + self._offsets[index])
        self._file.write(data)
        self._written[index] = True

    def close(self) -> None:
        """Close the file and raise InputError if a tensor was not written.

        A second call does nothing.
        """
        if self._file.closed:
            return
        self._file.close()
        missing = [info.name for info, done in zip(self._infos, self._written) if not done]
        if missing:
            raise InputError(
                f"{self.path}: {len(missing)} of {len(self._infos)} tensors were never written,"
                f" the first of them is {missing[0]!r}"
            )

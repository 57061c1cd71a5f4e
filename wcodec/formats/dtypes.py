"""The safetensors dtypes that wcodec supports, and conversions between tensors, bytes and numpy.

Every byte string here is little-endian in C order, as safetensors stores tensor data.
Each dtype also has a one-byte wire code that identifies it inside a `.wbs` container.
The codes are part of the bitstream format, so an existing code must never change.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import numpy as np
import torch

from wcodec.errors import InputError, WbsFormatError

__all__ = [
    "DType",
    "DTYPES",
    "dtype_by_name",
    "dtype_by_wire_code",
    "dtype_by_torch",
    "tensor_to_bytes",
    "tensor_from_bytes",
    "tensor_byte_view",
    "tensor_to_float64",
    "float64_to_tensor",
    "tensor_to_int64",
    "int64_to_tensor",
    "reconstruction_to_tensor",
]


@dataclass(frozen=True)
class DType:
    """One safetensors dtype with its wcodec wire code and torch equivalent."""

    name: str
    """Name in the safetensors header, for example "BF16"."""
    wire_code: int
    """Byte that identifies the dtype in a `.wbs` container."""
    torch_dtype: torch.dtype
    itemsize: int
    """Bytes per element."""
    kind: str
    """One of "float", "int", "uint" or "bool"."""


DTYPES: tuple[DType, ...] = (
    DType("BOOL", 1, torch.bool, 1, "bool"),
    DType("U8", 2, torch.uint8, 1, "uint"),
    DType("I8", 3, torch.int8, 1, "int"),
    DType("U16", 4, torch.uint16, 2, "uint"),
    DType("I16", 5, torch.int16, 2, "int"),
    DType("U32", 6, torch.uint32, 4, "uint"),
    DType("I32", 7, torch.int32, 4, "int"),
    DType("U64", 8, torch.uint64, 8, "uint"),
    DType("I64", 9, torch.int64, 8, "int"),
    DType("F16", 10, torch.float16, 2, "float"),
    DType("BF16", 11, torch.bfloat16, 2, "float"),
    DType("F32", 12, torch.float32, 4, "float"),
    DType("F64", 13, torch.float64, 8, "float"),
    DType("F8_E4M3", 14, torch.float8_e4m3fn, 1, "float"),
    DType("F8_E5M2", 15, torch.float8_e5m2, 1, "float"),
)

_BY_NAME = {dtype.name: dtype for dtype in DTYPES}
_BY_WIRE_CODE = {dtype.wire_code: dtype for dtype in DTYPES}
_BY_TORCH = {dtype.torch_dtype: dtype for dtype in DTYPES}
_SUPPORTED_NAMES = ", ".join(dtype.name for dtype in DTYPES)

# Unsigned integers of each itemsize, used to reorder bytes on a big-endian host.
_UNSIGNED_BY_ITEMSIZE = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}

_INT64_MAX = 2**63 - 1

# Float dtypes that numpy casts to directly (round to nearest even, as torch does).
_NUMPY_FLOATS = {"F16": np.float16, "F32": np.float32, "F64": np.float64}

# The largest finite value of each float dtype.
_MAX_FINITE = {dtype.name: float(torch.finfo(dtype.torch_dtype).max)
                   for dtype in DTYPES if dtype.kind == "float"}


def dtype_by_name(name: str) -> DType:
    """Look up a dtype by its safetensors name; raise InputError for an unsupported name."""
    dtype = _BY_NAME.get(name)
    if dtype is None:
        raise InputError(f"dtype {name!r} is not supported; supported dtypes: {_SUPPORTED_NAMES}")
    return dtype


def dtype_by_wire_code(code: int) -> DType:
    """Look up a dtype by its wire code.

    Raises WbsFormatError for an unknown code, because wire codes come from `.wbs` files.
    """
    dtype = _BY_WIRE_CODE.get(code)
    if dtype is None:
        raise WbsFormatError(
            f"unknown dtype wire code {code!r}; valid codes are {min(_BY_WIRE_CODE)} to {max(_BY_WIRE_CODE)}"
        )
    return dtype


def dtype_by_torch(torch_dtype: torch.dtype) -> DType:
    """Look up the safetensors dtype of a torch dtype; raise InputError when there is none."""
    dtype = _BY_TORCH.get(torch_dtype)
    if dtype is None:
        raise InputError(f"torch dtype {torch_dtype} is not supported; supported dtypes: {_SUPPORTED_NAMES}")
    return dtype


def _numel(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


def _swap_native_and_little_endian(raw: np.ndarray, itemsize: int) -> np.ndarray:
    """Return a uint8 array with native byte order turned into little-endian, or the reverse.

    On a little-endian host this returns `raw` itself.
    """
    if sys.byteorder == "little" or itemsize == 1:
        return raw
    # NOTE: this path only runs on big-endian hosts, and no test has run on one.
    words = raw.view(_UNSIGNED_BY_ITEMSIZE[itemsize])
    return words.byteswap().view(np.uint8)


def tensor_byte_view(tensor: torch.Tensor) -> np.ndarray:
    """Return the raw little-endian bytes of a tensor in C order as a uint8 array.

    The array is a view of the tensor's memory when the tensor is a contiguous CPU
    tensor on a little-endian host, and a copy otherwise. Every bit is kept, NaN
    payloads and BOOL bytes other than 0 and 1 included.
    """
    dtype = dtype_by_torch(tensor.dtype)
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    if flat.numel() == 0:
        return np.zeros(0, dtype=np.uint8)
    if flat.stride(0) != 1:
        # torch counts a tensor with at most one element as contiguous whatever its
        # stride, but a view as uint8 needs stride 1.
        flat = torch.empty_like(flat, memory_format=torch.contiguous_format).copy_(flat)
    raw = flat.view(torch.uint8).numpy()
    return _swap_native_and_little_endian(raw, dtype.itemsize)


def tensor_to_bytes(tensor: torch.Tensor) -> bytes:
    """Return the raw little-endian bytes of a tensor in C order (see `tensor_byte_view`)."""
    return tensor_byte_view(tensor).tobytes()


def tensor_from_bytes(data: bytes | bytearray | memoryview, dtype_name: str, shape: tuple[int, ...]) -> torch.Tensor:
    """Build a tensor from raw little-endian bytes in C order.

    The result owns a copy of the data. Raises ValueError when the length of `data`
    does not match the shape and dtype.
    """
    dtype = dtype_by_name(dtype_name)
    shape = tuple(shape)
    nbytes = memoryview(data).nbytes
    expected = _numel(shape) * dtype.itemsize
    if nbytes != expected:
        raise ValueError(
            f"data has {nbytes} bytes but shape {list(shape)} of {dtype.name} needs {expected}"
        )

    if expected == 0:
        # torch rejects a view of an empty uint8 tensor as a wider dtype.
        return torch.empty(shape, dtype=dtype.torch_dtype)

    # The copy makes the tensor writable and independent of the caller's buffer.
    raw = np.frombuffer(data, dtype=np.uint8).copy()
    raw = _swap_native_and_little_endian(raw, dtype.itemsize)
    return torch.from_numpy(raw).view(dtype.torch_dtype).reshape(shape)


def _require_kind(dtype: DType, kinds: tuple[str, ...], function: str) -> None:
    if dtype.kind not in kinds:
        raise ValueError(f"{function} does not accept dtype {dtype.name} (kind {dtype.kind!r})")


def tensor_to_float64(tensor: torch.Tensor) -> np.ndarray:
    """Convert a tensor of a float dtype to a new float64 array of the same shape.

    The conversion is exact for every finite value and every infinity. NaN payloads are
    not kept (signalling NaNs become quiet), so callers that must keep every bit use
    `tensor_to_bytes`. Raises ValueError for a dtype that is not a float.
    """
    dtype = dtype_by_torch(tensor.dtype)
    _require_kind(dtype, ("float",), "tensor_to_float64")
    tensor = tensor.detach().cpu()
    if dtype.name in _NUMPY_FLOATS:
        # Same values as torch's cast. torch 2.13 took milliseconds for 10**5 values on
        # a busy 2-core machine (its thread pool), numpy takes tens of microseconds.
        # numpy warns where the cast raises the invalid flag, as for a signalling NaN.
        with np.errstate(invalid="ignore"):
            return tensor.numpy().astype(np.float64)
    return tensor.to(torch.float64, copy=True).numpy()


def float64_to_tensor(array: np.ndarray, dtype_name: str, shape: tuple[int, ...]) -> torch.Tensor:
    """Round a float64 array to a float dtype with torch's cast and reshape it to `shape`.

    Values that the target dtype represents exactly come back unchanged. Out-of-range
    values follow torch's cast: F16, BF16 and F8_E5M2 overflow to infinity, but
    F8_E4M3, which has no infinity, saturates to +-448 (infinities included).
    Raises ValueError for a dtype that is not a float or an element count that does
    not match `shape`.
    """
    dtype = dtype_by_name(dtype_name)
    _require_kind(dtype, ("float",), "float64_to_tensor")
    shape = tuple(shape)
    values = np.ascontiguousarray(array, dtype=np.float64)
    if values.size != _numel(shape):
        raise ValueError(f"array has {values.size} elements but shape {list(shape)} needs {_numel(shape)}")

    if dtype.name in _NUMPY_FLOATS:
        # numpy rounds to nearest even like torch, and is several times faster at it.
        # Out-of-range values become infinity, as with torch, without numpy's warning.
        with np.errstate(over="ignore"):
            narrowed = values.reshape(shape).astype(_NUMPY_FLOATS[dtype.name])
        return torch.from_numpy(narrowed)
    # NOTE: torch 2.13 casts float64 to BF16 and the F8 dtypes through float32, so a
    # float64 value just above or below a tie of the target dtype can round the wrong way
    # (double rounding). Values that float32 represents exactly round correctly.
    return torch.from_numpy(values.reshape(shape)).to(dtype.torch_dtype, copy=True)


def reconstruction_to_tensor(array: np.ndarray, dtype_name: str, shape: tuple[int, ...]) -> torch.Tensor:
    """Round dequantized float64 values to a float dtype, saturating at its largest finite value.

    A level times the step can exceed the range of a narrow dtype (65504 in F16 becomes
    65520 at a step of 40), and rounding would then give infinity; saturating keeps the
    decoded weights finite. Encoder and decoder both call this, so their frames agree.
    """
    max_finite = _MAX_FINITE[dtype_by_name(dtype_name).name]
    # np.clip takes several microseconds more on the small tensors of a model.
    saturated = np.minimum(np.maximum(array, -max_finite), max_finite)
    return float64_to_tensor(saturated, dtype_name, shape)


def tensor_to_int64(tensor: torch.Tensor) -> np.ndarray | None:
    """Convert a BOOL, integer or unsigned tensor to a new int64 array of the same shape.

    Returns None when a value has no exact int64 form, so the caller stores the raw
    bytes instead. That happens for a U64 value above 2**63 - 1 and for a BOOL byte
    other than 0 or 1. Raises ValueError for a float dtype.
    """
    dtype = dtype_by_torch(tensor.dtype)
    _require_kind(dtype, ("bool", "int", "uint"), "tensor_to_int64")
    tensor = tensor.detach().cpu()

    if dtype.kind == "bool":
        # Casting a bool tensor maps every nonzero byte to 1, so read the bytes themselves.
        as_bytes = tensor.contiguous().view(torch.uint8)
        if as_bytes.numel() and int(as_bytes.max()) > 1:
            return None
        return as_bytes.to(torch.int64).numpy()

    if dtype.name == "U64":
        # A cast from uint64 wraps silently, but reinterpreting the bits shows a value
        # above the int64 maximum as a negative number.
        as_int64 = tensor.contiguous().view(torch.int64)
        if as_int64.numel() and int(as_int64.min()) < 0:
            return None
        return as_int64.clone().numpy()

    return tensor.numpy().astype(np.int64)


def _int_range(dtype: DType) -> tuple[int, int]:
    if dtype.kind == "bool":
        return 0, 1
    if dtype.kind == "uint":
        return 0, min(2 ** (8 * dtype.itemsize) - 1, _INT64_MAX)
    return -(2 ** (8 * dtype.itemsize - 1)), 2 ** (8 * dtype.itemsize - 1) - 1


def int64_to_tensor(array: np.ndarray, dtype_name: str, shape: tuple[int, ...]) -> torch.Tensor:
    """Convert an int64 array to a BOOL, integer or unsigned tensor of `shape`.

    This is the exact inverse of `tensor_to_int64`. Other numpy integer arrays are
    accepted too. Raises ValueError when a value is outside the range of the dtype
    (0 and 1 for BOOL, at most 2**63 - 1 for U64), because torch's cast would wrap it
    silently. Also raises ValueError for a float array or an element count that does
    not match `shape`.
    """
    dtype = dtype_by_name(dtype_name)
    _require_kind(dtype, ("bool", "int", "uint"), "int64_to_tensor")
    shape = tuple(shape)
    values = np.asarray(array)
    if not (np.issubdtype(values.dtype, np.integer) or values.dtype == np.bool_):
        raise ValueError(f"int64_to_tensor needs an integer array, got {values.dtype}")
    if values.size != _numel(shape):
        raise ValueError(f"array has {values.size} elements but shape {list(shape)} needs {_numel(shape)}")

    # Check the range before the cast to int64, which would wrap a large uint64 value.
    if values.size:
        low, high = _int_range(dtype)
        smallest = int(values.min())
        largest = int(values.max())
        if smallest < low or largest > high:
            raise ValueError(
                f"values range from {smallest} to {largest}, outside the range of {dtype.name} ({low} to {high})"
            )

    values = np.ascontiguousarray(values, dtype=np.int64).reshape(shape)
    return torch.from_numpy(values).to(dtype.torch_dtype, copy=True)

"""Encoder: safetensors in, ``.wbs`` out.

For each tensor the encoder picks a coding mode:

- ``quantized`` for floating tensors: at ``qp`` when the tensor has at least two dimensions,
  at ``qp + FINE_QP_OFFSET`` (a step 64 times finer) otherwise;
- ``integer`` for integer and bool tensors, coded losslessly by the same residual coder;
- ``raw`` (bytes as stored) for tensors matching a ``keep`` pattern, floating tensors holding
  NaN or Inf, and values too large for the level range;
- ``alias`` for a tensor whose dtype, shape and bytes equal those of an earlier tensor.

Tensors are read one at a time; the coded payloads stay in memory until the container is
written, so peak memory is about the output size plus a few copies of the largest tensor.
"""

import fnmatch
import hashlib
import logging
import re
from dataclasses import dataclass

import numpy as np

from wcodec.codec import frames, quantization, residual_coding
from wcodec.errors import InputError
from wcodec.formats import container, dtypes
from wcodec.formats.atomic import atomic_output
from wcodec.formats.safetensors_io import SafetensorsReader

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EncodeOptions:
    """Encoder settings: quantization parameter and the names stored bit-exact."""

    qp: int = quantization.DEFAULT_QP
    keep: tuple = ()

    def __post_init__(self):
        quantization.qp_to_step(self.qp + quantization.FINE_QP_OFFSET)
        for pattern in self.keep:
            if not isinstance(pattern, str) or not pattern:
                raise InputError(f"keep pattern {pattern!r} must be a non-empty string")


def matches_pattern(name, pattern):
    """Return whether a tensor name matches a glob pattern or, failing that, a regular expression.

    A glob must match the whole name; so must a regular expression (``re.fullmatch``).
    A pattern that is not a valid regular expression is used as a glob only.
    """
    if fnmatch.fnmatchcase(name, pattern):
        return True
    try:
        return re.fullmatch(pattern, name) is not None
    except re.error:
        return False


def _raw_record(info, tensor):
    record = container.TensorRecord(info.name, info.dtype, tuple(info.shape), container.MODE_RAW)
    return record, dtypes.tensor_to_bytes(tensor)


def encode_tensor(info, tensor, options):
    """Return ``(record, payload)`` for one tensor (without payload offset and checksum)."""
    kind = dtypes.dtype_by_name(info.dtype).kind
    shape = tuple(info.shape)
    if any(matches_pattern(info.name, pattern) for pattern in options.keep):
        return _raw_record(info, tensor)
    if tensor.numel() == 0:
        mode = container.MODE_QUANTIZED if kind == "float" else container.MODE_INTEGER
        qp = options.qp if kind == "float" else 0
        return container.TensorRecord(info.name, info.dtype, shape, mode, qp=qp), b""

    geometry = frames.frame_geometry(shape)
    if kind == "float":
        values = dtypes.tensor_to_float64(tensor)
        if not np.isfinite(values).all():
            logger.warning("tensor %r holds NaN or Inf; storing it bit-exact instead of "
                           "quantizing it", info.name)
            return _raw_record(info, tensor)
        qp = options.qp if len(shape) >= 2 else options.qp + quantization.FINE_QP_OFFSET
        step = quantization.qp_to_step(qp)
        if np.abs(values).max() / step >= residual_coding.MAX_LEVEL:
            logger.info("tensor %r has values too large for qp %d; storing it bit-exact",
                        info.name, qp)
            return _raw_record(info, tensor)
        levels = quantization.quantize(values.reshape(geometry.rows, geometry.row_length), step)
        payload = residual_coding.encode_levels(levels, geometry.block_size)
        record = container.TensorRecord(info.name, info.dtype, shape,
                                        container.MODE_QUANTIZED, qp=qp)
        return record, payload

    values = dtypes.tensor_to_int64(tensor)
    if values is None or np.abs(values).max() > residual_coding.MAX_LEVEL:
        return _raw_record(info, tensor)
    levels = values.reshape(geometry.rows, geometry.row_length)
    payload = residual_coding.encode_levels(levels, geometry.block_size)
    return container.TensorRecord(info.name, info.dtype, shape, container.MODE_INTEGER), payload


def encode_file(src, dst, *, qp=quantization.DEFAULT_QP, keep=(), force=False, progress=None):
    """Encode the safetensors file ``src`` into the ``.wbs`` file ``dst``; return the header.

    ``progress``, when given, is called with the tensor name after each tensor.
    Raises InputError for unreadable input or an output that may not be written.
    """
    options = EncodeOptions(qp=int(qp), keep=tuple(keep))
    with SafetensorsReader(src) as reader:
        header = container.WbsHeader(reader.metadata)
        payloads = []
        seen = {}
        with atomic_output(dst, force=force, inputs=(src,)) as tmp_path:
            for index, info in enumerate(reader.tensors):
                tensor = reader.read(info.name)
                raw = dtypes.tensor_to_bytes(tensor)
                key = (info.dtype, tuple(info.shape), hashlib.sha256(raw).digest())
                if key in seen:
                    record = container.TensorRecord(info.name, info.dtype, tuple(info.shape),
                                                    container.MODE_ALIAS, alias_of=seen[key])
                    payload = b""
                else:
                    seen[key] = index
                    record, payload = encode_tensor(info, tensor, options)
                header.tensors.append(record)
                payloads.append((index, payload))
                if progress is not None:
                    progress(info.name)
            with open(tmp_path, "wb") as stream:
                container.write_container(stream, header, payloads)
    return header

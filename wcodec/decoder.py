"""Decoder: ``.wbs`` in, tensors or a safetensors file out.

The container reader validates the whole header before any payload is touched; each
payload's CRC-32 is checked before its arithmetic decoding starts, and the residual
decoder's own consistency checks run after it.
"""

import mmap
import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np

from wcodec.codec import cabac, frame_coder, frames, quantization, residual_coding, transform
from wcodec.errors import InputError, WbsFormatError
from wcodec.jobs import check_jobs
from wcodec.formats import container, dtypes
from wcodec.formats.atomic import atomic_output
from wcodec.formats.inputs import check_regular_file
from wcodec.formats.safetensors_io import SafetensorsWriter, TensorInfo


@contextmanager
def open_wbs(path, limits=container.DecodeLimits()):
    """Map a ``.wbs`` file and parse its header; yield a :class:`WbsFile`."""
    path = os.fspath(path)
    check_regular_file(path, "a .wbs file")
    try:
        handle = open(path, "rb")
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, expected a .wbs file") from None
    except OSError as error:
        raise InputError(f"{path}: cannot open: {error.strerror}") from None
    with handle:
        size = os.fstat(handle.fileno()).st_size
        if size == 0:
            raise WbsFormatError(f"{path}: file is empty; it is not a .wbs file")
        # Slicing an mmap copies bytes and exports no buffer, so the map always closes
        # cleanly, also while an exception that references the slices propagates.
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            header, payload_base = container.read_container(data, path, limits)
            yield WbsFile(path, header, data, payload_base)


class WbsFile:
    """A parsed ``.wbs`` file whose payloads are decoded on request."""

    def __init__(self, path, header, data, payload_base):
        self.path = path
        self.header = header
        self._data = data
        self._payload_base = payload_base

    def payload(self, index):
        """Return the payload bytes of record ``index`` after checking its CRC-32."""
        record = self.header.tensors[index]
        start = self._payload_base + record.payload_offset
        payload = self._data[start:start + record.payload_length]
        if container.zlib.crc32(payload) != record.payload_crc32:
            raise WbsFormatError(f"{self.path}: tensor {record.name!r}: field payload_crc32: "
                                 f"checksum mismatch; the payload is damaged")
        return payload

    def _check_coder(self, record, coder, payload):
        if coder[cabac.ERROR]:
            raise WbsFormatError(f"{self.path}: tensor {record.name!r}: payload: the arithmetic "
                                 f"code is inconsistent; the payload is damaged")
        if coder[cabac.POS] < len(payload):
            raise WbsFormatError(f"{self.path}: tensor {record.name!r}: payload: "
                                 f"{len(payload) - coder[cabac.POS]} bytes left after the last "
                                 f"level; expected none")

    def _step(self, record):
        try:
            return quantization.qp_to_step(record.qp)
        except ValueError:
            raise WbsFormatError(f"{self.path}: tensor {record.name!r}: field qp: {record.qp} is "
                                 f"outside [{quantization.QP_MIN}, {quantization.QP_MAX}]") from None

    def levels(self, index):
        """Return the decoded levels (rows, row_length) of a quantized or integer record.

        Frames (quantized records of two or more dimensions) are decoded with
        :meth:`decode_frame` instead, because inter frames need their references.
        """
        record = self.header.tensors[index]
        geometry = frames.frame_geometry(record.shape)
        payload = self.payload(index)
        if record.num_elements == 0:
            return np.zeros((0, 0), dtype=np.int64)
        levels, coder = residual_coding.decode_levels(
            payload, (geometry.rows, geometry.row_length), geometry.block_size)
        self._check_coder(record, coder, payload)
        return levels

    def is_frame(self, index):
        """Return whether record ``index`` is a quantized tensor of two or more dimensions."""
        record = self.header.tensors[index]
        return (record.coding_mode == container.MODE_QUANTIZED and len(record.shape) >= 2
                and record.num_elements > 0)

    def decode_frame(self, index, references):
        """Decode frame ``index``; return (reconstruction (O, I, K), levels, syntax).

        ``references`` maps record indexes to reconstructions (O, I, K) of earlier frames.
        """
        record = self.header.tensors[index]
        shape = (record.shape[0], record.shape[1], record.num_elements
                 // (record.shape[0] * record.shape[1]))
        refs = [references[ref] for ref in record.refs]
        payload = self.payload(index)
        recon, levels, syntax, coder = frame_coder.decode_frame(
            payload, shape, self._step(record), record.frame_mode, refs, record.pred_gain,
            record.quantizer, tuple(record.shape[2:]))
        self._check_coder(record, coder, payload)
        if recon is None:
            raise WbsFormatError(f"{self.path}: tensor {record.name!r}: payload: a DCT "
                                 f"coefficient exceeds {transform.MAX_VALUE} steps, more than a "
                                 f"transform frame allows; the payload is damaged")
        return recon, levels, syntax

    def decode_record(self, index, dependencies):
        """Decode record ``index``; return (tensor, reference or None).

        ``dependencies`` maps the indexes this record names (its alias source or its
        references) to what decoding them returned. The reference is the reconstruction
        (O, I, K) in float64 that later frames predict from, for frames only.
        """
        record = self.header.tensors[index]
        mode = record.coding_mode
        if mode == container.MODE_ALIAS:
            return dependencies[record.alias_of][0], None
        if mode == container.MODE_RAW:
            return dtypes.tensor_from_bytes(self.payload(index), record.dtype, record.shape), None
        if self.is_frame(index):
            references = {ref: dependencies[ref][1] for ref in record.refs}
            recon, _, _ = self.decode_frame(index, references)
            tensor = dtypes.reconstruction_to_tensor(recon.reshape(record.shape), record.dtype,
                                                     record.shape)
            return tensor, dtypes.tensor_to_float64(tensor).reshape(recon.shape)
        levels = self.levels(index)
        if mode == container.MODE_INTEGER:
            try:
                tensor = dtypes.int64_to_tensor(levels.reshape(record.shape), record.dtype,
                                                record.shape)
            except ValueError as error:
                raise WbsFormatError(f"{self.path}: tensor {record.name!r}: payload: "
                                     f"{error}") from None
            return tensor, None
        values = quantization.dequantize(levels, self._step(record))
        return dtypes.reconstruction_to_tensor(values.reshape(record.shape), record.dtype,
                                               record.shape), None

    def _dependencies(self, index):
        record = self.header.tensors[index]
        if record.coding_mode == container.MODE_ALIAS:
            return (record.alias_of,)
        if record.coding_mode == container.MODE_QUANTIZED:
            return tuple(record.refs)
        return ()

    def iter_tensors(self, jobs=1):
        """Yield ``(index, tensor)`` in coding order.

        With ``jobs`` > 1, worker threads decode records ahead of the one yielded, each
        once the records it depends on are decoded; the results are the same as with one
        job. The look-ahead always reaches ``jobs`` records, and up to
        ``LOOKAHEAD_RECORDS_PER_JOB * jobs`` while the records ahead hold at most
        LOOKAHEAD_VALUES values, which bounds the memory of decoded tensors waiting to be
        yielded. Only results that later records still need are kept.
        """
        order = self.header.coding_order()
        last_use = {}
        for position, index in enumerate(order):
            for dependency in self._dependencies(index):
                last_use[dependency] = position
        results = {}
        if jobs <= 1:
            for position, index in enumerate(order):
                deps = {d: results[d] for d in self._dependencies(index)}
                result = self.decode_record(index, deps)
                if index in last_use:
                    results[index] = result
                for dependency in deps:
                    if last_use[dependency] == position:
                        del results[dependency]
                yield index, result[0]
            return

        futures = {}

        def decode_after_dependencies(index):
            deps = {d: futures[d].result() for d in self._dependencies(index)}
            return self.decode_record(index, deps)

        sizes = [self.header.tensors[index].num_elements for index in order]

        def may_submit(position, submitted, values_ahead):
            if submitted >= len(order):
                return False
            if submitted <= position + jobs:
                return True
            return (submitted <= position + LOOKAHEAD_RECORDS_PER_JOB * jobs
                    and values_ahead + sizes[submitted] <= LOOKAHEAD_VALUES)

        with ThreadPoolExecutor(max_workers=jobs) as pool:
            submitted = 0
            values_ahead = 0  # of the records submitted after the one being yielded
            try:
                for position, index in enumerate(order):
                    if submitted > position:
                        values_ahead -= sizes[position]
                    while may_submit(position, submitted, values_ahead):
                        ahead = order[submitted]
                        futures[ahead] = pool.submit(decode_after_dependencies, ahead)
                        if submitted > position:
                            values_ahead += sizes[submitted]
                        submitted += 1
                    tensor = futures[index].result()[0]
                    if index not in last_use:
                        del futures[index]
                    for dependency in self._dependencies(index):
                        if last_use[dependency] == position and dependency in futures:
                            del futures[dependency]
                    yield index, tensor
            finally:
                for future in futures.values():
                    future.cancel()


LOOKAHEAD_RECORDS_PER_JOB = 16
LOOKAHEAD_VALUES = 1 << 22  # 32 MiB of float64 reconstructions


def load(path, jobs=None, limits=None):
    """Decode a ``.wbs`` file into a dict of torch tensors in the original order and dtypes.

    Every name gets its own tensor, also where the file stores tied tensors once, so an
    in-place edit of one never changes another. ``jobs`` worker threads decode in
    parallel (default: every core available). ``limits`` (a ``DecodeLimits``) replaces the
    default limits on declared sizes; lower them for files from untrusted sources.
    """
    with open_wbs(path, limits or container.DecodeLimits()) as wbs:
        jobs = check_jobs(jobs, sum(r.num_elements for r in wbs.header.tensors))
        tensors = dict(wbs.iter_tensors(jobs))
        header = wbs.header
        result = {}
        for index, record in enumerate(header.tensors):
            tensor = tensors[index]
            if record.coding_mode == container.MODE_ALIAS:
                tensor = tensor.clone()
            result[record.name] = tensor
        return result


def decode_file(src, dst, *, jobs=None, limits=None, force=False, progress=None):
    """Decode the ``.wbs`` file ``src`` into the safetensors file ``dst``; return the header.

    ``jobs`` worker threads decode in parallel (default: every core available).
    ``limits`` (a ``DecodeLimits``) replaces the default limits on declared sizes.
    ``progress``, when given, is called with the tensor name after each tensor.
    """
    with open_wbs(src, limits or container.DecodeLimits()) as wbs:
        header = wbs.header
        jobs = check_jobs(jobs, sum(r.num_elements for r in header.tensors))
        infos = [TensorInfo(r.name, r.dtype, tuple(r.shape)) for r in header.tensors]
        with atomic_output(dst, force=force, inputs=(src,)) as tmp_path:
            with SafetensorsWriter(tmp_path, infos, header.metadata) as writer:
                for index, tensor in wbs.iter_tensors(jobs):
                    writer.write(header.tensors[index].name, dtypes.tensor_to_bytes(tensor))
                    if progress is not None:
                        progress(header.tensors[index].name)
    return header

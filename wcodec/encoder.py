"""Encoder: safetensors in, ``.wbs`` out.

For each tensor the encoder picks a coding mode:

- ``quantized`` for floating tensors: at ``qp`` when the tensor has at least two dimensions,
  at ``qp + FINE_QP_OFFSET`` (a step 64 times finer) otherwise. Tensors with two or more
  dimensions are frames and may be predicted from earlier frames (see below);
- ``integer`` for integer and bool tensors, coded losslessly by the same residual coder;
- ``raw`` (bytes as stored) for tensors matching a ``keep`` pattern, floating tensors holding
  NaN or Inf, and values too large for the level range;
- ``alias`` for a tensor whose dtype, shape and bytes equal those of an earlier tensor.

Tensors are coded in the frame order of :mod:`wcodec.codec.ordering`. A frame's references
are the most recent earlier frames with the same kernel shape: one for ``collocated`` and
``adjacent``, up to ``FULL_SEARCH_WINDOW`` for ``full``. References are the decoder's
reconstructions, rounded to the tensor's dtype.

With ``mode="auto"`` every frame is coded in intra and in each inter mode that its
references allow and that looks promising, and the smallest result is kept (the payload
plus the header bytes that the mode's fields add), so auto is never larger than intra.
An inter mode looks promising when two cheap tests expect it to beat intra. First, the
estimate of :mod:`wcodec.codec.mode_estimate` must exceed MIN_ESTIMATED_GAIN of the
estimated intra bits. Second, in frames of at least TRIAL_MIN_ROWS rows, coding every
TRIAL_ROW_STRIDE-th row in that mode must give fewer bytes than in intra. On
conventionally trained models these tests reject almost every inter mode, so auto costs
little more than intra. The tests are deterministic, so the output does not depend on
the number of jobs.

"Intra" here means whichever of intra and transform (a DCT over each kernel,
:mod:`wcodec.codec.transform`) codes the frame smaller: frames whose kernels the
transform accepts choose between the two on the same kind of row sample (see
:func:`_intra_modes`), unless ``transform`` is off.

Tensors are read one at a time; the coded payloads and the reconstructions of the last
few frames of each kernel shape stay in memory until the container is written.
"""

import fnmatch
import hashlib
import logging
import re
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from wcodec.codec import (frame_coder, frames, mode_estimate, ordering, prediction, quantization,
                          residual_coding, transform)
from wcodec.codec.block_syntax import (FRAME_ADJACENT, FRAME_COLLOCATED, FRAME_FULL,
                                       FRAME_INTRA, FRAME_TRANSFORM)
from wcodec.errors import InputError
from wcodec.jobs import check_jobs
from wcodec.formats import container, dtypes
from wcodec.formats.atomic import atomic_output
from wcodec.formats.safetensors_io import SafetensorsReader

logger = logging.getLogger(__name__)

PREDICTION_MODES = ("intra", "collocated", "adjacent", "full", "auto")
QUANTIZERS = ("uniform", "dependent")
RDOQ_LAMBDA = 0.1  # squared steps per bit
DEFAULT_MODE = "auto"
FULL_SEARCH_WINDOW = 4
# Auto codes an inter frame mode in full only when its estimated gain over intra exceeds
# this share of the estimated intra bits (see wcodec.codec.mode_estimate).
MIN_ESTIMATED_GAIN = 0.01
# Inter modes that pass the estimate are then coded on every TRIAL_ROW_STRIDE-th row of
# frames with at least TRIAL_MIN_ROWS rows, and coded in full only if that sample codes
# smaller than intra.
TRIAL_ROW_STRIDE = 8
TRIAL_MIN_ROWS = 16
_FRAME_MODES = {"intra": (FRAME_INTRA,), "collocated": (FRAME_COLLOCATED,),
                "adjacent": (FRAME_ADJACENT,), "full": (FRAME_FULL,),
                "auto": (FRAME_INTRA, FRAME_COLLOCATED, FRAME_ADJACENT, FRAME_FULL)}


@dataclass(frozen=True)
class EncodeOptions:
    """Encoder settings.

    ``qp``: quantization parameter; ``keep``: name patterns stored bit-exact; ``mode``:
    prediction mode (one of PREDICTION_MODES); ``order``: frame order (one of
    ``ordering.ORDER_METHODS``); ``max_candidates``: reference blocks examined per block
    and sign by the block matching of ``adjacent`` and ``full``; ``transform``: whether
    frames of 16- to 64-bit floats whose kernels have 2 to 64 taps in at most two
    dimensions of up to 8 may also be coded as transform frames (a DCT over each kernel, see
    :mod:`wcodec.codec.transform`) wherever intra is a candidate; the smaller result wins.
    """

    qp: int = quantization.DEFAULT_QP
    keep: tuple = ()
    mode: str = DEFAULT_MODE
    order: str = ordering.DEFAULT_ORDER
    max_candidates: int = prediction.DEFAULT_MAX_CANDIDATES
    quantizer: str = "uniform"
    rdoq: bool = False
    qp_for: tuple = ()
    qp_map: tuple = ()
    transform: bool = True

    def tensor_qp(self, name, shape):
        """Return the qp of a floating tensor.

        An exact entry of ``qp_map`` (name, qp) wins, then the first ``qp_for`` entry
        (pattern, qp) whose pattern matches the name (see :func:`matches_pattern`); else
        ``qp`` for two or more dimensions and ``qp + FINE_QP_OFFSET`` for fewer.
        """
        for exact, qp in self.qp_map:
            if exact == name:
                return qp
        for pattern, qp in self.qp_for:
            if matches_pattern(name, pattern):
                return qp
        return self.qp if len(shape) >= 2 else self.qp + quantization.FINE_QP_OFFSET

    def __post_init__(self):
        try:
            quantization.qp_to_step(self.qp)
            quantization.qp_to_step(self.qp + quantization.FINE_QP_OFFSET)
        except ValueError:
            raise InputError(f"qp {self.qp} is outside [{quantization.QP_MIN - quantization.FINE_QP_OFFSET}, "
                             f"{quantization.QP_MAX}]") from None
        for pattern in self.keep:
            if not isinstance(pattern, str) or not pattern:
                raise InputError(f"keep pattern {pattern!r} must be a non-empty string")
        for pattern, qp in tuple(self.qp_for) + tuple(self.qp_map):
            if not isinstance(pattern, str) or not pattern:
                raise InputError(f"qp pattern {pattern!r} must be a non-empty string")
            if not quantization.QP_MIN <= qp <= quantization.QP_MAX:
                raise InputError(f"qp {qp} for {pattern!r} is outside [{quantization.QP_MIN}, "
                                 f"{quantization.QP_MAX}]")
        if self.mode not in PREDICTION_MODES:
            raise InputError(f"unknown prediction mode {self.mode!r}; valid modes are "
                             f"{', '.join(PREDICTION_MODES)}")
        if self.order not in ordering.ORDER_METHODS:
            raise InputError(f"unknown frame order {self.order!r}; valid orders are "
                             f"{', '.join(ordering.ORDER_METHODS)}")
        if self.rdoq and self.quantizer != "uniform":
            raise InputError("rdoq applies to uniform quantization only")
        if self.quantizer not in QUANTIZERS:
            raise InputError(f"unknown quantizer {self.quantizer!r}; valid quantizers are "
                             f"{', '.join(QUANTIZERS)}")
        if self.max_candidates < 1:
            raise InputError(f"max_candidates must be at least 1, found {self.max_candidates}")


def matches_pattern(name, pattern):
    """Return whether a tensor name matches a glob pattern or, failing that, a regular expression.

    A pattern equal to the name always matches, even where it contains characters special to
    globs. A glob must match the whole name; so must a regular expression
    (``re.fullmatch``). A pattern that is not a valid regular expression is used as a
    glob only.
    """
    if name == pattern or fnmatch.fnmatchcase(name, pattern):
        return True
    try:
        with warnings.catch_warnings():
            # Patterns such as "[[]" are valid globs but make re warn about nested sets.
            warnings.simplefilter("ignore", FutureWarning)
            return re.fullmatch(pattern, name) is not None
    except re.error:
        return False


def is_kept(name, options):
    """Return whether the tensor ``name`` matches one of the options' keep patterns."""
    return any(matches_pattern(name, pattern) for pattern in options.keep)


def _raw_record(info, tensor):
    record = container.TensorRecord(info.name, info.dtype, tuple(info.shape), container.MODE_RAW)
    return record, dtypes.tensor_to_bytes(tensor)


def _mode_header_bytes(record):
    """Return the bytes a record's frame fields take in the header."""
    writer = container._Writer()
    writer.index_list(record.refs)
    writer.varint(record.pred_gain)
    return len(writer.out)


class FrameHistory:
    """Reconstructions of the most recent frames of each kernel shape, for reference."""

    def __init__(self, window=FULL_SEARCH_WINDOW):
        self.window = window
        self._by_kernel = {}
        self._search_indexes = {}

    def references(self, kernel_shape):
        """Return [(record index, reconstruction (O, I, K))], most recent first."""
        return list(reversed(self._by_kernel.get(kernel_shape, [])))

    def search_index(self, index, reconstruction):
        """Return the block-matching index of a reference, built on first use."""
        if index not in self._search_indexes:
            blocks = reconstruction.reshape(-1, reconstruction.shape[2])
            self._search_indexes[index] = prediction.search_index(blocks)
        return self._search_indexes[index]

    def add(self, kernel_shape, index, reconstruction):
        frames_of_shape = self._by_kernel.setdefault(kernel_shape, [])
        frames_of_shape.append((index, reconstruction))
        for dropped, _ in frames_of_shape[:-self.window]:
            self._search_indexes.pop(dropped, None)
        del frames_of_shape[:-self.window]


def _mode_refs(frame_mode, available):
    """Return the [(record index, reconstruction)] that a frame mode predicts from."""
    if frame_mode in (FRAME_INTRA, FRAME_TRANSFORM):
        return []
    if frame_mode == FRAME_FULL:
        return available[:FULL_SEARCH_WINDOW]
    return available[:1]


def _search_index(frame_mode, available, history):
    """Return the cached block-matching index of an adjacent frame's reference, else None."""
    if frame_mode != FRAME_ADJACENT:
        return None
    index, recon = available[0]
    return history.search_index(index, recon)


def _estimated_modes(blocks, step, inter_modes, available, options, history):
    """Return the inter modes whose estimated gain exceeds MIN_ESTIMATED_GAIN of intra's bits."""
    refs = available[:FULL_SEARCH_WINDOW]
    indexes = []
    if FRAME_ADJACENT in inter_modes or FRAME_FULL in inter_modes:
        indexes = [history.search_index(index, recon) for index, recon in refs]
    gains, intra_bits = mode_estimate.estimate_gains(blocks, step, inter_modes,
                                                     [recon for _, recon in refs], indexes,
                                                     options.max_candidates)
    return [mode for mode in inter_modes if gains[mode] > MIN_ESTIMATED_GAIN * intra_bits]


class _RowSample:
    """Every TRIAL_ROW_STRIDE-th row of a frame, each frame mode coded on it at most once.

    Collocated prediction takes the same rows of its reference, so that a sampled
    block keeps its collocated block; adjacent and full search whole references.
    """

    def __init__(self, blocks, step, kernel, available, options, history):
        self.blocks = np.ascontiguousarray(blocks[::TRIAL_ROW_STRIDE])
        self.step = step
        self.kernel = kernel
        self.available = available
        self.options = options
        self.history = history
        self.sizes = {}

    def size(self, frame_mode):
        """Return the payload bytes of the sampled rows coded in ``frame_mode``."""
        if frame_mode not in self.sizes:
            refs = [recon for _, recon in _mode_refs(frame_mode, self.available)]
            if frame_mode == FRAME_COLLOCATED:
                refs = [refs[0][::TRIAL_ROW_STRIDE]]
            options = self.options
            result = frame_coder.encode_frame(
                self.blocks, self.step, frame_mode, refs, options.max_candidates,
                RDOQ_LAMBDA if options.rdoq else 0.0, QUANTIZERS.index(options.quantizer),
                kernel_shape=self.kernel,
                search=_search_index(frame_mode, self.available, self.history))
            self.sizes[frame_mode] = len(result.payload)
        return self.sizes[frame_mode]


def _trial_modes(sample, inter_modes):
    """Return the inter modes that code the sampled rows smaller than intra does."""
    return [mode for mode in inter_modes if sample.size(mode) < sample.size(FRAME_INTRA)]


def _intra_modes(blocks, sample):
    """Return the intra frame modes to code in full: intra, transform, or both.

    In a frame of at least TRIAL_MIN_ROWS rows, both are coded on the sampled rows and
    only the smaller is kept, with a tie keeping intra. That costs about a quarter of a
    full encode. Smaller frames keep both.
    """
    if blocks.shape[0] < TRIAL_MIN_ROWS:
        return (FRAME_INTRA, FRAME_TRANSFORM)
    if sample.size(FRAME_TRANSFORM) < sample.size(FRAME_INTRA):
        return (FRAME_TRANSFORM,)
    return (FRAME_INTRA,)


def _promising_modes(blocks, step, candidates, available, options, history, sample=None):
    """Return the candidate frame modes worth coding in full: intra and promising inter modes.

    An inter mode is promising when :func:`mode_estimate.estimate_gains` expects it to
    save more than MIN_ESTIMATED_GAIN of the intra bits. In a frame of at least
    TRIAL_MIN_ROWS rows, it must also code a sample of the rows smaller than intra
    (:func:`_trial_modes`). ``sample`` is that :class:`_RowSample`, which a caller may
    share to reuse its coded sizes. Where collocated is promising, adjacent and full are too.
    The estimate costs a few passes over the frame and the trial about
    1 / TRIAL_ROW_STRIDE of coding the frame in full.
    """
    if sample is None:
        sample = _RowSample(blocks, step, None, available, options, history)
    inter_modes = [mode for mode in candidates if mode != FRAME_INTRA]
    promising = []
    if inter_modes:
        promising = _estimated_modes(blocks, step, inter_modes, available, options, history)
    if promising and blocks.shape[0] >= TRIAL_MIN_ROWS:
        promising = _trial_modes(sample, promising)
    if FRAME_COLLOCATED in promising:
        # The predicted reference of adjacent and full frames starts at the collocated
        # block and follows the row, so where collocated prediction pays they may pay a
        # little more.
        promising = [mode for mode in inter_modes
                     if mode in promising or mode in (FRAME_ADJACENT, FRAME_FULL)]
    return (FRAME_INTRA, *promising)


def _encode_frame(info, values, qp, options, history, pool=None):
    """Code a frame in the frame modes the options and its references allow; keep the smallest.

    With a thread ``pool`` the candidate modes are coded in parallel. The choice is the
    same, because candidates are compared in a fixed order and a tie keeps the first.
    """
    shape = tuple(info.shape)
    step = quantization.qp_to_step(qp)
    blocks = values.reshape(shape[0], shape[1], -1)
    kernel = ordering.kernel_shape(shape)
    available = history.references(kernel)
    candidates = _FRAME_MODES[options.mode] if available else (FRAME_INTRA,)
    sample = _RowSample(blocks, step, kernel, available, options, history)
    if len(candidates) > 1:
        candidates = _promising_modes(blocks, step, candidates, available, options, history,
                                      sample)
    # 8-bit floats are left out: rounding a transform frame's weights to their coarse grid
    # would add up to a spacing to every weight and undo most of what the transform saves.
    if FRAME_INTRA in candidates and options.transform and transform.is_eligible(kernel) \
            and dtypes.dtype_by_name(info.dtype).itemsize >= 2 \
            and frame_coder.transform_fits(blocks, step):
        candidates = _intra_modes(blocks, sample) + tuple(candidates[1:])
    quantizer = QUANTIZERS.index(options.quantizer)

    def code(frame_mode):
        refs = _mode_refs(frame_mode, available)
        result = frame_coder.encode_frame(blocks, step, frame_mode, [r for _, r in refs],
                                          options.max_candidates,
                                          RDOQ_LAMBDA if options.rdoq else 0.0, quantizer,
                                          kernel_shape=kernel,
                                          search=_search_index(frame_mode, available, history))
        record = container.TensorRecord(info.name, info.dtype, shape, container.MODE_QUANTIZED,
                                        qp=qp, quantizer=quantizer, frame_mode=frame_mode,
                                        refs=tuple(index for index, _ in refs),
                                        pred_gain=result.gain_num)
        return record, result

    if pool is not None and len(candidates) > 1:
        outcomes = [future.result() for future in [pool.submit(code, m) for m in candidates]]
    else:
        outcomes = [code(m) for m in candidates]
    best = None
    for record, result in outcomes:
        size = len(result.payload) + _mode_header_bytes(record)
        logger.debug("tensor %r: %s frame, %d bytes", info.name,
                     frame_coder.FRAME_MODE_NAMES[record.frame_mode], size)
        if best is None or size < best[0]:
            best = (size, record, result)
    _, record, result = best
    return record, result.payload, result.reconstruction


def encode_tensor(info, tensor, options, history=None, pool=None):
    """Return ``(record, payload, reconstruction)`` for one tensor.

    ``reconstruction`` is the decoded frame (O, I, K) as float64 values of the tensor's
    dtype, for frames; None otherwise. Payload offset and checksum are left unset.
    ``pool`` (a thread pool) lets the candidate frame modes of auto run in parallel.
    """
    kind = dtypes.dtype_by_name(info.dtype).kind
    shape = tuple(info.shape)
    if is_kept(info.name, options):
        return (*_raw_record(info, tensor), None)
    if tensor.numel() == 0:
        mode = container.MODE_QUANTIZED if kind == "float" else container.MODE_INTEGER
        qp = 0
        if kind == "float":
            qp = options.tensor_qp(info.name, shape)
        return container.TensorRecord(info.name, info.dtype, shape, mode, qp=qp), b"", None

    geometry = frames.frame_geometry(shape)
    if kind == "float":
        values = dtypes.tensor_to_float64(tensor)
        if not np.isfinite(values).all():
            logger.warning("tensor %r contains NaN or Inf; storing it bit-exact instead of "
                           "quantizing it", info.name)
            return (*_raw_record(info, tensor), None)
        qp = options.tensor_qp(info.name, shape)
        step = quantization.qp_to_step(qp)
        if np.abs(values).max() / step >= residual_coding.MAX_LEVEL:
            logger.info("tensor %r has values too large for qp %d; storing it bit-exact",
                        info.name, qp)
            return (*_raw_record(info, tensor), None)
        if len(shape) >= 2:
            record, payload, recon = _encode_frame(info, values, qp, options,
                                                   history or FrameHistory(), pool)
            rounded = dtypes.reconstruction_to_tensor(recon.reshape(shape), info.dtype, shape)
            recon = dtypes.tensor_to_float64(rounded).reshape(recon.shape)
            return record, payload, recon
        levels = quantization.quantize(values.reshape(geometry.rows, geometry.row_length), step)
        payload = residual_coding.encode_levels(levels, geometry.block_size)
        record = container.TensorRecord(info.name, info.dtype, shape,
                                        container.MODE_QUANTIZED, qp=qp)
        return record, payload, None

    values = dtypes.tensor_to_int64(tensor)
    # Compare min and max: np.abs(-2**63) overflows and stays negative.
    if values is None or values.min() < -residual_coding.MAX_LEVEL \
            or values.max() > residual_coding.MAX_LEVEL:
        return (*_raw_record(info, tensor), None)
    levels = values.reshape(geometry.rows, geometry.row_length)
    payload = residual_coding.encode_levels(levels, geometry.block_size)
    record = container.TensorRecord(info.name, info.dtype, shape, container.MODE_INTEGER)
    return record, payload, None


def _warn_unmatched_patterns(infos, options):
    """Log a warning for every keep or qp pattern that matches no tensor name (a likely typo)."""
    patterns = [("--keep", pattern) for pattern in options.keep]
    patterns += [("--qp-for", pattern) for pattern, _ in options.qp_for]
    for option, pattern in patterns:
        if not any(matches_pattern(info.name, pattern) for info in infos):
            logger.warning("%s pattern %r matches no tensor name", option, pattern)


def _check_container_limits(src, infos, metadata):
    """Raise InputError for names, metadata or shapes that a .wbs file cannot hold."""
    strings = [info.name for info in infos]
    if metadata:
        strings += list(metadata) + list(metadata.values())
    for text in strings:
        if len(text.encode("utf-8")) > container.MAX_NAME_BYTES:
            raise InputError(f"{src}: name or metadata string {text[:40]!r}... is longer than "
                             f"the {container.MAX_NAME_BYTES} bytes a .wbs file holds")
    for info in infos:
        if len(info.shape) > container.MAX_NDIM:
            raise InputError(f"{src}: tensor {info.name!r} has {len(info.shape)} dimensions; a "
                             f".wbs file holds at most {container.MAX_NDIM}")


def _find_aliases(reader, infos, coding_order, options):
    """Return {index: earlier index} for tensors equal in dtype, shape and bytes to an earlier one.

    Kept tensors alias only kept tensors, so that an alias is always bit-exact.
    """
    aliases = {}
    seen = {}
    for index in coding_order:
        info = infos[index]
        raw = dtypes.tensor_byte_view(reader.read(info.name, copy=False))
        key = (info.dtype, tuple(info.shape), is_kept(info.name, options),
               hashlib.sha256(raw).digest())
        if key in seen:
            aliases[index] = seen[key]
        else:
            seen[key] = index
    return aliases


def _coding_tasks(infos, coding_order, aliases, options):
    """Split the tensors to code into tasks that may run in parallel, each a list of indexes.

    Frames that may predict one another (same kernel shape) share a task and run in coding
    order, because each needs the reconstructions of those before it. With the intra mode
    no frame references another, so every tensor is a task of its own.
    """
    tasks = []
    chains = {}
    for index in coding_order:
        if index in aliases:
            continue
        info = infos[index]
        if options.mode != "intra" and ordering.is_frame(info):
            kernel = ordering.kernel_shape(info.shape)
            if kernel not in chains:
                chains[kernel] = []
                tasks.append(chains[kernel])
            chains[kernel].append(index)
        else:
            tasks.append([index])
    return tasks


def encode_file(src, dst, *, qp=quantization.DEFAULT_QP, keep=(), mode=DEFAULT_MODE,
                order=ordering.DEFAULT_ORDER, max_candidates=prediction.DEFAULT_MAX_CANDIDATES,
                quantizer="uniform", rdoq=False, qp_for=(), qp_map=None, transform=True,
                jobs=None, force=False, progress=None):
    """Encode the safetensors file ``src`` into the ``.wbs`` file ``dst``; return the header.

    ``qp_for`` lists (pattern, qp) overrides, the first match winning; ``qp_map`` maps exact
    tensor names to qp and wins over both (rate control uses it). ``jobs`` worker threads
    code independent tensors in parallel (default: every core available); the output is
    the same for every ``jobs``. ``progress``, when given, is
    called with the tensor name after each tensor. Raises InputError for unreadable
    input, invalid options, or an output that may not be written.
    """
    options = EncodeOptions(qp=int(qp), keep=tuple(keep), mode=mode, order=order,
                            max_candidates=int(max_candidates), quantizer=quantizer,
                            rdoq=bool(rdoq), qp_for=tuple((p, int(q)) for p, q in qp_for),
                            qp_map=tuple(sorted((qp_map or {}).items())),
                            transform=bool(transform))
    if jobs is not None:
        jobs = check_jobs(jobs)
    with SafetensorsReader(src) as reader:
        infos = reader.tensors
        jobs = check_jobs(jobs, sum(info.numel for info in infos))
        _check_container_limits(src, infos, reader.metadata)
        _warn_unmatched_patterns(infos, options)
        header = container.WbsHeader(reader.metadata)
        header.tensors = [None] * len(infos)
        read_lock = threading.Lock()

        def read(index):
            # A view of the memory map: the encoder never writes into its input, and
            # the reader stays open until every task has finished.
            with read_lock:
                return reader.read(infos[index].name, copy=False)

        with atomic_output(dst, force=force, inputs=(src,)) as tmp_path:
            coding_order = ordering.order_tensors(
                infos, options.order, load=lambda i: dtypes.tensor_to_float64(read(i)))
            aliases = _find_aliases(reader, infos, coding_order, options)
            payloads = {}
            progress_lock = threading.Lock()

            def run_task(indexes):
                history = FrameHistory()
                for index in indexes:
                    info = infos[index]
                    record, payload, recon = encode_tensor(info, read(index), options, history,
                                                           mode_pool)
                    if recon is not None:
                        history.add(ordering.kernel_shape(info.shape), index, recon)
                    header.tensors[index] = record
                    payloads[index] = payload
                    if progress is not None:
                        with progress_lock:
                            progress(info.name)

            # The candidate frame modes get a pool of their own: tasks of the main pool
            # wait for them, and waiting on one's own pool could leave no free worker.
            mode_pool = ThreadPoolExecutor(max_workers=jobs) if jobs > 1 else None
            tasks = _coding_tasks(infos, coding_order, aliases, options)
            # Long chains first, so that one late chain does not leave the other workers idle.
            tasks.sort(key=len, reverse=True)
            try:
                if jobs == 1 or len(tasks) <= 1:
                    for task in tasks:
                        run_task(task)
                else:
                    with ThreadPoolExecutor(max_workers=jobs) as pool:
                        for future in [pool.submit(run_task, task) for task in tasks]:
                            future.result()
            finally:
                if mode_pool is not None:
                    mode_pool.shutdown()
            for index, source in aliases.items():
                info = infos[index]
                header.tensors[index] = container.TensorRecord(
                    info.name, info.dtype, tuple(info.shape), container.MODE_ALIAS,
                    alias_of=source)
                payloads[index] = b""
                if progress is not None:
                    progress(info.name)
            with open(tmp_path, "wb") as stream:
                container.write_container(stream, header,
                                          [(index, payloads[index]) for index in coding_order])
    return header

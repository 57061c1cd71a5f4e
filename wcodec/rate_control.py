"""Rate control: encode to a target bits per weight or a target SQNR instead of a qp.

Both targets are met by searching the quantization parameter, first one qp for every
frame (floating tensor with two or more dimensions), then a mix of two neighbouring
qps: the frames, largest first, move one by one to the coarser qp (for a rate target)
or to the finer qp (for a quality target) until the target is crossed. A single integer
qp changes the rate by about a quarter bit per weight, so the mix is what lands within
a few percent. Its granularity is the share of the largest frame in the model, so where
that is too coarse, up to REFINE_ROUNDS more rounds move the smallest frames one more qp
towards the target, again bisecting on how many move.

Each trial is a full encode to a temporary file (and, for SQNR, a decode), so rate
control costs ten to twenty encodes. Tensors with fewer than two dimensions keep the step
64 times finer than the base qp, as in a plain encode.

Definitions: bits per weight = 8 * file size / number of elements of all tensors; SQNR
= 10 log10(sum of squared weights / sum of squared errors) over the floating tensors
with at least two dimensions.
"""

import logging
import os
import tempfile
from dataclasses import dataclass, field

import numpy as np

from wcodec.codec import ordering, quantization
from wcodec.decoder import load
from wcodec.encoder import encode_file, matches_pattern
from wcodec.errors import InputError
from wcodec.formats import dtypes
from wcodec.formats.atomic import atomic_output
from wcodec.formats.safetensors_io import SafetensorsReader

logger = logging.getLogger(__name__)

BPW_TOLERANCE = 0.02  # relative
SQNR_TOLERANCE_DB = 0.2
REFINE_ROUNDS = 2
SEARCH_QP_MIN = -80
SEARCH_QP_MAX = 32


@dataclass
class RateControlResult:
    """The outcome of rate control: the header written, what it reached and the qps chosen."""

    header: object
    bits_per_weight: float
    sqnr_db: float | None
    qp_per_tensor: dict = field(default_factory=dict)
    trials: int = 0


class _Evaluator:
    """Encodes trials into a scratch folder and measures them."""

    def __init__(self, src, options, need_sqnr):
        self.src = src
        self.options = options
        self.trials = 0
        self.scratch = tempfile.TemporaryDirectory(prefix="wcodec-rate-")
        with SafetensorsReader(src) as reader:
            self.infos = reader.tensors
            self.weights = sum(info.numel for info in self.infos)
            keep = tuple(options.get("keep", ()))
            self.frames = [info for info in self.infos if ordering.is_frame(info)
                           and not any(matches_pattern(info.name, p) for p in keep)]
            self.originals = {}
            if need_sqnr:
                for info in self.frames:
                    values = dtypes.tensor_to_float64(reader.read(info.name))
                    # A frame with NaN or Inf is stored bit-exact and has no quantization error.
                    if np.isfinite(values).all():
                        self.originals[info.name] = values
        self.signal = sum(float(np.square(v).sum()) for v in self.originals.values())

    def measure(self, base_qp, qp_map):
        """Encode with ``qp_map`` (name -> qp) over ``base_qp``; return (bpw, sqnr, path)."""
        self.trials += 1
        path = os.path.join(self.scratch.name, f"trial{self.trials}.wbs")
        header = encode_file(self.src, path, qp=base_qp, qp_map=qp_map, force=True,
                             **self.options)
        bpw = 8 * os.path.getsize(path) / self.weights if self.weights else 0.0
        sqnr = None
        if self.originals:
            decoded = load(path)
            error = 0.0
            for name, original in self.originals.items():
                restored = dtypes.tensor_to_float64(decoded[name])
                error += float(np.square(original - restored).sum())
            sqnr = float("inf") if error == 0 else 10 * np.log10(self.signal / error)
        logger.info("trial %d: base qp %d, %d overrides: %.4f bpw, SQNR %s", self.trials,
                    base_qp, len(qp_map), bpw, "-" if sqnr is None else f"{sqnr:.2f} dB")
        return bpw, sqnr, path, header

    def close(self):
        self.scratch.cleanup()


class _FirstOccurrence(logging.Filter):
    """Logging filter that passes each message once, so repeated trial encodes warn once."""

    def __init__(self):
        super().__init__()
        self.seen = set()

    def filter(self, record):
        message = record.getMessage()
        if message in self.seen:
            return False
        self.seen.add(message)
        return True


def _uniform_map(frames, qp):
    return {info.name: qp for info in frames}


def encode_to_target(src, dst, *, bpw=None, sqnr=None, force=False, **options):
    """Encode ``src`` into ``dst`` at a target ``bpw`` or ``sqnr`` (dB); return the result.

    ``options`` are further keywords of :func:`wcodec.encode_file` except ``qp``.
    Raises InputError when neither or both targets are given, or when the target lies
    outside what qp in [SEARCH_QP_MIN, SEARCH_QP_MAX] reaches.
    """
    if (bpw is None) == (sqnr is None):
        raise InputError("give exactly one of a bits-per-weight target and an SQNR target")
    if bpw is not None and not bpw > 0:
        raise InputError(f"bits per weight target must be positive, found {bpw}")
    if "qp" in options:
        raise InputError("a rate target replaces qp; do not pass both")
    encoder_logger = logging.getLogger("wcodec.encoder")
    once = _FirstOccurrence()
    encoder_logger.addFilter(once)
    try:
        with atomic_output(dst, force=force, inputs=(src,)) as tmp_path:
            evaluator = _Evaluator(src, options, need_sqnr=sqnr is not None)
            try:
                result = _search(evaluator, bpw, sqnr)
                os.replace(result.pop("path"), tmp_path)
            finally:
                evaluator.close()
    finally:
        encoder_logger.removeFilter(once)
    return RateControlResult(result["header"], result["bpw"], result["sqnr"],
                             result["qp_map"], evaluator.trials)


def _describe(value, bpw_target):
    """Return a rate or quality value with its unit, for messages."""
    if bpw_target is not None:
        return f"{value:.3f} bits per weight"
    return f"SQNR {value:.2f} dB"


def _value(measured, bpw_target):
    """Return the measured quantity that the target constrains."""
    bpw, sqnr = measured[0], measured[1]
    return bpw if bpw_target is not None else sqnr


def _boundary(low, high, is_above):
    """Return adjacent (low, high) by bisection, given is_above(low) true, is_above(high) false."""
    while high - low > 1:
        middle = (low + high) // 2
        if is_above(middle):
            low = middle
        else:
            high = middle
    return low, high


def _search(evaluator, bpw_target, sqnr_target):
    frames = evaluator.frames
    if not frames:
        raise InputError("rate control needs at least one floating tensor with two or more "
                         "dimensions that no --keep pattern matches")
    if sqnr_target is not None and not evaluator.originals:
        raise InputError("SQNR rate control needs at least one floating tensor with two or "
                         "more dimensions and only finite values; every candidate holds NaN "
                         "or Inf and is stored bit-exact")
    target = bpw_target if bpw_target is not None else sqnr_target
    cache = {}

    def at(qp):
        if qp not in cache:
            cache[qp] = evaluator.measure(qp, _uniform_map(frames, qp))
        return cache[qp]

    def above(measured):
        return _value(measured, bpw_target) > target

    # Both measures fall as qp rises, so one bisection serves both targets: the finest
    # qp must give a value above the target and the coarsest one not.
    low, high = SEARCH_QP_MIN, SEARCH_QP_MAX
    if not above(at(low)):
        raise InputError(f"{_describe(target, bpw_target)} is above what qp {low} reaches "
                         f"({_describe(_value(at(low), bpw_target), bpw_target)})")
    if above(at(high)):
        raise InputError(f"{_describe(target, bpw_target)} is below what qp {high} reaches "
                         f"({_describe(_value(at(high), bpw_target), bpw_target)})")
    # fine gives a value above the target, coarse one at or below it.
    fine, coarse = _boundary(low, high, lambda qp: above(at(qp)))

    # Mix the two qps: move the largest frames first, so that few moves span the gap,
    # and bisect on how many move.
    by_size = sorted(frames, key=lambda info: (-info.numel, info.name))

    def mixed(count):
        qp_map = _uniform_map(frames, fine)
        for info in by_size[:count]:
            qp_map[info.name] = coarse
        return qp_map

    mix_cache = {0: at(fine)}

    def mixed_at(count):
        if count not in mix_cache:
            mix_cache[count] = evaluator.measure(fine, mixed(count))
        return mix_cache[count]

    # mixed_at(count) falls as count grows, because more frames sit at the coarse qp.
    # Find the boundary between counts above the target and counts at or below it.
    over, under = _boundary(0, len(by_size), lambda count: above(mixed_at(count)))
    # Keep whichever of the two neighbours lies closer to the target.
    best = min((over, under),
               key=lambda c: abs(_value(mixed_at(c), bpw_target) - target) / abs(target))
    qp_map, measured = mixed(best), mixed_at(best)
    for _ in range(REFINE_ROUNDS):
        if _within_tolerance(measured, bpw_target, sqnr_target):
            break
        qp_map, measured = _refine(evaluator, fine, frames, qp_map, measured, bpw_target,
                                   sqnr_target)
    if not _within_tolerance(measured, bpw_target, sqnr_target):
        logger.warning("rate control reached %.4g for a target of %.4g: the frames are too few "
                       "or too unequal in size for a finer split", _value(measured, bpw_target),
                       target)
    return _result(measured, qp_map)


def _within_tolerance(measured, bpw_target, sqnr_target):
    if bpw_target is not None:
        return abs(measured[0] - bpw_target) <= BPW_TOLERANCE * bpw_target
    return abs(measured[1] - sqnr_target) <= SQNR_TOLERANCE_DB


def _refine(evaluator, base_qp, frames, qp_map, measured, bpw_target, sqnr_target):
    """Move the smallest frames one qp further towards the target; return (qp_map, measured).

    Smallest first makes each move a small change, so the bisection on how many frames
    move can land between the coarse steps of the first mix.
    """
    target = bpw_target if bpw_target is not None else sqnr_target
    too_high = _value(measured, bpw_target) > target
    # More bits or more SQNR than wanted: coarser (+1); otherwise finer (-1).
    direction = 1 if too_high else -1
    by_size = sorted(frames, key=lambda info: (info.numel, info.name))
    cache = {0: measured}

    def moved(count):
        result = dict(qp_map)
        for info in by_size[:count]:
            result[info.name] = int(np.clip(result[info.name] + direction,
                                            quantization.QP_MIN, quantization.QP_MAX))
        return result

    def at(count):
        if count not in cache:
            cache[count] = evaluator.measure(base_qp, moved(count))
        return cache[count]

    def crossed(count):
        return (_value(at(count), bpw_target) > target) != too_high

    if not crossed(len(by_size)):
        return moved(len(by_size)), at(len(by_size))
    low, high = _boundary(0, len(by_size), lambda count: not crossed(count))
    best = min((low, high), key=lambda c: abs(_value(at(c), bpw_target) - target))
    return moved(best), at(best)


def _result(measured, qp_map):
    bpw, sqnr, path, header = measured
    return {"bpw": bpw, "sqnr": sqnr, "path": path, "header": header,
            "qp_map": dict(qp_map)}

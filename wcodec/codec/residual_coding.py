"""Residual coding: binarization and context modelling of quantized levels.

A frame of levels is an ``int64`` array of shape (O, R): one row per output channel, and
R = I * K positions in a row, where K is the number of weights in one block (kernel).
Position p of a row belongs to block i = p // K. Rows are coded top to bottom, positions
left to right. Blocks whose flag in ``block_coded`` is zero are not coded at all: the
decoder leaves their levels at zero and they count as zero neighbours.

Context selection uses the local activity of already coded levels,

    s = 2*|left| + |left2| + |up| + |prev|

where ``left`` and ``left2`` are the previous two positions in the row, ``up`` is the same
position in the row above (the previous output channel), and ``prev`` is the same position
in the previous block of the row (for K = 1, where the previous block is ``left``, the
position above and to the right instead). The activity class is c = 0 for s = 0 and
min(bit_length(s), 15) otherwise.

Where c > 0 (regular mode) each level is coded as

- ``sig``: level != 0, context by c;
- ``sign``: context by the signs of ``left`` and ``up``;
- the magnitude m = |level| - 1, split into a quotient q = m >> k and k low bits, with the
  Rice parameter k = max(0, c - 4) tied to the activity: q as unary ``gt`` bins (q > t for
  t < 6, context by c and t) and an Exp-Golomb escape for q - 6 (prefix bins context-coded,
  suffix bypass); the two most significant low bits context-coded, the rest bypass.

Where c = 0 (all neighbours zero) the coder switches to run mode, as JPEG-LS does in flat
image regions, and codes the zero run instead of one ``sig`` bin per position (see
:mod:`wcodec.codec.runlength`). A run either reaches the end of the row, or stops at a
nonzero level, whose sign and magnitude follow with the context of its own activity.
An all-zero row therefore costs one context-coded bin when the run starts at its first
position.

``docs/bitstream.md`` specifies the same syntax in prose; the context index layout is the
``CTX_*`` constants below, and any change to it is a new bitstream version.
"""

import numpy as np
from numba import njit

from wcodec.codec import cabac
from wcodec.codec.cabac import (COST_BITS, DECODE, MODE, PEEK, bin_t, bypass_bits_t, fail_t,
                                load_state, store_state)
from wcodec.codec.quantization import DQ_TRANSITIONS
from wcodec.codec.runlength import RUN_CONTEXTS, zero_run_t

N_CLASSES = 16
N_GT = 6  # unary part of the quotient
RICE_OFFSET = 4  # k = max(0, c - RICE_OFFSET)
N_ESCAPE_GROUPS = 4
N_ESCAPE_PREFIX = 24
MAX_ESCAPE_PREFIX = 52  # longer Exp-Golomb prefixes can only come from a damaged stream
MAX_LEVEL = 1 << 50  # largest |level| the encoder accepts

N_QUANTIZERS = 2  # sig and gt contexts come in one set per quantizer of dependent quantization

CTX_SIG = 0
CTX_SIGN = CTX_SIG + N_QUANTIZERS * N_CLASSES
CTX_GT = CTX_SIGN + 9
CTX_ESCAPE = CTX_GT + N_QUANTIZERS * N_CLASSES * N_GT
CTX_LOW = CTX_ESCAPE + N_ESCAPE_GROUPS * N_ESCAPE_PREFIX
CTX_RUN = CTX_LOW + N_CLASSES * 3
N_CONTEXTS = CTX_RUN + RUN_CONTEXTS

_ACTIVITY_CAP = 1 << 20


@njit(cache=True, nogil=True)
def _bit_length(x):
    n = 0
    while x > 0:
        x >>= 1
        n += 1
    return n


@njit(cache=True, nogil=True)
def _sign(x):
    if x > 0:
        return 1
    if x < 0:
        return -1
    return 0


@njit(cache=True, nogil=True)
def class_of_activity(left, left2, up, prev):
    """Return the activity class of a position from the magnitudes of its four neighbours."""
    s = (2 * min(left, _ACTIVITY_CAP) + min(left2, _ACTIVITY_CAP)
         + min(up, _ACTIVITY_CAP) + min(prev, _ACTIVITY_CAP))
    if s == 0:
        return 0
    return min(_bit_length(s), N_CLASSES - 1)


@njit(cache=True, nogil=True)
def activity_class(levels, o, p, K):
    """Return the activity class of position (o, p) of a frame of levels with blocks of K."""
    R = levels.shape[1]
    left = abs(levels[o, p - 1]) if p >= 1 else 0
    left2 = abs(levels[o, p - 2]) if p >= 2 else 0
    up = abs(levels[o - 1, p]) if o >= 1 else 0
    if K > 1:
        prev = abs(levels[o, p - K]) if p >= K else 0
    else:
        prev = abs(levels[o - 1, p + 1]) if (o >= 1 and p + 1 < R) else 0
    return class_of_activity(left, left2, up, prev)


@njit(cache=True, nogil=True)
def _exp_golomb_t(st, mode, buf, probs, shifts, ctx_base, value):
    """Code ``value`` >= 0 as order-0 Exp-Golomb with context-coded prefix; return (value, state)."""
    prefix = 0
    while True:
        ctx = ctx_base + min(prefix, N_ESCAPE_PREFIX - 1)
        more, st = bin_t(st, mode, buf, probs, shifts, ctx,
                         1 if value >= (np.int64(2) << prefix) - 1 else 0)
        if more == 0:
            break
        prefix += 1
        if prefix > MAX_ESCAPE_PREFIX:
            return np.int64(0), fail_t(st)  # no valid stream has a prefix this long
    base = (np.int64(1) << prefix) - 1
    suffix, st = bypass_bits_t(st, mode, buf, value - base, prefix)
    return base + suffix, st


@njit(cache=True, nogil=True)
def _level_value_t(st, mode, buf, probs, shifts, levels, o, p, c, quantizer, level):
    """Code sign and magnitude of a nonzero level at (o, p) in activity class c.

    ``quantizer`` is the quantizer (0 or 1) of dependent quantization, 0 for uniform
    quantization. Returns (level, state).
    """
    left = levels[o, p - 1] if p >= 1 else 0
    up = levels[o - 1, p] if o >= 1 else 0
    sign_ctx = CTX_SIGN + 3 * (_sign(left) + 1) + _sign(up) + 1
    negative, st = bin_t(st, mode, buf, probs, shifts, sign_ctx, 1 if level < 0 else 0)

    m = abs(level) - 1
    k = max(0, c - RICE_OFFSET)
    wanted = m >> k
    quotient = np.int64(0)
    gt_base = CTX_GT + (quantizer * N_CLASSES + c) * N_GT
    while quotient < N_GT:
        greater, st = bin_t(st, mode, buf, probs, shifts, gt_base + quotient,
                            1 if wanted > quotient else 0)
        if greater == 0:
            break
        quotient += 1
    if quotient == N_GT:
        group = min(c * N_ESCAPE_GROUPS // N_CLASSES, N_ESCAPE_GROUPS - 1)
        escape, st = _exp_golomb_t(st, mode, buf, probs, shifts,
                                   CTX_ESCAPE + group * N_ESCAPE_PREFIX, wanted - N_GT)
        quotient += escape

    low = np.int64(0)
    if k > 0:
        low_ctx = CTX_LOW + 3 * c
        top, st = bin_t(st, mode, buf, probs, shifts, low_ctx, (m >> (k - 1)) & 1)
        low = np.int64(top) << (k - 1)
        if k > 1:
            second, st = bin_t(st, mode, buf, probs, shifts, low_ctx + 1 + top,
                               (m >> (k - 2)) & 1)
            low |= np.int64(second) << (k - 2)
            rest, st = bypass_bits_t(st, mode, buf, m, k - 2)
            low |= rest
    # A damaged stream can decode a quotient whose shift overflows int64. Clamped, it
    # still exceeds MAX_LEVEL below, and no valid quotient changes.
    quotient = min(quotient, MAX_LEVEL >> k)
    magnitude = (quotient << k) + low + 1
    if magnitude > MAX_LEVEL:
        st = fail_t(st)
        magnitude = 1
    return (-magnitude if negative else magnitude), st


@njit(cache=True, nogil=True)
def _rdo_level(st, probs, shifts, levels, o, p, c, target, lam, allow_zero):
    """Return the level near ``target`` (in units of the step) with the least D + lam * R.

    D = (target - level)**2 and R is the bits the level costs with the current context
    states, priced in PEEK mode, which changes neither the contexts nor ``st``. The
    candidates are the rounded level already in ``levels``, the level one step closer to
    zero, and zero when ``allow_zero``.
    """
    rounded = levels[o, p]
    best = rounded
    best_j = np.inf
    no_output = np.zeros(0, dtype=np.uint8)
    for n in range(3):
        if n == 0:
            candidate = rounded
        elif n == 1:
            if rounded == 0:
                continue
            candidate = rounded - 1 if rounded > 0 else rounded + 1
            if candidate == 0 and not allow_zero:
                continue
        else:
            if not allow_zero or rounded == 0 or abs(rounded) == 1:
                continue
            candidate = 0
        trial = (st[0], st[1], st[2], st[3], st[4], np.int64(0), st[6], st[7])
        if allow_zero:
            _, trial = bin_t(trial, PEEK, no_output, probs, shifts, CTX_SIG + c,
                             1 if candidate != 0 else 0)
        if candidate != 0:
            _, trial = _level_value_t(trial, PEEK, no_output, probs, shifts, levels, o, p, c, 0,
                                      candidate)
        error = target - candidate
        j = error * error + lam * (trial[5] / (1 << COST_BITS))
        if j < best_j:
            best_j = j
            best = candidate
    return best


@njit(cache=True, nogil=True)
def coded_positions(block_coded, o, K, positions):
    """Write the positions of row o that lie in coded blocks into ``positions``; return their count."""
    n = 0
    for p in range(positions.shape[0]):
        if block_coded[o, p // K]:
            positions[n] = p
            n += 1
    return n


@njit(cache=True, nogil=True)
def code_levels(coder, buf, probs, shifts, levels, K, block_coded, targets, rdo_lambda,
                dependent):
    """Code a frame of levels (O, R) with blocks of K positions.

    ENCODE and ESTIMATE read ``levels``; DECODE fills it (it must be zero on entry).
    ``block_coded`` (O, R // K, uint8) marks the blocks that are coded. With
    ``rdo_lambda`` > 0 (ENCODE and ESTIMATE only), the encoder adjusts each level by
    rate-distortion optimized quantization against ``targets`` (O, R), the unrounded
    values in units of the step, and writes the chosen levels back into ``levels``.
    With ``dependent`` true the levels are dependent-quantization levels: the coder
    follows the quantizer state machine and selects sig and gt contexts by quantizer.
    """
    mode = coder[MODE]
    st = load_state(coder)
    O = levels.shape[0]
    R = levels.shape[1]
    rdo = rdo_lambda > 0 and mode != DECODE
    positions = np.empty(R, dtype=np.int64)
    for o in range(O):
        n = coded_positions(block_coded, o, K, positions)
        state = 0
        j = 0
        while j < n:
            if st[7] != 0:
                store_state(coder, st)
                return
            p = positions[j]
            c = activity_class(levels, o, p, K)
            if c == 0:
                # Run mode: count zeros over the coded positions left in this row.
                run = 0
                if mode != DECODE:
                    while j + run < n and levels[o, positions[j + run]] == 0:
                        run += 1
                run, st = zero_run_t(st, mode, buf, probs, shifts, CTX_RUN, run, n - j, j == 0)
                j += run
                if dependent:
                    for _ in range(run):
                        state = DQ_TRANSITIONS[state, 0]
                if j >= n:
                    break
                p = positions[j]
                c = activity_class(levels, o, p, K)
                if rdo:
                    levels[o, p] = _rdo_level(st, probs, shifts, levels, o, p, c, targets[o, p],
                                              rdo_lambda, False)
                levels[o, p], st = _level_value_t(st, mode, buf, probs, shifts, levels, o, p, c,
                                                  state & 1, levels[o, p])
            else:
                if rdo:
                    levels[o, p] = _rdo_level(st, probs, shifts, levels, o, p, c, targets[o, p],
                                              rdo_lambda, True)
                quantizer = state & 1
                significant, st = bin_t(st, mode, buf, probs, shifts,
                                        CTX_SIG + quantizer * N_CLASSES + c,
                                        1 if levels[o, p] != 0 else 0)
                if significant:
                    levels[o, p], st = _level_value_t(st, mode, buf, probs, shifts, levels, o, p,
                                                      c, quantizer, levels[o, p])
            if dependent:
                state = DQ_TRANSITIONS[state, levels[o, p] & 1]
            j += 1
    store_state(coder, st)


_NO_TARGETS = np.zeros((0, 0), dtype=np.float64)


def _all_blocks(levels, K):
    return np.ones((levels.shape[0], levels.shape[1] // K), dtype=np.uint8)


def encode_levels(levels, K, block_coded=None):
    """Return the arithmetic-coded bytes of a frame of levels (O, R) with blocks of K positions."""
    levels = np.ascontiguousarray(levels, dtype=np.int64)
    if block_coded is None:
        block_coded = _all_blocks(levels, K)
    capacity = 2 * levels.size + 64
    while True:
        coder = cabac.new_coder(cabac.ENCODE)
        probs, shifts = cabac.new_contexts(N_CONTEXTS)
        buf = np.zeros(capacity, dtype=np.uint8)
        code_levels(coder, buf, probs, shifts, levels, K, block_coded, _NO_TARGETS, 0.0, False)
        length = cabac.finish_encoder(coder, buf)
        if length <= capacity:
            return buf[:length].tobytes()
        capacity = int(length) + 64


def decode_levels(data, shape, K, block_coded=None):
    """Decode a frame of levels of ``shape`` (O, R); return (levels, coder state).

    The caller checks ``coder[ERROR]`` and the bytes consumed against ``len(data)``.
    """
    # Imported here because level_decoder imports this module's constants.
    from wcodec.codec.level_decoder import decode_levels_into

    levels = np.zeros(shape, dtype=np.int64)
    if block_coded is None:
        block_coded = _all_blocks(levels, K)
    # A writable copy, so that encoder and decoder share one compiled specialization.
    buf = np.frombuffer(data, dtype=np.uint8).copy()
    coder = cabac.new_coder(cabac.DECODE)
    cabac.start_decoder(coder, buf)
    probs, _ = cabac.new_contexts(N_CONTEXTS)
    decode_levels_into(coder, buf, probs, levels, K, block_coded, False)
    return levels, coder


def estimate_bits(levels, K, block_coded=None):
    """Return the adaptive code length of a frame in bits, as ESTIMATE mode measures it."""
    levels = np.ascontiguousarray(levels, dtype=np.int64)
    if block_coded is None:
        block_coded = _all_blocks(levels, K)
    coder = cabac.new_coder(cabac.ESTIMATE)
    probs, shifts = cabac.new_contexts(N_CONTEXTS)
    buf = np.zeros(1, dtype=np.uint8)
    code_levels(coder, buf, probs, shifts, levels, K, block_coded, _NO_TARGETS, 0.0, False)
    return coder[cabac.COST] / (1 << cabac.COST_BITS)

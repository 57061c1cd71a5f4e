"""Decode-only residual coding with the arithmetic decoder's state in local variables.

:func:`decode_levels_into` decodes the syntax of :mod:`wcodec.codec.residual_coding` and
its zero runs (:mod:`wcodec.codec.runlength`). It leaves the same levels, context models
and coder state as ``residual_coding.code_levels`` in DECODE mode, and
``tests/test_cabac.py`` compares the two on random levels, real weights and garbage
payloads. The generic function serves four modes, so it checks the mode at every bin and
passes the whole coder state as a tuple through helper calls. This one keeps the code
value, range and read position in registers, which more than halves the time per bin.

The activity class reads capped magnitudes from two padded row buffers (the current row
and the one above) instead of the level frame, so it needs no bounds checks. The bit
length of the activity sum comes from a table.
"""

import numpy as np
from numba import njit

from wcodec.codec.cabac import BINS, ERROR, LOW, POS, RANGE, decode_bin, decode_bypass_bits
from wcodec.codec.quantization import DQ_TRANSITIONS
from wcodec.codec.residual_coding import (_ACTIVITY_CAP, CTX_ESCAPE, CTX_GT, CTX_LOW, CTX_RUN,
                                          CTX_SIG, CTX_SIGN, MAX_ESCAPE_PREFIX, MAX_LEVEL,
                                          N_CLASSES, N_ESCAPE_GROUPS, N_ESCAPE_PREFIX, N_GT,
                                          RICE_OFFSET, _sign, coded_positions)
from wcodec.codec.runlength import N_RUN_MSB, N_RUN_PREFIX

# Activity sums from this value up have a bit length of at least N_CLASSES - 1, so they
# are all in the top class.
_TOP_CLASS_SUM = 1 << (N_CLASSES - 2)


def _class_table():
    """Return the activity class of every activity sum below _TOP_CLASS_SUM."""
    sums = np.arange(_TOP_CLASS_SUM)
    table = np.zeros(_TOP_CLASS_SUM, dtype=np.uint8)
    table[1:] = np.floor(np.log2(sums[1:])).astype(np.uint8) + 1
    return table


_CLASS_OF_SUM = _class_table()


@njit(cache=True, nogil=True, inline="always")
def _decode_unary(buf, models, ctx_base, last_ctx, max_ones, low, rng, pos):
    """Decode 1 bins up to the first 0 bin or up to ``max_ones`` 1 bins.

    Bin i uses context ``ctx_base + min(i, last_ctx)``. Returns (number of 1 bins, bins
    read, low, range, pos).
    """
    ones = np.int64(0)
    bins = np.int64(0)
    while bins == ones and ones < max_ones:
        bit, low, rng, pos = decode_bin(buf, models, ctx_base + min(ones, last_ctx),
                                        low, rng, pos)
        bins += 1
        ones += bit
    return ones, bins, low, rng, pos


@njit(cache=True, nogil=True, inline="always")
def _activity_class(current, above, prev_row, q, prev_offset):
    """Return the activity class of the position at index q of the row buffers."""
    s = (2 * current[np.uint64(q - 1)] + current[np.uint64(q - 2)] + above[np.uint64(q)]
         + prev_row[np.uint64(q + prev_offset)])
    if s >= _TOP_CLASS_SUM:
        return np.int64(N_CLASSES - 1)
    return np.int64(_CLASS_OF_SUM[np.uint64(s)])


@njit(cache=True, nogil=True)
def decode_levels_into(coder, buf, probs, levels, K, block_coded, dependent):
    """Decode a frame of levels (O, R) with blocks of K positions into ``levels``.

    Has the effect of ``residual_coding.code_levels`` in DECODE mode with context
    models adapting at cabac.DEFAULT_RATES, the rates the bitstream fixes. ``levels``
    must be zero on entry, and ``block_coded`` (O, R // K, uint8) marks the coded
    blocks. ``dependent`` selects the contexts of dependent quantization. The coder
    state array is updated in place.
    """
    if coder[ERROR] != 0:
        return
    low = coder[LOW]
    rng = coder[RANGE]
    pos = coder[POS]
    bins = coder[BINS]
    # Only a damaged payload starts with code >= range. The generic decoder flags it at
    # the first bin and stops before the next position. decode_bin does not check it,
    # so the loop sets failed after each position instead.
    damaged = low >= rng

    # The zero-run and level syntax is written out in the loop below. As inlined helpers
    # (numba 0.68.1), each call added an atomic reference count increment and decrement
    # of buf and models, which made level decoding 10 to 20 percent slower.
    models = probs.reshape(-1)
    O = levels.shape[0]
    R = levels.shape[1]
    # min(|level|, _ACTIVITY_CAP) of position p is at index p + pad, so the neighbours
    # left of the first position and right of the last read zeros.
    pad = max(K, 2)
    current = np.zeros(R + pad + 1, dtype=np.int64)
    above = np.zeros(R + pad + 1, dtype=np.int64)
    positions = np.empty(R, dtype=np.int64)
    failed = False
    for o in range(O):
        if o > 0:
            current, above = above, current
            current[:] = 0
        # prev is the same position in the previous block, or the one above and to the
        # right for K = 1.
        prev_row = current if K > 1 else above
        prev_offset = -K if K > 1 else 1
        row = levels[o]
        row_above = levels[o - 1] if o > 0 else levels[o]
        n = coded_positions(block_coded, o, K, positions)
        state = 0
        j = 0
        while j < n:
            if failed:
                break
            p = positions[np.uint64(j)]
            q = p + pad
            c = _activity_class(current, above, prev_row, q, prev_offset)
            if c == 0:
                # Zero run over the n - j positions left (runlength.zero_run_t).
                remaining = n - j
                end, low, rng, pos = decode_bin(buf, models, CTX_RUN + (0 if j == 0 else 1),
                                                low, rng, pos)
                bins += 1
                run = remaining
                run_max = remaining - 1
                if end == 0:
                    run = np.int64(0)
                if end == 0 and run_max > 0:
                    # The exponent is the number of 1 bins of "run >= 1", "run >= 2",
                    # "run >= 4", ..., coded while the threshold does not exceed run_max.
                    max_exponent = 0
                    while (np.int64(1) << max_exponent) <= run_max:
                        max_exponent += 1
                    exponent, prefix_bins, low, rng, pos = _decode_unary(
                        buf, models, CTX_RUN + 2, N_RUN_PREFIX - 1, max_exponent, low, rng,
                        pos)
                    bins += prefix_bins
                    if exponent > 0:
                        base = np.int64(1) << (exponent - 1)
                        max_offset = min(base - 1, run_max - base)
                        offset = np.int64(0)
                        first = True
                        msb_ctx = CTX_RUN + 2 + N_RUN_PREFIX + min(exponent, N_RUN_MSB - 1)
                        for b in range(exponent - 2, -1, -1):
                            candidate = offset | (np.int64(1) << b)
                            if candidate > max_offset:
                                continue  # the bit is inferred to be 0
                            bins += 1
                            if first:
                                bit, low, rng, pos = decode_bin(buf, models, msb_ctx, low, rng,
                                                                pos)
                                first = False
                            else:
                                bit, low, rng, pos = decode_bypass_bits(buf, 1, low, rng, pos)
                            if bit:
                                offset = candidate
                        run = base + offset
                j += run
                if dependent:
                    for _ in range(run):
                        state = DQ_TRANSITIONS[state, 0]
                if j >= n:
                    failed |= damaged
                    break
                # The run ends at a nonzero level, coded in the class of its position.
                p = positions[np.uint64(j)]
                q = p + pad
                c = _activity_class(current, above, prev_row, q, prev_offset)
                significant = 1
            else:
                significant, low, rng, pos = decode_bin(
                    buf, models, CTX_SIG + (state & 1) * N_CLASSES + c, low, rng, pos)
                bins += 1
            level = np.int64(0)
            if significant:
                # Sign and magnitude (residual_coding._level_value_t).
                left = row[np.uint64(p - 1)] if p >= 1 else 0
                up = row_above[np.uint64(p)] if o >= 1 else 0
                sign_ctx = CTX_SIGN + 3 * (_sign(left) + 1) + _sign(up) + 1
                negative, low, rng, pos = decode_bin(buf, models, sign_ctx, low, rng, pos)
                bins += 1
                k = max(0, c - RICE_OFFSET)
                gt_base = CTX_GT + ((state & 1) * N_CLASSES + c) * N_GT
                quotient, gt_bins, low, rng, pos = _decode_unary(buf, models, gt_base, N_GT - 1,
                                                                 N_GT, low, rng, pos)
                bins += gt_bins
                if quotient == N_GT:
                    group = min(c * N_ESCAPE_GROUPS // N_CLASSES, N_ESCAPE_GROUPS - 1)
                    prefix, prefix_bins, low, rng, pos = _decode_unary(
                        buf, models, CTX_ESCAPE + group * N_ESCAPE_PREFIX, N_ESCAPE_PREFIX - 1,
                        MAX_ESCAPE_PREFIX + 1, low, rng, pos)
                    bins += prefix_bins
                    if prefix > MAX_ESCAPE_PREFIX:
                        failed = True
                    else:
                        bins += prefix
                        suffix, low, rng, pos = decode_bypass_bits(buf, prefix, low, rng, pos)
                        quotient += (np.int64(1) << prefix) - 1 + suffix
                low_bits = np.int64(0)
                if k > 0:
                    low_ctx = CTX_LOW + 3 * c
                    top, low, rng, pos = decode_bin(buf, models, low_ctx, low, rng, pos)
                    bins += 1
                    low_bits = top << (k - 1)
                    if k > 1:
                        second, low, rng, pos = decode_bin(buf, models, low_ctx + 1 + top,
                                                           low, rng, pos)
                        rest, low, rng, pos = decode_bypass_bits(buf, k - 2, low, rng, pos)
                        bins += k - 1
                        low_bits |= (second << (k - 2)) | rest
                quotient = min(quotient, MAX_LEVEL >> k)  # see _level_value_t
                magnitude = (quotient << k) + low_bits + 1
                if magnitude > MAX_LEVEL:
                    failed = True
                    magnitude = 1
                level = -magnitude if negative else magnitude
                row[np.uint64(p)] = level
                current[np.uint64(q)] = min(abs(level), _ACTIVITY_CAP)
            if dependent:
                state = DQ_TRANSITIONS[state, level & 1]
            j += 1
            failed |= damaged
        if failed:
            break

    coder[LOW] = low
    coder[RANGE] = rng
    coder[POS] = pos
    coder[BINS] = bins
    if failed:
        coder[ERROR] = 1

"""Zero-run-length coding: the binarization of runs of zero levels.

Residual coding enters run mode where all coded neighbours of a position are zero, and
codes the number of zero levels ``run`` that follow in the row, out of ``remaining``
coded positions left (the current one included):

1. ``end_of_row`` (context: whether the run starts the row): 1 when all ``remaining``
   levels are zero; nothing else is coded then.
2. Otherwise 0 <= run <= remaining - 1 = run_max, and the level after the run is nonzero.
   The exponent e is coded as unary bins ``run >= 1``, ``run >= 2``, ``run >= 4``, ...,
   context by bin index (capped at 15), stopping at the first 0 bin or when the next
   threshold exceeds run_max. e = 0 means run = 0; otherwise run lies in
   [2**(e-1), min(2**e - 1, run_max)].
3. For e >= 2, the offset run - 2**(e-1) follows in e - 1 bits, most significant first.
   A bit that would push the offset past run_max - 2**(e-1) is inferred to be 0 and not
   coded. The first coded bit uses a context indexed by e (capped at 15); the others are
   bypass bins.
"""

import numpy as np
from numba import njit

from wcodec.codec.cabac import bin_t, bypass_t

N_RUN_PREFIX = 16
N_RUN_MSB = 16
RUN_CONTEXTS = 2 + N_RUN_PREFIX + N_RUN_MSB


@njit(cache=True, nogil=True)
def zero_run_t(st, mode, buf, probs, shifts, ctx_base, run, remaining, row_start):
    """Code a zero run of length ``run`` out of ``remaining`` positions; return (run, state).

    DECODE ignores ``run`` and returns the decoded one, which never exceeds ``remaining``.
    """
    eor_ctx = ctx_base + (0 if row_start else 1)
    end, st = bin_t(st, mode, buf, probs, shifts, eor_ctx, 1 if run == remaining else 0)
    if end:
        return remaining, st
    run_max = remaining - 1
    if run_max == 0:
        return np.int64(0), st

    prefix_base = ctx_base + 2
    nonzero, st = bin_t(st, mode, buf, probs, shifts, prefix_base, 1 if run >= 1 else 0)
    if nonzero == 0:
        return np.int64(0), st
    exponent = 1
    while (np.int64(1) << exponent) <= run_max:
        ctx = prefix_base + min(exponent, N_RUN_PREFIX - 1)
        more, st = bin_t(st, mode, buf, probs, shifts, ctx,
                         1 if run >= (np.int64(1) << exponent) else 0)
        if more == 0:
            break
        exponent += 1

    base = np.int64(1) << (exponent - 1)
    if exponent < 2:
        return base, st
    max_offset = min(base - 1, run_max - base)
    offset = run - base
    result = np.int64(0)
    first = True
    msb_ctx = ctx_base + 2 + N_RUN_PREFIX + min(exponent, N_RUN_MSB - 1)
    for b in range(exponent - 2, -1, -1):
        candidate = result | (np.int64(1) << b)
        if candidate > max_offset:
            continue
        wanted = (offset >> b) & 1
        if first:
            bit, st = bin_t(st, mode, buf, probs, shifts, msb_ctx, wanted)
            first = False
        else:
            bit, st = bypass_t(st, mode, buf, wanted)
        if bit:
            result = candidate
    return base + result, st

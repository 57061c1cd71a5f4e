"""Encoder-side trellis search of dependent quantization, priced by activity class.

The Viterbi search of :func:`dq_trellis` picks, row by row, the levels of dependent
quantization (see :mod:`wcodec.codec.quantization`) that minimize

    sum over coded positions of (target - reconstruction)**2 + lam * rate(level | class)

where the class is the activity class that the residual coder will use for the
position (:mod:`wcodec.codec.residual_coding`), computed from the levels on each
survivor path (left neighbours and the previous block) and from the rows already
decided (the row above). ``rate`` is a table of estimated bits per class and level
magnitude, which :func:`class_rate_table` derives from a first quantization pass.
The search affects only which levels the encoder picks, never the bitstream syntax.
"""

import numpy as np
from numba import njit

from wcodec.codec.quantization import DQ_STATES, DQ_TRANSITIONS, dq_value
from wcodec.codec.residual_coding import N_CLASSES, activity_class, class_of_activity

RATE_TABLE_SIZE = 64  # magnitudes with their own estimate; larger ones are extrapolated
TAIL_BITS_PER_OCTAVE = 2.0
_PRIOR_WEIGHT = 4.0  # pseudo-counts that pull a sparse class towards the frame's histogram


@njit(cache=True, nogil=True)
def _classes(levels, block_coded, block_size):
    rows, row_length = levels.shape
    out = np.zeros((rows, row_length), dtype=np.int64)
    for o in range(rows):
        for p in range(row_length):
            if block_coded[o, p // block_size]:
                out[o, p] = activity_class(levels, o, p, block_size)
    return out


def class_rate_table(levels, block_coded, block_size):
    """Return estimated bits (N_CLASSES, RATE_TABLE_SIZE) of each |level| in each activity class.

    The estimate is -log2 of the frequency of the magnitude among the coded positions of
    that class in ``levels`` (O, R), smoothed towards the frequency over all classes, plus
    one bit of sign for nonzero magnitudes.
    """
    classes = _classes(levels, block_coded, block_size)
    mask = np.repeat(block_coded.astype(bool), block_size, axis=1)
    magnitudes = np.minimum(np.abs(levels[mask]), RATE_TABLE_SIZE - 1)
    class_of = classes[mask]
    counts = np.zeros((N_CLASSES, RATE_TABLE_SIZE))
    np.add.at(counts, (class_of, magnitudes), 1.0)
    overall = counts.sum(axis=0) + 0.5
    overall /= overall.sum()
    smoothed = counts + _PRIOR_WEIGHT * overall
    probability = smoothed / smoothed.sum(axis=1, keepdims=True)
    rate = -np.log2(probability)
    rate[:, 1:] += 1.0
    return rate


@njit(cache=True, nogil=True)
def _rate(level, c, rate):
    m = abs(level)
    top = rate.shape[1] - 1
    if m <= top:
        return rate[c, m]
    return rate[c, top] + TAIL_BITS_PER_OCTAVE * np.log2(m / top)


@njit(cache=True, nogil=True)
def dq_trellis(targets, block_coded, block_size, lam, rate):
    """Return dependent-quantization levels (O, R) for ``targets`` (O, R) given in steps."""
    rows, row_length = targets.shape
    levels = np.zeros((rows, row_length), dtype=np.int64)
    history = max(block_size, 2)
    back_state = np.zeros((row_length, DQ_STATES), dtype=np.int64)
    back_level = np.zeros((row_length, DQ_STATES), dtype=np.int64)
    cost = np.empty(DQ_STATES)
    new_cost = np.empty(DQ_STATES)
    ring = np.zeros((DQ_STATES, history), dtype=np.int64)
    new_ring = np.zeros((DQ_STATES, history), dtype=np.int64)
    winner = np.empty(DQ_STATES, dtype=np.int64)
    winner_level = np.empty(DQ_STATES, dtype=np.int64)
    candidates = np.empty(3, dtype=np.int64)
    for o in range(rows):
        cost[:] = np.inf
        cost[0] = 0.0
        ring[:, :] = 0
        coded = 0
        for p in range(row_length):
            slot = p % history
            if not block_coded[o, p // block_size]:
                ring[:, slot] = 0
                continue
            y = targets[o, p]
            up = abs(levels[o - 1, p]) if o >= 1 else 0
            up_right = abs(levels[o - 1, p + 1]) if (o >= 1 and p + 1 < row_length) else 0
            new_cost[:] = np.inf
            for state in range(DQ_STATES):
                if cost[state] == np.inf:
                    continue
                left = abs(ring[state, (p - 1) % history]) if p >= 1 else 0
                left2 = abs(ring[state, (p - 2) % history]) if p >= 2 else 0
                if block_size > 1:
                    prev = abs(ring[state, slot]) if p >= block_size else 0
                else:
                    prev = up_right
                c = class_of_activity(left, left2, up, prev)
                quantizer = state & 1
                if quantizer == 0:
                    low = np.int64(np.floor(y / 2.0))
                    candidates[0] = low
                    candidates[1] = low + 1
                else:
                    # Q1 reconstructs 0 and the odd numbers: take the two odd ones around y.
                    odd = 2 * np.int64(np.floor((y - 1.0) / 2.0)) + 1
                    candidates[0] = (odd + 1) // 2 if odd > 0 else (odd - 1) // 2
                    candidates[1] = (odd + 3) // 2 if odd + 2 > 0 else (odd + 1) // 2
                candidates[2] = 0
                for n in range(3):
                    level = candidates[n]
                    if n == 2 and (candidates[0] == 0 or candidates[1] == 0):
                        continue
                    error = y - dq_value(level, quantizer)
                    j = cost[state] + error * error + lam * _rate(level, c, rate)
                    nxt = DQ_TRANSITIONS[state, level & 1]
                    if j < new_cost[nxt]:
                        new_cost[nxt] = j
                        winner[nxt] = state
                        winner_level[nxt] = level
            for nxt in range(DQ_STATES):
                if new_cost[nxt] == np.inf:
                    continue
                new_ring[nxt, :] = ring[winner[nxt], :]
                new_ring[nxt, slot] = winner_level[nxt]
                back_state[coded, nxt] = winner[nxt]
                back_level[coded, nxt] = winner_level[nxt]
            ring[:, :] = new_ring
            cost[:] = new_cost
            coded += 1
        state = 0
        best = np.inf
        for s in range(DQ_STATES):
            if cost[s] < best:
                best = cost[s]
                state = s
        for p in range(row_length - 1, -1, -1):
            if not block_coded[o, p // block_size]:
                continue
            coded -= 1
            levels[o, p] = back_level[coded, state]
            state = back_state[coded, state]
    return levels

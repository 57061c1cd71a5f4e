"""Estimated bits that each inter frame mode saves over intra, before any frame is coded.

The auto mode decision of the encoder codes a frame in full only in the inter modes whose
estimate is promising. Coding a frame in a mode costs a block decision, block matching
and the arithmetic coder, while the estimate costs a few passes over the frame.

The estimate prices every block with the cost model of the block decision in
:mod:`wcodec.codec.frame_coder`: J = D + lambda * R, with R from the histogram of the
frame's intra levels. A block's gain is how much lower J is when the block is predicted
from its candidate reference block (either sign) than when it is coded intra, in bits,
or zero. Each inter block pays two bits (the sign and the skip flag) plus its reference.
The reference costs nothing in ``collocated`` frames and one bit for a block that
continues the match of its left neighbour (a ``pred_hit``). Any other reference costs
one bit, the slot and the block index. The frame's
gain is the best total over the m blocks of largest gain, less the N * H(m / N) bits
that the inter flags of N blocks take when m of them are inter.

Candidate references: the collocated block, at frame gain 1 or at the least-squares
gain, for ``collocated``. The best match (see :func:`wcodec.codec.prediction.best_match`)
in the nearest reference for ``adjacent`` and in any reference for ``full``, at gain 1
and with at most SEARCH_MAX_CANDIDATES examined per block. The estimate examines every
SAMPLE_ROW_STRIDE-th row of a frame only, and scales that gain up to the whole frame.

The estimate ignores context adaptation. It overrates frames where many blocks gain a
fraction of a bit (1x1 convolutions, whose blocks are single weights) and underrates
strong predictions, whose small residual levels are rare in the intra histogram. So the
encoder uses it to discard clear losers only, and a sampled trial encode decides the rest.
"""

import numpy as np
from numba import njit

from wcodec.codec import prediction, quantization
from wcodec.codec.block_syntax import FRAME_ADJACENT, FRAME_COLLOCATED, FRAME_FULL
from wcodec.codec.frame_coder import LAMBDA_FACTOR, _block_cost, _level_cost_table

SAMPLE_ROW_STRIDE = 8
SAMPLE_MIN_ROWS = 4  # rows that the estimate examines at least, where the frame has them
SEARCH_MAX_CANDIDATES = 16
INTER_BLOCK_BITS = 2.0  # sign and skip flag of an inter block
TAIL_SLOPE = 2.0  # bits per doubling of a level magnitude beyond the cost table


@njit(cache=True, nogil=True)
def _block_gains(cur, ref_blocks, index, side_bits, step, lam, level_cost, weights, out_gain):
    """Fill ``out_gain`` with each block's estimated gain of inter over intra, in bits.

    Block b is predicted from ``ref_blocks[index[b]]`` times the best of ``weights``
    (candidate frame gains) and either sign, for ``side_bits[b]`` bits of side
    information. A block with ``index[b]`` < 0 has no reference and gains nothing.
    """
    n, k = cur.shape
    inv_step = 1.0 / step
    levels = np.empty(k, dtype=np.int64)
    for b in range(n):
        if index[b] < 0:
            out_gain[b] = 0.0
            continue
        x = cur[b]
        d, bits, _ = _block_cost(x, 0.0, x, step, inv_step, level_cost, TAIL_SLOPE, levels)
        intra_j = d + lam * bits
        ref = ref_blocks[index[b]]
        best_j = np.inf
        for weight in weights:
            for sign in (1.0, -1.0):
                d, bits, zero = _block_cost(x, sign * weight, ref, step, inv_step, level_cost,
                                            TAIL_SLOPE, levels)
                if zero:
                    bits = 0.0
                j = d + lam * (bits + INTER_BLOCK_BITS + side_bits[b])
                if j < best_j:
                    best_j = j
        gain = (intra_j - best_j) / lam
        out_gain[b] = gain if gain > 0.0 else 0.0


def _frame_gain(gains):
    """Return max over m of (sum of the m largest gains - N * H(m / N)), at least 0.

    Only blocks with a positive gain can raise the total, so only they are sorted.
    """
    n = gains.size
    positive = np.sort(gains[gains > 0.0])[::-1]
    if positive.size == 0:
        return 0.0
    top = np.cumsum(positive)
    share = np.arange(1, positive.size + 1) / n
    rest = np.maximum(1.0 - share, np.finfo(np.float64).tiny)
    flag_bits = -n * (share * np.log2(share) + (1.0 - share) * np.log2(rest))
    return max(0.0, float(np.max(top - flag_bits)))


def _fitted_gain(cur, ref):
    """Return the frame gain that fits sign-matched blocks best, as the block decision does.

    Each block takes the sign that makes its product with the reference positive, and the
    least-squares gain is rounded to a multiple of 1 / GAIN_DENOMINATOR within its range.
    """
    energy = float(np.einsum("ij,ij->", ref, ref))
    if energy == 0.0:
        return 1.0
    fit = float(np.abs(np.einsum("ij,ij->i", cur, ref)).sum()) / energy
    numerator = np.clip(round(fit * prediction.GAIN_DENOMINATOR), prediction.GAIN_MIN,
                        prediction.GAIN_MAX)
    return numerator / prediction.GAIN_DENOMINATOR


def _collocated_gain(blocks, refs, step, lam, level_cost):
    """Return the estimated gain of collocated prediction at gain 1 or at the fitted gain.

    Each block takes the better of the two gains, although a frame has one, so the
    estimate errs towards coding the mode in full.
    """
    rows, cols, k = blocks.shape
    ref_rows, ref_cols = refs[0].shape[:2]
    overlap_rows = min(rows, ref_rows)
    overlap_cols = min(cols, ref_cols)
    fitted = _fitted_gain(blocks[:overlap_rows, :overlap_cols].reshape(-1, k),
                          refs[0][:overlap_rows, :overlap_cols].reshape(-1, k))
    stride = _sample_stride(rows)
    o = np.arange(0, rows, stride)[:, None]
    i = np.arange(cols)[None, :]
    index = np.where((o < ref_rows) & (i < ref_cols), o * ref_cols + i, -1).reshape(-1)
    block_gains = np.empty(index.size)
    _block_gains(np.ascontiguousarray(blocks[::stride].reshape(-1, k)),
                 np.ascontiguousarray(refs[0].reshape(-1, k)), index, np.zeros(index.size),
                 step, lam, level_cost, np.unique([1.0, fitted]), block_gains)
    return _frame_gain(block_gains) * (rows / o.shape[0])


def _sample_stride(rows):
    """Return the stride of the rows that the estimate examines.

    Every SAMPLE_ROW_STRIDE-th row, or every row where that would leave fewer than
    SAMPLE_MIN_ROWS rows.
    """
    return max(1, min(SAMPLE_ROW_STRIDE, rows // SAMPLE_MIN_ROWS))


def _matched_gains(blocks, frame_modes, indexes, step, lam, level_cost, max_candidates):
    """Return {mode: estimated gain} of ``adjacent`` and ``full`` from one search per reference."""
    sample = blocks[::_sample_stride(blocks.shape[0])]
    rows, cols, k = sample.shape
    cur = np.ascontiguousarray(sample.reshape(-1, k))
    searches = [prediction.best_match(cur, None, max_candidates, index=index)
                for index in (indexes if FRAME_FULL in frame_modes else indexes[:1])]
    gains = {}
    for frame_mode in frame_modes:
        used = len(searches) if frame_mode == FRAME_FULL else 1
        n = cur.shape[0]
        best_sse = np.full(n, np.inf)
        global_index = np.zeros(n, dtype=np.int64)
        side_bits = np.zeros(n)
        offset = 0
        for slot in range(used):
            found, _, sse = searches[slot]
            better = sse < best_sse
            best_sse[better] = sse[better]
            global_index[better] = found[better] + offset
            slot_bits = min(slot + 1, used - 1)  # truncated unary
            side_bits[better] = 1.0 + slot_bits + np.log2(indexes[slot].blocks.shape[0])
            offset += indexes[slot].blocks.shape[0]
        # A block whose match follows its left neighbour's is a pred_hit: one bin.
        hit = np.zeros(n, dtype=bool)
        hit[1:] = global_index[1:] == global_index[:-1] + 1
        hit[::cols] = False
        side_bits[hit] = 1.0
        ref_blocks = np.concatenate([index.blocks for index in indexes[:used]])
        block_gains = np.empty(n)
        _block_gains(cur, ref_blocks, global_index, side_bits, step, lam, level_cost,
                     np.ones(1), block_gains)
        gains[frame_mode] = _frame_gain(block_gains) * (blocks.shape[0] / rows)
    return gains


def estimate_gains(blocks, step, frame_modes, refs, search_indexes,
                   max_candidates=prediction.DEFAULT_MAX_CANDIDATES):
    """Return ``({frame mode: estimated gain in bits}, estimated intra bits)`` of a frame.

    ``blocks`` is the frame (O, I, K) in float64, and ``frame_modes`` lists the inter
    modes to estimate. ``refs`` are the reference reconstructions (O_r, I_r, K), nearest
    first, and ``search_indexes`` their :func:`wcodec.codec.prediction.search_index`. ``adjacent`` uses the first reference and ``full`` all of them.
    """
    k = blocks.shape[2]
    lam = LAMBDA_FACTOR * step * step
    intra_levels = quantization.quantize(blocks.reshape(-1, k), step)
    level_cost = _level_cost_table(intra_levels)
    magnitudes = np.minimum(np.abs(intra_levels).reshape(-1), level_cost.size - 1)
    intra_bits = float(level_cost[magnitudes].sum())
    unknown = set(frame_modes) - {FRAME_COLLOCATED, FRAME_ADJACENT, FRAME_FULL}
    if unknown:
        raise ValueError(f"frame modes {sorted(unknown)} are not inter modes")
    gains = {}
    if FRAME_COLLOCATED in frame_modes:
        gains[FRAME_COLLOCATED] = _collocated_gain(blocks, refs, step, lam, level_cost)
    matched = [mode for mode in frame_modes if mode in (FRAME_ADJACENT, FRAME_FULL)]
    if matched:
        gains.update(_matched_gains(blocks, matched, search_indexes, step, lam, level_cost,
                                    min(max_candidates, SEARCH_MAX_CANDIDATES)))
    return gains, intra_bits

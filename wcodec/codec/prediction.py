"""Inter-layer prediction: block matching, weighted prediction and the reconstruction rule.

Blocks are rows of a (N, K) float64 array: N blocks of K weights. A prediction of block x
is ``gain * sign * r`` where r is a reconstructed block of a reference frame, ``sign`` is
+1 or -1 per block and ``gain`` = ``gain_num / GAIN_DENOMINATOR`` per frame (the weighted
prediction of H.264, with the sign moved into the block).

Block matching (:func:`best_match`) finds, for every current block, the reference block
and sign with the smallest squared error. It projects all blocks on the principal axis u
of the reference blocks: |x.u - r.u| <= ||x - r||, so scanning the references outward
from x's projection and stopping once the projection gap alone exceeds the best error
found is exact. ``max_candidates`` bounds the references examined per block and sign,
which makes the search approximate but keeps its cost at O(N * max_candidates * K).
"""

from dataclasses import dataclass

import numpy as np
from numba import njit

GAIN_DENOMINATOR = 64
GAIN_MIN = 1
GAIN_MAX = 2 * GAIN_DENOMINATOR
DEFAULT_MAX_CANDIDATES = 64


def principal_axis(blocks):
    """Return the unit vector along which ``blocks`` (N, K) vary most (about the origin)."""
    k = blocks.shape[1]
    if k == 1 or blocks.shape[0] == 0:
        return np.ones(k, dtype=np.float64) / np.sqrt(k)
    second_moment = blocks.T @ blocks
    _, vectors = np.linalg.eigh(second_moment)
    axis = np.ascontiguousarray(vectors[:, -1])
    # eigh may return either sign; fix it so results do not depend on the LAPACK build.
    if axis[np.argmax(np.abs(axis))] < 0:
        axis = -axis
    # Rounding drops the last bits in which LAPACK builds may differ.
    return np.round(axis * (1 << 20)) / (1 << 20)


@njit(cache=True, nogil=True)
def _project(blocks, axis):
    """Return blocks @ axis, summed in a fixed order (BLAS may sum in any order)."""
    out = np.empty(blocks.shape[0], dtype=np.float64)
    for b in range(blocks.shape[0]):
        total = 0.0
        for t in range(blocks.shape[1]):
            total += blocks[b, t] * axis[t]
        out[b] = total
    return out


@njit(cache=True, nogil=True)
def _scan(x, target, ref, proj_sorted, order, max_candidates, best_sse, best_index, sign):
    """Scan references outward from projection ``target``; return the improved (sse, index)."""
    n = proj_sorted.shape[0]
    k = x.shape[0]
    hi = np.searchsorted(proj_sorted, target)
    lo = hi - 1
    examined = 0
    while examined < max_candidates and (lo >= 0 or hi < n):
        if hi >= n or (lo >= 0 and target - proj_sorted[lo] <= proj_sorted[hi] - target):
            j = lo
            lo -= 1
        else:
            j = hi
            hi += 1
        gap = proj_sorted[j] - target
        if gap * gap >= best_sse:
            # j is the nearer of the two sides, so every reference left is at least as far.
            break
        r = order[j]
        sse = 0.0
        for t in range(k):
            d = x[t] - sign * ref[r, t]
            sse += d * d
            if sse >= best_sse:
                break
        if sse < best_sse:
            best_sse = sse
            best_index = r
        examined += 1
    return best_sse, best_index


@njit(cache=True, nogil=True)
def _best_match_kernel(cur, proj_cur, ref, proj_sorted, order, max_candidates,
                       out_index, out_sign, out_sse):
    for b in range(cur.shape[0]):
        x = cur[b]
        px = proj_cur[b]
        best_sse = np.inf
        best_index = -1
        best_sse, best_index = _scan(x, px, ref, proj_sorted, order, max_candidates,
                                     best_sse, best_index, 1.0)
        plus_sse = best_sse
        plus_index = best_index
        best_sse, best_index = _scan(x, -px, ref, proj_sorted, order, max_candidates,
                                     best_sse, -1, -1.0)
        if best_index >= 0 and best_sse < plus_sse:
            out_index[b] = best_index
            out_sign[b] = -1
            out_sse[b] = best_sse
        else:
            out_index[b] = plus_index
            out_sign[b] = 1
            out_sse[b] = plus_sse


@dataclass(frozen=True)
class SearchIndex:
    """Reference blocks sorted by their projection on the blocks' principal axis.

    Block matching against the same reference blocks can reuse one index, because the
    axis and the order depend on the reference blocks alone.
    """

    blocks: np.ndarray  # (Nr, K) float64, C-contiguous
    axis: np.ndarray
    order: np.ndarray
    proj_sorted: np.ndarray


def search_index(ref_blocks):
    """Return the :class:`SearchIndex` of ``ref_blocks`` (Nr, K), Nr >= 1."""
    ref = np.ascontiguousarray(ref_blocks, dtype=np.float64)
    if ref.shape[0] == 0:
        raise ValueError("best_match needs at least one reference block")
    axis = principal_axis(ref)
    proj_ref = _project(ref, axis)
    order = np.argsort(proj_ref, kind="stable")
    return SearchIndex(ref, axis, order, np.ascontiguousarray(proj_ref[order]))


def best_match(cur_blocks, ref_blocks, max_candidates=DEFAULT_MAX_CANDIDATES, index=None):
    """Return ``(index, sign, sse)``: the best reference block and sign for every current block.

    ``cur_blocks`` (Nc, K) and ``ref_blocks`` (Nr, K) are float64; ``sse`` is
    ||cur - sign * ref[index]||**2. Exact when ``max_candidates`` >= Nr.
    Ties go to the lower projection distance, then to the + sign. ``index``, the
    :func:`search_index` of ``ref_blocks``, saves building it again; ``ref_blocks`` is
    then ignored.
    """
    cur = np.ascontiguousarray(cur_blocks, dtype=np.float64)
    if index is None:
        index = search_index(ref_blocks)
    if cur.shape[1] != index.blocks.shape[1]:
        raise ValueError(f"block sizes differ: {cur.shape[1]} and {index.blocks.shape[1]}")
    n = cur.shape[0]
    best_index = np.empty(n, dtype=np.int64)
    sign = np.empty(n, dtype=np.int8)
    sse = np.empty(n, dtype=np.float64)
    _best_match_kernel(cur, _project(cur, index.axis), index.blocks, index.proj_sorted,
                       index.order, max(1, int(max_candidates)), best_index, sign, sse)
    return best_index, sign, sse


def predict_blocks(ref_blocks, gain_num, signs, indexes, modes_inter):
    """Return the prediction (N, K) of every block: gain * sign * ref[index], or 0 where not inter.

    ``ref_blocks`` holds the reference blocks of all reference frames, concatenated;
    ``indexes`` are global rows into it. Encoder and decoder both call this, so they
    compute the same float64 values in the same order.
    """
    n = indexes.shape[0]
    k = ref_blocks.shape[1] if ref_blocks.ndim == 2 else 0
    pred = np.zeros((n, k), dtype=np.float64)
    if n == 0 or not modes_inter.any():
        return pred
    rows = np.nonzero(modes_inter)[0]
    factor = (gain_num / GAIN_DENOMINATOR) * signs[rows].astype(np.float64)
    pred[rows] = factor[:, None] * ref_blocks[indexes[rows]]
    return pred

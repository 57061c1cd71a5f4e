"""Block-level syntax of inter frames: block modes, prediction signs and reference indexes.

These are the non-texture bins of a frame. They precede the residual levels in the
same arithmetic-coded payload and use their own contexts, placed after the residual
coder's (``ctx_base`` = ``residual_coding.N_CONTEXTS``).

For every block (o, i) of an O x I frame, in raster order:

1. In a ``collocated`` frame, a block outside the reference frame (o >= O_ref or
   i >= I_ref) is intra and codes nothing.
2. ``inter`` bin (context by how many of the left and upper blocks are not intra):
   0 means intra.
3. For a non-intra block, ``skip`` bin (context by how many of the left and upper blocks
   are skip): 1 means the residual is zero and not coded.
4. ``pred_sign`` bin (context by the left block's sign, or none): 1 means the prediction is
   negated.
5. In ``adjacent`` and ``full`` frames, the reference: ``pred_hit`` (context by whether
   the left block is not intra) is 1 when the reference equals the predicted one (below).
   Otherwise a ``full`` frame with more than one reference frame codes the slot of the
   reference frame (truncated unary, one context per bin), and both modes code the block
   index within that frame in truncated binary with bypass bins.

The predicted reference continues the left block's match: its slot and the next index
when the left block is not intra; else the upper block's slot and its index plus one
reference row (I_ref blocks); else the collocated block of slot 0 (or block 0 when the
frame is too small). An index past the end of its frame falls back to the last block.
"""

import numpy as np
from numba import njit

from wcodec.codec.cabac import MODE, bin_t, bypass_bits_t, load_state, store_state

BLOCK_INTRA = 0
BLOCK_INTER = 1
BLOCK_SKIP = 2

FRAME_INTRA = 0
FRAME_COLLOCATED = 1
FRAME_ADJACENT = 2
FRAME_FULL = 3
FRAME_TRANSFORM = 4  # intra with a DCT over each kernel's taps (wcodec.codec.transform)

MAX_REFS = 8

CTX_INTER = 0
CTX_SKIP = CTX_INTER + 3
CTX_PRED_SIGN = CTX_SKIP + 3
CTX_PRED_HIT = CTX_PRED_SIGN + 3
CTX_SLOT = CTX_PRED_HIT + 2
N_CONTEXTS = CTX_SLOT + MAX_REFS


@njit(cache=True, nogil=True, inline="always")
def _truncated_binary_t(st, mode, buf, value, n):
    """Code 0 <= value < n in truncated binary with bypass bins; return (value, state)."""
    if n <= 1:
        return np.int64(0), st
    k = 0
    while (np.int64(1) << (k + 1)) <= n:
        k += 1
    short = (np.int64(1) << (k + 1)) - n  # values below this take k bits, the rest k + 1
    head = value if value < short else (value + short) >> 1
    head, st = bypass_bits_t(st, mode, buf, head, k)
    if head < short:
        return head, st
    extra, st = bypass_bits_t(st, mode, buf, (value + short) & 1, 1)
    return ((head << 1) | extra) - short, st


@njit(cache=True, nogil=True, inline="always")
def _predicted_reference(modes, slots, indexes, o, i, ref_rows, ref_cols):
    """Return the predicted (slot, index) of block (o, i)."""
    if i > 0 and modes[o, i - 1] != BLOCK_INTRA:
        slot = slots[o, i - 1]
        index = indexes[o, i - 1] + 1
    elif o > 0 and modes[o - 1, i] != BLOCK_INTRA:
        slot = slots[o - 1, i]
        index = indexes[o - 1, i] + ref_cols[slot]
    else:
        slot = 0
        if o < ref_rows[0] and i < ref_cols[0]:
            index = o * ref_cols[0] + i
        else:
            index = 0
    size = ref_rows[slot] * ref_cols[slot]
    if index >= size:
        index = size - 1
    return slot, index


@njit(cache=True, nogil=True)
def code_block_syntax(coder, buf, probs, shifts, ctx_base, frame_mode, modes, signs, slots,
                      indexes, ref_rows, ref_cols):
    """Code the block syntax of an O x I frame; DECODE fills ``modes``, ``signs``, ``slots``, ``indexes``.

    ``ref_rows`` and ``ref_cols`` give each reference frame's block rows and columns
    (at least one reference, each with at least one block). ``signs`` contains +1 or -1.
    """
    mode_ = coder[MODE]
    st = load_state(coder)
    rows = modes.shape[0]
    cols = modes.shape[1]
    n_refs = ref_rows.shape[0]
    for o in range(rows):
        for i in range(cols):
            if st[7] != 0:  # stop at the first inconsistency
                store_state(coder, st)
                return
            if frame_mode == FRAME_COLLOCATED and (o >= ref_rows[0] or i >= ref_cols[0]):
                modes[o, i] = BLOCK_INTRA
                continue
            left = modes[o, i - 1] if i > 0 else BLOCK_INTRA
            up = modes[o - 1, i] if o > 0 else BLOCK_INTRA
            near = 0
            if left != BLOCK_INTRA:
                near += 1
            if up != BLOCK_INTRA:
                near += 1
            mode = modes[o, i]
            inter, st = bin_t(st, mode_, buf, probs, shifts, ctx_base + CTX_INTER + near,
                              1 if mode != BLOCK_INTRA else 0)
            if inter == 0:
                modes[o, i] = BLOCK_INTRA
                continue
            near_skip = 0
            if left == BLOCK_SKIP:
                near_skip += 1
            if up == BLOCK_SKIP:
                near_skip += 1
            skip, st = bin_t(st, mode_, buf, probs, shifts, ctx_base + CTX_SKIP + near_skip,
                             1 if mode == BLOCK_SKIP else 0)
            modes[o, i] = BLOCK_SKIP if skip else BLOCK_INTER

            sign_ctx = 0
            if left != BLOCK_INTRA:
                sign_ctx = 1 if signs[o, i - 1] > 0 else 2
            negative, st = bin_t(st, mode_, buf, probs, shifts,
                                 ctx_base + CTX_PRED_SIGN + sign_ctx, 1 if signs[o, i] < 0 else 0)
            signs[o, i] = -1 if negative else 1

            if frame_mode == FRAME_COLLOCATED:
                slots[o, i] = 0
                indexes[o, i] = o * ref_cols[0] + i
                continue
            slot_hat, index_hat = _predicted_reference(modes, slots, indexes, o, i,
                                                       ref_rows, ref_cols)
            hit = 1 if (slots[o, i] == slot_hat and indexes[o, i] == index_hat) else 0
            hit, st = bin_t(st, mode_, buf, probs, shifts,
                            ctx_base + CTX_PRED_HIT + (1 if left != BLOCK_INTRA else 0), hit)
            if hit:
                slots[o, i] = slot_hat
                indexes[o, i] = index_hat
                continue
            slot = 0
            if frame_mode == FRAME_FULL and n_refs > 1:
                wanted = slots[o, i]
                while slot < n_refs - 1:
                    more, st = bin_t(st, mode_, buf, probs, shifts, ctx_base + CTX_SLOT + slot,
                                     1 if wanted > slot else 0)
                    if more == 0:
                        break
                    slot += 1
            slots[o, i] = slot
            indexes[o, i], st = _truncated_binary_t(st, mode_, buf, indexes[o, i],
                                                    ref_rows[slot] * ref_cols[slot])
    store_state(coder, st)

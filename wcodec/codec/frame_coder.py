"""Frame coding: intra and inter frames, the block mode decision and reconstruction.

A frame is a weight tensor seen as an (O, I, K) array of O x I blocks of K weights
(see :mod:`wcodec.codec.frames`). Its payload is one arithmetic-coded stream: for an
inter frame the block syntax (:mod:`wcodec.codec.block_syntax`) comes first, then the
residual levels of every block that is not skipped (:mod:`wcodec.codec.residual_coding`).
An intra frame has only the levels.

Reconstruction, identical in encoder and decoder: ``pred + level * step`` in float64, where
``pred`` is ``(gain * sign) * ref_block`` for inter and skip blocks and 0 for intra blocks.

Block mode decision (encoder only). For every block in raster order the encoder compares

- intra: the quantized block itself;
- inter against each candidate reference: the best match found by block matching, the
  predicted reference of the block syntax (cheap to signal), and, in collocated frames,
  the collocated block; each with the sign that fits it better;

by the Lagrangian cost J = D + lambda * R, with D the squared error of the
reconstruction and R an estimate of the bits: the level costs come from the frame's own
level histogram (re-estimated after a first pass) and the mode, sign and index costs
from the frequencies of the first pass. lambda = LAMBDA_FACTOR * step**2, the slope
of the rate-distortion curve of a uniform quantizer at high rate (2 ln 2 / 12 = 0.1155).
A block whose inter residual quantizes to all zeros is coded as skip, so every block
stays within step / 2 of its weights. The frame gain is the least-squares fit of the
predictions of the first pass, rounded to 1/64, or 1 when that gives a lower total cost.
"""

from dataclasses import dataclass

import numpy as np
from numba import njit

from wcodec.codec import (block_syntax, cabac, level_decoder, prediction, quantization,
                          residual_coding, transform, trellis)
from wcodec.codec.block_syntax import BLOCK_INTER, BLOCK_INTRA, BLOCK_SKIP

LAMBDA_FACTOR = 2 * np.log(2) / 12
QUANTIZER_UNIFORM = 0
QUANTIZER_DEPENDENT = 1
QUANTIZER_NAMES = {QUANTIZER_UNIFORM: "uniform", QUANTIZER_DEPENDENT: "dependent"}
DQ_LAMBDA = 0.2  # Lagrange multiplier of the dependent-quantization trellis, in steps**2 per bit
N_CONTEXTS = residual_coding.N_CONTEXTS + block_syntax.N_CONTEXTS
COST_TABLE_SIZE = 64  # level magnitudes with their own cost estimate; larger ones are extrapolated

FRAME_MODE_NAMES = {block_syntax.FRAME_INTRA: "intra",
                    block_syntax.FRAME_COLLOCATED: "collocated",
                    block_syntax.FRAME_ADJACENT: "adjacent",
                    block_syntax.FRAME_FULL: "full",
                    block_syntax.FRAME_TRANSFORM: "transform"}


@dataclass
class BlockSyntax:
    """Per-block decisions of an inter frame, each an (O, I) array."""

    modes: np.ndarray
    signs: np.ndarray
    slots: np.ndarray
    indexes: np.ndarray


@dataclass
class FrameResult:
    """An encoded frame: payload, reconstruction and what the encoder decided."""

    payload: bytes
    reconstruction: np.ndarray  # float64, shape (O, I, K)
    frame_mode: int
    gain_num: int
    syntax: BlockSyntax | None


def _ref_layout(refs):
    rows = np.array([r.shape[0] for r in refs], dtype=np.int64)
    cols = np.array([r.shape[1] for r in refs], dtype=np.int64)
    offsets = np.zeros(len(refs), dtype=np.int64)
    if len(refs) > 1:
        offsets[1:] = np.cumsum(rows * cols)[:-1]
    k = refs[0].shape[2]
    blocks = np.ascontiguousarray(np.concatenate([r.reshape(-1, k) for r in refs]),
                                  dtype=np.float64)
    return rows, cols, offsets, blocks


def _global_indexes(syntax, offsets):
    return offsets[syntax.slots] + syntax.indexes


def _block_coded(syntax, rows, cols):
    if syntax is None:
        return np.ones((rows, cols), dtype=np.uint8)
    return (syntax.modes != BLOCK_SKIP).astype(np.uint8)


def step_values(levels, syntax, quantizer):
    """Return the reconstructions (O, I, K) int64 in steps of a frame's levels."""
    rows, cols, k = levels.shape
    if quantizer == QUANTIZER_DEPENDENT:
        values = quantization.dq_reconstruct(levels.reshape(rows, cols * k),
                                             _block_coded(syntax, rows, cols), k)
        return values.reshape(rows, cols, k)
    return levels


def reconstruct(levels, step, syntax, refs, gain_num, quantizer=QUANTIZER_UNIFORM,
                kernel_shape=None):
    """Return the float64 reconstruction (O, I, K) of a frame from its levels and syntax.

    ``kernel_shape`` marks a transform frame: the levels are the DCT coefficients of
    blocks with that kernel shape (:mod:`wcodec.codec.transform`) in coding layout
    (O, K, I), and the reconstruction is (O, I, K) as for other frames.
    """
    values = step_values(levels, syntax, quantizer)
    if kernel_shape is not None:
        return transform.inverse(values.transpose(0, 2, 1), step, kernel_shape)
    recon = values.astype(np.float64) * step
    if syntax is None:
        return recon
    _, _, offsets, ref_blocks = _ref_layout(refs)
    inter = (syntax.modes != BLOCK_INTRA).reshape(-1)
    pred = prediction.predict_blocks(ref_blocks, gain_num, syntax.signs.reshape(-1),
                                     _global_indexes(syntax, offsets).reshape(-1), inter)
    return pred.reshape(levels.shape) + recon


def _level_cost_table(levels):
    """Return the estimated cost in bits of |level| = 0 .. COST_TABLE_SIZE - 1 and the tail slope."""
    magnitudes = np.minimum(np.abs(levels).reshape(-1), COST_TABLE_SIZE - 1)
    counts = np.bincount(magnitudes, minlength=COST_TABLE_SIZE).astype(np.float64) + 0.5
    probability = counts / counts.sum()
    cost = -np.log2(probability)
    cost[1:] += 1.0  # the sign
    return cost


@njit(cache=True, nogil=True)
def _block_cost(x, pred_factor, ref, step, inv_step, level_cost, tail_slope, out_levels):
    """Quantize x - pred_factor * ref into out_levels; return (distortion, level bits, all zero)."""
    k = x.shape[0]
    distortion = 0.0
    bits = 0.0
    zero = True
    top = level_cost.shape[0] - 1
    for t in range(k):
        p = pred_factor * ref[t] if pred_factor != 0.0 else 0.0
        r = x[t] - p
        level = np.floor(abs(r) * inv_step + 0.5)
        if r < 0:
            level = -level
        out_levels[t] = np.int64(level)
        e = r - level * step
        distortion += e * e
        m = abs(np.int64(level))
        if m != 0:
            zero = False
        if m <= top:
            bits += level_cost[m]
        else:
            bits += level_cost[top] + tail_slope * np.log2(m / top)
    return distortion, bits, zero


@njit(cache=True, nogil=True)
def _decide(cur, step, lam, gain, frame_mode, ref_blocks, offsets, ref_rows, ref_cols,
            best_index, best_sign, level_cost, tail_slope, mode_cost, sign_cost, hit_cost,
            miss_cost, slot_cost, modes, signs, slots, indexes, levels):
    """Choose a mode, sign and reference for every block; fill the syntax arrays and levels.

    Returns the sum of the chosen blocks' costs J.
    """
    total = 0.0
    rows = modes.shape[0]
    cols = modes.shape[1]
    k = cur.shape[1]
    inv_step = 1.0 / step
    trial = np.empty(k, dtype=np.int64)
    best_levels = np.empty(k, dtype=np.int64)
    cand_slot = np.empty(3, dtype=np.int64)
    cand_index = np.empty(3, dtype=np.int64)
    n_refs = ref_rows.shape[0]
    for o in range(rows):
        for i in range(cols):
            b = o * cols + i
            x = cur[b]
            d, bits, _ = _block_cost(x, 0.0, x, step, inv_step, level_cost, tail_slope,
                                     best_levels)
            best_j = d + lam * (bits + mode_cost[BLOCK_INTRA])
            best_mode = BLOCK_INTRA
            best_s = 1
            best_slot = 0
            best_idx = 0
            collocated_ok = o < ref_rows[0] and i < ref_cols[0]
            if frame_mode == block_syntax.FRAME_COLLOCATED and not collocated_ok:
                modes[o, i] = BLOCK_INTRA
                levels[b] = best_levels
                total += best_j
                continue

            n_cand = 0
            slot_hat = 0
            index_hat = 0
            if frame_mode == block_syntax.FRAME_COLLOCATED:
                cand_slot[0] = 0
                cand_index[0] = o * ref_cols[0] + i
                n_cand = 1
            else:
                slot_hat, index_hat = block_syntax._predicted_reference(
                    modes, slots, indexes, o, i, ref_rows, ref_cols)
                cand_slot[0] = slot_hat
                cand_index[0] = index_hat
                g = best_index[b]
                s = n_refs - 1
                while s > 0 and offsets[s] > g:
                    s -= 1
                cand_slot[1] = s
                cand_index[1] = g - offsets[s]
                n_cand = 2

            for c in range(n_cand):
                slot = cand_slot[c]
                index = cand_index[c]
                ref = ref_blocks[offsets[slot] + index]
                if frame_mode == block_syntax.FRAME_COLLOCATED:
                    side = 0.0
                elif slot == slot_hat and index == index_hat:
                    side = hit_cost
                else:
                    side = miss_cost + slot_cost[slot] + np.log2(ref_rows[slot] * ref_cols[slot])
                for sign in (1, -1):
                    if c == 1 and sign != best_sign[b]:
                        continue
                    d, bits, zero = _block_cost(x, gain * sign, ref, step, inv_step,
                                                level_cost, tail_slope, trial)
                    sign_bits = sign_cost[0] if sign > 0 else sign_cost[1]
                    if zero:
                        j = d + lam * (mode_cost[BLOCK_SKIP] + sign_bits + side)
                        mode = BLOCK_SKIP
                    else:
                        j = d + lam * (bits + mode_cost[BLOCK_INTER] + sign_bits + side)
                        mode = BLOCK_INTER
                    if j < best_j:
                        best_j = j
                        best_mode = mode
                        best_s = sign
                        best_slot = slot
                        best_idx = index
                        best_levels[:] = trial
            modes[o, i] = best_mode
            signs[o, i] = best_s
            slots[o, i] = best_slot
            indexes[o, i] = best_idx
            if best_mode == BLOCK_SKIP:
                best_levels[:] = 0
            levels[b] = best_levels
            total += best_j
    return total


def _frequency_costs(values, n, floor=0.5):
    counts = np.bincount(values.reshape(-1), minlength=n).astype(np.float64) + floor
    return -np.log2(counts / counts.sum())


def _decide_frame(cur, step, frame_mode, refs, max_candidates, search=None):
    """Run the two-pass block decision; return (syntax, levels (N, K), gain_num)."""
    rows, cols, k = cur.shape
    blocks = np.ascontiguousarray(cur.reshape(-1, k))
    ref_rows, ref_cols, offsets, ref_blocks = _ref_layout(refs)
    if frame_mode == block_syntax.FRAME_COLLOCATED:
        best_index = np.zeros(len(blocks), dtype=np.int64)
        best_sign = np.ones(len(blocks), dtype=np.int8)
    else:
        blocks_searched = ref_blocks if frame_mode == block_syntax.FRAME_FULL else \
            ref_blocks[:ref_rows[0] * ref_cols[0]]
        best_index, best_sign, _ = prediction.best_match(blocks, blocks_searched, max_candidates,
                                                         index=search)
    lam = LAMBDA_FACTOR * step * step
    intra_levels = quantization.quantize(blocks, step)
    level_cost = _level_cost_table(intra_levels)
    tail_slope = 2.0
    mode_cost = np.ones(3)
    sign_cost = np.ones(2)
    hit_cost, miss_cost = 1.0, 1.0
    slot_cost = np.log2(np.arange(1, len(refs) + 1, dtype=np.float64)) + 1.0 \
        if frame_mode == block_syntax.FRAME_FULL else np.zeros(len(refs))
    gain_num = prediction.GAIN_DENOMINATOR

    def run(gain):
        syntax = BlockSyntax(np.zeros((rows, cols), np.int8), np.ones((rows, cols), np.int8),
                             np.zeros((rows, cols), np.int64), np.zeros((rows, cols), np.int64))
        levels = np.zeros((rows * cols, k), dtype=np.int64)
        total = _decide(blocks, step, lam, gain / prediction.GAIN_DENOMINATOR, frame_mode,
                        ref_blocks, offsets, ref_rows, ref_cols, best_index, best_sign,
                        level_cost, tail_slope, mode_cost, sign_cost, hit_cost, miss_cost,
                        slot_cost, syntax.modes, syntax.signs, syntax.slots, syntax.indexes,
                        levels)
        return total, syntax, levels

    _, syntax, levels = run(gain_num)
    # Re-estimate costs and gain from the first pass's decisions for the final pass.
    inter = (syntax.modes != BLOCK_INTRA).reshape(-1)
    level_cost = _level_cost_table(levels)
    mode_cost = _frequency_costs(syntax.modes.astype(np.int64), 3)
    sign_cost = _frequency_costs((syntax.signs.reshape(-1)[inter] < 0).astype(np.int64), 2)
    gains = [prediction.GAIN_DENOMINATOR]
    if inter.any():
        predicted = ref_blocks[_global_indexes(syntax, offsets).reshape(-1)[inter]]
        predicted = predicted * syntax.signs.reshape(-1)[inter, None]
        energy = float((predicted * predicted).sum())
        if energy > 0:
            fit = float((blocks[inter] * predicted).sum()) / energy
            gains.append(int(np.clip(round(fit * prediction.GAIN_DENOMINATOR),
                                     prediction.GAIN_MIN, prediction.GAIN_MAX)))
    # A few outlying blocks can pull the least-squares gain away from 1 while most blocks
    # copy their reference exactly, so the final pass also tries gain 1 and keeps the
    # cheaper of the two.
    best = None
    for gain in dict.fromkeys(gains):
        total, syntax, levels = run(gain)
        if best is None or total < best[0]:
            best = (total, syntax, levels, gain)
    _, syntax, levels, gain_num = best
    return syntax, levels, gain_num


def _code_block_syntax(coder, buf, probs, shifts, frame_mode, syntax, refs):
    """Code the block syntax of an inter frame with the contexts after the residual coder's."""
    ref_rows = np.array([r.shape[0] for r in refs], dtype=np.int64)
    ref_cols = np.array([r.shape[1] for r in refs], dtype=np.int64)
    block_syntax.code_block_syntax(coder, buf, probs, shifts, residual_coding.N_CONTEXTS,
                                   frame_mode, syntax.modes, syntax.signs, syntax.slots,
                                   syntax.indexes, ref_rows, ref_cols)


def _code_payload(mode, level_frame, block_size, frame_mode, syntax, refs, buf, targets,
                  rdo_lambda, dependent):
    """Run the frame syntax in ENCODE or ESTIMATE ``mode``; return the coder state."""
    coder = cabac.new_coder(mode)
    probs, shifts = cabac.new_contexts(N_CONTEXTS)
    if syntax is None:
        block_coded = np.ones((level_frame.shape[0], level_frame.shape[1] // block_size),
                              dtype=np.uint8)
    else:
        _code_block_syntax(coder, buf, probs, shifts, frame_mode, syntax, refs)
        block_coded = (syntax.modes != BLOCK_SKIP).astype(np.uint8)
    residual_coding.code_levels(coder, buf, probs, shifts, level_frame, block_size, block_coded,
                                targets, rdo_lambda, dependent)
    return coder


def _encode_payload(level_frame, block_size, frame_mode, syntax, refs, targets, rdo_lambda,
                    dependent):
    """Return (payload, coded levels); rate-distortion optimized quantization may change levels."""
    capacity = 2 * level_frame.size + 64
    while True:
        buf = np.zeros(capacity, dtype=np.uint8)
        coded = level_frame.copy()
        coder = _code_payload(cabac.ENCODE, coded, block_size, frame_mode, syntax, refs, buf,
                              targets, rdo_lambda, dependent)
        length = cabac.finish_encoder(coder, buf)
        if length <= capacity:
            return buf[:length].tobytes(), coded
        capacity = int(length) + 64


def _dq_levels(targets, block_coded, block_size):
    """Return dependent-quantization levels for ``targets`` (O, R) in steps, two passes.

    The first pass prices levels with the statistics of plain rounding at twice the step
    (what each of the two quantizers would give alone); the second with those of the
    first pass's levels.
    """
    levels = np.rint(targets / 2.0).astype(np.int64)
    for _ in range(2):
        rate = trellis.class_rate_table(levels, block_coded, block_size)
        levels = trellis.dq_trellis(targets, block_coded, block_size, DQ_LAMBDA, rate)
    return levels


def transform_fits(values, step):
    """Return whether the DCT coefficients of frame ``values`` (O, I, K) stay within range."""
    k = values.shape[2]
    bound = np.abs(values).max(initial=0.0) * np.sqrt(k) / step
    return bound < transform.MAX_VALUE / 4


def encode_frame(values, step, frame_mode, refs, max_candidates=prediction.DEFAULT_MAX_CANDIDATES,
                 rdo_lambda=0.0, quantizer=QUANTIZER_UNIFORM, kernel_shape=None, search=None):
    """Encode a frame (O, I, K) float64 in ``frame_mode`` against reconstructed ``refs``.

    ``refs`` lists reference reconstructions (O_r, I_r, K), nearest first; intra ignores them.
    ``rdo_lambda`` > 0 turns on rate-distortion optimized quantization of uniform levels
    with that Lagrange multiplier, in squared steps per bit. ``quantizer`` selects uniform
    or dependent quantization; block mode decisions always price uniform levels. A
    transform frame needs ``kernel_shape`` and values that pass :func:`transform_fits`.
    ``search``, the :func:`prediction.search_index` of the blocks that block matching
    searches (all references for ``full``, the first for ``adjacent``), saves building it.
    """
    if frame_mode == block_syntax.FRAME_TRANSFORM:
        values = np.ascontiguousarray(transform.forward(values, kernel_shape).transpose(0, 2, 1))
    else:
        kernel_shape = None
    rows, cols, k = values.shape
    syntax = None
    gain_num = 0
    if frame_mode in (block_syntax.FRAME_INTRA, block_syntax.FRAME_TRANSFORM):
        levels = quantization.quantize(values, step)
        residual = values
    else:
        syntax, levels, gain_num = _decide_frame(values, step, frame_mode, refs, max_candidates,
                                                 search)
        levels = levels.reshape(rows, cols, k)
        residual = values - reconstruct(np.zeros_like(levels), step, syntax, refs, gain_num)
    targets = np.ascontiguousarray(residual.reshape(rows, cols * k) / step)
    if quantizer == QUANTIZER_DEPENDENT:
        block_coded = _block_coded(syntax, rows, cols)
        levels = _dq_levels(targets, block_coded, k)
        rdo_lambda = 0.0
    if rdo_lambda <= 0:
        targets = residual_coding._NO_TARGETS
    payload, coded = _encode_payload(levels.reshape(rows, cols * k), k, frame_mode, syntax, refs,
                                     targets, rdo_lambda, quantizer == QUANTIZER_DEPENDENT)
    coded = coded.reshape(rows, cols, k)
    recon = reconstruct(coded, step, syntax, refs, gain_num, quantizer, kernel_shape)
    return FrameResult(payload, recon, frame_mode, gain_num, syntax)


def decode_frame(payload, shape, step, frame_mode, refs, gain_num, quantizer=QUANTIZER_UNIFORM,
                 kernel_shape=None):
    """Decode a frame payload; return (reconstruction (O, I, K), levels, syntax or None, coder).

    The caller checks ``coder[cabac.ERROR]`` and that all payload bytes were read. A
    transform frame needs ``kernel_shape``; when one of its coefficients exceeds
    ``transform.MAX_VALUE``, the reconstruction is None.
    """
    rows, cols, k = shape
    if frame_mode == block_syntax.FRAME_TRANSFORM:
        cols, k = k, cols  # coefficients are coded frequency by frequency
    buf = np.frombuffer(payload, dtype=np.uint8).copy()
    coder = cabac.new_coder(cabac.DECODE)
    cabac.start_decoder(coder, buf)
    probs, shifts = cabac.new_contexts(N_CONTEXTS)
    level_frame = np.zeros((rows, cols * k), dtype=np.int64)
    syntax = None
    if frame_mode in (block_syntax.FRAME_INTRA, block_syntax.FRAME_TRANSFORM):
        block_coded = np.ones((rows, cols), dtype=np.uint8)
    else:
        syntax = BlockSyntax(np.zeros((rows, cols), np.int8), np.ones((rows, cols), np.int8),
                             np.zeros((rows, cols), np.int64), np.zeros((rows, cols), np.int64))
        _code_block_syntax(coder, buf, probs, shifts, frame_mode, syntax, refs)
        block_coded = (syntax.modes != BLOCK_SKIP).astype(np.uint8)
    if not coder[cabac.ERROR]:
        level_decoder.decode_levels_into(coder, buf, probs, level_frame, k, block_coded,
                                         quantizer == QUANTIZER_DEPENDENT)
    levels = level_frame.reshape(rows, cols, k)
    if frame_mode == block_syntax.FRAME_TRANSFORM:
        values = step_values(levels, syntax, quantizer)
        if np.abs(values).max(initial=0) > transform.MAX_VALUE:
            return None, levels, syntax, coder
        recon = transform.inverse(values.transpose(0, 2, 1), step, kernel_shape)
        return recon, levels, syntax, coder
    recon = reconstruct(levels, step, syntax, refs, gain_num, quantizer)
    return recon, levels, syntax, coder


def non_texture_bits(shape, frame_mode, syntax, refs):
    """Return the cost in bits of a frame's block syntax, coded alone from fresh contexts."""
    if syntax is None:
        return 0.0
    coder = cabac.new_coder(cabac.ESTIMATE)
    probs, shifts = cabac.new_contexts(N_CONTEXTS)
    copy = BlockSyntax(syntax.modes.copy(), syntax.signs.copy(), syntax.slots.copy(),
                       syntax.indexes.copy())
    _code_block_syntax(coder, np.zeros(1, np.uint8), probs, shifts, frame_mode, copy, refs)
    return coder[cabac.COST] / (1 << cabac.COST_BITS)

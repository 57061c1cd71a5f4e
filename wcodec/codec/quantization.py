"""Uniform scalar quantization with the step sizes of MPEG NNC.

A quantization parameter ``qp`` (an integer) selects the step

    step = (4 + qp mod 4) * 2**(floor(qp / 4) - 2)

so qp = -32 gives 2**-8, every 4 qp the step doubles, and results compare with NNCodec at
equal qp. Steps are exact in float64 for every qp in [QP_MIN, QP_MAX].

A level is round(weight / step), rounding halves away from zero, and the reconstruction
is level * step computed in float64, exactly.
"""

import numpy as np
from numba import njit

QP_MIN = -256
QP_MAX = 255
DEFAULT_QP = -32
# Floating tensors with fewer than two dimensions (biases, norms) use a step 64 times finer.
FINE_QP_OFFSET = -24


def qp_to_step(qp):
    """Return the quantization step of ``qp`` as a float (exact)."""
    qp = int(qp)
    if not QP_MIN <= qp <= QP_MAX:
        raise ValueError(f"qp {qp} is outside [{QP_MIN}, {QP_MAX}]")
    return float((4 + qp % 4) * 2.0 ** (qp // 4 - 2))


def quantize(values, step):
    """Return the int64 levels of a float64 array at ``step`` (the caller bounds |values| / step)."""
    scaled = np.abs(values) / step
    magnitude = np.floor(scaled + 0.5)
    return (np.sign(values) * magnitude).astype(np.int64)


def dequantize(levels, step):
    """Return the float64 reconstruction level * step."""
    return levels.astype(np.float64) * step


# Dependent quantization (trellis-coded quantization with an 8-state machine).
#
# Two scalar quantizers share the step: Q0 reconstructs level k as 2k * step, Q1 as
# (2k - sign(k)) * step. The quantizer of each position is state & 1, and the state
# follows DQ_TRANSITIONS[state][parity of the level], so a decoder derives the quantizer
# without side information; the encoder picks the levels by a Viterbi search over the
# states (wcodec.codec.trellis). The state starts at 0 at every row and advances at every coded position.
# The table is the 8-state trellis of MPEG NNC (ISO/IEC 15938-17).
DQ_TRANSITIONS = np.array([[0, 2], [7, 5], [1, 3], [6, 4], [2, 0], [5, 7], [3, 1], [4, 6]],
                          dtype=np.int64)
DQ_STATES = 8


@njit(cache=True, nogil=True)
def dq_value(level, quantizer):
    """Return the reconstruction of ``level`` in steps under quantizer 0 or 1."""
    if quantizer == 0 or level == 0:
        return 2 * level
    return 2 * level - 1 if level > 0 else 2 * level + 1


@njit(cache=True, nogil=True)
def dq_reconstruct(levels, block_coded, block_size):
    """Return the reconstruction (O, R) in steps of dependent-quantized levels (O, R)."""
    rows, row_length = levels.shape
    out = np.zeros((rows, row_length), dtype=np.int64)
    for o in range(rows):
        state = 0
        for p in range(row_length):
            if not block_coded[o, p // block_size]:
                continue
            level = levels[o, p]
            out[o, p] = dq_value(level, state & 1)
            state = DQ_TRANSITIONS[state, level & 1]
    return out

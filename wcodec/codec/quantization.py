"""Uniform scalar quantization with the step sizes of MPEG NNC.

A quantization parameter ``qp`` (an integer) selects the step

    step = (4 + qp mod 4) * 2**(floor(qp / 4) - 2)

so qp = -32 gives 2**-8, every 4 qp the step doubles, and results compare with NNCodec at
equal qp. Steps are exact in float64 for every qp in [QP_MIN, QP_MAX].

A level is round(weight / step), rounding halves away from zero, and the reconstruction
is level * step computed in float64, exactly.
"""

import numpy as np

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

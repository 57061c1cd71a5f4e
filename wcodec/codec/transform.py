"""Kernel transform of intra frames: an integer DCT over the taps of each kernel.

Neighbouring taps of a trained k x k kernel are correlated, because trained kernels are
smooth. A discrete cosine transform over the taps therefore packs a kernel's energy into
few coefficients, as the transform of a video codec does for a block of pixels. A frame in mode
``transform`` codes the quantized DCT coefficients of each block instead of its weights.

The transform is defined by integers so that every decoder reconstructs the same bits:
the 1-D synthesis matrix of size n has the entries

    S_n[p, f] = round(2**PRECISION_BITS * c_f * cos(pi * (p + 1/2) * f / n)),
    c_0 = sqrt(1 / n), c_f = sqrt(2 / n) for f > 0,

(p the tap, f the frequency), and a kernel of shape (a, b) uses the Kronecker product
S_a (x) S_b over its row-major taps. A block's weights are

    w[p] = step * 2**-shift * sum_f S[p, f] * v[f],

with ``v`` the coefficients' reconstructions in steps (the levels, or the values of
dependent quantization) and ``shift`` PRECISION_BITS times the number of kernel
dimensions. The sum is exact in 64-bit integers for |v| <= MAX_VALUE, and the scaling
by a power of two is exact in float64.

The matrices are orthonormal up to the rounding of their entries, so quantization noise
keeps its energy through the transform. The encoder computes coefficients with the exact
inverse of S, so the rounding costs nothing but that small departure.
"""

import math

import numpy as np
from numba import njit

PRECISION_BITS = 14
MAX_KERNEL_DIMS = 2
MAX_KERNEL_SIDE = 8
MAX_VALUE = 1 << 26  # largest |v| of a coefficient; keeps the integer sums inside int64


def dct_synthesis(n):
    """Return the integer 1-D synthesis matrix S_n (n x n, int64) described above."""
    matrix = np.empty((n, n), dtype=np.int64)
    for p in range(n):
        for f in range(n):
            scale = math.sqrt((1.0 if f == 0 else 2.0) / n)
            matrix[p, f] = round(2 ** PRECISION_BITS * scale * math.cos(math.pi * (p + 0.5) * f / n))
    return matrix


def is_eligible(kernel_shape):
    """Return whether frames with this kernel shape (the dimensions after the first two) may use it."""
    kernel_shape = tuple(kernel_shape)
    return (1 <= len(kernel_shape) <= MAX_KERNEL_DIMS
            and all(1 <= side <= MAX_KERNEL_SIDE for side in kernel_shape)
            and math.prod(kernel_shape) > 1)


def kernel_synthesis(kernel_shape):
    """Return (S, shift): the integer synthesis matrix (K x K) of a kernel shape and its scale."""
    matrix = np.ones((1, 1), dtype=np.int64)
    for side in kernel_shape:
        matrix = np.kron(matrix, dct_synthesis(side))
    return matrix, PRECISION_BITS * len(kernel_shape)


def forward(blocks, kernel_shape):
    """Return the DCT coefficients (O, I, K) float64 of weight blocks (O, I, K), in weight units."""
    matrix, shift = kernel_synthesis(kernel_shape)
    analysis = np.linalg.inv(matrix.astype(np.float64) / 2.0 ** shift)
    # A fixed loop order, not BLAS, so the coefficients never depend on thread count.
    return _apply(np.ascontiguousarray(blocks, dtype=np.float64), analysis)


@njit(cache=True, nogil=True)
def _apply(values, matrix):
    """Return out[o, i, p] = sum over f of matrix[p, f] * values[o, i, f], summed in f order."""
    rows, cols, k = values.shape
    out = np.zeros((rows, cols, k), dtype=values.dtype)
    for o in range(rows):
        for i in range(cols):
            for p in range(k):
                total = out[o, i, p]
                for f in range(k):
                    total += matrix[p, f] * values[o, i, f]
                out[o, i, p] = total
    return out


def inverse(values, step, kernel_shape):
    """Return the float64 weights (O, I, K) of coefficient values (O, I, K) int64 in steps.

    The caller checks that no |value| exceeds MAX_VALUE.
    """
    matrix, shift = kernel_synthesis(kernel_shape)
    sums = _apply(np.ascontiguousarray(values, dtype=np.int64), matrix)
    return sums.astype(np.float64) * (step * 2.0 ** -shift)

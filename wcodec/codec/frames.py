"""Frames: how a tensor is laid out as rows of blocks for prediction and residual coding.

A weight of shape [O, I, k1, k2, ...] is a frame of O rows (output channels); each row has
I blocks (input channels) of K = k1 * k2 * ... weights, one kernel each. A 2-D weight
[O, I] (a linear layer) has K = 1. A tensor with fewer than two dimensions is one row of
blocks of one weight, and a 0-d scalar is a frame of one weight.
"""

from dataclasses import dataclass
from math import prod


@dataclass(frozen=True)
class FrameGeometry:
    """Rows, positions per row and positions per block of a frame."""

    rows: int
    row_length: int
    block_size: int

    @property
    def blocks_per_row(self):
        return self.row_length // self.block_size

    @property
    def size(self):
        return self.rows * self.row_length


def frame_geometry(shape):
    """Return the frame geometry of a tensor of ``shape`` (a tuple of ints with no zero)."""
    shape = tuple(int(d) for d in shape)
    if len(shape) < 2:
        return FrameGeometry(1, prod(shape), 1)
    block_size = prod(shape[2:])
    return FrameGeometry(shape[0], prod(shape[1:]), block_size)

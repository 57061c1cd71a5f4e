"""Frame ordering: the order in which the tensors of a model are coded.

Inter-layer prediction codes a frame from frames coded before it, so the coding order
decides which references are available. Safetensors files often list tensors
alphabetically (``layer.10`` before ``layer.9``), while prediction works best in network
depth order. :func:`order_tensors` returns the coding order as indexes into the list of
tensors. The methods are:

- ``file``: the order of the file's header.
- ``natural`` (the default): numeric-aware name order, see :func:`natural_key`.
- ``greedy``: chains of compatible frames, each frame placed right after the frame that
  predicts it best, see :func:`order_tensors`.

Two frames are compatible, meaning one may predict the other, when their kernel shapes
(every dimension after the first two) are equal.
"""

import math
import re

import numpy as np

from wcodec.formats.dtypes import dtype_by_name

ORDER_METHODS = ("file", "natural", "greedy")
DEFAULT_ORDER = "natural"

# re.ASCII keeps \d to 0-9: other Unicode digits (Arabic-Indic, fullwidth) stay text.
_DIGIT_RUNS = re.compile(r"(\d+)", re.ASCII)

# Run tags: a digit run sorts before a text run at the same position, as "0" < "a" in ASCII.
_DIGITS = 0
_TEXT = 1


def natural_key(name):
    """Return a sort key that orders names with their digit runs compared as integers.

    ``layer.9`` sorts before ``layer.10``. The key is a tuple with one entry per run of
    ASCII digits or of other characters. Digit runs compare by value without calling
    ``int``, so runs of any length work (``int`` rejects strings of more than 4300
    digits by default). Runs of equal value but different spelling order by length,
    so ``a.1`` < ``a.01`` < ``a.001``. Text runs compare by code point. Two names get
    equal keys only when they are equal, so sorting by this key is a total order.
    """
    key = []
    for position, run in enumerate(_DIGIT_RUNS.split(name)):
        if not run:
            continue
        if position % 2:
            value = run.lstrip("0")
            # A longer run without leading zeros is a larger integer; equal lengths compare
            # digit by digit. The run's own length breaks ties between "1" and "01".
            key.append((_DIGITS, len(value), value, len(run)))
        else:
            key.append((_TEXT, 0, run, 0))
    return tuple(key)


def is_frame(info):
    """Return whether a tensor is a frame: a floating dtype, two or more dimensions, no zero.

    ``info`` is a TensorInfo or any object with ``dtype`` (a safetensors dtype name) and
    ``shape``. Raises InputError for a dtype name that wcodec does not support.
    """
    shape = tuple(info.shape)
    if len(shape) < 2 or 0 in shape:
        return False
    return dtype_by_name(info.dtype).kind == "float"


def kernel_shape(shape):
    """Return the kernel shape of a frame: every dimension after [O, I], () for a 2-D frame."""
    return tuple(int(dim) for dim in shape[2:])


def _as_blocks(frame):
    """Return a frame of shape [O, I, ...] as a float64 array of shape (O, I, K)."""
    array = np.asarray(frame, dtype=np.float64)
    return array.reshape(array.shape[0], array.shape[1], -1)


def collocated_residual_energy(cur, ref):
    """Return the relative energy of the residual when ``ref`` predicts ``cur`` block by block.

    ``cur`` and ``ref`` are frames with ndim >= 2 and equal kernel shapes. Block (o, i) of
    ``cur`` is predicted by block (o, i) of ``ref``, for the overlapping blocks
    o < min(O_cur, O_ref) and i < min(I_cur, I_ref). The result is
    sum((cur - ref)**2) / sum(cur**2) over those blocks: 0 for a perfect prediction and
    1 for a prediction no better than zero.

    Conventions for a zero denominator: the result is inf when the overlap is empty or
    when cur is zero on it but ref is not, and 0.0 when both are zero on it (a perfect
    prediction). NaN or infinite weights give NaN or inf. Raises ValueError for
    ndim < 2 or different kernel shapes.
    """
    cur = np.asarray(cur)
    ref = np.asarray(ref)
    if cur.ndim < 2 or ref.ndim < 2:
        raise ValueError(f"frames need at least two dimensions, got shapes {cur.shape} and {ref.shape}")
    if kernel_shape(cur.shape) != kernel_shape(ref.shape):
        raise ValueError(
            f"frames of shapes {cur.shape} and {ref.shape} have different kernel shapes, so neither predicts the other"
        )

    rows = min(cur.shape[0], ref.shape[0])
    columns = min(cur.shape[1], ref.shape[1])
    if rows == 0 or columns == 0 or math.prod(cur.shape[2:]) == 0:
        return math.inf

    cur_overlap = _as_blocks(cur)[:rows, :columns]
    ref_overlap = _as_blocks(ref)[:rows, :columns]
    residual = float(np.sum(np.square(cur_overlap - ref_overlap)))
    energy = float(np.sum(np.square(cur_overlap)))
    if energy == 0.0:
        return 0.0 if residual == 0.0 else math.inf
    return residual / energy


def order_tensors(infos, method=DEFAULT_ORDER, load=None):
    """Return the coding order of ``infos`` (a list of TensorInfo) as a list of indexes into it.

    ``file`` keeps the stored order and ``natural`` sorts stably by :func:`natural_key`
    of the name.

    ``greedy`` builds chains of compatible frames. It starts with the first frame in
    natural order. Then, among the remaining frames compatible with the last coded
    frame, it appends the one with the lowest :func:`collocated_residual_energy`
    against it, ties going to the earlier frame in natural order. When no remaining
    frame is compatible, it continues with the next remaining frame in natural order.
    Tensors that are not frames (see :func:`is_frame`) come after all frames, in
    natural order. ``load(index)`` must return the values of ``infos[index]`` as a
    float64 array of its shape. Greedy calls it at most once per frame, and only
    for frames that share their kernel shape with another frame.

    Raises ValueError for an unknown method, or for ``greedy`` without ``load``.
    """
    if method not in ORDER_METHODS:
        raise ValueError(f"unknown frame order {method!r}; valid orders are {', '.join(ORDER_METHODS)}")
    if method == "file":
        return list(range(len(infos)))

    natural = sorted(range(len(infos)), key=lambda index: natural_key(infos[index].name))
    if method == "natural":
        return natural

    if load is None:
        raise ValueError("the greedy frame order needs load(index) to read tensor values")
    frames = [index for index in natural if is_frame(infos[index])]
    others = [index for index in natural if not is_frame(infos[index])]
    return _greedy_chains(infos, frames, load) + others


def _greedy_chains(infos, frames, load):
    """Return ``frames`` (indexes in natural order) reordered into greedy prediction chains."""
    # A chain takes every remaining frame of its kernel shape before it ends, so the cache
    # contains the frames of one kernel shape at a time. NOTE: for a model whose frames share
    # one kernel shape, that is the whole model in float64.
    cache = {}

    def values(index):
        if index not in cache:
            cache[index] = np.asarray(load(index), dtype=np.float64)
        return cache[index]

    remaining = list(frames)
    order = []
    while remaining:
        last = remaining.pop(0)
        order.append(last)
        while True:
            shape = kernel_shape(infos[last].shape)
            candidates = [index for index in remaining if kernel_shape(infos[index].shape) == shape]
            if not candidates:
                break
            reference = values(last)
            best_energy = math.inf
            best = candidates[0]
            for index in candidates:
                energy = collocated_residual_energy(values(index), reference)
                # A NaN energy (NaN or infinite weights) never compares lower. When no energy
                # is finite, the earliest candidate in natural order comes next.
                if energy < best_energy:
                    best_energy = energy
                    best = index
            remaining.remove(best)
            order.append(best)
            last = best
        cache.clear()
    return order

"""Training-side support for inter-layer prediction: the inter-layer loss.

Collocated prediction codes a frame (a weight tensor [O, I, k1, k2, ...]) as the quantized
residual against an earlier reconstructed frame: block (o, i) of the reference predicts
block (o, i) of the frame. The residual, and so the bitstream, is small only when the
two layers hold similar weights at the same (out, in) positions. An ordinary training run
has no reason to make them similar. Following K.-H. Lee, J. Jeong and S.-H. Bae, "An
Inter-Layer Weight Prediction and Quantization for Deep Neural Networks based on a
Smoothly Varying Weight Hypothesis" (arXiv:1907.06835), :class:`InterLayerLoss` adds a
penalty on the distance between each frame and its collocated reference, so training
itself produces weights that collocated prediction codes cheaply.

The pairs are the ones the encoder uses (:func:`collocated_pairs`), so the loss pulls
each weight towards the very tensor that will predict it in the ``.wbs`` file.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping

import torch

from wcodec.codec import ordering
from wcodec.encoder import matches_pattern
from wcodec.errors import InputError
from wcodec.formats.dtypes import dtype_by_torch
from wcodec.formats.safetensors_io import TensorInfo

logger = logging.getLogger(__name__)

DEFAULT_WEIGHT = 1e-4
EXPONENTS = (1, 2)


def collocated_pairs(tensors: Mapping[str, torch.Tensor], keep: Iterable[str] = ()):
    """Return the collocated references the encoder would use, as ``[(name, reference_name)]``.

    ``tensors`` maps names to tensors as a safetensors file saved from it would store them,
    for example ``model.state_dict()``. The walk mirrors ``wcodec.encoder.encode_file`` with
    its default frame order (``natural``). Values that are not tensors, or whose dtype
    wcodec does not support, are left out, as they cannot be in the file or be frames.

    - tensors are visited in :func:`wcodec.codec.ordering.order_tensors` natural order;
    - only frames (:func:`wcodec.codec.ordering.is_frame`: floating dtype, two or more
      dimensions, no zero dimension) predict or are predicted;
    - a frame matching a ``keep`` pattern is stored bit-exact, so it is no reference;
    - a frame that views the same memory as an earlier frame (tied weights) is stored as
      an alias of it, so it is no reference either;
    - every other frame's reference is the most recent earlier frame with the same kernel
      shape (dimensions after [O, I]). The first frame of each kernel shape has none.

    Pairs come in coding order. NOTE: the encoder decides aliases by comparing bytes, so
    two distinct tensors that happen to be equal when the file is written (for example two
    layers initialized to zero and never trained) also become an alias there. A frame
    holding NaN or Inf, or values too large for the qp, is stored bit-exact and likewise
    stops being a reference. Neither can be known before encoding.
    """
    keep = tuple(keep)
    names = [name for name, tensor in tensors.items() if _is_supported(tensor)]
    infos = [TensorInfo(name, dtype_by_torch(tensors[name].dtype).name,
                        tuple(tensors[name].shape)) for name in names]
    seen_storage = set()
    latest_by_kernel = {}
    pairs = []
    for index in ordering.order_tensors(infos, "natural"):
        name = names[index]
        info = infos[index]
        if not ordering.is_frame(info):
            continue
        storage = _storage_key(tensors[name])
        if storage in seen_storage:
            continue
        seen_storage.add(storage)
        if any(matches_pattern(name, pattern) for pattern in keep):
            continue
        kernel = ordering.kernel_shape(info.shape)
        if kernel in latest_by_kernel:
            pairs.append((name, latest_by_kernel[kernel]))
        latest_by_kernel[kernel] = name
    return pairs


def _is_supported(value):
    """Return whether a state-dict value is a tensor of a dtype that safetensors and wcodec store."""
    if not isinstance(value, torch.Tensor):
        return False
    try:
        dtype_by_torch(value.dtype)
    except InputError:
        return False
    return True


def _storage_key(tensor):
    """Return a key equal for two tensors that view the same elements of the same memory."""
    if tensor.device.type == "meta":
        # Meta tensors have no memory, so only the object identity distinguishes them.
        return id(tensor)
    return (tensor.device, tensor.dtype, tuple(tensor.shape), tensor.stride(), tensor.data_ptr())


class InterLayerLoss(torch.nn.Module):
    """Penalty on the distance between each weight and its collocated reference.

    ``forward()`` takes no arguments and returns a 0-d tensor::

        weight * sum over pairs (w, r) of mean(|w[:O, :I] - r[:O, :I]| ** p)

    where O and I are the smaller output and input channel counts of the pair, so the mean
    runs over the overlapping collocated blocks, each with its full kernel. Gradients flow
    into both tensors of a pair. Add the result to the task loss::

        inter_layer = InterLayerLoss(model, weight=10.0)
        loss = criterion(model(x), y) + inter_layer()

    Pairs (:attr:`pairs`) are those of :func:`collocated_pairs` on
    ``model.state_dict()``: each frame with the frame that ``wcodec encode --mode
    collocated`` predicts it from, when the state dict is saved to safetensors as is and
    encoded with the default frame order. Buffers take part in the walk like parameters,
    because the encoder codes them too. A buffer or frozen parameter in a pair acts as a
    fixed target. The pairs are found once, at construction. Build the loss after any
    change to the model's structure.

    ``weight``: factor of the sum (>= 0). Because each pair contributes a mean, the
    gradient on one element is about ``weight * p * |d| ** (p - 1) / N`` for a pair of N
    overlapping elements, so larger layers need a larger weight for the same pull. The
    default 1e-4 barely moves a network of a few hundred thousand weights. On the
    ResNet-20 of ``bench/accuracy.py`` (SGD, learning rate 0.1) weights 3 to 10 worked.
    ``p``: 1 (mean absolute difference, which drives many differences to near zero) or 2
    (mean squared difference). ``include_linear``:
    also pair 2-D weights (linear layers, embeddings), which the encoder predicts from
    each other as frames with 1x1 blocks. By default only tensors with three or more
    dimensions (convolutions) are paired. ``keep``: the ``--keep`` patterns of the
    encode, whose tensors are stored bit-exact and predict nothing.

    Raises ValueError for an invalid ``weight`` or ``p``.
    """

    def __init__(self, model: torch.nn.Module, weight: float = DEFAULT_WEIGHT, p: int = 1,
                 include_linear: bool = False, keep: Iterable[str] = ()):
        super().__init__()
        weight = float(weight)
        if not math.isfinite(weight) or weight < 0:
            raise ValueError(f"weight must be a finite number >= 0, got {weight!r}")
        if isinstance(p, bool) or p not in EXPONENTS:
            raise ValueError(f"p must be 1 or 2, got {p!r}")
        self.weight = weight
        self.p = p
        self.include_linear = include_linear

        # keep_vars=True returns the Parameter objects themselves, so the loss reads the live
        # values. They are held in a plain list instead of being registered, so the loss
        # owns no parameters or state of the model.
        tensors = model.state_dict(keep_vars=True)
        min_ndim = 2 if include_linear else 3
        self.pairs = [(name, ref) for name, ref in collocated_pairs(tensors, keep)
                      if tensors[name].ndim >= min_ndim]
        self._tensor_pairs = [(tensors[name], tensors[ref]) for name, ref in self.pairs]
        if not self.pairs:
            logger.warning("InterLayerLoss found no pair of weights with equal kernel shapes "
                           "in %s, so the loss is always 0 (include_linear=%s)",
                           type(model).__name__, include_linear)

    def forward(self) -> torch.Tensor:
        total = None
        for tensor, reference in self._tensor_pairs:
            rows = min(tensor.shape[0], reference.shape[0])
            columns = min(tensor.shape[1], reference.shape[1])
            difference = tensor[:rows, :columns] - reference[:rows, :columns]
            if self.p == 1:
                distance = difference.abs().mean()
            else:
                distance = difference.square().mean()
            total = distance if total is None else total + distance
        if total is None:
            return torch.zeros(())
        return self.weight * total

    def extra_repr(self) -> str:
        return (f"weight={self.weight:g}, p={self.p}, include_linear={self.include_linear}, "
                f"pairs={len(self.pairs)}")

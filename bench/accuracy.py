"""Test accuracy against compression ratio with and without the inter-layer loss.

Checks the claim of K.-H. Lee, J. Jeong and S.-H. Bae, "An Inter-Layer Weight Prediction
and Quantization for Deep Neural Networks based on a Smoothly Varying Weight Hypothesis"
(arXiv:1907.06835): training with an inter-layer loss, then coding each layer as the
quantized residual of its collocated predecessor, reaches a much higher compression ratio
at the same accuracy than quantization alone.

Data: scikit-learn's bundled digits (1797 8x8 grayscale images, no download), with one
fixed stratified train/test split. Model: a CIFAR-style ResNet-20 (three stages of three
basic blocks with 16, 32 and 64 channels, parameter-free shortcuts) on 8x8 single-channel
input, trained on the CPU with fixed seeds. Variants:

- ``plain``: trained without the loss;
- ``ilw W``: trained from the same seed with ``InterLayerLoss(weight=W, p=1)`` added;
- ``plain+ft`` and ``ilw W ft``: ``plain`` fine-tuned without and with the loss, at a
  tenth of the learning rate (full run only).

Each variant's weights (every float tensor of the state dict) are coded at every qp of a
sweep with wcodec (intra, collocated and auto prediction), with uniform quantization plus
zstd, and with NNCodec when its venv is available, then decoded, loaded back and scored
on the test set. The compression ratio is the float32 size of all coded tensors over the
coded bytes. Outputs a markdown page and a plot of accuracy against compression ratio.

    python bench/accuracy.py            # full run, about 5 minutes on 2 cores
    python bench/accuracy.py --quick    # fewer epochs, variants and qps, under 2 minutes

The full run also trains ``plain`` with two more seeds and reports their float accuracy,
the noise floor for comparing variants.
"""

import argparse
import dataclasses
import io
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

import wcodec  # noqa: E402
from wcodec.codec import quantization  # noqa: E402
from wcodec.train import InterLayerLoss  # noqa: E402

BENCH_DIR = Path(__file__).resolve().parent
WCODEC_MODES = ("intra", "collocated", "auto")
ACCURACY_TOLERANCE = 0.5  # percentage points below the float plain model
ZSTD_LEVEL = 19


@dataclass(frozen=True)
class Settings:
    """Parameters of one benchmark run."""

    epochs: int = 30
    finetune_epochs: int = 20
    learning_rate: float = 0.1
    finetune_learning_rate: float = 0.01
    weight_decay: float = 5e-4
    batch_size: int = 64
    loss_weights: tuple = (3.0, 10.0, 30.0)
    finetune_loss_weights: tuple = (100.0,)
    qps: tuple = tuple(range(-42, -13, 2))
    test_count: int = 600  # one image is 1/6 point, so 0.5 points are 3 images
    seed: int = 0
    spread_seeds: tuple = (1, 2)
    nncodec: bool = True


QUICK = Settings(epochs=15, loss_weights=(10.0,), finetune_loss_weights=(), spread_seeds=(),
                 qps=(-36, -32, -28, -24, -20, -16))

# A qp sweep stops after a qp at which every method scores below this accuracy (percent),
# because coarser steps only lose more.
COLLAPSED_ACCURACY = 50.0


# ---------------------------------------------------------------- data and model

def load_digits_split(settings):
    """Return (x_train, y_train, x_test, y_test) as tensors, standardized with training statistics."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = digits.images.astype(np.float32)[:, None]
    x_train, x_test, y_train, y_test = train_test_split(
        images, digits.target, test_size=settings.test_count, stratify=digits.target,
        random_state=settings.seed)
    mean = x_train.mean()
    std = x_train.std()
    return (torch.from_numpy((x_train - mean) / std), torch.from_numpy(y_train),
            torch.from_numpy((x_test - mean) / std), torch.from_numpy(y_test))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and a parameter-free shortcut.

    When the block halves the resolution and widens the channels, the shortcut subsamples
    the input and pads the new channels with zeros, as in the CIFAR ResNets of He et al.
    (option A), so every convolution of the network is 3x3.
    """

    def __init__(self, in_channels, out_channels, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.stride = stride
        self.extra_channels = out_channels - in_channels

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x[:, :, ::self.stride, ::self.stride]
        if self.extra_channels:
            shortcut = F.pad(shortcut, (0, 0, 0, 0, 0, self.extra_channels))
        return F.relu(out + shortcut)


class DigitsResNet20(nn.Module):
    """ResNet-20 for 8x8 single-channel images: 8x8, 4x4 and 2x2 feature maps, 10 classes."""

    def __init__(self, widths=(16, 32, 64), blocks_per_stage=3, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        stages = []
        in_channels = widths[0]
        for stage, width in enumerate(widths):
            blocks = []
            for block in range(blocks_per_stage):
                stride = 2 if stage > 0 and block == 0 else 1
                blocks.append(BasicBlock(in_channels, width, stride))
                in_channels = width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(widths[-1], classes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.fc(out.mean(dim=(2, 3)))


# ---------------------------------------------------------------- training

def train(model, data, epochs, learning_rate, settings, seed, inter_layer=None):
    """Train with SGD (momentum 0.9, cosine schedule) on the training split; return seconds."""
    x_train, y_train, _, _ = data
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=learning_rate, momentum=0.9,
                                nesterov=True, weight_decay=settings.weight_decay)
    steps_per_epoch = math.ceil(len(x_train) / settings.batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * steps_per_epoch)
    start = time.perf_counter()
    model.train()
    for _ in range(epochs):
        permutation = torch.randperm(len(x_train), generator=generator)
        for first in range(0, len(x_train), settings.batch_size):
            batch = permutation[first:first + settings.batch_size]
            loss = F.cross_entropy(model(shift_images(x_train[batch], generator)), y_train[batch])
            if inter_layer is not None:
                loss = loss + inter_layer()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
    model.eval()
    return time.perf_counter() - start


def shift_images(images, generator):
    """Shift each image by up to one pixel in each direction, filling with the border value."""
    padded = F.pad(images, (1, 1, 1, 1), mode="replicate")
    offsets = torch.randint(0, 3, (len(images), 2), generator=generator)
    height, width = images.shape[2:]
    return torch.stack([padded[i, :, dy:dy + height, dx:dx + width]
                        for i, (dy, dx) in enumerate(offsets.tolist())])


@torch.no_grad()
def accuracy(model, x, y):
    """Return the accuracy of ``model`` on (x, y) in percent."""
    model.eval()
    correct = int((model(x).argmax(dim=1) == y).sum())
    return 100.0 * correct / len(y)


def exported_tensors(model):
    """Return the float tensors of the state dict as contiguous copies.

    Batch norm's ``num_batches_tracked`` counters are left out: they are int64 training
    state that inference never reads, and NNCodec codes float32 arrays only.
    """
    return {name: tensor.detach().clone().contiguous()
            for name, tensor in model.state_dict().items() if tensor.is_floating_point()}


def accuracy_of_weights(tensors, data):
    """Load coded-and-decoded tensors into a fresh model; return its test accuracy in percent."""
    model = DigitsResNet20()
    missing, unexpected = model.load_state_dict(
        {name: torch.as_tensor(value) for name, value in tensors.items()}, strict=False)
    if unexpected or any(not name.endswith("num_batches_tracked") for name in missing):
        raise RuntimeError(f"decoded weights do not fit the model: missing {missing}, "
                           f"unexpected {unexpected}")
    _, _, x_test, y_test = data
    return accuracy(model, x_test, y_test)


# ---------------------------------------------------------------- codecs

def code_wcodec(tensors, qp, mode, workdir):
    """Encode with wcodec and decode; return (coded bytes, decoded tensors)."""
    from safetensors.torch import save_file

    source = os.path.join(workdir, "weights.safetensors")
    coded = os.path.join(workdir, f"weights_{mode}.wbs")
    save_file(tensors, source)
    wcodec.encode_file(source, coded, qp=qp, mode=mode, force=True)
    return os.path.getsize(coded), wcodec.load(coded)


def code_uniform_zstd(tensors, qp):
    """Quantize uniformly, compress with zstd and decode; return (coded bytes, decoded tensors).

    Tensors with two or more dimensions use the step of ``qp``, the others a step 64 times
    finer, as wcodec does. Levels are stored as little-endian integers in one of two
    layouts, and the smaller result is kept. Either each tensor gets the narrowest of int8,
    int16, int32 and int64 that fits it, or all tensors of two or more dimensions share
    one, so that equal weights in two layers are equal bytes that zstd's matching can find.
    One zstd frame contains a JSON header (names, shapes, qps, level dtypes) followed by
    the levels of every tensor, so the count is that of a complete, decodable file.
    """
    import zstandard

    levels = {}
    qps = {}
    for name, tensor in tensors.items():
        qps[name] = qp if tensor.ndim >= 2 else qp + quantization.FINE_QP_OFFSET
        step = quantization.qp_to_step(qps[name])
        levels[name] = quantization.quantize(tensor.numpy().astype(np.float64), step)
    own_dtypes = {name: _narrowest_int_dtype([array]) for name, array in levels.items()}
    frame_dtype = _narrowest_int_dtype(
        [levels[name] for name, tensor in tensors.items() if tensor.ndim >= 2])
    shared_dtypes = {name: frame_dtype if tensor.ndim >= 2 else own_dtypes[name]
                     for name, tensor in tensors.items()}

    compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
    candidates = []
    for dtypes_by_name in (own_dtypes, shared_dtypes):
        header = [[name, list(tensor.shape), qps[name], dtypes_by_name[name].str]
                  for name, tensor in tensors.items()]
        header_bytes = json.dumps(header).encode()
        chunks = [levels[name].astype(dtypes_by_name[name]).tobytes() for name in tensors]
        stream = len(header_bytes).to_bytes(4, "little") + header_bytes + b"".join(chunks)
        candidates.append(compressor.compress(stream))
    compressed = min(candidates, key=len)
    return len(compressed), _decode_uniform_zstd(compressed)


def _narrowest_int_dtype(arrays):
    """Return the narrowest little-endian signed integer dtype that fits every array."""
    low = min((int(array.min()) for array in arrays if array.size), default=0)
    high = max((int(array.max()) for array in arrays if array.size), default=0)
    for dtype in (np.int8, np.int16, np.int32):
        info = np.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return np.dtype(dtype).newbyteorder("<")
    return np.dtype(np.int64).newbyteorder("<")


def _decode_uniform_zstd(compressed):
    import zstandard

    stream = zstandard.ZstdDecompressor().decompress(compressed)
    header_length = int.from_bytes(stream[:4], "little")
    header = json.loads(stream[4:4 + header_length])
    reader = io.BytesIO(stream[4 + header_length:])
    decoded = {}
    for name, shape, tensor_qp, dtype_str in header:
        dtype = np.dtype(dtype_str)
        count = math.prod(shape)
        levels = np.frombuffer(reader.read(count * dtype.itemsize), dtype=dtype)
        values = quantization.dequantize(levels, quantization.qp_to_step(tensor_qp))
        decoded[name] = torch.from_numpy(values.astype(np.float32).reshape(shape))
    return decoded


def code_nncodec(tensors, qp):
    """Encode and decode with NNCodec; return (coded bytes, decoded tensors).

    ``nonweight_qp = qp - 24`` codes 1-D tensors with the step 64 times finer that wcodec
    and the uniform baseline use. NNCodec's other options keep their defaults, dependent
    quantization included.
    """
    from anchors.nncodec import run_nncodec

    arrays = {name: tensor.numpy().astype(np.float32) for name, tensor in tensors.items()}
    result = run_nncodec(arrays, qp, nonweight_qp=qp + quantization.FINE_QP_OFFSET)
    return result.bytes, {name: torch.from_numpy(array) for name, array in result.decoded.items()}


def nncodec_version_or_reason():
    """Return (True, NNCodec version) when the anchor runs, else (False, reason)."""
    try:
        from anchors.nncodec import nncodec_available
    except ImportError as error:
        return False, f"cannot import bench/anchors/nncodec.py: {error}"
    if not nncodec_available():
        return False, "the NNCodec venv could not be built (see the warning above)"
    from anchors import nncodec_env

    stamp = json.loads((nncodec_env.VENV_DIR / nncodec_env.STAMP_NAME).read_text())
    return True, stamp.get("nncodec_version", "unknown version")


# ---------------------------------------------------------------- measurement

@dataclass
class Point:
    """One coded model: method, variant, qp, size and test accuracy."""

    variant: str
    method: str
    qp: int
    coded_bytes: int
    ratio: float
    accuracy: float


@dataclass
class Variant:
    """A trained model of the benchmark and its float test accuracy."""

    name: str
    tensors: dict
    float_accuracy: float
    train_seconds: float
    inter_layer_value: float
    points: list = field(default_factory=list)


def train_variants(settings, data):
    """Train ``plain`` and the ``ilw W`` variants from the same seed, then fine-tune ``plain``.

    The fine-tuned variants (``plain+ft`` without the loss, ``ilw W ft`` with it) run only
    when ``settings.finetune_loss_weights`` is not empty.
    """
    variants = []
    for weight in (0.0,) + tuple(settings.loss_weights):
        torch.manual_seed(settings.seed)
        model = DigitsResNet20()
        inter_layer = InterLayerLoss(model, weight=weight, p=1) if weight else None
        seconds = train(model, data, settings.epochs, settings.learning_rate, settings,
                        settings.seed, inter_layer)
        variants.append(_variant(f"ilw {weight:g}" if weight else "plain", model, data, seconds))
        if not weight:
            plain = model

    if settings.finetune_loss_weights:
        for weight in (0.0,) + tuple(settings.finetune_loss_weights):
            model = DigitsResNet20()
            model.load_state_dict(plain.state_dict())
            inter_layer = InterLayerLoss(model, weight=weight, p=1) if weight else None
            seconds = train(model, data, settings.finetune_epochs,
                            settings.finetune_learning_rate, settings, settings.seed + 1,
                            inter_layer)
            name = f"ilw {weight:g} ft" if weight else "plain+ft"
            variants.append(_variant(name, model, data, seconds))
    return variants


def seed_spread(settings, data):
    """Return the float test accuracies of ``plain`` trained with the other seeds."""
    accuracies = []
    _, _, x_test, y_test = data
    for seed in settings.spread_seeds:
        torch.manual_seed(seed)
        model = DigitsResNet20()
        train(model, data, settings.epochs, settings.learning_rate, settings, seed)
        accuracies.append(accuracy(model, x_test, y_test))
        print(f"plain with seed {seed}: {accuracies[-1]:.2f}% test accuracy", flush=True)
    return accuracies


def _variant(name, model, data, seconds):
    _, _, x_test, y_test = data
    distance = InterLayerLoss(model, weight=1.0, p=1)
    with torch.no_grad():
        mean_distance = distance().item() / len(distance.pairs)
    variant = Variant(name, exported_tensors(model), accuracy(model, x_test, y_test), seconds,
                      mean_distance)
    print(f"trained {name} in {seconds:.1f} s: {variant.float_accuracy:.2f}% test accuracy, "
          f"mean collocated distance {mean_distance:.4f}", flush=True)
    return variant


def measure_variant(variant, settings, data, workdir, use_nncodec):
    """Code ``variant`` with every method at every qp and append the points."""
    float_bytes = 4 * sum(tensor.numel() for tensor in variant.tensors.values())
    methods = [(f"wcodec {mode}", lambda qp, mode=mode: code_wcodec(variant.tensors, qp, mode,
                                                                     workdir))
               for mode in WCODEC_MODES]
    methods.append(("uniform+zstd", lambda qp: code_uniform_zstd(variant.tensors, qp)))
    if use_nncodec:
        methods.append(("NNCodec", lambda qp: code_nncodec(variant.tensors, qp)))
    for qp in sorted(settings.qps):
        for method, code in methods:
            coded_bytes, decoded = code(qp)
            variant.points.append(Point(variant.name, method, qp, coded_bytes,
                                        float_bytes / coded_bytes,
                                        accuracy_of_weights(decoded, data)))
        print(f"  {variant.name} qp {qp}: " + ", ".join(
            f"{p.method} {p.ratio:.1f}x {p.accuracy:.2f}%" for p in variant.points[-len(methods):]),
            flush=True)
        if max(p.accuracy for p in variant.points[-len(methods):]) < COLLAPSED_ACCURACY:
            break


# ---------------------------------------------------------------- reporting

def best_within_tolerance(points, reference_accuracy):
    """Return the point with the highest ratio whose accuracy is at most 0.5 points below."""
    # The slack absorbs float rounding, so losing exactly 0.5 points (3 of 600 images) passes.
    eligible = [p for p in points if p.accuracy >= reference_accuracy - ACCURACY_TOLERANCE - 1e-6]
    return max(eligible, key=lambda p: p.ratio, default=None)


def headline_lines(variants, reference_accuracy):
    """Return one line per (variant, method) with its best ratio within the tolerance."""
    lines = []
    for variant in variants:
        for method in dict.fromkeys(p.method for p in variant.points):
            points = [p for p in variant.points if p.method == method]
            best = best_within_tolerance(points, reference_accuracy)
            label = f"{method} on {variant.name}"
            if best is None:
                lines.append(f"headline: {label}: no qp within {ACCURACY_TOLERANCE} points")
            else:
                lines.append(f"headline: {label}: {best.ratio:.1f}x at qp {best.qp} "
                             f"({best.coded_bytes} bytes), {best.accuracy:.2f}% accuracy")
    return lines


def claim_lines(variants, reference_accuracy):
    """Compare the loss plus prediction with quantization alone, each at its best.

    The baselines take the best point of the models trained without the loss (``plain``
    and ``plain+ft``), and the inter-layer result the best of wcodec collocated and auto
    over every loss weight. Both choices are made on the test set. The ablation lines show
    what the loss gives without prediction.
    """
    without_loss = [p for v in variants if not v.name.startswith("ilw") for p in v.points]
    with_loss = [p for v in variants if v.name.startswith("ilw") for p in v.points]
    best = best_within_tolerance(
        [p for p in with_loss if p.method in ("wcodec collocated", "wcodec auto")],
        reference_accuracy)
    lines = []
    for method in ("uniform+zstd", "wcodec intra", "NNCodec"):
        baseline = best_within_tolerance([p for p in without_loss if p.method == method],
                                         reference_accuracy)
        if best is None or baseline is None:
            continue
        lines.append(f"claim: loss + prediction ({best.method} on {best.variant}, "
                     f"{best.ratio:.1f}x) vs {method} without the loss ({baseline.variant}, "
                     f"{baseline.ratio:.1f}x): {best.ratio / baseline.ratio:.2f} times the ratio")
    for method in ("uniform+zstd", "wcodec intra"):
        ablation = best_within_tolerance([p for p in with_loss if p.method == method],
                                         reference_accuracy)
        if ablation is not None:
            lines.append(f"ablation: loss without prediction ({method} on {ablation.variant}): "
                         f"{ablation.ratio:.1f}x")
    return lines


def equal_qp_lines(variants):
    """Compare coded sizes at equal qp, which does not depend on accuracy noise.

    For each variant, the median over the qps of the sweep of the size ratio between wcodec
    collocated and each of wcodec intra and uniform+zstd, with the range.
    """
    lines = []
    for variant in variants:
        by_key = {(p.method, p.qp): p.coded_bytes for p in variant.points}
        qps = sorted({p.qp for p in variant.points})
        parts = []
        for method in ("wcodec intra", "uniform+zstd"):
            ratios = [by_key[(method, qp)] / by_key[("wcodec collocated", qp)] for qp in qps
                      if (method, qp) in by_key and ("wcodec collocated", qp) in by_key]
            if ratios:
                parts.append(f"{method} is {np.median(ratios):.2f} times as large "
                             f"({min(ratios):.2f} to {max(ratios):.2f})")
        lines.append(f"equal qp, {variant.name}: against wcodec collocated, " + ", ".join(parts))
    return lines


def variant_table(variant, methods):
    """Return a markdown table of ratio and accuracy by qp and method for one variant."""
    header = "| qp | step | " + " | ".join(methods) + " |"
    rule = "|---|---|" + "---|" * len(methods)
    rows = [header, rule]
    for qp in dict.fromkeys(p.qp for p in variant.points):
        cells = []
        for method in methods:
            point = next((p for p in variant.points if p.qp == qp and p.method == method), None)
            cells.append("" if point is None else f"{point.ratio:.1f}x, {point.accuracy:.2f}%")
        rows.append(f"| {qp} | {quantization.qp_to_step(qp):.4g} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def plot(variants, reference_accuracy, path):
    """Write accuracy against compression ratio: every method on the plain model (left), and
    wcodec collocated on each other variant next to the plain model's baselines (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 5), sharey=True)
    plain = next(v for v in variants if v.name == "plain")
    for method in dict.fromkeys(p.method for p in plain.points):
        _plot_curve(left, [p for p in plain.points if p.method == method], method)
    left.set_title("plain model (no inter-layer loss)")

    for method in ("uniform+zstd", "wcodec intra"):
        _plot_curve(right, [p for p in plain.points if p.method == method],
                    f"plain, {method}", ":", color="black" if method == "wcodec intra" else "gray")
    for variant in variants:
        if variant.name != "plain":
            _plot_curve(right, [p for p in variant.points if p.method == "wcodec collocated"],
                        f"{variant.name}, wcodec collocated")
    right.set_title("other variants, wcodec collocated")

    for axes in (left, right):
        axes.axhline(reference_accuracy - ACCURACY_TOLERANCE, color="gray", linewidth=0.8,
                     linestyle="--", label=f"float plain - {ACCURACY_TOLERANCE} points")
        axes.set_xscale("log")
        axes.xaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
        axes.xaxis.set_minor_formatter(ticker.FormatStrFormatter("%g"))
        axes.set_xlabel("compression ratio (float32 bytes / coded bytes)")
        axes.set_ylim(max(0.0, reference_accuracy - 10.0), 100.0)
        axes.grid(True, which="both", linewidth=0.3)
        axes.legend(fontsize=7, loc="lower left")
    left.set_ylabel("test accuracy (%)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _plot_curve(axes, points, label, style="-", color=None):
    points = sorted(points, key=lambda p: p.ratio)
    axes.plot([p.ratio for p in points], [p.accuracy for p in points], style, marker=".",
              label=label, color=color)


def results_page(command, environment, settings, test_count, variants, spread, summary):
    """Return the markdown page of the run; ``summary`` contains the headline and claim lines."""
    methods = list(dict.fromkeys(p.method for v in variants for p in v.points))
    lines = ["## Accuracy against compression ratio with the inter-layer loss", "",
             f"Command: `{command}`", "", environment, "", f"Parameters: `{settings}`", "",
             "Data: scikit-learn's digits, ResNet-20 on 8x8 input, "
             f"{test_count} test images (one image is {100 / test_count:.3f} points). "
             "Compression ratio: float32 bytes of every float tensor of the state dict over "
             "the coded bytes. Reference: the float accuracy of `plain`. A headline is the "
             f"highest ratio whose test accuracy is at most {ACCURACY_TOLERANCE} points below "
             "the reference. `ilw W` is trained from scratch with the loss at weight W (p=1), "
             "`ilw W ft` is `plain` fine-tuned with it, `plain+ft` is `plain` fine-tuned "
             "without it. Every number comes from one training seed.", ""]
    if spread:
        lines += [f"Float accuracy of `plain` trained with seeds {list(settings.spread_seeds)} "
                  f"instead of {settings.seed}: "
                  + ", ".join(f"{value:.2f}%" for value in spread)
                  + ". Differences between variants smaller than this spread are noise.", ""]
    lines += ["| variant | float accuracy | mean collocated distance | training s |",
              "|---|---|---|---|"]
    for variant in variants:
        lines.append(f"| {variant.name} | {variant.float_accuracy:.2f}% | "
                     f"{variant.inter_layer_value:.4f} | {variant.train_seconds:.1f} |")
    lines += ["", "The mean collocated distance is mean(|w - reference|) over the overlap, "
              "averaged over the pairs of the encoder.", "", "```", *summary, "```", "",
              "Each cell: compression ratio, test accuracy. Empty cells: the sweep stopped "
              f"after a qp where every method scored below {COLLAPSED_ACCURACY:g}%.", ""]
    for variant in variants:
        lines += [f"### {variant.name}", "", variant_table(variant, methods), ""]
    lines += ["![accuracy against compression ratio](accuracy.png)", ""]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="15 epochs, plain and one loss weight, six qps (under 2 minutes)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--no-nncodec", action="store_true", help="skip the NNCodec anchor")
    parser.add_argument("--output", type=Path, default=None,
                        help="also write the markdown page to this file")
    parser.add_argument("--plot", type=Path, default=None,
                        help="PNG plot to write (with --write: bench/accuracy.png)")
    parser.add_argument("--write", action="store_true",
                        help="also replace the accuracy section of bench/RESULTS.md")
    args = parser.parse_args()

    settings = QUICK if args.quick else Settings()
    if args.no_nncodec:
        settings = dataclasses.replace(settings, nncodec=False)
    torch.set_num_threads(args.threads)
    command = " ".join(["python bench/accuracy.py", *sys.argv[1:]])
    environment = f"{common.machine_description()}, torch threads {args.threads}"
    nncodec_ok, nncodec_note = nncodec_version_or_reason() if settings.nncodec else (False, "off")
    environment += f", NNCodec {nncodec_note}"
    print(command)
    print(environment)
    print(f"parameters: {settings}", flush=True)

    start = time.perf_counter()
    data = load_digits_split(settings)
    variants = train_variants(settings, data)
    spread = seed_spread(settings, data)
    reference_accuracy = variants[0].float_accuracy
    with tempfile.TemporaryDirectory(prefix="wcodec-accuracy-") as workdir:
        for variant in variants:
            use_nncodec = nncodec_ok and variant.name == "plain"
            measure_variant(variant, settings, data, workdir, use_nncodec)

    summary = [f"reference: float plain model, {reference_accuracy:.2f}% test accuracy",
               *headline_lines(variants, reference_accuracy),
               *claim_lines(variants, reference_accuracy),
               *equal_qp_lines(variants)]
    print("\n".join(summary))
    page = results_page(command, environment, settings, len(data[3]), variants, spread, summary)
    elapsed = time.perf_counter() - start
    page += f"\nRun time: {elapsed:.0f} s.\n"
    if args.output is not None:
        args.output.write_text(page, encoding="utf-8")
    # The committed plot belongs to the results page, so only --write replaces it.
    plot_path = args.plot or (BENCH_DIR / "accuracy.png" if args.write else None)
    if plot_path is not None:
        plot(variants, reference_accuracy, plot_path)
    if args.write:
        common.update_results_section("accuracy", page)
    print(f"finished in {elapsed:.0f} s")


if __name__ == "__main__":
    main()

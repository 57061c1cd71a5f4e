"""Analysis of an uncompressed model: how well can one layer predict the next?

Inter-layer prediction pays off when weights vary smoothly from layer to layer.
:func:`analyse_model` measures that on a safetensors file before anything is encoded.
It takes the frames (see ``wcodec.codec.ordering.is_frame``) in natural name order
and pairs each frame with the previous frame of the same kernel shape. For each pair
it reports the energy of the prediction residual relative to the energy of the
predicted weights, for two predictors:

- collocated: block (o, i) of the frame is predicted by block (o, i) of the reference.
  Only the overlapping blocks (o and i inside both frames) have such a predictor.
- best match: each block is predicted by the reference block, anywhere in the
  reference frame, and the sign (+1 or -1) that give the smallest squared error,
  found by ``wcodec.codec.prediction.best_match``.

A relative energy of 0 is a perfect prediction, and 1 is no better than predicting
zero (intra coding). Best match can exceed 1 as well, because it always uses some
reference block and never falls back to zero. The figures ignore side information: best match also has to code
an index and a sign per block, which costs most when blocks are small (K = 1 for a
linear layer or a 1x1 convolution, where a single weight is matched).

Each pair also gets the Laplace scale b of the collocated residual: the maximum
likelihood estimate mean(|r|) for a Laplace density centred on zero, the density that
residual coders usually assume.
"""

import logging
import math
import os

import numpy as np

from wcodec.codec import ordering, prediction
from wcodec.errors import InputError
from wcodec.formats.atomic import atomic_output
from wcodec.formats.dtypes import tensor_to_float64
from wcodec.formats.safetensors_io import SafetensorsReader

logger = logging.getLogger(__name__)

DEFAULT_MAX_CANDIDATES = prediction.DEFAULT_MAX_CANDIDATES
"""Reference blocks examined per block and sign: the encoder's default, so the figures match what it finds."""

HISTOGRAM_PAIRS = 4
"""Pairs whose collocated residuals get a histogram in the plot: the ones with the most overlapping weights."""

_ENERGY_FIELDS = (
    "collocated_relative_energy",
    "best_match_relative_energy",
    "collocated_frame_relative_energy",
    "best_match_frame_relative_energy",
)


def _ratio(numerator, denominator):
    """Return numerator / denominator, or None where it is undefined, for JSON output.

    As in ``ordering.collocated_residual_energy``, 0 / 0 is 0.0 (a perfect prediction of
    zero weights). Any other zero denominator and any NaN or infinity give None.
    """
    if denominator == 0.0:
        return 0.0 if numerator == 0.0 else None
    value = numerator / denominator
    return value if math.isfinite(value) else None


def _blocks(frame):
    """Return a frame [O, I, ...] as a float64 array of shape (O, I, K)."""
    return frame.reshape(frame.shape[0], frame.shape[1], -1)


def _overlap(cur, ref):
    """Return the collocated blocks (O', I', K) of two frames with equal kernel shapes."""
    rows = min(cur.shape[0], ref.shape[0])
    columns = min(cur.shape[1], ref.shape[1])
    return _blocks(cur)[:rows, :columns], _blocks(ref)[:rows, :columns]


def collocated_residual(cur, ref):
    """Return the collocated residual cur - ref over the overlapping blocks, flattened."""
    cur_overlap, ref_overlap = _overlap(cur, ref)
    return (cur_overlap - ref_overlap).reshape(-1)


def analyse_pair(cur, ref, max_candidates=DEFAULT_MAX_CANDIDATES):
    """Return the prediction figures of frame ``cur`` predicted from frame ``ref``.

    ``cur`` and ``ref`` are float64 arrays with ndim >= 2 and equal kernel shapes. The
    result contains the four relative energies of :func:`analyse_model`, the overlap
    fraction, the Laplace scale, and ``energy``: a dict of the raw residual and weight
    energies that the model summary adds up. Values are None where they are undefined.
    """
    cur_overlap, ref_overlap = _overlap(cur, ref)
    residual = (cur_overlap - ref_overlap).reshape(-1)
    block_size = cur_overlap.shape[2]

    cur_blocks = np.ascontiguousarray(_blocks(cur).reshape(-1, block_size))
    ref_blocks = np.ascontiguousarray(_blocks(ref).reshape(-1, block_size))
    _, _, sse = prediction.best_match(cur_blocks, ref_blocks, max_candidates)
    sse = sse.reshape(cur.shape[0], cur.shape[1])

    energy = {
        "overlap": float(np.sum(np.square(cur_overlap))),
        "frame": float(np.sum(np.square(cur))),
        "collocated": float(np.sum(np.square(residual))),
        "best_match_overlap": float(np.sum(sse[: cur_overlap.shape[0], : cur_overlap.shape[1]])),
        "best_match_frame": float(np.sum(sse)),
    }
    # Blocks outside the overlap have no collocated block, so collocated prediction
    # leaves them as they are (predicted by zero).
    outside = max(energy["frame"] - energy["overlap"], 0.0)
    energy["collocated_frame"] = energy["collocated"] + outside

    return {
        "overlap_fraction": residual.size / cur.size,
        "collocated_relative_energy": _ratio(energy["collocated"], energy["overlap"]),
        "best_match_relative_energy": _ratio(energy["best_match_overlap"], energy["overlap"]),
        "collocated_frame_relative_energy": _ratio(energy["collocated_frame"], energy["frame"]),
        "best_match_frame_relative_energy": _ratio(energy["best_match_frame"], energy["frame"]),
        "collocated_laplace_scale": float(np.mean(np.abs(residual))),
        "energy": energy,
    }


def _spread(values):
    """Return min, median and max of the values that are not None, or None for each."""
    known = [value for value in values if value is not None]
    if not known:
        return {"min": None, "median": None, "max": None}
    return {"min": min(known), "median": float(np.median(known)), "max": max(known)}


def _summary(pairs, energies, unpaired, frame_count):
    """Return the model summary: counts, the spread of each relative energy and its total.

    ``total`` is the residual energy of all pairs over their weight energy, so large
    frames weigh more than in the median.
    """
    totals = {
        "collocated_relative_energy": ("collocated", "overlap"),
        "best_match_relative_energy": ("best_match_overlap", "overlap"),
        "collocated_frame_relative_energy": ("collocated_frame", "frame"),
        "best_match_frame_relative_energy": ("best_match_frame", "frame"),
    }
    summary = {"frames": frame_count, "pairs": len(pairs), "unpaired_frames": unpaired}
    for field in _ENERGY_FIELDS:
        numerator, denominator = totals[field]
        entry = _spread([pair[field] for pair in pairs])
        entry["total"] = None
        if energies:
            entry["total"] = _ratio(
                sum(energy[numerator] for energy in energies), sum(energy[denominator] for energy in energies)
            )
        summary[field] = entry
    return summary


def analyse_model(path, max_candidates=DEFAULT_MAX_CANDIDATES):
    """Measure how well each frame of the safetensors file at ``path`` is predicted by the previous one.

    Returns a JSON-ready dict:

    - ``file`` and ``max_candidates`` (reference blocks that the best-match search
      examines per block and sign; at least the reference's block count makes it exact).
    - ``pairs``: one dict per frame that has a reference, in natural order, with these keys:

      - ``frame`` and ``reference``: tensor names. ``shape`` and ``reference_shape``.
      - ``overlap_fraction``: the share of the frame's blocks that have a collocated block.
      - ``collocated_relative_energy`` and ``best_match_relative_energy``: over the
        overlapping blocks.
      - ``collocated_frame_relative_energy`` and ``best_match_frame_relative_energy``:
        over the whole frame. Collocated prediction predicts the blocks outside the
        overlap by zero.
      - ``collocated_laplace_scale``.
      - ``note``: None, or the reason why the figures are missing.
    - ``summary``: frame and pair counts, ``unpaired_frames`` (frames with no earlier
      frame of their kernel shape), and for each relative energy its min, median and
      max over pairs and its ``total`` (summed residual energy over summed energy).

    A figure is None where it is undefined, as for a zero-energy frame predicted from a
    nonzero one. A pair with NaN or infinite weights in either frame is not analysed,
    so all its energies and its Laplace scale are None.
    Raises InputError for a file that is missing or not a valid safetensors file.
    """
    max_candidates = int(max_candidates)
    if max_candidates < 1:
        raise InputError(f"max_candidates must be at least 1, got {max_candidates}")

    pairs = []
    energies = []
    unpaired = []
    frame_count = 0
    with SafetensorsReader(path) as reader:
        infos = reader.tensors
        # The latest frame of each kernel shape, as (TensorInfo, float64 values): the
        # reference of the next frame with that kernel shape.
        latest = {}
        for index in ordering.order_tensors(infos, "natural"):
            info = infos[index]
            if not ordering.is_frame(info):
                continue
            frame_count += 1
            values = tensor_to_float64(reader.read(info.name))
            kernel = ordering.kernel_shape(info.shape)
            previous = latest.get(kernel)
            latest[kernel] = (info, values)
            if previous is None:
                unpaired.append(info.name)
                continue

            reference, reference_values = previous
            pair = {
                "frame": info.name,
                "reference": reference.name,
                "shape": list(info.shape),
                "reference_shape": list(reference.shape),
            }
            if np.isfinite(values).all() and np.isfinite(reference_values).all():
                figures = analyse_pair(values, reference_values, max_candidates)
                energies.append(figures.pop("energy"))
                pair.update(figures)
                pair["note"] = None
            else:
                logger.warning("%s: skipped frame %s: it or its reference %s contains NaN or infinite weights",
                               path, info.name, reference.name)
                overlap_blocks = min(info.shape[0], reference.shape[0]) * min(info.shape[1], reference.shape[1])
                pair["overlap_fraction"] = overlap_blocks / (info.shape[0] * info.shape[1])
                pair.update({field: None for field in _ENERGY_FIELDS})
                pair["collocated_laplace_scale"] = None
                pair["note"] = "NaN or infinite weights"
            logger.info("%s: frame %s predicted from %s: collocated %s, best match %s", path, info.name,
                        reference.name, pair["collocated_relative_energy"], pair["best_match_relative_energy"])
            pairs.append(pair)

    return {
        "file": os.fspath(path),
        "max_candidates": max_candidates,
        "pairs": pairs,
        "summary": _summary(pairs, energies, unpaired, frame_count),
    }


def _format_number(value, digits=4):
    return "n/a" if value is None else f"{value:.{digits}f}"


def _format_shape(shape):
    return "x".join(str(dim) for dim in shape)


def _shorten(name, width):
    return name if len(name) <= width else "..." + name[-(width - 3):]


def format_analysis(result):
    """Return the result of :func:`analyse_model` as a table and a summary."""
    lines = [
        f"{result['file']}: relative residual energy of each frame predicted from the previous frame"
        " with the same kernel shape (0 = perfect, 1 = no better than zero)",
        "",
    ]
    header = (f"{'frame':<28} {'shape':<14} {'reference':<28} {'ref shape':<14} {'overlap':>7} "
              f"{'colloc':>8} {'best':>8} {'colloc*':>8} {'best*':>8} {'laplace b':>10}")
    lines.append(header)
    lines.append("-" * len(header))
    for pair in result["pairs"]:
        overlap = "n/a" if pair["overlap_fraction"] is None else f"{100 * pair['overlap_fraction']:.0f}%"
        scale = "n/a" if pair["collocated_laplace_scale"] is None else f"{pair['collocated_laplace_scale']:.3g}"
        lines.append(
            f"{_shorten(pair['frame'], 28):<28} {_format_shape(pair['shape']):<14} "
            f"{_shorten(pair['reference'], 28):<28} {_format_shape(pair['reference_shape']):<14} {overlap:>7} "
            f"{_format_number(pair['collocated_relative_energy']):>8} "
            f"{_format_number(pair['best_match_relative_energy']):>8} "
            f"{_format_number(pair['collocated_frame_relative_energy']):>8} "
            f"{_format_number(pair['best_match_frame_relative_energy']):>8} {scale:>10}"
            + (f"  ({pair['note']})" if pair["note"] else "")
        )
    lines.append("")
    lines.append("colloc, best: over the blocks that both frames have (overlap);"
                 " colloc*, best*: over the whole frame.")
    lines.append(f"best match examines up to {result['max_candidates']} reference blocks per block and sign.")

    summary = result["summary"]
    lines.append("")
    lines.append(f"{summary['frames']} frames, {summary['pairs']} pairs; "
                 f"{len(summary['unpaired_frames'])} frames have no earlier frame of their kernel shape.")
    labels = {
        "collocated_relative_energy": "collocated (overlap)",
        "best_match_relative_energy": "best match (overlap)",
        "collocated_frame_relative_energy": "collocated (frame)",
        "best_match_frame_relative_energy": "best match (frame)",
    }
    for field, label in labels.items():
        entry = summary[field]
        lines.append(f"{label:<22} min {_format_number(entry['min'])}  median {_format_number(entry['median'])}"
                     f"  max {_format_number(entry['max'])}  total {_format_number(entry['total'])}")
    return "\n".join(lines)


def _load_matplotlib_figure():
    """Return matplotlib's Figure and Agg canvas classes, or raise InputError when it is missing."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise InputError("--plot needs matplotlib, which is not installed; run: pip install 'wcodec[plot]'") from None
    return Figure, FigureCanvasAgg


def _histogram_pairs(result):
    """Return the pairs to draw residual histograms for, in natural order."""
    usable = [pair for pair in result["pairs"] if pair["note"] is None]
    # A histogram of a few dozen residuals is mostly noise, so take the pairs with the most.
    largest = sorted(usable, key=lambda pair: -pair["overlap_fraction"] * math.prod(pair["shape"]))
    chosen = {id(pair) for pair in largest[:HISTOGRAM_PAIRS]}
    return [pair for pair in usable if id(pair) in chosen]


def _draw_energies(axes, pairs):
    positions = np.arange(len(pairs))
    width = 0.4
    collocated = [np.nan if p["collocated_relative_energy"] is None else p["collocated_relative_energy"] for p in pairs]
    best = [np.nan if p["best_match_relative_energy"] is None else p["best_match_relative_energy"] for p in pairs]
    axes.bar(positions - width / 2, collocated, width, label="collocated")
    axes.bar(positions + width / 2, best, width, label="best match")
    axes.axhline(1.0, color="black", linewidth=0.8, linestyle="--", label="prediction by zero")
    axes.set_xticks(positions)
    axes.set_xticklabels([p["frame"] for p in pairs], rotation=60, ha="right", fontsize=7)
    # A log scale, because the energies span from about 1e-6 (K = 1 matches) to several hundred.
    # NOTE: a bar of exactly 0 (a perfect prediction) has no height on it and does not show.
    axes.set_yscale("log")
    axes.set_ylabel("residual energy / frame energy\n(overlapping blocks, log scale)")
    axes.set_title("Relative residual energy of each frame\npredicted from the previous frame of its kernel shape")
    axes.legend(fontsize=8)


def _draw_histogram(axes, residual, pair):
    scale = pair["collocated_laplace_scale"]
    limit = 6 * scale if scale > 0 else 1.0
    axes.hist(residual, bins=80, range=(-limit, limit), density=True, color="tab:blue", alpha=0.7)
    if scale > 0:
        grid = np.linspace(-limit, limit, 400)
        axes.plot(grid, np.exp(-np.abs(grid) / scale) / (2 * scale), color="tab:red",
                  label=f"Laplace b = {scale:.3g}")
        axes.legend(fontsize=7)
    axes.set_title(f"{pair['frame']}\npredicted from {pair['reference']}", fontsize=8)
    axes.set_xlabel("collocated residual", fontsize=8)
    axes.tick_params(labelsize=7)


def plot_analysis(result, output):
    """Draw the result of :func:`analyse_model` into the image file ``output``.

    The top panel shows the collocated and best-match relative energies of every pair,
    and the bottom panels show histograms of the collocated residuals of up to
    HISTOGRAM_PAIRS pairs with their fitted Laplace density. The residuals are
    recomputed from ``result["file"]``. matplotlib picks the image format from the
    extension of ``output`` (PNG when there is none). An existing file is replaced, but
    never the analysed model itself. Raises InputError when matplotlib is missing or
    the format is unknown.
    """
    figure_class, canvas_class = _load_matplotlib_figure()
    image_format = os.path.splitext(os.fspath(output))[1].lstrip(".").lower() or "png"
    supported = canvas_class.get_supported_filetypes()
    if image_format not in supported:
        raise InputError(f"cannot write plot {output}: unknown image format {image_format!r};"
                         f" use one of {', '.join(sorted(supported))}")

    pairs = result["pairs"]
    histogram_pairs = _histogram_pairs(result)
    figure = figure_class(figsize=(max(12.0, 0.35 * len(pairs) + 3), 9), layout="constrained")
    canvas_class(figure)
    grid = figure.add_gridspec(2, max(1, len(histogram_pairs)), height_ratios=(3, 2))
    energy_axes = figure.add_subplot(grid[0, :])
    if pairs:
        _draw_energies(energy_axes, pairs)
    else:
        energy_axes.text(0.5, 0.5, "no pairs: no two frames share a kernel shape", ha="center", va="center")
        energy_axes.set_axis_off()

    if histogram_pairs:
        with SafetensorsReader(result["file"]) as reader:
            for column, pair in enumerate(histogram_pairs):
                cur = tensor_to_float64(reader.read(pair["frame"]))
                ref = tensor_to_float64(reader.read(pair["reference"]))
                _draw_histogram(figure.add_subplot(grid[1, column]), collocated_residual(cur, ref), pair)

    with atomic_output(output, force=True, inputs=(result["file"],)) as temporary:
        figure.savefig(temporary, format=image_format)

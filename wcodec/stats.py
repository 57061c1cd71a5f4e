"""Statistics of a ``.wbs`` file: bits per tensor, level histograms and totals.

``collect_stats`` decodes levels but never reconstructs weights, and returns plain
dicts and lists so that the command line can print them as a table or as JSON.
"""

import os

import numpy as np

from wcodec.codec import quantization
from wcodec.decoder import open_wbs
from wcodec.formats import container, dtypes

HISTOGRAM_RADIUS = 8  # levels in [-8, 8] get a bin each; the rest go to two tail bins


def _histogram(counts_by_level):
    """Return histogram bins [(label, count)] for a dict level -> count."""
    bins = []
    below = sum(c for v, c in counts_by_level.items() if v < -HISTOGRAM_RADIUS)
    above = sum(c for v, c in counts_by_level.items() if v > HISTOGRAM_RADIUS)
    bins.append((f"<{-HISTOGRAM_RADIUS}", below))
    for level in range(-HISTOGRAM_RADIUS, HISTOGRAM_RADIUS + 1):
        bins.append((str(level), counts_by_level.get(level, 0)))
    bins.append((f">{HISTOGRAM_RADIUS}", above))
    return bins


def _count_levels(levels, counts):
    values, numbers = np.unique(levels, return_counts=True)
    for value, number in zip(values.tolist(), numbers.tolist()):
        counts[value] = counts.get(value, 0) + number


def collect_stats(path, tensor=None):
    """Return a dict of statistics for the ``.wbs`` file at ``path``.

    ``tensor`` restricts the level histogram to one tensor name (InputError-free: an unknown
    name raises KeyError, which the caller reports).
    """
    tensors = []
    histogram_counts = {}
    total_weights = 0
    raw_bytes = 0
    with open_wbs(path) as wbs:
        names = [record.name for record in wbs.header.tensors]
        if tensor is not None and tensor not in names:
            raise KeyError(tensor)
        for index, record in enumerate(wbs.header.tensors):
            n = record.num_elements
            itemsize = dtypes.dtype_by_name(record.dtype).itemsize
            entry = {
                "name": record.name,
                "shape": list(record.shape),
                "dtype": record.dtype,
                "mode": record.mode_name,
                "qp": None,
                "step": None,
                "num_weights": n,
                "bits": record.payload_length * 8,
                "bits_per_weight": (record.payload_length * 8 / n) if n else 0.0,
                "zero_fraction": None,
            }
            if record.coding_mode == container.MODE_QUANTIZED:
                entry["qp"] = record.qp
                entry["step"] = quantization.qp_to_step(record.qp)
            if record.coding_mode in (container.MODE_QUANTIZED, container.MODE_INTEGER) and n:
                levels = wbs.levels(index)
                entry["zero_fraction"] = float(np.count_nonzero(levels == 0) / n)
                if record.coding_mode == container.MODE_QUANTIZED and \
                        (tensor is None or tensor == record.name):
                    _count_levels(levels, histogram_counts)
            if record.coding_mode == container.MODE_ALIAS:
                entry["alias_of"] = wbs.header.tensors[record.alias_of].name
            tensors.append(entry)
            total_weights += n
            raw_bytes += n * itemsize
    file_bytes = os.path.getsize(path)
    return {
        "file": os.fspath(path),
        "version": container.VERSION,
        "tensors": tensors,
        "total_bytes": file_bytes,
        "total_bits": file_bytes * 8,
        "num_weights": total_weights,
        "bits_per_weight": file_bytes * 8 / total_weights if total_weights else 0.0,
        "raw_bytes": raw_bytes,
        "compression_ratio": raw_bytes / file_bytes if file_bytes else 0.0,
        "histogram": {
            "tensor": tensor,
            "bins": [{"level": label, "count": count}
                     for label, count in _histogram(histogram_counts)],
        },
    }


def format_stats(stats, width=40):
    """Return the statistics as a human-readable table and histogram."""
    lines = []
    header = (f"{'tensor':<36} {'shape':<18} {'dtype':<8} {'mode':<9} {'qp':>4} "
              f"{'bits':>10} {'bpw':>7} {'zeros':>6}")
    lines.append(header)
    lines.append("-" * len(header))
    for t in stats["tensors"]:
        name = t["name"] if len(t["name"]) <= 36 else "..." + t["name"][-33:]
        shape = "x".join(str(d) for d in t["shape"]) or "scalar"
        qp = "" if t["qp"] is None else str(t["qp"])
        zeros = "" if t["zero_fraction"] is None else f"{100 * t['zero_fraction']:.0f}%"
        mode = t["mode"]
        lines.append(f"{name:<36} {shape:<18} {t['dtype']:<8} {mode:<9} {qp:>4} "
                     f"{t['bits']:>10} {t['bits_per_weight']:>7.3f} {zeros:>6}")
    lines.append("")
    lines.append(f"total: {stats['total_bytes']} bytes for {stats['num_weights']} weights, "
                 f"{stats['bits_per_weight']:.3f} bits per weight, "
                 f"{stats['compression_ratio']:.2f}x smaller than the raw "
                 f"{stats['raw_bytes']} bytes")
    bins = stats["histogram"]["bins"]
    total = sum(b["count"] for b in bins)
    if total:
        scope = stats["histogram"]["tensor"] or "all quantized tensors"
        lines.append("")
        lines.append(f"histogram of quantized levels ({scope}, {total} levels):")
        peak = max(b["count"] for b in bins)
        for b in bins:
            bar = "#" * round(width * b["count"] / peak) if peak else ""
            lines.append(f"{b['level']:>5} {100 * b['count'] / total:6.2f}% {bar}")
    return "\n".join(lines)

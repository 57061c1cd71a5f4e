"""Statistics of a ``.wbs`` file: bits per tensor, level histograms and totals.

``collect_stats`` decodes levels but never reconstructs weights, and returns plain
dicts and lists so that the command line can print them as a table or as JSON.
"""

import os

import numpy as np

from wcodec.codec import frame_coder, prediction, quantization
from wcodec.codec.block_syntax import BLOCK_INTER, BLOCK_INTRA, BLOCK_SKIP
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


def _laplace_scale(levels):
    """Return the maximum-likelihood Laplace scale mean(|level|) of levels, in level units."""
    return float(np.abs(levels).mean()) if levels.size else 0.0


def _frame_entry(wbs, index, record, recon, levels, syntax):
    """Return the inter-frame statistics of a decoded frame."""
    step = quantization.qp_to_step(record.qp)
    rows, cols = record.shape[0], record.shape[1]
    refs = [wbs.header.tensors[r] for r in record.refs]
    texture_refs = [np.zeros((t.shape[0], t.shape[1], 1)) for t in refs]
    non_texture = frame_coder.non_texture_bits((rows, cols), record.frame_mode, syntax,
                                               texture_refs)
    if syntax is None:
        shares = {"intra": 1.0, "inter": 0.0, "skip": 0.0}
    else:
        counts = np.bincount(syntax.modes.reshape(-1), minlength=3) / (rows * cols)
        shares = {"intra": float(counts[BLOCK_INTRA]), "inter": float(counts[BLOCK_INTER]),
                  "skip": float(counts[BLOCK_SKIP])}
    residual = levels.astype(np.float64) * step
    energy = float(np.square(recon).sum())
    return {
        "frame_mode": frame_coder.FRAME_MODE_NAMES[record.frame_mode],
        "references": [t.name for t in refs],
        "pred_gain": record.pred_gain / prediction.GAIN_DENOMINATOR if refs else None,
        "block_modes": shares,
        "bits_non_texture": round(non_texture, 1),
        "bits_texture": round(record.payload_length * 8 - non_texture, 1),
        "residual_energy_ratio": float(np.square(residual).sum()) / energy if energy else 0.0,
        "residual_laplace_scale": _laplace_scale(levels) * step,
    }


def collect_stats(path, tensor=None, limits=None):
    """Return a dict of statistics for the ``.wbs`` file at ``path``.

    ``tensor`` restricts the level histogram to one tensor name; an unknown name raises
    KeyError, which the caller reports. Frames are decoded in coding order, with their
    references, so that inter frames can be analysed.
    """
    entries = {}
    histogram_counts = {}
    total_weights = 0
    raw_bytes = 0
    with open_wbs(path, limits or container.DecodeLimits()) as wbs:
        header = wbs.header
        names = [record.name for record in header.tensors]
        if tensor is not None and tensor not in names:
            raise KeyError(tensor)
        referenced = {ref for record in header.tensors for ref in record.refs}
        references = {}
        for index in header.coding_order():
            record = header.tensors[index]
            n = record.num_elements
            itemsize = dtypes.dtype_by_name(record.dtype).itemsize
            bits = record.payload_length * 8
            entry = {
                "name": record.name,
                "shape": list(record.shape),
                "dtype": record.dtype,
                "mode": record.mode_name,
                "qp": None,
                "step": None,
                "num_weights": n,
                "bits": bits,
                "bits_per_weight": bits / n if n else 0.0,
                "bits_texture": bits,
                "bits_non_texture": 0,
                "zero_fraction": None,
            }
            levels = None
            if record.coding_mode == container.MODE_QUANTIZED:
                entry["qp"] = record.qp
                entry["step"] = quantization.qp_to_step(record.qp)
            if wbs.is_frame(index):
                recon, levels, syntax = wbs.decode_frame(index, references)
                if index in referenced:
                    rounded = dtypes.reconstruction_to_tensor(recon.reshape(record.shape), record.dtype,
                                                       record.shape)
                    references[index] = dtypes.tensor_to_float64(rounded).reshape(recon.shape)
                entry.update(_frame_entry(wbs, index, record, recon, levels, syntax))
            elif record.coding_mode == container.MODE_INTEGER and n:
                # Decoding checks that the values fit the dtype, as decode does.
                levels = wbs.levels(index)
                wbs.decode_record(index, {})
            elif record.coding_mode == container.MODE_QUANTIZED and n:
                levels = wbs.levels(index)
            elif record.coding_mode == container.MODE_RAW:
                wbs.payload(index)  # checks the CRC-32, as decode does
            if levels is not None:
                entry["zero_fraction"] = float(np.count_nonzero(levels == 0) / n)
                if record.coding_mode == container.MODE_QUANTIZED and \
                        (tensor is None or tensor == record.name):
                    _count_levels(levels, histogram_counts)
            if record.coding_mode == container.MODE_ALIAS:
                entry["alias_of"] = header.tensors[record.alias_of].name
            entries[index] = entry
            total_weights += n
            raw_bytes += n * itemsize
    tensors = [entries[i] for i in range(len(entries))]
    file_bytes = os.path.getsize(path)
    return {
        "file": os.fspath(path),
        "version": header.version,
        "tensors": tensors,
        "total_bytes": file_bytes,
        "total_bits": file_bytes * 8,
        "num_weights": total_weights,
        "bits_per_weight": file_bytes * 8 / total_weights if total_weights else 0.0,
        "raw_bytes": raw_bytes,
        "compression_ratio": raw_bytes / file_bytes if file_bytes else 0.0,
        "bits_texture": sum(t["bits_texture"] for t in tensors),
        "bits_non_texture": sum(t["bits_non_texture"] for t in tensors),
        "histogram": {
            "tensor": tensor,
            "bins": [{"level": label, "count": count}
                     for label, count in _histogram(histogram_counts)],
        },
    }


def format_frames(stats):
    """Return the per-frame prediction table (frames only)."""
    frames_rows = [t for t in stats["tensors"] if "frame_mode" in t]
    if not frames_rows:
        return ""
    lines = [f"{'frame':<36} {'mode':<10} {'reference':<28} {'intra':>6} {'inter':>6} "
             f"{'skip':>6} {'texture':>9} {'side':>7} {'res/E':>6} {'laplace':>9}",
             ]
    lines.append("-" * len(lines[0]))
    for t in frames_rows:
        name = t["name"] if len(t["name"]) <= 36 else "..." + t["name"][-33:]
        ref = ",".join(t["references"]) or "-"
        ref = ref if len(ref) <= 28 else "..." + ref[-25:]
        shares = t["block_modes"]
        lines.append(f"{name:<36} {t['frame_mode']:<10} {ref:<28} "
                     f"{100 * shares['intra']:5.0f}% {100 * shares['inter']:5.0f}% "
                     f"{100 * shares['skip']:5.0f}% {t['bits_texture']:>9.0f} "
                     f"{t['bits_non_texture']:>7.0f} {t['residual_energy_ratio']:>6.3f} "
                     f"{t['residual_laplace_scale']:>9.2e}")
    return "\n".join(lines)


def format_stats(stats, width=40):
    """Return the statistics as a human-readable table and histogram."""
    lines = []
    header = (f"{'tensor':<36} {'shape':<18} {'dtype':<8} {'mode':<9} {'qp':>4} {'step':>9} "
              f"{'bits':>10} {'bpw':>7} {'zeros':>6}")
    lines.append(header)
    lines.append("-" * len(header))
    for t in stats["tensors"]:
        name = t["name"] if len(t["name"]) <= 36 else "..." + t["name"][-33:]
        shape = "x".join(str(d) for d in t["shape"]) or "scalar"
        qp = "" if t["qp"] is None else str(t["qp"])
        step = "" if t["step"] is None else f"{t['step']:.3g}"
        zeros = "" if t["zero_fraction"] is None else f"{100 * t['zero_fraction']:.0f}%"
        mode = t["mode"]
        lines.append(f"{name:<36} {shape:<18} {t['dtype']:<8} {mode:<9} {qp:>4} {step:>9} "
                     f"{t['bits']:>10} {t['bits_per_weight']:>7.3f} {zeros:>6}")
    lines.append("")
    lines.append(f"total: {stats['total_bytes']} bytes for {stats['num_weights']} weights, "
                 f"{stats['bits_per_weight']:.3f} bits per weight, "
                 f"{stats['compression_ratio']:.2f}x smaller than the raw "
                 f"{stats['raw_bytes']} bytes")
    frame_table = format_frames(stats)
    if frame_table:
        lines.append("")
        lines.append("frames (res/E: coded residual energy over frame energy; laplace: fitted "
                     "scale of the residual):")
        lines.append(frame_table)
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

"""Bits per weight of wcodec intra against oracle Laplace models of the same levels.

For each model in ../shared/models (or $WCODEC_MODELS_DIR, or ``--models``) and each qp,
encode in process with ``wcodec.encode_file(mode="intra", qp=qp)`` (uniform quantization)
and take the payload bits of every frame (a quantized tensor with at least 2 dimensions)
from the ``.wbs`` header. For the levels round(w / step), with the step of
``wcodec.codec.quantization.qp_to_step``, it computes ideal code lengths, the sum of
-log2 P(level), where P(q) is the mass of the bin [(q - 1/2) step, (q + 1/2) step] under a
zero-mean Laplace density:

- (a) tensor: one scale per tensor;
- (b) row: one scale per output channel (row of the frame);
- (c) row x col: scale r_i * c_j, where a column j is an input channel and a tap of the
  kernel. Alternating Newton steps on the exact code length fit it, per row and then per
  column, starting from (b) and keeping a step only where it lowers the cost, so (c) is
  never above (b);
- (d) KLT + row x col: for kernels with K > 1 taps, (c) on the levels of the taps after a
  per-tensor Karhunen-Loeve transform (eigenvectors of the K x K second-moment matrix of
  the kernels, fitted on the weights). Tensors with K = 1, or with fewer than
  ``KLT_MIN_KERNELS_PER_TAP * K`` kernels, keep their (c) cost.

Every scale, column factor and basis is fitted on the data being coded and costs no bits,
so the oracles are optimistic. The KLT is orthonormal, so at high rate the quantization
error energy is the same as without it. At low rate it differs, and the column "KLT dSQNR"
gives the SQNR of (d) minus that of uniform quantization, positive where (d) is also more
accurate. Frames that wcodec codes with other levels (a transform frame, say) are compared
as they are, and the column "wcodec dSQNR" gives the SQNR change that this brings.

The table reports bits per weight over the frames and, as "file bpw", over the whole
``.wbs`` file, and ``HOW_TO_READ`` below defines every column. "bound" takes, per tensor, the
cheaper of the best oracle and wcodec, so "file saving" is the share of the file that a
better probability model could remove at most. The conclusion compares the summary saving
with the BD-rate of the best wcodec method in the ``rd`` section of bench/RESULTS.md,
assuming that the saving measured on uniform levels carries over to that method.

    python bench/bounds.py [--qp -38 -32 -26 -20] [--models DIR] [--model NAME] [--write]
"""

import argparse
import math
import os
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import numpy as np  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402

import wcodec  # noqa: E402
from wcodec.codec import frame_coder, quantization  # noqa: E402
from wcodec.decoder import open_wbs  # noqa: E402

DEFAULT_QPS = (-38, -32, -26, -20)
GOAL_BD_RATE = -5.0  # percent against NNCodec
SECTION = "rd-bounds"
# The KLT of K taps has K (K - 1) / 2 free rotation angles. With at least 4 K kernels
# there is at most one angle per 8 weights, so the basis does not just fit noise.
KLT_MIN_KERNELS_PER_TAP = 4
RANK1_ROUNDS = 4  # alternations of row and column updates
NEWTON_STEPS = 4  # Newton steps per row or column update
# Bounds of the inverse scale u = 1 / b (b in levels). At u = 80 a zero costs below 1e-17
# bits, and at u = 1e-6 a level of 1e6 still has a finite cost.
MIN_INVERSE_SCALE = 1e-6
MAX_INVERSE_SCALE = 80.0
LN2 = math.log(2.0)
ORACLES = ("tensor", "row", "rank1", "klt")
HOW_TO_READ = (
    "How to read: bits per weight over the frames (tensors with at least 2 dimensions) of "
    "wcodec intra and of oracle Laplace models of the same levels round(w / step). Each "
    "oracle fits its scales on the levels it codes and pays nothing for them, so it is "
    "optimistic. (a) fits one scale per tensor, (b) one per output channel, (c) a scale "
    "r_i c_j per output channel i and column j (input channel and tap), and (d) is (c) on "
    "the levels of the taps after a per-tensor KLT. \"wcodec dSQNR\" and \"KLT dSQNR\" are "
    "the SQNR of wcodec and of (d) minus that of round(w / step), so oracles and wcodec "
    "code at equal SQNR where both are near 0. \"best oracle\" takes the cheapest oracle "
    "per tensor, and \"bound\" the cheaper of that and wcodec per tensor. \"file bpw\" and "
    "\"file "
    "saving\" (wcodec minus bound, over the file bits) count every tensor and the "
    "container. The summary saving is 1 - the geometric mean over the qps of (1 - file "
    "saving), because a BD-rate averages log rates.")


def laplace_bits(magnitudes, inverse_scale):
    """Return -log2 P(q) elementwise for |q| = ``magnitudes`` under a discretized Laplace.

    ``inverse_scale`` is u = 1 / b in levels, broadcast against ``magnitudes``. With a unit
    bin, P(0) = 1 - exp(-u / 2) and P(q) = exp(-(|q| - 1/2) u) (1 - exp(-u)) / 2 for q != 0.
    The logarithms use expm1, so tiny masses keep their precision.
    """
    u = np.clip(inverse_scale, MIN_INVERSE_SCALE, MAX_INVERSE_SCALE)
    zero_nats = -np.log(-np.expm1(-u / 2))
    nonzero_nats = (magnitudes - 0.5) * u + LN2 - np.log(-np.expm1(-u))
    return np.where(magnitudes == 0, zero_nats, nonzero_nats) / LN2


def _laplace_derivatives(magnitudes, u):
    """Return the first and second derivatives in u of the code length in nats."""
    half = np.expm1(u / 2)
    full = np.expm1(u)
    zero = magnitudes == 0
    first = np.where(zero, -0.5 / half, (magnitudes - 0.5) - 1.0 / full)
    second = np.where(zero, 0.25 * (half + 1.0) / half ** 2, (full + 1.0) / full ** 2)
    return first, second


def ml_inverse_scale(magnitudes, axis):
    """Return the maximum-likelihood u of the discretized Laplace per group of ``axis``.

    With s = exp(-u / 2), setting the derivative of the code length to zero gives
    (n + m + 2 S) s^2 + z s - 2 S = 0, where n counts the levels, m the nonzero ones,
    z = n - m the zeros and S = sum(|q| - 1/2) over the nonzero ones.
    """
    count = magnitudes.shape[axis] if axis is not None else magnitudes.size
    nonzero = np.count_nonzero(magnitudes, axis=axis)
    excess = magnitudes.sum(axis=axis) - 0.5 * nonzero
    zeros = count - nonzero
    a = count + nonzero + 2.0 * excess
    s = (-zeros + np.sqrt(zeros ** 2.0 + 8.0 * excess * a)) / (2.0 * a)
    with np.errstate(divide="ignore"):
        u = np.where(s > 0, -2.0 * np.log(s), MAX_INVERSE_SCALE)
    return np.clip(u, MIN_INVERSE_SCALE, MAX_INVERSE_SCALE)


def _update_factor(magnitudes, factor, other):
    """Improve the row factor of u_ij = factor_i * other_j by damped Newton steps.

    The code length of a row is convex in its factor. A step is kept only for the rows
    whose code length it lowers.
    """
    cost = laplace_bits(magnitudes, np.outer(factor, other)).sum(axis=1)
    for _ in range(NEWTON_STEPS):
        u = np.clip(np.outer(factor, other), MIN_INVERSE_SCALE, MAX_INVERSE_SCALE)
        first, second = _laplace_derivatives(magnitudes, u)
        gradient = first @ other
        curvature = second @ (other * other)
        step = np.clip(factor - gradient / curvature, factor / 4, factor * 4)
        step_cost = laplace_bits(magnitudes, np.outer(step, other)).sum(axis=1)
        better = step_cost < cost
        factor = np.where(better, step, factor)
        cost = np.where(better, step_cost, cost)
    return factor


def rank1_bits(magnitudes):
    """Return the code length in bits of |levels| (rows, cols) under row x column scales."""
    rows = ml_inverse_scale(magnitudes, axis=1)
    cols = np.ones(magnitudes.shape[1])
    for _ in range(RANK1_ROUNDS):
        rows = _update_factor(magnitudes, rows, cols)
        cols = _update_factor(magnitudes.T, cols, rows)
    return float(laplace_bits(magnitudes, np.outer(rows, cols)).sum())


def klt_levels(scaled):
    """Return (levels (O, I * K), squared error in steps^2) of the taps after a KLT.

    ``scaled`` is the tensor (O, I, K) divided by the step. The basis is the eigenvectors of
    the K x K second-moment matrix over the O * I kernels. Because it is orthonormal, the
    error energy of the coefficients equals that of the reconstructed weights.
    """
    rows, cols, taps = scaled.shape
    kernels = scaled.reshape(-1, taps)
    _, basis = np.linalg.eigh(kernels.T @ kernels / kernels.shape[0])
    coefficients = kernels @ basis
    levels = quantization.quantize(coefficients, 1.0)
    error = float(np.square(coefficients - levels).sum())
    return levels.reshape(rows, cols * taps), error


def klt_applies(weights):
    """Return whether oracle (d) transforms a frame (O, I, K) rather than reusing (c)."""
    rows, cols, taps = weights.shape
    return taps > 1 and rows * cols >= KLT_MIN_KERNELS_PER_TAP * taps


def oracle_bits(weights, step):
    """Return ({oracle: bits}, KLT squared error, uniform squared error) of one frame.

    ``weights`` is the float64 tensor reshaped to (O, I, K); errors are in steps^2.
    """
    rows, cols, taps = weights.shape
    scaled = weights / step
    levels = quantization.quantize(scaled, 1.0)
    uniform_error = float(np.square(scaled - levels).sum())
    magnitudes = np.abs(levels.reshape(rows, cols * taps)).astype(np.float64)
    bits = {
        "tensor": float(laplace_bits(magnitudes, ml_inverse_scale(magnitudes, None)).sum()),
        "row": float(laplace_bits(magnitudes, ml_inverse_scale(magnitudes, 1)[:, None]).sum()),
        "rank1": rank1_bits(magnitudes),
    }
    bits["klt"] = bits["rank1"]
    klt_error = uniform_error
    if klt_applies(weights):
        klt, klt_error = klt_levels(scaled)
        bits["klt"] = rank1_bits(np.abs(klt).astype(np.float64))
    return bits, klt_error, uniform_error


def coded_frames(path, originals):
    """Return a list of frames of a .wbs file, one dict per frame.

    A frame has its name, payload ``bits``, ``weights`` (O, I, K) float64, ``step``, the
    squared ``error`` of its decoded reconstruction, its frame ``mode`` name and whether
    its decoded levels equal round(w / step) (``uniform``).
    """
    frames = []
    with open_wbs(path) as wbs:
        for index, record in enumerate(wbs.header.tensors):
            if not wbs.is_frame(index):
                continue
            recon, levels, _ = wbs.decode_frame(index, {})
            step = quantization.qp_to_step(record.qp)
            weights = np.asarray(originals[record.name], dtype=np.float64).reshape(levels.shape)
            frames.append({
                "name": record.name,
                "bits": record.payload_length * 8,
                "weights": weights,
                "step": step,
                "error": float(np.square(weights - recon.reshape(weights.shape)).sum()),
                "mode": frame_coder.FRAME_MODE_NAMES.get(record.frame_mode,
                                                         str(record.frame_mode)),
                "uniform": np.array_equal(levels, quantization.quantize(weights, step)),
            })
    return frames


def measure(model, qp, workdir):
    """Return the bit counts and errors of one model at one qp, summed over its frames."""
    originals = load_file(model)
    out = os.path.join(workdir, "model.wbs")
    wcodec.encode_file(model, out, qp=qp, mode="intra", force=True)
    frames = coded_frames(out, originals)

    totals = {name: 0.0 for name in (*ORACLES, "actual", "best", "bound")}
    totals.update(weights=0, uniform_error=0.0, klt_error=0.0, actual_error=0.0, wins=0,
                  win_bits=0, other_frames=0, other_bits=0, other_modes=set())
    for frame in frames:
        weights, step, actual = frame["weights"], frame["step"], frame["bits"]
        bits, klt_error, uniform_error = oracle_bits(weights, step)
        best = min(bits.values())
        for name in ORACLES:
            totals[name] += bits[name]
        totals["actual"] += actual
        totals["best"] += best
        totals["bound"] += min(best, actual)
        if actual < best:
            totals["wins"] += 1
            totals["win_bits"] += actual

        if not frame["uniform"]:
            totals["other_frames"] += 1
            totals["other_bits"] += actual
            totals["other_modes"].add(frame["mode"])
        totals["weights"] += weights.size
        totals["uniform_error"] += uniform_error * step * step
        totals["klt_error"] += klt_error * step * step
        totals["actual_error"] += frame["error"]

    totals["frames"] = len(frames)
    totals["file_bits"] = 8 * os.path.getsize(out)
    totals["file_weights"] = sum(a.size for a in originals.values())
    totals["klt_excluded"] = sum(f["weights"].size for f in frames
                                 if f["weights"].shape[2] > 1 and not klt_applies(f["weights"]))
    return totals


def sqnr_gain_db(uniform_error, error):
    """Return the SQNR gain in dB of an error energy over that of round(w / step)."""
    if uniform_error <= 0 or error <= 0:
        return 0.0
    return 10 * math.log10(uniform_error / error)


def table_row(model, qp, totals):
    """Return one markdown row of the table for a model at a qp."""
    n = totals["weights"]
    ratio_best = totals["best"] / totals["actual"]
    ratio_bound = totals["bound"] / totals["actual"]
    file_saving = (totals["actual"] - totals["bound"]) / totals["file_bits"]
    actual_gain = sqnr_gain_db(totals["uniform_error"], totals["actual_error"])
    klt_gain = sqnr_gain_db(totals["uniform_error"], totals["klt_error"])
    oracles = " | ".join(f"{totals[name] / n:.3f}" for name in ORACLES)
    return (f"| {model} | {qp} | {totals['file_bits'] / totals['file_weights']:.3f} | "
            f"{totals['actual'] / n:.3f} | {actual_gain:+.2f} | {oracles} | {klt_gain:+.2f} | "
            f"{ratio_best:.4f} | {ratio_bound:.4f} | {100 * file_saving:.2f}% | "
            f"{totals['wins']}/{totals['frames']} |")


def span(values, form):
    """Return "min to max" of ``values`` formatted with ``form``, or one value if they are equal."""
    low, high = form.format(min(values)), form.format(max(values))
    return low if low == high else f"{low} to {high}"


def geometric_mean(values):
    """Return the geometric mean of positive numbers."""
    return math.exp(sum(math.log(v) for v in values) / len(values))


def read_bd_rates(page=common.RESULTS_PAGE):
    """Return {model: (BD-rate %, method)} of the best wcodec method in the rd section.

    Reads the table whose header starts with "| model | weights |" and takes the lowest
    value among the columns named "wcodec ...". Returns {} when the page, the section or
    the table is missing.
    """
    if not page.exists():
        return {}
    text = page.read_text(encoding="utf-8")
    match = re.search(r"<!-- begin rd -->(.*?)<!-- end rd -->", text, re.S)
    if match is None:
        return {}
    columns = None
    rates = {}
    for line in match.group(1).splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("| model | weights |"):
            columns = cells
            continue
        if columns is None:
            continue
        if not line.startswith("|"):
            break
        if len(cells) != len(columns) or set(cells[0]) <= set("-:"):
            continue
        best = None
        for column, cell in zip(columns, cells):
            value = re.fullmatch(r"([+-]?\d+(?:\.\d+)?)%", cell)
            if column.startswith("wcodec") and value:
                candidate = (float(value.group(1)), column)
                if best is None or candidate[0] < best[0]:
                    best = candidate
        if best is not None:
            rates[cells[0]] = best
    return rates


def summary_lines(savings, bd_rates):
    """Return the summary line per model and the conclusion sentences."""
    lines = []
    short = []
    for model, per_qp in savings.items():
        frame_saving = 1 - geometric_mean([1 - s for s, _, _ in per_qp])
        file_saving = 1 - geometric_mean([1 - s for _, s, _ in per_qp])
        win_share = sum(share for _, _, share in per_qp) / len(per_qp)
        line = (f"- {model}: the bound saves {100 * frame_saving:.2f}% of the frame bits and "
                f"{100 * file_saving:.2f}% of the file bits (1 - geometric mean over the qps "
                f"of bound / wcodec)")
        if model in bd_rates:
            rate, method = bd_rates[model]
            # Rates multiply: (1 + BD-rate) (1 - saving) must reach 1 + GOAL_BD_RATE.
            reachable = 100 * ((1 + rate / 100) * (1 - file_saving) - 1)
            needed = 1 - (1 + GOAL_BD_RATE / 100) / (1 + rate / 100)
            line += (f"; {method} is at {rate:+.1f}% BD-rate, so {GOAL_BD_RATE:.0f}% needs a "
                     f"further {100 * needed:.2f}%, and the bound reaches about "
                     f"{reachable:+.1f}%")
            if file_saving < needed:
                short.append(f"{model} ({100 * file_saving:.2f}% available, "
                             f"{100 * needed:.2f}% needed)")
        if win_share > 0:
            line += (f". wcodec beats every oracle on tensors holding {100 * win_share:.1f}% "
                     f"of its frame bits (mean over the qps), so there the Laplace oracles "
                     f"bound nothing and a better model of another kind may save more")
        lines.append(line + ".")
    lines.append("")
    measured = [m for m in savings if m in bd_rates]
    goal = f"{GOAL_BD_RATE:.0f}% BD-rate against NNCodec"
    if not measured:
        lines.append(f"No BD-rate against NNCodec was found in the rd section, so this run "
                     f"does not compare the savings with the goal of {goal}.")
    elif short:
        lines.append(f"Better probability models of these levels alone cannot reach {goal} "
                     f"on {len(short)} of {len(measured)} models: {', '.join(short)}. "
                     f"This assumes that the rd section measured the same coder as this "
                     f"table, and that the saving carries over to its best wcodec method.")
    else:
        lines.append(f"On all {len(measured)} models the oracle bound saves at least what "
                     f"{goal} needs, so better modelling could reach the goal if models as "
                     f"good as these optimistic oracles were attainable.")
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--qp", type=int, nargs="+", default=list(DEFAULT_QPS),
                        help="quantization parameters to measure")
    parser.add_argument("--models", type=Path, default=None,
                        help="folder of *.safetensors models (default: $WCODEC_MODELS_DIR, "
                             "else ../shared/models relative to the repository root)")
    parser.add_argument("--model", action="append", default=None,
                        help="measure only the model with this file stem; repeatable")
    parser.add_argument("--write", action="store_true",
                        help=f"replace the {SECTION} section of bench/RESULTS.md")
    args = parser.parse_args()

    folder = args.models or common.models_dir()
    models = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    if args.model:
        models = [m for m in models if m.stem in args.model]
    if not models:
        print(f"no matching *.safetensors models in {folder}; nothing to measure")
        return

    start = time.perf_counter()
    command = ("python bench/bounds.py " + " ".join(sys.argv[1:])).strip()
    lines = [common.machine_description(),
             f"Parameters: mode intra, uniform quantization, qp {args.qp}, rank-1 fit of "
             f"{RANK1_ROUNDS} rounds of {NEWTON_STEPS} Newton steps, KLT on tensors with at "
             f"least {KLT_MIN_KERNELS_PER_TAP} kernels per tap. Command: `{command}`", "",
             HOW_TO_READ, "",
             "| model | qp | file bpw | wcodec | wcodec dSQNR dB | (a) tensor | (b) row | "
             "(c) row x col | (d) KLT + row x col | KLT dSQNR dB | best oracle / wcodec | "
             "bound / wcodec | file saving | frames where wcodec beats every oracle |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    print("\n".join(lines[:2]), flush=True)
    print("\n".join(lines[-2:]), flush=True)
    savings = {}
    excluded = {}
    other = {}
    with tempfile.TemporaryDirectory() as workdir:
        for model in models:
            for qp in args.qp:
                totals = measure(model, qp, workdir)
                row = table_row(model.stem, qp, totals)
                print(row, flush=True)
                lines.append(row)
                saved = totals["actual"] - totals["bound"]
                savings.setdefault(model.stem, []).append(
                    (saved / totals["actual"], saved / totals["file_bits"],
                     totals["win_bits"] / totals["actual"]))
                excluded[model.stem] = (totals["klt_excluded"], totals["weights"])
                if totals["other_frames"]:
                    entry = other.setdefault(model.stem, {"frames": [], "shares": [],
                                                          "modes": set(), "total": 0})
                    entry["frames"].append(totals["other_frames"])
                    entry["shares"].append(100 * totals["other_bits"] / totals["actual"])
                    entry["modes"] |= totals["other_modes"]
                    entry["total"] = totals["frames"]

    tail = [""]
    skipped = [f"{m} ({n:,} of {total:,} frame weights)"
               for m, (n, total) in excluded.items() if n]
    if skipped:
        tail += [f"Multi-tap tensors with too few kernels for the KLT, costed by (c): "
                 f"{', '.join(skipped)}.", ""]
    if other:
        described = [f"{m}, {span(e['frames'], '{}')} of {e['total']} frames "
                     f"({', '.join(sorted(e['modes']))}) holding "
                     f"{span(e['shares'], '{:.1f}%')} of the frame bits"
                     for m, e in other.items()]
        tail += [f"Frames that wcodec coded with levels other than round(w / step), over the "
                 f"qps, compared as they are: {'; '.join(described)}.", ""]
    tail += ["Summary per model:", ""]
    tail += summary_lines(savings, read_bd_rates())
    tail += ["", f"Run time: {time.perf_counter() - start:.0f} s."]
    print("\n".join(tail), flush=True)
    lines += tail
    if args.write:
        common.update_results_section(SECTION, "\n".join(lines))


if __name__ == "__main__":
    main()

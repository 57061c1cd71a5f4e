"""Rate-distortion curves of wcodec, NNCodec and uniform quantization + zstd, with BD-rates.

For each model in ../shared/models (or $WCODEC_MODELS_DIR) and each qp, every method codes
and decodes the whole model. The rate is bits per weight over all tensors (8 * coded bytes /
number of values). The quality is the SQNR in dB over the tensors with at least 2
dimensions (``common.sqnr_db``). Methods:

- ``wcodec intra`` and ``wcodec auto``: ``wcodec.encode_file`` with that prediction mode,
  rate from the size of the ``.wbs`` file;
- ``wcodec intra+rdoq``: intra with ``rdoq=True`` (rate-distortion optimized uniform
  quantization);
- ``wcodec intra+dq`` and ``wcodec auto+dq``: dependent quantization
  (``quantizer="dependent"``), the tool NNCodec uses by default;
- ``NNCodec``: NNCodec (bench/anchors/nncodec.py) at its defaults, including dependent
  quantization and qp -75 for tensors with fewer than 2 dimensions (``--nncodec-nonweight-offset
  -24`` gives them wcodec's qp - 24 instead), rate from the size of its bitstream;
- ``uniform+zstd``: levels round(w / step) at wcodec's steps (qp for tensors with at least
  2 dimensions, qp - 24 for the others), as int32, concatenated over all tensors and
  compressed by zstd at level 19. Only the zstd bytes count, with no header for names,
  shapes or steps.

Every method uses the same qps. The BD-rate of each method against NNCodec comes from
bench/bdrate.py: a cubic fit of log(rate) against SQNR, averaged over the SQNR interval
that both curves cover. The goal is a BD-rate of at most -5% for wcodec on every model.
NNCodec results are cached in bench/.cache/rd_nncodec.json, keyed by model file hash,
qp, options and NNCodec version, so reruns only code wcodec and uniform+zstd again.

    python bench/rd.py [--qp -44 -41 ...] [--quick] [--model NAME]
                       [--nncodec-nonweight-offset -24] [--no-cache] [--write]
"""

import argparse
import hashlib
import inspect
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bdrate  # noqa: E402
import common  # noqa: E402
import numpy as np  # noqa: E402
from anchors import nncodec as nncodec_anchor  # noqa: E402
from anchors import nncodec_env  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402

import wcodec  # noqa: E402
from wcodec.codec import quantization  # noqa: E402

DEFAULT_QPS = (-44, -41, -38, -35, -32, -29, -26, -23, -20)
QUICK_QPS = (-41, -35, -29, -23)
QUICK_MODEL_COUNT = 2
REFERENCE = "NNCodec"
GOAL_BD_RATE = -5.0  # percent: wcodec must need at least 5% fewer bits than NNCodec
ZSTD_LEVEL = 19
# SQNR levels at which the bits per weight of every method are interpolated for the table.
COMPARISON_SQNR_DB = (15.0, 20.0, 25.0, 30.0, 35.0, 40.0, 50.0, 60.0)
CACHE_PATH = common.BENCH_DIR / ".cache" / "rd_nncodec.json"
CACHE_FORMAT = 1
PLOTS_DIR = common.BENCH_DIR / "plots"
INT32_MAX = np.iinfo(np.int32).max


@dataclass(frozen=True)
class Point:
    """One coded model: qp, bits per weight over all tensors, SQNR dB over ndim >= 2."""

    qp: int
    bits_per_weight: float
    sqnr_db: float


@dataclass(frozen=True)
class Model:
    """A shared model: its file, name, float32 tensors, value count and file hash."""

    path: Path
    name: str
    arrays: dict
    weights: int
    sha256: str


def load_model(path):
    """Load a model; exit when a tensor is not float32, which NNCodec's client requires."""
    arrays = load_file(str(path))
    for name, array in arrays.items():
        if array.dtype != np.float32:
            sys.exit(f"{path}: tensor {name!r} has dtype {array.dtype}; bench/rd.py codes "
                     f"float32 models only")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return Model(path, path.stem, arrays, sum(a.size for a in arrays.values()), digest)


def wcodec_supports_rdoq():
    """Return whether wcodec.encode_file accepts the ``rdoq`` keyword."""
    return "rdoq" in inspect.signature(wcodec.encode_file).parameters


def code_wcodec(model, qp, options, workdir):
    """Encode and decode a model with wcodec and the given encode options; return its Point."""
    out = os.path.join(workdir, "model.wbs")
    wcodec.encode_file(model.path, out, qp=qp, force=True, **options)
    decoded = {name: tensor.numpy() for name, tensor in wcodec.load(out).items()}
    bpw = 8 * os.path.getsize(out) / model.weights
    return Point(qp, bpw, common.sqnr_db(model.arrays, decoded))


def code_uniform_zstd(model, qp):
    """Quantize uniformly at wcodec's steps, compress the int32 levels with zstd; return a Point.

    A tensor whose levels do not fit in int32 is stored bit-exact, as its float32 bit
    patterns in the same stream, much as wcodec stores values too large for its level range.
    This happens to the batch-norm variances of about 1e8 in rapidocr_det_ppocrv4 at fine steps.
    """
    import zstandard

    streams = []
    decoded = {}
    for name, array in model.arrays.items():
        tensor_qp = qp if array.ndim >= 2 else qp + quantization.FINE_QP_OFFSET
        step = quantization.qp_to_step(tensor_qp)
        levels = quantization.quantize(array.astype(np.float64), step)
        if levels.size and np.abs(levels).max() > INT32_MAX:
            streams.append(array.reshape(-1).view(np.int32))
            decoded[name] = array
        else:
            streams.append(levels.reshape(-1).astype(np.int32))
            decoded[name] = quantization.dequantize(levels, step).astype(np.float32)
    payload = np.concatenate(streams).astype("<i4").tobytes()
    coded = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(payload)
    bpw = 8 * len(coded) / model.weights
    return Point(qp, bpw, common.sqnr_db(model.arrays, decoded))


class NncodecCache:
    """NNCodec results by (model hash, qp, options, NNCodec requirement), in a JSON file."""

    def __init__(self, path, nonweight_offset=None, lookup=True):
        """Load the cache file; with ``lookup`` False, ``get`` misses but ``put`` still stores."""
        self.path = path
        self.nonweight_offset = nonweight_offset
        self.lookup = lookup
        self.entries = {}
        if path.exists():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except ValueError as error:
                print(f"warning: ignoring the unreadable cache {path}: {error}", file=sys.stderr)
                data = {}
            if data.get("format") == CACHE_FORMAT:
                self.entries = data.get("entries", {})

    def options(self, qp):
        """Return the nnc.compress options at qp; empty means NNCodec's own defaults."""
        if self.nonweight_offset is None:
            return {}
        return {"nonweight_qp": qp + self.nonweight_offset}

    def key(self, model, qp):
        options = json.dumps(self.options(qp), sort_keys=True)
        return f"{model.sha256}|qp={qp}|{nncodec_env.NNCODEC_REQUIREMENT}|options={options}"

    def get(self, model, qp):
        entry = self.entries.get(self.key(model, qp)) if self.lookup else None
        if entry is None:
            return None
        return Point(qp, 8 * entry["bytes"] / model.weights, entry["sqnr_db"])

    def put(self, model, qp, coded_bytes, sqnr_db, version):
        self.entries[self.key(model, qp)] = {"model": model.name, "qp": qp, "bytes": coded_bytes,
                                             "sqnr_db": sqnr_db, "nncodec_version": version}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps({"format": CACHE_FORMAT, "entries": self.entries},
                                        indent=1, sort_keys=True), encoding="utf-8")
        os.replace(temporary, self.path)


def code_nncodec(model, qp, cache):
    """Return NNCodec's Point for a model at qp, from the cache or from a new run."""
    cached = cache.get(model, qp)
    if cached is not None:
        return cached
    if not nncodec_anchor.nncodec_available():
        sys.exit("NNCodec is not available (see the warning above); run "
                 "python3 bench/anchors/nncodec_env.py to build its venv")
    result = nncodec_anchor.run_nncodec(model.arrays, qp, **cache.options(qp))
    sqnr = common.sqnr_db(model.arrays, result.decoded)
    cache.put(model, qp, result.bytes, sqnr, result.version)
    return Point(qp, 8 * result.bytes / model.weights, sqnr)


def method_coders(rdoq, cache, workdir):
    """Return {method label: function(model, qp) -> Point}, NNCodec first."""
    coders = {REFERENCE: lambda model, qp: code_nncodec(model, qp, cache)}
    variants = {"wcodec intra": {"mode": "intra"}, "wcodec auto": {"mode": "auto"}}
    if rdoq:
        variants["wcodec intra+rdoq"] = {"mode": "intra", "rdoq": True}
    variants["wcodec intra+dq"] = {"mode": "intra", "quantizer": "dependent"}
    variants["wcodec auto+dq"] = {"mode": "auto", "quantizer": "dependent"}
    for label, options in variants.items():
        coders[label] = (lambda model, qp, options=options: code_wcodec(model, qp, options,
                                                                        workdir))
    coders["uniform+zstd"] = code_uniform_zstd
    return coders


def measure_model(model, coders, qps):
    """Return {method: [Point]} for one model; a failed point is reported and left out."""
    curves = {}
    for method, coder in coders.items():
        points = []
        for qp in qps:
            start = time.perf_counter()
            try:
                point = coder(model, qp)
            except (wcodec.WcodecError, nncodec_anchor.NncodecError) as error:
                print(f"error: {method} failed on {model.name} at qp {qp}: {error}",
                      file=sys.stderr, flush=True)
                continue
            seconds = time.perf_counter() - start
            print(f"  {model.name:<24} {method:<18} qp {qp:>4}: {point.bits_per_weight:7.3f} "
                  f"bits/weight, {point.sqnr_db:6.2f} dB ({seconds:.1f} s)", flush=True)
            points.append(point)
        curves[method] = points
    return curves


def bd_rates(curves, method):
    """Return {method: BdRate} of every non-reference curve against NNCodec."""
    reference = [(p.bits_per_weight, p.sqnr_db) for p in curves[REFERENCE]]
    results = {}
    for label, points in curves.items():
        if label == REFERENCE:
            continue
        results[label] = bdrate.bd_rate(reference, [(p.bits_per_weight, p.sqnr_db)
                                                    for p in points], method)
    return results


def format_percent(result):
    return "n/a" if result.percent is None else f"{result.percent:+.1f}%"


def goal_verdict(results):
    """Return the goal cell: whether the best wcodec BD-rate is at most GOAL_BD_RATE."""
    measured = {label: r.percent for label, r in results.items()
                if label.startswith("wcodec") and r.percent is not None}
    if not measured:
        return "no (no wcodec BD-rate)", False
    best = min(measured, key=measured.get)
    met = measured[best] <= GOAL_BD_RATE
    return f"{'yes' if met else 'no'} (best: {best}, {measured[best]:+.1f}%)", met


def summary_table(models, all_curves, polyfit):
    methods = [m for m in next(iter(all_curves.values())) if m != REFERENCE]
    lines = ["| model | weights | " + " | ".join(methods) + " | goal met |",
             "|---|---:|" + "---:|" * len(methods) + "---|"]
    met_count = 0
    for model in models:
        results = polyfit[model.name]
        verdict, met = goal_verdict(results)
        met_count += met
        cells = " | ".join(format_percent(results[m]) for m in methods)
        lines.append(f"| {model.name} | {model.weights:,} | {cells} | {verdict} |")
    lines.append("")
    lines.append(f"Goal (BD-rate <= {GOAL_BD_RATE:.0f}% against NNCodec for the best wcodec "
                 f"method) met on {met_count} of {len(models)} models.")
    return lines


def detail_table(models, polyfit, pchip):
    lines = ["| model | method | SQNR overlap dB | BD-rate (cubic fit) | BD-rate (PCHIP) | notes |",
             "|---|---|---|---:|---:|---|"]
    for model in models:
        for method, result in polyfit[model.name].items():
            if result.percent is None:
                overlap = "none"
            else:
                overlap = f"{result.quality_low:.1f} to {result.quality_high:.1f}"
            notes = "; ".join(result.notes + ((result.reason,) if result.reason else ()))
            lines.append(f"| {model.name} | {method} | {overlap} | {format_percent(result)} | "
                         f"{format_percent(pchip[model.name][method])} | {notes} |")
    return lines


def equal_quality_table(models, all_curves):
    """Return rows of bits per weight of each method at fixed SQNR levels (PCHIP of log rate)."""
    methods = list(next(iter(all_curves.values())))
    lines = ["| model | SQNR dB | " + " | ".join(methods) + " |",
             "|---|---:|" + "---:|" * len(methods)]
    for model in models:
        rates = {}
        for method in methods:
            points = [(p.bits_per_weight, p.sqnr_db) for p in all_curves[model.name][method]]
            if len({q for _, q in points if math.isfinite(q)}) < 2:
                rates[method] = [math.nan] * len(COMPARISON_SQNR_DB)
            else:
                rates[method] = bdrate.rate_at_quality(points, COMPARISON_SQNR_DB)
        for index, level in enumerate(COMPARISON_SQNR_DB):
            cells = [rates[m][index] for m in methods]
            if all(math.isnan(c) for c in cells):
                continue
            text = " | ".join("" if math.isnan(c) else f"{c:.3f}" for c in cells)
            lines.append(f"| {model.name} | {level:.0f} | {text} |")
    return lines


def points_table(model, curves, qps):
    methods = list(curves)
    lines = [f"{model.name}: bits/weight / SQNR dB", "",
             "| qp | " + " | ".join(methods) + " |",
             "|---:|" + "---:|" * len(methods)]
    for qp in qps:
        cells = []
        for method in methods:
            point = next((p for p in curves[method] if p.qp == qp), None)
            cells.append("failed" if point is None
                         else f"{point.bits_per_weight:.3f} / {point.sqnr_db:.2f}")
        lines.append(f"| {qp} | " + " | ".join(cells) + " |")
    return lines


def plot_model(model, curves, results, path):
    """Write the RD curves of one model as a PNG: SQNR against bits per weight (log axis)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from matplotlib.ticker import FormatStrFormatter

    figure, axes = plt.subplots(figsize=(7.5, 5.0))
    # Distinct markers and dashes, because curves such as intra and auto often coincide.
    markers = "sv^Dxo"
    for index, (method, points) in enumerate(curves.items()):
        if not points:
            continue
        ordered = sorted(points, key=lambda p: p.bits_per_weight)
        label = method
        if method in results:
            label += f" (BD-rate {format_percent(results[method])})"
        if method == REFERENCE:
            style = {"color": "black", "marker": "o", "linestyle": "-"}
        elif "rdoq" in method or "dq" in method:
            style = {"marker": markers[index % len(markers)], "linestyle": "--"}
        elif "zstd" in method:
            style = {"marker": markers[index % len(markers)], "linestyle": ":"}
        else:
            style = {"marker": markers[index % len(markers)], "linestyle": "-"}
        axes.plot([p.bits_per_weight for p in ordered], [p.sqnr_db for p in ordered],
                  label=label, markersize=4, linewidth=1.2, markerfacecolor="none", **style)
    axes.set_xscale("log")
    axes.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    axes.xaxis.set_minor_formatter(FormatStrFormatter("%g"))
    axes.set_xlabel("bits per weight (whole file)")
    axes.set_ylabel("SQNR dB (tensors with ndim >= 2)")
    axes.set_title(f"{model.name}: {model.weights:,} weights, BD-rate against NNCodec")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def select_models(args):
    paths = common.shared_models()
    if args.model:
        stems = {path.stem for path in paths}
        missing = sorted(set(args.model) - stems)
        if missing:
            sys.exit(f"model(s) {missing} not found in {common.models_dir()}; available: "
                     f"{', '.join(sorted(stems))}")
        paths = [path for path in paths if path.stem in args.model]
    elif args.quick:
        paths = sorted(paths, key=lambda path: path.stat().st_size)[:QUICK_MODEL_COUNT]
        paths.sort()
    return paths


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--qp", type=int, nargs="+",
                        help=f"qps of every method (default: {' '.join(map(str, DEFAULT_QPS))})")
    parser.add_argument("--quick", action="store_true",
                        help=f"qps {' '.join(map(str, QUICK_QPS))} on the "
                             f"{QUICK_MODEL_COUNT} smallest models (unless --qp or --model)")
    parser.add_argument("--model", action="append",
                        help="file name stem of a model to measure; repeatable (default: all)")
    parser.add_argument("--nncodec-nonweight-offset", type=int, metavar="OFFSET",
                        help="code NNCodec's tensors with fewer than 2 dimensions at qp + OFFSET "
                             "(wcodec uses -24) instead of NNCodec's default qp -75")
    parser.add_argument("--no-cache", action="store_true",
                        help="run NNCodec for every point and overwrite its cached results")
    parser.add_argument("--write", action="store_true",
                        help="replace the rd section of bench/RESULTS.md")
    return parser.parse_args()


def main():
    args = parse_args()
    qps = args.qp or list(QUICK_QPS if args.quick else DEFAULT_QPS)
    models = [load_model(path) for path in select_models(args)]
    rdoq = wcodec_supports_rdoq()
    cache = NncodecCache(CACHE_PATH, args.nncodec_nonweight_offset, lookup=not args.no_cache)
    if args.nncodec_nonweight_offset is None:
        nncodec_setup = "at its defaults (tensors with ndim < 2 at qp -75)"
    else:
        offset = args.nncodec_nonweight_offset
        nncodec_setup = (f"with tensors of ndim < 2 at qp {'-' if offset < 0 else '+'} "
                         f"{abs(offset)}, other options at their defaults")

    import matplotlib
    import zstandard

    command = ("python bench/rd.py " + " ".join(sys.argv[1:])).strip()
    header = [
        common.machine_description() + f", zstandard {zstandard.__version__}, "
        f"matplotlib {matplotlib.__version__}",
        f"Parameters: qp {' '.join(map(str, qps))}; {nncodec_env.NNCODEC_REQUIREMENT} "
        f"{nncodec_setup}; zstd level {ZSTD_LEVEL}; wcodec rdoq {'measured' if rdoq else 'not available'}. "
        f"Command: `{command}`",
    ]
    print("\n".join(header), flush=True)

    all_curves = {}
    polyfit = {}
    pchip = {}
    with tempfile.TemporaryDirectory() as workdir:
        coders = method_coders(rdoq, cache, workdir)
        for model in models:
            curves = measure_model(model, coders, qps)
            all_curves[model.name] = curves
            polyfit[model.name] = bd_rates(curves, "polyfit")
            pchip[model.name] = bd_rates(curves, "pchip")
            # The committed plots belong to the results page, so only --write replaces them.
            if args.write:
                plot_model(model, curves, polyfit[model.name],
                           PLOTS_DIR / f"rd_{model.name}.png")

    lines = header + [
        "",
        "BD-rate against NNCodec (cubic fit of log rate against SQNR; negative means fewer "
        "bits than NNCodec at equal SQNR):",
        "",
        *summary_table(models, all_curves, polyfit),
        "",
        "Interval of integration, and the PCHIP BD-rate as a cross-check:",
        "",
        *detail_table(models, polyfit, pchip),
        "",
        "Bits per weight at equal SQNR (PCHIP interpolation of log rate; blank outside the "
        "measured range):",
        "",
        *equal_quality_table(models, all_curves),
        "",
        "Plots: " + ", ".join(f"[{m.name}](plots/rd_{m.name}.png)" for m in models),
    ]
    for model in models:
        lines += ["", *points_table(model, all_curves[model.name], qps)]
    print("\n" + "\n".join(lines[len(header):]), flush=True)
    if args.write:
        common.update_results_section("rd", "\n".join(lines))


if __name__ == "__main__":
    main()

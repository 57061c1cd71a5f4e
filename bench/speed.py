"""Encode and decode throughput and peak memory of wcodec, NNCodec, zstd and ZipNN.

Throughput is in MB/s of float32-equivalent input: 4 bytes times the number of values in
the file, divided by the median seconds of ``--repeats`` runs (MB = 10**6 bytes). The
size counts 4 bytes per value whatever the file's dtype, so every method on a model is
divided by the same size.

- wcodec: ``encode_file`` (safetensors in, .wbs out) in modes intra and auto, and
  ``load`` (.wbs to torch tensors, the call a user makes at model load time), in process,
  after a warm-up that compiles or loads the Numba kernels. When ``encode_file`` and
  ``load`` accept ``jobs``, both jobs=1 and jobs=os.cpu_count() are measured.
- NNCodec: the in-process times of ``nnc.compress`` and ``nnc.decompress`` that the
  worker of bench/anchors/nncodec.py reports, at NNCodec's defaults and the same qp. Each
  run is a fresh process, so NNCodec is timed on its first call while wcodec is warm.
- zstd levels 3 and 19 (python-zstandard, one thread) and ZipNN (one thread, float32
  byte grouping) over the raw float32 bytes of all tensors concatenated. They are
  lossless, so their throughput does not depend on qp.

The shared models are measured one by one, and "all six" adds their values and their
median seconds. A synthetic model (convolution weights [256, 256, 3, 3] drawn from a
Laplace distribution with a fixed seed, ``--large-mb`` MB of float32) shows throughput
and memory at a size the shared models do not reach. Peak RSS comes from a child process
that does a single encode or decode and reports its own peak (VmHWM, so Linux only),
next to a child that only imports wcodec. The bin rate is the arithmetic decoder alone
on one frame of the synthetic model: ``residual_coding.decode_levels`` and the bin count
in the coder state.

A full run (four qps, six models, five repeats, 150 MB synthetic model) took 14 minutes
on a 2-core machine. NNCodec's worker starts a new process for each of its 120 runs. The
first run also builds NNCodec's venv (2 to 3 minutes). ``--large-mb 1024`` measures a 1 GB
model: with ``--qp -32 --repeats 1 --large-repeats 1`` that run took 10 minutes, and its
``load`` child peaked at 2.6 GB RSS. Allow about 3 GB of free memory and 2.5 GB of disk in
the temporary folder for it.

    python bench/speed.py [--qp -38 -32 -26 -20] [--quick] [--repeats 5]
                          [--large-mb 150] [--large-qp -32] [--large-repeats 3] [--write]
"""

import argparse
import gc
import importlib.metadata
import inspect
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import numpy as np  # noqa: E402
from anchors import nncodec as nncodec_anchor  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402

import wcodec  # noqa: E402
from wcodec.codec import cabac, residual_coding  # noqa: E402
from wcodec.codec.block_syntax import FRAME_INTRA  # noqa: E402
from wcodec.codec.frame_coder import QUANTIZER_UNIFORM  # noqa: E402
from wcodec.codec.frames import frame_geometry  # noqa: E402
from wcodec.decoder import open_wbs  # noqa: E402
from wcodec.formats.safetensors_io import SafetensorsWriter, TensorInfo  # noqa: E402

DEFAULT_QPS = (-38, -32, -26, -20)
QUICK_QP = -32
WARM_UP_QP = -32
QUICK_MODEL_COUNT = 2
QUICK_LARGE_MB = 16
MODES = ("intra", "auto")
ZSTD_LEVELS = (3, 19)
# The goal: at equal qp, wcodec decodes at least 5 times and encodes (mode auto) at least
# 2 times as fast as NNCodec.
GOAL_DECODE_RATIO = 5.0
GOAL_ENCODE_RATIO = 2.0
LARGE_LAYER_SHAPE = (256, 256, 3, 3)
BIN_RATE_REPEATS = 9  # one frame decodes in well under a second
MB = 1e6
KIB = 1024

# Run by each peak-RSS child: one wcodec call given by a JSON request in argv[1], then
# one JSON line with the peak RSS of the process and the call's seconds. The peak is
# VmHWM from /proc/self/status, the high-water mark of this address space alone. Linux
# carries ru_maxrss over exec from the process that forked, so getrusage in the child
# (or RUSAGE_CHILDREN in the parent) would report at least the benchmark's own RSS.
# The seconds include loading the Numba kernels from the on-disk cache, as at the first
# load in a user's process.
RSS_CHILD = """
import json, sys, time
request = json.loads(sys.argv[1])
import wcodec
options = request["options"]
start = time.perf_counter()
if request["action"] == "encode":
    wcodec.encode_file(request["src"], request["dst"], force=True, **options)
elif request["action"] == "load":
    tensors = wcodec.load(request["src"], **options)
elif request["action"] == "decode_file":
    wcodec.decode_file(request["src"], request["dst"], force=True, **options)
seconds = time.perf_counter() - start
with open("/proc/self/status", encoding="ascii") as status:
    peak_kib = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
print(json.dumps({"peak_kib": peak_kib, "seconds": seconds}))
"""


@dataclass
class Model:
    """A model to code: its safetensors file, float32 arrays and size."""

    name: str
    path: Path
    arrays: dict
    values: int

    @property
    def float32_bytes(self):
        return 4 * self.values

    def raw_bytes(self):
        """Return the float32 bytes of all tensors, concatenated in file order."""
        return b"".join(np.ascontiguousarray(a, dtype="<f4").tobytes()
                        for a in self.arrays.values())


@dataclass
class Timing:
    """Median encode and decode seconds of one method on one input; None if not measured."""

    encode_s: float | None
    decode_s: float | None


def megabytes_per_second(byte_count, seconds):
    if seconds is None or seconds <= 0:
        return None
    return byte_count / seconds / MB


def format_number(value, digits=1):
    return "n/a" if value is None else f"{value:.{digits}f}"


def format_ratio(value):
    return "n/a" if value is None else f"{value:.2f}x"


def ratio(numerator, denominator):
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


# ---------------------------------------------------------------------------------------
# wcodec


def jobs_settings():
    """Return the jobs values to measure: (1, cores) when the API takes ``jobs``, else (None,).

    None means a call without the keyword, which is wcodec's own default.
    """
    supported = ["jobs" in inspect.signature(function).parameters
                 for function in (wcodec.encode_file, wcodec.load, wcodec.decode_file)]
    if not any(supported):
        return (None,)
    cores = os.cpu_count() or 1
    return (1,) if cores == 1 else (1, cores)


def jobs_options(function, jobs):
    """Return the keyword arguments that select ``jobs`` for ``function``; None if it cannot."""
    if jobs is None:
        return {}
    if "jobs" not in inspect.signature(function).parameters:
        return None
    return {"jobs": jobs}


def jobs_label(jobs):
    return "default" if jobs is None else str(jobs)


def time_wcodec(model_path, qp, mode, jobs, repeats, wbs_path):
    """Return the median Timing of encode_file and load; leave the .wbs file at wbs_path."""
    encode_options = jobs_options(wcodec.encode_file, jobs)
    load_options = jobs_options(wcodec.load, jobs)
    encode_s = decode_s = None
    if encode_options is None:
        # The file to decode still has to exist, so encode it with the default jobs.
        wcodec.encode_file(model_path, wbs_path, qp=qp, mode=mode, force=True)
    else:
        encode_s, _ = common.timed(
            lambda: wcodec.encode_file(model_path, wbs_path, qp=qp, mode=mode, force=True,
                                       **encode_options), repeats)
    if load_options is not None:
        def load_and_discard():
            # Returning the tensors would keep one result alive during the next run, which
            # doubles the benchmark's memory on a large model.
            wcodec.load(wbs_path, **load_options)

        decode_s, _ = common.timed(load_and_discard, repeats)
    gc.collect()
    return Timing(encode_s, decode_s)


def warm_up(model_path, workdir):
    """Compile or load every Numba kernel that the timed calls use, in each jobs setting."""
    wbs_path = os.path.join(workdir, "warm-up.wbs")
    for jobs in jobs_settings():
        for mode in MODES:
            time_wcodec(model_path, WARM_UP_QP, mode, jobs, 1, wbs_path)


# ---------------------------------------------------------------------------------------
# NNCodec, zstd and ZipNN


def time_nncodec(model, qp, repeats):
    """Return NNCodec's median Timing on a model; None times when NNCodec fails."""
    encode_times = []
    decode_times = []
    for _ in range(repeats):
        try:
            result = nncodec_anchor.run_nncodec(model.arrays, qp)
        except nncodec_anchor.NncodecError as error:
            print(f"error: NNCodec failed on {model.name} at qp {qp}: {error}", file=sys.stderr,
                  flush=True)
            return Timing(None, None)
        encode_times.append(result.encode_s)
        decode_times.append(result.decode_s)
    return Timing(statistics.median(encode_times), statistics.median(decode_times))


def nncodec_version():
    """Return the installed NNCodec version from one tiny run, or None when unavailable."""
    if not nncodec_anchor.nncodec_available():
        return None
    probe = {"w": np.zeros((2, 2), dtype=np.float32)}
    return nncodec_anchor.run_nncodec(probe, WARM_UP_QP).version


def zipnn_version():
    try:
        import zipnn  # noqa: F401
    except ImportError:
        return None
    return importlib.metadata.version("zipnn")


@dataclass
class LosslessResult:
    """Median compress and decompress seconds and the compression ratio of a lossless coder."""

    timing: Timing
    ratio: float | None
    note: str = ""


def time_lossless(compress, decompress, raw, repeats, copy_input=False):
    """Time a lossless coder on ``raw`` and check that decompression returns ``raw``.

    With ``copy_input``, each compress call gets a fresh copy of ``raw``, made outside the
    timed interval, because ZipNN 0.5.4 overwrites the buffer it compresses.
    """
    compress_times = []
    decompress_times = []
    compressed = restored = None
    for _ in range(repeats):
        data = bytearray(raw) if copy_input else raw
        start = time.perf_counter()
        compressed = compress(data)
        compress_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        restored = decompress(compressed)
        decompress_times.append(time.perf_counter() - start)
    if bytes(restored) != raw:
        return LosslessResult(Timing(None, None), None, "round trip changed the data")
    return LosslessResult(Timing(statistics.median(compress_times),
                                 statistics.median(decompress_times)),
                          len(raw) / len(compressed))


def lossless_coders():
    """Return {label: (compress, decompress, copy_input)} for zstd and, if installed, ZipNN."""
    import zstandard

    coders = {}
    for level in ZSTD_LEVELS:
        compressor = zstandard.ZstdCompressor(level=level)
        decompressor = zstandard.ZstdDecompressor()
        coders[f"zstd {level}"] = (compressor.compress, decompressor.decompress, False)
    if zipnn_version() is not None:
        import zipnn

        compressor = zipnn.ZipNN(input_format="byte", bytearray_dtype="float32", threads=1)
        decompressor = zipnn.ZipNN(input_format="byte", bytearray_dtype="float32", threads=1)
        coders["ZipNN"] = (compressor.compress, decompressor.decompress, True)
    return coders


# ---------------------------------------------------------------------------------------
# Peak RSS in child processes


@dataclass
class RssResult:
    """Peak RSS of one child process and the seconds of its wcodec call.

    ``action`` is "encode" (in mode ``mode``), "load" or "decode_file" (of a file
    encoded in mode ``mode``).
    """

    label: str
    action: str
    mode: str
    jobs: int | None
    model_bytes: int
    peak_mb: float | None
    seconds: float | None


def run_rss_child(action, options, src=None, dst=None):
    """Run RSS_CHILD for one action; return (peak RSS MB, seconds of the call)."""
    request = {"action": action, "options": options, "src": str(src), "dst": str(dst)}
    completed = subprocess.run([sys.executable, "-c", RSS_CHILD, json.dumps(request)],
                               capture_output=True, text=True, cwd=common.REPO_DIR)
    if completed.returncode != 0:
        tail = "\n".join(completed.stderr.strip().splitlines()[-5:])
        print(f"error: peak-RSS child for {action} {src} failed with exit code "
              f"{completed.returncode}:\n{tail}", file=sys.stderr, flush=True)
        return None, None
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    return report["peak_kib"] * KIB / MB, report["seconds"]


def measure_rss(label, model_path, model_bytes, modes, jobs_values, qp, workdir):
    """Return an RssResult per action, mode and jobs setting for one model.

    For each mode, one child encodes the model, and one child each runs ``load`` and
    ``decode_file`` on that child's output.
    """
    results = []
    actions = (("encode", wcodec.encode_file), ("load", wcodec.load),
               ("decode_file", wcodec.decode_file))
    decoded_path = Path(workdir) / "rss-decoded.safetensors"
    for jobs in jobs_values:
        for mode in modes:
            wbs_path = Path(workdir) / f"rss-{mode}.wbs"
            for action, function in actions:
                options = jobs_options(function, jobs)
                if options is None:
                    continue
                if action == "encode":
                    peak, seconds = run_rss_child(action, {**options, "qp": qp, "mode": mode},
                                                  model_path, wbs_path)
                else:
                    if not wbs_path.exists():
                        wcodec.encode_file(model_path, wbs_path, qp=qp, mode=mode, force=True)
                    peak, seconds = run_rss_child(action, options, wbs_path, decoded_path)
                    decoded_path.unlink(missing_ok=True)
                results.append(RssResult(label, action, mode, jobs, model_bytes, peak, seconds))
                print(f"  peak RSS {label:<24} {action:<11} {mode:<5} jobs "
                      f"{jobs_label(jobs):>7}: {format_number(peak)} MB", flush=True)
            wbs_path.unlink(missing_ok=True)
    return results


# ---------------------------------------------------------------------------------------
# Synthetic large model and the bin rate


def write_synthetic_model(path, megabytes, seed):
    """Write a float32 model of Laplace-distributed convolution weights; return its value count.

    Each layer is LARGE_LAYER_SHAPE. The standard deviation is 1 / sqrt(fan_in), about
    0.021 for 256 x 3 x 3 inputs, times a factor exp(N(0, 0.25**2)) per output channel, so
    channel scales vary as they do in trained convolutions. Layers are written one at a
    time, so the parent process keeps at most one in memory.
    """
    layer_values = int(np.prod(LARGE_LAYER_SHAPE))
    layers = max(1, round(megabytes * MB / (4 * layer_values)))
    fan_in = int(np.prod(LARGE_LAYER_SHAPE[1:]))
    scale = 1.0 / np.sqrt(2.0 * fan_in)  # Laplace scale b: standard deviation / sqrt(2)
    rng = np.random.default_rng(seed)
    infos = [TensorInfo(f"layers.{i}.conv.weight", "F32", LARGE_LAYER_SHAPE)
             for i in range(layers)]
    with SafetensorsWriter(path, infos, {"generator": f"bench/speed.py seed {seed}"}) as writer:
        for info in infos:
            channel_scale = np.exp(rng.normal(0.0, 0.25, size=(LARGE_LAYER_SHAPE[0], 1, 1, 1)))
            weights = rng.laplace(0.0, scale, size=LARGE_LAYER_SHAPE) * channel_scale
            writer.write(info.name, weights.astype("<f4").tobytes())
    return layers * layer_values


def decode_bins(payload, shape):
    """Decode an intra frame's levels with decode_levels; return (seconds, bins)."""
    geometry = frame_geometry(shape)
    start = time.perf_counter()
    _, coder = residual_coding.decode_levels(payload, (geometry.rows, geometry.row_length),
                                             geometry.block_size)
    seconds = time.perf_counter() - start
    if coder[cabac.ERROR]:
        raise RuntimeError("decode_levels found an inconsistent stream in a frame that "
                           "wcodec.encode_file just wrote")
    return seconds, int(coder[cabac.BINS])


@dataclass
class BinRate:
    """The arithmetic decoder's speed on one frame, and the bins in the whole file."""

    frame_values: int
    frame_bins: int
    frame_seconds: float
    file_values: int
    file_bins: int

    @property
    def bins_per_second(self):
        return self.frame_bins / self.frame_seconds


def measure_bin_rate(wbs_path):
    """Time decode_levels on the first intra frame and count the bins of every intra frame.

    Only uniformly quantized intra frames qualify, because their payload is the levels
    alone. Returns None when the file has none.
    """
    with open_wbs(wbs_path) as wbs:
        frames = [index for index, record in enumerate(wbs.header.tensors)
                  if wbs.is_frame(index) and record.frame_mode == FRAME_INTRA
                  and record.quantizer == QUANTIZER_UNIFORM]
        if not frames:
            return None
        shape = wbs.header.tensors[frames[0]].shape
        payload = bytes(wbs.payload(frames[0]))
        decode_bins(payload, shape)  # compile or load the kernel
        seconds = statistics.median(decode_bins(payload, shape)[0]
                                    for _ in range(BIN_RATE_REPEATS))
        frame_bins = decode_bins(payload, shape)[1]
        file_bins = 0
        file_values = 0
        for index in frames:
            frame_shape = wbs.header.tensors[index].shape
            file_bins += decode_bins(bytes(wbs.payload(index)), frame_shape)[1]
            file_values += int(np.prod(frame_shape))
    return BinRate(int(np.prod(shape)), frame_bins, seconds, file_values, file_bins)


# ---------------------------------------------------------------------------------------
# Tables


def throughput_table(models, qps, wcodec_times, nncodec_times, jobs_values):
    """Return the rows of wcodec and NNCodec MB/s for every model and qp."""
    columns = []
    for jobs in jobs_values:
        for mode in MODES:
            columns.append((mode, jobs))
    header = "| model | qp | " + " | ".join(
        f"{mode} j{jobs_label(jobs)} enc | {mode} j{jobs_label(jobs)} dec"
        for mode, jobs in columns) + " | NNCodec enc | NNCodec dec |"
    lines = [header, "|---|---:|" + "---:|" * (2 * len(columns) + 2)]
    for model in models:
        for qp in qps:
            cells = []
            for mode, jobs in columns:
                timing = wcodec_times[(model.name, qp, mode, jobs)]
                cells.append(format_number(megabytes_per_second(model.float32_bytes,
                                                                timing.encode_s)))
                cells.append(format_number(megabytes_per_second(model.float32_bytes,
                                                                timing.decode_s)))
            timing = nncodec_times[(model.name, qp)]
            cells.append(format_number(megabytes_per_second(model.float32_bytes,
                                                            timing.encode_s)))
            cells.append(format_number(megabytes_per_second(model.float32_bytes,
                                                            timing.decode_s)))
            lines.append(f"| {model.name} | {qp} | " + " | ".join(cells) + " |")
    return lines


def goal_ratios(wcodec_timing, nncodec_timing):
    """Return (decode ratio, encode ratio) of wcodec's throughput to NNCodec's."""
    decode = ratio(nncodec_timing.decode_s, wcodec_timing.decode_s)
    encode = ratio(nncodec_timing.encode_s, wcodec_timing.encode_s)
    return decode, encode


def goal_met(decode, encode):
    if decode is None or encode is None:
        return None
    return decode >= GOAL_DECODE_RATIO and encode >= GOAL_ENCODE_RATIO


def goal_table(models, total, qps, wcodec_times, nncodec_times, jobs_values):
    """Return the rows of the goal check per qp, on all models together and one by one."""
    lines = ["| qp | jobs | wcodec auto dec MB/s | NNCodec dec MB/s | decode ratio | "
             "wcodec auto enc MB/s | NNCodec enc MB/s | encode ratio | goal met | "
             "models meeting it |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    for qp in qps:
        for jobs in jobs_values:
            wcodec_timing = wcodec_times[(total.name, qp, "auto", jobs)]
            nncodec_timing = nncodec_times[(total.name, qp)]
            decode, encode = goal_ratios(wcodec_timing, nncodec_timing)
            met = goal_met(decode, encode)
            per_model = [goal_met(*goal_ratios(wcodec_times[(m.name, qp, "auto", jobs)],
                                               nncodec_times[(m.name, qp)])) for m in models]
            measured = [m for m in per_model if m is not None]
            if met is None:
                verdict = "n/a"
            else:
                verdict = "yes" if met else "no"
            bytes_ = total.float32_bytes
            lines.append(
                f"| {qp} | {jobs_label(jobs)} "
                f"| {format_number(megabytes_per_second(bytes_, wcodec_timing.decode_s))} "
                f"| {format_number(megabytes_per_second(bytes_, nncodec_timing.decode_s))} "
                f"| {format_ratio(decode)} "
                f"| {format_number(megabytes_per_second(bytes_, wcodec_timing.encode_s))} "
                f"| {format_number(megabytes_per_second(bytes_, nncodec_timing.encode_s))} "
                f"| {format_ratio(encode)} | {verdict} "
                f"| {sum(measured)} of {len(measured)} |")
    return lines


def relative_table(total, qps, wcodec_times, nncodec_times, lossless, jobs_values):
    """Return rows of each method's throughput divided by wcodec auto (jobs 1), per qp."""
    reference_jobs = jobs_values[0]
    methods = []
    for jobs in jobs_values:
        for mode in MODES:
            if (mode, jobs) != ("auto", reference_jobs):
                methods.append((f"wcodec {mode} jobs {jobs_label(jobs)}",
                                lambda qp, mode=mode, jobs=jobs:
                                wcodec_times[(total.name, qp, mode, jobs)]))
    methods.append(("NNCodec", lambda qp: nncodec_times[(total.name, qp)]))
    for label, result in lossless[total.name].items():
        methods.append((label, lambda qp, result=result: result.timing))

    lines = ["| method | " + " | ".join(f"qp {qp} dec / enc" for qp in qps) + " |",
             "|---|" + "---:|" * len(qps)]
    for label, timing_at in methods:
        cells = []
        for qp in qps:
            reference = wcodec_times[(total.name, qp, "auto", reference_jobs)]
            timing = timing_at(qp)
            decode = ratio(reference.decode_s, timing.decode_s)
            encode = ratio(reference.encode_s, timing.encode_s)
            cells.append(f"{format_ratio(decode)} / {format_ratio(encode)}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def lossless_table(models, lossless):
    labels = list(lossless[models[0].name])
    lines = ["| model | float32 MB | " + " | ".join(
        f"{label} comp MB/s | {label} decomp MB/s | {label} ratio" for label in labels) + " |",
        "|---|---:|" + "---:|" * (3 * len(labels))]
    for model in models:
        cells = []
        for label in labels:
            result = lossless[model.name][label]
            if result.note:
                cells += [result.note, "", ""]
                continue
            cells.append(format_number(megabytes_per_second(model.float32_bytes,
                                                            result.timing.encode_s)))
            cells.append(format_number(megabytes_per_second(model.float32_bytes,
                                                            result.timing.decode_s)))
            cells.append(f"{result.ratio:.3f}")
        lines.append(f"| {model.name} | {model.float32_bytes / MB:.2f} | "
                     + " | ".join(cells) + " |")
    return lines


def large_table(large_bytes, large_times, jobs_values):
    lines = ["| jobs | encode intra MB/s | load MB/s | decode_file MB/s |",
             "|---:|---:|---:|---:|"]
    for jobs in jobs_values:
        timing, decode_file_s = large_times[jobs]
        lines.append(f"| {jobs_label(jobs)} "
                     f"| {format_number(megabytes_per_second(large_bytes, timing.encode_s))} "
                     f"| {format_number(megabytes_per_second(large_bytes, timing.decode_s))} "
                     f"| {format_number(megabytes_per_second(large_bytes, decode_file_s))} |")
    return lines


def rss_table(baseline_mb, rss_results, fixed_label):
    """Return the peak-RSS rows, also with the peak of ``fixed_label`` set aside.

    The smallest model's peak for the same action and mode is the fixed cost of a call
    (the Numba kernels above all), so the rest of a larger model's peak scales with its
    data.
    """
    fixed = {(r.action, r.mode): r.peak_mb for r in rss_results
             if r.label == fixed_label and r.peak_mb is not None}
    lines = ["| input | float32 MB | call | mode | jobs | peak RSS MB | over import MB | "
             f"over {fixed_label} MB | that / float32 MB | cold-process s |",
             "|---|---:|---|---|---:|---:|---:|---:|---:|---:|",
             f"| (none) | 0 | import wcodec | | | {format_number(baseline_mb)} | 0 | | | |"]
    for result in rss_results:
        over_import = over_fixed = None
        if result.peak_mb is not None and baseline_mb is not None:
            over_import = result.peak_mb - baseline_mb
        fixed_mb = fixed.get((result.action, result.mode))
        if result.label != fixed_label and result.peak_mb is not None and fixed_mb is not None:
            over_fixed = result.peak_mb - fixed_mb
        if result.label == fixed_label:
            over_fixed_cell = relative_cell = ""
        else:
            over_fixed_cell = format_number(over_fixed)
            relative_cell = format_ratio(ratio(over_fixed, result.model_bytes / MB))
        lines.append(f"| {result.label} | {result.model_bytes / MB:.2f} | {result.action} "
                     f"| {result.mode} | {jobs_label(result.jobs)} "
                     f"| {format_number(result.peak_mb)} | {format_number(over_import)} "
                     f"| {over_fixed_cell} | {relative_cell} "
                     f"| {format_number(result.seconds, 2)} |")
    return lines


def bin_rate_lines(bin_rate, large_bytes, large_times, jobs_values):
    if bin_rate is None:
        return ["The synthetic model has no intra frame, so the bin rate was not measured."]
    lines = [f"Arithmetic decoder alone (`residual_coding.decode_levels`, one frame of "
             f"{bin_rate.frame_values:,} values, median of {BIN_RATE_REPEATS} runs): "
             f"{bin_rate.frame_bins:,} bins in {bin_rate.frame_seconds:.3f} s, "
             f"{bin_rate.bins_per_second / 1e6:.1f} Mbins/s, "
             f"{bin_rate.frame_bins / bin_rate.frame_values:.2f} bins per value.", "",
             "| jobs | file bins | load s | file bins / load s (Mbins/s) | "
             "ratio to the frame's bin rate |",
             "|---:|---:|---:|---:|---:|"]
    for jobs in jobs_values:
        timing, _ = large_times[jobs]
        if timing.decode_s is None:
            continue
        file_rate = bin_rate.file_bins / timing.decode_s
        lines.append(f"| {jobs_label(jobs)} | {bin_rate.file_bins:,} | {timing.decode_s:.2f} "
                     f"| {file_rate / 1e6:.1f} "
                     f"| {format_ratio(file_rate / bin_rate.bins_per_second)} |")
    return lines


def how_to_read(models):
    """Return the paragraph that explains the tables, for the results page."""
    sizes = [m.float32_bytes / MB for m in models]
    return (
        "How to read the speed tables: throughput is MB/s of float32-equivalent input, 4 bytes "
        "per value of the model divided by the median seconds (MB = 10^6 bytes), for every "
        "method. For wcodec, \"enc\" is `encode_file` and \"dec\" is `load` (to torch "
        "tensors), both in process after a warm-up and with files in the page cache. \"j2\" "
        "means jobs=2, two threads. NNCodec's figures are the times of `nnc.compress` and "
        "`nnc.decompress` inside its worker process, on their first call and without the "
        "process start. zstd and ZipNN are lossless and run on one thread, so they do not "
        "depend on qp. Their ratio is float32 bytes over compressed bytes. In the relative "
        "table each cell is a method's throughput divided by wcodec auto's with one job at "
        "that qp, so above 1x the method is faster. The goal is met at a qp when wcodec auto "
        f"decodes at least {GOAL_DECODE_RATIO:g}x and encodes at least {GOAL_ENCODE_RATIO:g}x "
        "as fast as NNCodec on the shared models together. Peak RSS is the VmHWM of a child "
        "process that makes one call. \"Over import\" subtracts a child that only imports "
        "wcodec (and so torch). The next column also subtracts the smallest model's peak, the "
        "fixed cost of the Numba kernels, so divided by the float32 size it estimates the "
        "memory per byte of model. Cold-process seconds include loading the kernels from "
        "Numba's cache. The bin rate is the arithmetic decoder alone on one frame. A "
        "whole-file ratio near 1x means that `load` runs at the decoder's bin rate, and above "
        "1x parallel jobs run several decoders at once. The shared models hold "
        f"{min(sizes):.2f} to {max(sizes):.2f} MB of float32 each, so their figures include "
        "per-file and per-tensor costs that the synthetic model spreads over more data.")


# ---------------------------------------------------------------------------------------
# Main


def select_models(quick):
    paths = common.shared_models()
    if quick:
        paths = sorted(sorted(paths, key=lambda path: path.stat().st_size)[:QUICK_MODEL_COUNT])
    models = []
    for path in paths:
        arrays = {name: np.asarray(array, dtype=np.float32)
                  for name, array in load_file(str(path)).items()}
        models.append(Model(path.stem, path, arrays, sum(a.size for a in arrays.values())))
    return models


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--qp", type=int, nargs="+",
                        help=f"qps of wcodec and NNCodec (default: "
                             f"{' '.join(map(str, DEFAULT_QPS))})")
    parser.add_argument("--quick", action="store_true",
                        help=f"qp {QUICK_QP} on the {QUICK_MODEL_COUNT} smallest models and a "
                             f"{QUICK_LARGE_MB} MB synthetic model (unless --qp or --large-mb)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="timed runs per measurement on the shared models (default: 5)")
    parser.add_argument("--large-mb", type=float,
                        help="float32 size of the synthetic model in MB (default: 150; 1024 "
                             "for 1 GB; 0 skips it)")
    parser.add_argument("--large-qp", type=int, default=-32,
                        help="qp of the synthetic model and of the peak-RSS children "
                             "(default: -32)")
    parser.add_argument("--large-repeats", type=int, default=3,
                        help="timed runs per measurement on the synthetic model (default: 3)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the synthetic model (default: 0)")
    parser.add_argument("--write", action="store_true",
                        help="replace the speed section of bench/RESULTS.md")
    args = parser.parse_args()
    if args.repeats < 1 or args.large_repeats < 1:
        parser.error("--repeats and --large-repeats must be at least 1")
    if args.large_mb is None:
        args.large_mb = QUICK_LARGE_MB if args.quick else 150.0
    if args.large_mb < 0:
        parser.error(f"--large-mb must be 0 or more, got {args.large_mb}")
    return args


def rates_text(model, timing):
    encode = megabytes_per_second(model.float32_bytes, timing.encode_s)
    decode = megabytes_per_second(model.float32_bytes, timing.decode_s)
    return f"enc {format_number(encode)} MB/s, dec {format_number(decode)} MB/s"


def measure_shared(models, qps, repeats, jobs_values, nncodec_ready, workdir):
    """Time wcodec, NNCodec and the lossless coders on every shared model."""
    wcodec_times = {}
    nncodec_times = {}
    lossless = {}
    coders = lossless_coders()
    wbs_path = os.path.join(workdir, "model.wbs")
    for model in models:
        size_mb = model.float32_bytes / MB
        for qp in qps:
            for jobs in jobs_values:
                for mode in MODES:
                    timing = time_wcodec(model.path, qp, mode, jobs, repeats, wbs_path)
                    wcodec_times[(model.name, qp, mode, jobs)] = timing
                    print(f"  {model.name:<24} qp {qp:>4} wcodec {mode:<5} jobs "
                          f"{jobs_label(jobs):>7}: {rates_text(model, timing)}", flush=True)
            timing = time_nncodec(model, qp, repeats) if nncodec_ready else Timing(None, None)
            nncodec_times[(model.name, qp)] = timing
            print(f"  {model.name:<24} qp {qp:>4} NNCodec: {rates_text(model, timing)}",
                  flush=True)
        raw = model.raw_bytes()
        lossless[model.name] = {}
        for label, (compress, decompress, copy_input) in coders.items():
            result = time_lossless(compress, decompress, raw, repeats, copy_input)
            lossless[model.name][label] = result
            print(f"  {model.name:<24} ({size_mb:.2f} MB) {label}: "
                  f"{result.note or f'ratio {result.ratio:.3f}'}", flush=True)
    return wcodec_times, nncodec_times, lossless


def add_total(models, qps, jobs_values, wcodec_times, nncodec_times, lossless):
    """Add the model "all six" (or "all N"): summed values and summed median seconds."""
    total = Model(f"all {len(models)}" if len(models) != 6 else "all six", Path(), {},
                  sum(m.values for m in models))

    def summed(timings):
        encode = [t.encode_s for t in timings]
        decode = [t.decode_s for t in timings]
        return Timing(None if None in encode else sum(encode),
                      None if None in decode else sum(decode))

    for qp in qps:
        for jobs in jobs_values:
            for mode in MODES:
                wcodec_times[(total.name, qp, mode, jobs)] = summed(
                    [wcodec_times[(m.name, qp, mode, jobs)] for m in models])
        nncodec_times[(total.name, qp)] = summed([nncodec_times[(m.name, qp)] for m in models])
    lossless[total.name] = {}
    for label in lossless[models[0].name]:
        results = [lossless[m.name][label] for m in models]
        notes = [r.note for r in results if r.note]
        if notes:
            lossless[total.name][label] = LosslessResult(Timing(None, None), None, notes[0])
            continue
        compressed = sum(m.float32_bytes / r.ratio for m, r in zip(models, results))
        lossless[total.name][label] = LosslessResult(summed([r.timing for r in results]),
                                                     total.float32_bytes / compressed)
    return total


def measure_large(args, jobs_values, workdir):
    """Measure wcodec intra on the synthetic model: throughput, bin rate and peak RSS."""
    source = Path(workdir) / "synthetic.safetensors"
    wbs_path = Path(workdir) / "synthetic.wbs"
    decoded_path = Path(workdir) / "synthetic-decoded.safetensors"
    values = write_synthetic_model(source, args.large_mb, args.seed)
    large_bytes = 4 * values
    print(f"Synthetic model: {values:,} values, {large_bytes / MB:.1f} MB float32", flush=True)

    large_times = {}
    for jobs in jobs_values:
        timing = time_wcodec(source, args.large_qp, "intra", jobs, args.large_repeats, wbs_path)
        options = jobs_options(wcodec.decode_file, jobs)
        decode_file_s = None
        if options is not None:
            decode_file_s, _ = common.timed(
                lambda: wcodec.decode_file(wbs_path, decoded_path, force=True, **options),
                args.large_repeats)
            decoded_path.unlink(missing_ok=True)
        large_times[jobs] = (timing, decode_file_s)
        print(f"  synthetic jobs {jobs_label(jobs)}: enc "
              f"{format_number(megabytes_per_second(large_bytes, timing.encode_s))} MB/s, load "
              f"{format_number(megabytes_per_second(large_bytes, timing.decode_s))} MB/s, "
              f"decode_file {format_number(megabytes_per_second(large_bytes, decode_file_s))}"
              f" MB/s", flush=True)

    bin_rate = measure_bin_rate(wbs_path)
    wbs_path.unlink(missing_ok=True)
    rss = measure_rss(f"synthetic {large_bytes / MB:.0f} MB", source, large_bytes,
                      ("intra",), jobs_values, args.large_qp, workdir)
    source.unlink()
    return large_bytes, large_times, bin_rate, rss


def main():
    args = parse_args()
    qps = args.qp or ([QUICK_QP] if args.quick else list(DEFAULT_QPS))
    models = select_models(args.quick)
    jobs_values = jobs_settings()
    nncodec_ready = nncodec_anchor.nncodec_available()
    nncodec = nncodec_version() if nncodec_ready else None
    zipnn = zipnn_version()

    import zstandard

    command = ("python bench/speed.py " + " ".join(sys.argv[1:])).strip()
    jobs_note = ("jobs " + " and ".join(map(str, jobs_values)) if jobs_values != (None,)
                 else "no jobs keyword in this wcodec, so its default")
    header = [
        common.machine_description() + f", zstandard {zstandard.__version__}, "
        f"zipnn {zipnn or 'not installed'}, NNCodec {nncodec or 'not available'}",
        f"Parameters: qp {' '.join(map(str, qps))}; wcodec modes {' and '.join(MODES)}, "
        f"{jobs_note}; median of {args.repeats} runs per shared model and "
        f"{args.large_repeats} per synthetic-model measurement, after a warm-up; synthetic "
        f"model {args.large_mb:g} MB at qp {args.large_qp}, seed {args.seed}. "
        f"Command: `{command}`",
    ]
    print("\n".join(header), flush=True)

    with tempfile.TemporaryDirectory(prefix="wcodec-speed-") as workdir:
        smallest = min(models, key=lambda m: m.values)
        largest = max(models, key=lambda m: m.values)
        warm_up(smallest.path, workdir)
        wcodec_times, nncodec_times, lossless = measure_shared(
            models, qps, args.repeats, jobs_values, nncodec_ready, workdir)
        total = add_total(models, qps, jobs_values, wcodec_times, nncodec_times, lossless)

        baseline_mb, _ = run_rss_child("import", {})
        print(f"  peak RSS of a child that imports wcodec: {format_number(baseline_mb)} MB",
              flush=True)
        rss_results = measure_rss(smallest.name, smallest.path, smallest.float32_bytes,
                                  MODES, jobs_values[:1], args.large_qp, workdir)
        rss_results += measure_rss(largest.name, largest.path, largest.float32_bytes,
                                   MODES, jobs_values, args.large_qp, workdir)

        large = None
        if args.large_mb > 0:
            large = measure_large(args, jobs_values, workdir)
            rss_results += large[3]

    all_models = models + [total]
    lines = header + [
        "",
        how_to_read(models),
        "",
        f"Goal check on the {len(models)} shared models together (wcodec mode auto):",
        "",
        *goal_table(models, total, qps, wcodec_times, nncodec_times, jobs_values),
        "",
        f"Throughput of each method divided by wcodec auto with jobs "
        f"{jobs_label(jobs_values[0])}, {len(models)} shared models together (decode / encode):",
        "",
        *relative_table(total, qps, wcodec_times, nncodec_times, lossless, jobs_values),
        "",
        "wcodec and NNCodec, MB/s of float32-equivalent input (j = jobs):",
        "",
        *throughput_table(all_models, qps, wcodec_times, nncodec_times, jobs_values),
        "",
        "Lossless coders over the raw float32 bytes (one thread):",
        "",
        *lossless_table(all_models, lossless),
    ]
    if large is not None:
        large_bytes, large_times, bin_rate, _ = large
        lines += ["",
                  f"Synthetic model, {large_bytes / MB:.0f} MB float32, wcodec intra at qp "
                  f"{args.large_qp}, MB/s:",
                  "",
                  *large_table(large_bytes, large_times, jobs_values),
                  "",
                  *bin_rate_lines(bin_rate, large_bytes, large_times, jobs_values)]
    lines += ["",
              f"Peak RSS of a child process doing one call, qp {args.large_qp}:",
              "",
              *rss_table(baseline_mb, rss_results, smallest.name)]
    print("\n" + "\n".join(lines[len(header):]), flush=True)
    if args.write:
        common.update_results_section("speed", "\n".join(lines))


if __name__ == "__main__":
    main()

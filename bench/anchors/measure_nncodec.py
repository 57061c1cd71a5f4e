"""Measure NNCodec's rate and distortion on the shared checkpoints.

For every model and qp this script reports bits per weight, which is
8 * bitstream bytes / number of values over all tensors. It also reports
SQNR in dB over the tensors with at least two dimensions, which is
10 * log10(sum of squared originals / sum of squared errors) with both sums
taken over all those tensors together. Tensors
with fewer dimensions are left out of the SQNR because the unfused
batch-norm variances of some models would dominate it. The TOTAL row codes
each model separately and adds up bytes, weights and squared sums.

Run it with the project's venv, which provides safetensors:

    .venv/bin/python bench/anchors/measure_nncodec.py [--json out/nncodec.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from nncodec import nncodec_available, run_nncodec

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODELS_DIR = REPO_ROOT.parent / "shared" / "models"
DEFAULT_QPS = (-38, -32, -26, -20)


@dataclass
class Measurement:
    model: str
    qp: int
    weights: int
    bytes: int
    signal_energy: float
    """Sum of squared original values over the tensors with ndim >= 2."""
    error_energy: float
    """Sum of squared coding errors over the same tensors."""
    encode_s: float
    decode_s: float

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.bytes / self.weights

    @property
    def sqnr_db(self) -> float:
        if self.error_energy == 0:
            return math.inf
        return 10 * math.log10(self.signal_energy / self.error_energy)


def load_model(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(path))


def measure(model: str, arrays: dict[str, np.ndarray], qp: int, options: dict) -> tuple[Measurement, dict]:
    result = run_nncodec(arrays, qp, **options)
    signal_energy = 0.0
    error_energy = 0.0
    for name, original in arrays.items():
        if original.ndim < 2:
            continue
        original64 = original.astype(np.float64)
        error = result.decoded[name].astype(np.float64) - original64
        signal_energy += float(np.sum(original64 * original64))
        error_energy += float(np.sum(error * error))
    measurement = Measurement(
        model=model,
        qp=qp,
        weights=sum(array.size for array in arrays.values()),
        bytes=result.bytes,
        signal_energy=signal_energy,
        error_energy=error_energy,
        encode_s=result.encode_s,
        decode_s=result.decode_s,
    )
    params = {key: value for key, value in result.params.items() if key != "tensors"}
    params["version"] = result.version
    return measurement, params


def total(measurements: list[Measurement], qp: int) -> Measurement:
    rows = [m for m in measurements if m.qp == qp]
    return Measurement(
        model="TOTAL",
        qp=qp,
        weights=sum(m.weights for m in rows),
        bytes=sum(m.bytes for m in rows),
        signal_energy=sum(m.signal_energy for m in rows),
        error_energy=sum(m.error_energy for m in rows),
        encode_s=sum(m.encode_s for m in rows),
        decode_s=sum(m.decode_s for m in rows),
    )


def format_row(m: Measurement) -> str:
    return (
        f"{m.model:<24} {m.qp:>4} {m.weights:>9} {m.bytes:>9} "
        f"{m.bits_per_weight:>7.3f} {m.sqnr_db:>8.2f} {m.encode_s:>8.3f} {m.decode_s:>8.3f}"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models-dir",
        type=Path,
        default=DEFAULT_MODELS_DIR,
        help=f"folder of float32 .safetensors checkpoints (default: {DEFAULT_MODELS_DIR})",
    )
    parser.add_argument(
        "--model",
        action="append",
        help="file name stem of one model to measure; repeat for several (default: all)",
    )
    parser.add_argument(
        "--qp", type=int, action="append", help=f"NNCodec qp; repeat for several (default: {DEFAULT_QPS})"
    )
    parser.add_argument(
        "--no-dq",
        action="store_true",
        help="turn off dependent quantization (NNCodec's default is on)",
    )
    parser.add_argument(
        "--nonweight-qp",
        type=int,
        help="qp for tensors with fewer than 2 dimensions (NNCodec's default: -75)",
    )
    parser.add_argument("--json", type=Path, help="also write every row and the effective NNCodec options here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    paths = sorted(args.models_dir.glob("*.safetensors"))
    if args.model:
        paths = [path for path in paths if path.stem in set(args.model)]
        missing = set(args.model) - {path.stem for path in paths}
        if missing:
            print(f"error: model(s) not found in {args.models_dir}: {sorted(missing)}", file=sys.stderr)
            return 2
    if not paths:
        print(f"error: no .safetensors files in {args.models_dir}", file=sys.stderr)
        return 2
    if not nncodec_available():
        print("error: NNCodec venv not available; see the message above", file=sys.stderr)
        return 1

    qps = args.qp or list(DEFAULT_QPS)
    options: dict = {}
    if args.no_dq:
        options["use_dq"] = False
    if args.nonweight_qp is not None:
        options["nonweight_qp"] = args.nonweight_qp

    header = f"{'model':<24} {'qp':>4} {'weights':>9} {'bytes':>9} {'bpw':>7} {'SQNR dB':>8} {'enc s':>8} {'dec s':>8}"
    print(header)
    measurements: list[Measurement] = []
    params_by_model: dict[str, dict] = {}
    for path in paths:
        arrays = load_model(path)
        for qp in qps:
            measurement, params = measure(path.stem, arrays, qp, options)
            measurements.append(measurement)
            params_by_model[f"{path.stem} qp={qp}"] = params
            print(format_row(measurement), flush=True)
    for qp in qps:
        print(format_row(total(measurements, qp)))

    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        rows = [
            {**asdict(m), "bits_per_weight": m.bits_per_weight, "sqnr_db": m.sqnr_db}
            for m in measurements + [total(measurements, qp) for qp in qps]
        ]
        args.json.write_text(json.dumps({"rows": rows, "params": params_by_model}, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

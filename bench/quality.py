"""Bits per weight, quality and time of wcodec on the shared real models at several qp.

For each model in ../shared/models (or $WCODEC_MODELS_DIR) and each qp, encode with the
chosen prediction mode, decode, and report bits per weight over all tensors (whole file),
SQNR over tensors with at least 2 dimensions, and the median encode and decode seconds of
``--repeats`` runs (in process, after one warm-up run that compiles the Numba kernels).

    python bench/quality.py [--qp -38 -32 -26 -20] [--mode intra] [--repeats 3] [--write]
"""

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402

import wcodec  # noqa: E402


def measure(model, qp, mode, repeats, workdir):
    """Return (bits per weight, SQNR dB, encode s, decode s) of one model at one qp."""
    original = load_file(model)
    weights = sum(a.size for a in original.values())
    out = os.path.join(workdir, "model.wbs")
    encode_s, _ = common.timed(
        lambda: wcodec.encode_file(model, out, qp=qp, mode=mode, force=True), repeats)
    decode_s, decoded = common.timed(lambda: wcodec.load(out), repeats)
    decoded = {name: tensor.numpy() for name, tensor in decoded.items()}
    bpw = 8 * os.path.getsize(out) / weights
    return bpw, common.sqnr_db(original, decoded), encode_s, decode_s


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--qp", type=int, nargs="+", default=[-38, -32, -26, -20])
    parser.add_argument("--mode", default="intra", choices=["intra", "collocated", "adjacent",
                                                             "full", "auto"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--write", action="store_true",
                        help="replace the quality section of bench/RESULTS.md")
    args = parser.parse_args()

    models = common.shared_models()
    command = "python bench/quality.py " + " ".join(sys.argv[1:])
    lines = [common.machine_description(),
             f"Parameters: mode {args.mode}, qp {args.qp}, median of {args.repeats} runs after a "
             f"warm-up. Command: `{command.strip()}`", "",
             "| model | qp | bits/weight | SQNR dB (ndim >= 2) | encode s | decode s |",
             "|---|---:|---:|---:|---:|---:|"]
    print("\n".join(lines), flush=True)
    with tempfile.TemporaryDirectory() as workdir:
        measure(models[0], args.qp[0], args.mode, 1, workdir)  # compile the kernels
        for model in models:
            for qp in args.qp:
                bpw, sqnr, enc, dec = measure(model, qp, args.mode, args.repeats, workdir)
                row = (f"| {model.stem} | {qp} | {bpw:.3f} | {sqnr:.2f} | {enc:.3f} | "
                       f"{dec:.3f} |")
                print(row, flush=True)
                lines.append(row)
    if args.write:
        common.update_results_section(f"quality-{args.mode}", "\n".join(lines))


if __name__ == "__main__":
    main()

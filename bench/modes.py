"""Bits per weight, side information and encode time of each prediction mode.

For each model in ../shared/models (or $WCODEC_MODELS_DIR), encode at one qp in every
prediction mode and report bits per weight over all tensors (whole file), the share of
non-texture bits (block modes, signs and reference indexes) in the payloads, the number
of frames coded inter, and the median encode seconds of ``--repeats`` runs. A synthetic
chain (every layer the previous one plus 10% noise) shows what prediction gains where
the smoothly varying weight hypothesis holds.

    python bench/modes.py [--qp -32] [--repeats 3] [--write]
"""

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

import wcodec  # noqa: E402
from wcodec.stats import collect_stats  # noqa: E402

MODES = ("intra", "collocated", "adjacent", "full", "auto")


def synthetic_chain(path, layers=8, seed=0):
    """Write a model whose conv layers are each the previous one plus 10% Gaussian noise."""
    rng = np.random.default_rng(seed)
    weight = rng.normal(size=(64, 64, 3, 3)) * 0.05
    tensors = {}
    for layer in range(layers):
        tensors[f"layer{layer}.weight"] = torch.tensor(weight, dtype=torch.float32)
        weight = weight + rng.normal(size=weight.shape) * 0.005
    save_file(tensors, path)


def measure(model, qp, mode, repeats, workdir):
    out = os.path.join(workdir, f"{mode}.wbs")
    encode_s, _ = common.timed(
        lambda: wcodec.encode_file(model, out, qp=qp, mode=mode, force=True), repeats)
    stats = collect_stats(out)
    payload_bits = stats["bits_texture"] + stats["bits_non_texture"]
    # Transform frames are intra frames coded as DCT coefficients; they predict from nothing.
    inter = sum(1 for t in stats["tensors"]
                if t.get("frame_mode", "intra") not in ("intra", "transform"))
    frames = sum(1 for t in stats["tensors"] if "frame_mode" in t)
    side = stats["bits_non_texture"] / payload_bits if payload_bits else 0.0
    return stats["bits_per_weight"], side, inter, frames, encode_s


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--qp", type=int, default=-32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--write", action="store_true",
                        help="replace the modes section of bench/RESULTS.md")
    args = parser.parse_args()

    command = "python bench/modes.py " + " ".join(sys.argv[1:])
    lines = [common.machine_description(),
             f"Parameters: qp {args.qp}, median encode time of {args.repeats} runs after a "
             f"warm-up. Command: `{command.strip()}`", "",
             "| model | mode | bits/weight | vs intra | non-texture share | inter frames | "
             "encode s | vs intra time |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    print("\n".join(lines[:2]), flush=True)
    with tempfile.TemporaryDirectory() as workdir:
        chain = Path(workdir) / "synthetic_chain.safetensors"
        synthetic_chain(chain)
        models = common.shared_models() + [chain]
        measure(models[0], args.qp, "auto", 1, workdir)  # compile the kernels
        for model in models:
            base = None
            for mode in MODES:
                bpw, side, inter, frames, seconds = measure(model, args.qp, mode, args.repeats,
                                                            workdir)
                if base is None:
                    base = (bpw, seconds)
                row = (f"| {model.stem} | {mode} | {bpw:.3f} | {bpw / base[0]:.3f} | "
                       f"{100 * side:.1f}% | {inter}/{frames} | {seconds:.3f} | "
                       f"{seconds / base[1]:.2f} |")
                print(row, flush=True)
                lines.append(row)
    if args.write:
        common.update_results_section("modes", "\n".join(lines))


if __name__ == "__main__":
    main()

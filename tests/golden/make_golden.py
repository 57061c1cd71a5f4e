"""Write the golden .wbs files of one bitstream version and their expected decoded outputs.

Run by hand from the repository root, never from a test:

    .venv/bin/python tests/golden/make_golden.py 1    # writes tests/golden/v1
    .venv/bin/python tests/golden/make_golden.py 2    # writes tests/golden/v2

It refuses to replace existing files. Golden files pin the bitstream: regenerate them
only for a deliberate format change, which also needs a new bitstream version and a
new folder (see README.md in this folder).

Before it writes anything, the script checks the decoder's output against values that it
computes itself. Bit-exact tensors must equal the source bytes. Intra-coded tensors must
equal their levels (rounded half away from zero) times the step, rounded to the dtype.
Inter-coded frames must lie within step / 2, plus the dtype's rounding, of the source.
Transform frames must equal a floating-point inverse DCT of their levels, within the
rounding of the integer transform's entries.
"""

import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

TESTS_DIR = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS_DIR))

import wcodec  # noqa: E402
from common import (  # noqa: E402
    PNET,
    qp_step,
    quantization_error_bound,
    read_safetensors,
    tensor_of_bytes,
    write_safetensors,
)
from wcodec.codec.ordering import natural_key  # noqa: E402
from wcodec.decoder import open_wbs  # noqa: E402
from wcodec.formats.dtypes import tensor_to_bytes  # noqa: E402

GOLDEN_ROOT = Path(__file__).resolve().parent
SYNTHETIC_OPTIONS = {"qp": -32, "keep": ["keep.*"]}
PNET_OPTIONS = {"qp": -32, "keep": []}
SYNTHETIC_DQ_OPTIONS = {"qp": -30, "keep": ["keep.*"], "mode": "full", "quantizer": "dependent"}
PNET_TRANSFORM_OPTIONS = {"qp": -26, "keep": [], "mode": "intra"}
PNET_TRANSFORM_DQ_OPTIONS = {"qp": -26, "keep": [], "mode": "auto", "quantizer": "dependent"}


def synthetic_model() -> dict[str, torch.Tensor]:
    """Return a small model with every dtype and every coding mode, in natural name order."""
    generator = torch.Generator().manual_seed(2024)
    conv = 0.1 * torch.randn(8, 4, 3, 3, generator=generator)
    fc = (0.05 * torch.randn(10, 32, generator=generator)).to(torch.bfloat16)
    u64_big = b"".join(value.to_bytes(8, "little") for value in (2**63, 2**64 - 1, 7))
    tensors = {
        # quantized frames: a 4-D conv, a close copy that inter prediction can use, a 2-D linear
        "conv1.weight": conv,
        "conv2.weight": conv + 0.002 * torch.randn(8, 4, 3, 3, generator=generator),
        "fc.weight": fc,
        # quantized vectors at qp - 24
        "conv1.bias": 0.01 * torch.randn(8, generator=generator),
        "fc.bias": (0.01 * torch.randn(10, generator=generator)).to(torch.float16),
        # the other floating dtypes
        "f64.weight": 0.3 * torch.randn(3, 5, generator=generator, dtype=torch.float64),
        "f8_e4m3.weight": (0.5 * torch.randn(4, 4, generator=generator)).to(torch.float8_e4m3fn),
        "f8_e5m2.weight": (0.5 * torch.randn(4, 4, generator=generator)).to(torch.float8_e5m2),
        # integers and bool, coded losslessly
        "int.i8": torch.tensor([-128, -1, 0, 1, 127], dtype=torch.int8),
        "int.i16": torch.tensor([[-32768, 300, 0], [5, -7, 32767]], dtype=torch.int16),
        "int.i32": torch.tensor([2**31 - 1, -(2**31), 12], dtype=torch.int32),
        "int.i64": torch.tensor([[2**50, -(2**50)], [3, 0]], dtype=torch.int64),
        "int.u8": torch.tensor([0, 255, 17], dtype=torch.uint8),
        "int.u16": torch.tensor([65535, 0, 1], dtype=torch.uint16),
        "int.u32": torch.tensor([2**32 - 1, 0, 9], dtype=torch.uint32),
        "int.u64": torch.tensor([2**50, 0, 4], dtype=torch.uint64),
        "int.u64_big": tensor_of_bytes(u64_big, "U64", (3,)),  # above int64: raw
        "mask": torch.tensor([[True, False, True, True], [False, False, False, True], [True] * 4]),
        # raw: by --keep and because of NaN
        "keep.weight": 0.1 * torch.randn(4, 4, generator=generator),
        "nan.weight": torch.tensor([[1.0, float("nan")], [float("inf"), -2.0]]),
        # edge shapes
        "empty": torch.empty(0, 3),
        "scalar": torch.tensor(0.731),
        # an alias of fc.weight
        "tied.weight": fc.clone(),
    }
    return dict(sorted(tensors.items(), key=lambda item: natural_key(item[0])))


def reference_intra(original: torch.Tensor, qp: int) -> torch.Tensor:
    """Return level * step rounded to the dtype, with integer levels rounded half away from zero."""
    values = original.to(torch.float64).numpy()
    step = qp_step(qp)
    # Integer levels make a zero level decode to +0.0, also for negative weights.
    levels = (np.sign(values) * np.floor(np.abs(values) / step + 0.5)).astype(np.int64)
    return torch.from_numpy(np.asarray(levels * step, dtype=np.float64)).to(original.dtype)


def float_dct(n: int) -> np.ndarray:
    """Return the orthonormal DCT-II synthesis matrix (tap x frequency) in float64."""
    taps, freqs = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    scale = np.where(freqs == 0, np.sqrt(1 / n), np.sqrt(2 / n))
    return scale * np.cos(np.pi * (taps + 0.5) * freqs / n)


def check_transform_frame(parsed, index: int, record, restored: torch.Tensor) -> None:
    """Compare a transform frame with a float64 inverse DCT of its decoded levels."""
    kernel = tuple(record.shape[2:])
    synthesis = np.ones((1, 1))
    for side in kernel:
        synthesis = np.kron(synthesis, float_dct(side))
    _, levels, _ = parsed.decode_frame(index, {})
    assert record.quantizer == 0, "only uniform transform frames have a closed-form expectation"
    coefficients = levels.transpose(0, 2, 1).astype(np.float64)  # coded frequency by frequency
    step = qp_step(record.qp)
    expected = (coefficients @ synthesis.T * step).reshape(-1)
    y = restored.to(torch.float64).numpy().reshape(-1)
    # Entries of the integer matrices lie within 2**-15 of the float ones.
    slack = (np.abs(coefficients).sum(axis=2) * 2.0**-15 * len(kernel) * step)
    slack = np.repeat(slack[:, :, None], synthesis.shape[0], axis=2).reshape(-1)
    bound = slack + quantization_error_bound(expected, y, record.dtype, 0.0)
    assert (np.abs(expected - y) <= bound).all(), record.name


def check_decoded(source: dict[str, torch.Tensor], wbs: Path, decoded: dict[str, torch.Tensor]) -> None:
    """Raise AssertionError unless every decoded tensor matches its independent expectation."""
    with open_wbs(wbs) as parsed:
        records = parsed.header.tensors
        for index, record in enumerate(records):
            if record.mode_name == "quantized" and record.frame_mode == 4 and record.quantizer == 0:
                check_transform_frame(parsed, index, record, decoded[record.name])
    for record in records:
        original = source[record.name]
        restored = decoded[record.name]
        coded = records[record.alias_of] if record.mode_name == "alias" else record
        assert restored.dtype == original.dtype, record.name
        assert tuple(restored.shape) == tuple(original.shape), record.name
        if coded.mode_name in ("raw", "integer"):
            assert tensor_to_bytes(restored) == tensor_to_bytes(original), record.name
        elif coded.quantizer == 1:
            # Dependent quantization has no closed-form expectation; bound the error instead.
            x = original.to(torch.float64).numpy().reshape(-1)
            y = restored.to(torch.float64).numpy().reshape(-1)
            assert (np.abs(x - y) <= 2.5 * qp_step(coded.qp)).all(), record.name
        elif coded.frame_mode == 4:
            continue  # checked above
        elif coded.frame_mode == 0 or original.dim() < 2:
            expected = reference_intra(original, coded.qp)
            assert tensor_to_bytes(restored) == tensor_to_bytes(expected), record.name
        else:
            x = original.to(torch.float64).numpy().reshape(-1)
            y = restored.to(torch.float64).numpy().reshape(-1)
            bound = quantization_error_bound(x, y, record.dtype, qp_step(coded.qp))
            assert (np.abs(x - y) <= bound).all(), record.name


def make(folder: Path, name: str, source_path: Path, options: dict) -> dict:
    """Encode `source_path` into <folder>/<name>.wbs, write the expected output; return the manifest entry."""
    wbs = folder / f"{name}.wbs"
    expected = folder / f"{name}.expected.safetensors"
    wcodec.encode_file(source_path, wbs, **options)
    with tempfile.TemporaryDirectory() as scratch:
        again = Path(scratch) / "again.wbs"
        wcodec.encode_file(source_path, again, **options)
        assert again.read_bytes() == wbs.read_bytes(), f"{name}: two encodes differ"
    wcodec.decode_file(wbs, expected)

    _, source = read_safetensors(source_path)
    _, decoded = read_safetensors(expected)
    check_decoded(source, wbs, decoded)
    return {
        "sha256": hashlib.sha256(wbs.read_bytes()).hexdigest(),
        "source": Path(os.path.relpath(Path(source_path).resolve(), TESTS_DIR.parent)).as_posix(),
        "encode_options": options,
        "expected": expected.name,
    }


def version_1(folder: Path) -> dict:
    synthetic_source = folder / "synthetic.safetensors"
    write_safetensors(synthetic_source, synthetic_model(), {"format": "pt", "source": "wcodec golden synthetic"})
    # Version 1 has no transform frames.
    return {
        "synthetic.wbs": make(folder, "synthetic", synthetic_source, {**SYNTHETIC_OPTIONS, "transform": False}),
        "pnet.wbs": make(folder, "pnet", PNET, {**PNET_OPTIONS, "transform": False}),
        "synthetic_dq.wbs": make(folder, "synthetic_dq", synthetic_source,
                                 {**SYNTHETIC_DQ_OPTIONS, "transform": False}),
    }


def version_2(folder: Path) -> dict:
    synthetic_source = GOLDEN_ROOT / "v1" / "synthetic.safetensors"
    return {
        "synthetic_v2.wbs": make(folder, "synthetic_v2", synthetic_source, SYNTHETIC_OPTIONS),
        "pnet_transform.wbs": make(folder, "pnet_transform", PNET, PNET_TRANSFORM_OPTIONS),
        "pnet_transform_dq.wbs": make(folder, "pnet_transform_dq", PNET, PNET_TRANSFORM_DQ_OPTIONS),
    }


def main() -> int:
    writers = {"1": version_1, "2": version_2}
    if len(sys.argv) != 2 or sys.argv[1] not in writers:
        print(f"usage: make_golden.py VERSION, VERSION one of {', '.join(writers)}", file=sys.stderr)
        return 2
    folder = GOLDEN_ROOT / f"v{sys.argv[1]}"
    folder.mkdir(parents=True, exist_ok=True)
    existing = sorted(path.name for path in folder.iterdir())
    if existing:
        print(f"{folder} already holds {', '.join(existing)}; golden files are never replaced",
              file=sys.stderr)
        return 1

    manifest = {"bitstream_version": int(sys.argv[1]), "files": writers[sys.argv[1]](folder)}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    for path in sorted(folder.iterdir()):
        print(f"{path}: {path.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())

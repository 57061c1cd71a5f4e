"""Tests for wcodec.analysis and `wcodec stats` on safetensors input."""

import json
import math
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from common import ONET, tiny_model, write_safetensors

import wcodec
from wcodec import analysis
from wcodec.cli import cli
from wcodec.codec import prediction
from wcodec.codec.ordering import collocated_residual_energy
from wcodec.errors import InputError

EXHAUSTIVE = 10**9  # more candidates than any test frame has blocks, so best match is exact


def brute_force_best_match(cur_blocks, ref_blocks):
    """Return (index, sign, sse) by trying every reference block with both signs.

    The squared errors are summed position by position, in the order that a plain loop
    over the K weights uses, so that they can be compared exactly.
    """
    cur = np.asarray(cur_blocks, dtype=np.float64)
    ref = np.asarray(ref_blocks, dtype=np.float64)
    by_sign = []
    for sign in (1.0, -1.0):
        sse = np.zeros((cur.shape[0], ref.shape[0]))
        for position in range(cur.shape[1]):
            difference = cur[:, None, position] - sign * ref[None, :, position]
            sse += difference * difference
        by_sign.append(sse)
    plus, minus = by_sign
    plus_index = np.argmin(plus, axis=1)
    minus_index = np.argmin(minus, axis=1)
    rows = np.arange(cur.shape[0])
    plus_sse = plus[rows, plus_index]
    minus_sse = minus[rows, minus_index]
    use_minus = minus_sse < plus_sse
    index = np.where(use_minus, minus_index, plus_index).astype(np.int64)
    sign = np.where(use_minus, -1, 1).astype(np.int8)
    sse = np.where(use_minus, minus_sse, plus_sse)
    return index, sign, sse


def random_walk_model(shape, layers, step, seed):
    """Return float32 layers named layer.1 ... where each layer is the previous plus noise of std `step`."""
    generator = torch.Generator().manual_seed(seed)
    frames = [torch.randn(*shape, generator=generator, dtype=torch.float64)]
    for _ in range(layers - 1):
        frames.append(frames[-1] + step * torch.randn(*shape, generator=generator, dtype=torch.float64))
    # Alphabetical order (layer.1, layer.10, layer.2, ...) so that natural order matters.
    names = sorted(f"layer.{n}.weight" for n in range(1, layers + 1))
    by_name = {f"layer.{n}.weight": frame.float() for n, frame in enumerate(frames, start=1)}
    return {name: by_name[name] for name in names}


# ---------------------------------------------------------------- best_match against brute force


@pytest.mark.parametrize(
    ("current", "reference", "block_size", "seed"),
    [(1, 1, 1, 0), (7, 5, 1, 1), (20, 30, 4, 2), (50, 13, 9, 3), (16, 40, 25, 4), (33, 64, 3, 5)],
)
def test_best_match_equals_brute_force(current, reference, block_size, seed):
    rng = np.random.default_rng(seed)
    cur = rng.normal(size=(current, block_size))
    ref = rng.normal(size=(reference, block_size))
    expected_index, expected_sign, expected_sse = brute_force_best_match(cur, ref)

    for max_candidates in (reference, 2 * reference, EXHAUSTIVE):
        index, sign, sse = prediction.best_match(cur, ref, max_candidates)
        assert index.dtype == np.int64
        assert sign.dtype == np.int8
        assert sse.dtype == np.float64
        np.testing.assert_array_equal(index, expected_index)
        np.testing.assert_array_equal(sign, expected_sign)
        np.testing.assert_array_equal(sse, expected_sse)


def test_best_match_finds_flipped_copies():
    rng = np.random.default_rng(6)
    ref = rng.normal(size=(12, 9))
    permutation = rng.permutation(12)
    signs = np.where(rng.random(12) < 0.5, -1, 1)
    cur = signs[:, None] * ref[permutation]
    index, sign, sse = prediction.best_match(cur, ref, EXHAUSTIVE)
    np.testing.assert_array_equal(index, permutation)
    np.testing.assert_array_equal(sign, signs)
    np.testing.assert_array_equal(sse, np.zeros(12))


# ---------------------------------------------------------------- analyse_pair


def test_analyse_pair_matches_definitions():
    rng = np.random.default_rng(7)
    cur = rng.normal(size=(6, 5, 2, 2))
    ref = rng.normal(size=(4, 7, 2, 2))
    figures = analysis.analyse_pair(cur, ref, EXHAUSTIVE)

    overlap_cur = cur[:4, :5].reshape(-1, 4)
    overlap_ref = ref[:4, :5].reshape(-1, 4)
    residual = overlap_cur - overlap_ref
    _, _, sse = brute_force_best_match(cur.reshape(-1, 4), ref.reshape(-1, 4))
    sse = sse.reshape(6, 5)
    overlap_energy = np.sum(overlap_cur**2)
    frame_energy = np.sum(cur**2)

    assert figures["overlap_fraction"] == pytest.approx(20 / 30)
    assert figures["collocated_relative_energy"] == pytest.approx(collocated_residual_energy(cur, ref), rel=1e-12)
    assert figures["best_match_relative_energy"] == pytest.approx(np.sum(sse[:4, :5]) / overlap_energy, rel=1e-12)
    assert figures["best_match_frame_relative_energy"] == pytest.approx(np.sum(sse) / frame_energy, rel=1e-12)
    expected_collocated_frame = (np.sum(residual**2) + frame_energy - overlap_energy) / frame_energy
    assert figures["collocated_frame_relative_energy"] == pytest.approx(expected_collocated_frame, rel=1e-12)
    assert figures["collocated_laplace_scale"] == pytest.approx(np.mean(np.abs(residual)), rel=1e-12)
    assert figures["best_match_relative_energy"] <= figures["collocated_relative_energy"]


def test_analyse_pair_zero_frames():
    zero = np.zeros((3, 4, 2))
    ones = np.ones((3, 4, 2))
    both_zero = analysis.analyse_pair(zero, zero)
    assert both_zero["collocated_relative_energy"] == 0.0
    assert both_zero["best_match_relative_energy"] == 0.0
    assert both_zero["collocated_laplace_scale"] == 0.0

    zero_from_ones = analysis.analyse_pair(zero, ones)
    assert zero_from_ones["collocated_relative_energy"] is None
    assert zero_from_ones["best_match_frame_relative_energy"] is None


# ---------------------------------------------------------------- analyse_model


def test_analyse_onet():
    result = analysis.analyse_model(ONET, max_candidates=EXHAUSTIVE)
    pairs = {pair["frame"]: pair for pair in result["pairs"]}
    assert [(pair["frame"], pair["reference"]) for pair in result["pairs"]] == [
        ("conv2.weight", "conv1.weight"),
        ("conv3.weight", "conv2.weight"),
        ("dense6_1.weight", "dense5.weight"),
        ("dense6_2.weight", "dense6_1.weight"),
        ("dense6_3.weight", "dense6_2.weight"),
    ]
    assert pairs["conv2.weight"]["shape"] == [64, 32, 3, 3]
    assert pairs["conv2.weight"]["reference_shape"] == [32, 3, 3, 3]
    assert pairs["conv2.weight"]["overlap_fraction"] == pytest.approx(32 * 3 / (64 * 32))

    for pair in result["pairs"]:
        name = pair["frame"]
        assert pair["note"] is None, name
        assert pair["collocated_relative_energy"] > 0, name
        assert pair["best_match_relative_energy"] > 0, name
        assert pair["best_match_relative_energy"] <= pair["collocated_relative_energy"], name
        assert pair["best_match_frame_relative_energy"] <= pair["collocated_frame_relative_energy"], name
        assert pair["collocated_laplace_scale"] > 0, name
        # Trained layers are not close copies of each other, so collocated prediction gains little.
        assert pair["collocated_relative_energy"] > 0.5, name

    summary = result["summary"]
    assert summary["frames"] == 8
    assert summary["pairs"] == 5
    assert summary["unpaired_frames"] == ["conv1.weight", "conv4.weight", "dense5.weight"]
    collocated = summary["collocated_relative_energy"]
    assert collocated["min"] <= collocated["median"] <= collocated["max"]
    assert summary["best_match_relative_energy"]["total"] <= collocated["total"]
    assert result["max_candidates"] == EXHAUSTIVE
    assert result["file"] == str(ONET)
    json.dumps(result, allow_nan=False)


def test_analyse_onet_default_candidates():
    result = analysis.analyse_model(ONET)
    assert result["max_candidates"] == prediction.DEFAULT_MAX_CANDIDATES
    for pair in result["pairs"]:
        assert 0 < pair["best_match_relative_energy"] < math.inf


def test_analyse_random_walk_model(tmp_path):
    step = 0.1
    tensors = random_walk_model((16, 8, 3, 3), layers=12, step=step, seed=8)
    tensors["layer.1.bias"] = torch.zeros(16)
    tensors["head.weight"] = torch.randn(10, 16)
    path = write_safetensors(tmp_path / "walk.safetensors", tensors)

    result = analysis.analyse_model(path, max_candidates=EXHAUSTIVE)
    assert [pair["frame"] for pair in result["pairs"]] == [f"layer.{n}.weight" for n in range(2, 13)]
    assert [pair["reference"] for pair in result["pairs"]] == [f"layer.{n}.weight" for n in range(1, 12)]
    assert result["summary"]["unpaired_frames"] == ["head.weight", "layer.1.weight"]

    for number, pair in enumerate(result["pairs"], start=2):
        # Layer n has variance 1 + (n - 1) step^2 and differs from layer n - 1 by noise of variance step^2.
        expected = step**2 / (1 + (number - 1) * step**2)
        assert pair["collocated_relative_energy"] == pytest.approx(expected, rel=0.2), pair["frame"]
        assert pair["collocated_frame_relative_energy"] == pair["collocated_relative_energy"]
        assert pair["best_match_relative_energy"] <= pair["collocated_relative_energy"]
        # The collocated block is the best match for almost every block.
        assert pair["best_match_relative_energy"] > 0.8 * pair["collocated_relative_energy"]
        # mean |r| of a Gaussian residual with standard deviation `step`.
        assert pair["collocated_laplace_scale"] == pytest.approx(step * math.sqrt(2 / math.pi), rel=0.1)


def test_analyse_non_finite_frame(tmp_path):
    broken = torch.randn(4, 4, 3, 3)
    broken[0, 0, 0, 0] = float("nan")
    tensors = {"a.weight": torch.randn(4, 4, 3, 3), "b.weight": broken, "c.weight": torch.randn(4, 4, 3, 3)}
    path = write_safetensors(tmp_path / "nan.safetensors", tensors)

    result = analysis.analyse_model(path)
    first, second = result["pairs"]
    assert first["note"] == "NaN or infinite weights"
    assert first["collocated_relative_energy"] is None
    assert first["best_match_relative_energy"] is None
    assert first["collocated_laplace_scale"] is None
    assert first["overlap_fraction"] == 1.0
    # The broken frame still serves as the reference of the next one.
    assert second["reference"] == "b.weight"
    assert second["note"] == "NaN or infinite weights"
    assert result["summary"]["collocated_relative_energy"]["median"] is None
    json.dumps(result, allow_nan=False)
    assert "NaN or infinite weights" in analysis.format_analysis(result)


def test_analyse_low_precision_dtypes(tmp_path):
    base = torch.randn(8, 4, 3, 3)
    tensors = {
        "a.weight": base.to(torch.bfloat16),
        "b.weight": (base + 0.05 * torch.randn(8, 4, 3, 3)).to(torch.float16),
        "c.weight": base.to(torch.float8_e4m3fn),
    }
    path = write_safetensors(tmp_path / "low.safetensors", tensors)
    result = analysis.analyse_model(path)
    assert [pair["frame"] for pair in result["pairs"]] == ["b.weight", "c.weight"]
    for pair in result["pairs"]:
        assert 0 < pair["collocated_relative_energy"] < 0.1


def test_analyse_model_without_pairs(tmp_path):
    tensors = {"conv.weight": torch.randn(4, 3, 3, 3), "fc.weight": torch.randn(5, 4), "bias": torch.randn(5)}
    path = write_safetensors(tmp_path / "single.safetensors", tensors)
    result = analysis.analyse_model(path)
    assert result["pairs"] == []
    assert result["summary"]["frames"] == 2
    assert result["summary"]["collocated_relative_energy"] == {"min": None, "median": None, "max": None,
                                                               "total": None}
    assert "0 pairs" in analysis.format_analysis(result)


def test_analyse_model_rejects_bad_input(tmp_path):
    with pytest.raises(InputError, match="not found"):
        analysis.analyse_model(tmp_path / "missing.safetensors")
    with pytest.raises(InputError, match="at least 1"):
        analysis.analyse_model(ONET, max_candidates=0)


def test_format_analysis_table():
    result = analysis.analyse_model(ONET)
    text = analysis.format_analysis(result)
    lines = text.splitlines()
    assert any(line.startswith("conv2.weight") and "conv1.weight" in line and "64x32x3x3" in line for line in lines)
    assert "5 pairs" in text
    assert "best match (frame)" in text


# ---------------------------------------------------------------- plot


def test_plot_creates_png(tmp_path):
    pytest.importorskip("matplotlib")
    result = analysis.analyse_model(ONET)
    output = tmp_path / "analysis.png"
    analysis.plot_analysis(result, output)
    assert output.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    # A second run replaces the file, and no temporary file is left behind.
    analysis.plot_analysis(result, output)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["analysis.png"]


def test_plot_other_formats_and_no_pairs(tmp_path):
    pytest.importorskip("matplotlib")
    path = write_safetensors(tmp_path / "single.safetensors", {"fc.weight": torch.randn(5, 4)})
    result = analysis.analyse_model(path)
    analysis.plot_analysis(result, tmp_path / "empty.svg")
    assert b"<svg" in (tmp_path / "empty.svg").read_bytes()


def test_plot_rejects_bad_outputs(tmp_path):
    pytest.importorskip("matplotlib")
    model = write_safetensors(tmp_path / "model.safetensors", tiny_model())
    result = analysis.analyse_model(model)
    with pytest.raises(InputError, match="unknown image format 'xyz'"):
        analysis.plot_analysis(result, tmp_path / "plot.xyz")
    # A link named like an image that points at the model must not replace the model.
    link = tmp_path / "plot.png"
    link.symlink_to(model)
    before = model.read_bytes()
    with pytest.raises(InputError, match="is the input"):
        analysis.plot_analysis(result, link)
    assert model.read_bytes() == before


def test_plot_without_matplotlib(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    result = analysis.analyse_model(ONET)
    with pytest.raises(InputError, match=r"pip install 'wcodec\[plot\]'"):
        analysis.plot_analysis(result, "never-written.png")


# ---------------------------------------------------------------- command line


def test_cli_stats_safetensors_json():
    run = CliRunner().invoke(cli, ["stats", str(ONET), "--json"])
    assert run.exit_code == 0, run.output
    result = json.loads(run.output)
    assert result["summary"]["pairs"] == 5
    assert result["pairs"][0]["frame"] == "conv2.weight"
    assert result["max_candidates"] == prediction.DEFAULT_MAX_CANDIDATES


def test_cli_stats_safetensors_table_and_candidates():
    run = CliRunner().invoke(cli, ["stats", str(ONET), "--max-candidates", "5"])
    assert run.exit_code == 0, run.output
    assert "conv2.weight" in run.output
    assert "up to 5 reference blocks" in run.output


def test_cli_stats_safetensors_plot(tmp_path):
    pytest.importorskip("matplotlib")
    output = tmp_path / "stats.png"
    run = CliRunner().invoke(cli, ["stats", str(ONET), "--plot", str(output)])
    assert run.exit_code == 0, run.output
    assert output.read_bytes().startswith(b"\x89PNG")


def test_cli_stats_safetensors_rejects_tensor():
    run = CliRunner().invoke(cli, ["stats", str(ONET), "--tensor", "conv1.weight"])
    assert run.exit_code == 1
    assert "--tensor applies only to .wbs files" in run.output


def test_cli_stats_wbs_still_works(tmp_path):
    model = write_safetensors(tmp_path / "model.safetensors", tiny_model())
    wbs = tmp_path / "model.wbs"
    wcodec.encode_file(model, wbs)

    run = CliRunner().invoke(cli, ["stats", str(wbs), "--json"])
    assert run.exit_code == 0, run.output
    assert [entry["name"] for entry in json.loads(run.output)["tensors"]] == list(tiny_model())

    rejected = CliRunner().invoke(cli, ["stats", str(wbs), "--plot", str(tmp_path / "levels.png")])
    assert rejected.exit_code == 1
    assert "--plot applies only to safetensors input" in rejected.output
    assert not (tmp_path / "levels.png").exists()


def test_cli_stats_bad_files(tmp_path):
    missing = CliRunner().invoke(cli, ["stats", str(tmp_path / "missing.wbs")])
    assert missing.exit_code == 1
    assert "missing.wbs" in missing.output

    short = tmp_path / "short.bin"
    short.write_bytes(b"\x89WB")
    run = CliRunner().invoke(cli, ["stats", str(short)])
    assert run.exit_code == 1
    assert "too short" in run.output

    zero = CliRunner().invoke(cli, ["stats", str(ONET), "--max-candidates", "0"])
    assert zero.exit_code == 2

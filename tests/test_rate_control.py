"""Rate control (--bpw, --sqnr) and per-tensor qp overrides on real models."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import wcodec
from wcodec.cli import cli
from wcodec.errors import InputError
from wcodec.rate_control import BPW_TOLERANCE, SQNR_TOLERANCE_DB, encode_to_target

DATA = Path(__file__).parent / "data"


def _sqnr(source, wbs):
    from safetensors.torch import load_file

    original = {k: v.double() for k, v in load_file(source).items() if v.ndim >= 2}
    decoded = wcodec.load(wbs)
    signal = sum(float((v ** 2).sum()) for v in original.values())
    error = sum(float(((v - decoded[k].double()) ** 2).sum()) for k, v in original.items())
    return 10 * np.log10(signal / error)


def _models(models_dir):
    return [DATA / "facenet_onet.safetensors", models_dir / "facenet_rnet.safetensors"]


@pytest.mark.parametrize("target", [2.5, 4.0])
def test_bpw_target_reached(tmp_path, models_dir, target):
    for source in _models(models_dir):
        out = tmp_path / f"{source.stem}.wbs"
        result = encode_to_target(source, out, bpw=target, mode="intra")
        weights = sum(r.num_elements for r in result.header.tensors)
        measured = 8 * os.path.getsize(out) / weights
        print(f"{source.stem}: {measured:.3f} bpw for {target} in {result.trials} trials")

        assert measured == pytest.approx(result.bits_per_weight)
        assert abs(measured - target) <= BPW_TOLERANCE * target


@pytest.mark.parametrize("target", [20.0, 32.0])
def test_sqnr_target_reached(tmp_path, models_dir, target):
    for source in _models(models_dir):
        out = tmp_path / f"{source.stem}.wbs"
        result = encode_to_target(source, out, sqnr=target, quantizer="dependent")
        measured = _sqnr(source, out)
        print(f"{source.stem}: {measured:.2f} dB for {target} in {result.trials} trials")

        assert measured == pytest.approx(result.sqnr_db)
        assert abs(measured - target) <= SQNR_TOLERANCE_DB


def test_rate_control_qp_per_tensor_in_stats(tmp_path):
    out = tmp_path / "onet.wbs"
    result = encode_to_target(DATA / "facenet_onet.safetensors", out, bpw=3.3)
    runner = CliRunner()
    report = json.loads(runner.invoke(cli, ["stats", str(out), "--json"]).output)
    qps = {t["name"]: t["qp"] for t in report["tensors"] if len(t["shape"]) >= 2}

    assert qps == {name: result.qp_per_tensor[name] for name in qps}
    assert len(set(qps.values())) <= 2


def test_rate_control_rejects_bad_targets(tmp_path):
    source = DATA / "facenet_pnet.safetensors"
    with pytest.raises(InputError, match="exactly one"):
        encode_to_target(source, tmp_path / "a.wbs", bpw=3.0, sqnr=30.0)
    with pytest.raises(InputError, match="below what qp"):
        encode_to_target(source, tmp_path / "b.wbs", bpw=1e-6)
    with pytest.raises(InputError, match="positive"):
        encode_to_target(source, tmp_path / "c.wbs", bpw=-1.0)
    assert not (tmp_path / "b.wbs").exists()


def test_qp_for_overrides_take_effect(tmp_path):
    runner = CliRunner()
    out = tmp_path / "onet.wbs"
    result = runner.invoke(cli, ["encode", str(DATA / "facenet_onet.safetensors"), "-o",
                                 str(out), "--qp", "-30", "--qp-for", "conv1.weight=-44",
                                 "--qp-for", r"dense6_\d\.weight=-40", "--qp-for",
                                 "dense6_*=-20"])
    report = json.loads(runner.invoke(cli, ["stats", str(out), "--json"]).output)
    qps = {t["name"]: t["qp"] for t in report["tensors"]}

    assert result.exit_code == 0, result.output
    assert qps["conv1.weight"] == -44
    assert qps["dense6_1.weight"] == -40
    assert qps["dense6_1.bias"] == -20
    assert qps["conv2.weight"] == -30
    assert qps["conv2.bias"] == -54


def test_cli_rejects_qp_with_target(tmp_path):
    runner = CliRunner()
    source = str(DATA / "facenet_pnet.safetensors")
    both = runner.invoke(cli, ["encode", source, "-o", str(tmp_path / "x.wbs"), "--qp", "-30",
                               "--bpw", "4"])
    malformed = runner.invoke(cli, ["encode", source, "-o", str(tmp_path / "y.wbs"),
                                    "--qp-for", "conv1"])

    assert both.exit_code == 1
    assert "exclude each other" in both.output
    assert malformed.exit_code == 1
    assert "PATTERN=QP" in malformed.output


def _nan_model(path):
    from safetensors.torch import save_file
    import torch

    weight = torch.randn(16, 8, 3, 3)
    weight[0, 0, 0, 0] = float("nan")
    save_file({"w": weight, "b": torch.randn(16)}, str(path))
    return path


def test_sqnr_target_without_finite_frames_rejected(tmp_path):
    source = _nan_model(tmp_path / "nan.safetensors")

    with pytest.raises(InputError, match="only finite values"):
        encode_to_target(source, tmp_path / "out.wbs", sqnr=30.0)
    assert not (tmp_path / "out.wbs").exists()


def test_rate_control_rejects_keep_of_every_frame(tmp_path):
    with pytest.raises(InputError, match="no --keep pattern matches"):
        encode_to_target(DATA / "facenet_pnet.safetensors", tmp_path / "out.wbs", sqnr=30.0,
                         keep=("*",))


def test_rate_control_warns_once(tmp_path, caplog):
    from safetensors.torch import save_file
    import torch

    weight = torch.randn(16, 8, 3, 3)
    weight[0, 0, 0, 0] = float("nan")
    source = tmp_path / "nan.safetensors"
    save_file({"nan.weight": weight, "finite.weight": torch.randn(64, 64, 3, 3)}, str(source))
    result = encode_to_target(source, tmp_path / "out.wbs", bpw=8.0)

    warnings = [r for r in caplog.records if "NaN or Inf" in r.getMessage()]
    assert result.trials > 1
    assert len(warnings) == 1

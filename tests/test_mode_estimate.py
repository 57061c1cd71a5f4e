"""The auto mode decision: gain estimates, sampled trial encodes and the modes auto codes in full."""

import numpy as np
import pytest
import torch

import wcodec
from common import record_frame_encodes, write_safetensors
from wcodec import encoder
from wcodec.codec import frame_coder, mode_estimate, prediction, quantization
from wcodec.codec.block_syntax import (FRAME_ADJACENT, FRAME_COLLOCATED, FRAME_FULL,
                                       FRAME_INTRA, FRAME_TRANSFORM)
from wcodec.decoder import open_wbs

QP = -32
STEP = quantization.qp_to_step(QP)
INTER_MODES = (FRAME_COLLOCATED, FRAME_ADJACENT, FRAME_FULL)


def _laplace(rng, shape, scale=0.05):
    return rng.laplace(size=shape) * scale


def _quantized(values):
    """Return a frame as a reference reconstruction: rounded to the step."""
    return np.round(values / STEP) * STEP


def _estimate(cur, refs):
    indexes = [prediction.search_index(ref.reshape(-1, ref.shape[2])) for ref in refs]
    return mode_estimate.estimate_gains(cur, STEP, INTER_MODES, refs, indexes)


def _options(**changes):
    return encoder.EncodeOptions(qp=QP, **changes)


def _history(refs):
    history = encoder.FrameHistory()
    for index, ref in enumerate(reversed(refs)):
        history.add(ref.shape[2:], index, ref)
    return history


def _promising(cur, refs, **changes):
    history = _history(refs)
    available = history.references(cur.shape[2:])
    return encoder._promising_modes(cur, STEP, encoder._FRAME_MODES["auto"], available,
                                    _options(**changes), history)


def test_frame_gain_no_positive_blocks():
    assert mode_estimate._frame_gain(np.zeros(100)) == 0.0
    assert mode_estimate._frame_gain(np.zeros(0)) == 0.0


def test_frame_gain_pays_inter_flags():
    gains = np.zeros(64)
    gains[5] = 100.0
    # One inter block among 64 costs 64 * H(1/64) bits of inter flags.
    share = 1 / 64
    flags = -64 * (share * np.log2(share) + (1 - share) * np.log2(1 - share))

    assert mode_estimate._frame_gain(gains) == pytest.approx(100.0 - flags)


def test_frame_gain_small_gains_not_worth_flags():
    gains = np.full(64, 0.1)
    gains[::2] = 0.0

    assert mode_estimate._frame_gain(gains) == 0.0


def test_estimate_chain_favours_collocated():
    rng = np.random.default_rng(1)
    ref = _quantized(_laplace(rng, (32, 32, 9)))
    cur = ref + _laplace(rng, ref.shape, scale=0.005)
    gains, intra_bits = _estimate(cur, [ref])

    assert intra_bits > 0
    assert gains[FRAME_COLLOCATED] > 5 * encoder.MIN_ESTIMATED_GAIN * intra_bits
    assert gains[FRAME_COLLOCATED] > gains[FRAME_ADJACENT]


def test_estimate_independent_frames_small():
    rng = np.random.default_rng(2)
    refs = [_quantized(_laplace(rng, (32, 32, 9))) for _ in range(3)]
    cur = _laplace(rng, (32, 32, 9))
    gains, intra_bits = _estimate(cur, refs)

    for frame_mode in INTER_MODES:
        assert gains[frame_mode] < encoder.MIN_ESTIMATED_GAIN * intra_bits, frame_mode


def test_estimate_permuted_rows_favour_search():
    rng = np.random.default_rng(3)
    ref = _quantized(_laplace(rng, (32, 32, 9)))
    cur = ref[rng.permutation(32)] + _laplace(rng, ref.shape, scale=0.002)
    gains, intra_bits = _estimate(cur, [ref])

    assert gains[FRAME_COLLOCATED] < encoder.MIN_ESTIMATED_GAIN * intra_bits
    assert gains[FRAME_ADJACENT] > 2 * encoder.MIN_ESTIMATED_GAIN * intra_bits
    assert gains[FRAME_FULL] > 2 * encoder.MIN_ESTIMATED_GAIN * intra_bits
    assert gains[FRAME_ADJACENT] > 10 * gains[FRAME_COLLOCATED]


def test_estimate_rejects_intra_mode():
    rng = np.random.default_rng(4)
    ref = _quantized(_laplace(rng, (4, 4, 9)))
    with pytest.raises(ValueError, match="not inter modes"):
        mode_estimate.estimate_gains(ref, STEP, (FRAME_INTRA,), [ref], [])


def test_promising_modes_independent_frames_intra_only():
    rng = np.random.default_rng(5)
    refs = [_quantized(_laplace(rng, (64, 32, 9))) for _ in range(4)]
    cur = _laplace(rng, (64, 32, 9))

    assert _promising(cur, refs) == (FRAME_INTRA,)


def test_promising_modes_chain_keeps_collocated():
    rng = np.random.default_rng(6)
    ref = _quantized(_laplace(rng, (64, 32, 9)))
    cur = ref + _laplace(rng, ref.shape, scale=0.005)
    # Adjacent and full follow collocated, whatever their own estimate.
    assert _promising(cur, [ref]) == (FRAME_INTRA, *INTER_MODES)


def test_trial_rejects_mode_the_estimate_passes(monkeypatch):
    rng = np.random.default_rng(7)
    refs = [_quantized(_laplace(rng, (64, 32, 9)))]
    cur = _laplace(rng, (64, 32, 9))
    # An estimate that promises every inter mode leaves the decision to the trial encode.
    monkeypatch.setattr(encoder, "MIN_ESTIMATED_GAIN", -1.0)

    assert _promising(cur, refs) == (FRAME_INTRA,)


def test_trial_skipped_for_few_rows(monkeypatch):
    rng = np.random.default_rng(8)
    rows = encoder.TRIAL_MIN_ROWS - 1
    refs = [_quantized(_laplace(rng, (rows, 32, 9)))]
    cur = _laplace(rng, (rows, 32, 9))
    monkeypatch.setattr(encoder, "MIN_ESTIMATED_GAIN", -1.0)

    assert _promising(cur, refs) == (FRAME_INTRA, *INTER_MODES)


def test_search_index_reuse_same_match():
    rng = np.random.default_rng(9)
    ref = _quantized(_laplace(rng, (200, 9)))
    cur = _laplace(rng, (50, 9))
    fresh = prediction.best_match(cur, ref, 8)
    reused = prediction.best_match(cur, None, 8, index=prediction.search_index(ref))

    for expected, actual in zip(fresh, reused):
        assert np.array_equal(expected, actual)


def _write_model(tmp_path, frames):
    tensors = {f"layer.{n}.weight": torch.tensor(frame, dtype=torch.float32)
               for n, frame in enumerate(frames)}
    return write_safetensors(tmp_path / "model.safetensors", tensors)


def _frame_modes(path):
    with open_wbs(path) as wbs:
        records = wbs.header.tensors
        return [records[index].frame_mode for index in wbs.header.coding_order()]


def _synthetic_chain(layers=8, seed=0):
    """Return conv weights that are each the previous layer plus 10% Gaussian noise."""
    rng = np.random.default_rng(seed)
    weight = rng.normal(size=(64, 64, 3, 3)) * 0.05
    frames = []
    for _ in range(layers):
        frames.append(weight)
        weight = weight + rng.normal(size=weight.shape) * 0.005
    return frames


def test_auto_picks_collocated_on_chain(tmp_path):
    source = _write_model(tmp_path, _synthetic_chain())
    sizes = {}
    for mode in ("intra", "collocated", "auto"):
        out = tmp_path / f"{mode}.wbs"
        wcodec.encode_file(source, out, qp=QP, mode=mode)
        sizes[mode] = out.stat().st_size

    assert _frame_modes(tmp_path / "auto.wbs") == [FRAME_INTRA] + [FRAME_COLLOCATED] * 7
    assert sizes["auto"] <= sizes["collocated"]
    assert sizes["auto"] < 0.6 * sizes["intra"]


def test_auto_picks_search_on_permuted_rows(tmp_path):
    rng = np.random.default_rng(10)
    frames = [rng.normal(size=(64, 32, 3, 3)) * 0.05]
    for _ in range(3):
        frames.append(frames[-1][rng.permutation(64)])
    source = _write_model(tmp_path, frames)
    sizes = {}
    for mode in ("intra", "auto"):
        out = tmp_path / f"{mode}.wbs"
        wcodec.encode_file(source, out, qp=QP, mode=mode)
        sizes[mode] = out.stat().st_size
    modes = _frame_modes(tmp_path / "auto.wbs")

    assert modes[0] == FRAME_INTRA
    assert all(mode in (FRAME_ADJACENT, FRAME_FULL) for mode in modes[1:]), modes
    assert sizes["auto"] < 0.6 * sizes["intra"]


def test_auto_codes_independent_frames_intra_only(tmp_path, monkeypatch):
    rng = np.random.default_rng(11)
    source = _write_model(tmp_path, [rng.laplace(size=(64, 32, 3, 3)) * 0.05 for _ in range(4)])
    coded = record_frame_encodes(monkeypatch)
    wcodec.encode_file(source, tmp_path / "auto.wbs", qp=QP, mode="auto", jobs=1)
    wcodec.encode_file(source, tmp_path / "intra.wbs", qp=QP, mode="intra", jobs=1)
    intra_modes = (FRAME_INTRA, FRAME_TRANSFORM)
    full_inter = [mode for mode, rows in coded if mode not in intra_modes and rows == 64]

    assert full_inter == []
    assert (tmp_path / "auto.wbs").read_bytes() == (tmp_path / "intra.wbs").read_bytes()

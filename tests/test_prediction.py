"""Inter-layer prediction: closed-loop reconstruction, mode decisions and gains on real models."""

import os

import numpy as np
import pytest
import torch

import wcodec
from common import assert_roundtrip, write_safetensors
from wcodec.codec import block_syntax, frame_coder
from wcodec.codec.block_syntax import BLOCK_INTER, BLOCK_INTRA, BLOCK_SKIP
from wcodec import decoder
from wcodec.decoder import open_wbs
from wcodec.errors import WbsFormatError
from wcodec.formats import container

STEP = 2.0 ** -8
INTER_MODES = (block_syntax.FRAME_COLLOCATED, block_syntax.FRAME_ADJACENT,
               block_syntax.FRAME_FULL)
MODE_NAMES = ("intra", "collocated", "adjacent", "full", "auto")


def _chain(rng, shapes, noise=0.1, scale=0.05):
    """Return frames where each one is the overlap of the previous one plus noise."""
    frames = []
    previous = None
    for shape in shapes:
        frame = rng.normal(size=shape) * scale
        if previous is not None:
            o = min(shape[0], previous.shape[0])
            i = min(shape[1], previous.shape[1])
            frame[:o, :i] = previous[:o, :i] + rng.normal(size=frame[:o, :i].shape) * scale * noise
        frames.append(frame)
        previous = frame
    return frames


@pytest.mark.parametrize("frame_mode", INTER_MODES)
@pytest.mark.parametrize("kernel", [(), (3,), (3, 3), (2, 3, 3)])
def test_frame_decoder_matches_encoder(frame_mode, kernel):
    rng = np.random.default_rng(7)
    ref_a, ref_b, cur = _chain(rng, [(12, 10, *kernel), (9, 14, *kernel), (10, 12, *kernel)])
    refs = [r.reshape(r.shape[0], r.shape[1], -1) for r in (ref_b, ref_a)]
    values = cur.reshape(cur.shape[0], cur.shape[1], -1)
    refs = refs if frame_mode == block_syntax.FRAME_FULL else refs[:1]

    result = frame_coder.encode_frame(values, STEP, frame_mode, refs, max_candidates=16)
    recon, levels, syntax, coder = frame_coder.decode_frame(
        result.payload, values.shape, STEP, frame_mode, refs, result.gain_num)

    assert coder[frame_coder.cabac.ERROR] == 0
    assert np.array_equal(recon, result.reconstruction)
    assert np.array_equal(syntax.modes, result.syntax.modes)
    assert np.abs(recon - values).max() <= STEP / 2 * (1 + 1e-9)


def test_frame_blocks_outside_reference_are_intra():
    rng = np.random.default_rng(3)
    ref, cur = _chain(rng, [(4, 3, 9), (6, 5, 9)])
    result = frame_coder.encode_frame(cur, STEP, block_syntax.FRAME_COLLOCATED, [ref])

    outside = np.ones((6, 5), dtype=bool)
    outside[:4, :3] = False
    assert (result.syntax.modes[outside] == BLOCK_INTRA).all()
    assert (result.syntax.modes[~outside] != BLOCK_INTRA).all()


def test_frame_exact_copy_is_skipped():
    rng = np.random.default_rng(5)
    ref = np.round(rng.normal(size=(8, 8, 9)) * 0.05 / STEP) * STEP
    result = frame_coder.encode_frame(ref.copy(), STEP, block_syntax.FRAME_COLLOCATED, [ref])
    intra = frame_coder.encode_frame(ref.copy(), STEP, block_syntax.FRAME_INTRA, [])

    assert (result.syntax.modes == BLOCK_SKIP).all()
    assert len(result.payload) * 20 < len(intra.payload)


def test_frame_negated_copy_uses_sign():
    rng = np.random.default_rng(6)
    ref = np.round(rng.normal(size=(8, 8, 9)) * 0.05 / STEP) * STEP
    shuffled = -ref.reshape(64, 9)[rng.permutation(64)].reshape(8, 8, 9)
    result = frame_coder.encode_frame(shuffled, STEP, block_syntax.FRAME_ADJACENT, [ref],
                                      max_candidates=64)

    assert (result.syntax.modes == BLOCK_SKIP).all()
    assert (result.syntax.signs == -1).all()
    assert np.array_equal(result.reconstruction, shuffled)


def test_noisy_chain_codes_smaller(tmp_path):
    rng = np.random.default_rng(0)
    frames = _chain(rng, [(64, 64, 3, 3)] * 6)
    tensors = {f"layer{n}.weight": torch.tensor(f, dtype=torch.float32)
               for n, f in enumerate(frames)}
    source = write_safetensors(tmp_path / "chain.safetensors", tensors)
    sizes = {}
    for mode in MODE_NAMES:
        out = tmp_path / f"{mode}.wbs"
        wcodec.encode_file(source, out, mode=mode)
        sizes[mode] = os.path.getsize(out)
    ratio = sizes["collocated"] / sizes["intra"]
    print(f"collocated / intra = {ratio:.3f}, auto / intra = {sizes['auto'] / sizes['intra']:.3f}")

    assert ratio < 0.6
    assert sizes["auto"] <= sizes["collocated"]
    assert sizes["adjacent"] < 0.6 * sizes["intra"]
    assert sizes["full"] < 0.6 * sizes["intra"]


@pytest.mark.parametrize("mode", MODE_NAMES)
def test_roundtrip_mixed_frames(tmp_path, mode):
    rng = np.random.default_rng(11)
    conv = _chain(rng, [(16, 8, 3, 3), (24, 16, 3, 3), (20, 24, 3, 3)])
    depthwise = _chain(rng, [(16, 1, 3, 3), (16, 1, 3, 3)])
    conv1d = _chain(rng, [(8, 4, 5), (8, 8, 5)])
    conv3d = _chain(rng, [(4, 3, 2, 3, 3), (4, 4, 2, 3, 3)])
    linear = _chain(rng, [(32, 16), (16, 32)])
    tensors = {}
    for group, frames in (("conv", conv), ("dw", depthwise), ("c1d", conv1d), ("c3d", conv3d),
                          ("fc", linear)):
        for n, frame in enumerate(frames):
            tensors[f"{group}.{n}.weight"] = torch.tensor(frame, dtype=torch.float32)
            tensors[f"{group}.{n}.bias"] = torch.tensor(rng.normal(size=frame.shape[0]),
                                                        dtype=torch.float32)
    tensors["half.0"] = torch.tensor(conv[0], dtype=torch.float16)
    tensors["half.1"] = torch.tensor(conv[0] + 0.001, dtype=torch.bfloat16)
    result = assert_roundtrip(tmp_path, tensors, mode=mode)

    frame_modes = {r.frame_mode for r in result["header"].tensors
                   if r.coding_mode == container.MODE_QUANTIZED}
    intra_modes = {block_syntax.FRAME_INTRA, block_syntax.FRAME_TRANSFORM}
    if mode in ("collocated", "adjacent", "full"):
        assert MODE_NAMES.index(mode) in frame_modes
        assert frame_modes <= intra_modes | {MODE_NAMES.index(mode)}
    if mode == "intra":
        assert frame_modes <= intra_modes


def test_roundtrip_orders_restore_file_order(tmp_path):
    rng = np.random.default_rng(2)
    frames = _chain(rng, [(8, 8, 3, 3)] * 12)
    # Alphabetical order puts layer.10 and layer.11 before layer.2.
    names = sorted(f"layer.{n}.weight" for n in range(12))
    tensors = {name: torch.tensor(frames[int(name.split(".")[1])], dtype=torch.float32)
               for name in names}
    for order in ("file", "natural", "greedy"):
        result = assert_roundtrip(tmp_path, tensors, mode="collocated", order=order)
        header = result["header"]
        coded = [header.tensors[i].name for i in header.coding_order()]
        if order == "natural":
            assert coded == [f"layer.{n}.weight" for n in range(12)]
        if order == "file":
            assert coded == names


def test_natural_order_beats_file_order_on_chain(tmp_path):
    rng = np.random.default_rng(4)
    frames = _chain(rng, [(32, 32, 3, 3)] * 12)
    tensors = {name: torch.tensor(frames[int(name.split(".")[1])], dtype=torch.float32)
               for name in sorted(f"layer.{n}.weight" for n in range(12))}
    source = write_safetensors(tmp_path / "chain.safetensors", tensors)
    sizes = {}
    for order in ("file", "natural", "greedy"):
        out = tmp_path / f"{order}.wbs"
        wcodec.encode_file(source, out, mode="collocated", order=order)
        sizes[order] = os.path.getsize(out)

    assert sizes["natural"] < sizes["file"]
    assert sizes["greedy"] <= sizes["natural"] * 1.01


def test_auto_never_larger_than_intra(tmp_path, models_dir):
    paths = sorted(models_dir.glob("*.safetensors"))
    for path in paths:
        intra = tmp_path / f"{path.stem}.intra.wbs"
        auto = tmp_path / f"{path.stem}.auto.wbs"
        wcodec.encode_file(path, intra, mode="intra")
        wcodec.encode_file(path, auto, mode="auto")
        print(f"{path.stem}: auto / intra = {os.path.getsize(auto) / os.path.getsize(intra):.4f}")

        assert os.path.getsize(auto) <= os.path.getsize(intra), path.stem


def _patched_refs(tmp_path, rng, refs):
    """Encode a two-frame chain in collocated mode and rewrite the second frame's refs."""
    frames = _chain(rng, [(8, 8, 3, 3), (8, 8, 3, 3)])
    tensors = {"a.0": torch.tensor(frames[0], dtype=torch.float32),
               "a.1": torch.tensor(frames[1], dtype=torch.float32),
               "0b": torch.ones(4, 4)}
    source = write_safetensors(tmp_path / "m.safetensors", tensors)
    out = tmp_path / "m.wbs"
    wcodec.encode_file(source, out, mode="collocated")
    with open_wbs(out) as wbs:
        header = wbs.header
        payloads = [(i, wbs.payload(i)) for i in header.coding_order()]
    header.tensors[1].refs = refs
    bad = tmp_path / "bad.wbs"
    with open(bad, "wb") as stream:
        container.write_container(stream, header, payloads)
    return bad


@pytest.mark.parametrize("refs, message", [((1,), "refs"), ((5,), "refs"), ((2,), "kernel shape"),
                                           ((0, 0), "references")])
def test_container_rejects_bad_refs(tmp_path, refs, message):
    bad = _patched_refs(tmp_path, np.random.default_rng(1), refs)
    with pytest.raises(WbsFormatError, match=message):
        wcodec.load(bad)


def test_stats_reports_frames(tmp_path):
    rng = np.random.default_rng(9)
    frames = _chain(rng, [(16, 16, 3, 3)] * 3)
    tensors = {f"l.{n}": torch.tensor(f, dtype=torch.float32) for n, f in enumerate(frames)}
    source = write_safetensors(tmp_path / "m.safetensors", tensors)
    out = tmp_path / "m.wbs"
    wcodec.encode_file(source, out, mode="collocated")
    from wcodec.stats import collect_stats

    stats = collect_stats(out)
    second = stats["tensors"][1]
    assert second["frame_mode"] == "collocated"
    assert second["references"] == ["l.0"]
    assert second["block_modes"]["inter"] + second["block_modes"]["skip"] == 1.0
    assert 0 < second["bits_non_texture"] < second["bits_texture"]
    assert second["residual_energy_ratio"] < 0.05
    assert stats["bits_non_texture"] == sum(t["bits_non_texture"] for t in stats["tensors"])
    assert stats["tensors"][0]["frame_mode"] == "intra"
    assert stats["tensors"][0]["bits_non_texture"] == 0
    assert BLOCK_INTER == 1


@pytest.mark.parametrize("options", [{"mode": "intra"}, {"mode": "auto"},
                                     {"mode": "full", "quantizer": "dependent"}])
def test_jobs_do_not_change_output(tmp_path, options):
    rng = np.random.default_rng(12)
    tensors = {}
    for group, shape in (("a", (16, 8, 3, 3)), ("b", (24, 12)), ("c", (8, 4, 5))):
        for n, frame in enumerate(_chain(rng, [shape] * 3)):
            tensors[f"{group}.{n}.weight"] = torch.tensor(frame, dtype=torch.float32)
    tensors["tied"] = tensors["a.0.weight"].clone()
    source = write_safetensors(tmp_path / "m.safetensors", tensors)
    outputs = []
    for jobs in (1, 2, 3):
        out = tmp_path / f"jobs{jobs}.wbs"
        wcodec.encode_file(source, out, jobs=jobs, **options)
        outputs.append(out.read_bytes())
    decoded = [wcodec.load(tmp_path / "jobs1.wbs", jobs=jobs) for jobs in (1, 2, 4)]

    assert outputs[1] == outputs[0]
    assert outputs[2] == outputs[0]
    for other in decoded[1:]:
        assert list(other) == list(decoded[0])
        for name in decoded[0]:
            assert torch.equal(other[name], decoded[0][name]), name


@pytest.mark.parametrize("lookahead_values", [1, 2000, 1 << 22])
def test_decode_lookahead_budget_keeps_output(tmp_path, monkeypatch, lookahead_values):
    # With a budget of one value, threads still decode `jobs` records ahead.
    monkeypatch.setattr(decoder, "LOOKAHEAD_VALUES", lookahead_values)
    rng = np.random.default_rng(13)
    tensors = {f"l.{n}.weight": torch.tensor(frame, dtype=torch.float32)
               for n, frame in enumerate(_chain(rng, [(16, 8, 3, 3)] * 6))}
    source = write_safetensors(tmp_path / "m.safetensors", tensors)
    wcodec.encode_file(source, tmp_path / "m.wbs", mode="collocated", jobs=1)
    single = wcodec.load(tmp_path / "m.wbs", jobs=1)

    for jobs in (2, 3):
        parallel = wcodec.load(tmp_path / "m.wbs", jobs=jobs)
        assert list(parallel) == list(single)
        for name in single:
            assert torch.equal(parallel[name], single[name]), name

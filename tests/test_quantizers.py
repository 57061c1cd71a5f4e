"""Dependent quantization and rate-distortion optimized quantization."""

import os

import numpy as np
import pytest
import torch

import wcodec
from common import assert_roundtrip, write_safetensors
from wcodec.codec import block_syntax, frame_coder, quantization, trellis
from wcodec.formats import container

STEP = 2.0 ** -8


def test_dq_reconstruct_follows_state_machine():
    levels = np.array([[1, 1, 0, -2, 3]], dtype=np.int64)
    coded = np.ones((1, 5), dtype=np.uint8)
    # States: 0 (Q0) -> odd -> 2 (Q0) -> odd -> 3 (Q1) -> even -> 6 (Q0) -> even -> 3 (Q1).
    expected = [2 * 1, 2 * 1, 0, 2 * -2, 2 * 3 - 1]
    assert quantization.dq_reconstruct(levels, coded, 1).tolist() == [expected]


def test_dq_trellis_beats_plain_rounding():
    rng = np.random.default_rng(0)
    targets = rng.laplace(size=(8, 500)) * 6
    coded = np.ones((8, 500), dtype=np.uint8)
    rate = np.full((16, 64), 4.0)
    levels = trellis.dq_trellis(targets, coded, 1, 0.0, rate)
    recon = quantization.dq_reconstruct(levels, coded, 1)
    coarse = 2 * np.rint(targets / 2)

    dq_error = np.mean((targets - recon) ** 2)
    coarse_error = np.mean((targets - coarse) ** 2)
    assert dq_error < 0.8 * coarse_error
    assert np.abs(levels).mean() <= np.abs(coarse / 2).mean() * 1.1


@pytest.mark.parametrize("frame_mode", [block_syntax.FRAME_INTRA, block_syntax.FRAME_COLLOCATED,
                                        block_syntax.FRAME_FULL])
def test_dq_frame_decodes_exactly(frame_mode):
    rng = np.random.default_rng(3)
    ref = rng.normal(size=(12, 10, 9)) * 0.05
    cur = ref + rng.normal(size=ref.shape) * 0.01
    refs = [] if frame_mode == block_syntax.FRAME_INTRA else [ref]
    result = frame_coder.encode_frame(cur, STEP, frame_mode, refs,
                                      quantizer=frame_coder.QUANTIZER_DEPENDENT)
    recon, _, _, coder = frame_coder.decode_frame(result.payload, cur.shape, STEP, frame_mode,
                                                  refs, result.gain_num,
                                                  frame_coder.QUANTIZER_DEPENDENT)

    assert coder[frame_coder.cabac.ERROR] == 0
    assert np.array_equal(recon, result.reconstruction)
    assert np.abs(recon - cur).max() <= 2.5 * STEP


def test_rdoq_frame_decodes_exactly():
    rng = np.random.default_rng(4)
    cur = rng.normal(size=(16, 8, 9)) * 0.02
    result = frame_coder.encode_frame(cur, STEP, block_syntax.FRAME_INTRA, [], rdo_lambda=0.1)
    plain = frame_coder.encode_frame(cur, STEP, block_syntax.FRAME_INTRA, [])
    recon, _, _, _ = frame_coder.decode_frame(result.payload, cur.shape, STEP,
                                              block_syntax.FRAME_INTRA, [], 0)

    assert np.array_equal(recon, result.reconstruction)
    assert len(result.payload) < len(plain.payload)
    assert np.abs(recon - cur).max() <= 1.5 * STEP * (1 + 1e-9)


@pytest.mark.parametrize("options", [{"quantizer": "dependent"}, {"rdoq": True},
                                     {"quantizer": "dependent", "mode": "collocated"}])
def test_quantizer_options_roundtrip_real_model(tmp_path, options):
    from safetensors.torch import load_file

    source = os.path.join(os.path.dirname(__file__), "data", "facenet_onet.safetensors")
    original = load_file(source)
    out = tmp_path / "onet.wbs"
    header = wcodec.encode_file(source, out, qp=-32, **options)
    decoded = wcodec.load(out)
    quantized = [r for r in header.tensors if r.coding_mode == container.MODE_QUANTIZED]
    frames = [r for r in quantized if len(r.shape) >= 2]

    if options.get("quantizer") == "dependent":
        assert all(r.quantizer == 1 for r in frames)
    assert all(r.quantizer == 0 for r in quantized if len(r.shape) < 2)
    for name, tensor in original.items():
        error = (tensor.double() - decoded[name].double()).abs().max().item()
        assert error <= 2.5 * quantization.qp_to_step(-32), name


def test_dependent_smaller_at_equal_sqnr(tmp_path):
    source = os.path.join(os.path.dirname(__file__), "data", "facenet_onet.safetensors")
    from safetensors.torch import load_file

    original = {k: v.double() for k, v in load_file(source).items() if v.ndim >= 2}
    signal = sum(float((v ** 2).sum()) for v in original.values())

    def point(qp, quantizer):
        out = tmp_path / f"{quantizer}{qp}.wbs"
        wcodec.encode_file(source, out, qp=qp, quantizer=quantizer)
        decoded = wcodec.load(out)
        error = sum(float(((v - decoded[k].double()) ** 2).sum()) for k, v in original.items())
        return os.path.getsize(out), 10 * np.log10(signal / error)

    uniform = [point(qp, "uniform") for qp in (-36, -32)]
    dependent = point(-32, "dependent")
    # Interpolate the uniform size at the SQNR that dependent quantization reached.
    (size_a, sqnr_a), (size_b, sqnr_b) = uniform
    size_at = size_b + (size_a - size_b) * (dependent[1] - sqnr_b) / (sqnr_a - sqnr_b)
    print(f"dependent {dependent[0]} bytes at {dependent[1]:.2f} dB, uniform {size_at:.0f}")
    assert dependent[0] < 0.97 * size_at


def test_dq_rejected_for_vectors(tmp_path):
    tensors = {"w": torch.randn(8, 8), "b": torch.randn(8)}
    source = write_safetensors(tmp_path / "m.safetensors", tensors)
    out = tmp_path / "m.wbs"
    header = wcodec.encode_file(source, out, quantizer="dependent")
    assert [r.quantizer for r in header.tensors] == [1, 0]
    result = assert_roundtrip(tmp_path, tensors, qp=-40)
    assert result["header"].tensors[0].quantizer == 0

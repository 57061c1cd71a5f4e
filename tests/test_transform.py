"""The kernel transform: integer DCT matrices, exact reconstruction, encoder choice, validation."""

import math

import numpy as np
import pytest
import torch

import wcodec
from common import MODE_QUANTIZED, assert_roundtrip, build_wbs, record_frame_encodes, write_safetensors
from wcodec.codec import block_syntax, frame_coder, transform
from wcodec.decoder import open_wbs
from wcodec.errors import WbsFormatError

TRANSFORM = block_syntax.FRAME_TRANSFORM


def smooth_kernels(out_channels, in_channels, side, seed=0, noise=0.02):
    """Return kernels that are smooth ramps plus a little noise, as trained conv kernels tend to be."""
    rng = np.random.default_rng(seed)
    taps = np.linspace(-1, 1, side)
    ramps = (rng.normal(size=(out_channels, in_channels, 1, 1)) * taps[:, None]
             + rng.normal(size=(out_channels, in_channels, 1, 1)) * taps[None, :]
             + rng.normal(size=(out_channels, in_channels, 1, 1)))
    values = 0.05 * ramps + noise * rng.normal(size=(out_channels, in_channels, side, side))
    return torch.tensor(values, dtype=torch.float32)


@pytest.mark.parametrize("n", range(2, transform.MAX_KERNEL_SIDE + 1))
def test_dct_matrix_close_to_orthonormal(n):
    matrix = transform.dct_synthesis(n).astype(np.float64) / 2**transform.PRECISION_BITS

    assert np.abs(matrix.T @ matrix - np.eye(n)).max() < 4 * n * 2.0**-transform.PRECISION_BITS


@pytest.mark.parametrize("n", range(2, transform.MAX_KERNEL_SIDE + 1))
def test_dct_entries_far_from_rounding_ties(n):
    # An entry that rounds the same way for any last-bit error of cos() is the same on
    # every platform, so every decoder uses identical matrices.
    for p in range(n):
        for f in range(n):
            scale = math.sqrt((1.0 if f == 0 else 2.0) / n)
            exact = 2**transform.PRECISION_BITS * scale * math.cos(math.pi * (p + 0.5) * f / n)
            assert abs(abs(exact - math.floor(exact)) - 0.5) > 1e-6, (n, p, f)


@pytest.mark.parametrize("kernel", [(3, 3), (5, 5), (8, 8), (3,), (7,), (2, 5)])
def test_inverse_is_exact_at_the_value_limit(kernel):
    k = math.prod(kernel)
    rng = np.random.default_rng(k)
    values = rng.integers(-transform.MAX_VALUE, transform.MAX_VALUE + 1, size=(2, 3, k))
    values[0, 0, :] = transform.MAX_VALUE
    values[0, 1, :] = -transform.MAX_VALUE
    matrix, shift = transform.kernel_synthesis(kernel)
    step = 2.0**-10

    weights = transform.inverse(values, step, kernel)

    for o in range(2):
        for i in range(3):
            for p in range(k):
                exact = sum(int(matrix[p, f]) * int(values[o, i, f]) for f in range(k))
                assert weights[o, i, p] == float(exact) * step * 2.0**-shift


def test_forward_inverts_inverse():
    kernel = (3, 3)
    rng = np.random.default_rng(1)
    blocks = rng.normal(size=(4, 5, 9))
    coefficients = transform.forward(blocks, kernel)
    step = 2.0**-20
    levels = np.rint(coefficients / step).astype(np.int64)

    assert np.abs(transform.inverse(levels, step, kernel) - blocks).max() < 2 * step


@pytest.mark.parametrize("kernel, eligible", [((3, 3), True), ((1, 1), False), ((), False),
                                              ((9,), False), ((8, 8), True), ((3, 3, 3), False),
                                              ((2,), True), ((1, 4), True), ((0, 3), False)])
def test_eligible_kernel_shapes(kernel, eligible):
    assert transform.is_eligible(kernel) == eligible


@pytest.mark.parametrize("quantizer", ["uniform", "dependent"])
def test_smooth_kernels_use_the_transform(tmp_path, quantizer):
    tensors = {"conv1.weight": smooth_kernels(16, 8, 3), "conv2.weight": smooth_kernels(8, 16, 5, seed=1),
               "fc.weight": torch.randn(4, 8)}
    result = assert_roundtrip(tmp_path, tensors, mode="intra", quantizer=quantizer)
    modes = {record.name: record.frame_mode for record in result["header"].tensors}

    assert modes == {"conv1.weight": TRANSFORM, "conv2.weight": TRANSFORM, "fc.weight": 0}
    assert result["wbs"].read_bytes()[8:10] == b"\x02\x00"


def test_transform_saves_bits_on_smooth_kernels(tmp_path):
    source = write_safetensors(tmp_path / "model.safetensors", {"conv.weight": smooth_kernels(32, 16, 3)})
    sizes = {}
    for enabled in (False, True):
        output = tmp_path / f"{enabled}.wbs"
        wcodec.encode_file(source, output, qp=-32, mode="intra", transform=enabled)
        sizes[enabled] = output.stat().st_size

    assert sizes[True] < 0.9 * sizes[False]


def test_no_transform_codes_no_transform_frame(tmp_path):
    source = write_safetensors(tmp_path / "model.safetensors", {"conv.weight": smooth_kernels(8, 4, 3)})
    header = wcodec.encode_file(source, tmp_path / "model.wbs", transform=False)

    assert all(record.frame_mode != TRANSFORM for record in header.tensors)


def test_inter_frames_predict_from_transform_frames(tmp_path):
    base = smooth_kernels(16, 8, 3)
    tensors = {"layer.0.weight": base, "layer.1.weight": base + 0.001 * torch.randn(16, 8, 3, 3)}
    result = assert_roundtrip(tmp_path, tensors, mode="collocated")
    modes = [record.frame_mode for record in result["header"].tensors]

    assert modes == [TRANSFORM, block_syntax.FRAME_COLLOCATED]


def transform_record(payload, shape=(2, 2, 3, 3), qp=-32):
    return {"name": "conv", "dtype": "F32", "shape": shape, "mode": MODE_QUANTIZED, "qp": qp,
            "frame_mode": TRANSFORM, "payload": payload}


def coded_levels(levels, block_size):
    payload, _ = frame_coder._encode_payload(levels, block_size, TRANSFORM, None, [],
                                             np.zeros((1, 1)), 0.0, False)
    return payload


def test_decoder_accepts_a_built_transform_frame(tmp_path):
    levels = np.arange(-18, 18, dtype=np.int64).reshape(2, 18)  # (O, K * I), I = 2 per frequency
    path = tmp_path / "built.wbs"
    path.write_bytes(build_wbs([transform_record(coded_levels(levels, 2))], version=2))

    weights = wcodec.load(path)["conv"].double().numpy()
    expected = transform.inverse(levels.reshape(2, 9, 2).transpose(0, 2, 1), 2.0**-8, (3, 3))

    assert np.array_equal(weights.reshape(2, 2, 9), expected.astype(np.float32))


def test_decoder_rejects_transform_frame_in_version_1(tmp_path):
    levels = np.zeros((2, 18), dtype=np.int64)
    path = tmp_path / "v1.wbs"
    path.write_bytes(build_wbs([transform_record(coded_levels(levels, 2))], version=1))

    with pytest.raises(WbsFormatError, match="transform frames need bitstream version 2"):
        with open_wbs(path):
            pass


@pytest.mark.parametrize("shape", [(2, 2, 9, 9), (2, 2, 1), (2, 2, 3, 3, 3), (2, 2), (0, 2, 3, 3)])
def test_decoder_rejects_transform_frame_of_unfit_shape(tmp_path, shape):
    path = tmp_path / "shape.wbs"
    path.write_bytes(build_wbs([transform_record(b"", shape=shape)], version=2))

    with pytest.raises(WbsFormatError, match="field frame_mode: a transform frame needs"):
        with open_wbs(path):
            pass


def test_decoder_rejects_coefficient_beyond_range(tmp_path):
    levels = np.zeros((2, 18), dtype=np.int64)
    levels[1, 5] = transform.MAX_VALUE + 1
    path = tmp_path / "large.wbs"
    path.write_bytes(build_wbs([transform_record(coded_levels(levels, 2))], version=2))

    with pytest.raises(WbsFormatError, match="DCT coefficient exceeds"):
        wcodec.load(path)


@pytest.mark.parametrize("smooth, full_mode", [(True, TRANSFORM), (False, 0)])
def test_sample_rows_pick_one_intra_mode(tmp_path, monkeypatch, smooth, full_mode):
    # On a frame of 64 rows, intra and transform are compared on every 8th row, and only
    # the smaller is coded in full.
    rng = np.random.default_rng(5)
    kernels = smooth_kernels(64, 8, 3) if smooth else torch.tensor(rng.laplace(size=(64, 8, 3, 3)) * 0.05,
                                                                  dtype=torch.float32)
    source = write_safetensors(tmp_path / "model.safetensors", {"conv.weight": kernels})
    coded = record_frame_encodes(monkeypatch)
    header = wcodec.encode_file(source, tmp_path / "model.wbs", mode="intra", jobs=1)

    assert sorted(coded) == sorted([(0, 8), (TRANSFORM, 8), (full_mode, 64)])
    assert header.tensors[0].frame_mode == full_mode


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_eight_bit_floats_skip_the_transform(tmp_path, dtype):
    tensors = {"conv.weight": smooth_kernels(16, 8, 3).to(dtype)}
    result = assert_roundtrip(tmp_path, tensors, mode="intra")

    assert result["header"].tensors[0].frame_mode == 0

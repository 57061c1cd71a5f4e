"""Round trips of whole models through encode, decode_file and load, all via assert_roundtrip."""

import logging

import numpy as np
import pytest
import torch

from common import (
    FLOAT_DTYPES,
    ONET,
    PNET,
    assert_roundtrip,
    qp_step,
    read_safetensors,
    shared_model_names,
    tensor_of_bytes,
    tiny_model,
    write_safetensors,
)
from wcodec import encode_file
from wcodec.errors import InputError, WbsFormatError
from wcodec.formats.dtypes import dtype_by_name, tensor_to_bytes
from wcodec.stats import collect_stats

QPS = (-38, -32, -26, -20)
INTEGER_DTYPES = ("I8", "I16", "I32", "I64", "U8", "U16", "U32", "U64")
ALL_DTYPES = FLOAT_DTYPES + INTEGER_DTYPES + ("BOOL",)


def modes(result) -> dict[str, str]:
    return {record.name: record.mode_name for record in result["header"].tensors}


def random_tensor(dtype_name: str, shape, seed: int = 0) -> torch.Tensor:
    """Return a tensor of `dtype_name` with typical values: weights for floats, the full range for integers."""
    generator = torch.Generator().manual_seed(seed)
    torch_dtype = dtype_by_name(dtype_name).torch_dtype
    if dtype_name in FLOAT_DTYPES:
        return (0.2 * torch.randn(shape, generator=generator, dtype=torch.float64)).to(torch_dtype)
    if dtype_name == "BOOL":
        return torch.randint(0, 2, shape, generator=generator).to(torch.bool)
    info = torch.iinfo(torch_dtype)
    # Values far beyond 2**50 are stored raw, so keep 64-bit integers within the level range.
    low, high = max(info.min, -(2**50)), min(info.max, 2**50)
    values = np.random.default_rng(seed).integers(low, high, size=shape, endpoint=True, dtype=np.int64)
    return torch.from_numpy(values).to(torch_dtype)


# ---------------------------------------------------------------- dtypes and shapes


@pytest.mark.parametrize("dtype_name", ALL_DTYPES)
def test_dtype_roundtrip(tmp_path, dtype_name):
    tensors = {
        "matrix": random_tensor(dtype_name, (6, 40), seed=1),
        "conv": random_tensor(dtype_name, (4, 3, 3, 3), seed=2),
        "vector": random_tensor(dtype_name, (17,), seed=3),
    }
    result = assert_roundtrip(tmp_path, tensors)

    expected = "quantized" if dtype_name in FLOAT_DTYPES else "integer"
    assert modes(result) == {"matrix": expected, "conv": expected, "vector": expected}


@pytest.mark.parametrize("dtype_name", INTEGER_DTYPES)
def test_integer_extremes_roundtrip(tmp_path, dtype_name):
    info = torch.iinfo(dtype_by_name(dtype_name).torch_dtype)
    low = max(info.min, -(2**50))
    high = min(info.max, 2**50)
    values = torch.tensor([[low, high, 0, 1], [-1 if low < 0 else 2, high - 1, low + 1, 0]])
    result = assert_roundtrip(tmp_path, {"extremes": values.to(dtype_by_name(dtype_name).torch_dtype)})

    assert modes(result) == {"extremes": "integer"}


def test_integers_beyond_level_range_raw(tmp_path):
    tensors = {
        "i64": torch.tensor([2**62, -(2**62), 2**50 + 1, 5], dtype=torch.int64),
        "u64": torch.tensor([2**63 - 1, 0], dtype=torch.uint64),
        "u32": torch.tensor([2**32 - 1, 7], dtype=torch.uint32),
    }
    result = assert_roundtrip(tmp_path, tensors)

    assert modes(result) == {"i64": "raw", "u64": "raw", "u32": "integer"}


def test_u64_above_int64_raw(tmp_path):
    data = b"".join(value.to_bytes(8, "little") for value in (2**63, 2**64 - 1, 0, 12345))
    tensors = {"counter": tensor_of_bytes(data, "U64", (2, 2))}
    result = assert_roundtrip(tmp_path, tensors)

    assert modes(result) == {"counter": "raw"}
    assert tensor_to_bytes(result["restored"]["counter"]) == data


def test_i64_minimum_roundtrip(tmp_path):
    tensors = {"offsets": torch.tensor([-(2**63), 0, 1], dtype=torch.int64)}
    assert_roundtrip(tmp_path, tensors)


def test_bool_roundtrip(tmp_path):
    tensors = {
        "mask": torch.tensor([[True, False, True], [False, False, True]]),
        "all_false": torch.zeros(64, 64, dtype=torch.bool),
        "all_true": torch.ones(3, 5, dtype=torch.bool),
    }
    result = assert_roundtrip(tmp_path, tensors)

    assert modes(result) == {"mask": "integer", "all_false": "integer", "all_true": "integer"}


def test_bool_byte_two_raw(tmp_path):
    # safetensors stores BOOL as bytes; a byte other than 0 or 1 has no integer level.
    tensors = {"mask": tensor_of_bytes(b"\x00\x01\x02\xff", "BOOL", (4,))}
    result = assert_roundtrip(tmp_path, tensors)

    assert modes(result) == {"mask": "raw"}


@pytest.mark.parametrize("dtype_name", ALL_DTYPES)
def test_scalar_roundtrip(tmp_path, dtype_name):
    value = torch.tensor(0.7 if dtype_name in FLOAT_DTYPES else 1)
    tensors = {"scalar": value.to(dtype_by_name(dtype_name).torch_dtype)}
    result = assert_roundtrip(tmp_path, tensors)

    record = result["header"].tensors[0]
    assert record.shape == ()
    if dtype_name in FLOAT_DTYPES:
        assert record.qp == -32 - 24


@pytest.mark.parametrize("shape", [(0,), (0, 3), (3, 0), (2, 0, 3, 3), (0, 0)], ids=str)
@pytest.mark.parametrize("dtype_name", ["F32", "BF16", "I16", "BOOL"])
def test_zero_sized_roundtrip(tmp_path, dtype_name, shape):
    tensors = {
        "before": random_tensor(dtype_name, (2, 3), seed=4),
        "empty": torch.empty(shape, dtype=dtype_by_name(dtype_name).torch_dtype),
        "after": random_tensor(dtype_name, (5,), seed=5),
    }
    result = assert_roundtrip(tmp_path, tensors)

    empty = result["header"].tensors[1]
    assert empty.payload_length == 0
    assert collect_stats(result["wbs"])["tensors"][1]["num_weights"] == 0


def test_empty_vector_qp(tmp_path):
    result = assert_roundtrip(tmp_path, {"bias": torch.empty(0)}, qp=-32)

    assert result["header"].tensors[0].qp == -56


@pytest.mark.parametrize("shape", [(7,), (5, 9), (4, 3, 5), (6, 2, 3, 3), (3, 2, 2, 3, 2)], ids=str)
def test_shape_roundtrip(tmp_path, shape):
    result = assert_roundtrip(tmp_path, {"weight": random_tensor("F32", shape, seed=6)})

    record = result["header"].tensors[0]
    assert record.shape == shape
    assert record.qp == (-32 if len(shape) >= 2 else -56)


def test_odd_names_roundtrip(tmp_path):
    tensors = {
        "zeta": torch.ones(2),
        "alpha": torch.zeros(2, 2),
        "名前.权重": torch.arange(6, dtype=torch.int32),
        "x" * 300: torch.tensor(1.5),
        "": torch.tensor([3, -5], dtype=torch.int8),
    }
    assert_roundtrip(tmp_path, tensors)


# ---------------------------------------------------------------- values that must not be quantized


def test_huge_values_raw(tmp_path):
    weight = 0.1 * torch.randn(4, 4, generator=torch.Generator().manual_seed(7))
    weight[1, 2] = 1e30
    tensors = {"huge": weight, "huge_bias": torch.tensor([1e30, -3.0]), "small": torch.ones(4, 4)}
    result = assert_roundtrip(tmp_path, tensors)

    assert modes(result) == {"huge": "raw", "huge_bias": "raw", "small": "quantized"}


def test_largest_level_quantized(tmp_path):
    # (2**50 - 1) steps is still inside the level range, so the tensor is quantized,
    # and the coder must carry levels of 50 bits exactly.
    step = qp_step(-32)
    values = torch.tensor([[(2**50 - 1) * step, -(2**50 - 1) * step, 0.0, step]], dtype=torch.float64)
    result = assert_roundtrip(tmp_path, {"wide": values})

    assert modes(result) == {"wide": "quantized"}
    assert torch.equal(result["restored"]["wide"], values)


@pytest.mark.parametrize("dtype_name", FLOAT_DTYPES)
def test_nan_inf_raw_with_warning(tmp_path, caplog, dtype_name):
    torch_dtype = dtype_by_name(dtype_name).torch_dtype
    special = [float("nan"), float("inf"), -float("inf"), 0.5]
    if dtype_name == "F8_E4M3":
        special = [float("nan"), 448.0, -448.0, 0.5]  # F8_E4M3 has no infinity
    tensors = {
        "plain": torch.full((3, 3), 0.25, dtype=torch_dtype),
        "special.weight": torch.tensor([special, special], dtype=torch.float64).to(torch_dtype),
    }
    with caplog.at_level(logging.WARNING, logger="wcodec"):
        result = assert_roundtrip(tmp_path, tensors)

    assert modes(result) == {"plain": "quantized", "special.weight": "raw"}
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings
    assert all("'special.weight'" in r.getMessage() for r in warnings)
    assert not any("'plain'" in r.getMessage() for r in caplog.records)


def test_nan_payload_kept(tmp_path):
    # A signalling NaN with a payload, a quiet NaN with the sign bit set, and +0 / -0.
    data = b"\x01\x00\x80\x7f" + b"\x45\x23\xc1\xff" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x80"
    result = assert_roundtrip(tmp_path, {"nan": tensor_of_bytes(data, "F32", (2, 2))})

    assert tensor_to_bytes(result["restored"]["nan"]) == data


def test_half_steps_round_away_from_zero(tmp_path):
    step = qp_step(-32)
    values = torch.tensor([[0.5, -0.5, 1.5, -1.5, 2.5, -2.5, 3.0, 0.0]], dtype=torch.float64) * step
    result = assert_roundtrip(tmp_path, {"ties": values})

    expected = torch.tensor([[1.0, -1.0, 2.0, -2.0, 3.0, -3.0, 3.0, 0.0]], dtype=torch.float64) * step
    assert torch.equal(result["restored"]["ties"], expected)


def test_f16_maximum_coarse_qp(tmp_path):
    # At qp 21 the step is 40, and 65504 / 40 rounds to 1638 levels: 65520, which F16 rounds to inf.
    tensors = {"w": torch.tensor([[65504.0, -65504.0, 1.0]], dtype=torch.float16)}
    assert_roundtrip(tmp_path, tensors, qp=21)


# ---------------------------------------------------------------- --keep and aliases


def test_keep_glob_raw(tmp_path):
    result = assert_roundtrip(tmp_path, tiny_model(), keep=["conv.*"])

    assert modes(result) == {"conv.weight": "raw", "conv.bias": "raw", "fc.weight": "quantized",
                             "fc.bias": "quantized"}


def test_keep_regex_raw(tmp_path):
    result = assert_roundtrip(tmp_path, tiny_model(), keep=[r"(conv|fc)\.bias"])

    assert modes(result) == {"conv.weight": "quantized", "conv.bias": "raw", "fc.weight": "quantized",
                             "fc.bias": "raw"}


def test_keep_regex_matches_whole_name(tmp_path):
    # "fc" is a valid regular expression, but it matches no whole name.
    result = assert_roundtrip(tmp_path, tiny_model(), keep=["fc", "bias"])

    assert set(modes(result).values()) == {"quantized"}


def test_keep_several_patterns(tmp_path):
    result = assert_roundtrip(tmp_path, tiny_model(), keep=["conv.weight", r"fc\.b.*", "[invalid"])

    assert modes(result) == {"conv.weight": "raw", "conv.bias": "quantized", "fc.weight": "quantized",
                             "fc.bias": "raw"}


def test_tied_tensors_alias(tmp_path):
    model = tiny_model()
    tensors = {
        "embed.weight": model["fc.weight"],
        "head.weight": model["fc.weight"].clone(),
        "ids": torch.arange(12, dtype=torch.int64),
        "ids_copy": torch.arange(12, dtype=torch.int64),
        "third.weight": model["fc.weight"].clone(),
    }
    result = assert_roundtrip(tmp_path, tensors)

    header = result["header"]
    assert modes(result) == {"embed.weight": "quantized", "head.weight": "alias", "ids": "integer",
                             "ids_copy": "alias", "third.weight": "alias"}
    assert header.tensors[1].alias_of == 0
    assert header.tensors[3].alias_of == 2
    assert header.tensors[4].alias_of == 0
    restored = result["restored"]
    assert torch.equal(restored["head.weight"], restored["embed.weight"])
    assert torch.equal(restored["third.weight"], restored["embed.weight"])


def test_same_bytes_other_dtype_not_alias(tmp_path):
    floats = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    tensors = {
        "floats": floats,
        "same_bits_int": floats.view(torch.int32).clone(),
        "reshaped": floats.reshape(4).clone(),
        "transposed_view": floats.t(),
    }
    result = assert_roundtrip(tmp_path, tensors)

    assert "alias" not in modes(result).values()


@pytest.mark.parametrize("empty_kind", ["alias", "no_elements"])
def test_empty_payload_inside_coding_order(tmp_path, empty_kind):
    # The file lists c, b, a; the coding order is a, b, c, and b has no payload bytes.
    weight = tiny_model()["fc.weight"]
    middle = weight.clone() if empty_kind == "alias" else torch.empty(0, 4)
    tensors = {"c": torch.ones(3, 3), "b": middle, "a": weight}
    assert_roundtrip(tmp_path, tensors)


def test_keep_overrides_alias(tmp_path):
    # "first" is coded before "second" in every frame order, so "second" is the alias candidate.
    weight = tiny_model()["fc.weight"]
    tensors = {"first.weight": weight, "second.weight": weight.clone()}
    result = assert_roundtrip(tmp_path, tensors, keep=["second.weight"])

    assert modes(result)["second.weight"] == "raw"


# ---------------------------------------------------------------- inter-layer prediction


def correlated_layers(seed: int = 11) -> dict[str, torch.Tensor]:
    """Return conv layers that predict each other well: copies, a negated copy, a wider layer."""
    generator = torch.Generator().manual_seed(seed)
    base = 0.1 * torch.randn(16, 8, 3, 3, generator=generator)
    return {
        "layer.1.weight": base,
        "layer.2.weight": base + 0.002 * torch.randn(16, 8, 3, 3, generator=generator),
        "layer.10.weight": -base + 0.004 * torch.randn(16, 8, 3, 3, generator=generator),
        "layer.3.weight": torch.cat([base, 0.1 * torch.randn(8, 8, 3, 3, generator=generator)]),
        "layer.3.bias": 0.01 * torch.randn(24, generator=generator),
        "head.weight": 0.05 * torch.randn(10, 16, generator=generator),
    }


@pytest.mark.parametrize("mode", ["intra", "collocated", "adjacent", "full", "auto"])
def test_prediction_mode_roundtrip(tmp_path, mode):
    result = assert_roundtrip(tmp_path, correlated_layers(), mode=mode)

    frame_modes = {record.name: record.frame_mode for record in result["header"].tensors
                   if record.coding_mode == 1}
    assert frame_modes["head.weight"] == 0
    if mode == "intra":
        assert set(frame_modes.values()) <= {0, 4}  # intra, with or without the kernel transform
    else:
        assert set(frame_modes.values()) - {0, 4}


@pytest.mark.parametrize("options", [{"quantizer": "dependent"}, {"rdoq": True},
                                     {"quantizer": "dependent", "mode": "intra"}], ids=str)
def test_quantizer_options_roundtrip(tmp_path, options):
    result = assert_roundtrip(tmp_path, correlated_layers(), **options)

    quantizers = {record.quantizer for record in result["header"].tensors if record.coding_mode == 1}
    assert quantizers == ({0, 1} if options.get("quantizer") == "dependent" else {0})


@pytest.mark.parametrize("order", ["file", "natural", "greedy"])
def test_frame_order_roundtrip(tmp_path, order):
    assert_roundtrip(tmp_path, correlated_layers(), order=order, mode="auto")


def test_prediction_smaller_than_intra(tmp_path):
    layers = correlated_layers()
    intra = assert_roundtrip(tmp_path, layers, mode="intra")["wbs"].stat().st_size
    auto = assert_roundtrip(tmp_path, layers, mode="auto")["wbs"].stat().st_size

    assert auto < 0.8 * intra


def test_prediction_every_float_dtype(tmp_path):
    layers = {name: tensor for name, tensor in correlated_layers().items() if tensor.dim() == 4}
    tensors = {f"{dtype_name}.{name}": tensor.to(dtype_by_name(dtype_name).torch_dtype)
               for dtype_name in FLOAT_DTYPES for name, tensor in layers.items()}
    assert_roundtrip(tmp_path, tensors, mode="full")


# ---------------------------------------------------------------- metadata


@pytest.mark.parametrize("metadata", [None, {}, {"format": "pt"}, {"z": "1", "a": "2", "ключ": "значение"}],
                         ids=["none", "empty", "one", "ordered"])
def test_metadata_roundtrip(tmp_path, metadata):
    result = assert_roundtrip(tmp_path, {"w": torch.ones(2, 2)}, metadata)

    if metadata is not None:
        assert list(result["header"].metadata) == list(metadata)


def test_empty_model_roundtrip(tmp_path):
    result = assert_roundtrip(tmp_path, {}, {"note": "no tensors"})

    assert result["restored"] == {}
    assert collect_stats(result["wbs"])["num_weights"] == 0


# ---------------------------------------------------------------- quantization parameters


@pytest.mark.parametrize("qp", QPS)
def test_qp_pnet(tmp_path, qp):
    metadata, tensors = read_safetensors(PNET)
    result = assert_roundtrip(tmp_path, tensors, metadata, qp=qp)

    for record in result["header"].tensors:
        assert record.qp == (qp if len(record.shape) >= 2 else qp - 24)


@pytest.mark.parametrize("qp", QPS)
def test_qp_every_dtype(tmp_path, qp):
    tensors = {f"{name}.weight": random_tensor(name, (5, 3, 2), seed=8) for name in ALL_DTYPES}
    tensors.update({f"{name}.bias": random_tensor(name, (5,), seed=9) for name in FLOAT_DTYPES})
    assert_roundtrip(tmp_path, tensors, qp=qp)


def test_coarser_qp_smaller_file(tmp_path):
    metadata, tensors = read_safetensors(PNET)
    sizes = [assert_roundtrip(tmp_path, tensors, metadata, qp=qp)["wbs"].stat().st_size for qp in QPS]

    assert sizes == sorted(sizes, reverse=True)
    assert sizes[0] > sizes[-1]


# ---------------------------------------------------------------- real models


@pytest.mark.parametrize("path", [PNET, ONET], ids=lambda path: path.stem)
def test_data_model_roundtrip(tmp_path, path):
    metadata, tensors = read_safetensors(path)
    result = assert_roundtrip(tmp_path, tensors, metadata)

    raw_size = sum(tensor.numel() * tensor.element_size() for tensor in tensors.values())
    assert result["wbs"].stat().st_size < raw_size / 3


@pytest.mark.parametrize("name", shared_model_names())
def test_shared_model_roundtrip(tmp_path, models_dir, name):
    metadata, tensors = read_safetensors(models_dir / name)
    assert_roundtrip(tmp_path, tensors, metadata)


# ---------------------------------------------------------------- the checker itself


def test_checker_rejects_error_above_half_step(tmp_path, monkeypatch):
    from wcodec.formats import dtypes

    original = dtypes.float64_to_tensor
    # Scaling every reconstruction by 1.01 moves weights near 1.5 by about 4 steps of 2**-8.
    monkeypatch.setattr(dtypes, "float64_to_tensor", lambda array, name, shape: original(array * 1.01, name, shape))
    with pytest.raises(AssertionError, match="exceeds"):
        assert_roundtrip(tmp_path, {"w": 1.5 + random_tensor("F64", (4, 4), seed=10)})


def test_checker_rejects_changed_integer(tmp_path, monkeypatch):
    from wcodec.formats import dtypes

    original = dtypes.int64_to_tensor
    monkeypatch.setattr(dtypes, "int64_to_tensor", lambda array, name, shape: original(array // 2, name, shape))
    with pytest.raises(AssertionError, match="not bit-exact"):
        assert_roundtrip(tmp_path, {"ids": torch.arange(10, dtype=torch.int32)})


def test_rdoq_with_dependent_rejected(tmp_path):
    tensors = {"w": torch.randn(4, 4)}
    source = write_safetensors(tmp_path / "m.safetensors", tensors)
    with pytest.raises(InputError, match="uniform quantization only"):
        encode_file(source, tmp_path / "m.wbs", quantizer="dependent", rdoq=True)
    assert not (tmp_path / "m.wbs").exists()

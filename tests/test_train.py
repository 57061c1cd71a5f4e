"""Tests for wcodec.train: the inter-layer loss, its value, its gradient and its pairs."""

import logging

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import wcodec
from wcodec.codec.block_syntax import FRAME_COLLOCATED
from wcodec.decoder import open_wbs
from wcodec.train import InterLayerLoss, collocated_pairs


class TwoConvs(nn.Module):
    """Two convolutions whose weights the tests set by hand."""

    def __init__(self, first_shape, second_shape):
        super().__init__()
        self.conv1 = nn.Conv2d(first_shape[1], first_shape[0], first_shape[2:], bias=False)
        self.conv2 = nn.Conv2d(second_shape[1], second_shape[0], second_shape[2:], bias=False)


def two_convs(first, second):
    model = TwoConvs(first.shape, second.shape)
    with torch.no_grad():
        model.conv1.weight.copy_(torch.as_tensor(first, dtype=torch.float32))
        model.conv2.weight.copy_(torch.as_tensor(second, dtype=torch.float32))
    return model


def hand_built_model():
    """Return conv1 (2, 1, 1, 2) and conv2 (2, 2, 1, 2), which overlap on conv2[:, :1]."""
    first = np.array([[[[1.0, 2.0]]],
                      [[[3.0, 4.0]]]])
    second = np.array([[[[1.5, 2.0]], [[9.0, 9.0]]],
                       [[[3.0, 2.0]], [[9.0, 9.0]]]])
    return two_convs(first, second)


# ---------------------------------------------------------------- value


def test_loss_value_p1_hand_computed():
    # Collocated differences conv2[:, :1] - conv1: (0.5, 0) and (0, -2).
    # mean |d| = (0.5 + 0 + 0 + 2) / 4 = 0.625, times weight 0.1.
    loss = InterLayerLoss(hand_built_model(), weight=0.1, p=1)
    assert loss().item() == pytest.approx(0.0625)


def test_loss_value_p2_hand_computed():
    # mean d**2 = (0.25 + 0 + 0 + 4) / 4 = 1.0625, times weight 0.1.
    loss = InterLayerLoss(hand_built_model(), weight=0.1, p=2)
    assert loss().item() == pytest.approx(0.10625)


def test_loss_sums_over_pairs():
    model = nn.Sequential(nn.Conv2d(1, 1, (1, 2), bias=False), nn.Conv2d(1, 1, (1, 2), bias=False),
                          nn.Conv2d(1, 1, (1, 2), bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[[[0.0, 0.0]]]]))
        model[1].weight.copy_(torch.tensor([[[[1.0, 3.0]]]]))
        model[2].weight.copy_(torch.tensor([[[[1.0, 4.0]]]]))
    loss = InterLayerLoss(model, weight=1.0, p=1)

    # Pair (1, 0): mean(1, 3) = 2. Pair (2, 1): mean(0, 1) = 0.5.
    assert loss.pairs == [("1.weight", "0.weight"), ("2.weight", "1.weight")]
    assert loss().item() == pytest.approx(2.5)


def test_loss_zero_weight_is_zero():
    assert InterLayerLoss(hand_built_model(), weight=0.0)().item() == 0.0


# ---------------------------------------------------------------- overlap


@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("first_shape, second_shape", [
    ((4, 2, 3, 3), (3, 5, 3, 3)),  # fewer outputs, more inputs
    ((3, 5, 3, 3), (4, 2, 3, 3)),  # more outputs, fewer inputs
])
def test_loss_mismatched_shapes_uses_overlap(p, first_shape, second_shape):
    generator = np.random.default_rng(1)
    first = generator.normal(size=first_shape)
    second = generator.normal(size=second_shape)
    model = two_convs(first, second)
    loss = InterLayerLoss(model, weight=1.0, p=p)

    rows = min(first_shape[0], second_shape[0])
    columns = min(first_shape[1], second_shape[1])
    difference = (second[:rows, :columns] - first[:rows, :columns]).astype(np.float32)
    expected = np.mean(np.abs(difference) ** p)
    value = loss()
    assert value.item() == pytest.approx(expected, rel=1e-5)

    value.backward()
    for weight in (model.conv1.weight, model.conv2.weight):
        outside = weight.grad.clone()
        outside[:rows, :columns] = 0
        assert torch.count_nonzero(outside) == 0
        assert torch.count_nonzero(weight.grad[:rows, :columns]) > 0


# ---------------------------------------------------------------- gradient


@pytest.mark.parametrize("p", [1, 2])
def test_optimizer_step_reduces_collocated_distance(p):
    torch.manual_seed(0)
    model = TwoConvs((8, 4, 3, 3), (8, 8, 3, 3))
    loss = InterLayerLoss(model, weight=1.0, p=p)
    before = loss().item()

    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    optimizer.zero_grad()
    loss().backward()
    optimizer.step()

    after = loss().item()
    assert after < before
    assert model.conv2.weight.grad[:, 4:].abs().sum() == 0


def test_loss_follows_live_weights():
    model = hand_built_model()
    loss = InterLayerLoss(model, weight=1.0, p=1)
    with torch.no_grad():
        model.conv2.weight[:, :1] = model.conv1.weight
    assert loss().item() == 0.0


# ---------------------------------------------------------------- pairs and options


def test_loss_owns_no_parameters():
    loss = InterLayerLoss(hand_built_model())
    assert list(loss.parameters()) == []
    assert loss.state_dict() == {}


def test_pairs_skip_linear_by_default():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Conv2d(4, 4, 3), nn.Flatten(),
                          nn.Linear(4, 4), nn.Linear(4, 2))
    assert InterLayerLoss(model).pairs == [("1.weight", "0.weight")]
    assert InterLayerLoss(model, include_linear=True).pairs == [
        ("1.weight", "0.weight"), ("4.weight", "3.weight")]


def test_pairs_follow_natural_order():
    model = nn.Sequential(*[nn.Conv2d(2, 2, 3) for _ in range(12)])
    pairs = InterLayerLoss(model).pairs
    assert pairs[8:] == [("9.weight", "8.weight"), ("10.weight", "9.weight"),
                         ("11.weight", "10.weight")]


def test_pairs_keep_separate_kernel_shapes():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Conv2d(4, 6, 1), nn.Conv2d(6, 6, 3),
                          nn.Conv2d(6, 8, 1))
    assert InterLayerLoss(model).pairs == [("2.weight", "0.weight"), ("3.weight", "1.weight")]


def test_pairs_skip_tied_weight():
    model = nn.Sequential(nn.Conv2d(2, 2, 3), nn.Conv2d(2, 2, 3), nn.Conv2d(2, 2, 3))
    model[1].weight = model[0].weight
    # 1.weight is the same tensor as 0.weight, which the encoder stores as an alias.
    assert InterLayerLoss(model).pairs == [("2.weight", "0.weight")]


def test_pairs_skip_keep_pattern():
    model = nn.Sequential(nn.Conv2d(2, 2, 3), nn.Conv2d(2, 2, 3), nn.Conv2d(2, 2, 3))
    assert InterLayerLoss(model, keep=["1.*"]).pairs == [("2.weight", "0.weight")]


def test_collocated_pairs_ignores_non_tensors():
    tensors = {"a.weight": torch.ones(2, 2, 3), "extra": "not a tensor",
               "b.weight": torch.zeros(2, 2, 3), "c": torch.zeros(2, 2, 3, dtype=torch.complex64)}
    assert collocated_pairs(tensors) == [("b.weight", "a.weight")]


def test_no_pairs_returns_zero_and_warns(caplog):
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2, 2))
    with caplog.at_level(logging.WARNING, logger="wcodec.train"):
        loss = InterLayerLoss(model)
    assert loss.pairs == []
    assert loss().item() == 0.0
    assert "no pair" in caplog.text


@pytest.mark.parametrize("weight", [-1.0, float("nan"), float("inf")])
def test_invalid_weight_raises(weight):
    with pytest.raises(ValueError, match="weight"):
        InterLayerLoss(hand_built_model(), weight=weight)


@pytest.mark.parametrize("p", [0, 3, 1.5, True])
def test_invalid_exponent_raises(p):
    with pytest.raises(ValueError, match="p must be 1 or 2"):
        InterLayerLoss(hand_built_model(), p=p)


# ---------------------------------------------------------------- agreement with the encoder


class MixedNet(nn.Module):
    """Convolutions of two kernel shapes, batch norms, linear layers and 12 numbered blocks,
    so that natural and alphabetical name orders differ."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3)
        self.stem_bn = nn.BatchNorm2d(8)
        self.blocks = nn.Sequential(*[
            nn.Conv2d(8, 8, 3 if index % 3 else 1, padding="same") for index in range(12)])
        self.project = nn.Conv2d(8, 16, 1)
        self.head = nn.Sequential(nn.Linear(16, 12), nn.Linear(12, 10))


def encoder_references(path):
    """Return [(name, reference name)] of the collocated frames of a .wbs file, in coding order."""
    with open_wbs(path) as wbs:
        records = wbs.header.tensors
        pairs = []
        for index in wbs.header.coding_order():
            record = records[index]
            if record.frame_mode == FRAME_COLLOCATED:
                assert len(record.refs) == 1
                pairs.append((record.name, records[record.refs[0]].name))
        return pairs


def encode_state_dict(model, tmp_path, **options):
    source = tmp_path / "model.safetensors"
    coded = tmp_path / "model.wbs"
    save_file({name: tensor.clone() for name, tensor in model.state_dict().items()}, str(source))
    wcodec.encode_file(source, coded, mode="collocated", **options)
    return coded


def test_pairs_match_encoder_references(tmp_path):
    torch.manual_seed(0)
    model = MixedNet()
    references = encoder_references(encode_state_dict(model, tmp_path))

    assert len(references) == 8 + 4 + 1  # 3x3, 1x1 and linear chains
    assert InterLayerLoss(model, include_linear=True).pairs == references
    assert InterLayerLoss(model).pairs == [pair for pair in references
                                           if model.state_dict()[pair[0]].ndim >= 3]


def test_pairs_match_encoder_with_tied_and_kept_weights(tmp_path):
    torch.manual_seed(0)
    model = MixedNet()
    model.blocks[4].weight = model.blocks[1].weight
    keep = ("blocks.7.*",)
    references = encoder_references(encode_state_dict(model, tmp_path, keep=keep))

    names = {name for pair in references for name in pair}
    assert "blocks.4.weight" not in names
    assert "blocks.7.weight" not in names
    assert InterLayerLoss(model, include_linear=True, keep=keep).pairs == references

"""Tests for wcodec.codec.ordering: natural sort keys, frame tests and the three frame orders."""

import math
import random

import numpy as np
import pytest
from common import ONET
from hypothesis import given
from hypothesis import strategies as st

from wcodec.codec.ordering import (
    DEFAULT_ORDER,
    ORDER_METHODS,
    collocated_residual_energy,
    is_frame,
    kernel_shape,
    natural_key,
    order_tensors,
)
from wcodec.errors import InputError
from wcodec.formats.dtypes import DTYPES
from wcodec.formats.safetensors_io import SafetensorsReader, TensorInfo

# ---------------------------------------------------------------- natural_key


def test_natural_key_orders_numbers_by_value():
    names = [f"layer.{n}" for n in range(1, 13)]
    alphabetical = sorted(names)
    assert alphabetical[:3] == ["layer.1", "layer.10", "layer.11"]
    assert sorted(alphabetical, key=natural_key) == names


def test_natural_key_several_digit_runs():
    names = ["block2.conv10.weight", "block10.conv1.weight", "block2.conv9.weight", "block2.conv9.bias"]
    assert sorted(names, key=natural_key) == [
        "block2.conv9.bias",
        "block2.conv9.weight",
        "block2.conv10.weight",
        "block10.conv1.weight",
    ]


def test_natural_key_leading_zeros_distinct():
    names = ["a.001", "a.1", "a.01", "a.2", "a.0", "a.00"]
    ordered = sorted(names, key=natural_key)
    assert ordered == ["a.0", "a.00", "a.1", "a.01", "a.001", "a.2"]
    assert len({natural_key(name) for name in names}) == len(names)


def test_natural_key_edge_cases():
    assert natural_key("") == ()
    assert natural_key("") < natural_key("0") < natural_key("a")
    assert natural_key("a") < natural_key("a.1")
    # Digits sort before text at the same position, as in ASCII.
    assert natural_key("a1") < natural_key("aa")


def test_natural_key_huge_numbers():
    # int() rejects strings of more than 4300 digits by default; the key must not call it.
    small = "w" + "9" * 5000
    large = "w1" + "0" * 5000
    assert natural_key(small) < natural_key(large)


def test_natural_key_unicode_digits_are_text():
    # Arabic-Indic three and a superscript two are digits to str.isdigit but stay text here.
    names = ["x\u0663", "x3", "x\u00b2", "\u00e9t\u00e910", "\u00e9t\u00e99"]
    ordered = sorted(names, key=natural_key)
    assert ordered.index("\u00e9t\u00e99") < ordered.index("\u00e9t\u00e910")
    assert ordered.index("x3") < ordered.index("x\u00b2")
    assert ordered.index("x3") < ordered.index("x\u0663")


@given(st.lists(st.text(), max_size=12))
def test_natural_key_total_order(names):
    keys = [natural_key(name) for name in names]
    for name, key in zip(names, keys):
        for other, other_key in zip(names, keys):
            assert (key == other_key) == (name == other)
            # Exactly one of <, == and > holds.
            assert (key < other_key) + (key == other_key) + (key > other_key) == 1
    ordered = sorted(names, key=natural_key)
    assert sorted(reversed(names), key=natural_key) == ordered


@given(st.lists(st.from_regex(r"[a-c.]{0,3}[0-9]{0,3}[a-c.]{0,2}[0-9]{0,2}", fullmatch=True), max_size=10))
def test_natural_key_transitive(names):
    ordered = sorted(names, key=natural_key)
    for first, second in zip(ordered, ordered[1:]):
        assert natural_key(first) <= natural_key(second)
    for i, first in enumerate(ordered):
        for second in ordered[i:]:
            assert natural_key(first) <= natural_key(second)


# ---------------------------------------------------------------- is_frame and kernel_shape


@pytest.mark.parametrize("dtype", [dtype.name for dtype in DTYPES])
def test_is_frame_by_dtype(dtype):
    expected = dtype in ("F16", "BF16", "F32", "F64", "F8_E4M3", "F8_E5M2")
    assert is_frame(TensorInfo("w", dtype, (4, 3, 3, 3))) == expected


@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        ((), False),
        ((7,), False),
        ((4, 3), True),
        ((4, 3, 5), True),
        ((4, 3, 3, 3), True),
        ((1, 1, 1, 1, 1), True),
        ((0, 3), False),
        ((4, 0, 3, 3), False),
        ((4, 3, 3, 0), False),
    ],
)
def test_is_frame_by_shape(shape, expected):
    assert is_frame(TensorInfo("w", "F32", shape)) == expected


def test_is_frame_unknown_dtype():
    with pytest.raises(InputError, match="F4"):
        is_frame(TensorInfo("w", "F4", (4, 3)))


def test_kernel_shape():
    assert kernel_shape((64, 32, 3, 3)) == (3, 3)
    assert kernel_shape((64, 32, 5)) == (5,)
    assert kernel_shape((256, 1152)) == ()
    assert kernel_shape([8, 4, 1, 1]) == (1, 1)


# ---------------------------------------------------------------- collocated_residual_energy


def test_collocated_energy_same_shape():
    rng = np.random.default_rng(0)
    cur = rng.normal(size=(6, 5, 3, 3))
    ref = cur + 0.1 * rng.normal(size=cur.shape)
    expected = np.sum((cur - ref) ** 2) / np.sum(cur**2)
    assert collocated_residual_energy(cur, ref) == pytest.approx(expected, rel=1e-12)


def test_collocated_energy_overlap_only():
    rng = np.random.default_rng(1)
    cur = rng.normal(size=(6, 4, 2, 2))
    ref = rng.normal(size=(3, 7, 2, 2))
    overlap_cur = cur[:3, :4]
    overlap_ref = ref[:3, :4]
    expected = np.sum((overlap_cur - overlap_ref) ** 2) / np.sum(overlap_cur**2)
    assert collocated_residual_energy(cur, ref) == pytest.approx(expected, rel=1e-12)


def test_collocated_energy_two_dimensional():
    cur = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    ref = np.array([[1.0, 2.0], [4.0, 4.0], [9.0, 9.0]])
    # Overlap is the 2 x 2 top-left corner; only 5 versus 4 differs.
    assert collocated_residual_energy(cur, ref) == pytest.approx(1.0 / (1 + 4 + 16 + 25))


def test_collocated_energy_perfect_and_zero_prediction():
    cur = np.arange(1.0, 13.0).reshape(3, 4)
    assert collocated_residual_energy(cur, cur.copy()) == 0.0
    assert collocated_residual_energy(cur, np.zeros_like(cur)) == 1.0
    assert collocated_residual_energy(cur, -cur) == 4.0


def test_collocated_energy_zero_conventions():
    zero = np.zeros((3, 3, 2))
    other = np.ones((3, 3, 2))
    assert collocated_residual_energy(zero, zero) == 0.0
    assert collocated_residual_energy(zero, other) == math.inf
    assert collocated_residual_energy(np.zeros((0, 3)), np.ones((2, 3))) == math.inf


def test_collocated_energy_non_finite():
    cur = np.ones((2, 2))
    cur[0, 0] = np.nan
    assert math.isnan(collocated_residual_energy(cur, np.ones((2, 2))))


def test_collocated_energy_rejects_bad_shapes():
    with pytest.raises(ValueError, match="kernel shapes"):
        collocated_residual_energy(np.ones((2, 2, 3, 3)), np.ones((2, 2, 1, 1)))
    with pytest.raises(ValueError, match="kernel shapes"):
        collocated_residual_energy(np.ones((2, 2, 3)), np.ones((2, 2)))
    with pytest.raises(ValueError, match="two dimensions"):
        collocated_residual_energy(np.ones(4), np.ones((2, 2)))


# ---------------------------------------------------------------- order_tensors: file and natural


def test_order_file_and_natural_onet():
    with SafetensorsReader(ONET) as reader:
        infos = reader.tensors
    names = [info.name for info in infos]

    assert order_tensors(infos, "file") == list(range(len(infos)))
    natural = [names[index] for index in order_tensors(infos, "natural")]
    assert natural == [
        "conv1.bias", "conv1.weight", "conv2.bias", "conv2.weight", "conv3.bias", "conv3.weight",
        "conv4.bias", "conv4.weight", "dense5.bias", "dense5.weight", "dense6_1.bias", "dense6_1.weight",
        "dense6_2.bias", "dense6_2.weight", "dense6_3.bias", "dense6_3.weight",
        "prelu1.weight", "prelu2.weight", "prelu3.weight", "prelu4.weight", "prelu5.weight",
    ]  # fmt: skip


def test_order_natural_synthetic_layers():
    names = sorted(f"layer.{n}.weight" for n in range(1, 13))
    infos = [TensorInfo(name, "F32", (4, 4, 3, 3)) for name in names]
    order = order_tensors(infos, "natural")
    assert [infos[index].name for index in order] == [f"layer.{n}.weight" for n in range(1, 13)]
    assert order_tensors(infos, "file") == list(range(12))
    assert order_tensors(infos) == order
    assert DEFAULT_ORDER == "natural"


def test_order_natural_is_stable_and_takes_no_load():
    infos = [TensorInfo("b", "F32", (2, 2)), TensorInfo("a", "I64", (3,)), TensorInfo("a.1", "F32", (2,))]

    def load(index):
        raise AssertionError("natural order must not read tensor values")

    assert order_tensors(infos, "natural", load) == [1, 2, 0]


def test_order_empty():
    for method in ORDER_METHODS:
        assert order_tensors([], method, load=lambda index: None) == []


def test_order_unknown_method():
    with pytest.raises(ValueError, match="file, natural, greedy") as raised:
        order_tensors([TensorInfo("a", "F32", (2, 2))], "depth")
    assert "'depth'" in str(raised.value)


def test_order_greedy_needs_load():
    with pytest.raises(ValueError, match="load"):
        order_tensors([TensorInfo("a", "F32", (2, 2))], "greedy")


# ---------------------------------------------------------------- order_tensors: greedy


def _random_walk_chain(length, shape, seed, step=0.1):
    """Return `length` frames where each one is the previous plus noise of relative size `step`."""
    rng = np.random.default_rng(seed)
    frames = [rng.normal(size=shape)]
    for _ in range(length - 1):
        frames.append(frames[-1] + step * rng.normal(size=shape))
    return frames


def _model(entries):
    """Return (infos, values) from (name, dtype, array) entries, in the given order."""
    infos = [TensorInfo(name, dtype, tuple(array.shape)) for name, dtype, array in entries]
    values = [np.asarray(array, dtype=np.float64) for _, _, array in entries]
    return infos, values


def test_order_greedy_recovers_scrambled_chain():
    chain = _random_walk_chain(8, (16, 8, 3, 3), seed=2)
    # Chain position k gets the name layer.<labels[k]>; layer.0 starts the chain so greedy
    # begins there, and the other labels are scrambled.
    labels = [0, 5, 2, 7, 1, 6, 3, 4]
    entries = [(f"layer.{label}.weight", "F32", frame) for label, frame in zip(labels, chain)]
    random.Random(3).shuffle(entries)
    infos, values = _model(entries)

    natural_names = [infos[index].name for index in order_tensors(infos, "natural")]
    assert natural_names == [f"layer.{n}.weight" for n in range(8)]

    greedy_names = [infos[index].name for index in order_tensors(infos, "greedy", values.__getitem__)]
    assert greedy_names == [f"layer.{label}.weight" for label in labels]


def test_order_greedy_keeps_kernel_shapes_apart():
    rng = np.random.default_rng(4)
    entries = [
        ("a.1.weight", "F32", rng.normal(size=(8, 4, 3, 3))),
        ("a.2.weight", "F32", rng.normal(size=(8, 4, 1, 1))),
        ("a.3.weight", "F32", rng.normal(size=(8, 4, 3, 3))),
        ("a.4.weight", "F16", rng.normal(size=(8, 4, 1, 1))),
        ("a.5.weight", "F32", rng.normal(size=(8, 4))),
        ("a.6.weight", "F32", rng.normal(size=(8, 4, 3, 3))),
        ("a.7.weight", "F32", rng.normal(size=(8, 4, 3))),
    ]
    infos, values = _model(entries)
    compared = []

    def load(index):
        compared.append(index)
        return values[index]

    order = order_tensors(infos, "greedy", load)
    shapes = [kernel_shape(infos[index].shape) for index in order]
    # Each kernel shape forms one contiguous run, in the natural order of its first frame.
    runs = [shape for i, shape in enumerate(shapes) if i == 0 or shape != shapes[i - 1]]
    assert runs == [(3, 3), (1, 1), (), (3,)]
    assert order[0] == 0
    assert sorted(order) == list(range(len(infos)))
    # Frames with a kernel shape of their own are never read.
    assert 4 not in compared
    assert 6 not in compared
    assert len(compared) == len(set(compared))


def test_order_greedy_picks_lowest_energy():
    base = np.arange(1.0, 25.0).reshape(4, 6)
    entries = [
        ("m.1", "F32", base),
        ("m.2", "F32", base + 3.0),
        ("m.3", "F32", base + 0.01),
        ("m.4", "F32", base + 1.0),
    ]
    infos, values = _model(entries)
    order = order_tensors(infos, "greedy", values.__getitem__)
    # m.1 -> m.3 (closest), then from m.3: m.4 is closer than m.2, then m.2.
    assert order == [0, 2, 3, 1]


def test_order_greedy_non_frames_last():
    rng = np.random.default_rng(5)
    entries = [
        ("z.bias", "F32", rng.normal(size=(4,))),
        ("b.weight", "F32", rng.normal(size=(4, 3))),
        ("step", "I64", np.array([7])),
        ("a.weight", "F32", rng.normal(size=(4, 3))),
        ("empty", "F32", np.zeros((0, 3))),
        ("a.bias", "F32", rng.normal(size=(4,))),
        ("table", "I32", np.zeros((4, 3))),
    ]
    infos, values = _model(entries)
    order = order_tensors(infos, "greedy", values.__getitem__)
    names = [infos[index].name for index in order]
    assert names[:2] == ["a.weight", "b.weight"]
    assert names[2:] == ["a.bias", "empty", "step", "table", "z.bias"]


def test_order_greedy_ties_follow_natural_order():
    frame = np.ones((3, 3, 2, 2))
    entries = [(f"w.{n}", "F32", frame.copy()) for n in (4, 1, 3, 2)]
    infos, values = _model(entries)
    order = order_tensors(infos, "greedy", values.__getitem__)
    assert [infos[index].name for index in order] == ["w.1", "w.2", "w.3", "w.4"]


def test_order_greedy_nan_frame_keeps_natural_place():
    rng = np.random.default_rng(6)
    broken = rng.normal(size=(3, 3))
    broken[1, 1] = np.nan
    good = rng.normal(size=(3, 3))
    entries = [("w.1", "F32", good), ("w.2", "F32", broken), ("w.3", "F32", good + 0.01)]
    infos, values = _model(entries)
    assert order_tensors(infos, "greedy", values.__getitem__) == [0, 2, 1]


def test_order_greedy_deterministic():
    chain = _random_walk_chain(6, (8, 8, 3, 3), seed=7, step=0.5)
    side = _random_walk_chain(3, (8, 8), seed=8, step=0.5)
    entries = [(f"c.{n}", "F32", frame) for n, frame in zip([3, 0, 5, 1, 4, 2], chain)]
    entries += [(f"d.{n}", "F32", frame) for n, frame in zip([2, 0, 1], side)]
    infos, values = _model(entries)
    first = order_tensors(infos, "greedy", values.__getitem__)
    for _ in range(3):
        assert order_tensors(infos, "greedy", values.__getitem__) == first
    # Loading copies changes nothing either.
    assert order_tensors(infos, "greedy", lambda index: values[index].copy()) == first


def test_order_greedy_on_onet():
    with SafetensorsReader(ONET) as reader:
        infos = reader.tensors

        def load(index):
            return reader.read(infos[index].name).double().numpy()

        order = order_tensors(infos, "greedy", load)
    names = [infos[index].name for index in order]
    assert sorted(order) == list(range(len(infos)))
    frames = [name for name in names if name.endswith("weight") and not name.startswith("prelu")]
    assert names[: len(frames)] == frames
    # conv1 starts; conv2 and conv3 are the only other 3x3 frames.
    assert names[0] == "conv1.weight"
    assert set(names[1:3]) == {"conv2.weight", "conv3.weight"}

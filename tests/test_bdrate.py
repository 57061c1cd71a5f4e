"""Tests of the Bjontegaard delta rate in bench/bdrate.py."""

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest

# Loaded from its file, because putting bench/ on sys.path would let bench/common.py
# shadow tests/common.py for the other test modules.
_BDRATE_PATH = Path(__file__).resolve().parent.parent / "bench" / "bdrate.py"
_spec = importlib.util.spec_from_file_location("bdrate", _BDRATE_PATH)
bdrate = importlib.util.module_from_spec(_spec)
sys.modules["bdrate"] = bdrate  # dataclasses look their module up by name
_spec.loader.exec_module(bdrate)

bd_rate = bdrate.bd_rate
prepare_curve = bdrate.prepare_curve
rate_at_quality = bdrate.rate_at_quality

# An RD curve shaped like measured ones, (bits per weight, SQNR dB). Its log rate is not
# linear in quality, so no fit reproduces it exactly.
CURVE = [(1.1, 12.4), (1.6, 17.0), (2.3, 21.9), (3.1, 26.5), (4.0, 31.2), (5.2, 36.0)]

# log(rate) exactly linear in quality, so every model of it is exact.
SLOPE = math.log(2) / 6.0  # the rate doubles every 6 dB
LINEAR = [(math.exp(SLOPE * q), q) for q in (10.0, 15.0, 20.0, 25.0, 30.0)]


def scaled(points, factor):
    return [(rate * factor, quality) for rate, quality in points]


def shifted(points, decibels):
    return [(rate, quality + decibels) for rate, quality in points]


@pytest.mark.parametrize("method", ["polyfit", "pchip"])
def test_identical_curves_give_zero(method):
    result = bd_rate(CURVE, CURVE, method)
    assert result.percent == pytest.approx(0.0, abs=1e-12)
    assert result.quality_low == 12.4
    assert result.quality_high == 36.0


@pytest.mark.parametrize("method", ["polyfit", "pchip"])
def test_rates_scaled_by_0_9_give_minus_10(method):
    result = bd_rate(CURVE, scaled(CURVE, 0.9), method)
    assert result.percent == pytest.approx(-10.0, abs=1e-9)


@pytest.mark.parametrize("method", ["polyfit", "pchip"])
def test_rates_scaled_by_1_25_give_plus_25(method):
    result = bd_rate(CURVE, scaled(CURVE, 1.25), method)
    assert result.percent == pytest.approx(25.0, abs=1e-9)


@pytest.mark.parametrize("method", ["polyfit", "pchip"])
def test_quality_shift_on_linear_curve(method):
    # The test curve reaches each quality 2 dB higher at the same rate, so at equal
    # quality it needs exp(-2 * SLOPE) times the rate of the reference.
    result = bd_rate(LINEAR, shifted(LINEAR, 2.0), method)
    assert result.percent == pytest.approx(100 * math.expm1(-2.0 * SLOPE), abs=1e-9)
    assert result.quality_low == 12.0
    assert result.quality_high == 30.0


@pytest.mark.parametrize("method", ["polyfit", "pchip"])
def test_quality_shift_down_costs_rate(method):
    result = bd_rate(LINEAR, shifted(LINEAR, -3.0), method)
    assert result.percent == pytest.approx(100 * math.expm1(3.0 * SLOPE), abs=1e-9)
    assert result.percent > 0


@pytest.mark.parametrize("method", ["polyfit", "pchip"])
def test_swapped_curves_invert_ratio(method):
    forward = bd_rate(CURVE, shifted(scaled(CURVE, 0.8), 1.5), method)
    backward = bd_rate(shifted(scaled(CURVE, 0.8), 1.5), CURVE, method)
    product = (1 + forward.percent / 100) * (1 + backward.percent / 100)
    assert product == pytest.approx(1.0, abs=1e-12)


def test_unsorted_points_match_sorted():
    shuffled = [CURVE[i] for i in (3, 0, 5, 1, 4, 2)]
    for method in ("polyfit", "pchip"):
        expected = bd_rate(CURVE, scaled(CURVE, 0.7), method).percent
        assert bd_rate(shuffled, scaled(shuffled, 0.7), method).percent == pytest.approx(expected)


@pytest.mark.parametrize("method", ["polyfit", "pchip"])
def test_no_overlap_gives_none(method):
    low = [(1.0, 10.0), (2.0, 15.0), (3.0, 20.0)]
    high = [(4.0, 25.0), (5.0, 30.0), (6.0, 35.0)]
    result = bd_rate(low, high, method)
    assert result.percent is None
    assert "no overlap" in result.reason
    assert "[10.000, 20.000]" in result.reason
    assert "[25.000, 35.000]" in result.reason


def test_touching_ranges_give_none():
    result = bd_rate([(1.0, 10.0), (2.0, 20.0)], [(3.0, 20.0), (4.0, 30.0)])
    assert result.percent is None
    assert "no overlap" in result.reason


def test_single_point_gives_none():
    result = bd_rate(CURVE, [(2.0, 20.0)])
    assert result.percent is None
    assert "test curve has 1 distinct quality" in result.reason


def test_few_points_lower_degree_noted():
    # Three points of a linear curve: a quadratic fits them exactly.
    three = LINEAR[:3]
    result = bd_rate(three, scaled(three, 0.5))
    assert result.percent == pytest.approx(-50.0, abs=1e-9)
    assert any("degree-2 polynomial" in note for note in result.notes)


def test_four_points_use_cubic_without_note():
    result = bd_rate(LINEAR[:4], LINEAR[:4])
    assert not any("polynomial" in note for note in result.notes)


def test_infinite_quality_point_dropped():
    lossless = CURVE + [(32.0, math.inf)]
    result = bd_rate(CURVE, lossless)
    assert result.percent == pytest.approx(0.0, abs=1e-12)
    assert any("dropped" in note for note in result.notes)


@pytest.mark.parametrize("point", [(0.0, 10.0), (-1.0, 10.0), (math.nan, 10.0), (1.0, math.nan)])
def test_invalid_point_raises(point):
    with pytest.raises(ValueError):
        bd_rate(CURVE, CURVE + [point])


def test_unknown_method_raises():
    with pytest.raises(ValueError, match="unknown BD-rate method"):
        bd_rate(CURVE, CURVE, "akima")


def test_partial_overlap_uses_common_interval():
    # The test curve covers only the upper part of the reference's quality range.
    upper = [(rate * 0.9, quality) for rate, quality in CURVE[2:]]
    result = bd_rate(CURVE, upper, "pchip")
    assert result.quality_low == 21.9
    assert result.quality_high == 36.0
    assert result.percent < 0


def test_pchip_equal_qualities_merged():
    doubled = CURVE + [(CURVE[2][0] * 1.1, CURVE[2][1])]
    result = bd_rate(CURVE, doubled, "pchip")
    assert result.percent > 0
    assert any("merged" in note for note in result.notes)


def test_pchip_matches_scipy():
    interpolate = pytest.importorskip("scipy.interpolate")
    # The test curve covers [14, 33] dB, so the reference is integrated over part of its
    # first and last segments.
    other = [(1.5, 14.0), (2.0, 19.5), (2.4, 24.0), (3.3, 29.0), (3.9, 33.0)]
    reference = interpolate.PchipInterpolator(*_quality_and_log_rate(CURVE))
    test = interpolate.PchipInterpolator(*_quality_and_log_rate(other))
    mean = (test.integrate(14.0, 33.0) - reference.integrate(14.0, 33.0)) / (33.0 - 14.0)

    result = bd_rate(CURVE, other, "pchip")
    assert result.percent == pytest.approx(100 * math.expm1(mean), abs=1e-9)
    targets = np.linspace(12.4, 36.0, 25)
    assert rate_at_quality(CURVE, targets, "pchip") == pytest.approx(
        np.exp(reference(targets)), rel=1e-12)


def _quality_and_log_rate(points):
    curve = prepare_curve(points)
    return curve.quality, curve.log_rate


def test_rate_at_quality_outside_range_is_nan():
    rates = rate_at_quality(CURVE, [5.0, 20.0, 40.0])
    assert math.isnan(rates[0])
    assert math.isnan(rates[2])
    assert 1.6 < rates[1] < 2.3


def test_rate_at_quality_polyfit_exact_on_linear():
    rates = rate_at_quality(LINEAR, [12.0, 27.5], "polyfit")
    assert rates == pytest.approx([math.exp(SLOPE * 12.0), math.exp(SLOPE * 27.5)], rel=1e-12)

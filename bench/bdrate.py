"""Bjontegaard delta rate (BD-rate) between two rate-distortion curves.

A curve is a sequence of (rate, quality dB) points, for example (bits per weight, SQNR dB).
For each curve, log(rate) is modelled as a function of quality. The BD-rate is the mean of
the difference of the two models over the quality interval both curves cover, turned back
into a rate ratio:

    BD-rate % = 100 * (exp(mean over [low, high] of (log R_test(q) - log R_ref(q))) - 1)

so -10 means that the test curve needs 10% fewer bits than the reference at equal quality.

Two models of log(rate) are provided:

- ``"polyfit"`` (the reference, as in Bjontegaard's original method): a least-squares cubic
  polynomial (``numpy.polyfit``). A curve of fewer than 4 points with distinct qualities gets
  the highest degree its points allow (n - 1), and a note in the result records it.
- ``"pchip"``: piecewise cubic Hermite interpolation with Fritsch-Carlson slopes (the
  shape-preserving interpolant of ``scipy.interpolate.PchipInterpolator``, computed here with
  numpy only). It passes through every point and does not overshoot between them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

METHODS = ("polyfit", "pchip")
MAX_POLY_DEGREE = 3


@dataclass(frozen=True)
class BdRate:
    """Result of a BD-rate computation.

    ``percent`` is None when no BD-rate exists, and ``reason`` then gives the cause.
    ``quality_low`` and ``quality_high`` bound the interval of integration (dB) when the
    curves overlap. ``notes`` lists the adjustments made to the input, such as a reduced
    polynomial degree or dropped points.
    """

    percent: float | None
    reason: str = ""
    quality_low: float | None = None
    quality_high: float | None = None
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Curve:
    """Points of one RD curve sorted by quality: ``quality`` dB and natural ``log_rate``."""

    quality: np.ndarray
    log_rate: np.ndarray
    notes: tuple[str, ...]


def prepare_curve(points, label="curve"):
    """Validate (rate, quality) points and return them as a Curve sorted by quality.

    Points with infinite quality (a lossless point has SQNR +inf) are dropped with a note.
    Raises ValueError for a point that is not a pair, a rate that is not finite and
    positive, or a NaN quality.
    """
    notes = []
    rates = []
    qualities = []
    for point in points:
        try:
            rate, quality = point
        except (TypeError, ValueError):
            raise ValueError(f"{label}: point {point!r} is not a (rate, quality) pair") from None
        rate = float(rate)
        quality = float(quality)
        if not (math.isfinite(rate) and rate > 0):
            raise ValueError(f"{label}: rate {rate!r} must be finite and positive")
        if math.isnan(quality):
            raise ValueError(f"{label}: quality of the point at rate {rate!r} is NaN")
        if math.isinf(quality):
            notes.append(f"{label}: dropped the point at rate {rate:g} with quality {quality}")
            continue
        rates.append(rate)
        qualities.append(quality)

    order = np.argsort(qualities, kind="stable")
    quality = np.asarray(qualities, dtype=np.float64)[order]
    log_rate = np.log(np.asarray(rates, dtype=np.float64))[order]
    return Curve(quality, log_rate, tuple(notes))


def bd_rate(reference, test, method="polyfit"):
    """Compute the BD-rate of ``test`` against ``reference``; return a BdRate.

    Both curves are sequences of (rate, quality dB) points in any order. ``method`` is
    ``"polyfit"`` (cubic least-squares fit, the reference) or ``"pchip"``.
    Raises ValueError for an unknown method or invalid points (see ``prepare_curve``).
    """
    if method not in METHODS:
        raise ValueError(f"unknown BD-rate method {method!r}; valid methods are "
                         f"{', '.join(METHODS)}")
    curves = (prepare_curve(reference, "reference"), prepare_curve(test, "test"))
    notes = [note for curve in curves for note in curve.notes]

    for label, curve in zip(("reference", "test"), curves):
        distinct = np.unique(curve.quality).size
        if distinct < 2:
            return BdRate(None, f"{label} curve has {distinct} distinct quality value(s); "
                                f"a BD-rate needs at least 2", notes=tuple(notes))

    low = max(curve.quality[0] for curve in curves)
    high = min(curve.quality[-1] for curve in curves)
    if high <= low:
        ref, tst = curves
        return BdRate(None, f"no overlap in quality: reference covers "
                            f"[{ref.quality[0]:.3f}, {ref.quality[-1]:.3f}] dB, test covers "
                            f"[{tst.quality[0]:.3f}, {tst.quality[-1]:.3f}] dB",
                      notes=tuple(notes))

    integrals = []
    for label, curve in zip(("reference", "test"), curves):
        if method == "polyfit":
            integral, note = _integrate_polyfit(curve, low, high, label)
        else:
            integral, note = _integrate_pchip(curve, low, high, label)
        if note:
            notes.append(note)
        integrals.append(integral)

    mean_log_difference = (integrals[1] - integrals[0]) / (high - low)
    percent = 100.0 * math.expm1(mean_log_difference)
    return BdRate(percent, quality_low=float(low), quality_high=float(high), notes=tuple(notes))


def rate_at_quality(points, qualities, method="pchip"):
    """Return the modelled rate of a curve at each of ``qualities``.

    Qualities outside the curve's measured range give NaN, because the models are not
    meant for extrapolation. Raises ValueError as ``bd_rate`` does, and when the curve
    has fewer than 2 distinct qualities.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid methods are {', '.join(METHODS)}")
    curve = prepare_curve(points)
    if np.unique(curve.quality).size < 2:
        raise ValueError("the curve needs at least 2 distinct quality values")
    targets = np.asarray(qualities, dtype=np.float64)
    if method == "polyfit":
        center, coefficients = _fit_polynomial(curve)
        values = np.polyval(coefficients, targets - center)
    else:
        knots, log_rates, _ = _merge_equal_qualities(curve)
        values = _pchip_evaluate(knots, log_rates, _pchip_slopes(knots, log_rates), targets)
    inside = (targets >= curve.quality[0]) & (targets <= curve.quality[-1])
    return np.where(inside, np.exp(values), np.nan)


def _poly_degree(curve):
    return min(MAX_POLY_DEGREE, np.unique(curve.quality).size - 1)


def _fit_polynomial(curve):
    """Return (center, coefficients) of the fit of log rate against quality - center.

    Centering the qualities (tens of dB) keeps the cubic's Vandermonde matrix well
    conditioned and leaves the fitted function unchanged.
    """
    center = float(curve.quality.mean())
    return center, np.polyfit(curve.quality - center, curve.log_rate, _poly_degree(curve))


def _integrate_polyfit(curve, low, high, label):
    degree = _poly_degree(curve)
    note = ""
    if degree < MAX_POLY_DEGREE:
        note = (f"{label}: {degree + 1} distinct qualities, fitted with a degree-{degree} "
                f"polynomial instead of a cubic")
    center, coefficients = _fit_polynomial(curve)
    antiderivative = np.polyint(coefficients)
    integral = np.polyval(antiderivative, high - center) - np.polyval(antiderivative, low - center)
    return float(integral), note


def _merge_equal_qualities(curve):
    """Return strictly increasing knots, replacing points of equal quality by their mean log rate."""
    knots, inverse = np.unique(curve.quality, return_inverse=True)
    if knots.size == curve.quality.size:
        return curve.quality, curve.log_rate, ""
    log_rates = np.bincount(inverse, weights=curve.log_rate) / np.bincount(inverse)
    return knots, log_rates, "points of equal quality were merged into their mean log rate"


def _pchip_slopes(x, y):
    """Return the Fritsch-Carlson derivatives of the monotone cubic interpolant at each knot."""
    h = np.diff(x)
    secants = np.diff(y) / h
    if x.size == 2:
        return np.array([secants[0], secants[0]])

    slopes = np.zeros_like(y)
    # Interior knots: a weighted harmonic mean of the neighbouring secants, or 0 at a
    # local extremum so that the interpolant does not overshoot the data.
    for k in range(1, x.size - 1):
        left, right = secants[k - 1], secants[k]
        if left * right > 0:
            w1 = 2 * h[k] + h[k - 1]
            w2 = h[k] + 2 * h[k - 1]
            slopes[k] = (w1 + w2) / (w1 / left + w2 / right)

    slopes[0] = _pchip_end_slope(h[0], h[1], secants[0], secants[1])
    slopes[-1] = _pchip_end_slope(h[-1], h[-2], secants[-1], secants[-2])
    return slopes


def _pchip_end_slope(h0, h1, m0, m1):
    # A one-sided three-point estimate, limited so that the end segment stays monotone.
    slope = ((2 * h0 + h1) * m0 - h0 * m1) / (h0 + h1)
    if np.sign(slope) != np.sign(m0):
        return 0.0
    if np.sign(m0) != np.sign(m1) and abs(slope) > 3 * abs(m0):
        return 3 * m0
    return slope


def _segment_coefficients(x, y, slopes, k):
    """Return (c0, c1, c2, c3) of segment k as a polynomial in t = q - x[k]."""
    h = x[k + 1] - x[k]
    secant = (y[k + 1] - y[k]) / h
    c2 = (3 * secant - 2 * slopes[k] - slopes[k + 1]) / h
    c3 = (slopes[k] + slopes[k + 1] - 2 * secant) / (h * h)
    return y[k], slopes[k], c2, c3


def _pchip_evaluate(x, y, slopes, targets):
    segments = np.clip(np.searchsorted(x, targets, side="right") - 1, 0, x.size - 2)
    values = np.empty_like(targets)
    for index, (target, k) in enumerate(zip(targets, segments)):
        c0, c1, c2, c3 = _segment_coefficients(x, y, slopes, k)
        t = target - x[k]
        values[index] = c0 + t * (c1 + t * (c2 + t * c3))
    return values


def _integrate_pchip(curve, low, high, label):
    x, y, merge_note = _merge_equal_qualities(curve)
    slopes = _pchip_slopes(x, y)
    integral = 0.0
    for k in range(x.size - 1):
        start = max(low, x[k])
        end = min(high, x[k + 1])
        if end <= start:
            continue
        c0, c1, c2, c3 = _segment_coefficients(x, y, slopes, k)
        a = start - x[k]
        b = end - x[k]
        integral += (c0 * (b - a) + c1 * (b**2 - a**2) / 2 + c2 * (b**3 - a**3) / 3
                     + c3 * (b**4 - a**4) / 4)
    note = f"{label}: {merge_note}" if merge_note else ""
    return float(integral), note

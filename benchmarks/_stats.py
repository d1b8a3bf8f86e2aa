"""Summaries that keep their spread: medians with min/max, and pooled percentiles."""

from __future__ import annotations

import math
from collections.abc import Sequence

import msgspec


class Spread(msgspec.Struct, frozen=True, kw_only=True):
    """The median of repetitions, with their minimum and maximum."""

    median: float
    min: float
    max: float
    n: int


class Percentiles(msgspec.Struct, frozen=True, kw_only=True):
    """Percentiles of a pooled sample (linear interpolation between order statistics)."""

    p50: float
    p90: float
    p99: float
    max: float
    n: int


def quantile(values: Sequence[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low = math.floor(position)
    high = math.ceil(position)
    if low == high:
        return ordered[low]
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def spread(values: Sequence[float]) -> Spread:
    if not values:
        return Spread(median=math.nan, min=math.nan, max=math.nan, n=0)
    return Spread(median=quantile(values, 0.5), min=min(values), max=max(values), n=len(values))


def percentiles(values: Sequence[float]) -> Percentiles:
    return Percentiles(
        p50=quantile(values, 0.5),
        p90=quantile(values, 0.9),
        p99=quantile(values, 0.99),
        max=max(values) if values else math.nan,
        n=len(values),
    )


def scaled(p: Percentiles, factor: float) -> Percentiles:
    """The same percentiles in another unit (e.g. seconds to milliseconds)."""
    return Percentiles(
        p50=p.p50 * factor, p90=p.p90 * factor, p99=p.p99 * factor, max=p.max * factor, n=p.n
    )


def ratio(a: float, b: float) -> float:
    return a / b if b and not math.isnan(a) and not math.isnan(b) else math.nan

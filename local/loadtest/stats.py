"""Latency histograms and counters that merge across clients, tasks and processes.

A `Histogram` keeps log-spaced buckets (about 1% wide) of microsecond values plus the exact
count, sum, min and max, so percentiles up to p99.9 stay accurate at any sample count and a
whole run's worth of samples crosses a process boundary as a small dict.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

# Bucket k holds values v (in microseconds) with round(log(v + 1) / log(GROWTH)) == k.
GROWTH = 1.01
_SCALE = 1 / math.log(GROWTH)
PERCENTILES = (50.0, 90.0, 99.0, 99.9)


class Histogram:
    __slots__ = ("buckets", "count", "max_us", "min_us", "sum_us")

    def __init__(self) -> None:
        self.buckets: dict[int, int] = {}
        self.count = 0
        self.sum_us = 0.0
        self.min_us = math.inf
        self.max_us = 0.0

    def add(self, value_us: float) -> None:
        if value_us < 0:
            value_us = 0.0
        key = int(math.log(value_us + 1.0) * _SCALE + 0.5)
        buckets = self.buckets
        buckets[key] = buckets.get(key, 0) + 1
        self.count += 1
        self.sum_us += value_us
        if value_us > self.max_us:
            self.max_us = value_us
        if value_us < self.min_us:
            self.min_us = value_us

    def merge(self, other: Histogram) -> None:
        for key, n in other.buckets.items():
            self.buckets[key] = self.buckets.get(key, 0) + n
        self.count += other.count
        self.sum_us += other.sum_us
        self.max_us = max(self.max_us, other.max_us)
        self.min_us = min(self.min_us, other.min_us)

    def percentile_us(self, pct: float) -> float:
        """The value at or below which ``pct`` percent of the samples lie (bucket midpoint)."""
        if not self.count:
            return math.nan
        rank = max(1, math.ceil(self.count * pct / 100))
        seen = 0
        for key in sorted(self.buckets):
            seen += self.buckets[key]
            if seen >= rank:
                value = math.exp(key / _SCALE) - 1.0
                return min(max(value, self.min_us), self.max_us)
        return self.max_us

    def summary_ms(self) -> dict[str, float | int | None]:
        """count, mean, min, p50, p90, p99, p99.9 and max in milliseconds (None when empty)."""

        def ms(value_us: float) -> float | None:
            return (
                None if math.isnan(value_us) or math.isinf(value_us) else round(value_us / 1000, 3)
            )

        out: dict[str, float | int | None] = {"count": self.count}
        out["mean"] = ms(self.sum_us / self.count) if self.count else None
        out["min"] = ms(self.min_us) if self.count else None
        for pct in PERCENTILES:
            out[f"p{pct:g}"] = ms(self.percentile_us(pct))
        out["max"] = ms(self.max_us) if self.count else None
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "buckets": {str(k): n for k, n in self.buckets.items()},
            "count": self.count,
            "sum_us": self.sum_us,
            "min_us": None if math.isinf(self.min_us) else self.min_us,
            "max_us": self.max_us,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Histogram:
        hist = cls()
        hist.buckets = {int(k): int(n) for k, n in data["buckets"].items()}
        hist.count = int(data["count"])
        hist.sum_us = float(data["sum_us"])
        hist.min_us = math.inf if data["min_us"] is None else float(data["min_us"])
        hist.max_us = float(data["max_us"])
        return hist


class Timeline:
    """One histogram per whole second since the run's start, for latency-over-time plots."""

    def __init__(self) -> None:
        self.seconds: dict[int, Histogram] = {}

    def at(self, second: int) -> Histogram:
        hist = self.seconds.get(second)
        if hist is None:
            hist = self.seconds[second] = Histogram()
        return hist

    def add(self, second: int, value_us: float) -> None:
        self.at(second).add(value_us)

    def merge(self, other: Timeline) -> None:
        for second, hist in other.seconds.items():
            mine = self.seconds.get(second)
            if mine is None:
                mine = self.seconds[second] = Histogram()
            mine.merge(hist)

    def total(self) -> Histogram:
        hist = Histogram()
        for part in self.seconds.values():
            hist.merge(part)
        return hist

    def to_json(self) -> dict[str, Any]:
        return {str(s): h.to_json() for s, h in self.seconds.items()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Timeline:
        timeline = cls()
        timeline.seconds = {int(s): Histogram.from_json(h) for s, h in data.items()}
        return timeline

    def rows(self) -> list[dict[str, float | int | None]]:
        """Per second: deliveries, p50, p99 and max latency in ms."""
        out: list[dict[str, float | int | None]] = []
        for second in sorted(self.seconds):
            summary = self.seconds[second].summary_ms()
            out.append(
                {
                    "t": second,
                    "count": summary["count"],
                    "p50": summary["p50"],
                    "p99": summary["p99"],
                    "max": summary["max"],
                }
            )
        return out


def merge_counters(into: Counter[str], other: dict[str, int]) -> None:
    for key, n in other.items():
        into[key] += n

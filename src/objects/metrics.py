"""Operator figures on Cloudflare: `rooms.telemetry` counts written to Workers Analytics Engine.

Optional: without the ``METRICS`` dataset binding (wrangler.jsonc, docs/admin.md#metrics-on-
cloudflare) nothing is written. A room's object counts into its own `Telemetry` and writes what
it counted since the last write at the end of an event, at most once every ``METRICS_FLUSH_MS``
(default 1000 ms; and after every alarm): a few data points per room and second at most, not one
per message. What a room counted after its last write is lost with its memory when workerd
evicts it (after it fell silent); ``METRICS_FLUSH_MS=0`` writes after every event and loses
nothing, at the price of a write per event. The front Worker writes one point per request it
refuses.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from objects import ffi
from rooms.telemetry import DataPoint, Telemetry, analytics_points, front_rejection_point

DEFAULT_FLUSH_MS = 1000
MAX_FLUSH_MS = 60_000
# Analytics Engine takes at most this many points per invocation; each flush stays far below.
MAX_POINTS_PER_FLUSH = 25


def dataset_of(env: Any) -> Any | None:
    """The raw ``METRICS`` binding, or None when the deployment has none."""
    binding = getattr(env, "METRICS", None)  # an absent binding is an AttributeError
    return ffi.unwrapped(binding) if binding is not None else None


def write_points(write_data_point: Any, points: list[DataPoint]) -> None:
    """Each point through ``write_data_point``, a dataset's ``writeDataPoint`` (bound once by
    the caller: looking a method up on a JS object is a crossing of its own)."""
    for point in points[:MAX_POINTS_PER_FLUSH]:
        # Not awaited: writeDataPoint returns nothing and never blocks the event.
        write_data_point(ffi.js_object(point))


class AnalyticsSink:
    """One room object's writer: `after_event` is called at the end of each handler."""

    def __init__(self, write_data_point: Any, telemetry: Telemetry, flush_ms: int) -> None:
        self.write_data_point = write_data_point
        self.telemetry = telemetry
        self.flush_s = flush_ms / 1000
        self._flushed_at = time.monotonic()

    def after_event(self, room: str, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._flushed_at < self.flush_s:
            return
        self._flushed_at = now
        write_points(self.write_data_point, analytics_points(room, self.telemetry.drain()))


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    """What ``env`` says about metrics: the dataset and how often to write to it."""

    write_data_point: Any  # the dataset's writeDataPoint, bound once per isolate and env
    flush_ms: int

    def sink(self, telemetry: Telemetry) -> AnalyticsSink:
        return AnalyticsSink(self.write_data_point, telemetry, self.flush_ms)


def metrics_settings(env: Any) -> MetricsSettings | None:
    """None without the binding; a bad METRICS_FLUSH_MS is a ValueError (the object fails
    loudly, like a bad ROOM_LIMITS)."""
    dataset = dataset_of(env)
    if dataset is None:
        return None
    raw = ffi.var_text(getattr(env, "METRICS_FLUSH_MS", None))
    flush_ms = DEFAULT_FLUSH_MS if raw is None else parse_flush_ms(raw)
    return MetricsSettings(dataset.writeDataPoint, flush_ms)


def parse_flush_ms(raw: str) -> int:
    if not (raw.isascii() and raw.isdigit() and int(raw) <= MAX_FLUSH_MS):
        raise ValueError(f"METRICS_FLUSH_MS is invalid: a whole number from 0 to {MAX_FLUSH_MS}")
    return int(raw)


def write_front_rejection(env: Any, code: str) -> None:
    dataset = dataset_of(env)
    if dataset is not None:
        write_points(dataset.writeDataPoint, [front_rejection_point(code)])

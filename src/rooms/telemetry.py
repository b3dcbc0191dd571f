"""Operator counters: what `RoomHost` counts as it runs, for a platform's exporter to read.

One small port for both runtimes. The host only adds to plain ints (a histogram is a bisect and
two adds), so the message path pays almost nothing; what happens to the figures is the
platform's business: the local runtime shares one `Telemetry` across its rooms and formats it
for Prometheus when `/metrics` is scraped (local/roomsd/metrics.py); on Cloudflare each room's
object owns one and writes what it counted to Workers Analytics Engine every second or so
(src/objects/metrics.py). docs/admin.md#metrics names every figure.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Sequence
from typing import TypeVar

from rooms.store import Sql, SqlValue

T = TypeVar("T")

# Seconds. Publish-to-ack is sub-millisecond to a few ms on a healthy room; commits are faster.
LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
COMMIT_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)
# How old the oldest unarchived message is when an archive run starts.
ARCHIVE_LAG_BUCKETS_S = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0)


class Histogram:
    """Counts per bucket (a value lands in the first bucket whose bound is >= it), and a sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)


class Telemetry:
    """Counters since this object was made (the local process, or one Cloudflare object)."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self.connections_opened = 0
        self.connections_closed: dict[int, int] = {}  # by close code
        self.rooms_woken = 0
        self.messages_published = 0
        self.deliveries = 0  # frames handed to sockets: broadcasts, acks, welcomes, errors
        self.bytes_in = 0  # UTF-8 bytes of the frames rooms received
        self.bytes_out = 0  # UTF-8 bytes of the frames handed to sockets
        self.rejections: dict[str, int] = {}  # by error code, frames and upgrades alike
        self.slow_consumer_cuts = 0
        self.archive_runs = 0
        self.archive_failures = 0
        self.publish_latency = Histogram(LATENCY_BUCKETS_S)
        self.write_time = Histogram(COMMIT_BUCKETS_S)  # a room's SQL write transaction
        self.commit_time = Histogram(COMMIT_BUCKETS_S)  # locally: each group COMMIT
        self.archive_lag = Histogram(ARCHIVE_LAG_BUCKETS_S)

    def closed(self, code: int) -> None:
        self.connections_closed[code] = self.connections_closed.get(code, 0) + 1

    def rejected(self, code: str) -> None:
        self.rejections[code] = self.rejections.get(code, 0) + 1

    @property
    def rate_limited(self) -> int:
        return self.rejections.get("rate_limited", 0)

    def drain(self) -> Telemetry:
        """What was counted since the last drain; counting starts over from zero."""
        taken = Telemetry()
        # In place: the host's TimedSql holds this object's write histogram.
        for name, value in vars(self).items():
            if isinstance(value, Histogram):
                kept = getattr(taken, name)
                kept.counts, kept.sum = value.counts, value.sum
                value.counts, value.sum = [0] * len(value.counts), 0.0
            elif isinstance(value, dict):
                setattr(taken, name, dict(value))
                value.clear()
            else:
                setattr(taken, name, value)
                setattr(self, name, 0)
        return taken


# Workers Analytics Engine (docs/admin.md#metrics-on-cloudflare): one data point per room and
# flush with these doubles in this order, plus one per rejection code and per close code.
ROOM_POINT_DOUBLES = (
    "messages_published",
    "deliveries",
    "bytes_in",
    "bytes_out",
    "connections_opened",
    "connections_closed",
    "rooms_woken",
    "slow_consumer_cuts",
    "rate_limited",
    "rejections",
    "archive_runs",
    "archive_failures",
    "publish_latency_sum_s",
    "publish_latency_count",
    "write_time_sum_s",
    "write_time_count",
    "archive_lag_sum_s",
    "archive_lag_count",
)
DataPoint = dict[str, list[str] | list[float]]


def analytics_points(room: str, t: Telemetry) -> list[DataPoint]:
    """``t`` as Analytics Engine data points (blob1 the room, blob2 the kind, index the room)."""
    doubles = [
        t.messages_published,
        t.deliveries,
        t.bytes_in,
        t.bytes_out,
        t.connections_opened,
        sum(t.connections_closed.values()),
        t.rooms_woken,
        t.slow_consumer_cuts,
        t.rate_limited,
        sum(t.rejections.values()),
        t.archive_runs,
        t.archive_failures,
        t.publish_latency.sum,
        t.publish_latency.count,
        t.write_time.sum,
        t.write_time.count,
        t.archive_lag.sum,
        t.archive_lag.count,
    ]
    if not any(doubles):
        return []  # nothing happened: no point written
    points: list[DataPoint] = [
        {"indexes": [room], "blobs": [room, "room"], "doubles": [float(d) for d in doubles]}
    ]
    for code, count in sorted(t.rejections.items()):
        points.append(
            {"indexes": [room], "blobs": [room, "rejection", code], "doubles": [float(count)]}
        )
    for close_code, count in sorted(t.connections_closed.items()):
        points.append(
            {
                "indexes": [room],
                "blobs": [room, "close", str(close_code)],
                "doubles": [float(count)],
            }
        )
    return points


def utf8_len(text: str | bytes) -> int:
    # isascii() is O(1) on CPython's compact strings: most frames cost no encode here.
    if isinstance(text, bytes) or text.isascii():
        return len(text)
    return len(text.encode("utf-8", "surrogatepass"))  # a lone surrogate is refused later


class TimedSql:
    """A room's `Sql` port whose transactions are timed into ``histogram`` (statements are the
    wrapped port's own bound method: no extra call on each)."""

    def __init__(self, sql: Sql, histogram: Histogram) -> None:
        self.execute: Callable[..., list[Sequence[SqlValue]]] = sql.execute
        self.size_bytes = sql.size_bytes
        self.exists = sql.exists
        self.run_schema = sql.run_schema
        self._transaction = sql.transaction
        self._histogram = histogram

    def transaction(self, fn: Callable[[], T]) -> T:
        started = time.perf_counter()
        try:
            return self._transaction(fn)
        finally:
            self._histogram.observe(time.perf_counter() - started)


def front_rejection_point(code: str) -> DataPoint:
    """A request the front Worker refused (blob1 empty: no room's)."""
    return {"indexes": ["front"], "blobs": ["", "rejection", code], "doubles": [1.0]}

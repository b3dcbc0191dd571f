"""`GET /metrics`: the local runtime's figures in Prometheus text format (docs/admin.md#metrics).

The rooms count into one shared `rooms.telemetry.Telemetry` (plain ints); nothing is formatted
until a scrape, when `RoomsCollector` reads those counters and the registry's live state
(sockets, rooms awake and asleep) and `prometheus_client` writes the exposition text.
Access: the admin token, or `METRICS_TOKEN` when set (a scraper then needs no admin rights).
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from rooms.front import HttpReply, error_reply
from rooms.telemetry import Histogram, Telemetry

if TYPE_CHECKING:
    from roomsd.rooms import RoomRegistry


def live_figures(t: Telemetry, registry: RoomRegistry) -> dict[str, Any]:
    """The `live` part of `GET /admin/overview`: the same figures as `/metrics`, as JSON."""
    rooms = list(registry.rooms.values())
    awake = sum(1 for room in rooms if room.awake)
    sockets = [sock for room in rooms for sock in room.sockets.all()]
    return {
        "connections": len(sockets),
        "users": len({sock.tags[1] for sock in sockets if len(sock.tags) > 1}),
        "rooms_awake": awake,
        "rooms_asleep": len(rooms) - awake,
        "connections_opened": t.connections_opened,
        "connections_closed": {str(code): n for code, n in sorted(t.connections_closed.items())},
        "rooms_woken": t.rooms_woken,
        "messages_published": t.messages_published,
        "deliveries": t.deliveries,
        "bytes_in": t.bytes_in,
        "bytes_out": t.bytes_out,
        "rejections": dict(sorted(t.rejections.items())),
        "rate_limited": t.rate_limited,
        "slow_consumer_cuts": t.slow_consumer_cuts,
        "archive_runs": t.archive_runs,
        "archive_failures": t.archive_failures,
        "publish_latency_count": t.publish_latency.count,
        "publish_latency_sum_s": t.publish_latency.sum,
    }


class RoomsCollector(Collector):
    """Every figure, read at scrape time."""

    def __init__(self, telemetry: Telemetry, registry: RoomRegistry) -> None:
        self.telemetry = telemetry
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        t = self.telemetry
        rooms = list(self.registry.rooms.values())
        awake = sum(1 for room in rooms if room.awake)
        sockets = [sock for room in rooms for sock in room.sockets.all()]
        users = {sock.tags[1] for sock in sockets if len(sock.tags) > 1}
        yield _gauge("rooms_connections", "Open WebSocket connections.", len(sockets))
        yield _gauge("rooms_users", "Distinct users with an open connection.", len(users))
        rooms_gauge = GaugeMetricFamily(
            "rooms_rooms", "Rooms in memory: awake, or asleep with open sockets.", labels=["state"]
        )
        rooms_gauge.add_metric(["awake"], awake)
        rooms_gauge.add_metric(["asleep"], len(rooms) - awake)
        yield rooms_gauge
        yield _counter(
            "rooms_connections_opened", "WebSocket connections accepted.", t.connections_opened
        )
        closed = CounterMetricFamily(
            "rooms_connections_closed",
            "WebSocket connections closed, by close code.",
            labels=["code"],
        )
        for close_code, count in sorted(t.connections_closed.items()):
            closed.add_metric([str(close_code)], count)
        yield closed
        yield _counter("rooms_woken", "Times a room was woken (its host built).", t.rooms_woken)
        yield _counter(
            "rooms_messages_published", "Messages stored and broadcast.", t.messages_published
        )
        yield _counter("rooms_deliveries", "Frames handed to sockets.", t.deliveries)
        yield _counter("rooms_received_bytes", "UTF-8 bytes of frames rooms received.", t.bytes_in)
        yield _counter("rooms_sent_bytes", "UTF-8 bytes of frames handed to sockets.", t.bytes_out)
        rejections = CounterMetricFamily(
            "rooms_rejections", "Frames and requests refused, by error code.", labels=["code"]
        )
        for error_code, count in sorted(t.rejections.items()):
            rejections.add_metric([error_code], count)
        yield rejections
        yield _counter(
            "rooms_rate_limited", "Frames refused by the per-socket rate limit.", t.rate_limited
        )
        yield _counter(
            "rooms_slow_consumer_cuts",
            "Sockets cut off for not reading (4008).",
            t.slow_consumer_cuts,
        )
        yield _counter(
            "rooms_archive_runs", "Archive runs (alarms and archive-now).", t.archive_runs
        )
        yield _counter(
            "rooms_archive_failures",
            "Archive runs that failed (retried later).",
            t.archive_failures,
        )
        files = self.registry.services.files_ahead
        new_files = CounterMetricFamily(
            "rooms_new_room_files",
            "New rooms' files made: ahead, as a first member joined, or at the first write.",
            labels=["when"],
        )
        new_files.add_metric(["ahead"], files.made)
        new_files.add_metric(["first_write"], files.made_at_write)
        yield new_files
        yield _histogram(
            "rooms_publish_latency_seconds",
            "From a publish frame reaching its room to its ack and broadcast sent.",
            t.publish_latency,
        )
        yield _histogram(
            "rooms_sqlite_write_seconds", "Room SQLite write transactions.", t.write_time
        )
        yield _histogram(
            "rooms_sqlite_commit_seconds", "Room SQLite commits (of grouped writes).", t.commit_time
        )
        yield _histogram(
            "rooms_archive_lag_seconds",
            "Age of the oldest unarchived message when an archive run starts.",
            t.archive_lag,
        )


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


def _histogram(name: str, documentation: str, histogram: Histogram) -> HistogramMetricFamily:
    buckets: list[tuple[str, float]] = []
    cumulative = 0
    for bound, count in zip((*histogram.bounds, float("inf")), histogram.counts, strict=True):
        cumulative += count
        buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
    return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=histogram.sum)


class MetricsEndpoint:
    """Answers `GET /metrics`."""

    def __init__(
        self,
        telemetry: Telemetry,
        registry: RoomRegistry,
        admin_token: str | None,
        metrics_token: str | None,
    ) -> None:
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(RoomsCollector(telemetry, registry))
        self._tokens = [t.encode() for t in (admin_token, metrics_token) if t]

    def authorized(self, authorization: str) -> bool:
        given = authorization.encode("utf-8", "surrogateescape")
        # Every configured token is compared, in constant time, whichever matches.
        matched = [hmac.compare_digest(given, b"Bearer " + token) for token in self._tokens]
        return any(matched)

    def handle(self, method: str, authorization: str) -> HttpReply:
        if not self.authorized(authorization):
            return error_reply(401, "unauthorized", "metrics credentials required")
        if method != "GET":
            return error_reply(405, "method_not_allowed", "use GET")
        return HttpReply(
            200, generate_latest(self._registry), (("content-type", CONTENT_TYPE_LATEST),)
        )

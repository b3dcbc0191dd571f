"""The Analytics Engine adapter (src/objects/metrics.py) in real Pyodide against a fake dataset
that refuses what the platform refuses (harness/lib/analytics.mjs): the figures a room writes are
what its clients did; without the binding nothing is written; the default batching writes a few
points, not one per message (docs/admin.md#metrics-on-cloudflare)."""

from __future__ import annotations

from typing import Any

import pytest

from rooms.telemetry import ROOM_POINT_DOUBLES
from tests.pyodide.conftest import Expect, WorldFactory, token
from tests.pyodide.harness_client import World


def totals(points: list[dict[str, Any]], room: str = "lobby") -> dict[str, float]:
    """The room's points summed per double (by name) and per rejection/close code."""
    summed: dict[str, float] = {}
    for point in points:
        blob_room, kind, *rest = point["blobs"]
        assert point["indexes"] == ([room] if blob_room == room else ["front"])
        if blob_room != room:
            continue
        if kind == "room":
            for name, value in zip(ROOM_POINT_DOUBLES, point["doubles"], strict=True):
                summed[name] = summed.get(name, 0) + value
        else:
            key = f"{kind}:{rest[0]}"
            summed[key] = summed.get(key, 0) + point["doubles"][0]
    return summed


@pytest.mark.parametrize("hibernating", [False, True], ids=["awake", "hibernate-every-event"])
def test_a_room_writes_what_its_clients_did(world_factory: WorldFactory, hibernating: bool) -> None:
    """With METRICS_FLUSH_MS=0 every event's counts are written, so even an object evicted
    after every event loses none."""
    world = world_factory(METRICS_FLUSH_MS="0")
    world.set_hibernate_every_event(hibernating)
    alice = world.connect("lobby", token("alice"), since=0)
    bob = world.connect("lobby", token("bob"), since=0)
    for i in range(3):
        alice.publish(f"m{i}", "héllo")
    bob.send("{not json")
    assert [e["code"] for e in bob.frames("error")] == ["bad_json"]
    bob.close(1000)
    points = world.analytics_points()
    assert points is not None
    got = totals(points)
    assert got["messages_published"] == 3
    assert got["connections_opened"] == 2
    assert got["close:1000"] == got["connections_closed"] == 1
    assert got["rejection:bad_json"] == got["rejections"] == 1
    assert got["publish_latency_count"] == 3
    assert got["publish_latency_sum_s"] > 0
    assert got["write_time_count"] >= 3
    assert got["deliveries"] >= 3 * 3 + 2  # acks, the messages to both, the welcomes
    assert got["bytes_in"] >= 3 * len('"body":"héllo"'.encode())
    assert got["rooms_woken"] >= 1


def test_the_front_writes_one_point_per_refused_request(world: World) -> None:
    world.upgrade("lobby", "not-a-token")
    points = world.analytics_points()
    assert points == [{"indexes": ["front"], "blobs": ["", "rejection", "token_invalid"],
                       "doubles": [1]}]


def test_a_refusal_by_the_room_is_written_as_a_rejection(world_factory: WorldFactory) -> None:
    world = world_factory(METRICS_FLUSH_MS="0", ROOM_LIMITS='{"max_members": 1}')
    alice = world.connect("lobby", token("alice"), since=0)
    assert alice.frames("welcome")
    assert world.upgrade("lobby", token("bob")).status == 403  # room_full
    assert totals(world.analytics_points() or [])["rejection:room_full"] == 1


def test_by_default_points_are_batched_per_second_not_per_message(world: World) -> None:
    alice = world.connect("lobby", token("alice"), since=0)
    for i in range(20):
        alice.publish(f"m{i}", "x")
    points = world.analytics_points()
    assert points is not None
    assert len(points) <= 3  # 20 publishes and a connect: at most a point or two per second
    # Published counts still in the object's memory reach the dataset with its alarm.
    world.alarm("lobby")
    assert totals(points + (world.analytics_points() or []))["messages_published"] == 20


def test_without_the_binding_nothing_is_written_and_rooms_work(world_factory: WorldFactory,
                                                                expect: Expect) -> None:
    world = world_factory(METRICS=None)
    alice = world.connect("lobby", token("alice"), since=0)
    alice.publish("m1", "hi")
    assert [a["seq"] for a in alice.take("ack")] == [1]
    assert world.analytics_points() is None or world.analytics_points() == []


def test_a_bad_flush_setting_fails_the_object_loudly(world_factory: WorldFactory,
                                                      expect: Expect) -> None:
    world = world_factory(METRICS_FLUSH_MS="soon")
    result = world.upgrade("lobby", token("alice"))
    assert result.status == 500
    assert "soon" not in result.body
    diag = world.harness.take_diagnostics(world)
    (escaped,) = diag["errors"]
    assert "METRICS_FLUSH_MS is invalid" in escaped["message"]

"""The Durable Object's alarm and archive path, and the admin API, through the real adapters."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from rooms.segments import decode_segment, segment_key
from tests.cloudflare.runtime import FakeClient, FakeCloudflare
from tests.cloudflare.support import check_clean, make_cloudflare, token

POLICY = json.dumps({"max_segment": 4, "retain_messages": 2, "interval_ms": 1000})
ADMIN = "admin-secret-for-the-fake-deployment"


@pytest.fixture(params=[False, True], ids=["awake", "hibernate-every-event"])
def cf(request: pytest.FixtureRequest) -> Iterator[FakeCloudflare]:
    deployment = make_cloudflare(
        hibernate_every_event=request.param, admin_token=ADMIN,
        extra_vars={"ARCHIVE_POLICY": POLICY, "ROOM_LIMITS": json.dumps({"burst": 500})},
    )
    yield deployment
    check_clean(deployment)


def join(cf: FakeCloudflare, user: str, since: int | None = 0) -> FakeClient:
    return cf.connect("lobby", token(user, user.title()), since=since)


def publish(cf: FakeCloudflare, count: int) -> None:
    alice = join(cf, "alice")
    for i in range(count):
        alice.publish(f"m{i}", f"body {i}")
    assert [a["seq"] for a in alice.take("ack")] == list(range(1, count + 1))


def segment_rows(cf: FakeCloudflare) -> list[tuple[Any, ...]]:
    assert cf.d1 is not None
    return cf.d1.sqlite.execute(
        "SELECT room, first_seq, last_seq, count, key FROM segments ORDER BY first_seq"
    ).fetchall()


def test_first_publish_sets_the_alarm_and_the_alarm_archives(cf: FakeCloudflare) -> None:
    """setAlarm is called once; alarm() writes R2 segments and D1 rows for every message."""
    publish(cf, 10)
    storage = cf.room("lobby").state.storage
    assert len(storage.alarm_sets) == 1
    cf.fire_alarm("lobby")
    assert [r[1:4] for r in segment_rows(cf)] == [(1, 4, 4), (5, 8, 4), (9, 10, 2)]
    assert cf.r2 is not None
    data = cf.r2.objects[segment_key("lobby", 5, 8)]
    assert [m.body for m in decode_segment(data, "lobby", 5, 8)] == [
        f"body {i}" for i in range(4, 8)]
    assert cf.d1 is not None
    room_row = cf.d1.sqlite.execute("SELECT head_seq, archived_seq FROM rooms").fetchall()
    assert room_row == [(10, 10)]


def test_r2_then_d1_failures_are_retried_without_gap_or_duplicate(cf: FakeCloudflare) -> None:
    """A failed put, then a failed index write: each retry reuses the range; one row each."""
    publish(cf, 5)
    assert cf.r2 is not None
    assert cf.d1 is not None
    storage = cf.room("lobby").state.storage
    cf.r2.fail_puts = 1
    cf.fire_alarm("lobby")
    assert segment_rows(cf) == []
    assert storage.alarm is not None  # rescheduled with backoff
    cf.d1.fail_batches = 1
    cf.fire_alarm("lobby")
    assert segment_rows(cf) == []
    assert list(cf.r2.objects) == [segment_key("lobby", 1, 4)]
    cf.fire_alarm("lobby")
    assert [r[1:3] for r in segment_rows(cf)] == [(1, 4), (5, 5)]
    assert sorted(cf.r2.objects) == [segment_key("lobby", 1, 4), segment_key("lobby", 5, 5)]


def test_pruned_history_is_served_from_r2_on_resume_and_history(cf: FakeCloudflare) -> None:
    """Past the retained rows, a resume from 0 and history pages return the originals."""
    publish(cf, 9)
    cf.fire_alarm("lobby")
    reader = join(cf, "reader", since=0)
    (welcome,) = reader.frames("welcome")
    assert welcome["resume"]["complete"] is True
    assert reader.seqs() == list(range(1, 10))
    reader.take()
    reader.send({"type": "history", "before": 6, "limit": 5})
    (page,) = reader.take("history")
    assert [m["body"] for m in page["messages"]] == [f"body {i}" for i in range(0, 5)]
    assert page["missing"] == []


def admin(cf: FakeCloudflare, method: str, path: str, auth: str | None = ADMIN) -> Any:
    headers = [("authorization", f"Bearer {auth}")] if auth else []
    result = cf.fetch(path, method=method, headers=headers)
    return result.status, result.json()


def test_admin_api_through_the_front_and_the_object(cf: FakeCloudflare) -> None:
    """Auth, inspection from the object, a forced archive, a kick, listing, and the audit."""
    publish(cf, 3)
    assert admin(cf, "GET", "/admin/rooms", auth=None)[0] == 401
    assert admin(cf, "GET", "/admin/rooms", auth="wrong")[0] == 401
    bob = join(cf, "bob")
    status, view = admin(cf, "GET", "/admin/rooms/lobby")
    assert status == 200
    assert (view["head_seq"], view["archived_seq"]) == (3, 0)
    assert [m["user_id"] for m in view["members"]] == ["alice", "bob"]
    assert view["storage_bytes"] > 0
    assert view["next_alarm_ms"] is not None
    status, done = admin(cf, "POST", "/admin/rooms/lobby/archive")
    assert (status, done["result"]["archived"]) == (200, [[1, 3]])
    status, rooms = admin(cf, "GET", "/admin/rooms")
    assert [(r["name"], r["archived_seq"]) for r in rooms["rooms"]] == [("lobby", 3)]
    status, read = admin(cf, "GET", "/admin/rooms/lobby/messages?first=1&last=3")
    assert [m["body"] for m in read["messages"]] == ["body 0", "body 1", "body 2"]
    status, kicked = admin(cf, "POST", "/admin/rooms/lobby/disconnect?user_id=bob")
    assert kicked["result"]["sockets_closed"] == 1
    assert bob.close_received is not None
    assert bob.close_received[0] == 4003
    assert admin(cf, "GET", "/admin/rooms/nobody")[0] == 404
    status, audit = admin(cf, "GET", "/admin/audit")
    assert [e["action"] for e in audit["entries"]] == ["disconnect", "archive"]

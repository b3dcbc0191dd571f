"""The room's alarm archives to R2 and D1 through the real adapters, and reads back from them.

D1 is a fresh SQLite database with migrations/*.sql applied in order (as wrangler does); R2 is
in memory. Segment bytes are decoded on the host with the same `rooms.segments` code.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from rooms.segments import decode_segment, segment_key
from tests.pyodide.conftest import ADMIN_TOKEN, Expect, token
from tests.pyodide.harness_client import World

WorldFactory = Callable[..., World]
ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}
# Archive at once, keep nothing in the object once archived.
EAGER = json.dumps({"interval_ms": 0, "retain_messages": 0, "retry_base_ms": 1000})


def test_migrations_are_applied_to_d1(world: World) -> None:
    names = [r["name"] for r in world.d1("SELECT name FROM d1_migrations ORDER BY id")]
    assert names == ["0001_rooms.sql", "0002_archive.sql"]


def test_first_write_sets_the_alarm_and_the_alarm_archives(world: World) -> None:
    alice = world.connect("lobby", token("alice", "Alice"))
    assert world.info("lobby")["alarm"] is None
    for i in range(3):
        alice.publish(f"m{i}", f"body {i}")
    assert world.info("lobby")["alarm"] is not None  # interval_ms after the first write
    result = world.alarm("lobby")
    assert (result["ran"], result["error"]) == (True, None)

    key = segment_key("lobby", 1, 3)
    (segment,) = world.r2("rooms/lobby/")
    assert segment["key"] == key
    messages = decode_segment(segment["data"], "lobby", 1, 3)
    assert [(m.seq, m.id, m.body, m.name) for m in messages] == [
        (i + 1, f"m{i}", f"body {i}", "Alice") for i in range(3)
    ]
    (row,) = world.d1("SELECT room, first_seq, last_seq, count, bytes, key FROM segments")
    assert row == {"room": "lobby", "first_seq": 1, "last_seq": 3, "count": 3,
                   "bytes": len(segment["data"]), "key": key}
    (room,) = world.d1("SELECT name, head_seq, archived_seq, member_count FROM rooms")
    assert room == {"name": "lobby", "head_seq": 3, "archived_seq": 3, "member_count": 1}
    assert world.sql("lobby", "SELECT value FROM room_meta WHERE key = 'archived'") == [
        {"value": 3}
    ]


@pytest.mark.parametrize("hibernate", [False, True], ids=["awake", "hibernate-every-event"])
def test_a_resume_below_the_retained_window_reads_back_from_r2(
    world_factory: WorldFactory, hibernate: bool
) -> None:
    world = world_factory(ARCHIVE_POLICY=EAGER)
    world.set_hibernate_every_event(hibernate)
    alice = world.connect("lobby", token("alice"))
    for i in range(4):
        alice.publish(f"m{i}", str(i))
    assert world.alarm("lobby")["error"] is None
    assert world.sql("lobby", "SELECT COUNT(*) AS n FROM messages") == [{"n": 0}]  # pruned
    late = world.connect("lobby", token("bob"), since=1)
    (welcome,) = late.frames("welcome")
    assert welcome["resume"]["complete"] is True
    assert late.seqs() == [2, 3, 4]
    assert [m["body"] for m in late.frames("message")] == ["1", "2", "3"]


def test_a_failed_r2_put_is_retried_by_the_next_alarm(world_factory: WorldFactory) -> None:
    world = world_factory(ARCHIVE_POLICY=EAGER)
    alice = world.connect("lobby", token("alice"))
    alice.publish("m", "kept")
    world.call("r2.failPuts", count=1)
    first = world.alarm("lobby")
    assert first["error"] is None  # the room records the failure; the handler does not throw
    assert first["next"] is not None  # and sets the alarm again, with backoff
    assert world.r2() == []
    assert world.d1("SELECT COUNT(*) AS n FROM segments") == [{"n": 0}]
    meta = dict((r["key"], r["value"]) for r in world.sql(
        "lobby", "SELECT key, value FROM room_meta WHERE key IN ('archive_failures', "
        "'last_archive_error', 'pending_first', 'pending_last')"))
    assert meta["archive_failures"] == 1
    assert (meta["pending_first"], meta["pending_last"]) == (1, 1)
    second = world.alarm("lobby")
    assert second["error"] is None
    assert [o["key"] for o in world.r2()] == [segment_key("lobby", 1, 1)]
    assert world.d1("SELECT first_seq, last_seq FROM segments") == [
        {"first_seq": 1, "last_seq": 1}
    ]


def test_admin_archive_now_writes_the_segment_and_the_audit_row(
    world_factory: WorldFactory,
) -> None:
    world = world_factory()
    alice = world.connect("lobby", token("alice"))
    alice.publish("a", "1")
    alice.publish("b", "2")
    result = world.fetch("/admin/rooms/lobby/archive", method="POST", headers=ADMIN)
    assert result.status == 200, result.body
    assert result.json()["result"]["archived"] == [[1, 2]]
    assert [o["key"] for o in world.r2()] == [segment_key("lobby", 1, 2)]
    audit = world.d1("SELECT action, room FROM audit")
    assert audit == [{"action": "archive", "room": "lobby"}]


def test_admin_segment_listing(world_factory: WorldFactory, expect: Expect) -> None:
    world = world_factory()
    alice = world.connect("lobby", token("alice"))
    alice.publish("a", "1")
    assert world.fetch("/admin/rooms/lobby/archive", method="POST", headers=ADMIN).status == 200
    listing = world.fetch("/admin/rooms/lobby/segments", headers=ADMIN)
    assert listing.status == 200, listing.body
    assert [s["key"] for s in listing.json()["segments"]] == [segment_key("lobby", 1, 1)]

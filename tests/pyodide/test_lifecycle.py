"""The message lifecycle through the real Room object in Pyodide, where workerd cannot go: the
object evicted after every event (so each edit, reaction, delete and read is handled by a fresh
`__init__` over storage and attachments), a room stored by the v1 schema waking up under this
one, and R2 failing the rewrite of a segment a delete redacted. The awake cases run on workerd
through real sockets (tests/e2e/test_lifecycle.py, tests/e2e/test_archive.py)."""

from __future__ import annotations

import gzip
import json
from typing import Any

from rooms.segments import segment_key
from tests.pyodide.conftest import ADMIN_TOKEN, WorldFactory, token
from tests.pyodide.harness_client import Client, World


def join(world: World, user: str, since: int | None = 0) -> Client:
    return world.connect("lobby", token(user, user.title()), since=since)


def test_lifecycle_events_with_the_object_evicted_after_every_event(world: World) -> None:
    """Edits, reactions, a delete and read state, each frame run by a new instance: one gapless
    stream for both users, read state on the user's own sockets, the body blank in storage."""
    world.set_hibernate_every_event(True)
    alice, phone, laptop = join(world, "alice"), join(world, "bob"), join(world, "bob")
    alice.publish("m1", "helo")
    alice.send({"type": "edit", "id": "e1", "target": 1, "body": "hello"})
    phone.send({"type": "react", "id": "r1", "target": 1, "emoji": "👍"})
    phone.send({"type": "react", "id": "r1", "target": 1, "emoji": "👍"})  # a retransmit
    alice.publish("m2", "a secret")
    alice.send({"type": "delete", "id": "d1", "target": 4})
    assert [(a["seq"], a["duplicate"]) for a in phone.take("ack")] == [(3, False), (3, True)]
    assert alice.seqs() == phone.seqs() == laptop.seqs() == [1, 2, 3, 4, 5]
    assert [(m["seq"], m.get("kind")) for m in laptop.frames("message")] == [
        (1, None), (2, "edit"), (3, "react"), (4, None), (5, "delete")]
    laptop.send({"type": "read", "seq": 4})
    assert phone.take("read") == laptop.take("read") == [{"type": "read", "seq": 4, "unread": 0}]
    assert alice.take("read") == []
    rows = world.sql("lobby", "SELECT seq, body, deleted FROM messages ORDER BY seq")
    assert [(r["seq"], r["body"], r["deleted"]) for r in rows] == [
        (1, "helo", 0), (2, "hello", 0), (3, "", 0), (4, "", 1), (5, "", 0)]
    later = join(world, "bob", since=0)
    (welcome,) = later.frames("welcome")
    assert (welcome["read"], welcome["unread"]) == (4, 0)
    assert "a secret" not in json.dumps(later.frames())
    later.send({"type": "history", "fold": True})
    (page,) = later.frames("history")
    assert [(m["seq"], m["body"], m.get("reactions")) for m in page["messages"]] == [
        (1, "hello", [{"emoji": "👍", "count": 1, "mine": True}]), (4, "", None)]


def test_a_room_stored_by_the_v1_schema_gains_the_lifecycle_columns(world: World) -> None:
    """Storage written before lifecycle events existed: the object's first wake adds the
    columns (the probe's error is the platform's, not sqlite3's), keeps the rows, and events
    work on them."""
    world.sql("lobby", "CREATE TABLE messages (seq INTEGER PRIMARY KEY, id TEXT NOT NULL, "
                       "user_id TEXT NOT NULL, name TEXT NOT NULL, body TEXT NOT NULL, "
                       "sent_ms INTEGER NOT NULL)")
    world.sql("lobby", "INSERT INTO messages VALUES (1, 'm1', 'alice', 'Alice', 'old', 5)")
    alice = join(world, "alice")
    assert alice.seqs() == [1]
    alice.send({"type": "edit", "id": "e1", "target": 1, "body": "new"})
    assert alice.take("ack") == [{"type": "ack", "id": "e1", "seq": 2, "duplicate": False}]
    rows = world.sql("lobby", "SELECT seq, body, kind, target FROM messages ORDER BY seq")
    assert rows == [{"seq": 1, "body": "old", "kind": None, "target": None},
                    {"seq": 2, "body": "new", "kind": "edit", "target": 1}]


def test_a_failed_segment_rewrite_is_retried_and_reads_stay_redacted(
    world_factory: WorldFactory,
) -> None:
    """An operator deletes an archived message, evicted after every event; R2 refuses the
    rewrite once: the failure is recorded, no read serves the body, and the retry removes it
    from R2."""
    world = world_factory(ARCHIVE_POLICY=json.dumps({"max_segment": 4, "retain_messages": 2}),
                          ROOM_LIMITS=json.dumps({"burst": 1000}))
    world.set_hibernate_every_event(True)
    alice = join(world, "alice")
    for i in range(4):
        alice.publish(f"m{i}", f"secret {i}" if i == 1 else f"body {i}")
    assert world.alarm("lobby") is not None
    key = segment_key("lobby", 1, 4)

    def stored() -> bytes:
        (found,) = [o["data"] for o in world.r2() if o["key"] == key]
        data: bytes = gzip.decompress(found)
        return data

    assert b"secret 1" in stored()
    result = world.fetch("/admin/rooms/lobby/delete?seq=2", method="POST",
                         headers={"authorization": f"Bearer {ADMIN_TOKEN}"})
    assert result.status == 200
    assert result.json()["result"]["deleted_by_seq"] == 5
    world.fail_r2(puts=1)
    world.alarm("lobby")  # archives the delete event, then the rewrite's put fails
    status: dict[str, Any] = world.fetch(
        "/admin/rooms/lobby", headers={"authorization": f"Bearer {ADMIN_TOKEN}"}).json()
    assert status["archive_failures"] >= 1
    assert status["redactions_pending"] == 1
    reader = join(world, "reader", since=0)
    assert reader.seqs() == [1, 2, 3, 4, 5]
    assert "secret" not in json.dumps(reader.frames())
    world.alarm("lobby")
    assert b"secret" not in stored()
    assert b"body 3" in stored()

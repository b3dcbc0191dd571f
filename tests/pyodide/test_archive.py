"""The room's alarm archives to R2 and D1 through the real adapters, and reads back from them;
the admin API reaches the object. Awake and with the object evicted after every event (so
`__init__` runs again before each publish, join, admin call and alarm), and with R2 and D1
failing on demand: what tests/e2e/test_archive.py and test_admin.py cannot make workerd do.

D1 is a fresh SQLite database with migrations/*.sql applied in order (as wrangler does); R2 is
in memory. Segment bytes are decoded on the host with the same `rooms.segments` code. Alarms run
when a test asks (`World.alarm`), whether due or not.
"""

from __future__ import annotations

import json
import time
from typing import Any

import msgspec
import pytest

from rooms.segments import decode_segment, segment_key
from tests.pyodide.conftest import (
    ADMIN_TOKEN,
    Expect,
    WorldFactory,
    log_records,
    take_output,
    token,
)
from tests.pyodide.harness_client import Client, PyodideHarness, World

RETRY_BASE_MS = 60_000  # far from INTERVAL_MS, so a backoff alarm is told from a normal one
RETRY_MAX_MS = 600_000
INTERVAL_MS = 1000
POLICY = {
    "max_segment": 4,
    "retain_messages": 2,
    "interval_ms": INTERVAL_MS,
    "retry_base_ms": RETRY_BASE_MS,
    "retry_max_ms": RETRY_MAX_MS,
}
LIMITS = {"messages_per_second": 1000, "burst": 1000, "max_history_page": 4}


@pytest.fixture(params=[False, True], ids=["awake", "hibernate-every-event"])
def hibernating(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


@pytest.fixture
def world(world_factory: WorldFactory, hibernating: bool) -> World:
    """Archives 1 s after a write, 4 messages a segment, keeping 2 rows; history pages of 4."""
    instance = world_factory(ARCHIVE_POLICY=json.dumps(POLICY), ROOM_LIMITS=json.dumps(LIMITS))
    instance.set_hibernate_every_event(hibernating)
    return instance


def join(world: World, user: str, since: int | None = 0) -> Client:
    return world.connect("lobby", token(user, user.title()), since=since)


def publish(world: World, count: int, start: int = 0) -> list[dict[str, Any]]:
    """Publish ``count`` messages as alice; returns them exactly as members received them."""
    alice = join(world, "alice", since=None)
    alice.send({"type": "hello"})
    for i in range(start, start + count):
        alice.publish(f"m{i}", f"body {i}")
    acks = [a["seq"] for a in alice.take("ack")]
    assert acks == list(range(start + 1, start + count + 1))
    return alice.frames("message")


# The Worker reads the wall clock in Node, these tests in their own process: either may see
# the same instant a whole millisecond earlier (the backoff test failed 1 run in 6 without it).
CLOCK_SLACK_MS = 1


def now_ms() -> int:
    return int(time.time() * 1000)


def segment_rows(world: World) -> list[tuple[Any, ...]]:
    rows = world.d1("SELECT room, first_seq, last_seq, count, bytes, key FROM segments "
                    "ORDER BY first_seq")
    return [(r["room"], r["first_seq"], r["last_seq"], r["count"], r["bytes"], r["key"])
            for r in rows]


def r2_objects(world: World) -> dict[str, bytes]:
    return {o["key"]: o["data"] for o in world.r2()}


def archived_frames(world: World) -> list[dict[str, Any]]:
    """Every archived message, read through the D1 index from R2, as wire frames."""
    objects = r2_objects(world)
    frames = []
    for room, first, last, _, _, key in segment_rows(world):
        for message in decode_segment(objects[key], room, first, last):
            frames.append(json.loads(msgspec.json.encode(message)))
    return frames


def retained_seqs(world: World) -> list[int]:
    return [r["seq"] for r in world.sql("lobby", "SELECT seq FROM messages ORDER BY seq")]


def room_meta(world: World) -> dict[str, Any]:
    return {r["key"]: r["value"] for r in world.sql("lobby", "SELECT key, value FROM room_meta")}


def assert_no_gap(world: World, head: int) -> None:
    """The index covers 1..head with consecutive ranges, and R2 holds exactly those objects."""
    rows = segment_rows(world)
    assert [(r[1], r[2]) for r in rows] == [
        (a, b) for a, b in zip([1] + [r[2] + 1 for r in rows[:-1]], [r[2] for r in rows],
                               strict=True)]
    assert rows[-1][2] == head
    assert sorted(r2_objects(world)) == [r[5] for r in rows]


def test_first_publish_sets_the_alarm_and_the_alarm_archives(
    world: World, hibernating: bool
) -> None:
    """setAlarm once, `interval_ms` after the first write; alarm() writes R2 segments under
    their keys and the D1 index, holding exactly the published messages."""
    assert world.info("lobby")["alarm"] is None
    before = now_ms()
    published = publish(world, 10)
    info = world.info("lobby")
    assert info["alarm_sets"] == 1
    alarm = info["alarm"]
    assert alarm is not None
    assert before - CLOCK_SLACK_MS + INTERVAL_MS <= alarm <= now_ms() + CLOCK_SLACK_MS + INTERVAL_MS
    result = world.alarm("lobby")
    assert (result["ran"], result["scheduled"], result["error"]) == (True, alarm, None)
    if hibernating:
        assert world.info("lobby")["constructions"] == info["constructions"] + 1
    objects = r2_objects(world)
    assert segment_rows(world) == [
        ("lobby", a, b, b - a + 1, len(objects[segment_key("lobby", a, b)]),
         segment_key("lobby", a, b))
        for a, b in [(1, 4), (5, 8), (9, 10)]
    ]
    assert segment_key("lobby", 1, 4) == "rooms/lobby/segments/000000000001-000000000004.ndjson.gz"
    assert archived_frames(world) == published
    assert world.d1("SELECT name, head_seq, archived_seq, member_count FROM rooms") == [
        {"name": "lobby", "head_seq": 10, "archived_seq": 10, "member_count": 1}]
    assert room_meta(world)["archived"] == 10
    assert retained_seqs(world) == [9, 10]
    assert result["next"] is None  # nothing waits, so nothing is scheduled
    assert world.info("lobby")["alarm"] is None


def test_an_r2_put_failure_is_retried_with_backoff_into_one_segment(
    world: World, expect: Expect
) -> None:
    """The put fails: nothing is indexed, the failure and the pending range are recorded, the
    alarm is set `retry_base_ms` on; the retry writes exactly one segment for the same range."""
    published = publish(world, 3)
    world.fail_r2(puts=1)
    take_output(world, expect)
    before = now_ms()
    first = world.alarm("lobby")
    after = now_ms()
    assert first["error"] is None  # the room records the failure; the handler does not throw
    assert (r2_objects(world), segment_rows(world)) == ({}, [])
    alarm = first["next"]
    assert alarm is not None
    slack = CLOCK_SLACK_MS
    assert before - slack + RETRY_BASE_MS <= alarm <= after + slack + RETRY_BASE_MS
    failed = [r for r in log_records(take_output(world, expect))
              if r["event"] == "archive_failed"]
    assert [(r["failures"], r["code"].split()[0]) for r in failed] == [(1, "JsException")]
    meta = room_meta(world)
    assert meta["archive_failures"] == 1
    assert (meta["pending_first"], meta["pending_last"]) == (1, 3)
    assert world.alarm("lobby")["error"] is None
    assert [r[1:3] for r in segment_rows(world)] == [(1, 3)]
    assert_no_gap(world, 3)
    assert archived_frames(world) == published
    assert world.info("lobby")["alarm"] is None


def test_a_d1_failure_after_the_r2_put_leaves_one_segment_row(world: World) -> None:
    """The object is in R2 but the index write fails; the retry puts identical bytes under the
    same key and records one row."""
    published = publish(world, 3)
    world.fail_d1_batches(1)
    before = now_ms()
    first = world.alarm("lobby")
    key = segment_key("lobby", 1, 3)
    assert (list(r2_objects(world)), segment_rows(world)) == ([key], [])
    first_bytes = r2_objects(world)[key]
    assert first["next"] is not None
    assert first["next"] >= before - CLOCK_SLACK_MS + RETRY_BASE_MS
    world.alarm("lobby")
    assert world.r2_puts() == 2
    assert r2_objects(world)[key] == first_bytes  # deterministic segment bytes
    assert [r[1:4] for r in segment_rows(world)] == [(1, 3, 3)]
    assert archived_frames(world) == published
    assert world.d1("SELECT archived_seq FROM rooms") == [{"archived_seq": 3}]


def test_backoff_doubles_while_failures_last_then_resets(world: World) -> None:
    """Each consecutive failure doubles the delay; a success archives everything once."""
    publish(world, 5)
    world.fail_r2(puts=3)
    for failures in (1, 2, 3):
        before = now_ms()
        alarm = world.alarm("lobby")["next"]
        delay = RETRY_BASE_MS * 2 ** (failures - 1)
        assert alarm is not None
        assert before - CLOCK_SLACK_MS + delay <= alarm <= now_ms() + CLOCK_SLACK_MS + delay
    world.alarm("lobby")
    assert [r[1:3] for r in segment_rows(world)] == [(1, 4), (5, 5)]
    assert_no_gap(world, 5)
    publish(world, 1, start=5)  # a later write schedules a normal alarm again
    alarm = world.info("lobby")["alarm"]
    assert alarm is not None
    assert alarm <= now_ms() + CLOCK_SLACK_MS + INTERVAL_MS


def test_pruned_history_is_served_from_r2_on_resume_and_history(world: World) -> None:
    """Past the retained rows, a resume from 0 and history pages return exactly the originals,
    in order, across the boundary between R2 and the object's own rows."""
    published = publish(world, 9)
    world.alarm("lobby")
    assert retained_seqs(world) == [8, 9]  # retain_messages=2; the rest only in R2
    reader = join(world, "reader", since=0)
    (welcome,) = reader.frames("welcome")
    assert welcome["resume"] == {"since": 0, "complete": True, "missing": [], "reason": None}
    assert reader.frames("message") == published
    reader.take()
    pages: list[list[dict[str, Any]]] = []
    before: int | None = None
    while True:
        request: dict[str, Any] = {"type": "history", "limit": 50, "ref": f"p{len(pages)}"}
        if before is not None:
            request["before"] = before
        reader.send(request)
        (page,) = reader.take("history")
        assert (page["ref"], page["missing"]) == (f"p{len(pages)}", [])
        pages.append(page["messages"])
        before = page["next_before"]
        if before is None:
            break
    # max_history_page=4 (ROOM_LIMITS): 6-9 spans R2 (6, 7) and the object (8, 9).
    assert [[m["seq"] for m in p] for p in pages] == [[6, 7, 8, 9], [2, 3, 4, 5], [1]]
    assert [m for p in reversed(pages) for m in p] == published


def test_resume_from_zero_after_several_archive_rounds(world: World) -> None:
    """Archive, prune, publish more, archive again: a new member still gets 1..head in order,
    then live messages."""
    published = publish(world, 6)
    world.alarm("lobby")
    published += publish(world, 5, start=6)
    world.alarm("lobby")
    assert retained_seqs(world) == [10, 11]
    assert_no_gap(world, 11)
    reader = join(world, "reader", since=0)
    assert reader.frames("message") == published
    published += publish(world, 1, start=11)
    assert reader.frames("message") == published


def test_limits_set_on_the_class_win_over_the_room_limits_var(
    world: World, harness: PyodideHarness
) -> None:
    """Embedders fix limits on the class (`Room.limits`); the ROOM_LIMITS var is then not read."""
    room = '__import__("objects.room", fromlist=["Room"]).Room'
    limits = '__import__("rooms.limits", fromlist=["Limits"]).Limits'
    harness.call("py.run", expression=f'setattr({room}, "limits", '
                                      f'{limits}(burst=500, max_history_page=2))')
    try:
        publish(world, 5)
        reader = join(world, "reader", since=None)
        reader.send({"type": "hello"})
        reader.send({"type": "history", "limit": 50})
        (page,) = reader.take("history")
        assert [m["seq"] for m in page["messages"]] == [4, 5]
    finally:
        harness.call("py.run", expression=f'setattr({room}, "limits", None)')


def test_settings_vars_may_be_json_objects(world_factory: WorldFactory) -> None:
    """docs/cloudflare.md §5.5: a var written as a JSON object in wrangler.jsonc reaches Python
    as a JsProxy, and means the same as its JSON text."""
    world = world_factory(ARCHIVE_POLICY=POLICY, ROOM_LIMITS=LIMITS)
    publish(world, 5)
    world.alarm("lobby")
    assert [r[1:3] for r in segment_rows(world)] == [(1, 4), (5, 5)]  # max_segment=4


def test_deployments_sharing_an_isolate_keep_their_own_settings(
    world_factory: WorldFactory,
) -> None:
    """An object reads env once per isolate and env object (objects.room `_deployment`): two
    deployments in one isolate, their objects rebuilt on every event in turn, each keep their
    own ROOM_LIMITS and archive policy."""
    worlds = [
        world_factory(ARCHIVE_POLICY=json.dumps(POLICY),
                      ROOM_LIMITS=json.dumps({**LIMITS, "max_history_page": page}))
        for page in (2, 3)
    ]
    readers = []
    for world in worlds:
        world.set_hibernate_every_event(True)
        publish(world, 5)
        reader = join(world, "reader", since=None)
        reader.send({"type": "hello"})
        readers.append(reader)
    for _ in range(2):
        for reader, page in zip(readers, (2, 3), strict=True):
            reader.send({"type": "history", "limit": 50})
            (got,) = reader.take("history")
            assert [m["seq"] for m in got["messages"]] == list(range(6 - page, 6))
    for world in worlds:
        world.alarm("lobby")
        assert [r[1:3] for r in segment_rows(world)] == [(1, 4), (5, 5)]  # max_segment=4


@pytest.mark.parametrize("var", ["ROOM_LIMITS", "ARCHIVE_POLICY"])
def test_a_bad_settings_var_fails_every_event_and_says_which(
    world_factory: WorldFactory, var: str
) -> None:
    """Strict config: an unknown field fails the object's construction, not a user's message;
    the exception (in the runtime's log) names the var, the client learns nothing."""
    world = world_factory(**{var: json.dumps({"no_such_setting": 1})})
    result = world.upgrade("lobby", token("alice"))
    assert result.status == 500
    assert "no_such_setting" not in result.body
    diag = world.harness.take_diagnostics(world)  # what the fixture would refuse, checked here
    (escaped,) = diag["errors"]
    assert escaped["where"] == "Room.fetch"
    assert f"ValueError: {var} is invalid" in escaped["message"]
    assert [r for r in log_records(diag["logs"]) if r["event"] == "unexpected_error"] == [
        {"event": "unexpected_error", "handler": "fetch", "error": "JsException", "path": "room"}]
    assert diag["warnings"] == []


def admin(world: World, method: str, path: str, auth: str | None = ADMIN_TOKEN) -> Any:
    headers = {"authorization": f"Bearer {auth}"} if auth else {}
    result = world.fetch(path, method=method, headers=headers)
    return result.status, result.json()


def test_admin_api_through_the_front_and_the_object(world: World) -> None:
    """Auth, inspection from the object, a forced archive, a kick, listing, and the audit.

    Awake, each step also runs through real sockets on workerd (tests/e2e/test_admin.py).
    """
    alice = join(world, "alice")
    for i in range(3):
        alice.publish(f"m{i}", f"body {i}")
    assert admin(world, "GET", "/admin/rooms", auth=None)[0] == 401
    assert admin(world, "GET", "/admin/rooms", auth="wrong")[0] == 401
    # Listed from its first message, by the object itself (docs/admin.md#the-room-directory).
    status, rooms = admin(world, "GET", "/admin/rooms")
    assert [(r["name"], r["head_seq"], r["member_count"]) for r in rooms["rooms"]] == [
        ("lobby", 1, 1)]
    bob = join(world, "bob")
    status, view = admin(world, "GET", "/admin/rooms/lobby")
    assert status == 200
    assert view["room"] == "lobby"
    assert (view["head_seq"], view["archived_seq"]) == (3, 0)
    assert [m["user_id"] for m in view["members"]] == ["alice", "bob"]
    assert view["storage_bytes"] > 0
    assert view["next_alarm_ms"] is not None
    status, done = admin(world, "POST", "/admin/rooms/lobby/archive")
    assert (status, done["result"]["archived"]) == (200, [[1, 3]])
    assert list(r2_objects(world)) == [segment_key("lobby", 1, 3)]
    status, rooms = admin(world, "GET", "/admin/rooms")
    assert [(r["name"], r["archived_seq"]) for r in rooms["rooms"]] == [("lobby", 3)]
    status, read = admin(world, "GET", "/admin/rooms/lobby/messages?first=1&last=3")
    assert [m["body"] for m in read["messages"]] == ["body 0", "body 1", "body 2"]
    status, kicked = admin(world, "POST", "/admin/rooms/lobby/disconnect?user_id=bob")
    assert kicked["result"]["sockets_closed"] == 1
    bob.state()
    assert bob.closes
    assert bob.closes[0][0] == 4003
    leaves = [p for p in alice.frames("presence") if p["event"] == "leave"]
    assert [p["member"]["user_id"] for p in leaves] == ["bob"]
    assert admin(world, "GET", "/admin/rooms/nobody")[0] == 404
    status, audit = admin(world, "GET", "/admin/audit")
    assert [e["action"] for e in audit["entries"]] == ["disconnect", "read_messages", "archive"]
    assert [e["room"] for e in audit["entries"]] == ["lobby", "lobby", "lobby"]

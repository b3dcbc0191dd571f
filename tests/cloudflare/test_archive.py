"""The Durable Object's alarm and archive path, and the admin API, through the real adapters.

Every test runs twice: with the object awake between events, and hibernating after every event
(so `__init__` runs again before each publish, join and alarm). Messages go in through the front
Worker and the Room's handlers; the alarm is fired the way workerd fires it; R2 and D1 are the
fakes in fake_bindings.py, inspected directly.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest

from objects.room import Room
from rooms.host import RoomHost
from rooms.limits import Limits
from rooms.segments import decode_segment, segment_key
from tests.cloudflare.fake_js import JsObject
from tests.cloudflare.runtime import FakeClient, FakeCloudflare
from tests.cloudflare.support import check_clean, log_records, make_cloudflare, token

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
LIMITS = {"burst": 500, "max_history_page": 4}
ADMIN = "admin-secret-for-the-fake-deployment"


@pytest.fixture(params=[False, True], ids=["awake", "hibernate-every-event"])
def cf(request: pytest.FixtureRequest) -> Iterator[FakeCloudflare]:
    deployment = make_cloudflare(
        hibernate_every_event=request.param, admin_token=ADMIN,
        extra_vars={"ARCHIVE_POLICY": json.dumps(POLICY), "ROOM_LIMITS": json.dumps(LIMITS)},
    )
    yield deployment
    check_clean(deployment)


def join(cf: FakeCloudflare, user: str, since: int | None = 0) -> FakeClient:
    return cf.connect("lobby", token(user, user.title()), since=since)


def publish(cf: FakeCloudflare, count: int, start: int = 0) -> list[dict[str, Any]]:
    """Publish ``count`` messages as alice; returns them exactly as members received them."""
    alice = join(cf, "alice", since=None)
    alice.send({"type": "hello"})
    for i in range(start, start + count):
        alice.publish(f"m{i}", f"body {i}")
    acks = [a["seq"] for a in alice.take("ack")]
    assert acks == list(range(start + 1, start + count + 1))
    return alice.frames("message")


def now_ms() -> int:
    return int(time.time() * 1000)


def get_alarm(cf: FakeCloudflare) -> int | None:
    """``await ctx.storage.getAlarm()`` as the Room sees it (through the SDK)."""
    from tests.cloudflare.fake_workers import DurableObjectContext

    storage = DurableObjectContext(cf.room("lobby").state).storage

    async def read() -> int | None:
        value: int | None = await storage.getAlarm()
        return value

    return asyncio.run(read())


def segment_rows(cf: FakeCloudflare) -> list[tuple[Any, ...]]:
    assert cf.d1 is not None
    return cf.d1.sqlite.execute(
        "SELECT room, first_seq, last_seq, count, bytes, key FROM segments ORDER BY first_seq"
    ).fetchall()


def archived_frames(cf: FakeCloudflare) -> list[dict[str, Any]]:
    """Every archived message, read through the D1 index from R2, as wire frames."""
    assert cf.r2 is not None
    frames = []
    for room, first, last, _, _, key in segment_rows(cf):
        for message in decode_segment(cf.r2.objects[key], room, first, last):
            frames.append(json.loads(msgspec.json.encode(message)))
    return frames


def retained_seqs(cf: FakeCloudflare) -> list[int]:
    sql = cf.room("lobby").state.storage.sql
    return [row[0] for row in sql.exec("SELECT seq FROM messages ORDER BY seq").raw()]


def assert_no_gap(cf: FakeCloudflare, head: int) -> None:
    """The index covers 1..head with consecutive ranges, and R2 holds exactly those objects."""
    rows = segment_rows(cf)
    assert [(r[1], r[2]) for r in rows] == [
        (a, b) for a, b in zip([1] + [r[2] + 1 for r in rows[:-1]], [r[2] for r in rows],
                               strict=True)]
    assert rows[-1][2] == head
    assert cf.r2 is not None
    assert sorted(cf.r2.objects) == [r[5] for r in rows]


def test_first_publish_sets_the_alarm_and_the_alarm_archives(cf: FakeCloudflare) -> None:
    """setAlarm once, `interval_ms` after the first write; alarm() writes R2 segments under
    their keys and the D1 index, holding exactly the published messages."""
    before = now_ms()
    published = publish(cf, 10)
    storage = cf.room("lobby").state.storage
    assert len(storage.alarm_sets) == 1
    alarm = get_alarm(cf)
    assert alarm is not None
    assert before + INTERVAL_MS <= alarm <= now_ms() + INTERVAL_MS
    assert cf.fire_due_alarms(alarm - 1) == []  # not due yet
    constructions = cf.room("lobby").constructions
    assert cf.fire_due_alarms(alarm) == ["lobby"]
    if cf.hibernate_every_event:
        assert cf.room("lobby").constructions == constructions + 1  # __init__ ran for the alarm
    assert cf.r2 is not None
    assert cf.d1 is not None
    assert segment_rows(cf) == [
        ("lobby", a, b, b - a + 1, len(cf.r2.objects[segment_key("lobby", a, b)]),
         segment_key("lobby", a, b))
        for a, b in [(1, 4), (5, 8), (9, 10)]
    ]
    assert segment_key("lobby", 1, 4) == "rooms/lobby/segments/000000000001-000000000004.ndjson.gz"
    assert archived_frames(cf) == published
    assert cf.d1.sqlite.execute(
        "SELECT name, head_seq, archived_seq, member_count FROM rooms").fetchall() == [
        ("lobby", 10, 10, 1)]
    assert get_alarm(cf) is None  # nothing waits, so nothing is scheduled


def test_an_r2_put_failure_is_retried_with_backoff_into_one_segment(
    cf: FakeCloudflare, capsys: pytest.CaptureFixture[str]
) -> None:
    """The put fails: nothing is indexed, the alarm is set `retry_base_ms` on; the retry writes
    exactly one segment for the same range, with no gap."""
    published = publish(cf, 3)
    assert cf.r2 is not None
    cf.r2.fail_puts = 1
    capsys.readouterr()
    before = now_ms()
    cf.fire_alarm("lobby")
    assert (cf.r2.objects, segment_rows(cf)) == ({}, [])
    alarm = get_alarm(cf)
    assert alarm is not None
    assert before + RETRY_BASE_MS <= alarm <= now_ms() + RETRY_BASE_MS
    failed = [r for r in log_records(capsys.readouterr().out) if r["event"] == "archive_failed"]
    assert [(r["failures"], r["code"].split()[0]) for r in failed] == [(1, "JsException")]
    cf.fire_alarm("lobby")
    assert [r[1:3] for r in segment_rows(cf)] == [(1, 3)]
    assert_no_gap(cf, 3)
    assert archived_frames(cf) == published
    assert get_alarm(cf) is None


def test_a_d1_failure_after_the_r2_put_leaves_one_segment_row(cf: FakeCloudflare) -> None:
    """The object is in R2 but the index write fails; the retry puts identical bytes under the
    same key and records one row."""
    published = publish(cf, 3)
    assert cf.r2 is not None
    assert cf.d1 is not None
    cf.d1.fail_batches = 1
    before = now_ms()
    cf.fire_alarm("lobby")
    key = segment_key("lobby", 1, 3)
    assert (list(cf.r2.objects), segment_rows(cf)) == ([key], [])
    first_bytes = cf.r2.objects[key]
    alarm = get_alarm(cf)
    assert alarm is not None
    assert alarm >= before + RETRY_BASE_MS
    cf.fire_alarm("lobby")
    assert cf.r2.puts == 2
    assert cf.r2.objects[key] == first_bytes  # deterministic segment bytes
    assert [r[1:4] for r in segment_rows(cf)] == [(1, 3, 3)]
    assert archived_frames(cf) == published
    assert cf.d1.sqlite.execute("SELECT archived_seq FROM rooms").fetchall() == [(3,)]


def test_backoff_doubles_while_failures_last_then_resets(cf: FakeCloudflare) -> None:
    """Each consecutive failure doubles the delay; a success archives everything once."""
    publish(cf, 5)
    assert cf.r2 is not None
    cf.r2.fail_puts = 3
    for failures in (1, 2, 3):
        before = now_ms()
        cf.fire_alarm("lobby")
        delay = RETRY_BASE_MS * 2 ** (failures - 1)
        alarm = get_alarm(cf)
        assert alarm is not None
        assert before + delay <= alarm <= now_ms() + delay
    cf.fire_alarm("lobby")
    assert [r[1:3] for r in segment_rows(cf)] == [(1, 4), (5, 5)]
    assert_no_gap(cf, 5)
    publish(cf, 1, start=5)  # a later write schedules a normal alarm again
    alarm = get_alarm(cf)
    assert alarm is not None
    assert alarm <= now_ms() + INTERVAL_MS


def test_pruned_history_is_served_from_r2_on_resume_and_history(cf: FakeCloudflare) -> None:
    """Past the retained rows, a resume from 0 and history pages return exactly the originals,
    in order, across the boundary between R2 and the object's own rows."""
    published = publish(cf, 9)
    cf.fire_alarm("lobby")
    assert retained_seqs(cf) == [8, 9]  # retain_messages=2; the rest only in R2
    reader = join(cf, "reader", since=0)
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


def test_resume_from_zero_after_several_archive_rounds(cf: FakeCloudflare) -> None:
    """Archive, prune, publish more, archive again: a new member still gets 1..head in order,
    then live messages."""
    published = publish(cf, 6)
    cf.fire_alarm("lobby")
    published += publish(cf, 5, start=6)
    cf.fire_alarm("lobby")
    assert retained_seqs(cf) == [10, 11]
    assert_no_gap(cf, 11)
    reader = join(cf, "reader", since=0)
    assert reader.frames("message") == published
    published += publish(cf, 1, start=11)
    assert reader.frames("message") == published


def test_an_unexpected_alarm_failure_is_logged_and_the_alarm_kept(
    cf: FakeCloudflare, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug in the alarm path logs one line without details; an alarm stays set, so the room
    archives later even if nobody writes again."""
    publish(cf, 2)

    async def broken(self: RoomHost[Any]) -> None:
        raise RuntimeError("secret detail")

    monkeypatch.setattr(RoomHost, "alarm", broken)
    capsys.readouterr()
    before = now_ms()
    cf.fire_alarm("lobby")
    output = capsys.readouterr().out
    assert "secret detail" not in output
    assert [r for r in log_records(output) if r["event"] == "unexpected_error"] == [
        {"event": "unexpected_error", "handler": "alarm", "error": "RuntimeError",
         "room": "lobby"}]
    alarm = get_alarm(cf)
    assert alarm is not None
    assert alarm >= before + RETRY_MAX_MS
    monkeypatch.undo()
    cf.fire_alarm("lobby")
    assert_no_gap(cf, 2)


def test_limits_set_on_the_class_win_over_the_room_limits_var() -> None:
    """Tests (and embedders) fix limits on a subclass; the var is then not read."""

    class Fixed(Room):
        limits = Limits(burst=500, max_history_page=2)

    cf = make_cloudflare(room_class=Fixed,
                         extra_vars={"ARCHIVE_POLICY": json.dumps(POLICY),
                                     "ROOM_LIMITS": json.dumps(LIMITS)})
    publish(cf, 5)
    reader = join(cf, "reader", since=None)
    reader.send({"type": "hello"})
    reader.send({"type": "history", "limit": 50})
    (page,) = reader.take("history")
    assert [m["seq"] for m in page["messages"]] == [4, 5]
    check_clean(cf)


def test_settings_vars_may_be_json_objects() -> None:
    """docs/cloudflare.md §5.5: a var written as a JSON object in wrangler.jsonc reaches Python as a
    JsProxy."""
    cf = make_cloudflare(extra_vars={"ARCHIVE_POLICY": JsObject(POLICY),
                                     "ROOM_LIMITS": JsObject(LIMITS)})
    publish(cf, 5)
    cf.fire_alarm("lobby")
    assert [r[1:3] for r in segment_rows(cf)] == [(1, 4), (5, 5)]  # max_segment=4
    check_clean(cf)


@pytest.mark.parametrize("var", ["ROOM_LIMITS", "ARCHIVE_POLICY"])
def test_a_bad_settings_var_fails_every_event_and_says_which(var: str) -> None:
    """Strict config: an unknown field fails the object's construction, not a user's message."""
    cf = make_cloudflare(extra_vars={var: json.dumps({"no_such_setting": 1})})
    result = cf.upgrade("lobby", token("alice"))
    assert result.status == 500
    assert "no_such_setting" not in result.body
    assert [str(e).split()[0] for e in cf.escaped] == [var]
    cf.escaped.clear()
    check_clean(cf)


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

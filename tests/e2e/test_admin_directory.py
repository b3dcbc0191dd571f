"""The admin API tells the truth (docs/admin.md): rooms listed from their first message with
their real figures, a sortable, filterable, paged list, message reads bounded by the head and
audited, and a per-room audit log. On every runtime."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.e2e.conftest import STRICT, ServiceBase, eventually, recv_until
from tests.e2e.test_admin import AUTH, call, fill
from tests.workerd_service import Profile

pytestmark = pytest.mark.integration


@pytest.fixture
def profile() -> Profile:
    """Archive only on demand, 5 messages a segment, 2 rows kept (see STRICT)."""
    return STRICT


async def listed(service: ServiceBase, name: str) -> list[dict[str, Any]]:
    _, page = await call(service, "GET", f"/admin/rooms?q={name}")
    return [r for r in page["rooms"] if r["name"] == name]


async def test_a_room_is_listed_from_its_first_message_with_its_real_figures(
    service: ServiceBase,
) -> None:
    """Joins alone write nothing and list nothing; the first message lists the room at once,
    with its creation time, members, sockets, head and retained rows as of that moment."""
    room = service.room("first")
    async with await service.connect(room, "alice") as alice, \
            await service.connect(room, "bob") as bob:
        await recv_until(alice, "welcome")
        await recv_until(bob, "welcome")
        assert await listed(service, room) == []
        before = int(time.time() * 1000)
        await alice.send(json.dumps({"type": "publish", "id": "m1", "body": "hello"}))
        ack = await recv_until(alice, "ack")
        message = await recv_until(bob, "message")
        rows = await eventually(lambda: listed(service, room), bool)
        assert len(rows) == 1
        row = rows[0]
        assert row["created_ms"] == row["last_activity_ms"] == message["sent_ms"]
        assert before - 5_000 <= row["created_ms"] <= int(time.time() * 1000) + 5_000
        assert (row["head_seq"], row["archived_seq"], row["rows_retained"]) == (ack["seq"], 0, 1)
        assert (row["member_count"], row["socket_count"]) == (2, 2)
        assert row["updated_ms"] >= row["created_ms"]
        # A second message does not touch the directory (never on the message path) ...
        await alice.send(json.dumps({"type": "publish", "id": "m2", "body": "again"}))
        await recv_until(alice, "ack")
        assert (await listed(service, room))[0]["head_seq"] == 1
    # ... an operator's inspection refreshes it: now nobody is left, and the head is 2.
    async with await service.connect(room, "carol") as carol:
        await recv_until(carol, "welcome")
        status, view = await call(service, "GET", f"/admin/rooms/{room}")
        assert status == 200
    assert (view["member_count"], view["socket_count"], view["head_seq"]) == (1, 1, 2)
    assert view["created_ms"] == row["created_ms"]
    row = (await listed(service, room))[0]
    assert (row["head_seq"], row["member_count"], row["socket_count"]) == (2, 1, 1)
    assert row["created_ms"] == view["created_ms"]


async def test_the_room_list_sorts_filters_and_pages(service: ServiceBase) -> None:
    """Every sort key in both orders, a name filter with its total, and keyset pages that
    together hold each matching room exactly once."""
    base = service.room("sort")
    heads = {f"{base}{i}": n for i, n in enumerate([3, 1, 4, 2, 5])}
    for name, count in heads.items():
        await fill(service, name, count)
        await call(service, "GET", f"/admin/rooms/{name}")  # refresh: head is the count
    for sort, key in [("name", "name"), ("head", "head_seq"), ("created", "created_ms"),
                      ("last_activity", "last_activity_ms"), ("members", "member_count"),
                      ("sockets", "socket_count")]:
        for order in ("asc", "desc"):
            seen: list[dict[str, Any]] = []
            cursor = ""
            for _ in range(10):
                status, page = await call(
                    service, "GET",
                    f"/admin/rooms?q={base}&sort={sort}&order={order}&limit=2{cursor}",
                )
                assert status == 200, page
                assert page["total"] == 5
                seen += page["rooms"]
                if page["next_cursor"] is None:
                    break
                cursor = f"&cursor={page['next_cursor']}"
            assert sorted(r["name"] for r in seen) == sorted(heads), (sort, order)
            keys = [(r[key], r["name"]) for r in seen]
            assert keys == sorted(keys, reverse=order == "desc"), (sort, order)
    _, page = await call(service, "GET", f"/admin/rooms?q={base}&sort=head&limit=1")
    assert page["rooms"][0]["name"] == f"{base}4"  # 5 messages, the most
    _, page = await call(service, "GET", f"/admin/rooms?q={base.upper()}1")
    assert [r["name"] for r in page["rooms"]] == [f"{base}1"]  # the filter ignores case
    _, page = await call(service, "GET", f"/admin/rooms?q={base}zzz")
    assert (page["rooms"], page["total"], page["next_cursor"]) == ([], 0, None)
    for bad in ("sort=size", "order=up", "q=a%20b", "sort=name&cursor=a%20b",
                "sort=head&cursor=lobby"):
        status, body = await call(service, "GET", f"/admin/rooms?{bad}")
        assert (status, body["error"]["code"]) == (400, "bad_request"), bad


async def test_message_reads_stop_at_the_head_span_storage_and_archive_and_are_audited(
    service: ServiceBase,
) -> None:
    """No arguments: the newest messages, nothing reported missing past the head. A read with
    bodies is audited; one without (`bodies=0`) gives sizes only and is not."""
    room = service.room("reads")
    await fill(service, room, 1)
    status, read = await call(service, "GET", f"/admin/rooms/{room}/messages")
    assert status == 200
    assert (read["head_seq"], read["first"], read["last"]) == (1, 1, 1)
    assert [m["body"] for m in read["messages"]] == ["b0"]
    assert read["missing"] == []
    status, read = await call(service, "GET", f"/admin/rooms/{room}/messages?first=1&last=100")
    assert ([m["seq"] for m in read["messages"]], read["last"], read["missing"]) == ([1], 1, [])
    await fill(service, room, 7, user="bob")  # 8 messages; the archive keeps 1..5, 6..8 ...
    await call(service, "POST", f"/admin/rooms/{room}/archive")  # ... and the room 7, 8
    status, read = await call(service, "GET", f"/admin/rooms/{room}/messages?bodies=0&count=4")
    assert [(m["seq"], m["body_chars"]) for m in read["messages"]] == [
        (5, 2), (6, 2), (7, 2), (8, 2)]
    assert all("body" not in m for m in read["messages"])
    status, read = await call(service, "GET", f"/admin/rooms/{room}/messages?first=3&count=3")
    assert [m["body"] for m in read["messages"]] == ["b1", "b2", "b3"]
    _, audit = await call(service, "GET", f"/admin/audit?room={room}")
    reads = [(e["action"], e["target"], json.loads(e["detail"])["count"])
             for e in audit["entries"] if e["action"] == "read_messages"]
    assert reads == [("read_messages", "3-5", 3), ("read_messages", "1-1", 1),
                     ("read_messages", "1-1", 1)]
    for bad in ("bodies=2", "count=0", "first=0", "first=9&last=2"):
        status, body = await call(service, "GET", f"/admin/rooms/{room}/messages?{bad}")
        assert (status, body["error"]["code"]) == (400, "bad_request"), bad
    status, body = await call(service, "GET", f"/admin/rooms/{service.room('none')}/messages")
    assert (status, body["error"]["code"]) == (404, "room_not_found")


async def test_the_audit_log_filters_by_room_and_pages(service: ServiceBase) -> None:
    room, other = service.room("aud"), service.room("aud")
    await fill(service, room, 1)
    await fill(service, other, 1)
    for action in ("close", "open", "close"):
        await call(service, "POST", f"/admin/rooms/{room}/{action}")
    await call(service, "POST", f"/admin/rooms/{other}/open")
    status, page = await call(service, "GET", f"/admin/audit?room={room}&limit=2")
    assert status == 200
    assert [e["action"] for e in page["entries"]] == ["close", "open"]
    status, rest = await call(
        service, "GET", f"/admin/audit?room={room}&limit=2&cursor={page['next_cursor']}"
    )
    assert [e["action"] for e in rest["entries"]] == ["close"]
    assert rest["next_cursor"] is None
    assert {e["room"] for e in page["entries"] + rest["entries"]} == {room}
    for bad in ("room=a%20b", "cursor=x", "cursor=0"):
        reply = await service.http("GET", f"/admin/audit?{bad}", AUTH)
        assert (reply.status, reply.json()["error"]["code"]) == (400, "bad_request"), bad


async def test_the_overview_sums_the_directory_and_has_live_figures_where_the_runtime_does(
    service: ServiceBase,
) -> None:
    """Totals over the directory on every runtime; live counters locally, null on Cloudflare
    (Analytics Engine holds them there)."""
    _, before = await call(service, "GET", "/admin/overview")
    room = service.room("overview")
    await fill(service, room, 3)
    await call(service, "GET", f"/admin/rooms/{room}")  # its row now says head 3
    status, after = await call(service, "GET", "/admin/overview")
    assert status == 200
    grew = {k: after["directory"][k] - before["directory"][k] for k in before["directory"]}
    assert (grew["rooms"], grew["messages"], grew["unarchived"]) == (1, 3, 3)
    assert after["now_ms"] >= before["now_ms"]
    if service.runtime == "workerd":
        assert after["live"] is None
    else:
        assert after["live"]["messages_published"] - before["live"]["messages_published"] == 3
        assert after["live"]["connections"] == 0
    status, body = await call(service, "POST", "/admin/overview")
    assert (status, body["error"]["code"]) == (405, "method_not_allowed")

"""The admin API over real HTTP, on every runtime: auth, inspection, actions, the archive."""

from __future__ import annotations

import json
from typing import Any

import pytest
import websockets

from rooms.protocol import CloseCode
from tests.conftest import timeout
from tests.e2e.conftest import (
    GATED,
    STRICT,
    ServiceBase,
    close_frame,
    recv_until,
    use_profile,
)
from tests.workerd_service import ADMIN_TOKEN, Profile

pytestmark = pytest.mark.integration
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
def profile() -> Profile:
    """Archive only on demand, 5 messages a segment, 2 rows kept (see STRICT)."""
    return STRICT


async def call(service: ServiceBase, method: str, path: str,
               headers: dict[str, str] | None = None) -> tuple[int, Any]:
    reply = await service.http(method, path, AUTH if headers is None else headers)
    return reply.status, reply.json()


async def fill(service: ServiceBase, room: str, count: int, user: str = "alice") -> None:
    async with await service.connect(room, user) as ws:
        await recv_until(ws, "welcome")
        for i in range(count):
            await ws.send(json.dumps({"type": "publish", "id": f"{room}{i}", "body": f"b{i}"}))
            await recv_until(ws, "ack")


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"},
                                     {"Authorization": ADMIN_TOKEN}],
                         ids=["none", "wrong", "no-bearer"])
async def test_admin_routes_refuse_missing_or_wrong_tokens_alike(
    service: ServiceBase, headers: dict[str, str]
) -> None:
    """No token, a wrong one, or a malformed header: the same 401, no hint."""
    for path in ("/admin/rooms", "/admin/rooms/x", "/admin/audit"):
        status, body = await call(service, "GET", path, headers)
        assert status == 401
        assert body == {"error": {"code": "unauthorized", "message": "admin credentials required"}}


@use_profile(GATED)
async def test_admin_is_closed_when_no_token_is_configured(service: ServiceBase) -> None:
    """Without ADMIN_TOKEN the API refuses everyone."""
    status, _ = await call(service, "GET", "/admin/rooms")
    assert status == 401


async def test_force_archive_then_list_rooms_segments_and_read_back(service: ServiceBase) -> None:
    """Archive on demand; the room list, segments and archived messages reflect it exactly."""
    base = service.room("arch")
    alpha, beta = f"{base}a", f"{base}b"
    await fill(service, alpha, 12)
    await fill(service, beta, 3)
    status, result = await call(service, "POST", f"/admin/rooms/{alpha}/archive")
    assert status == 200
    assert result["result"]["archived"] == [[1, 5], [6, 10], [11, 12]]
    await call(service, "POST", f"/admin/rooms/{beta}/archive")
    status, page = await call(service, "GET", f"/admin/rooms?limit=1&q={base}")
    assert status == 200
    assert len(page["rooms"]) == 1
    assert page["total"] == 2
    status, rest = await call(
        service, "GET", f"/admin/rooms?limit=5&q={base}&cursor={page['next_cursor']}"
    )
    names = [r["name"] for r in page["rooms"] + rest["rooms"]]
    assert sorted(names) == [alpha, beta]
    assert rest["next_cursor"] is None
    summary = next(r for r in page["rooms"] + rest["rooms"] if r["name"] == alpha)
    # The archive run wrote the row: archived up to the head, 2 rows kept (STRICT).
    assert (summary["head_seq"], summary["archived_seq"], summary["rows_retained"]) == (12, 12, 2)
    status, segs = await call(service, "GET", f"/admin/rooms/{alpha}/segments")
    assert [(s["first_seq"], s["last_seq"], s["count"]) for s in segs["segments"]] == [
        (1, 5, 5), (6, 10, 5), (11, 12, 2)]
    status, read = await call(service, "GET", f"/admin/rooms/{alpha}/messages?first=4&last=8")
    assert [m["body"] for m in read["messages"]] == ["b3", "b4", "b5", "b6", "b7"]
    assert read["missing"] == []
    # Across the archive (1..10) and the room's own rows (11, 12) in one read.
    status, read = await call(service, "GET", f"/admin/rooms/{alpha}/messages?first=9&last=12")
    assert [m["seq"] for m in read["messages"]] == [9, 10, 11, 12]
    assert read["missing"] == []


async def test_inspect_shows_members_counters_and_storage(service: ServiceBase) -> None:
    """Inspection reports who is connected and the room's durable counters."""
    room = service.room("gamma")
    async with await service.connect(room, "alice") as a1, \
            await service.connect(room, "alice") as a2:
        await recv_until(a1, "welcome")
        await recv_until(a2, "welcome")
        await a1.send(json.dumps({"type": "publish", "id": "1", "body": "x"}))
        await recv_until(a1, "ack")
        status, view = await call(service, "GET", f"/admin/rooms/{room}")
    assert status == 200
    assert [m["user_id"] for m in view["members"]] == ["alice"]
    sockets = view["members"][0]["sockets"]
    assert len(sockets) == 2
    assert sorted(s["messages_sent"] for s in sockets) == [0, 1]
    assert view["head_seq"] == 1
    assert view["archived_seq"] == 0
    assert view["rows_retained"] == 1
    assert view["dedupe_entries"] == 1
    assert view["storage_bytes"] > 0
    assert view["next_alarm_ms"] is not None
    assert view["wakes"] >= 1
    assert view["closed"] is False
    status, missing = await call(service, "GET", f"/admin/rooms/{service.room('never-used')}")
    assert (status, missing["error"]["code"]) == (404, "room_not_found")


async def test_disconnect_close_and_open_are_applied_and_audited(service: ServiceBase) -> None:
    """Operators can kick a user (4003) and close a room to messages; each action is audited."""
    room = service.room("delta")
    # workerd sends the 4003 close frame at once, but when the room closed the socket while
    # handling another event (this admin request) it ends the TCP connection only when the
    # object goes idle, ~10 s after its last event (a 1008 or 1009 close, made in the socket's
    # own event, ends it at once). So the test reads the close frame, not the end of the
    # connection, and bob's side gives up on the lingering connection after 1 s, not 10.
    async with await service.connect(room, "bob", close_timeout=timeout(1)) as bob, \
            await service.connect(room, "carol") as carol:
        await recv_until(bob, "welcome")
        await recv_until(carol, "welcome")
        status, kicked = await call(service, "POST", f"/admin/rooms/{room}/disconnect?user_id=bob")
        assert (status, kicked["result"]["sockets_closed"]) == (200, 1)
        assert (await close_frame(bob)).code == CloseCode.KICKED
        await call(service, "POST", f"/admin/rooms/{room}/close")
        await carol.send(json.dumps({"type": "publish", "id": "c1", "body": "hello?"}))
        error = await recv_until(carol, "error")
        assert (error["code"], error["ref"]) == ("room_closed", "c1")
        await call(service, "POST", f"/admin/rooms/{room}/open")
        await carol.send(json.dumps({"type": "publish", "id": "c1", "body": "hello?"}))
        assert (await recv_until(carol, "ack"))["seq"] == 1
    status, audit = await call(service, "GET", "/admin/audit")
    # The audit log is the service's; on workerd it holds the other tests' actions too.
    actions = [(e["action"], e["room"], e["target"]) for e in reversed(audit["entries"])
               if e["room"] == room]
    assert actions == [("disconnect", room, "bob"), ("close", room, None),
                       ("open", room, None)]


async def test_bad_admin_requests_get_the_error_shape(service: ServiceBase) -> None:
    """Wrong methods, bad parameters and unknown routes answer with codes, not tracebacks."""
    cases = [
        ("POST", "/admin/rooms", 405, "method_not_allowed"),
        ("GET", "/admin/rooms/alpha/archive", 405, "method_not_allowed"),
        ("GET", "/admin/rooms?limit=0", 400, "bad_request"),
        ("GET", "/admin/rooms?cursor=zzz", 400, "bad_request"),
        ("GET", "/admin/rooms/alpha/messages?first=5&last=2", 400, "bad_request"),
        ("GET", "/admin/rooms/alpha/messages?first=1&last=5000", 400, "bad_request"),
        ("POST", "/admin/rooms/alpha/disconnect", 400, "bad_request"),
        ("GET", "/admin/nothing", 404, "not_found"),
        ("GET", "/admin/rooms/bad%20name", 400, "bad_room_name"),
    ]
    for method, path, status, code in cases:
        got_status, body = await call(service, method, path)
        assert (got_status, body["error"]["code"]) == (status, code), path


async def test_kicked_user_can_resume_without_loss(service: ServiceBase) -> None:
    """A disconnect is not a ban: the user reconnects with since and misses nothing."""
    room = service.room("eps")
    await fill(service, room, 4)
    async with await service.connect(room, "zed", since=2) as ws:
        welcome = await recv_until(ws, "welcome")
        assert welcome["resume"]["complete"] is True
        assert [(await recv_until(ws, "message"))["seq"] for _ in range(2)] == [3, 4]
    with pytest.raises(websockets.InvalidStatus):
        await websockets.connect(service.url(room), open_timeout=timeout(15))


async def test_a_timed_ban_disconnects_and_refuses_the_user_and_is_audited(
    service: ServiceBase,
) -> None:
    """An operator's disconnect was no ban: the user came straight back. `ban` closes the
    user's sockets (4003) and refuses their upgrades to this room for `duration_s`."""
    room = service.room("ban")
    async with await service.connect(room, "mallory", close_timeout=timeout(1)) as mallory, \
            await service.connect(room, "carol") as carol:
        await recv_until(mallory, "welcome")
        await recv_until(carol, "welcome")
        status, banned = await call(
            service, "POST", f"/admin/rooms/{room}/ban?user_id=mallory&duration_s=600"
        )
        assert status == 200
        assert banned["result"]["sockets_closed"] == 1
        assert banned["result"]["until_ms"] > 0
        assert (await close_frame(mallory)).code == CloseCode.KICKED
        with pytest.raises(websockets.InvalidStatus) as refused:
            await service.connect(room, "mallory")
        assert refused.value.response.status_code == 403
        assert json.loads(refused.value.response.body)["error"]["code"] == "banned"
        async with await service.connect(room, "dave") as dave:  # others still welcome
            await recv_until(dave, "welcome")
        await carol.send(json.dumps({"type": "publish", "id": "c", "body": "still here"}))
        assert (await recv_until(carol, "ack"))["seq"] == 1
    _, view = await call(service, "GET", f"/admin/rooms/{room}")
    assert view["bans"] == [{"user_id": "mallory", "until_ms": banned["result"]["until_ms"]}]
    for bad in ("user_id=mallory&duration_s=5", "user_id=mallory&duration_s=99999999", "x=1"):
        status, error = await call(service, "POST", f"/admin/rooms/{room}/ban?{bad}")
        assert (status, error["error"]["code"]) == (400, "bad_request")
    status, audit = await call(service, "GET", "/admin/audit")
    bans = [e for e in audit["entries"] if e["room"] == room and e["action"] == "ban"]
    assert [(e["target"], json.loads(e["detail"])["until_ms"]) for e in bans] == [
        ("mallory", banned["result"]["until_ms"])
    ]

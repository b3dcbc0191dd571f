"""Edits, deletes, reactions and read state through real sockets, on every runtime
(docs/protocol.md, "Message lifecycle"): one gapless order for everyone, v1 clients included,
resumes that see each event once, deleted bodies served by no read, read state per user."""

from __future__ import annotations

import json
import uuid
import weakref
from typing import Any

import pytest
import websockets

from tests.e2e.conftest import ServiceBase, recv_json, recv_until, replay

pytestmark = pytest.mark.integration


# Frames a test read while waiting for something else, per socket, in arrival order.
# Keyed by the socket itself, weakly: an `id()` is reused once its socket is freed, and a new
# socket then inherited an earlier test's held frames (a workerd run saw seqs 1-3 twice).
_held: weakref.WeakKeyDictionary[websockets.ClientConnection, list[dict[str, Any]]] = (
    weakref.WeakKeyDictionary()
)


async def send(ws: websockets.ClientConnection, frame: dict[str, Any]) -> dict[str, Any]:
    """Send a frame that is answered with an ack or an error; return that answer (frames that
    arrive before it are kept for `messages`)."""
    await ws.send(json.dumps(frame))
    while True:
        answer = await recv_json(ws)
        if answer["type"] in ("ack", "error"):
            return answer
        _held.setdefault(ws, []).append(answer)


async def messages(ws: websockets.ClientConnection, count: int) -> list[dict[str, Any]]:
    """The next ``count`` message frames of ``ws``, held ones first."""
    held = _held.pop(ws, [])
    got = [f for f in held if f["type"] == "message"]
    while len(got) < count:
        frame = await recv_json(ws)
        if frame["type"] == "message":
            got.append(frame)
    _held[ws] = got[count:]
    return got[:count]


async def history(ws: websockets.ClientConnection, **fields: Any) -> dict[str, Any]:
    await ws.send(json.dumps({"type": "history", **fields}))
    return await recv_until(ws, "history")


async def test_events_reach_every_socket_in_one_gapless_order(service: ServiceBase) -> None:
    """An edit, two reactions and a delete: each acked with the next seq, and both sockets
    receive the same stream; a plain message is still exactly the v1 frame."""
    room = service.room("life")
    async with await service.connect(room, "alice") as alice, \
            await service.connect(room, "bob") as bob:
        await recv_until(alice, "welcome")
        await recv_until(bob, "welcome")
        answers = [
            await send(alice, {"type": "publish", "id": "m1", "body": "helo"}),
            await send(alice, {"type": "edit", "id": "e1", "target": 1, "body": "hello"}),
            await send(bob, {"type": "react", "id": "r1", "target": 1, "emoji": "👍"}),
            await send(alice, {"type": "react", "id": "r2", "target": 1, "emoji": "👍"}),
            await send(bob, {"type": "react", "id": "r3", "target": 1, "emoji": "👍",
                             "remove": True}),
            await send(alice, {"type": "publish", "id": "m2", "body": "bye"}),
            await send(alice, {"type": "delete", "id": "d1", "target": 6}),
        ]
        assert [(a["type"], a["seq"]) for a in answers] == [("ack", s) for s in range(1, 8)]
        streams = [await messages(alice, 7), await messages(bob, 7)]
        assert streams[0] == streams[1]
        stream = streams[0]
        assert set(stream[0]) == {"type", "seq", "id", "user_id", "name", "body", "sent_ms"}
        assert [(m["seq"], m.get("kind"), m.get("target"), m.get("emoji"), m["body"])
                for m in stream] == [
            (1, None, None, None, "helo"), (2, "edit", 1, None, "hello"),
            (3, "react", 1, "👍", ""), (4, "react", 1, "👍", ""), (5, "unreact", 1, "👍", ""),
            (6, None, None, None, "bye"), (7, "delete", 6, None, "")]
        folded = await history(bob, fold=True)
        assert folded["as_of"] == 7
        assert [(m["seq"], m["body"], m.get("edits", 0), m.get("deleted", False),
                 m.get("reactions", [])) for m in folded["messages"]] == [
            (1, "hello", 1, False, [{"emoji": "👍", "count": 1, "mine": False}]),
            (6, "", 0, True, [])]
        # Refusals name their reason; the socket stays usable.
        assert (await send(bob, {"type": "edit", "id": "x1", "target": 1, "body": "mine"}))[
            "code"] == "not_author"
        assert (await send(bob, {"type": "react", "id": "x2", "target": 1, "emoji": "<b>"}))[
            "code"] == "bad_emoji"
        assert (await send(bob, {"type": "react", "id": "x3", "target": 2, "emoji": "👍"}))[
            "code"] == "target_not_found"
        assert (await send(bob, {"type": "react", "id": "x4", "target": 6, "emoji": "👍"}))[
            "code"] == "target_deleted"


async def test_a_resume_sees_each_edit_once_and_in_order_even_across_a_restart(
    service: ServiceBase,
) -> None:
    """A client that left after seq 1 resumes from 1 and gets the edits after it, once; after
    the service restarts, a resume from 0 still brings them, the deleted body blank."""
    room = service.room("resume")
    secret = f"secret-{uuid.uuid4().hex}"
    async with await service.connect(room, "alice") as alice:
        await recv_until(alice, "welcome")
        await send(alice, {"type": "publish", "id": "m1", "body": "first draft"})
        async with await service.connect(room, "bob", since=1) as bob:
            await recv_until(bob, "welcome")
        for i in range(2):
            await send(alice, {"type": "edit", "id": f"e{i}", "target": 1, "body": f"draft {i}"})
        await send(alice, {"type": "publish", "id": "m2", "body": secret})
        await send(alice, {"type": "delete", "id": "d1", "target": 4})
        # The edit retransmitted after a lost ack: the same seq, nothing new.
        again = await send(alice, {"type": "edit", "id": "e0", "target": 1, "body": "draft 0"})
        assert (again["seq"], again["duplicate"]) == (2, True)
    welcome, replayed = await replay(service, room, since=1)
    assert welcome["resume"]["complete"] is True
    assert [(m["seq"], m.get("kind"), m["body"]) for m in replayed] == [
        (2, "edit", "draft 0"), (3, "edit", "draft 1"), (4, None, ""), (5, "delete", "")]
    assert replayed[2]["deleted"] is True
    await service.restart()  # type: ignore[attr-defined]
    welcome, replayed = await replay(service, room, since=0)
    assert [m["seq"] for m in replayed] == [1, 2, 3, 4, 5]
    assert secret not in json.dumps(replayed)


async def test_a_v1_client_keeps_working_beside_lifecycle_events(service: ServiceBase) -> None:
    """A client that sends only v1 frames: its stream stays gapless, every frame type it gets is
    a v1 type, its history pages hold every seq, and its own publishes work as before."""
    room = service.room("v1")
    async with await service.connect(room, "old", since=None) as old, \
            await service.connect(room, "alice") as alice:
        await old.send(json.dumps({"type": "hello", "since": 0}))
        await recv_until(alice, "welcome")
        await send(alice, {"type": "publish", "id": "m1", "body": "one"})
        await send(alice, {"type": "edit", "id": "e1", "target": 1, "body": "uno"})
        await send(alice, {"type": "react", "id": "r1", "target": 1, "emoji": "🎉"})
        await send(alice, {"type": "delete", "id": "d1", "target": 1})
        await alice.send(json.dumps({"type": "read", "seq": 4}))
        await recv_until(alice, "read")
        assert (await send(old, {"type": "publish", "id": "o1", "body": "still here"}))[
            "seq"] == 5
        seen = _held.pop(old, [])  # what came before the ack
        while len([f for f in seen if f["type"] == "message"]) < 5:
            seen.append(await recv_json(old))
        assert {f["type"] for f in seen} <= {"welcome", "presence", "message", "ack"}
        assert [f["seq"] for f in seen if f["type"] == "message"] == [1, 2, 3, 4, 5]
        page = await history(old)
        assert [m["seq"] for m in page["messages"]] == [1, 2, 3, 4, 5]
        assert "one" not in [m["body"] for m in page["messages"]]  # deleted: blank for v1 too


async def test_read_state_is_synced_across_one_users_sockets_and_no_one_elses(
    service: ServiceBase,
) -> None:
    """Reading on the phone moves the laptop's unread count; the other member hears nothing;
    a new socket's welcome carries the read seq and the unread count."""
    room = service.room("read")
    async with await service.connect(room, "alice") as alice, \
            await service.connect(room, "bob") as phone, \
            await service.connect(room, "bob") as laptop:
        for ws in (alice, phone, laptop):
            await recv_until(ws, "welcome")
        for i in range(3):
            await send(alice, {"type": "publish", "id": f"m{i}", "body": f"{i}"})
        await phone.send(json.dumps({"type": "read", "seq": 2}))
        assert await recv_until(phone, "read") == {"type": "read", "seq": 2, "unread": 1}
        assert await recv_until(laptop, "read") == {"type": "read", "seq": 2, "unread": 1}
        await alice.send(json.dumps({"type": "ping"}))
        assert (await recv_until(alice, "pong"))["type"] == "pong"  # and no read before it
        async with await service.connect(room, "bob", since=3) as tablet:
            welcome = await recv_until(tablet, "welcome")
            assert (welcome["read"], welcome["unread"]) == (2, 1)
        await laptop.send(json.dumps({"type": "read", "seq": 3}))
        assert await recv_until(phone, "read") == {"type": "read", "seq": 3, "unread": 0}
    async with await service.connect(room, "carol") as carol:
        welcome = await recv_until(carol, "welcome")
        assert (welcome["read"], welcome["unread"]) == (0, 3)


async def test_a_deleted_body_is_served_by_no_read(service: ServiceBase) -> None:
    """Live, replay, raw and folded history, and the admin API: after the ack, no body."""
    room = service.room("gone")
    secret = f"secret-{uuid.uuid4().hex}"
    async with await service.connect(room, "alice") as alice, \
            await service.connect(room, "bob") as bob:
        await recv_until(alice, "welcome")
        await recv_until(bob, "welcome")
        await send(alice, {"type": "publish", "id": "m1", "body": f"{secret} v0"})
        await send(alice, {"type": "edit", "id": "e1", "target": 1, "body": f"{secret} v1"})
        await send(alice, {"type": "publish", "id": "m2", "body": "kept"})
        await messages(bob, 3)
        await send(alice, {"type": "delete", "id": "d1", "target": 1})
        (event,) = await messages(bob, 1)
        assert secret not in json.dumps(event)
        reads = [await history(bob), await history(bob, fold=True)]
        _, replayed = await replay(service, room, since=0)
        admin = (await service.admin("GET", f"/admin/rooms/{room}/messages")).json()
        assert [m["body"] for m in admin["messages"]] == ["", "", "kept", ""]
        assert secret not in json.dumps([reads, replayed, admin])
        view = (await service.admin("GET", f"/admin/rooms/{room}")).json()
        assert view["events"] == {"edit": 1, "delete": 1, "react": 0, "unreact": 0}

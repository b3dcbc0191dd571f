"""A room's promises through real sockets, on every runtime: one gapless order, resume, restart,
idempotent publishing, presence by user, and bad frames that hurt nobody else."""

from __future__ import annotations

import asyncio
import json
from typing import Any
from unittest.mock import ANY

import pytest
import websockets

from rooms.protocol import PING_TEXT, CloseCode
from tests.e2e.conftest import (
    GATED,
    STRICT,
    ServiceBase,
    closed_by_server,
    eventually,
    publish,
    recv_json,
    recv_until,
    replay,
    use_profile,
)

pytestmark = pytest.mark.integration


async def publish_all(service: ServiceBase, room: str, user: str, count: int) -> list[int]:
    """Publish ``count`` messages without waiting, then collect the acked seqs in ack order."""
    async with await service.connect(room, user) as ws:
        await recv_until(ws, "welcome")
        for i in range(count):
            await ws.send(json.dumps({"type": "publish", "id": f"{user}-{i}", "body": f"{i}"}))
        seqs = []
        while len(seqs) < count:
            frame = await recv_json(ws)
            if frame["type"] == "ack":
                seqs.append(frame["seq"])
        return seqs


async def test_concurrent_publishers_all_see_one_gapless_order(service: ServiceBase) -> None:
    """Eight clients publishing at once; two watchers receive seq 1..N in the same order."""
    room = service.room("race")
    publishers, per_publisher = 8, 25
    total = publishers * per_publisher
    watchers = [await service.connect(room, f"watcher{i}") for i in range(2)]
    for w in watchers:
        await recv_until(w, "welcome")
    acks = await asyncio.gather(
        *(publish_all(service, room, f"user{i}", per_publisher) for i in range(publishers))
    )
    assert sorted(s for seqs in acks for s in seqs) == list(range(1, total + 1))
    streams = []
    for w in watchers:
        received: list[tuple[int, str]] = []
        while len(received) < total:
            frame = await recv_json(w)
            if frame["type"] == "message":
                received.append((frame["seq"], frame["id"]))
        streams.append(received)
        await w.close()
    assert [seq for seq, _ in streams[0]] == list(range(1, total + 1))
    assert streams[0] == streams[1]


async def test_client_that_drops_mid_stream_resumes_without_loss_or_repeat(
    service: ServiceBase,
) -> None:
    """A reader disconnects after 5 of 20 messages and resumes from its last seq."""
    room = service.room("resume")
    async with await service.connect(room, "writer") as writer:
        await recv_until(writer, "welcome")
        reader = await service.connect(room, "reader")
        await recv_until(reader, "welcome")
        for i in range(20):
            await writer.send(json.dumps({"type": "publish", "id": f"m{i}", "body": str(i)}))
        seen = []
        while len(seen) < 5:
            frame = await recv_json(reader)
            if frame["type"] == "message":
                seen.append(frame["seq"])
        await reader.close()
        for _ in range(20):
            await recv_until(writer, "ack")
        async with await service.connect(room, "reader", since=seen[-1]) as again:
            welcome = await recv_until(again, "welcome")
            assert welcome["resume"]["complete"] is True
            rest = [(await recv_until(again, "message"))["seq"] for _ in range(15)]
    assert seen + rest == list(range(1, 21))


def message(seq: int, id_: str, user: str, body: str) -> dict[str, Any]:
    """The fields of a `message` frame a test can know (``sent_ms`` is the room's clock)."""
    return {"type": "message", "seq": seq, "id": id_, "user_id": user, "name": user,
            "body": body, "sent_ms": ANY}


async def test_retransmit_is_acked_with_the_original_seq_and_stored_once(
    service: ServiceBase,
) -> None:
    """The same user re-sending an id (a lost ack) gets seq and `duplicate: true`, no broadcast."""
    room = service.room("idem")
    async with await service.connect(room, "alice") as alice, \
            await service.connect(room, "bob") as bob:
        await recv_until(alice, "welcome")
        await recv_until(bob, "welcome")
        assert await publish(alice, "m1", "first") == {
            "type": "ack", "id": "m1", "seq": 1, "duplicate": False}
        assert (await publish(alice, "m2", "second"))["seq"] == 2
        assert await publish(alice, "m1", "first, again") == {
            "type": "ack", "id": "m1", "seq": 1, "duplicate": True}
        # The dedupe is the room's, not the socket's: a reconnected page retransmits too.
        async with await service.connect(room, "alice", since=2) as again:
            await recv_until(again, "welcome")
            assert await publish(again, "m1", "first, from a new socket") == {
                "type": "ack", "id": "m1", "seq": 1, "duplicate": True}
        # Bob got each message once, the retransmits nothing; his own m1 is a message of its
        # own (ids are per user), acked and then broadcast like any other.
        assert [await recv_json(bob) for _ in range(2)] == [
            message(1, "m1", "alice", "first"), message(2, "m2", "alice", "second")]
        await bob.send(json.dumps({"type": "publish", "id": "m1", "body": "bob's first"}))
        assert await recv_json(bob) == {"type": "ack", "id": "m1", "seq": 3, "duplicate": False}
        assert await recv_json(bob) == message(3, "m1", "bob", "bob's first")
    welcome, stored = await replay(service, room)
    assert welcome["head"] == 3
    assert [(m["seq"], m["id"], m["body"]) for m in stored] == [
        (1, "m1", "first"), (2, "m2", "second"), (3, "m1", "bob's first")]


async def sockets_of(service: ServiceBase, room: str, user: str) -> int:
    """How many sockets ``user`` holds in ``room``, as the admin inspection sees it."""
    view = (await service.admin("GET", f"/admin/rooms/{room}")).json()
    return sum(len(m["sockets"]) for m in view["members"] if m["user_id"] == user)


async def test_a_user_with_two_sockets_is_one_member(service: ServiceBase) -> None:
    """`join` for a user's first socket only; `leave` only after their last socket closes."""
    room = service.room("presence")
    alice = {"user_id": "alice", "name": "alice"}
    bob = {"user_id": "bob", "name": "bob"}
    async with await service.connect(room, "bob") as b:
        assert (await recv_until(b, "welcome"))["presence"] == [bob]
        a1 = await service.connect(room, "alice")
        assert (await recv_json(a1))["presence"] == [alice, bob]
        assert await recv_json(b) == {"type": "presence", "event": "join", "member": alice}
        a2 = await service.connect(room, "alice")
        welcome = await recv_json(a2)
        assert (welcome["type"], welcome["presence"]) == ("welcome", [alice, bob])
        # Alice's second socket is announced to nobody: the next frame anyone gets is a message.
        await b.send(json.dumps({"type": "publish", "id": "after-a2", "body": "hi"}))
        assert (await recv_json(b))["type"] == "ack"
        for ws in (b, a1, a2):
            assert await recv_json(ws) == message(1, "after-a2", "bob", "hi")
        await a1.close()
        await eventually(lambda: sockets_of(service, room, "alice"), lambda n: n == 1)
        assert await sockets_of(service, room, "alice") == 1
        # Alice is still here through a2: no leave.
        await b.send(json.dumps({"type": "publish", "id": "after-a1", "body": "still here?"}))
        assert (await recv_json(b))["type"] == "ack"
        for ws in (b, a2):
            assert await recv_json(ws) == message(2, "after-a1", "bob", "still here?")
        await a2.close()
        assert await recv_json(b) == {"type": "presence", "event": "leave", "member": alice}
        async with await service.connect(room, "carol") as c:
            assert (await recv_until(c, "welcome"))["presence"] == [
                bob, {"user_id": "carol", "name": "carol"}]


async def test_signals_reach_the_others_only_and_are_never_stored(service: ServiceBase) -> None:
    """A `signal` (typing, say) is relayed to every other socket, not the sender's; no seq."""
    room = service.room("signal")
    async with await service.connect(room, "alice") as alice, \
            await service.connect(room, "bob") as bob:
        await recv_until(alice, "welcome")
        await recv_until(bob, "welcome")
        assert (await recv_json(alice))["event"] == "join"  # bob
        data = {"typing": True, "nested": [1, "two", None]}
        await alice.send(json.dumps({"type": "signal", "kind": "typing", "data": data}))
        assert await recv_json(bob) == {
            "type": "signal", "user_id": "alice", "kind": "typing", "data": data}
        # Alice's next frame is her own ack: her signal did not come back to her.
        await alice.send(json.dumps({"type": "publish", "id": "m", "body": "done typing"}))
        assert await recv_json(alice) == {"type": "ack", "id": "m", "seq": 1, "duplicate": False}
    welcome, stored = await replay(service, room)
    assert (welcome["head"], [m["id"] for m in stored]) == (1, ["m"])


async def test_a_since_ahead_of_the_room_is_named_and_nothing_is_replayed(
    service: ServiceBase,
) -> None:
    """A client that remembers more than the room holds is told so (`since_ahead`)."""
    room = service.room("ahead")
    async with await service.connect(room, "alice") as ws:
        await recv_until(ws, "welcome")
        await publish(ws, "m", "only one")
    async with await service.connect(room, "alice", since=7) as ws:
        welcome = await recv_json(ws)
        assert (welcome["type"], welcome["head"]) == ("welcome", 1)
        assert welcome["resume"] == {"since": 7, "complete": False, "missing": [],
                                     "reason": "since_ahead"}
        await ws.send(json.dumps({"type": "publish", "id": "n", "body": "next"}))
        # Nothing was replayed: the ack is the next frame.
        assert await recv_json(ws) == {"type": "ack", "id": "n", "seq": 2, "duplicate": False}


async def test_restart_mid_conversation_loses_nothing_acked(service: ServiceBase) -> None:
    """Stop the service mid-conversation and start it on the same storage: seq continues."""
    room = service.room("durable")
    async with await service.connect(room, "alice") as ws:
        await recv_until(ws, "welcome")
        for i in range(3):
            assert (await publish(ws, f"a{i}", f"before {i}"))["seq"] == i + 1
        await service.restart()  # type: ignore[attr-defined]
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await recv_until(ws, "never")
        if service.runtime == "workerd":
            # workerd goes down with wrangler dev's SIGTERM without a closing handshake (1006).
            assert closed.value.rcvd is None
        else:
            # The local runtime closes its sockets with 1001 when it shuts down.
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == CloseCode.GOING_AWAY
    async with await service.connect(room, "alice", since=1) as ws:
        welcome = await recv_until(ws, "welcome")
        assert welcome["head"] == 3
        assert [(await recv_until(ws, "message"))["body"] for _ in range(2)] == [
            "before 1", "before 2"]
        assert (await publish(ws, "after", "after restart"))["seq"] == 4
        assert await publish(ws, "a0", "retransmit") == {
            "type": "ack", "id": "a0", "seq": 1, "duplicate": True}


async def test_pings_are_answered_with_pong_before_and_after_joining(
    service: ServiceBase,
) -> None:
    """The exact ping text is answered by the platform (workerd's auto-response); any other
    spelling by the room. Neither is a message or a strike."""
    room = service.room("ping")
    async with await service.connect(room, "alice", since=None) as ws:
        await ws.send(PING_TEXT)  # not joined yet: the platform answers all the same
        assert await recv_json(ws) == {"type": "pong"}
        await ws.send(json.dumps({"type": "hello"}))
        assert (await recv_json(ws))["type"] == "welcome"
        for text in (PING_TEXT, '{ "type" : "ping" }', PING_TEXT):
            await ws.send(text)
            assert await recv_json(ws) == {"type": "pong"}
        assert (await publish(ws, "m", "after pings"))["seq"] == 1


# ------------------------------------------------------------------ bad frames

BAD_FRAMES: list[tuple[str | bytes, str, str | None]] = [
    ("{not json", "bad_json", None),
    (b"\x01\x02", "binary_not_supported", None),
    ("[1, 2]", "bad_frame", None),
    ('{"type": 5}', "bad_frame", None),
    ('{"type": "publish", "id": 5, "body": "x"}', "bad_frame", None),
    ('{"type": "history", "limit": 0}', "bad_frame", None),
    ('{"type": "shout", "body": "x"}', "unknown_type", None),
    (json.dumps({"type": "publish", "id": "long", "body": "y" * 4001}), "body_too_long", "long"),
    ('{"type": "hello"}', "already_joined", None),
]


async def test_every_bad_frame_gets_its_error_and_others_are_unaffected(
    service: ServiceBase,
) -> None:
    """Each class of bad frame is answered with its code; the socket stays open and usable."""
    room = service.room("bad")
    async with await service.connect(room, "good") as good, \
            await service.connect(room, "bad") as bad:
        await recv_until(good, "welcome")
        await recv_until(bad, "welcome")
        await recv_until(good, "presence")
        for frame, code, ref in BAD_FRAMES:
            await bad.send(frame)
            error = await recv_json(bad)
            assert (error["type"], error["code"], error["ref"]) == ("error", code, ref), frame
            assert isinstance(error["message"], str)
            assert error["message"]
            if frame == BAD_FRAMES[4][0]:  # the message names the field
                assert "$.id" in error["message"]
        # 9 strikes of 10: still open, and a good frame is processed (and takes a strike away).
        assert (await publish(bad, "ok", "still here"))["seq"] == 1
        assert await recv_json(good) == message(1, "ok", "bad", "still here")
        assert (await publish(good, "g", "fine"))["seq"] == 2
        assert await recv_json(good) == message(2, "g", "good", "fine")
    async with await service.connect(room, "late", since=None) as late:
        await late.send(json.dumps({"type": "publish", "id": "early", "body": "x"}))
        error = await recv_json(late)
        assert (error["type"], error["code"]) == ("error", "hello_required")
        await late.send(json.dumps({"type": "hello", "since": 1}))
        welcome = await recv_json(late)
        assert (welcome["type"], welcome["head"]) == ("welcome", 2)
        assert (await recv_json(late))["id"] == "g"


async def test_too_many_bad_frames_close_with_1008_and_others_are_unaffected(
    service: ServiceBase,
) -> None:
    """Past max_strikes (10) refused frames the socket is closed with 1008, policy violation."""
    room = service.room("strikes")
    async with await service.connect(room, "good") as good, \
            await service.connect(room, "bad") as bad:
        await recv_until(good, "welcome")
        await recv_until(bad, "welcome")
        for _ in range(11):
            await bad.send("{bad")
        codes = [(await recv_json(bad))["code"] for _ in range(11)]
        assert codes == ["bad_json"] * 11
        with pytest.raises(websockets.ConnectionClosed) as closed:  # nothing else comes
            await recv_json(bad)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == CloseCode.POLICY_VIOLATION
        left = await recv_until(good, "presence")
        while left["event"] != "leave":
            left = await recv_until(good, "presence")
        assert left["member"]["user_id"] == "bad"
        assert (await publish(good, "g", "fine"))["seq"] == 1


@use_profile(GATED)
async def test_rate_limited_frames_are_refused_for_every_socket_of_the_user(
    service: ServiceBase,
) -> None:
    """Past the burst (3), a publish is refused with rate_limited and its id; nothing stored.

    The bucket is the user's: their other socket is refused too (another user's budget is their
    own: tests/e2e/test_abuse.py).
    """
    room = service.room("flood")
    async with await service.connect(room, "alice") as fast, \
            await service.connect(room, "alice") as other:
        await recv_until(fast, "welcome")
        await recv_until(other, "welcome")
        for i in range(4):
            await fast.send(json.dumps({"type": "publish", "id": f"f{i}", "body": "x"}))
        answers: list[dict[str, Any]] = []
        while len(answers) < 4:
            frame = await recv_json(fast)
            if frame["type"] in ("ack", "error"):
                answers.append(frame)
        assert [(a["type"], a.get("seq"), a.get("code")) for a in answers] == [
            ("ack", 1, None), ("ack", 2, None), ("ack", 3, None), ("error", None, "rate_limited")]
        assert answers[3]["ref"] == "f3"
        await other.send(json.dumps({"type": "publish", "id": "o0", "body": "x"}))
        refused = await recv_until(other, "error")
        assert (refused["code"], refused["ref"]) == ("rate_limited", "o0")
    _, stored = await replay(service, room)
    assert [m["id"] for m in stored] == ["f0", "f1", "f2"]


@use_profile(STRICT)
async def test_malformed_and_oversized_frames_leave_other_members_unaffected(
    service: ServiceBase,
) -> None:
    """Bad JSON gets an error frame; an oversized frame closes 1009; others keep chatting."""
    room = service.room("abuse")
    async with await service.connect(room, "good") as good, \
            await service.connect(room, "bad") as bad:
        await recv_until(good, "welcome")
        await recv_until(bad, "welcome")
        await bad.send("{not json")
        assert (await recv_until(bad, "error"))["code"] == "bad_json"
        await bad.send(b"\x01\x02")
        assert (await recv_until(bad, "error"))["code"] == "binary_not_supported"
        await bad.send(json.dumps({"type": "publish", "id": "x", "body": "y" * 3000}))
        assert (await recv_until(bad, "error"))["code"] == "frame_too_large"
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await recv_json(bad)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == CloseCode.MESSAGE_TOO_BIG
        left = await recv_until(good, "presence")
        while left["event"] != "leave":
            left = await recv_until(good, "presence")
        assert left["member"]["user_id"] == "bad"
        await good.send(json.dumps({"type": "publish", "id": "g", "body": "fine"}))
        assert (await recv_until(good, "ack"))["seq"] == 1


@use_profile(STRICT)
async def test_frame_far_over_the_limit_is_refused_with_1009(service: ServiceBase) -> None:
    """A frame far beyond max_frame_bytes (2048) is closed with 1009 too.

    Locally aiohttp refuses frames over 4 x max_frame_bytes itself, without buffering them;
    workerd hands the room anything up to its own 32 MiB cap, and the room refuses it (with a
    frame_too_large error first). Either way the client sees 1009.
    """
    room = service.room("huge")
    async with await service.connect(room, "huge") as ws:
        await recv_until(ws, "welcome")
        await ws.send("x" * 100_000)
        closed = await closed_by_server(ws)
        assert closed.rcvd is not None
        assert closed.rcvd.code == CloseCode.MESSAGE_TOO_BIG


# ------------------------------------------------------------------ HTTP


async def test_health_and_static_page(service: ServiceBase) -> None:
    """GET /health answers JSON; / serves public/index.html."""
    health = await service.http("GET", "/health")
    assert health.status == 200
    assert health.json() == {"status": "ok"}
    page = await service.http("GET", "/")
    assert page.status == 200
    assert "durable-rooms" in page.text


async def test_unknown_paths_get_the_error_shape(service: ServiceBase) -> None:
    """A missing static file (here /../etc/passwd, which the client sends as /etc/passwd)."""
    missing = await service.http("GET", "/../etc/passwd")
    assert missing.status == 404
    assert missing.json()["error"]["code"] == "not_found"

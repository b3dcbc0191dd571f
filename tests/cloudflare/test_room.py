"""The `Room` Durable Object through the front, awake and hibernating after every event."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from objects.room import Room
from rooms.host import RoomHost
from rooms.limits import Limits
from rooms.protocol import PING_TEXT, PONG_TEXT, CloseCode
from tests.cloudflare.fake_js import JsArray, Request, Response, WebSocketRequestResponsePair
from tests.cloudflare.runtime import FakeClient, FakeCloudflare
from tests.cloudflare.support import check_clean, log_records, make_cloudflare, token


def join(cf: FakeCloudflare, user: str, room: str = "lobby", **kwargs: Any) -> FakeClient:
    return cf.connect(room, token(user, user.title()), **kwargs)


def test_publish_is_acked_and_broadcast_to_both_sockets(cf_any: FakeCloudflare) -> None:
    """Seqs are 1, 2, 3; the sender gets acks and both sockets get every message once."""
    alice, bob = join(cf_any, "alice"), join(cf_any, "bob")
    for i in range(3):
        alice.publish(f"m{i}", f"hello {i}")
    assert [a["seq"] for a in alice.take("ack")] == [1, 2, 3]
    assert alice.seqs() == bob.seqs() == [1, 2, 3]
    assert bob.frames("message")[0]["body"] == "hello 0"
    assert bob.frames("message")[0]["name"] == "Alice"
    (joined,) = alice.frames("presence")
    assert (joined["event"], joined["member"]["user_id"]) == ("join", "bob")


def test_reconnect_with_since_replays_only_newer_messages(cf_any: FakeCloudflare) -> None:
    """A socket opened with since=2 gets exactly the messages after seq 2."""
    alice = join(cf_any, "alice")
    for i in range(4):
        alice.publish(f"m{i}", str(i))
    late = join(cf_any, "carol", since=2)
    (welcome,) = late.frames("welcome")
    assert (welcome["head"], welcome["resume"]["complete"]) == (4, True)
    assert late.seqs() == [3, 4]
    alice.publish("m4", "4")
    assert late.seqs() == [3, 4, 5]


def test_retransmit_is_acked_with_the_original_seq_and_stored_once(
    cf_any: FakeCloudflare,
) -> None:
    """Publishing the same id twice acks seq 1 twice and broadcasts it once."""
    alice, bob = join(cf_any, "alice"), join(cf_any, "bob")
    alice.publish("x", "once")
    alice.publish("x", "once again")
    assert alice.take("ack") == [
        {"type": "ack", "id": "x", "seq": 1, "duplicate": False},
        {"type": "ack", "id": "x", "seq": 1, "duplicate": True},
    ]
    assert [m["body"] for m in bob.frames("message")] == ["once"]


def test_socket_without_since_joins_on_hello(cf_any: FakeCloudflare) -> None:
    """Without since in the URL, the room waits for a hello frame."""
    alice = join(cf_any, "alice")
    alice.publish("a", "1")
    bob = join(cf_any, "bob", since=None)
    assert bob.frames("welcome") == []
    bob.send({"type": "hello", "since": 0})
    assert len(bob.frames("welcome")) == 1
    assert bob.seqs() == [1]


def test_bad_frames_get_error_frames_and_binary_frames_are_refused(
    cf_any: FakeCloudflare,
) -> None:
    """Bad JSON, unknown types and binary frames (an ArrayBuffer) are answered, not fatal."""
    alice = join(cf_any, "alice")
    alice.send("{not json")
    alice.send({"type": "teleport"})
    alice.send({"type": "publish", "id": "", "body": "x"})
    alice.send(b"\x00\x01binary")
    codes = [e["code"] for e in alice.take("error")]
    assert codes == ["bad_json", "unknown_type", "bad_frame", "binary_not_supported"]
    alice.publish("ok", "still here")
    assert alice.seqs() == [1]


def test_ping_is_answered_by_the_platform_without_waking_the_room(cf: FakeCloudflare) -> None:
    """The exact ping text gets the pong from the auto-response; no handler runs."""
    alice = join(cf, "alice")
    cf.hibernate()
    slot = cf.room("lobby")
    alice.send(PING_TEXT)
    assert alice.ws.inbox[-1] == PONG_TEXT
    assert slot.state.auto_responses_sent == 1
    assert slot.instance is None  # still hibernating


def test_auto_response_pair_is_registered_with_ping_and_pong_texts(cf: FakeCloudflare) -> None:
    """Every construction registers the pair, as a real WebSocketRequestResponsePair."""
    join(cf, "alice")
    cf.hibernate()
    join(cf, "bob")
    calls = cf.room("lobby").state.auto_response_calls
    assert len(calls) == 2
    for pair in calls:
        assert isinstance(pair, WebSocketRequestResponsePair)
        assert (pair.request, pair.response) == (PING_TEXT, PONG_TEXT)


def test_tags_are_a_js_array_and_the_attachment_a_json_string(cf_any: FakeCloudflare) -> None:
    """acceptWebSocket gets a JS Array of tags; every attachment written is a JSON str."""
    alice = join(cf_any, "alice")
    alice.publish("m", "hi")
    state = cf_any.room("lobby").state
    ((ws, tags),) = state.accept_calls
    assert ws is alice.server
    assert isinstance(tags, JsArray)
    assert [tag.split(":")[0] for tag in tags] == ["c", "u"]
    assert list(tags)[1] == "u:alice"
    writes = alice.server.attachment_writes
    assert writes
    assert all(isinstance(w, str) for w in writes)
    assert json.loads(writes[-1])["user_id"] == "alice"


def test_room_name_survives_hibernation_even_when_the_id_has_no_name(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The name read from the first upgrade is stored; a woken room still knows it."""
    cf = make_cloudflare(
        hibernate_every_event=True, id_has_name=False, extra_vars={"LOG_MESSAGES": "1"}
    )
    alice = join(cf, "alice", room="blue-room")
    capsys.readouterr()
    alice.publish("m", "hi")  # handled by a room woken with no URL and no ctx.id.name
    (published,) = [r for r in log_records(capsys.readouterr().out) if r["event"] == "publish"]
    assert published["room"] == "blue-room"
    bob = join(cf, "bob", room="blue-room")
    assert bob.frames("welcome")[0]["room"] == "blue-room"
    assert bob.seqs() == [1]
    check_clean(cf)


def test_client_close_announces_the_leave(cf_any: FakeCloudflare) -> None:
    """When a member's last socket closes, the others get a leave presence."""
    alice, bob = join(cf_any, "alice"), join(cf_any, "bob")
    bob.close()
    (left,) = [p for p in alice.frames("presence") if p["event"] == "leave"]
    assert left["member"]["user_id"] == "bob"
    assert set(left) == {"type", "event", "member"}
    assert cf_any.room("lobby").state.getWebSockets().length == 1


def test_close_is_answered_when_the_runtime_did_not(cf: FakeCloudflare) -> None:
    """A socket left CLOSING by the client's close frame gets our close in reply."""
    alice = join(cf, "alice")
    alice.close(4000, "going", runtime_answers=False)
    assert alice.close_received == (4000, "")


def test_closing_socket_is_not_a_member_after_a_wake(cf: FakeCloudflare) -> None:
    """getWebSockets still lists a CLOSING socket; the rebuilt room does not count it."""
    alice, bob = join(cf, "alice"), join(cf, "bob")
    bob.close(runtime_answers=False, deliver=False)  # CLOSING; the event has not arrived yet
    cf.hibernate()
    carol = join(cf, "carol")
    (welcome,) = carol.frames("welcome")
    assert [m["user_id"] for m in welcome["presence"]] == ["alice", "carol"]
    cf.deliver_close(bob)
    assert [p["event"] for p in alice.frames("presence")] == ["join", "join", "leave"]
    assert bob.close_received == (1000, "")  # our answer to the client's close


def test_socket_error_announces_the_leave(cf_any: FakeCloudflare) -> None:
    """webSocketError is handled like a close."""
    alice, bob = join(cf_any, "alice"), join(cf_any, "bob")
    bob.fail()
    assert [p["event"] for p in alice.frames("presence")] == ["join", "leave"]


def test_room_close_is_completed_by_the_client_echo(cf_any: FakeCloudflare) -> None:
    """A frame over the limit closes with 1009; the echoed close is then handled quietly."""
    alice, bob = join(cf_any, "alice"), join(cf_any, "bob")
    bob.send("x" * (Limits().max_frame_bytes + 1))
    assert bob.close_received == (CloseCode.MESSAGE_TOO_BIG, "frame too large")
    bob.echo_close()
    assert [p["event"] for p in alice.frames("presence")] == ["join", "leave"]


class TinyRoom(Room):
    limits = Limits(max_members=1)


def test_full_room_gets_403_room_full() -> None:
    """Past max_members distinct users, upgrades are refused with a JSON error."""
    cf = make_cloudflare(room_class=TinyRoom)
    join(cf, "alice")
    again = join(cf, "alice")  # the same user may open another socket
    refused = cf.upgrade("lobby", token("bob"))
    assert refused.status == 403
    assert refused.json()["error"]["code"] == "room_full"
    assert again.frames("welcome")
    check_clean(cf)


def test_room_without_forwarded_identity_gets_400(cf: FakeCloudflare) -> None:
    """A request that did not come through the front carries no identity."""
    stub = cf.namespace.getByName("lobby")
    request = Request.construct("https://rooms.example/rooms/lobby/ws")
    request.headers.set("upgrade", "websocket")
    response = _await(stub.fetch(request))
    assert response.status == 400
    assert json.loads(response._body or b"")["error"]["code"] == "identity_missing"


def test_room_refuses_a_bad_since(cf: FakeCloudflare) -> None:
    """since must be a whole number; the front checks it, and so does the room."""
    result = cf.upgrade("lobby", token("alice"), since=None, query={"since": "-1"})
    assert result.status == 400


def test_handler_exception_is_logged_without_details_and_the_socket_closed(
    cf_any: FakeCloudflare, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exception escaping a handler logs one line (room, handler, type) and closes 1011."""
    alice = join(cf_any, "alice")

    async def broken(*args: object) -> None:
        raise RuntimeError("secret detail")

    monkeypatch.setattr(RoomHost, "message", broken)  # a bug anywhere below the handler
    capsys.readouterr()
    alice.publish("m", "hi")
    output = capsys.readouterr().out
    assert "secret detail" not in output
    failures = [r for r in log_records(output) if r["event"] == "unexpected_error"]
    assert failures == [{"event": "unexpected_error", "handler": "webSocketMessage",
                         "error": "RuntimeError", "room": "lobby"}]
    assert alice.close_received == (CloseCode.INTERNAL_ERROR, "internal error")
    assert "secret detail" not in json.dumps(alice.frames())


def test_room_recovers_after_a_handler_exception(
    cf_any: FakeCloudflare, capsys: pytest.CaptureFixture[str]
) -> None:
    """Rebuilding the host after a wake fails (getWebSockets throws): the event's socket is
    closed with 1011, the next event rebuilds it, and nothing stored is lost or duplicated."""
    alice, bob = join(cf_any, "alice"), join(cf_any, "bob")
    alice.publish("a", "1")
    cf_any.hibernate()
    cf_any.room("lobby").state.fail_next_get_websockets = RuntimeError("secret detail")
    capsys.readouterr()
    bob.publish("b", "2")  # the host cannot be built: nothing is stored
    failures = [r for r in log_records(capsys.readouterr().out) if r["event"] != "publish"]
    assert failures == [{"event": "unexpected_error", "handler": "webSocketMessage",
                         "error": "RuntimeError", "room": "lobby"}]
    assert bob.close_received == (CloseCode.INTERNAL_ERROR, "internal error")
    bob.echo_close()
    alice.publish("c", "3")
    assert alice.seqs() == [1, 2]
    assert [m["body"] for m in alice.frames("message")] == ["1", "3"]
    again = join(cf_any, "bob", since=1)
    assert again.seqs() == [2]
    assert "secret detail" not in json.dumps(again.frames())


def test_a_failed_attachment_write_still_broadcasts_the_stored_message(
    cf_any: FakeCloudflare, capsys: pytest.CaptureFixture[str]
) -> None:
    """Saving one socket's state fails after the insert: that socket is closed with 1011, and
    every other member still receives the stored message, in order."""
    alice, bob, carol = join(cf_any, "alice"), join(cf_any, "bob"), join(cf_any, "carol")
    alice.publish("a", "1")
    bob.server.fail_attachment_writes = RuntimeError("boom")
    capsys.readouterr()
    bob.publish("b", "2")
    alice.publish("c", "3")
    assert alice.seqs() == carol.seqs() == [1, 2, 3]
    assert [m["body"] for m in carol.frames("message")] == ["1", "2", "3"]
    assert bob.close_received == (CloseCode.INTERNAL_ERROR, "internal error")
    records = log_records(capsys.readouterr().out)
    assert [r.get("code") for r in records if r["event"] == "attachment_failed"] == [
        "RuntimeError"]
    assert not [r for r in records if r["event"] == "unexpected_error"]  # nothing escaped
    assert "boom" not in json.dumps([alice.frames(), carol.frames()])


def _await(promise: Any) -> Response:
    async def run() -> Response:
        response: Response = await promise
        return response

    return asyncio.run(run())

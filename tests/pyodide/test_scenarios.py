"""The Room object through its real entrypoints in Pyodide, where workerd cannot go.

tests/e2e runs the room's promises against the real workerd, with objects awake. What stays here
is what workerd cannot be made to do: evict the object after every event (``world_any`` runs a
scenario twice, awake and with every object evicted after every event, so each frame is handled
by an instance whose ``__init__`` just ran again over storage and attachments), fail on demand
(SQL, attachment writes, a socket error event), and show what the room stored and which sockets
it lists. Scenarios that only the hibernating run adds anything to run hibernating only; their
awake cases are end-to-end tests on workerd, named in the docstring.
"""

from __future__ import annotations

import json

import pytest

from rooms.limits import Limits
from rooms.protocol import PING_TEXT, PONG_TEXT
from tests.pyodide.conftest import Expect, WorldFactory, log_records, take_output, token
from tests.pyodide.harness_client import Client, PyodideHarness, World

PONG = json.loads(PONG_TEXT)
FAILURE = {"event": "unexpected_error", "handler": "webSocketMessage", "error": "JsException",
           "room": "lobby"}


def join(world: World, user: str, room: str = "lobby", **kwargs: object) -> Client:
    return world.connect(room, token(user, user.title()), **kwargs)  # type: ignore[arg-type]


def presence(client: Client) -> list[tuple[str, str]]:
    return [(p["event"], p["member"]["user_id"]) for p in client.frames("presence")]


def test_authenticated_upgrade_reaches_the_room(world_any: World) -> None:
    """A valid token gets a 101 through the front; the room welcomes the verified identity,
    accepts the socket with its tags (a JS Array) and keeps its state as a JSON string."""
    result = world_any.upgrade("lobby", token("alice", "Alice"))
    assert result.status == 101
    assert result.client is not None
    (welcome,) = result.client.frames("welcome")
    assert welcome["room"] == "lobby"
    assert (welcome["user_id"], welcome["head"]) == ("alice", 0)
    assert welcome["presence"] == [{"user_id": "alice", "name": "Alice"}]
    assert welcome["resume"] == {"since": 0, "complete": True, "missing": [], "reason": None}
    info = world_any.info("lobby")
    assert info["constructions"] == 1
    (socket,) = info["sockets"]
    conn_id = json.loads(socket["attachment"])["conn_id"]
    assert socket["tags"] == [f"c:{conn_id}", "u:alice", "r:lobby"]
    assert conn_id == welcome["conn_id"]
    result.client.publish("m", "hi")  # rewrites the attachment (the rate-limit bucket)
    (socket,) = world_any.info("lobby")["sockets"]
    assert isinstance(socket["attachment"], str)
    assert json.loads(socket["attachment"])["user_id"] == "alice"


def test_publish_is_acked_and_broadcast_to_both_sockets(world_any: World) -> None:
    """Seqs 1, 2, 3: the sender gets acks, both sockets get every message once, in order."""
    alice, bob = join(world_any, "alice"), join(world_any, "bob")
    for i in range(3):
        alice.publish(f"m{i}", f"hello {i}")
    assert [a["seq"] for a in alice.take("ack")] == [1, 2, 3]
    assert alice.seqs() == bob.seqs() == [1, 2, 3]
    first = bob.frames("message")[0]
    assert (first["body"], first["name"], first["user_id"]) == ("hello 0", "Alice", "alice")
    (joined,) = alice.frames("presence")
    assert (joined["event"], joined["member"]["user_id"]) == ("join", "bob")
    rows = world_any.sql("lobby", "SELECT seq, id, user_id, name, body FROM messages ORDER BY seq")
    assert rows == [
        {"seq": i + 1, "id": f"m{i}", "user_id": "alice", "name": "Alice", "body": f"hello {i}"}
        for i in range(3)
    ]


def test_reconnect_with_since_replays_only_newer_messages(world_any: World) -> None:
    """A socket opened with since=2 gets exactly the messages after seq 2, then live traffic."""
    world = world_any
    alice = join(world, "alice")
    for i in range(4):
        alice.publish(f"m{i}", str(i))
    late = join(world, "carol", since=2)
    (welcome,) = late.frames("welcome")
    assert (welcome["head"], welcome["resume"]["complete"]) == (4, True)
    assert late.seqs() == [3, 4]
    alice.publish("m4", "4")
    assert late.seqs() == [3, 4, 5]


def test_retransmit_is_acked_with_the_original_seq_and_stored_once(world_any: World) -> None:
    """The same id twice: seq 1 acked twice (the second a duplicate), broadcast and stored once."""
    alice, bob = join(world_any, "alice"), join(world_any, "bob")
    alice.publish("x", "once")
    alice.publish("x", "once again")
    assert alice.take("ack") == [
        {"type": "ack", "id": "x", "seq": 1, "duplicate": False},
        {"type": "ack", "id": "x", "seq": 1, "duplicate": True},
    ]
    assert [m["body"] for m in bob.frames("message")] == ["once"]
    assert world_any.sql("lobby", "SELECT COUNT(*) AS n FROM messages") == [{"n": 1}]
    assert world_any.sql("lobby", "SELECT user_id, id, seq FROM dedupe") == [
        {"user_id": "alice", "id": "x", "seq": 1}
    ]


def test_socket_without_since_joins_on_hello(world: World) -> None:
    """Awake: tests/e2e/test_rooms.py::test_every_bad_frame_gets_its_error_and_others_are_unaffected
    (its late socket) and tests/e2e/test_archive.py (history_pages)."""
    world.set_hibernate_every_event(True)
    alice = join(world, "alice")
    alice.publish("a", "1")
    bob = join(world, "bob", since=None)
    assert bob.frames("welcome") == []
    bob.send({"type": "hello", "since": 0})
    assert len(bob.frames("welcome")) == 1
    assert bob.seqs() == [1]


def test_bad_frames_get_error_frames_and_the_socket_stays_usable(world: World) -> None:
    """Bad JSON, unknown types, invalid fields and binary frames (an ArrayBuffer) are answered.

    Awake: tests/e2e/test_rooms.py::test_every_bad_frame_gets_its_error_and_others_are_unaffected.
    """
    world.set_hibernate_every_event(True)
    alice = join(world, "alice")
    alice.send("{not json")
    alice.send({"type": "teleport"})
    alice.send({"type": "publish", "id": "", "body": "x"})
    alice.send(b"\x00\x01binary")
    errors = alice.take("error")
    assert [e["code"] for e in errors] == [
        "bad_json", "unknown_type", "bad_frame", "binary_not_supported",
    ]
    assert alice.closes == []
    alice.publish("ok", "still here")
    assert alice.seqs() == [1]


def test_every_event_on_a_hibernating_room_runs_init_again(world: World) -> None:
    """Hibernate after every event: each frame wakes a new instance that carries on."""
    world.set_hibernate_every_event(True)
    alice, bob = join(world, "alice"), join(world, "bob")
    before = world.info("lobby")["constructions"]
    for i in range(3):
        alice.publish(f"m{i}", str(i))
        bob.publish(f"n{i}", str(i))
    info = world.info("lobby")
    assert info["constructions"] == before + 6
    assert not info["awake"]
    assert alice.seqs() == bob.seqs() == [1, 2, 3, 4, 5, 6]
    assert [m["user_id"] for m in bob.frames("message")] == ["alice", "bob"] * 3


def test_ping_is_answered_by_the_runtime_without_waking_the_room(world: World) -> None:
    """The exact ping text gets the auto-response; the evicted room is not rebuilt."""
    alice = join(world, "alice")
    world.evict("lobby")
    info = world.info("lobby")
    assert info["auto_response"] == {"request": PING_TEXT, "response": PONG_TEXT}
    constructions = info["constructions"]
    alice.send(PING_TEXT)
    assert alice.take()[-1] == PONG
    info = world.info("lobby")
    assert (info["constructions"], info["awake"], info["auto_responses"]) == (constructions,
                                                                             False, 1)
    alice.send('{"type": "ping"}')  # another spelling: the room answers it
    assert alice.take() == [PONG]
    assert world.info("lobby")["constructions"] == constructions + 1


def test_close_and_vanish_announce_leaves(world_any: World) -> None:
    """A clean close and a dropped connection (1006) both end in a `leave` for the others, and
    the room closes its end of both."""
    alice, bob, carol = join(world_any, "alice"), join(world_any, "bob"), join(world_any, "carol")
    bob.close(1000, "bye")
    carol.drop()
    leaves = [p for p in alice.frames("presence") if p["event"] == "leave"]
    assert leaves == [
        {"type": "presence", "event": "leave", "member": {"user_id": "bob", "name": "Bob"}},
        {"type": "presence", "event": "leave", "member": {"user_id": "carol", "name": "Carol"}},
    ]
    bob.state()
    assert bob.closes == [(1000, "")]  # the room completes the close handshake it was offered
    alice.publish("m", "anyone?")
    assert alice.seqs() == [1]
    sockets = world_any.info("lobby")["sockets"]
    assert [(s["ready_state"], s["listed"]) for s in sockets] == [(1, True), (3, False),
                                                                  (3, False)]


def test_a_client_close_is_answered_with_its_own_code(world: World) -> None:
    """workerd does not answer a client's close frame on a hibernatable socket (measured,
    tests/workerd/test_probes.py): the room does, with the client's code, or 1000 for a close
    frame without a status (1005, which cannot be sent)."""
    alice, bob = join(world, "alice"), join(world, "bob")
    alice.close(4000, "going")
    bob.close(None)
    alice.state()
    bob.state()
    assert (alice.closes, bob.closes) == ([(4000, "")], [(1000, "")])


def test_a_socket_error_announces_the_leave(world_any: World) -> None:
    """webSocketError is handled like a close. Local workerd delivers none (a dropped connection
    is a close with 1006); production may."""
    alice, bob = join(world_any, "alice"), join(world_any, "bob")
    bob.fail()
    assert "webSocketError" in world_any.stats()
    assert "webSocketClose" not in world_any.stats()
    assert presence(alice) == [("join", "bob"), ("leave", "bob")]
    listed = [s for s in world_any.info("lobby")["sockets"] if s["listed"]]
    assert len(listed) == 1


def test_a_frame_over_the_limit_closes_1009_and_the_echo_is_handled_quietly(
    world_any: World,
) -> None:
    """The room closes the socket (1009); the client's echo of that close is not a second leave.

    Awake: tests/e2e/test_rooms.py::
    test_malformed_and_oversized_frames_leave_other_members_unaffected.
    """
    alice, bob = join(world_any, "alice"), join(world_any, "bob")
    bob.send("x" * (Limits().max_frame_bytes + 1))
    bob.state()
    assert bob.closes == [(1009, "frame too large")]  # the client answered it at once
    assert presence(alice) == [("join", "bob"), ("leave", "bob")]
    assert [s["listed"] for s in world_any.info("lobby")["sockets"]] == [True, False]


@pytest.mark.parametrize("how", ["close", "drop"])
def test_a_leave_announced_by_a_woken_room_names_the_member(world: World, how: str) -> None:
    """The leave carries the member's display name, as an awake room's does.

    A room evicted while its sockets stay open (workerd does so after 10 s idle) is rebuilt by
    the close event itself. The closing socket is then CLOSING (measured in workerd), so the
    rebuilt room leaves it out, and `RoomEngine.disconnect` falls back to the user id for the
    name: `{"user_id": "bob", "name": "bob"}` instead of "Bob".
    """
    alice, bob = join(world, "alice"), join(world, "bob")
    world.evict("lobby")
    if how == "close":
        bob.close(1000, "bye")
    else:
        bob.drop()
    leaves = [p["member"] for p in alice.frames("presence") if p["event"] == "leave"]
    assert leaves == [{"user_id": "bob", "name": "Bob"}]


def test_a_room_whose_id_has_no_name_knows_its_name_after_every_wake(
    world_factory: WorldFactory, expect: Expect
) -> None:
    """A room woken by a socket event (no URL) whose `ctx.id.name` is undefined reads its name
    from its sockets' tags before its first message, and from storage after it: it logs,
    stores and welcomes under it."""
    world = world_factory(id_has_name=False, LOG_MESSAGES="1")
    world.set_hibernate_every_event(True)
    alice = join(world, "alice", room="blue-room")
    take_output(world, expect)
    alice.publish("m", "hi")  # handled by a room woken with no URL and no ctx.id.name
    records = log_records(take_output(world, expect))
    (published,) = [r for r in records if r["event"] == "publish"]
    assert published["room"] == "blue-room"
    assert world.sql("blue-room", "SELECT value FROM room_meta WHERE key = 'room'") == [
        {"value": "blue-room"}]  # the name the archive and the directory will use
    bob = join(world, "bob", room="blue-room")
    assert bob.frames("welcome")[0]["room"] == "blue-room"
    assert bob.seqs() == [1]


def test_a_failing_handler_logs_one_line_closes_1011_and_the_room_recovers(
    world_any: World, expect: Expect
) -> None:
    """Rebuilding the room fails (its SQL storage is full): the event's socket is closed with
    1011, one line is logged (room, handler, type, never the message), the next event rebuilds
    the room, and nothing stored is lost or duplicated."""
    alice, bob = join(world_any, "alice"), join(world_any, "bob")
    alice.publish("a", "1")
    world_any.evict("lobby")
    # Every rebuild reads the catalogue first (whether the room stored anything, its schema).
    world_any.fail_sql("lobby", "FROM sqlite_master",
                       message="secret detail: database or disk is full: SQLITE_FULL")
    bob.hold_closes()
    take_output(world_any, expect)
    bob.publish("b", "2")  # the room cannot be rebuilt: nothing is stored
    expect.unexpected_errors = 1
    output = take_output(world_any, expect)
    assert "secret detail" not in "\n".join(output)
    assert [r for r in log_records(output) if r["event"] != "publish"] == [FAILURE]
    bob.state()
    assert bob.closes == [(1011, "internal error")]
    bob.answer_close()
    alice.publish("c", "3")
    assert alice.seqs() == [1, 2]
    assert [m["body"] for m in alice.frames("message")] == ["1", "3"]
    again = join(world_any, "bob", since=1)
    assert again.seqs() == [2]
    assert "secret detail" not in json.dumps([alice.frames(), bob.frames(), again.frames()])


def test_a_failed_attachment_write_still_broadcasts_the_stored_message(
    world_any: World, expect: Expect
) -> None:
    """Saving one socket's state fails after the insert: that socket is closed with 1011, and
    every other member still receives the stored message, in order."""
    alice, bob, carol = join(world_any, "alice"), join(world_any, "bob"), join(world_any, "carol")
    alice.publish("a", "1")
    bob.fail_attachment_writes(message="boom")
    take_output(world_any, expect)
    bob.publish("b", "2")
    alice.publish("c", "3")
    assert alice.seqs() == carol.seqs() == [1, 2, 3]
    assert [m["body"] for m in carol.frames("message")] == ["1", "2", "3"]
    bob.state()
    assert bob.closes == [(1011, "internal error")]
    records = log_records(take_output(world_any, expect))
    assert [r.get("code") for r in records if r["event"] == "attachment_failed"] == [
        "JsException"]
    assert not [r for r in records if r["event"] == "unexpected_error"]  # nothing escaped
    assert "boom" not in json.dumps([alice.frames(), carol.frames()])


def test_the_room_refuses_a_request_that_did_not_come_through_the_front(
    harness: PyodideHarness,
) -> None:
    """Only bindings reach an object; a request without the front's identity headers is refused
    (400 identity_missing), and the room checks `since` too (the front did already)."""
    facts = harness.probe("""
import json
from js import Object
from pyodide.ffi import to_js


async def main(h):
    stub = h.env.ROOMS.getByName("lobby")

    async def upgrade(query, headers):
        headers = {"upgrade": "websocket", **headers}
        init = to_js({"headers": headers}, dict_converter=Object.fromEntries)
        response = await stub.fetch("https://rooms.example/rooms/lobby/ws" + query, init)
        return [response.status, json.loads(await response.text())["error"]["code"]]

    identity = {"x-rooms-user-id": "alice", "x-rooms-user-name": "Alice"}
    return {"no identity": await upgrade("?since=0", {}),
            "bad since": await upgrade("?since=-1", identity)}
""")
    assert facts == {"no identity": [400, "identity_missing"], "bad since": [400, "bad_since"]}


def test_two_rooms_are_separate_objects(world: World) -> None:
    alice = join(world, "alice", room="one")
    bob = join(world, "bob", room="two")
    alice.publish("a", "in one")
    assert bob.frames("message") == []
    # Room two stored nothing (no message yet): not even its tables exist.
    assert world.sql("two", "SELECT name FROM sqlite_master WHERE type = 'table'") == []
    assert world.sql("one", "SELECT value FROM room_meta WHERE key = 'room'") == [
        {"value": "one"}]


def test_history_pages_backwards(world: World) -> None:
    """Awake: tests/e2e/test_archive.py::
    test_the_alarm_archives_and_every_read_crosses_the_archive_seamlessly (history pages)."""
    world.set_hibernate_every_event(True)
    alice = join(world, "alice")
    for i in range(5):
        alice.publish(f"m{i}", str(i))
    alice.send({"type": "history", "before": 4, "limit": 2, "ref": "h1"})
    (page,) = alice.frames("history")
    assert [m["seq"] for m in page["messages"]] == [2, 3]
    assert (page["ref"], page["next_before"]) == ("h1", 2)


def test_without_d1_and_r2_a_room_keeps_its_retention_window(world_factory: WorldFactory) -> None:
    """A deployment without the archive bindings prunes each room to ARCHIVE_POLICY's
    `retain_messages` (every 100 messages), so its storage cannot grow without bound."""
    world = world_factory(DB=None, ARCHIVE=None, ARCHIVE_POLICY='{"retain_messages": 10}')
    alice = join(world, "alice")
    for i in range(100):
        alice.publish(f"m{i}", str(i))
    late = join(world, "carol", since=0)
    (welcome,) = late.frames("welcome")
    assert welcome["resume"]["reason"] == "not_retained"
    assert welcome["resume"]["missing"] == [[1, 90]]
    assert late.seqs() == list(range(91, 101))

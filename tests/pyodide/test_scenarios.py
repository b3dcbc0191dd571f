"""The room service through its real entrypoints in Pyodide: front Worker, then the Room object.

Every scenario that involves sockets runs twice (``world_any``): with objects kept awake, and
with every object evicted after every event, so each frame is handled by an instance whose
``__init__`` just ran again over storage and socket attachments, as after hibernation.
"""

from __future__ import annotations

import json

import pytest

from tests.pyodide.conftest import ADMIN_TOKEN, Expect, token
from tests.pyodide.harness_client import Client, World

PING = '{"type":"ping"}'
PONG = {"type": "pong"}


def join(world: World, user: str, room: str = "lobby", **kwargs: object) -> Client:
    return world.connect(room, token(user, user.title()), **kwargs)  # type: ignore[arg-type]


def test_authenticated_upgrade_reaches_the_room(world_any: World) -> None:
    """A valid token gets a 101 through the front; the room welcomes the verified identity."""
    result = world_any.upgrade("lobby", token("alice", "Alice"))
    assert result.status == 101
    assert result.client is not None
    (welcome,) = result.client.frames("welcome")
    assert welcome["room"] == "lobby"
    assert (welcome["user_id"], welcome["head"]) == ("alice", 0)
    assert welcome["presence"] == [{"user_id": "alice", "name": "Alice"}]
    assert welcome["resume"] == {"since": 0, "complete": True, "missing": [], "reason": None}
    info = world_any.info("lobby")
    (socket,) = info["sockets"]
    conn_id = json.loads(socket["attachment"])["conn_id"]
    assert socket["tags"] == [f"c:{conn_id}", "u:alice"]
    assert conn_id == welcome["conn_id"]


def test_token_as_subprotocol_is_accepted_and_never_echoed(world: World) -> None:
    """Browsers pass the token as a subprotocol; the room echoes only rooms.v1."""
    alice = world.connect("lobby", None, protocols=["rooms.v1", token("alice")])
    assert alice.frames("welcome")
    assert alice.protocol == "rooms.v1"


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
    alice = join(world_any, "alice")
    for i in range(4):
        alice.publish(f"m{i}", str(i))
    late = join(world_any, "carol", since=2)
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


def test_socket_without_since_joins_on_hello(world_any: World) -> None:
    alice = join(world_any, "alice")
    alice.publish("a", "1")
    bob = join(world_any, "bob", since=None)
    assert bob.frames("welcome") == []
    bob.send({"type": "hello", "since": 0})
    assert len(bob.frames("welcome")) == 1
    assert bob.seqs() == [1]


def test_bad_frames_get_error_frames_and_the_socket_stays_usable(world_any: World) -> None:
    """Bad JSON, unknown types, invalid fields and binary frames (an ArrayBuffer) are answered."""
    alice = join(world_any, "alice")
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
    constructions = world.info("lobby")["constructions"]
    alice.send(PING)
    assert alice.take()[-1] == PONG
    info = world.info("lobby")
    assert (info["constructions"], info["awake"], info["auto_responses"]) == (constructions,
                                                                             False, 1)
    alice.send('{"type": "ping"}')  # another spelling: the room answers it
    assert alice.take() == [PONG]
    assert world.info("lobby")["constructions"] == constructions + 1


def test_close_and_vanish_announce_leaves(world_any: World) -> None:
    """A clean close and a dropped connection (1006) both end in a `leave` for the others."""
    alice, bob, carol = join(world_any, "alice"), join(world_any, "bob"), join(world_any, "carol")
    bob.close(1000, "bye")
    carol.drop()
    leaves = [p["member"]["user_id"] for p in alice.frames("presence") if p["event"] == "leave"]
    assert leaves == ["bob", "carol"]
    bob.state()
    assert bob.closes == [(1000, "")]  # the room completes the close handshake it was offered
    alice.publish("m", "anyone?")
    assert alice.seqs() == [1]
    states = [s["ready_state"] for s in world_any.info("lobby")["sockets"]]
    assert states.count(1) == 1  # only alice's socket is still open


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


def test_two_rooms_are_separate_objects(world: World) -> None:
    alice = join(world, "alice", room="one")
    bob = join(world, "bob", room="two")
    alice.publish("a", "in one")
    assert bob.frames("message") == []
    assert world.sql("two", "SELECT COUNT(*) AS n FROM messages") == [{"n": 0}]
    assert world.sql("one", "SELECT name FROM room_name") == [{"name": "one"}]


def test_history_pages_backwards(world_any: World) -> None:
    alice = join(world_any, "alice")
    for i in range(5):
        alice.publish(f"m{i}", str(i))
    alice.send({"type": "history", "before": 4, "limit": 2, "ref": "h1"})
    (page,) = alice.frames("history")
    assert [m["seq"] for m in page["messages"]] == [2, 3]
    assert (page["ref"], page["next_before"]) == ("h1", 2)


# --------------------------------------------------------------------------- HTTP errors


@pytest.mark.parametrize(
    ("label", "make_token", "code"),
    [
        ("missing", lambda: None, "token_missing"),
        ("wrong secret", lambda: token("alice", secret="another-secret-of-sufficient-length!"),
         "token_invalid"),
        ("garbage", lambda: "not.a.token", "token_invalid"),
        ("expired", lambda: token("alice", ttl_s=-60), "token_expired"),
        ("no sub", lambda: token("", name="x"), "token_claims"),
    ],
)
def test_auth_failures_are_401_with_the_json_error_shape(
    world: World, label: str, make_token: object, code: str
) -> None:
    result = world.upgrade("lobby", make_token())  # type: ignore[operator]
    assert result.status == 401, label
    assert result.client is None
    assert result.headers["content-type"] == "application/json"
    body = result.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == code
    assert "token" not in result.body.lower() or code in result.body  # never echoes a token


def test_alg_none_is_refused(world: World) -> None:
    unsigned = jwt_none_token("mallory")
    result = world.upgrade("lobby", unsigned)
    assert (result.status, result.json()["error"]["code"]) == (401, "token_invalid")


def jwt_none_token(user: str) -> str:
    import base64
    import time

    def part(value: dict[str, object]) -> str:
        raw = json.dumps(value, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    claims = {"sub": user, "exp": int(time.time()) + 60}
    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


@pytest.mark.parametrize(
    ("path", "headers", "status", "code"),
    [
        ("/rooms/bad!name/ws", {"upgrade": "websocket"}, 400, "bad_room_name"),
        ("/rooms/lobby/ws", {}, 426, "upgrade_required"),
        ("/rooms/lobby/ws?since=-1", {"upgrade": "websocket"}, 400, "bad_since"),
        ("/rooms/lobby/other", {}, 404, "not_found"),
    ],
)
def test_front_errors_have_the_json_error_shape(
    world: World, path: str, headers: dict[str, str], status: int, code: str
) -> None:
    result = world.fetch(path, headers=headers)
    assert (result.status, result.json()["error"]["code"]) == (status, code)
    assert result.headers["content-type"] == "application/json"


def test_health_and_method_checks(world: World) -> None:
    assert world.fetch("/health").json() == {"status": "ok"}
    result = world.fetch("/rooms/lobby/ws", method="POST", headers={"upgrade": "websocket"})
    assert (result.status, result.json()["error"]["code"]) == (405, "method_not_allowed")


def test_client_sent_identity_headers_are_not_trusted(world: World) -> None:
    """A client claiming x-rooms-user-id gets the identity of its token, not of the header."""
    client = world.connect("lobby", token("alice"), headers={"x-rooms-user-id": "admin"})
    assert client.frames("welcome")[0]["user_id"] == "alice"


def test_static_assets_are_served_from_the_assets_binding(world: World) -> None:
    result = world.fetch("/")
    assert result.status == 200
    assert "<" in result.body  # public/index.html


def test_admin_inspection_reaches_the_room_object(world: World) -> None:
    """The admin API calls the room's object through its stub (stub.fetch with POST)."""
    alice = join(world, "alice")
    alice.publish("m", "hi")
    auth = {"authorization": f"Bearer {ADMIN_TOKEN}"}
    assert world.fetch("/admin/rooms/lobby").status == 401
    result = world.fetch("/admin/rooms/lobby", headers=auth)
    assert result.status == 200, result.body
    inspection = result.json()
    assert inspection["room"] == "lobby"
    assert inspection["head_seq"] == 1
    assert [m["user_id"] for m in inspection["members"]] == ["alice"]


def test_admin_disconnect_closes_the_users_sockets_with_4003(world: World,
                                                             expect: Expect) -> None:
    alice, bob = join(world, "alice"), join(world, "bob")
    auth = {"authorization": f"Bearer {ADMIN_TOKEN}"}
    result = world.fetch("/admin/rooms/lobby/disconnect?user_id=bob", method="POST",
                         headers=auth)
    assert result.status == 200, result.body
    bob.state()
    assert bob.closes
    assert bob.closes[0][0] == 4003
    leaves = [p for p in alice.frames("presence") if p["event"] == "leave"]
    assert [p["member"]["user_id"] for p in leaves] == ["bob"]

"""The room protocol, driven through RoomHost with in-memory sockets and real SQLite."""

from __future__ import annotations

import json

import pytest

from rooms.limits import Limits
from rooms.protocol import PING_TEXT, PONG_TEXT, CloseCode
from tests.core.harness import MemorySocket, RoomHarness, run


@pytest.fixture(params=[False, True], ids=["awake", "hibernate-every-event"])
def room(request: pytest.FixtureRequest) -> RoomHarness:
    return RoomHarness(hibernate_every_event=request.param)


def test_join_sends_welcome_with_head_and_presence(room: RoomHarness) -> None:
    """The welcome names the room, the user, the head seq and everyone present, self included."""
    alice = room.join("alice")
    bob = room.join("bob")
    (welcome,) = bob.take("welcome")
    assert welcome["room"] == "lobby"
    assert welcome["user_id"] == "bob"
    assert welcome["head"] == 0
    assert [m["user_id"] for m in welcome["presence"]] == ["alice", "bob"]
    assert welcome["resume"] == {"since": 0, "complete": True, "missing": [], "reason": None}
    (joined,) = alice.take("presence")
    assert joined["event"] == "join"
    assert joined["member"] == {"user_id": "bob", "name": "Bob"}


def test_publish_assigns_gapless_seq_acks_and_broadcasts_to_everyone(room: RoomHarness) -> None:
    """Seqs go 1, 2, 3; the sender gets an ack, and every socket gets every message once."""
    alice, bob = room.join("alice"), room.join("bob")
    for i in range(3):
        alice.publish(f"m{i}", f"hello {i}")
    bob.publish("b1", "hi")
    assert [a["seq"] for a in alice.take("ack")] == [1, 2, 3]
    assert bob.take("ack") == [{"type": "ack", "id": "b1", "seq": 4, "duplicate": False}]
    assert alice.seqs() == bob.seqs() == [1, 2, 3, 4]
    last = bob.ws.frames("message")[-1]
    assert last == {"type": "message", "seq": 4, "id": "b1", "user_id": "bob", "name": "Bob",
                    "body": "hi", "sent_ms": room.now_ms}


def test_retransmit_is_acked_with_original_seq_and_not_stored_twice(room: RoomHarness) -> None:
    """A repeated client id from the same user is idempotent; another user's same id is not."""
    alice, bob = room.join("alice"), room.join("bob")
    alice.publish("x", "once")
    alice.publish("x", "once again")
    bob.publish("x", "bob's own")
    assert alice.take("ack") == [
        {"type": "ack", "id": "x", "seq": 1, "duplicate": False},
        {"type": "ack", "id": "x", "seq": 1, "duplicate": True},
    ]
    assert [m["body"] for m in bob.ws.frames("message")] == ["once", "bob's own"]
    assert room.host.engine.store.head == 2


def test_resume_replays_exactly_the_messages_after_since(room: RoomHarness) -> None:
    """A reconnect with its last seen seq misses nothing and sees nothing twice."""
    alice = room.join("alice")
    for i in range(5):
        alice.publish(f"m{i}", str(i))
    late = room.join("carol", since=3)
    (welcome,) = late.ws.frames("welcome")
    assert welcome["head"] == 5
    assert welcome["resume"]["complete"] is True
    assert late.seqs() == [4, 5]
    alice.publish("m5", "5")
    assert late.seqs() == [4, 5, 6]


def test_hello_frame_joins_a_socket_opened_without_since(room: RoomHarness) -> None:
    """Without `since` in the URL the socket waits for hello; other frames are refused."""
    alice = room.join("alice")
    alice.publish("a", "1")
    alice.publish("b", "2")
    dave = room.join("dave", since=None)
    assert dave.ws.frames("welcome") == []
    dave.publish("d", "too early")
    assert dave.take("error")[0]["code"] == "hello_required"
    dave.send({"type": "hello", "since": 1})
    assert dave.take("welcome")[0]["resume"]["since"] == 1
    assert dave.seqs() == [2]
    dave.send({"type": "hello"})
    assert dave.take("error")[0]["code"] == "already_joined"
    assert room.host.engine.store.head == 2


def test_since_ahead_of_head_is_reported_not_hidden(room: RoomHarness) -> None:
    """A client that claims more than the room has is told so in the welcome."""
    room.join("alice").publish("a", "1")
    eve = room.join("eve", since=40)
    resume = eve.ws.frames("welcome")[0]["resume"]
    assert resume == {"since": 40, "complete": False, "missing": [], "reason": "since_ahead"}
    assert eve.seqs() == []


def test_replay_is_bounded_and_the_welcome_names_the_unserved_range() -> None:
    """Past max_replay, only the newest are replayed and the rest is named as missing."""
    room = RoomHarness(Limits(max_replay=3, burst=100))
    alice = room.join("alice")
    for i in range(10):
        alice.publish(f"m{i}", str(i))
    bob = room.join("bob", since=2)
    resume = bob.ws.frames("welcome")[0]["resume"]
    assert resume["complete"] is False
    assert resume["missing"] == [[3, 7]]
    assert bob.seqs() == [8, 9, 10]


def test_history_pages_backwards_to_the_start(room: RoomHarness) -> None:
    """History returns ascending pages below `before`, and where the next page starts."""
    alice = room.join("alice")
    for i in range(7):
        alice.publish(f"m{i}", str(i))
    alice.take()
    alice.send({"type": "history", "limit": 3, "ref": "h1"})
    page = alice.take("history")[0]
    assert [m["seq"] for m in page["messages"]] == [5, 6, 7]
    assert page["ref"] == "h1"
    assert page["next_before"] == 5
    seen = [m["seq"] for m in page["messages"]]
    while page["next_before"] is not None:
        alice.send({"type": "history", "before": page["next_before"], "limit": 3})
        page = alice.take("history")[0]
        seen = [m["seq"] for m in page["messages"]] + seen
    assert seen == list(range(1, 8))


def test_signal_is_relayed_to_others_and_never_stored(room: RoomHarness) -> None:
    """Signals reach the other members, not the sender, and take no seq."""
    alice, bob = room.join("alice"), room.join("bob")
    alice.send({"type": "signal", "kind": "typing", "data": {"on": True}})
    assert bob.take("signal") == [
        {"type": "signal", "user_id": "alice", "kind": "typing", "data": {"on": True}}
    ]
    assert alice.take("signal") == []
    assert room.host.engine.store.head == 0


def test_several_sockets_of_one_user_are_one_presence(room: RoomHarness) -> None:
    """Join is announced for the first socket of a user, leave only after the last."""
    alice = room.join("alice")
    bob1 = room.join("bob")
    bob2 = room.join("bob")
    assert [p["event"] for p in alice.take("presence")] == ["join"]
    assert [m["user_id"] for m in bob2.ws.frames("welcome")[0]["presence"]] == ["alice", "bob"]
    bob1.leave()
    assert alice.take("presence") == []
    bob2.leave()
    (left,) = alice.take("presence")
    assert left["event"] == "leave"
    assert left["member"]["user_id"] == "bob"
    assert "members" not in left  # changes only: the welcome carried the whole list


def test_ping_text_gets_pong_even_before_joining(room: RoomHarness) -> None:
    """The auto-response text works in the core too (local runtime, formatting variants)."""
    dave = room.join("dave", since=None)
    dave.send(PING_TEXT)
    dave.send('{ "type" : "ping" }')
    assert [json.dumps(f, separators=(",", ":")) for f in dave.take()] == [PONG_TEXT] * 2


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("not json", "bad_json"),
        ("[1, 2]", "bad_frame"),
        ('{"kind": "publish"}', "bad_frame"),
        ('{"type": "shout", "body": "x"}', "unknown_type"),
        ('{"type": "publish", "id": 5, "body": "x"}', "bad_frame"),
        ('{"type": "publish", "id": "", "body": "x"}', "bad_frame"),
        ('{"type": "publish", "body": "x"}', "bad_frame"),
        ('{"type": "history", "limit": 0}', "bad_frame"),
        ('{"type": "history", "before": -1}', "bad_frame"),
        ('{"type": "signal", "kind": ""}', "bad_frame"),
        (b"\x00\x01binary", "binary_not_supported"),
        ("\ud800", "bad_json"),
    ],
)
def test_bad_frames_get_an_error_frame_with_a_code(frame: str | bytes, code: str) -> None:
    """Each class of bad input is answered with its own error code; nothing is stored."""
    room = RoomHarness()
    alice = room.join("alice")
    alice.take()
    alice.send(frame)
    (error,) = alice.take("error")
    assert error["code"] == code
    assert error["message"]
    assert alice.ws.open
    assert room.host.engine.store.head == 0


def test_body_over_the_limit_is_refused_with_its_id() -> None:
    """A body over max_body_chars gets body_too_long, referencing the message id."""
    room = RoomHarness(Limits(max_body_chars=10))
    alice = room.join("alice")
    alice.publish("long", "x" * 11)
    assert alice.take("error") == [{"type": "error", "code": "body_too_long",
                                    "message": "body is longer than 10 characters", "ref": "long"}]
    alice.publish("ok", "x" * 10)
    assert alice.take("ack")[0]["seq"] == 1


def test_oversized_frame_closes_1009_and_others_are_unaffected() -> None:
    """A frame over max_frame_bytes closes that socket with 1009 and a leave for the others."""
    room = RoomHarness(Limits(max_frame_bytes=1024, max_body_chars=512))
    alice, bob = room.join("alice"), room.join("bob")
    bob.send({"type": "publish", "id": "big", "body": "é" * 600})  # 600 chars, 1200+ bytes
    assert bob.take("error")[0]["code"] == "frame_too_large"
    assert bob.ws.close_code == CloseCode.MESSAGE_TOO_BIG
    assert [p["event"] for p in alice.take("presence")] == ["join", "leave"]
    alice.publish("a", "still here")
    assert alice.take("ack")[0]["seq"] == 1


def test_repeated_abuse_closes_1008() -> None:
    """Past max_strikes bad frames the socket is closed with a policy violation."""
    room = RoomHarness(Limits(max_strikes=3))
    mallory = room.join("mallory")
    for _ in range(4):
        mallory.send("garbage")
    assert len(mallory.take("error")) == 4
    assert mallory.ws.close_code == CloseCode.POLICY_VIOLATION


def test_rate_limit_answers_with_an_error_frame_and_refills() -> None:
    """Over the rate, a publish is refused with rate_limited (not dropped), then allowed again."""
    room = RoomHarness(Limits(messages_per_second=2, burst=3, max_strikes=100))
    alice = room.join("alice")
    for i in range(5):
        alice.publish(f"m{i}", "x")
    assert [a["seq"] for a in alice.take("ack")] == [1, 2, 3]
    errors = alice.take("error")
    assert [(e["code"], e["ref"]) for e in errors] == [
        ("rate_limited", "m3"), ("rate_limited", "m4")]
    room.tick(1000)
    alice.publish("m3", "x")
    assert alice.take("ack") == [{"type": "ack", "id": "m3", "seq": 4, "duplicate": False}]


def test_rate_limit_state_survives_hibernation() -> None:
    """The token bucket lives in the attachment, so waking the room does not refill it."""
    room = RoomHarness(Limits(messages_per_second=1, burst=2), hibernate_every_event=True)
    alice = room.join("alice")
    for i in range(3):
        alice.publish(f"m{i}", "x")
    assert [e["code"] for e in alice.take("error")] == ["rate_limited"]


@pytest.mark.parametrize("hibernate", [False, True], ids=["awake", "hibernate-every-event"])
def test_a_users_sockets_share_one_budget_even_across_wakes(hibernate: bool) -> None:
    """A second and third socket bring no new frames: the budget is the user's. After a wake
    it is rebuilt from the attachment that spent it last, not from a fuller, older copy."""
    room = RoomHarness(Limits(messages_per_second=1, burst=2, max_strikes=100),
                       hibernate_every_event=hibernate)
    first, second = room.join("alice"), room.join("alice")
    first.publish("a1", "x")
    second.publish("a2", "x")
    third = room.join("alice")  # joins after the budget was spent
    third.publish("a3", "x")
    second.publish("a4", "x")
    assert [a["id"] for c in (first, second, third) for a in c.take("ack")] == ["a1", "a2"]
    assert sorted(e["ref"] for c in (second, third) for e in c.take("error")) == ["a3", "a4"]
    bob = room.join("bob")  # another user's budget is untouched
    bob.publish("b1", "x")
    assert [a["id"] for a in bob.take("ack")] == ["b1"]
    room.tick(1000)
    third.publish("a5", "x")
    assert [a["id"] for a in third.take("ack")] == ["a5"]


def test_a_socket_closing_right_after_a_wake_takes_no_budget_with_it() -> None:
    """A woken room builds a user's budget when first needed, from the sockets it woke with.
    The socket that spent it closing before then must not leave the older, fuller copy of the
    user's other socket as the budget: closing a socket never refills it."""
    room = RoomHarness(Limits(messages_per_second=1, burst=2, max_strikes=100))
    spender, other = room.join("alice"), room.join("alice")
    spender.publish("a1", "x")
    spender.publish("a2", "x")
    room.hibernate()
    spender.leave()  # the first event after the wake
    other.publish("a3", "x")
    assert [e["code"] for e in other.take("error")] == ["rate_limited"]
    room.tick(1000)
    other.publish("a4", "x")
    assert [a["id"] for a in other.take("ack")] == ["a4"]


def test_a_budget_outlives_the_users_sockets_until_it_is_full_again() -> None:
    from rooms.auth import Identity
    room = RoomHarness(Limits(messages_per_second=1, burst=2, max_strikes=100))
    alice = room.join("alice")
    alice.publish("a1", "x")
    alice.publish("a2", "x")
    alice.leave()
    again = room.join("alice")
    again.publish("a3", "x")
    assert [e["code"] for e in again.take("error")] == ["rate_limited"]
    again.leave()
    room.tick(2001)
    assert run(room.host.refusal(Identity("bob", "Bob"))) is None  # an arrival forgets ...
    assert "alice" not in room.host.engine._budgets  # ... budgets that are full again


def test_sockets_per_address_are_capped_in_a_room() -> None:
    from rooms.auth import Identity
    room = RoomHarness(Limits(max_sockets_per_address=2))
    host = room.host
    assert run(host.refusal(Identity("a", "A"), "10.0.0.1")) is None
    for user in ("a", "b"):
        run(host.connect(MemorySocket(), Identity(user, user), 0, address="10.0.0.1"))
    refused = run(host.refusal(Identity("c", "C"), "10.0.0.1"))
    assert refused is not None
    assert (refused.status, json.loads(refused.body)["error"]["code"]) == (
        403, "too_many_from_address")
    assert run(host.refusal(Identity("c", "C"), "10.0.0.2")) is None
    assert run(host.refusal(Identity("c", "C"), "")) is None  # unknown: nothing to count


def test_max_members_counts_distinct_users() -> None:
    """A full room still admits another socket of a present user, but no new user."""
    room = RoomHarness(Limits(max_members=2))
    room.join("alice")
    room.join("bob")
    from rooms.auth import Identity

    assert run(room.host.refusal(Identity("bob", "Bob"))) is None
    refused = run(room.host.refusal(Identity("carol", "Carol")))
    assert refused is not None
    assert (refused.status, json.loads(refused.body)["error"]["code"]) == (403, "room_full")


def test_sockets_that_never_join_hold_no_place_and_are_closed_after_the_hello_timeout() -> None:
    """Issue: one attacker's silent sockets filled `max_members` and locked everyone out."""
    from rooms.auth import Identity

    room = RoomHarness(Limits(max_members=1, max_sockets_per_user=3, hello_timeout_ms=5_000))
    lurkers = [room.join("lurker", since=None) for _ in range(3)]
    assert run(room.host.refusal(Identity("alice", "Alice"))) is None  # silent: no member
    refused = run(room.host.refusal(Identity("lurker", "Lurker")))
    assert refused is not None
    assert json.loads(refused.body)["error"]["code"] == "too_many_sockets"
    room.join("alice")
    lurkers[0].send({"type": "hello"})  # too late: the room filled up meanwhile
    assert lurkers[0].take("error")[0]["code"] == "room_full"
    room.tick(5_001)
    assert run(room.host.refusal(Identity("lurker", "Lurker"))) is not None  # room_full now
    assert [lurker.ws.close_code for lurker in lurkers] == [1008, 1008, 1008]


def test_presence_is_rebuilt_from_open_sockets_after_hibernation() -> None:
    """After a rebuild, members are exactly the open sockets; a vanished one leaves."""
    room = RoomHarness()
    alice, bob = room.join("alice"), room.join("bob")
    bob.ws.open = False  # vanished without a close event reaching the old instance
    room.hibernate()
    assert [m.user_id for m in room.host.engine.members()] == ["alice"]
    run(room.host.closed(bob.ws))  # the late close event still announces the leave
    assert [p["event"] for p in alice.take("presence")] == ["join", "leave"]


def test_store_survives_reopening_the_database(tmp_path: object) -> None:
    """Head and history continue after the database is closed and reopened."""
    path = str(tmp_path) + "/room.sqlite"  # type: ignore[operator]
    first = RoomHarness(path=path)
    first.join("alice").publish("a", "1")
    first.sql.close()
    second = RoomHarness(path=path)
    alice = second.join("alice", since=0)
    assert alice.seqs() == [1]
    alice.publish("b", "2")
    assert alice.take("ack")[0]["seq"] == 2


def test_one_log_line_per_connection_and_a_join_line_only_for_a_later_join(
    room: RoomHarness,
) -> None:
    """A socket that names `since` joins as it connects: one `connect` line, carrying the head
    it joined at, written after its welcome (README.md, "Run it locally"). A socket that joins
    later, with its `hello`, gets a `connect` line and then a `join` line; every socket a
    `disconnect` line when it leaves."""
    alice = room.join("alice")
    alice.publish("m1", "hello")
    bob = room.join("bob", since=None)
    bob.send({"type": "hello", "since": 1})
    bob.leave()
    alice.leave()
    records = [json.loads(line) for line in room.logs]
    records = [r for r in records if r["event"] != "publish"]  # per message, on in the harness
    assert [(r["event"], r["user_id"], r.get("seq")) for r in records] == [
        ("connect", "alice", 0),
        ("connect", "bob", None),
        ("join", "bob", 1),
        ("disconnect", "bob", None),
        ("disconnect", "alice", None),
    ]
    assert len({r["conn_id"] for r in records}) == 2

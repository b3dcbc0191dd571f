"""Edits, deletes, reactions and read state (docs/protocol.md, "Message lifecycle"), through
RoomHost with in-memory sockets and real SQLite, awake and hibernating after every event."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from rooms.archive import ArchivePolicy
from rooms.lifecycle import valid_emoji
from rooms.limits import Limits
from rooms.store import RoomStore
from roomsd.sqlite import SqliteSql
from tests.core.harness import Client, RoomHarness


@pytest.fixture(params=[False, True], ids=["awake", "hibernate-every-event"])
def room(request: pytest.FixtureRequest) -> RoomHarness:
    return RoomHarness(Limits(burst=1000), hibernate_every_event=request.param)


def edit(client: Client, id_: str, target: int, body: str) -> None:
    client.send({"type": "edit", "id": id_, "target": target, "body": body})


def delete(client: Client, id_: str, target: int) -> None:
    client.send({"type": "delete", "id": id_, "target": target})


def react(client: Client, id_: str, target: int, emoji: str, remove: bool = False) -> None:
    client.send({"type": "react", "id": id_, "target": target, "emoji": emoji, "remove": remove})


def history(client: Client, **fields: Any) -> dict[str, Any]:
    client.take("history")
    client.send({"type": "history", **fields})
    (page,) = client.take("history")
    return page


def errors(client: Client) -> list[str]:
    return [e["code"] for e in client.take("error")]


def test_an_edit_is_the_next_event_acked_and_broadcast_to_everyone(room: RoomHarness) -> None:
    """The author's edit takes its own seq, is acked, and every socket gets it once, in order."""
    alice, bob = room.join("alice"), room.join("bob")
    alice.publish("m1", "helo")
    edit(alice, "e1", 1, "hello")
    assert [a["seq"] for a in alice.take("ack")] == [1, 2]
    assert alice.seqs() == bob.seqs() == [1, 2]
    event = bob.ws.frames("message")[-1]
    assert event == {"type": "message", "seq": 2, "id": "e1", "user_id": "alice",
                     "name": "Alice", "body": "hello", "sent_ms": room.now_ms,
                     "kind": "edit", "target": 1}
    # A plain message is still exactly the v1 frame.
    assert set(bob.ws.frames("message")[0]) == {"type", "seq", "id", "user_id", "name", "body",
                                                 "sent_ms"}


def test_edit_retransmit_is_idempotent_and_ids_are_shared_with_publish(room: RoomHarness) -> None:
    """The same id again gets the original seq with duplicate: true, and nothing new."""
    alice = room.join("alice")
    alice.publish("m1", "one")
    edit(alice, "e1", 1, "uno")
    edit(alice, "e1", 1, "uno")
    edit(alice, "m1", 1, "something else")  # the publish's id: a retransmit of the publish
    assert [(a["seq"], a["duplicate"]) for a in alice.take("ack")] == [
        (1, False), (2, False), (2, True), (1, True)]
    assert alice.seqs() == [1, 2]
    assert room.host.engine.store.head == 2


def test_only_the_author_edits_or_deletes_within_the_limits(room: RoomHarness) -> None:
    """Someone else's message, a missing target, an event, too long or too often: refused."""
    room.limits = Limits(burst=1000, max_edits_per_message=2, max_body_chars=10)
    room.hibernate()
    alice, bob = room.join("alice"), room.join("bob")
    alice.publish("m1", "one")
    edit(bob, "b1", 1, "mine now")
    delete(bob, "b2", 1)
    edit(alice, "e0", 5, "nope")
    edit(alice, "e1", 1, "x" * 11)
    edit(alice, "e2", 1, "two")
    edit(alice, "e3", 2, "an edit of an edit")
    edit(alice, "e4", 1, "three")
    edit(alice, "e5", 1, "four")
    assert errors(bob) == ["not_author", "not_author"]
    assert errors(alice) == ["target_not_found", "body_too_long", "target_not_found",
                             "too_many_edits"]
    assert room.host.engine.store.head == 3


def test_delete_blanks_the_message_and_its_edits_everywhere(room: RoomHarness) -> None:
    """After the ack, the body is in no row, no replay, no raw or folded history page."""
    alice, bob = room.join("alice"), room.join("bob")
    alice.publish("m1", "secret one")
    edit(alice, "e1", 1, "secret two")
    react(bob, "r1", 1, "👍")
    alice.publish("m2", "stays")
    delete(alice, "d1", 1)
    assert [a["seq"] for a in alice.take("ack")] == [1, 2, 4, 5]
    assert bob.ws.frames("message")[-1] == {
        "type": "message", "seq": 5, "id": "d1", "user_id": "alice", "name": "Alice",
        "body": "", "sent_ms": room.now_ms, "kind": "delete", "target": 1}
    rows = room.sql.execute("SELECT seq, body, deleted FROM messages ORDER BY seq")
    assert [tuple(r) for r in rows] == [(1, "", 1), (2, "", 1), (3, "", 0), (4, "stays", 0),
                                        (5, "", 0)]
    dump = "\n".join(str(tuple(r)) for table in ("messages", "message_state", "dedupe",
                                                   "reactions", "room_meta")
                     for r in room.sql.execute(f"SELECT * FROM {table}"))
    assert "secret" not in dump
    raw = history(bob)
    assert [(m["seq"], m["body"], m.get("deleted", False)) for m in raw["messages"]] == [
        (1, "", True), (2, "", True), (3, "", False), (4, "stays", False), (5, "", False)]
    folded = history(bob, fold=True)
    assert [(m["seq"], m["body"], m.get("deleted", False), m.get("reactions", []))
            for m in folded["messages"]] == [(1, "", True, []), (4, "stays", False, [])]
    late = room.join("carol", since=0)
    assert [(m["seq"], m["body"]) for m in late.ws.frames("message")] == [
        (1, ""), (2, ""), (3, ""), (4, "stays"), (5, "")]


def test_deleting_twice_and_acting_on_a_deleted_message(room: RoomHarness) -> None:
    """A second delete is acked with the first delete's seq; edits and reactions are refused."""
    alice, bob = room.join("alice"), room.join("bob")
    alice.publish("m1", "one")
    delete(alice, "d1", 1)
    delete(alice, "d2", 1)
    edit(alice, "e1", 1, "back")
    react(bob, "r1", 1, "👍")
    assert [(a["id"], a["seq"], a["duplicate"]) for a in alice.take("ack")] == [
        ("m1", 1, False), ("d1", 2, False), ("d2", 2, True)]
    assert errors(alice) == ["target_deleted"]
    assert errors(bob) == ["target_deleted"]
    assert room.host.engine.store.head == 2


def test_reactions_count_per_emoji_once_per_user(room: RoomHarness) -> None:
    """Adding twice or removing what is not there stores nothing; folded counts and `mine`."""
    alice, bob, cat = room.join("alice"), room.join("bob"), room.join("cat")
    alice.publish("m1", "one")
    react(bob, "r1", 1, "👍")
    react(bob, "r2", 1, "👍")  # already there: no event
    react(cat, "r1", 1, "👍")
    react(cat, "r2", 1, "🎉")
    react(cat, "r3", 1, "🎉", remove=True)
    react(cat, "r4", 1, "🎉", remove=True)  # not there any more: no event
    assert [(a["seq"], a["duplicate"]) for a in bob.take("ack")] == [(2, False), (2, True)]
    assert [(a["seq"], a["duplicate"]) for a in cat.take("ack")] == [
        (3, False), (4, False), (5, False), (0, True)]
    assert alice.seqs() == [1, 2, 3, 4, 5]
    assert [(m.get("kind"), m.get("emoji")) for m in alice.ws.frames("message")[1:]] == [
        ("react", "👍"), ("react", "👍"), ("react", "🎉"), ("unreact", "🎉")]
    (message,) = history(bob, fold=True)["messages"]
    assert message["reactions"] == [{"emoji": "👍", "count": 2, "mine": True}]
    (message,) = history(alice, fold=True)["messages"]
    assert message["reactions"] == [{"emoji": "👍", "count": 2, "mine": False}]


def test_reaction_limits_and_emoji_validation(room: RoomHarness) -> None:
    """At most max_reactions_per_message distinct emoji; anything but one emoji is bad_emoji."""
    room.limits = Limits(burst=1000, max_reactions_per_message=2, max_emoji_chars=8)
    room.hibernate()
    alice, bob = room.join("alice"), room.join("bob")
    alice.publish("m1", "one")
    react(alice, "r1", 1, "👍")
    react(alice, "r2", 1, "🎉")
    react(alice, "r3", 1, "🔥")  # a third distinct emoji
    react(bob, "r1", 1, "🎉")  # an emoji already there: fine
    for i, bad in enumerate(["a", "👍 ", "<b>", "\u202e👍", "👍" * 9, "1"]):
        react(bob, f"bad{i}", 1, bad)
    assert errors(alice) == ["too_many_reactions"]
    assert errors(bob) == ["bad_emoji"] * 6
    assert room.host.engine.store.head == 4


@pytest.mark.parametrize("emoji", ["👍", "👍🏽", "👨‍👩‍👧‍👦", "🇫🇷", "1️⃣", "❤️", "☕",
                                   "🏴\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f",
                                   "\U0001fae8"])
def test_one_emoji_is_valid(emoji: str) -> None:
    """Skin tones, ZWJ families, flags, keycaps, VS16, tag flags, and newer emoji than 3.11's."""
    assert valid_emoji(emoji, 16)


@pytest.mark.parametrize("text", ["", "a", "ab", "1", "#", "👍a", "\u200d", "\ufe0f", " ", "\n",
                                  "é", "\u0301", "\U000e0067"])
def test_anything_else_is_not_an_emoji(text: str) -> None:
    assert not valid_emoji(text, 16)


def test_targets_the_room_no_longer_holds_are_not_retained() -> None:
    """Past the retention window a user can no longer act on a message (an operator can)."""
    room = RoomHarness(Limits(burst=1000), retention=ArchivePolicy(retain_messages=50))
    alice = room.join("alice")
    for i in range(100):  # the room prunes itself every 100 messages without an archive
        alice.publish(f"m{i}", str(i))
    edit(alice, "e1", 1, "too late")
    delete(alice, "d1", 1)
    react(alice, "r1", 1, "👍")
    assert errors(alice) == ["target_not_retained"] * 3


def test_a_closed_room_refuses_edits_and_reactions_but_not_deletes(room: RoomHarness) -> None:
    alice = room.join("alice")
    alice.publish("m1", "one")
    room.host.engine.set_closed(True)
    edit(alice, "e1", 1, "uno")
    react(alice, "r1", 1, "👍")
    delete(alice, "d1", 1)
    assert errors(alice) == ["room_closed", "room_closed"]
    assert alice.take("ack")[-1]["seq"] == 2


def test_resume_sees_each_event_once_and_in_order(room: RoomHarness) -> None:
    """A client that resumes from its last seq gets the events after it, each once."""
    alice = room.join("alice")
    alice.publish("m1", "one")
    alice.publish("m2", "two")
    phone = room.join("bob", since=room.host.engine.store.head)
    phone.leave()
    edit(alice, "e1", 1, "uno")
    react(alice, "r1", 2, "👍")
    delete(alice, "d1", 2)
    again = room.join("bob", since=2)
    assert [(m["seq"], m.get("kind")) for m in again.ws.frames("message")] == [
        (3, "edit"), (4, "react"), (5, "delete")]
    assert again.ws.frames("welcome")[0]["resume"]["complete"] is True


def test_folded_history_page_and_as_of(room: RoomHarness) -> None:
    """A folded page: plain messages only, current bodies, edit counts; as_of is the head."""
    alice = room.join("alice")
    for i in range(4):
        alice.publish(f"m{i}", f"body {i}")
    edit(alice, "e1", 2, "body 1, fixed")
    edit(alice, "e2", 2, "body 1, fixed twice")
    page = history(alice, fold=True, limit=3)  # seqs 4..6: one message, two edits
    assert page["as_of"] == 6
    assert page["next_before"] == 4
    assert [(m["seq"], m["body"]) for m in page["messages"]] == [(4, "body 3")]
    older = history(alice, fold=True, before=4)
    assert [(m["seq"], m["body"], m.get("edits", 0)) for m in older["messages"]] == [
        (1, "body 0", 0), (2, "body 1, fixed twice", 2), (3, "body 2", 0)]
    raw = history(alice, before=4)
    assert raw["as_of"] is None
    assert [m["body"] for m in raw["messages"]] == ["body 0", "body 1", "body 2"]


def test_read_state_is_per_user_and_synced_across_their_sockets(room: RoomHarness) -> None:
    """`read` moves forward only, reaches each of the user's sockets and no one else."""
    alice = room.join("alice")
    phone, laptop = room.join("bob"), room.join("bob")
    for i in range(4):
        alice.publish(f"m{i}", str(i))
    phone.publish("b1", "mine")  # own messages are never unread
    delete(alice, "d1", 4)  # deleted messages are not unread either
    react(alice, "r1", 1, "👍")  # events are not messages
    phone.send({"type": "read", "seq": 2})
    assert phone.take("read") == laptop.take("read") == [{"type": "read", "seq": 2, "unread": 1}]
    assert alice.take("read") == []
    phone.send({"type": "read", "seq": 1})  # backwards: nothing
    phone.send({"type": "read", "seq": 10**9})  # beyond the head: the head
    assert laptop.take("read") == [{"type": "read", "seq": 7, "unread": 0}]
    tablet = room.join("bob", since=7)
    welcome = tablet.ws.frames("welcome")[0]
    assert (welcome["read"], welcome["unread"]) == (7, 0)
    fresh = room.join("carol")
    assert (fresh.ws.frames("welcome")[0]["read"], fresh.ws.frames("welcome")[0]["unread"]) == (
        0, 4)


def test_a_v1_client_sees_a_gapless_stream_of_message_frames(room: RoomHarness) -> None:
    """A client that only knows v1 frames gets every seq as a `message` and nothing new."""
    old = room.join("old")
    alice = room.join("alice")
    alice.publish("m1", "one")
    edit(alice, "e1", 1, "uno")
    react(alice, "r1", 1, "👍")
    delete(alice, "d1", 1)
    alice.send({"type": "read", "seq": 4})
    old.publish("o1", "v1 still works")
    assert {f["type"] for f in old.ws.sent} <= {"welcome", "presence", "message", "ack"}
    assert old.seqs() == [1, 2, 3, 4, 5]


def test_plain_publish_costs_no_extra_sql(room: RoomHarness) -> None:
    """The publish hot path is one statement: the message's row, whose trigger claims its
    dedupe key (each statement is a call into the runtime on Cloudflare)."""
    statements: list[str] = []
    execute = room.sql.execute

    def counted(query: str, *params: Any) -> Any:
        words = query.split()
        statements.append(f"{words[0]} {words[2] if words[0] == 'INSERT' else words[1]}")
        return execute(query, *params)

    room.sql.execute = counted  # type: ignore[method-assign]
    room.hibernate()  # the host takes the port's methods when it is built
    alice = room.join("alice")
    alice.publish("m0", "warm")
    statements.clear()
    alice.publish("m1", "one")
    expected = ["INSERT messages"]
    if room.hibernate_every_event:  # the wake after the event reads the room's catalogue
        statements = [s for s in statements if s in expected]
    assert statements == expected


def test_a_room_stored_before_lifecycle_events_gains_their_columns() -> None:
    """A v1 database (no lifecycle columns) keeps its messages and accepts events on wake."""
    sql = SqliteSql(":memory:")
    sql.execute("CREATE TABLE messages (seq INTEGER PRIMARY KEY, id TEXT NOT NULL, "
                "user_id TEXT NOT NULL, name TEXT NOT NULL, body TEXT NOT NULL, "
                "sent_ms INTEGER NOT NULL)")
    sql.execute("INSERT INTO messages VALUES (1, 'm1', 'alice', 'Alice', 'old', 5)")
    store = RoomStore(sql)
    (message,) = store.after(0, 10)
    assert (message.seq, message.body, message.kind, message.deleted) == (1, "old", None, False)
    event = store.delete(id="d1", user_id="alice", name="Alice", target=1, author="alice",
                         sent_ms=6)
    assert event.seq == 2
    assert [m.body for m in store.after(0, 10)] == ["", ""]
    RoomStore(sql)  # waking again changes nothing


def test_a_room_stored_before_the_claiming_trigger_gets_it_and_keeps_its_keys() -> None:
    """A room stored by the version that claimed dedupe keys with a statement of its own (no
    `claim_client_id` trigger) gains the trigger on its next wake; the keys it stored still
    make retransmits, and new messages and events claim theirs through the trigger."""
    sql = SqliteSql(":memory:")
    old = RoomStore(sql, "lobby")
    old.append(id="m1", user_id="alice", name="Alice", body="one", sent_ms=1)
    sql.execute("DROP TRIGGER claim_client_id")  # as the earlier version left the room
    sql.execute("INSERT INTO messages (seq, id, user_id, name, body, sent_ms) "
                "VALUES (2, 'm2', 'alice', 'Alice', 'two', 2)")
    sql.execute("INSERT INTO dedupe (user_id, id, seq, at_ms) VALUES ('alice', 'm2', 2, 2)")
    store = RoomStore(sql, "lobby")  # the wake completes the schema
    assert sql.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'") == [
        ("claim_client_id",)]
    again, duplicate = store.append(id="m2", user_id="alice", name="Alice", body="x", sent_ms=3)
    assert (again.seq, again.body, duplicate) == (2, "two", True)
    third, duplicate = store.append(id="m3", user_id="alice", name="Alice", body="3", sent_ms=4)
    assert (third.seq, duplicate) == (3, False)
    assert store.append(id="m3", user_id="alice", name="Alice", body="y", sent_ms=5) == (
        third, True)
    event = store.delete(id="d1", user_id="alice", name="Alice", target=1, author="alice",
                         sent_ms=6)
    assert store.dedupe_seq("alice", "d1") == event.seq == 4
    assert sql.execute("SELECT user_id, id, seq, at_ms FROM dedupe ORDER BY seq") == [
        ("alice", "m1", 1, 1), ("alice", "m2", 2, 2), ("alice", "m3", 3, 4),
        ("alice", "d1", 4, 6)]


def test_a_message_whose_key_cannot_be_claimed_is_not_stored() -> None:
    """The message's row and its key are one statement: when claiming the key fails, the row
    goes too, the head stays, and the next message takes the seq."""
    sql = SqliteSql(":memory:")
    store = RoomStore(sql, "lobby")
    store.append(id="m1", user_id="alice", name="Alice", body="one", sent_ms=1)
    sql.execute("CREATE TRIGGER refuse BEFORE INSERT ON dedupe WHEN NEW.id = 'bad' "
                "BEGIN SELECT RAISE(ABORT, 'refused'); END")
    with pytest.raises(Exception, match="refused"):
        store.append(id="bad", user_id="alice", name="Alice", body="lost", sent_ms=2)
    assert (store.head, [m.id for m in store.after(0, 10)]) == (1, ["m1"])
    second, duplicate = store.append(id="m2", user_id="alice", name="Alice", body="2", sent_ms=3)
    assert (second.seq, duplicate) == (2, False)


def test_the_local_database_file_keeps_no_deleted_text(tmp_path: Path) -> None:
    """secure_delete zeroes the old text: after a checkpoint the file does not hold it."""
    path = tmp_path / "room.sqlite"
    room = RoomHarness(Limits(burst=1000), path=str(path))
    alice = room.join("alice")
    alice.publish("m1", "a very secret sentence")
    edit(alice, "e1", 1, "an even more secret sentence")
    alice.publish("m2", "ordinary words")
    room.sql.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert b"very secret" in path.read_bytes()
    delete(alice, "d1", 1)
    room.sql.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = path.read_bytes() + Path(f"{path}-wal").read_bytes()
    assert b"ordinary words" in data
    assert b"secret" not in data

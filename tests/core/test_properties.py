"""Invariants under arbitrary input (hypothesis)."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from rooms.limits import Limits
from tests.core.harness import Client, RoomHarness

FRAMES = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=300),
    st.dictionaries(
        st.sampled_from(["type", "id", "body", "since", "before", "limit", "kind", "data", "ref"]),
        st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=20),
                  st.sampled_from(["publish", "hello", "history", "signal", "ping", "x"])),
        max_size=5,
    ).map(json.dumps),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames=st.lists(FRAMES, max_size=20))
def test_arbitrary_frames_never_raise_and_are_always_answered_or_stored(
    frames: list[str | bytes],
) -> None:
    """Any bytes or text: no exception, never an internal error, and seqs stay gapless."""
    room = RoomHarness(Limits(max_strikes=1000, burst=1000))
    client = room.join("fuzz")
    for frame in frames:
        client.send(frame)
        if not client.ws.open:
            break
    assert not [e for e in client.ws.frames("error") if e["code"] == "internal"]
    assert client.ws.close_code in (None, 1008, 1009)
    store = room.host.engine.store
    assert [m.seq for m in store.after(0, 1000)] == list(range(1, store.head + 1))


class RoomMachine(RuleBasedStateMachine):
    """Random join / publish / leave / hibernate: every member gets each message exactly once."""

    def __init__(self) -> None:
        super().__init__()
        self.room = RoomHarness(Limits(burst=10_000, messages_per_second=10_000))
        self.clients: list[Client] = []
        self.joined_at: dict[int, int] = {}  # client index -> head when it joined
        self.counter = 0

    @rule(user=st.sampled_from(["ann", "ben", "cat"]))
    def join(self, user: str) -> None:
        self.joined_at[len(self.clients)] = self.room.host.engine.store.head
        self.clients.append(self.room.join(user, since=self.room.host.engine.store.head))

    @precondition(lambda self: any(c.ws.open for c in self.clients))
    @rule(pick=st.integers(min_value=0), retransmit=st.booleans())
    def publish(self, pick: int, retransmit: bool) -> None:
        open_clients = [c for c in self.clients if c.ws.open]
        client = open_clients[pick % len(open_clients)]
        if not retransmit:
            self.counter += 1
        client.publish(f"{client.user_id}-{self.counter}", "body")

    @precondition(lambda self: any(c.ws.open for c in self.clients))
    @rule(pick=st.integers(min_value=0))
    def leave(self, pick: int) -> None:
        open_clients = [c for c in self.clients if c.ws.open]
        open_clients[pick % len(open_clients)].leave()

    @rule()
    def hibernate(self) -> None:
        self.room.hibernate()

    @invariant()
    def each_open_member_saw_each_message_once_in_order(self) -> None:
        head = self.room.host.engine.store.head
        for index, client in enumerate(self.clients):
            if client.ws.open:
                assert client.seqs() == list(range(self.joined_at[index] + 1, head + 1))

    @invariant()
    def presence_is_exactly_the_open_users(self) -> None:
        open_users = sorted({c.user_id for c in self.clients if c.ws.open})
        assert [m.user_id for m in self.room.host.engine.members()] == open_users
        # Every open client's own view: the welcome's list, then each join and leave applied.
        for client in self.clients:
            if not client.ws.open:
                continue
            seen: set[str] = set()
            for frame in client.ws.sent:
                if frame["type"] == "welcome":
                    seen = {m["user_id"] for m in frame["presence"]}
                elif frame["type"] == "presence" and frame["event"] == "join":
                    seen.add(frame["member"]["user_id"])
                elif frame["type"] == "presence" and frame["event"] == "leave":
                    seen.discard(frame["member"]["user_id"])
            assert sorted(seen) == open_users


TestRoomMachine = RoomMachine.TestCase
TestRoomMachine.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)


class ArchivedRoomMachine(RuleBasedStateMachine):
    """Random publish / archive / fault / hibernate: a resume from 0 always yields 1..head."""

    def __init__(self) -> None:
        super().__init__()
        import tempfile
        from pathlib import Path

        from rooms.archive import ArchivePolicy
        from tests.core.harness import archive_bindings

        self.tmp = tempfile.TemporaryDirectory()
        policy = ArchivePolicy(max_segment=3, retain_messages=2, interval_ms=0)
        bindings, self.faults = archive_bindings(Path(self.tmp.name), policy)
        self.room = RoomHarness(Limits(burst=10_000, messages_per_second=10_000),
                                archive=bindings)
        self.writer = self.room.join("writer")
        self.count = 0
        self.bodies: dict[int, str] = {}  # seq -> the body every read must serve
        self.deleted: set[str] = set()

    @rule(n=st.integers(min_value=1, max_value=5))
    def publish(self, n: int) -> None:
        for _ in range(n):
            self.count += 1
            self.writer.publish(f"m{self.count}", f"body {self.count}")
            self.bodies[self.room.host.engine.store.head] = f"body {self.count}"

    @precondition(lambda self: any(b.startswith("body") for b in self.bodies.values()))
    @rule(pick=st.integers(min_value=0), operator=st.booleans())
    def delete(self, pick: int, operator: bool) -> None:
        """The writer deletes a retained message, or an operator any message, archived or not."""
        from tests.core.harness import run

        store = self.room.host.engine.store
        live = [s for s, b in self.bodies.items() if b.startswith("body")]
        seq = live[pick % len(live)]
        if operator or seq < store.oldest_retained():
            result = run(self.room.host.admin("delete", {"seq": str(seq)}))
            if "refused" in result:  # archive unreadable right now: nothing deleted
                assert result["refused"]["code"] == "archive_unavailable"
                return
        else:
            self.writer.send({"type": "delete", "id": f"d{seq}", "target": seq})
        self.deleted.add(self.bodies[seq])
        self.bodies[seq] = ""
        self.bodies[store.head] = ""  # the delete event itself

    @rule(r2=st.booleans(), d1=st.booleans())
    def archive(self, r2: bool, d1: bool) -> None:
        self.faults.r2_put_failures = int(r2)
        self.faults.d1_write_failures = int(d1)
        from tests.core.harness import run

        run(self.room.host.alarm())

    @rule()
    def hibernate(self) -> None:
        self.room.hibernate()

    @invariant()
    def resume_from_zero_is_complete_and_in_order(self) -> None:
        reader = self.room.join("reader", since=0)
        head = self.room.host.engine.store.head
        assert reader.ws.frames("welcome")[0]["resume"]["complete"] is True
        assert reader.seqs() == list(range(1, head + 1))
        assert [m["body"] for m in reader.ws.frames("message")] == [
            self.bodies[i] for i in range(1, head + 1)]
        reader.leave()

    @invariant()
    def archived_segments_hold_no_deleted_body_once_redacted(self) -> None:
        import gzip

        assert self.room.archive is not None
        store = self.room.host.engine.store
        if store.redaction_count():
            return  # waiting for the next successful run (reads are redacted meanwhile)
        root = self.room.archive.bucket.bucket.root  # type: ignore[attr-defined]
        for path in root.rglob("*.ndjson.gz"):
            text = gzip.decompress(path.read_bytes()).decode()
            assert not [b for b in self.deleted if f'"{b}"' in text], path.name

    @invariant()
    def index_is_consecutive_without_overlap(self) -> None:
        from tests.core.harness import run

        assert self.room.archive is not None
        rows = run(self.room.archive.index.segments("lobby"))
        ranges = [(int(r["first_seq"] or 0), int(r["last_seq"] or 0)) for r in rows]
        expected_first = 1
        for first, last in ranges:
            assert first == expected_first
            expected_first = last + 1
        assert expected_first - 1 == self.room.host.engine.store.archived

    def teardown(self) -> None:
        self.tmp.cleanup()


TestArchivedRoomMachine = ArchivedRoomMachine.TestCase
TestArchivedRoomMachine.settings = settings(max_examples=40, stateful_step_count=20,
                                            deadline=None)


EMOJI = ["👍", "🎉", "🔥"]
MAX_EDITS = 3
MAX_REACTIONS = 2


class LifecycleMachine(RuleBasedStateMachine):
    """Random publishes, edits, deletes, reactions, reads, retransmits, hibernation and restarts
    against a model: each event is acked as the model predicts, every open socket's stream stays
    gapless and folds to the model, and no deleted body survives anywhere in the room."""

    def __init__(self) -> None:
        super().__init__()
        import tempfile
        from pathlib import Path

        self.tmp = tempfile.TemporaryDirectory()
        self.limits = Limits(burst=10_000, messages_per_second=10_000, max_strikes=10_000,
                             max_edits_per_message=MAX_EDITS,
                             max_reactions_per_message=MAX_REACTIONS)
        self.room = RoomHarness(self.limits, path=str(Path(self.tmp.name) / "room.sqlite"))
        self.clients: list[Client] = []
        self.joined_at: dict[int, int] = {}
        # The model: seq -> author, body, deleted, edits, {emoji: users}
        self.messages: dict[int, dict[str, Any]] = {}
        self.secrets: set[str] = set()  # bodies a delete removed (message or edit)
        self.last_frame: dict[int, tuple[dict[str, Any], int]] = {}  # client -> frame, its seq
        self.read: dict[str, int] = {}
        self.counter = 0

    @property
    def head(self) -> int:
        return self.room.host.engine.store.head

    def _open(self, pick: int) -> tuple[int, Client]:
        indexes = [i for i, c in enumerate(self.clients) if c.ws.open]
        index = indexes[pick % len(indexes)]
        return index, self.clients[index]

    def _send(self, index: int, frame: dict[str, Any]) -> dict[str, Any]:
        client = self.clients[index]
        client.take("ack")
        client.take("error")
        client.send(frame)
        answers = client.take("ack") + client.take("error")
        assert len(answers) == 1, answers
        return answers[0]

    @rule(user=st.sampled_from(["ann", "ben", "cat"]))
    def join(self, user: str) -> None:
        self.joined_at[len(self.clients)] = self.head
        self.clients.append(self.room.join(user, since=self.head))

    @precondition(lambda self: any(c.ws.open for c in self.clients))
    @rule(pick=st.integers(min_value=0))
    def publish(self, pick: int) -> None:
        index, client = self._open(pick)
        self.counter += 1
        body = f"body-{self.counter}-{client.user_id}"
        answer = self._send(index, {"type": "publish", "id": f"p{self.counter}", "body": body})
        assert answer["type"] == "ack"
        assert not answer["duplicate"]
        self.messages[answer["seq"]] = {"author": client.user_id, "body": body, "deleted": False,
                                        "edits": 0, "reactions": {}}
        self.last_frame[index] = ({"type": "publish", "id": f"p{self.counter}", "body": body},
                                  answer["seq"])

    def _target(self, pick: int) -> int:
        seqs = sorted(self.messages)
        return seqs[pick % len(seqs)]

    def _actor(self, pick: int, seq: int, own: bool) -> tuple[int, Client]:
        """A socket of the target's author when ``own`` and one is open, else any socket."""
        author = self.messages[seq]["author"]
        mine = [i for i, c in enumerate(self.clients) if c.ws.open and c.user_id == author]
        if own and mine:
            index = mine[pick % len(mine)]
            return index, self.clients[index]
        return self._open(pick)

    @precondition(lambda self: self.messages and any(c.ws.open for c in self.clients))
    @rule(pick=st.integers(min_value=0), which=st.integers(min_value=0), own=st.booleans())
    def edit(self, pick: int, which: int, own: bool) -> None:
        seq = self._target(which)
        index, client = self._actor(pick, seq, own)
        model = self.messages[seq]
        self.counter += 1
        # Ended by the user, as publish bodies are: a secret is looked for as a substring,
        # and "edit-2" alone is inside "edit-27".
        body = f"edit-{self.counter}-{client.user_id}"
        frame = {"type": "edit", "id": f"e{self.counter}", "target": seq, "body": body}
        answer = self._send(index, frame)
        if model["author"] != client.user_id:
            assert answer.get("code") == "not_author"
        elif model["deleted"]:
            assert answer.get("code") == "target_deleted"
        elif model["edits"] >= MAX_EDITS:
            assert answer.get("code") == "too_many_edits"
        else:
            assert answer["type"] == "ack"
            assert answer["seq"] == self.head
            model["edits"] += 1
            model["history"] = [*model.get("history", [model["body"]]), body]
            model["body"] = body
            self.last_frame[index] = (frame, answer["seq"])

    @precondition(lambda self: self.messages and any(c.ws.open for c in self.clients))
    @rule(pick=st.integers(min_value=0), which=st.integers(min_value=0), own=st.booleans())
    def delete(self, pick: int, which: int, own: bool) -> None:
        seq = self._target(which)
        index, client = self._actor(pick, seq, own)
        model = self.messages[seq]
        self.counter += 1
        frame = {"type": "delete", "id": f"d{self.counter}", "target": seq}
        answer = self._send(index, frame)
        if model["author"] != client.user_id:
            assert answer.get("code") == "not_author"
        elif model["deleted"]:
            assert answer["type"] == "ack"
            assert answer["duplicate"]
            assert answer["seq"] == model["deleted"]
        else:
            assert answer["type"] == "ack"
            assert not answer["duplicate"]
            self.secrets.update(model.get("history", [model["body"]]))
            model.update(deleted=answer["seq"], body="", reactions={})
            self.last_frame[index] = (frame, answer["seq"])

    @precondition(lambda self: self.messages and any(c.ws.open for c in self.clients))
    @rule(pick=st.integers(min_value=0), which=st.integers(min_value=0),
          emoji=st.sampled_from(EMOJI), remove=st.booleans())
    def react(self, pick: int, which: int, emoji: str, remove: bool) -> None:
        index, client = self._open(pick)
        seq = self._target(which)
        model = self.messages[seq]
        self.counter += 1
        frame = {"type": "react", "id": f"r{self.counter}", "target": seq, "emoji": emoji,
                 "remove": remove}
        answer = self._send(index, frame)
        users = model["reactions"].get(emoji, set())
        if model["deleted"]:
            assert answer.get("code") == "target_deleted"
        elif (client.user_id in users) != remove:
            assert answer["type"] == "ack"
            assert answer["duplicate"]
        elif not remove and emoji not in model["reactions"] and len(
                model["reactions"]) >= MAX_REACTIONS:
            assert answer.get("code") == "too_many_reactions"
        else:
            assert answer["type"] == "ack"
            assert not answer["duplicate"]
            if remove:
                users.discard(client.user_id)
                if not users:
                    del model["reactions"][emoji]
            else:
                model["reactions"][emoji] = {*users, client.user_id}
            self.last_frame[index] = (frame, answer["seq"])

    @precondition(lambda self: any(i in self.last_frame and c.ws.open
                                   for i, c in enumerate(self.clients)))
    @rule(pick=st.integers(min_value=0))
    def retransmit(self, pick: int) -> None:
        """The last stored frame of a socket, sent again: the same seq, nothing stored."""
        candidates = [i for i, c in enumerate(self.clients) if c.ws.open and i in self.last_frame]
        index = candidates[pick % len(candidates)]
        frame, seq = self.last_frame[index]
        head = self.head
        answer = self._send(index, frame)
        assert answer == {"type": "ack", "id": frame["id"], "seq": seq, "duplicate": True}
        assert self.head == head

    @precondition(lambda self: any(c.ws.open for c in self.clients))
    @rule(pick=st.integers(min_value=0), seq=st.integers(min_value=0, max_value=60))
    def read(self, pick: int, seq: int) -> None:
        _, client = self._open(pick)
        client.send({"type": "read", "seq": seq})
        moved = min(seq, self.head)
        if moved > self.read.get(client.user_id, 0):
            self.read[client.user_id] = moved
            for other in self.clients:
                if other.ws.open:
                    got = other.take("read")
                    assert [r["seq"] for r in got] == (
                        [moved] if other.user_id == client.user_id else [])

    @precondition(lambda self: any(c.ws.open for c in self.clients))
    @rule(pick=st.integers(min_value=0))
    def leave(self, pick: int) -> None:
        self._open(pick)[1].leave()

    @rule()
    def hibernate(self) -> None:
        self.room.hibernate()

    @rule()
    def restart(self) -> None:
        """A new connection to the same database file: nothing in memory survives."""
        from roomsd.sqlite import SqliteSql

        path = str(self.room.sql._db.execute("PRAGMA database_list").fetchone()[2])
        self.room.sql.close()
        self.room.sql = SqliteSql(path)
        self.room.hibernate()

    @invariant()
    def each_open_socket_has_a_gapless_stream_that_folds_to_the_model(self) -> None:
        head = self.head
        for index, client in enumerate(self.clients):
            if not client.ws.open:
                continue
            frames = client.ws.frames("message")
            assert [f["seq"] for f in frames] == list(range(self.joined_at[index] + 1, head + 1))
            held: dict[int, dict[str, Any]] = {}
            for f in frames:
                kind, target = f.get("kind"), f.get("target")
                if kind is None:
                    held[f["seq"]] = {"body": f["body"], "deleted": False, "reactions": {}}
                elif target in held:
                    view = held[target]
                    if kind == "edit":
                        view["body"] = f["body"]
                    elif kind == "delete":
                        view.update(body="", deleted=True, reactions={})
                    elif kind == "react":
                        view["reactions"].setdefault(f["emoji"], set()).add(f["user_id"])
                    else:
                        view["reactions"][f["emoji"]].discard(f["user_id"])
                        if not view["reactions"][f["emoji"]]:
                            del view["reactions"][f["emoji"]]
            for seq, view in held.items():
                model = self.messages[seq]
                assert view == {"body": model["body"], "deleted": bool(model["deleted"]),
                                "reactions": model["reactions"]}

    @invariant()
    def folded_storage_matches_the_model(self) -> None:
        from rooms.lifecycle import fold

        store = self.room.host.engine.store
        head = store.head
        folded = fold(store.between(1, head), store.states_between(1, head),
                      store.reactions_between(1, head, "ann"))
        assert {m.seq for m in folded} == set(self.messages)
        for message in folded:
            model = self.messages[message.seq]
            assert (message.body, message.deleted) == (model["body"], bool(model["deleted"]))
            assert {r.emoji: (r.count, r.mine) for r in message.reactions} == {
                emoji: (len(users), "ann" in users) for emoji, users in model["reactions"].items()}

    @invariant()
    def no_deleted_body_is_stored_or_served(self) -> None:
        if not self.secrets:
            return
        tables = ("messages", "message_state", "dedupe", "reactions", "read_state", "room_meta")
        dump = repr([self.room.sql.execute(f"SELECT * FROM {t}") for t in tables])
        assert not [s for s in self.secrets if s in dump]
        reader = self.room.join("reader", since=0)
        replay = repr(reader.ws.frames("message"))
        reader.leave()
        for client in self.clients:  # the reader's join and leave, as every member saw them
            client.ws.sent = [f for f in client.ws.sent if not (
                f["type"] == "presence" and f["member"]["user_id"] == "reader")]
        assert not [s for s in self.secrets if s in replay]

    def teardown(self) -> None:
        self.room.sql.close()
        self.tmp.cleanup()


TestLifecycleMachine = LifecycleMachine.TestCase
TestLifecycleMachine.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)

"""Invariants under arbitrary input (hypothesis)."""

from __future__ import annotations

import json

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

    @rule(n=st.integers(min_value=1, max_value=5))
    def publish(self, n: int) -> None:
        for _ in range(n):
            self.count += 1
            self.writer.publish(f"m{self.count}", f"body {self.count}")

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
            f"body {i}" for i in range(1, head + 1)]
        reader.leave()

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

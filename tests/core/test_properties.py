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


TestRoomMachine = RoomMachine.TestCase
TestRoomMachine.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)

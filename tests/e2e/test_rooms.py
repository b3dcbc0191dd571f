"""A room's promises through real sockets, on every runtime: one gapless order, resume, restart."""

from __future__ import annotations

import asyncio
import json

import pytest
import websockets

from tests.e2e.conftest import ServiceBase, publish, recv_json, recv_until

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


async def test_restart_mid_conversation_loses_nothing_acked(service: ServiceBase) -> None:
    """Stop the service mid-conversation and start it on the same storage: seq continues."""
    room = service.room("durable")
    async with await service.connect(room, "alice") as ws:
        await recv_until(ws, "welcome")
        for i in range(3):
            assert (await publish(ws, f"a{i}", f"before {i}"))["seq"] == i + 1
        await service.restart()  # type: ignore[attr-defined]
        with pytest.raises(websockets.ConnectionClosed):
            await recv_until(ws, "never")
    async with await service.connect(room, "alice", since=1) as ws:
        welcome = await recv_until(ws, "welcome")
        assert welcome["head"] == 3
        assert [(await recv_until(ws, "message"))["body"] for _ in range(2)] == [
            "before 1", "before 2"]
        assert (await publish(ws, "after", "after restart"))["seq"] == 4
        assert await publish(ws, "a0", "retransmit") == {
            "type": "ack", "id": "a0", "seq": 1, "duplicate": True}

"""The local runtime's own machinery through real sockets: hibernation, its database handles,
slow consumers.

These tests look inside the local server (its room registry, sweeps, open connections) or at
behaviour only it has (the bounded per-socket writer). Everything a client alone can observe runs
against every runtime, workerd included, in tests/e2e.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import socket

import pytest

from rooms.auth import mint_token
from rooms.limits import Limits
from rooms.protocol import PING_TEXT, CloseCode
from roomsd.rooms import HibernationPolicy, close_databases
from tests.conftest import timeout
from tests.local.conftest import (
    SECRET,
    ServerFactory,
    recv_json,
    recv_until,
)

pytestmark = pytest.mark.integration


async def test_ping_is_answered_without_waking_the_room(server_factory: ServerFactory) -> None:
    """The ping text gets a pong while the room instance stays hibernated."""
    server = await server_factory(hibernation=HibernationPolicy(every_event=True))
    async with await server.connect("quiet", "alice") as ws:
        await recv_until(ws, "welcome")
        room = server.registry.rooms["quiet"]
        wakes = room.wakes
        assert not room.awake
        for _ in range(3):
            await ws.send(PING_TEXT)
            assert await recv_json(ws) == {"type": "pong"}
        assert room.wakes == wakes
        assert not room.awake


# Every sweep puts every idle room to sleep and hands its database connection over to be closed.
SWEEP_CLOSES_ALL = HibernationPolicy(after_idle_s=0.0, open_idle_databases=0)


async def test_idle_room_hibernates_and_wakes_with_sockets_still_open(
    server_factory: ServerFactory,
) -> None:
    """After the idle sweep the instance is gone; the next frame rebuilds it seamlessly."""
    server = await server_factory(hibernation=SWEEP_CLOSES_ALL)
    async with await server.connect("nap", "alice") as alice, \
            await server.connect("nap", "bob") as bob:
        await recv_until(alice, "welcome")
        await recv_until(bob, "welcome")
        room = server.registry.rooms["nap"]
        idle = server.registry.sweep()
        assert len(idle) == 1  # the sleeping room's database is handed back to be closed
        await close_databases(idle)
        assert not room.awake
        await alice.send(json.dumps({"type": "publish", "id": "1", "body": "after nap"}))
        assert (await recv_until(bob, "message"))["body"] == "after nap"
        assert room.wakes == 2
        assert [m.user_id for m in room.host().engine.members()] == ["alice", "bob"]


async def test_only_the_most_recently_active_sleeping_rooms_keep_their_database_open(
    server_factory: ServerFactory,
) -> None:
    """Memory stays bounded: past `open_idle_databases`, the longest-idle rooms close theirs."""
    server = await server_factory(
        hibernation=HibernationPolicy(after_idle_s=0.0, open_idle_databases=1)
    )
    names = ["first", "second", "third"]
    sockets = [await server.connect(name, "alice") for name in names]
    try:
        for ws in sockets:
            await recv_until(ws, "welcome")
        await sockets[0].send(json.dumps({"type": "publish", "id": "m", "body": "hello"}))
        assert (await recv_until(sockets[0], "ack"))["seq"] == 1  # "first" is now the latest
        closing = server.registry.sweep()
        assert len(closing) == 2
        await close_databases(closing)
        kept = [name for name in names if server.registry.rooms[name].holds_database]
        assert kept == ["first"]
        for i, ws in enumerate(sockets):  # every room wakes and carries on, open or reopened
            await ws.send(json.dumps({"type": "publish", "id": f"m{i}", "body": "again"}))
            assert (await recv_until(ws, "ack"))["seq"] == (2 if i == 0 else 1)
    finally:
        for ws in sockets:
            await ws.close()


async def test_a_room_woken_while_its_old_connection_closes_waits_for_the_close(
    server_factory: ServerFactory,
) -> None:
    """No second connection is opened on the event loop while the first checkpoints."""
    server = await server_factory(hibernation=SWEEP_CLOSES_ALL)
    async with await server.connect("doze", "alice") as alice:
        await recv_until(alice, "welcome")
        closing = server.registry.sweep()
        assert [c.room for c in closing] == ["doze"]
        await alice.send(json.dumps({"type": "publish", "id": "1", "body": "wake up"}))
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(recv_until(alice, "ack"), 0.3)
        assert not server.registry.rooms["doze"].holds_database  # it waited, opened nothing
        await close_databases(closing)
        assert (await recv_until(alice, "ack"))["seq"] == 1


async def test_a_room_is_not_put_to_sleep_in_the_middle_of_an_event(
    server_factory: ServerFactory,
) -> None:
    """An event awaiting I/O (R2, D1) for longer than the idle time keeps its connection."""
    server = await server_factory(hibernation=SWEEP_CLOSES_ALL)
    async with await server.connect("busy", "alice") as alice:
        await recv_until(alice, "welcome")
        room = server.registry.rooms["busy"]
        gate = asyncio.Event()

        async def slow_admin(action: str, params: dict[str, str]) -> dict[str, str]:
            await gate.wait()  # like an archive read from a slow R2
            return {"done": action}

        room.host().admin = slow_admin  # type: ignore[method-assign]
        task = asyncio.create_task(room.admin("inspect", {}))
        await asyncio.sleep(0.05)
        assert server.registry.sweep() == []
        assert room.awake
        assert room.holds_database
        gate.set()
        assert await task == {"done": "inspect"}
        closing = server.registry.sweep()  # idle now: it sleeps and lets its connection go
        assert [c.room for c in closing] == ["busy"]
        await close_databases(closing)


async def open_silent_reader(port: int, path: str) -> socket.socket:
    """A WebSocket client that completes the handshake and never reads again.

    Its receive buffer is set small before connecting, so the kernel holds little on its side
    whatever this machine's defaults are: what the client does not read piles up in the
    server, where the room's bound must cut it off.
    """
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    await loop.sock_sendall(sock, (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n"
    ).encode())
    response = b""
    while b"\r\n\r\n" not in response:
        response += await loop.sock_recv(sock, 1)  # byte by byte: nothing past the head
    assert response.startswith(b"HTTP/1.1 101"), response
    return sock


async def drained_until_closed(sock: socket.socket) -> bytes:
    """Read everything the server still sends until it closes the connection; the tail."""
    loop = asyncio.get_running_loop()
    tail = b""
    while chunk := await asyncio.wait_for(loop.sock_recv(sock, 1 << 16), timeout(30)):
        tail = (tail + chunk)[-64:]
    return tail


async def test_slow_consumer_is_cut_off_and_the_room_keeps_going(
    server_factory: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A client that stops reading is cut off (4008) once its backlog passes the bound, and it
    leaves the member list and the broadcast set at once: one failed send, not one per message
    until its close is handled."""
    caplog.set_level(logging.INFO, logger="rooms")
    limits = Limits(max_backlog_bytes=256 * 1024, messages_per_second=10_000, burst=10_000,
                    max_frame_bytes=64 * 1024, max_body_chars=32_000)
    server = await server_factory(limits=limits)
    token = mint_token(SECRET, "slow")
    slow = await open_silent_reader(server.port, f"/rooms/firehose/ws?token={token}&since=0")
    try:
        async with await server.connect("firehose", "fast") as fast:
            await recv_until(fast, "welcome")
            body = "z" * 32_000
            slow_left = False
            for i in range(2000):  # 64 MB at most: far beyond any kernel socket buffering
                await fast.send(json.dumps({"type": "publish", "id": f"f{i}", "body": body}))
                while (frame := await recv_json(fast))["type"] != "ack":
                    if frame["type"] == "presence" and frame["event"] == "leave":
                        slow_left = frame["member"]["user_id"] == "slow"
                if slow_left:
                    break
            assert slow_left, "the slow client was never cut off"
            for j in range(20):  # the room goes on without it
                await fast.send(json.dumps({"type": "publish", "id": f"after{j}", "body": "x"}))
                assert (await recv_until(fast, "ack"))["seq"] == i + 2 + j
        failed = [r for r in caplog.messages if '"send_failed"' in r]
        assert len(failed) == 1, failed
        tail = await drained_until_closed(slow)
        # The close frame may be lost behind the unread backlog; when it arrives, it says why.
        # (Frames are JSON text: 0x88, a close frame's first byte, appears in nothing else.)
        close = tail.rfind(b"\x88")
        assert close < 0 or int.from_bytes(tail[close + 2 : close + 4]) == CloseCode.SLOW_CONSUMER
    finally:
        slow.close()

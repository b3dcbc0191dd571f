"""The local server's own HTTP bounds and token settings, through real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import json

import aiohttp
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from rooms.auth import TokenPolicy, mint_token
from roomsd import server as roomsd_server
from tests.conftest import timeout
from tests.local.conftest import SECRET, ServerFactory, recv_until

pytestmark = pytest.mark.integration


async def test_a_guest_body_that_never_arrives_gets_408(
    server_factory: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(roomsd_server, "BODY_TIMEOUT_S", 0.5)
    server = await server_factory()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(
        b"POST /auth/guest HTTP/1.1\r\nHost: "
        + server.base.encode()
        + b"\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
        + b'{"name": "x'
    )  # 11 of the 1,000 bytes it declared, then nothing
    await writer.drain()
    # Read the answer, not until EOF: aiohttp lingers a while reading what the client still sends.
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout(10))
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    body = await asyncio.wait_for(reader.readexactly(length), timeout(10))
    writer.close()
    assert b"connection: close" in head.lower()
    assert head.split(b" ", 2)[1] == b"408"
    assert json.loads(body)["error"]["code"] == "request_timeout"


async def test_a_client_that_dribbles_its_headers_is_closed_after_the_head_timeout(
    server_factory: ServerFactory,
) -> None:
    """Slowloris: one byte of request head every 0.2 s holds a connection for ever unless the
    head has a deadline. An open WebSocket is a request in progress: the deadline spares it."""
    server = await server_factory(request_head_timeout_s=1.0)
    room_url = f"ws://{server.base}/rooms/slow/ws?since=0&token={mint_token(SECRET, 'idle')}"
    async with websockets.connect(room_url, open_timeout=timeout(10)) as idle:
        await recv_until(idle, "welcome")
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        head = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 150
        loop = asyncio.get_running_loop()
        started, sent = loop.time(), 0
        while not reader.at_eof() and sent < len(head):
            try:
                writer.write(head[sent : sent + 1])
                await writer.drain()
            except ConnectionError:
                break
            sent += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(reader.read(1), 0.2)  # b"" once the server closed
        held_s = loop.time() - started
        writer.close()
        assert sent < len(head)  # the server gave up before the head was complete
        assert held_s < timeout(10)
        await idle.send(json.dumps({"type": "ping"}))  # idle for longer than the deadline
        assert (await recv_until(idle, "pong"))["type"] == "pong"


async def test_audience_and_issuer_bind_tokens_when_configured(
    server_factory: ServerFactory,
) -> None:
    """With TOKEN_AUDIENCE/TOKEN_ISSUER set, only tokens naming them open rooms, and the guest
    endpoint mints such tokens."""
    policy = TokenPolicy(audience="rooms.test", issuer="https://id.test")
    server = await server_factory(tokens=policy)
    plain = mint_token(SECRET, "ann")
    with pytest.raises(InvalidStatus) as refused:
        await websockets.connect(server.url("bound", token=plain, since=0))
    assert refused.value.response.status_code == 401
    bound = mint_token(SECRET, "ann", policy=policy)
    async with websockets.connect(server.url("bound", token=bound, since=0)) as ws:
        assert (await recv_until(ws, "welcome"))["user_id"] == "ann"
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"http://{server.base}/auth/guest", json={"name": "Guest"}) as reply,
    ):
        guest = (await reply.json())["token"]
    async with websockets.connect(server.url("bound", token=guest, since=0)) as ws:
        assert (await recv_until(ws, "welcome"))["presence"][0]["name"] == "Guest"


async def test_connections_per_address_are_capped(server_factory: ServerFactory) -> None:
    """One host holds at most MAX_CONNECTIONS_PER_ADDRESS WebSockets across all rooms."""
    server = await server_factory(max_connections_per_address=2)

    def url(room: str) -> str:
        return f"ws://{server.base}/rooms/{room}/ws?since=0&token={mint_token(SECRET, room)}"

    first = await websockets.connect(url("a"), open_timeout=timeout(10))
    second = await websockets.connect(url("b"), open_timeout=timeout(10))
    with pytest.raises(InvalidStatus) as refused:
        await websockets.connect(url("c"), open_timeout=timeout(10))
    assert refused.value.response.status_code == 429
    assert json.loads(refused.value.response.body)["error"]["code"] == "too_many_connections"
    await first.close()
    await second.recv()  # its welcome: the server is still serving it
    for _ in range(50):  # the first socket's place is free once the server handled its close
        try:
            third = await websockets.connect(url("c"), open_timeout=timeout(10))
            break
        except InvalidStatus:
            await asyncio.sleep(0.1)
    else:
        raise AssertionError("the place of a closed connection was never freed")
    await third.close()
    await second.close()

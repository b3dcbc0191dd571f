"""The local server's own HTTP bounds and token settings, through real sockets."""

from __future__ import annotations

import asyncio
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

"""Reading a room's frames in tests, the same for every runtime and tier."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

import websockets
from websockets.frames import Close

from tests.conftest import timeout


async def recv_json(ws: websockets.ClientConnection, seconds: float = 10) -> dict[str, Any]:
    raw = await asyncio.wait_for(ws.recv(), timeout(seconds))
    frame: dict[str, Any] = json.loads(raw)
    return frame


async def recv_until(ws: websockets.ClientConnection, type_: str) -> dict[str, Any]:
    """Skip frames (presence, ...) until one of ``type_`` arrives."""
    while True:
        frame = await recv_json(ws)
        if frame["type"] == type_:
            return frame


async def closed_by_server(ws: websockets.ClientConnection) -> websockets.ConnectionClosed:
    """Read (and drop) frames until the server closes; return how it closed."""
    while True:
        try:
            await asyncio.wait_for(ws.recv(), timeout(15))
        except websockets.ConnectionClosed as closed:
            return closed


async def close_frame(ws: websockets.ClientConnection, seconds: float = 15) -> Close:
    """The close frame the server sent, as soon as it arrives (dropping frames before it).

    Unlike `closed_by_server` this does not wait for the server to end the TCP connection too,
    which workerd sometimes does only seconds later (see test_admin.py).
    """
    async def drain() -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            while True:
                await ws.recv()

    draining = asyncio.create_task(drain())
    try:
        deadline = time.monotonic() + timeout(seconds)
        while (close := ws.protocol.close_rcvd) is None:
            if time.monotonic() > deadline:
                raise TimeoutError("no close frame from the server")
            await asyncio.sleep(0.01)
        return close
    finally:
        draining.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await draining


async def publish(ws: websockets.ClientConnection, id_: str, body: str) -> dict[str, Any]:
    """Publish one message and return its ack."""
    await ws.send(json.dumps({"type": "publish", "id": id_, "body": body}))
    return await recv_until(ws, "ack")

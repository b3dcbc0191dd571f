"""A loopback TCP proxy in front of the local server that can break a page's WebSockets.

Plain HTTP (the page, /auth/guest, /health) always goes through. WebSocket connections can be
made to lose every reply (`hold_replies`: a publish reaches the room, its ack never reaches the
page) or be reset and refused (`block_sockets`) until `restore`. Only 127.0.0.1 on both sides.
"""

from __future__ import annotations

import asyncio
import contextlib


class CuttableProxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.blocking = False
        self.holding = False
        self._server: asyncio.Server | None = None
        self._sockets: set[asyncio.StreamWriter] = set()  # both ends of proxied WebSockets
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    @property
    def base(self) -> str:
        return f"127.0.0.1:{self.port}"

    def hold_replies(self) -> None:
        self.holding = True

    def block_sockets(self) -> None:
        """Reset every proxied WebSocket now and every new one until `restore`."""
        self.blocking = True
        for writer in list(self._sockets):
            writer.transport.abort()
        self._sockets.clear()

    def restore(self) -> None:
        self.blocking = False
        self.holding = False

    async def close(self) -> None:
        self.block_sockets()
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._server is not None:
            await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        up_writer: asyncio.StreamWriter | None = None
        try:
            first = await reader.read(65536)  # the request head (loopback: one read)
            websocket = b"upgrade: websocket" in first.lower()
            if not first or (websocket and self.blocking):
                return
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
            if websocket:
                self._sockets.update((writer, up_writer))
            up_writer.write(first)
            await asyncio.gather(
                self._pump(up_reader, writer, replies=websocket),
                self._pump(reader, up_writer, replies=False),
            )
        except OSError:
            pass
        finally:
            for w in (writer, up_writer):
                if w is not None:
                    self._sockets.discard(w)
                    w.transport.abort()
            self._tasks.discard(task)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    replies: bool) -> None:
        try:
            while data := await reader.read(65536):
                if replies and self.holding:
                    continue  # lost on the way to the page
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.transport.abort()  # one side gone: so is the other

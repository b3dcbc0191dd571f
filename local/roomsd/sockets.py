"""Local hibernatable sockets: the `Sockets` port over aiohttp, with Cloudflare's limits.

A `LocalSocket` outlives the room instance that accepted it, exactly like a hibernatable socket
on Cloudflare: the room can be evicted and rebuilt while the socket stays open, and the rebuilt
room finds its state in the socket's attachment.

Each socket has its own writer task draining a bounded outbound queue, so one client that stops
reading never blocks the room: once its backlog passes the bound it is cut off with
`CloseCode.SLOW_CONSUMER` (and resumes by seq when it returns).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

from aiohttp import web

from rooms.limits import (
    PLATFORM_MAX_ATTACHMENT_BYTES,
    PLATFORM_MAX_TAG_CHARS,
    PLATFORM_MAX_TAGS,
)
from rooms.protocol import CloseCode


class PlatformLimitError(Exception):
    """What workerd would throw: code that breaks a platform limit fails locally too."""


class LocalSocket:
    def __init__(
        self, request: web.Request, ws: web.WebSocketResponse, max_backlog_bytes: int
    ) -> None:
        self.request = request
        self.ws = ws
        self.tags: tuple[str, ...] = ()
        self._attachment: str | None = None
        self._queue: deque[str | tuple[int, str]] = deque()
        self._backlog_bytes = 0
        self._max_backlog_bytes = max_backlog_bytes
        self._wakeup = asyncio.Event()
        self._closing = False
        self.cut_for_backlog = False
        self._reader_done = asyncio.Event()
        self._writer = asyncio.create_task(self._drain())

    # ----------------------------------------------------------------------- Sockets port

    @property
    def is_open(self) -> bool:
        return not self._closing and not self.ws.closed

    def accept(self, tags: list[str]) -> None:
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise PlatformLimitError("tags must be a list of strings")
        if len(tags) > PLATFORM_MAX_TAGS:
            raise PlatformLimitError(f"a socket may carry at most {PLATFORM_MAX_TAGS} tags")
        if any(len(t) > PLATFORM_MAX_TAG_CHARS for t in tags):
            raise PlatformLimitError(f"tags are at most {PLATFORM_MAX_TAG_CHARS} characters")
        self.tags = tuple(tags)

    @property
    def attachment(self) -> str | None:
        return self._attachment

    @attachment.setter
    def attachment(self, value: str) -> None:
        if len(value.encode()) > PLATFORM_MAX_ATTACHMENT_BYTES:
            raise PlatformLimitError("A WebSocket 'attachment' cannot be larger than 16384 bytes")
        self._attachment = value

    def send(self, text: str) -> None:
        if not isinstance(text, str):
            raise TypeError("rooms send text frames only")
        if self._closing:
            raise ConnectionError("socket is closing")
        self._backlog_bytes += len(text)
        if self._backlog_bytes > self._max_backlog_bytes:
            self.cut_for_backlog = True
            self.abort(CloseCode.SLOW_CONSUMER, "slow consumer: resume with since")
            return
        self._queue.append(text)
        self._wakeup.set()

    def close(self, code: int, reason: str) -> None:
        """Close after the frames already queued (an error frame goes out before its close)."""
        if self._closing:
            return
        self._closing = True
        self._queue.append((code, reason))
        self._wakeup.set()

    def abort(self, code: int, reason: str) -> None:
        """Close now, dropping the backlog: the client is not reading it anyway.

        The writer is likely blocked on a full socket buffer, so it is cancelled and the close
        is attempted by a fresh task that drops the TCP connection if the frame cannot go out.
        """
        self._closing = True
        self._queue.clear()
        self._backlog_bytes = 0
        self._writer.cancel()
        self._writer = asyncio.create_task(self._close_frame(code, reason))

    # ----------------------------------------------------------------------- writer

    async def _drain(self) -> None:
        try:
            while True:
                await self._wakeup.wait()
                self._wakeup.clear()
                while self._queue:
                    item = self._queue.popleft()
                    if isinstance(item, tuple):
                        await self._close_frame(*item)
                        return
                    self._backlog_bytes -= len(item)
                    await self.ws.send_str(item)
        except (ConnectionError, RuntimeError, asyncio.CancelledError):
            pass  # the connection went away; the reader sees it and reports the close

    async def _close_frame(self, code: int, reason: str) -> None:
        # A client that is not reading never answers our close frame: bound the handshake,
        # then drop the TCP connection so the reader ends and the room sees the leave.
        # aiohttp's close may end in CancelledError when its drain is interrupted by the timeout;
        # either way, what follows decides whether the connection must be dropped.
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.wait_for(self.ws.close(code=code, message=reason.encode()), 2)
        try:
            await asyncio.wait_for(self._reader_done.wait(), 2)
        except TimeoutError:
            if self.request.transport is not None:
                self.request.transport.abort()

    async def finished(self) -> None:
        """Once the reader is done: let a queued close frame go out (bounded), then stop."""
        self._reader_done.set()
        if not self._closing:
            self._closing = True
            self._writer.cancel()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(self._writer, 5)


class LocalSockets:
    """One room's accepted sockets; survives the room's eviction (hibernation)."""

    def __init__(self) -> None:
        self._sockets: list[LocalSocket] = []

    def __len__(self) -> int:
        return len(self._sockets)

    def forget(self, ws: LocalSocket) -> None:
        if ws in self._sockets:
            self._sockets.remove(ws)

    def accept(self, ws: LocalSocket, tags: list[str]) -> None:
        ws.accept(tags)
        self._sockets.append(ws)

    def all(self) -> list[LocalSocket]:
        return list(self._sockets)

    def is_open(self, ws: LocalSocket) -> bool:
        return ws.is_open

    def attachment(self, ws: LocalSocket) -> str | None:
        return ws.attachment

    def set_attachment(self, ws: LocalSocket, value: str) -> None:
        ws.attachment = value

    def send(self, ws: LocalSocket, text: str) -> None:
        ws.send(text)

    def close(self, ws: LocalSocket, code: int, reason: str) -> None:
        ws.close(code, reason)

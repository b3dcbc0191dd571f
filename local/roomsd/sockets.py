"""Local hibernatable sockets: the `Sockets` port over aiohttp, with Cloudflare's limits.

A `LocalSocket` outlives the room instance that accepted it, exactly like a hibernatable socket
on Cloudflare: the room can be evicted and rebuilt while the socket stays open, and the rebuilt
room finds its state in the socket's attachment.

Each socket has its own bounded outbound queue, so one client that stops reading never blocks
the room: once its backlog passes the bound it is cut off with `CloseCode.SLOW_CONSUMER` (and
resumes by seq when it returns).

Sending is cheap per recipient because broadcasts dominate: a text is framed once (the frame
bytes are shared by every recipient of the same broadcast), and each socket's queued frames are
written with one transport write per event-loop iteration, by one flush callback for all sockets
rather than a task wake-up per socket and message. Before any frame is written, the output gate
commits the writes made ahead of it (`roomsd.output_gate`): a frame never shows a message that
is not committed. A socket's writer task only waits out a full
transport buffer (a client reading slowly) and sends the close frame after the queued frames.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import weakref
from collections.abc import Callable

from aiohttp import web

from rooms.limits import (
    PLATFORM_MAX_ATTACHMENT_BYTES,
    PLATFORM_MAX_TAG_BYTES,
    PLATFORM_MAX_TAGS,
)
from rooms.protocol import CloseCode
from roomsd.output_gate import OutputGate, output_gate


class PlatformLimitError(Exception):
    """What workerd would throw: code that breaks a platform limit fails locally too."""


# A socket whose transport holds more than this waits for the client before writing more (the
# frames wait in its queue, where they count towards the slow-consumer bound).
_HIGH_WATER_BYTES = 64 * 1024
_DRAIN_POLL_S = 0.005
_TEXT_FIN = 0x81  # FIN + opcode 1 (text); frames from a server are never masked


class _FrameCache:
    """The last text framed: every recipient of a broadcast gets the same bytes."""

    text: str | None = None
    frame: bytes = b""


def text_frame(text: str) -> bytes:
    """``text`` as one complete, unmasked WebSocket text frame (RFC 6455 5.2)."""
    if text is _FrameCache.text:
        return _FrameCache.frame
    data = text.encode()
    size = len(data)
    if size < 126:
        frame = bytes((_TEXT_FIN, size)) + data
    elif size < 65536:
        frame = struct.pack("!BBH", _TEXT_FIN, 126, size) + data
    else:
        frame = struct.pack("!BBQ", _TEXT_FIN, 127, size) + data
    _FrameCache.text, _FrameCache.frame = text, frame
    return frame


class _Flusher:
    """Writes out every socket that queued frames, once per event-loop iteration."""

    def __init__(self, loop: asyncio.AbstractEventLoop, gate: OutputGate) -> None:
        self._loop = loop
        self.gate = gate
        self._pending: list[LocalSocket] = []

    def add(self, sock: LocalSocket) -> None:
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(sock)

    def _flush(self) -> None:
        self.gate.release()  # every frame below may carry a message written this iteration
        pending, self._pending = self._pending, []
        for sock in pending:
            sock._flush()


_FLUSHERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Flusher] = (
    weakref.WeakKeyDictionary()
)


def _flusher() -> _Flusher:
    loop = asyncio.get_running_loop()
    flusher = _FLUSHERS.get(loop)
    if flusher is None:
        flusher = _FLUSHERS[loop] = _Flusher(loop, output_gate())
    return flusher


class LocalSocket:
    __slots__ = (
        "_attachment",
        "_backlog_bytes",
        "_blocked",
        "_closing",
        "_flush_due",
        "_flusher",
        "_max_backlog_bytes",
        "_queue",
        "_reader_done",
        "_reader_waiter",
        "_transport",
        "_writer",
        "cut_for_backlog",
        "request",
        "tags",
        "ws",
    )

    def __init__(
        self, request: web.Request, ws: web.WebSocketResponse, max_backlog_bytes: int
    ) -> None:
        self.request = request
        self.ws = ws
        # The connection's transport, looked up once: aiohttp's `request.transport` is a
        # property that goes through the protocol on every write. A lost connection's
        # transport says `is_closing()`, which every write checks.
        self._transport = request.transport
        self.tags: tuple[str, ...] = ()
        self._attachment: str | None = None
        # A list, not a deque: an empty deque takes 760 bytes (a list 56), and most sockets'
        # queues are empty most of the time; frames leave in runs (sliced off).
        self._queue: list[bytes | tuple[int, str]] = []
        self._backlog_bytes = 0
        self._max_backlog_bytes = max_backlog_bytes
        self._closing = False
        self._flush_due = False  # queued with the flusher for this loop iteration
        self._blocked = False  # the transport is full: the writer task waits for the client
        self.cut_for_backlog = False
        self._reader_done = False
        self._reader_waiter: asyncio.Future[None] | None = None  # made only when awaited
        self._flusher = _flusher()
        # Only while there is something to wait for: a full transport, or the close frame.
        self._writer: asyncio.Task[None] | None = None

    # ----------------------------------------------------------------------- Sockets port

    @property
    def is_open(self) -> bool:
        return not self._closing and not self.ws.closed

    def accept(self, tags: list[str]) -> None:
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise PlatformLimitError("tags must be a list of strings")
        if len(tags) > PLATFORM_MAX_TAGS:
            raise PlatformLimitError(f"a socket may carry at most {PLATFORM_MAX_TAGS} tags")
        if any(len(t.encode()) > PLATFORM_MAX_TAG_BYTES for t in tags):
            raise PlatformLimitError(f"tags are at most {PLATFORM_MAX_TAG_BYTES} UTF-8 bytes")
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
        frame = text_frame(text)
        self._backlog_bytes += len(frame)
        if self._backlog_bytes > self._max_backlog_bytes:
            self.cut_for_backlog = True
            self.abort(CloseCode.SLOW_CONSUMER, "slow consumer: resume with since")
            # A failed send: the room stops sending to it and announces its leave at once.
            raise ConnectionError("slow consumer cut off")
        self._queue.append(frame)
        if not self._flush_due:
            self._flush_due = True
            self._flusher.add(self)

    def close(self, code: int, reason: str) -> None:
        """Close after the frames already queued (an error frame goes out before its close)."""
        if self._closing:
            return
        self._closing = True
        self._queue.append((code, reason))
        self._start_writer()

    def abort(self, code: int, reason: str) -> None:
        """Close now, dropping the backlog: the client is not reading it anyway.

        The writer is likely blocked on a full socket buffer, so it is cancelled and the close
        is attempted by a fresh task that drops the TCP connection if the frame cannot go out.
        """
        self._closing = True
        self._queue.clear()
        self._backlog_bytes = 0
        if self._writer is not None:
            self._writer.cancel()
        # The close frame would queue behind the unread backlog: try briefly, then drop.
        self._writer = asyncio.create_task(self._close_frame(code, reason, handshake_s=0.25))

    # ----------------------------------------------------------------------- writer

    def _flush(self) -> None:
        """The flusher's call: write what this socket queued during the iteration."""
        self._flush_due = False
        if self._closing or self._blocked:
            return  # the writer task owns the queue now (close frame, or a full transport)
        try:
            self._write_queued()
        except (ConnectionError, RuntimeError):
            self._queue.clear()  # the connection went away; the reader reports the close

    def _write_queued(self) -> None:
        """Write the queued frames (up to a close marker) in one transport write."""
        transport = self._transport
        if transport is None or transport.is_closing() or self.ws.closed:
            raise ConnectionError("connection closed")
        gate = self._flusher.gate
        if gate.holding:  # the writer task's path: the flusher may not have run yet
            gate.release()
        queue = self._queue
        if len(queue) == 1 and type(frame := queue[0]) is bytes:  # most flushes: one frame
            queue.clear()
            transport.write(frame)
            self._backlog_bytes -= len(frame)
        else:
            frames: list[bytes] = []
            size = 0
            for queued in queue:
                if isinstance(queued, tuple):  # a close marker: the writer task sends it
                    break
                frames.append(queued)
                size += len(queued)
            if frames:
                del queue[: len(frames)]
                transport.write(frames[0] if len(frames) == 1 else b"".join(frames))
                self._backlog_bytes -= size
        if transport.get_write_buffer_size() > _HIGH_WATER_BYTES:
            self._blocked = True
            self._start_writer()

    def _start_writer(self) -> None:
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._drain())

    async def _drain(self) -> None:
        """Wait out a full transport, write what queued meanwhile, send a queued close frame."""
        try:
            while True:
                if self._blocked:
                    await self._until_writable()
                    self._blocked = False
                if not self._queue:
                    return  # the flusher writes again from here on
                item = self._queue[0]
                if isinstance(item, tuple):
                    del self._queue[0]
                    await self._close_frame(*item)
                    return
                self._write_queued()
        except (ConnectionError, RuntimeError, asyncio.CancelledError):
            pass  # the connection went away; the reader sees it and reports the close

    async def _until_writable(self) -> None:
        """Wait until the client has read enough of what the transport holds."""
        while True:
            transport = self._transport
            if transport is None or transport.is_closing():
                raise ConnectionError("connection closed")
            if transport.get_write_buffer_size() <= _HIGH_WATER_BYTES // 2:
                return
            await asyncio.sleep(_DRAIN_POLL_S)

    async def _close_frame(self, code: int, reason: str, handshake_s: float = 2.0) -> None:
        # A client that is not reading never answers our close frame: bound the handshake,
        # then drop the TCP connection so the reader ends and the room sees the leave.
        # aiohttp's close may end in CancelledError when its drain is interrupted by the timeout;
        # either way, what follows decides whether the connection must be dropped.
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.wait_for(self.ws.close(code=code, message=reason.encode()), handshake_s)
        try:
            if not self._reader_done:
                self._reader_waiter = asyncio.get_running_loop().create_future()
                await asyncio.wait_for(self._reader_waiter, 2)
        except TimeoutError:
            if self._transport is not None:
                self._transport.abort()

    async def finished(self) -> None:
        """Once the reader is done: let a queued close frame go out (bounded), then stop."""
        self._reader_done = True
        if self._reader_waiter is not None and not self._reader_waiter.done():
            self._reader_waiter.set_result(None)
        if not self._closing:
            self._closing = True
            if self._writer is not None:
                self._writer.cancel()
        if self._writer is not None:
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

    def sender(self, ws: LocalSocket) -> Callable[[str], None]:
        """The socket's own bound `send`, kept by the host per connection: a broadcast then
        costs one call per recipient rather than three (`rooms.host.Sender`)."""
        return ws.send

    def close(self, ws: LocalSocket, code: int, reason: str) -> None:
        ws.close(code, reason)

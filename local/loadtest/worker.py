"""One generator process: its share of the clients, driven through the run's phases.

Clients speak the protocol through the `websockets` Sans-I/O `ClientProtocol` on plain asyncio
transports: every frame of a TCP read is parsed and handled in one callback, with no task or
future per message, so one process keeps up with a server's fan-out. A worker obeys the
coordinator's commands (connect, go, heads) and answers with its events (ready, sent, result);
see `runner.py` for the sequence.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import random
import resource
import ssl
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, cast
from urllib.parse import quote

import msgspec
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

from loadtest.config import Config
from loadtest.stats import Histogram, Timeline
from roomsd.os_resources import raise_open_file_limit

PROGRESS_EVERY_S = 0.5
CLOSE_TIMEOUT_S = 3.0


class Channel(Protocol):
    """How a worker and the coordinator talk: JSON-able dicts, in order, both ways."""

    async def send(self, message: dict[str, Any]) -> None: ...
    async def recv(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class ClientSpec:
    index: int  # over the whole run
    room: int
    in_room: int  # position in its room; the first `senders` of a room publish
    token: str | None  # None: minted by the worker from the secret


# --------------------------------------------------------------------------- frames


class _Resume(msgspec.Struct):
    complete: bool = True


class _ServerFrame(msgspec.Struct):
    """The fields of server frames the generator reads; the rest is skipped by the decoder."""

    type: str
    seq: int = 0
    id: str = ""
    head: int = 0
    code: str = ""
    ref: str | None = None
    duplicate: bool = False
    resume: _Resume | None = None


_decode_frame = msgspec.json.Decoder(_ServerFrame).decode
_decode_error_body = msgspec.json.Decoder(dict[str, Any]).decode


def sent_ns_of(message_id: str) -> int | None:
    """Our publish ids end in the intended send time: ``<sender>.<k>.<monotonic ns>``."""
    _, dot, tail = message_id.rpartition(".")
    if not dot or not tail.isdigit():
        return None
    return int(tail)


class HandshakeError(Exception):
    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


# --------------------------------------------------------------------------- stats


class Stats:
    """Everything one worker measures; merged across workers by the coordinator."""

    def __init__(self) -> None:
        self.t0 = 0  # monotonic ns when sending starts
        self.t_end = 0  # monotonic ns when sending stops
        self.latency = Timeline()  # live deliveries: intended send time -> receipt
        self.ack = Histogram()  # intended send time -> ack
        self.replay = Histogram()  # messages replayed after a reconnect: send -> receipt
        self.connect = Histogram()  # TCP connect + upgrade + welcome
        self.reconnect = Histogram()  # drop -> welcome again
        self.send_lag = Histogram()  # how late the generator sent versus the schedule
        self.wake_cold = Histogram()  # idle: first publish to a room after the hold (ack)
        self.wake_warm = Histogram()  # idle: the publish right after it (ack)
        self.errors: Counter[str] = Counter()
        self.deliveries = 0
        self.deliveries_in_window = 0
        self.replayed = 0
        self.sent = 0
        self.lifecycle_sent = 0  # of `sent`: edits and reactions (--lifecycle-mix)
        self.acked = 0
        self.duplicates = 0
        self.rejected = 0
        self.connects_ok = 0
        self.connects_failed = 0
        self.reconnects = 0
        self.drops = 0
        self.presence_frames = 0
        self.presence_bytes = 0
        self.open = 0
        self._second = -1
        self._hist = Histogram()

    def deliver(self, now: int, sent_ns: int) -> None:
        self.deliveries += 1
        if now <= self.t_end:
            self.deliveries_in_window += 1
        second = (now - self.t0) // 1_000_000_000
        if second != self._second:
            self._second = second
            self._hist = self.latency.at(second)
        self._hist.add((now - sent_ns) / 1000)

    def to_json(self) -> dict[str, Any]:
        return {
            "latency": self.latency.to_json(),
            "ack": self.ack.to_json(),
            "replay": self.replay.to_json(),
            "connect": self.connect.to_json(),
            "reconnect": self.reconnect.to_json(),
            "send_lag": self.send_lag.to_json(),
            "wake_cold": self.wake_cold.to_json(),
            "wake_warm": self.wake_warm.to_json(),
            "errors": dict(self.errors),
            "counts": {
                "deliveries": self.deliveries,
                "deliveries_in_window": self.deliveries_in_window,
                "replayed": self.replayed,
                "sent": self.sent,
                "lifecycle_sent": self.lifecycle_sent,
                "acked": self.acked,
                "duplicates": self.duplicates,
                "rejected": self.rejected,
                "connects_ok": self.connects_ok,
                "connects_failed": self.connects_failed,
                "reconnects": self.reconnects,
                "drops": self.drops,
                "presence_frames": self.presence_frames,
                "presence_bytes": self.presence_bytes,
            },
        }


# --------------------------------------------------------------------------- connections


class Link(asyncio.Protocol):
    """One TCP connection of a client (a client makes a new one on each reconnect)."""

    def __init__(self, client: Client, proto: ClientProtocol) -> None:
        self.client = client
        self.proto = proto
        self.transport: asyncio.Transport | None = None
        self.welcomed: asyncio.Future[_ServerFrame] = asyncio.get_running_loop().create_future()
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._request = proto.connect()
        self._fragments: list[bytes] = []
        self._fast = False
        self._buf = bytearray()

    # asyncio callbacks ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.proto.send_request(self._request)
        self.flush()

    def data_received(self, data: bytes) -> None:
        if self._fast:
            self._fast_receive(data)
            return
        proto = self.proto
        proto.receive_data(data)
        self._events()
        if (
            proto.state is State.OPEN
            and self.welcomed.done()
            and not proto.reader.buffer
            and not self._fragments
        ):
            self._fast = True  # websockets' parser is idle at a frame boundary: take over

    def _events(self) -> None:
        proto = self.proto
        events = proto.events_received()
        self.flush()
        on_text = self.client.on_text
        for event in events:
            if type(event) is Frame:
                opcode = event.opcode
                if opcode is Opcode.TEXT:
                    if event.fin:
                        on_text(self, event.data)
                    else:
                        self._fragments = [bytes(event.data)]
                elif opcode is Opcode.CONT:
                    self._fragments.append(bytes(event.data))
                    if event.fin:
                        on_text(self, b"".join(self._fragments))
                        self._fragments = []
                elif opcode is Opcode.BINARY:
                    self.client.stats.errors["binary_frame"] += 1
            elif isinstance(event, Response):
                self._handshake(event)
        if proto.close_expected() and self.transport is not None:
            asyncio.get_running_loop().call_later(CLOSE_TIMEOUT_S, self.abort)

    def _fast_receive(self, data: bytes) -> None:
        """The hot path: unmasked, unfragmented text frames are cut out of the stream here.

        Every other frame (ping, close, fragments, anything odd) goes whole through websockets'
        parser, which is then again idle at a frame boundary, so its state stays exact.
        """
        buf: bytes | bytearray = data
        if self._buf:
            self._buf += data
            buf = self._buf
        size = len(buf)
        pos = 0
        on_text = self.client.on_text
        while size - pos >= 2:
            b1 = buf[pos + 1]
            length = b1 & 0x7F
            head = 2
            if length == 126:
                if size - pos < 4:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                head = 4
            elif length == 127:
                if size - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                head = 10
            if b1 & 0x80:
                head += 4  # a masked frame from a server is an error: websockets will say so
            end = pos + head + length
            if end > size:
                break
            if buf[pos] == 0x81 and not b1 & 0x80:  # FIN + text
                on_text(self, buf[pos + head : end])
            else:
                self.proto.receive_data(bytes(buf[pos:end]))
                self._events()
                if self.proto.state is not State.OPEN or self._fragments:
                    self._fast = False
                    rest = bytes(buf[end:])
                    self._buf = bytearray()
                    if rest:
                        self.data_received(rest)
                    return
            pos = end
        self._buf = bytearray(buf[pos:]) if pos < size else bytearray()

    def eof_received(self) -> bool | None:
        self.proto.receive_eof()
        self.flush()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.welcomed.done():
            code = self._close_name() or "connection_lost_before_welcome"
            self.welcomed.set_exception(HandshakeError(code))
            self.welcomed.exception()  # retrieved: the connect path reports it
        if not self.lost.done():
            self.lost.set_result(None)
        self.client.on_lost(self)

    # helpers ----------------------------------------------------------------------------

    def _handshake(self, response: Response) -> None:
        if self.proto.handshake_exc is None:
            return
        code = f"http_{response.status_code}"
        with contextlib.suppress(Exception):
            body = _decode_error_body(bytes(response.body))
            code += f"_{body['error']['code']}"
        if not self.welcomed.done():
            self.welcomed.set_exception(HandshakeError(code))
        self.abort()

    def _close_name(self) -> str | None:
        rcvd = self.proto.close_rcvd
        return f"closed_{int(rcvd.code)}" if rcvd is not None else None

    def flush(self) -> None:
        transport = self.transport
        if transport is None:
            return
        for data in self.proto.data_to_send():
            if data:
                transport.write(data)
            elif transport.can_write_eof():
                transport.write_eof()

    def send_text(self, text: bytes) -> None:
        if self.proto.state is not State.OPEN or self.transport is None:
            return
        self.proto.send_text(text)
        self.flush()

    def close(self) -> None:
        if self.proto.state is State.OPEN:
            self.proto.send_close(1000)
            self.flush()
        elif self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class Client:
    """One simulated member of a room: its stream of seqs survives its reconnects."""

    def __init__(self, worker: Worker, spec: ClientSpec, user_id: str, token: str) -> None:
        self.worker = worker
        self.stats = worker.stats
        self.spec = spec
        self.room = worker.cfg.room_name(spec.room)
        self.user_id = user_id
        self.token = token
        self.link: Link | None = None
        self.joined = False
        self.expected = 1  # the next seq this client must see
        self.replay_until = 0  # seqs up to here arrive as replay after a (re)join
        self.max_seen = 0
        self.gaps = 0
        self.dups = 0
        self.resume_incomplete = 0
        self.dead = False  # lost without a planned reconnect
        self.ever_connected = False
        self.closing = False
        self.dropping = False
        self.sender: Sender | None = None
        self.waiters: dict[int, asyncio.Future[int]] = {}

    @property
    def last_seq(self) -> int:
        return self.expected - 1

    # frames -----------------------------------------------------------------------------

    def on_text(self, link: Link, data: bytes | bytearray | memoryview) -> None:
        now = time.monotonic_ns()
        try:
            frame = _decode_frame(data)
        except msgspec.DecodeError:
            self.stats.errors["undecodable_frame"] += 1
            return
        kind = frame.type
        if kind == "message":
            self._on_message(frame, now)
        elif kind == "ack":
            if self.sender is not None:
                self.sender.on_ack(frame, now)
        elif kind == "welcome":
            self.replay_until = frame.head
            if frame.resume is not None and not frame.resume.complete:
                self.resume_incomplete += 1
            if not link.welcomed.done():
                link.welcomed.set_result(frame)
        elif kind == "error":
            self.stats.errors[frame.code or "error"] += 1
            if self.sender is not None and frame.ref:
                self.sender.on_rejected(frame.ref)
        elif kind == "presence":
            self.stats.presence_frames += 1
            self.stats.presence_bytes += len(data)

    def _on_message(self, frame: _ServerFrame, now: int) -> None:
        seq = frame.seq
        expected = self.expected
        if seq == expected:
            self.expected = seq + 1
        elif seq < expected:
            self.dups += 1
            return
        else:
            self.gaps += seq - expected
            self.expected = seq + 1
        if seq > self.max_seen:
            self.max_seen = seq
        sent_ns = sent_ns_of(frame.id)
        if sent_ns is None:
            self.stats.errors["foreign_message"] += 1
        elif seq <= self.replay_until:
            self.stats.replayed += 1
            self.stats.replay.add((now - sent_ns) / 1000)
        else:
            self.stats.deliver(now, sent_ns)
        if self.waiters:
            waiter = self.waiters.pop(seq, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(now)

    # connection ---------------------------------------------------------------------------

    async def connect(self, *, reconnect: bool = False) -> bool:
        """Open a link and wait for the welcome; returns whether it worked (errors counted)."""
        worker = self.worker
        cfg = worker.cfg
        query = f"since={self.last_seq}"
        subprotocols: list[str] = []
        if cfg.token_in == "query":
            query = f"token={quote(self.token, safe='')}&{query}"
        else:
            subprotocols = ["rooms.v1", self.token]
        uri = parse_uri(f"{worker.base}/rooms/{self.room}/ws?{query}")
        proto = ClientProtocol(
            uri,
            subprotocols=[Subprotocol(p) for p in subprotocols] or None,
            max_size=None,
        )
        link = Link(self, proto)
        started = time.monotonic_ns()
        deadline = cfg.connect_timeout
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(deadline):
                await loop.create_connection(
                    lambda: link,
                    uri.host,
                    uri.port,
                    ssl=worker.ssl_context,
                    server_hostname=uri.host if worker.ssl_context else None,
                )
                await link.welcomed
        except TimeoutError:
            self._failed(link, "connect_timeout")
            return False
        except HandshakeError as exc:
            self._failed(link, exc.code)
            return False
        except OSError as exc:
            name = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
            self._failed(link, f"connect_{name}")
            return False
        elapsed_us = (time.monotonic_ns() - started) / 1000
        self.link = link
        self.joined = True
        self.ever_connected = True
        self.dead = False
        self.stats.open += 1
        if reconnect:
            self.stats.reconnects += 1
        else:
            self.stats.connects_ok += 1
            self.stats.connect.add(elapsed_us)
        if self.sender is not None:
            self.sender.resend_unacked()
        return True

    def _failed(self, link: Link, code: str) -> None:
        self.stats.errors[code] += 1
        self.stats.connects_failed += 1
        link.abort()

    def on_lost(self, link: Link) -> None:
        if link is not self.link:
            return
        self.link = None
        self.joined = False
        self.stats.open -= 1
        if self.closing:
            return
        if self.dropping:
            self.dropping = False
        else:
            self.stats.errors[link._close_name() or "connection_lost"] += 1
            if not self.worker.reconnecting:
                self.dead = True
                return
        self.worker.schedule_reconnect(self)

    async def close(self) -> None:
        self.closing = True
        link = self.link
        if link is None:
            return
        link.close()
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await link.lost
        except TimeoutError:
            link.abort()

    def drop(self) -> None:
        """Reconnect-resume: lose the connection on purpose (abort or a clean close)."""
        link = self.link
        if link is None:
            return
        self.dropping = True
        self.stats.drops += 1
        if self.worker.cfg.drop_mode == "abort":
            link.abort()
        else:
            link.close()


class Sender:
    """Publishes for one client: open loop on a schedule, or closed loop with a window."""

    def __init__(self, client: Client, index: int, body: bytes) -> None:
        self.client = client
        self.stats = client.stats
        self.index = index
        self.body = body
        self.k = 0
        self.unacked: dict[str, bytes] = {}
        self.max_seq = 0
        self.own_seq = 0  # the seq of this sender's latest stored message (edits target it)
        self.mixed = 0.0  # the lifecycle mix's running share
        self.events = 0
        self.window_open = False

    def publish(self, intended_ns: int) -> None:
        mix = self.client.worker.cfg.lifecycle_mix
        # Every 1/mix-th send is an event on the latest message this sender stored, alternately
        # an edit and a reaction (added, then taken back): deterministic, so runs compare.
        self.mixed += mix
        if self.mixed >= 1 and self.own_seq:
            self.mixed -= 1
            self._event(intended_ns)
            return
        message_id = f"{self.index}.{self.k}.{intended_ns}"
        self.k += 1
        frame = b'{"type":"publish","id":"%s","body":"%s"}' % (message_id.encode(), self.body)
        self._send(message_id, frame, intended_ns)

    def _event(self, intended_ns: int) -> None:
        # The id keeps the `<sender>.<k>.<ns>` shape: its delivery is timed like a message's.
        message_id = f"{self.index}e.{self.k}.{intended_ns}"
        self.k += 1
        if self.events % 2 == 0:
            frame = b'{"type":"edit","id":"%s","target":%d,"body":"%s"}' % (
                message_id.encode(),
                self.own_seq,
                self.body,
            )
        else:
            remove = b"true" if self.events % 4 == 3 else b"false"
            frame = b'{"type":"react","id":"%s","target":%d,"emoji":"%s","remove":%s}' % (
                message_id.encode(),
                self.own_seq,
                "👍".encode(),
                remove,
            )
        self.events += 1
        self.stats.lifecycle_sent += 1
        self._send(message_id, frame, intended_ns)

    def _send(self, message_id: str, frame: bytes, intended_ns: int) -> None:
        self.unacked[message_id] = frame
        self.stats.sent += 1
        link = self.client.link
        if link is not None and self.client.joined:
            link.send_text(frame)
            self.stats.send_lag.add((time.monotonic_ns() - intended_ns) / 1000)

    def on_ack(self, frame: _ServerFrame, now: int) -> None:
        if self.unacked.pop(frame.id, None) is None:
            return  # an ack for a retransmit we already had
        stats = self.stats
        stats.acked += 1
        if frame.duplicate:
            stats.duplicates += 1
        if frame.seq > self.max_seq:
            self.max_seq = frame.seq
        if not frame.id.startswith(f"{self.index}e.") and frame.seq > self.own_seq:
            self.own_seq = frame.seq
        sent_ns = sent_ns_of(frame.id)
        if sent_ns is not None:
            stats.ack.add((now - sent_ns) / 1000)
        if self.window_open and now < stats.t_end:
            self.publish(now)

    def on_rejected(self, ref: str) -> None:
        if self.unacked.pop(ref, None) is None:
            return
        self.stats.rejected += 1
        if self.window_open:  # do not spin against a rate limit: retry a little later
            loop = asyncio.get_running_loop()
            loop.call_later(0.01, self._refill)

    def _refill(self) -> None:
        now = time.monotonic_ns()
        if self.window_open and now < self.stats.t_end:
            self.publish(now)

    def resend_unacked(self) -> None:
        link = self.client.link
        if link is None:
            return
        for frame in list(self.unacked.values()):
            link.send_text(frame)

    async def open_loop(self, rate: float, phase: float) -> None:
        interval = 1e9 / rate
        next_ns = self.stats.t0 + phase * interval
        t_end = self.stats.t_end
        while next_ns < t_end:
            now = time.monotonic_ns()
            if next_ns > now:
                await asyncio.sleep((next_ns - now) / 1e9)
                continue
            while next_ns <= now and next_ns < t_end:
                self.publish(int(next_ns))
                next_ns += interval


# --------------------------------------------------------------------------- the worker


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Worker:
    def __init__(
        self,
        cfg: Config,
        specs: list[ClientSpec],
        chan: Channel,
        mint: Callable[[str], str] | None,
        worker_index: int = 0,
    ) -> None:
        self.cfg = cfg
        self.chan = chan
        self.index = worker_index
        self.stats = Stats()
        self.base = cfg.url.rstrip("/")
        self.ssl_context = _ssl_context(cfg) if cfg.url.startswith("wss://") else None
        self.reconnecting = cfg.scenario == "reconnect-resume"
        self.rng = random.Random(cfg.seed * 1000 + worker_index)
        self.phase = "starting"
        self.clients: list[Client] = []
        body = b"x" * cfg.size
        for spec in specs:
            user = cfg.user_id(spec.index)
            token = spec.token if spec.token is not None else (mint(user) if mint else "")
            client = Client(self, spec, user, token)
            if spec.in_room < cfg.senders_per_room:
                client.sender = Sender(client, spec.index, body)
            self.clients.append(client)
        self._reconnects: set[asyncio.Task[None]] = set()
        self._stopping = False

    # --------------------------------------------------------------------------- phases

    async def run(self) -> None:
        nofile = raise_open_file_limit()
        progress = asyncio.create_task(self._progress())
        try:
            await self.chan.send({"ev": "spawned", "nofile": list(nofile), "pid": os.getpid()})
            await self._expect("connect")
            self.phase = "connecting"
            connect_started = time.monotonic()
            await self._connect_all()
            await self.chan.send(
                {
                    "ev": "ready",
                    "connected": self.stats.connects_ok,
                    "errors": dict(self.stats.errors),
                    "failed": self.stats.connects_failed,
                    "connect_s": time.monotonic() - connect_started,
                }
            )
            go = await self._expect("go")
            self.stats.t0, self.stats.t_end = int(go["t0"]), int(go["t_end"])
            cpu_at_go = cpu_seconds()
            await self._scenario()
            cpu_sending = cpu_seconds() - cpu_at_go
            self.phase = "draining"
            await self._drain_acks()
            await self.chan.send({"ev": "sent", "heads": self._heads()})
            heads = {int(k): int(v) for k, v in (await self._expect("heads"))["heads"].items()}
            await self._catch_up(heads)
            order = self._order(heads)
            self.phase = "closing"
            self._stopping = True
            for task in list(self._reconnects):
                task.cancel()
            await self._close_all()
            await self.chan.send(
                {
                    "ev": "result",
                    "stats": self.stats.to_json(),
                    "order": order,
                    "cpu_s": cpu_seconds(),
                    "cpu_sending_s": cpu_sending,
                }
            )
        finally:
            progress.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await progress

    async def _expect(self, cmd: str) -> dict[str, Any]:
        message = await self.chan.recv()
        if message.get("cmd") != cmd:
            raise RuntimeError(f"worker expected {cmd!r}, got {message!r}")
        return message

    async def _connect_all(self) -> None:
        gate = asyncio.Semaphore(self.cfg.concurrency)

        async def one(client: Client) -> None:
            async with gate:
                await client.connect()

        await asyncio.gather(*(one(c) for c in self.clients))

    async def _wait_until(self, t_ns: int) -> None:
        delay = (t_ns - time.monotonic_ns()) / 1e9
        if delay > 0:
            await asyncio.sleep(delay)

    async def _scenario(self) -> None:
        cfg = self.cfg
        scenario = cfg.scenario
        await self._wait_until(self.stats.t0)
        self.phase = "sending" if scenario != "idle" else "holding"
        if scenario == "connect-storm":
            return
        if scenario == "idle":
            pings = asyncio.create_task(self._pings()) if cfg.ping_interval else None
            if cfg.wake_probe:
                # One message first, so that the timed publishes after the hold pay only for
                # the wake, not for a room's first message ever (its first archive alarm).
                await self._wake_probes(prime=True)
                self.phase = "holding"
            await self._wait_until(self.stats.t_end)
            if pings is not None:
                pings.cancel()
            if cfg.wake_probe:
                self.phase = "probing"
                await self._wake_probes()
            return
        senders = [c.sender for c in self.clients if c.sender is not None]
        tasks: list[asyncio.Task[None]] = []
        if cfg.window:
            now = time.monotonic_ns()
            for sender in senders:
                sender.window_open = True
                for _ in range(cfg.window):
                    sender.publish(now)
        else:
            rate = cfg.rate / cfg.senders_per_room
            for sender in senders:
                phase = self.rng.random()
                tasks.append(asyncio.create_task(sender.open_loop(rate, phase)))
        if self.reconnecting:
            tasks.append(asyncio.create_task(self._chaos()))
        await self._wait_until(self.stats.t_end)
        for sender in senders:
            sender.window_open = False
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _pings(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.ping_interval)
            for client in self.clients:
                if client.link is not None:
                    client.link.send_text(b'{"type":"ping"}')

    async def _chaos(self) -> None:
        tick = 0.05
        chance = tick / self.cfg.drop_interval
        while True:
            await asyncio.sleep(tick)
            for client in self.clients:
                if client.link is not None and self.rng.random() < chance:
                    client.drop()

    def schedule_reconnect(self, client: Client) -> None:
        if self._stopping:
            return
        started = time.monotonic_ns()

        async def again() -> None:
            await asyncio.sleep(self.cfg.reconnect_delay)
            for attempt in range(20):
                if await client.connect(reconnect=True):
                    self.stats.reconnect.add((time.monotonic_ns() - started) / 1000)
                    return
                await asyncio.sleep(min(1.0, 0.05 * 2**attempt))
            client.dead = True

        task = asyncio.create_task(again())
        self._reconnects.add(task)
        task.add_done_callback(self._reconnects.discard)

    async def _wake_probes(self, *, prime: bool = False) -> None:
        """The first publish to each probed room after the hold, then a second one right after.

        With ``prime``, one untimed publish per probed room (before the hold).
        """
        probes = [
            c for c in self.clients if c.spec.in_room == 0 and c.spec.room < self.cfg.wake_probe
        ]
        for client in probes:
            if client.link is None:
                continue
            client.sender = client.sender or Sender(client, client.spec.index, b"probe")
            if prime:
                await self._probe_once(client)
                continue
            for hist in (self.stats.wake_cold, self.stats.wake_warm):
                took = await self._probe_once(client)
                if took is not None:
                    hist.add(took)

    async def _probe_once(self, client: Client) -> float | None:
        sender = client.sender
        assert sender is not None
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[int] = loop.create_future()
        seq = client.last_seq + 1  # nobody else publishes in this room now
        client.waiters[seq] = waiter
        started = time.monotonic_ns()
        sender.publish(started)
        try:
            async with asyncio.timeout(self.cfg.connect_timeout):
                received = await waiter
        except TimeoutError:
            client.waiters.pop(seq, None)
            self.stats.errors["probe_timeout"] += 1
            return None
        return (received - started) / 1000

    async def _drain_acks(self) -> None:
        deadline = time.monotonic() + self.cfg.drain_timeout
        senders = [c.sender for c in self.clients if c.sender is not None]
        while time.monotonic() < deadline:
            if all(not s.unacked or s.client.dead for s in senders):
                return
            await asyncio.sleep(0.02)
        self.stats.errors["unacked_at_end"] += sum(len(s.unacked) for s in senders)

    def _heads(self) -> dict[int, int]:
        heads: dict[int, int] = {}
        for client in self.clients:
            room = client.spec.room
            seen = client.max_seen
            if client.sender is not None:
                seen = max(seen, client.sender.max_seq)
            heads[room] = max(heads.get(room, 0), seen)
        return heads

    async def _catch_up(self, heads: dict[int, int]) -> None:
        deadline = time.monotonic() + self.cfg.drain_timeout
        while time.monotonic() < deadline:
            behind = [
                c
                for c in self.clients
                if c.ever_connected and not c.dead and c.last_seq < heads.get(c.spec.room, 0)
            ]
            if not behind:
                return
            await asyncio.sleep(0.02)

    def _order(self, heads: dict[int, int]) -> dict[str, Any]:
        """Every connected client saw seqs 1..head of its room exactly once, in order."""
        counts: Counter[str] = Counter()
        examples: list[str] = []
        for client in self.clients:
            if not client.ever_connected:
                counts["never_connected"] += 1
                continue
            head = heads.get(client.spec.room, 0)
            problems = []
            if client.gaps:
                problems.append(f"{client.gaps} missing")
            if client.dups:
                problems.append(f"{client.dups} duplicate or out of order")
            if client.resume_incomplete:
                problems.append(f"{client.resume_incomplete} incomplete resumes")
            if client.last_seq < head:
                problems.append(f"stopped at seq {client.last_seq} of {head}")
                counts["lost_connection" if client.dead else "behind"] += 1
            if client.gaps:
                counts["gaps"] += 1
            if client.dups:
                counts["duplicates"] += 1
            if client.resume_incomplete:
                counts["resume_incomplete"] += 1
            if problems:
                counts["failed"] += 1
                if len(examples) < 5:
                    examples.append(f"{client.room} {client.user_id}: " + ", ".join(problems))
            else:
                counts["ok"] += 1
        return {"counts": dict(counts), "examples": examples}

    async def _close_all(self) -> None:
        gate = asyncio.Semaphore(max(self.cfg.concurrency, 200))

        async def one(client: Client) -> None:
            async with gate:
                await client.close()

        await asyncio.gather(*(one(c) for c in self.clients))

    async def _progress(self) -> None:
        stats = self.stats
        while True:
            await asyncio.sleep(PROGRESS_EVERY_S)
            p50 = p99 = None
            if stats.t0:
                second = (time.monotonic_ns() - stats.t0) // 1_000_000_000 - 1
                recent = stats.latency.seconds.get(second)
                if recent is not None and recent.count:
                    p50, p99 = recent.percentile_us(50), recent.percentile_us(99)
            await self.chan.send(
                {
                    "ev": "progress",
                    "phase": self.phase,
                    "open": stats.open,
                    "connects_ok": stats.connects_ok,
                    "connects_failed": stats.connects_failed,
                    "sent": stats.sent,
                    "acked": stats.acked,
                    "deliveries": stats.deliveries,
                    "errors": sum(stats.errors.values()),
                    "p50_us": p50,
                    "p99_us": p99,
                }
            )


def _ssl_context(cfg: Config) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=cfg.ca_file)
    if cfg.insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context

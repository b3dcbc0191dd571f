"""Runs a `RoomEngine` over one platform's hibernatable sockets.

A `RoomHost` is what a room's object is while it is awake. It holds nothing that hibernation
would lose: the log lives in SQL, each connection's `Peer` lives in its socket's attachment, and
a new host rebuilt from those (after `__init__` runs again on Cloudflare, or after the local
runtime evicts the room) carries on exactly where the old one stopped. The Durable Object adapter
and the local runtime both drive this class; only their `Sockets` implementation differs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Generic, Protocol, TypeVar

from rooms.archive import (
    ArchiveIndex,
    ArchiveOutcome,
    ArchivePolicy,
    Archiver,
    ArchiveReader,
    Database,
    ObjectStore,
)
from rooms.auth import Identity
from rooms.directory import RoomDirectory
from rooms.effects import Broadcast, Close, Effect, Log, ReadArchive, SavePeer, Send, Stored
from rooms.engine import RoomEngine
from rooms.front import HttpReply, error_reply
from rooms.limits import PLATFORM_MAX_TAG_BYTES, Limits
from rooms.logs import log_line
from rooms.operator import RoomOperator
from rooms.peers import Peer, decode_attachment, encode_attachment, new_peer
from rooms.protocol import CloseCode, ErrorCode, Message, SeqRange
from rooms.store import OpenedRoom, RoomStore, Sql
from rooms.telemetry import Telemetry, TimedSql, utf8_len

S = TypeVar("S")


class Sockets(Protocol[S]):
    """The platform's hibernatable WebSocket API, reduced to what a room needs."""

    def accept(self, ws: S, tags: list[str]) -> None: ...
    def all(self) -> list[S]: ...
    def is_open(self, ws: S) -> bool: ...
    def attachment(self, ws: S) -> str | None: ...
    def set_attachment(self, ws: S, value: str) -> None: ...
    def send(self, ws: S, text: str) -> None: ...
    def close(self, ws: S, code: int, reason: str) -> None: ...


# A platform's Sockets may also offer ``sender(ws)``: a function that sends text frames to ``ws``,
# which the host keeps per connection. On Cloudflare it holds the socket's bound ``send`` so a
# broadcast looks the method up once per socket, not once per frame (BENCHMARKS.md, "On real
# workerd"); without it, the host calls ``send(ws, text)``.
Sender = Callable[[str], None]
# What an event handed back because it has to wait (RoomHost.message_now): call and await it.
Pending = Callable[[], Awaitable[None]] | None


class NewRoomLimiter(Protocol):
    """How often one user, and one client address, may open rooms that hold nothing yet.

    Locally an in-process token bucket; on Cloudflare the Workers rate-limiting binding
    (docs/protocol.md#rooms). ``allow`` takes one unit from ``key``'s budget."""

    async def allow(self, key: str) -> bool: ...


class Alarms(Protocol):
    """The object's single alarm (Cloudflare: ctx.storage.setAlarm; locally: a scheduler)."""

    async def set(self, at_ms: int) -> None: ...


class ArchiveBindings:
    """R2 and D1 as one room sees them, with the policy that drives archiving."""

    def __init__(self, db: Database, bucket: ObjectStore, policy: ArchivePolicy) -> None:
        self.index = ArchiveIndex(db)
        self.directory = RoomDirectory(db)
        self.bucket = bucket
        self.policy = policy
        self.reader = ArchiveReader(self.index, bucket)


_REFUSALS = {
    ErrorCode.ROOM_FULL: "the room is full",
    ErrorCode.TOO_MANY_SOCKETS: "this user has too many sockets in this room",
    ErrorCode.BANNED: "an operator has banned this user from this room for now",
    ErrorCode.TOO_MANY_FROM_ADDRESS: "too many sockets from this address in this room",
}
# A close without a code (RFC 6455 7.1.5: the connection ended without a close frame).
ABNORMAL_CLOSURE = 1006
NEW_ROOMS_REFUSED = "opening rooms that hold nothing yet too fast; wait a minute"
# Without an archive, a room prunes itself every this many messages (a DELETE each time).
PRUNE_EVERY = 100


def conn_tag(conn_id: str) -> str:
    return f"c:{conn_id}"


def room_tag(room: str) -> str:
    """The socket tag naming its room (names are at most 64 ASCII characters): how an object
    woken by a socket event, whose id has no name and which stored nothing yet, finds it."""
    return f"r:{room}"


def user_tag(user_id: str) -> str:
    """The socket tag naming its user. A tag holds at most 256 UTF-8 bytes on Cloudflare
    (docs/cloudflare.md §3.2) and a user id up to 128 characters: a long one is hashed."""
    tag = f"u:{user_id}"
    if len(tag.encode()) <= PLATFORM_MAX_TAG_BYTES:
        return tag
    return "u#" + hashlib.sha256(user_id.encode()).hexdigest()


def _listing(sockets: Sockets[S]) -> list[tuple[S, str | None, bool]]:
    """Every socket with its attachment and whether it is open.

    A platform's Sockets may offer this as ``listing()``, in fewer calls than one `attachment`
    and one `is_open` per socket (on Cloudflare three crossings in all, BENCHMARKS.md)."""
    listing: Callable[[], list[tuple[S, str | None, bool]]] | None = getattr(
        sockets, "listing", None
    )
    if listing is not None:
        return listing()
    return [(ws, sockets.attachment(ws), sockets.is_open(ws)) for ws in sockets.all()]


def _in_order(steps: list[Pending]) -> Pending:
    """One pending step that awaits ``steps`` (None ones skipped) in order; None if none."""
    todo = [step for step in steps if step is not None]
    if not todo:
        return None
    if len(todo) == 1:
        return todo[0]

    async def run() -> None:
        for step in todo:
            await step()

    return run


def _unreachable(text: str) -> None:
    """The sender of a connection a send already failed on: nothing more goes to it."""


def _with_request_id(effect: Effect, request_id: str) -> Effect:
    if isinstance(effect, Log) and effect.event == "connect":
        return dataclasses.replace(effect, extra={**effect.extra, "request_id": request_id})
    return effect


def wall_clock_ms() -> int:
    return int(time.time() * 1000)


class RoomHost(Generic[S]):
    """One awake room: the engine, its store, and the map from connection ids to sockets."""

    def __init__(
        self,
        room: str,
        sql: Sql,
        sockets: Sockets[S],
        limits: Limits,
        *,
        log: Callable[[str], None] = print,
        log_messages: bool = True,
        log_connections: bool = True,
        clock_ms: Callable[[], int] = wall_clock_ms,
        archive: ArchiveBindings | None = None,
        alarms: Alarms | None = None,
        retention: ArchivePolicy | None = None,
        telemetry: Telemetry | None = None,
        new_rooms: NewRoomLimiter | None = None,
        opened: OpenedRoom | None = None,
    ) -> None:
        """``opened``: what `rooms.store.open_room` read of ``sql`` just before, nothing
        written since (a platform that needed it already passes it, saving the wake's reads)."""
        self.room = room
        self._new_rooms = new_rooms
        # Operator counters (rooms.telemetry): a private one when no platform reads them.
        self.telemetry = telemetry = telemetry if telemetry is not None else Telemetry()
        telemetry.rooms_woken += 1
        self.archive = archive
        # Without an archive nothing is archived, so nothing would ever be pruned: the room then
        # keeps the newest `retain_messages` rows and `dedupe_window_ms` of dedupe keys, pruned
        # every PRUNE_EVERY messages (docs/protocol.md, "Without an archive").
        self._retention = None if archive is not None else (retention or ArchivePolicy())
        self.alarms = alarms
        self.sockets = sockets
        self._log = log
        self._log_messages = log_messages
        self._log_connections = log_connections
        self._clock_ms = clock_ms
        self._by_conn: dict[str, S] = {}
        self._senders: dict[str, Sender] = {}  # per connection in _by_conn, made on first send
        # Connections a send failed on during this batch of effects: cut once the batch is done.
        self._unreachable: list[str] = []
        platform_sender = getattr(sockets, "sender", None)
        self._make_sender: Callable[[S], Sender] = (
            platform_sender if platform_sender is not None else self._port_sender
        )
        peers: list[Peer] = []
        for ws, attachment, is_open in _listing(sockets):
            peer = decode_attachment(attachment)
            if peer is None or peer.closed or not is_open:
                continue  # closing or foreign sockets never count as members
            peers.append(peer)
            self._by_conn[peer.conn_id] = ws
        self._sql = sql = TimedSql(sql, telemetry.write_time)
        store = RoomStore(sql, room, opened)
        store.count("wakes")
        # The alarm time as last set: kept in memory so a publish reads no SQL to check it.
        stored_alarm = store.meta_as_opened("alarm_at")
        self._alarm_at = int(stored_alarm) if stored_alarm is not None else None
        self.engine = RoomEngine(room, store, limits, peers, archive=archive is not None)
        self.archiver = (
            Archiver(room, store, archive.index, archive.bucket, archive.policy)
            if archive is not None
            else None
        )

    async def refusal(
        self, identity: Identity, address: str = "", *, opening: bool = True
    ) -> HttpReply | None:
        """The HTTP refusal of a new socket for ``identity`` from client ``address`` (as
        `client_address` gives it; empty when unknown), or None to accept it.

        Sockets that stayed silent past `hello_timeout_ms` are closed first, so that they never
        hold a place (checked here, on arrivals, as there is no timer on every platform). A
        room that holds nothing yet costs its opener a unit of their new-room budget; a mere
        question (``opening=False``: the front's pre-check) spends none and is not told."""
        started, now_ms = time.perf_counter(), self._clock_ms()
        await self._apply(self.engine.silent_sockets(now_ms), started)
        code = self.engine.refusal(identity.user_id, now_ms, address)
        if code is not None:
            self.telemetry.rejected(code)
            return error_reply(403, code, _REFUSALS[code])
        if opening and self._new_rooms is not None and not self.engine.store.created:
            keys = [f"user:{identity.user_id}", *([f"address:{address}"] if address else [])]
            for key in keys:
                if not await self._new_rooms.allow(key):
                    code = ErrorCode.TOO_MANY_NEW_ROOMS
                    self.telemetry.rejected(code)
                    self._log(
                        log_line(self.room, Log("rejected", None, identity.user_id, code=code))
                    )
                    return error_reply(429, code, NEW_ROOMS_REFUSED)
        return None

    async def connect(
        self,
        ws: S,
        identity: Identity,
        since: int | None,
        request_id: str | None = None,
        address: str = "",
    ) -> str:
        """Accept ``ws`` into the room from client ``address``; returns its connection id.
        ``request_id`` (the front's for this upgrade) goes in the `connect` log line, tying it
        to the front's line."""
        started = time.perf_counter()
        now_ms = self._clock_ms()
        # Drawn here, never at import time: Workers forbid top-level entropy.
        conn_id = secrets.token_hex(8)
        limits = self.engine.limits
        peer = new_peer(
            conn_id,
            identity.user_id,
            identity.name,
            limits,
            now_ms,
            guest=identity.guest,
            address=address,
        )
        self.sockets.accept(
            ws, [conn_tag(conn_id), user_tag(identity.user_id), room_tag(self.room)]
        )
        self.sockets.set_attachment(ws, encode_attachment(peer))
        self._by_conn[conn_id] = ws
        self.telemetry.connections_opened += 1
        effects = self.engine.connect(peer, since, now_ms)
        if request_id is not None:
            effects = [_with_request_id(e, request_id) for e in effects]
        await self._apply(effects, started)
        return conn_id

    async def message(self, ws: S, data: str | bytes) -> None:
        """A frame arrived on ``ws``."""
        pending = self.message_now(ws, data)
        if pending is not None:
            await pending()

    def message_now(self, ws: S, data: str | bytes) -> Pending:
        """`message`, with the part that has to wait handed back instead of awaited.

        Everything but setting the archive alarm and reading the archive happens before this
        returns, so nearly every frame (a publish into a room whose alarm is set) returns None:
        a platform that pays for entering a coroutine per event (Cloudflare's Python Workers,
        BENCHMARKS.md) runs those synchronously and awaits the rest only when there is some.
        """
        started = time.perf_counter()
        peer = decode_attachment(self.sockets.attachment(ws))
        if peer is None or peer.closed:
            return None
        if peer.conn_id not in self._by_conn:  # accepted by another host instance
            self._by_conn[peer.conn_id] = ws
            self._senders.pop(peer.conn_id, None)
            self.engine.peers.setdefault(peer.conn_id, peer)
        self.telemetry.bytes_in += utf8_len(data)
        return self._apply_now(self.engine.receive(peer.conn_id, data, self._clock_ms()), started)

    async def closed(self, ws: S, code: int = ABNORMAL_CLOSURE) -> None:
        """The socket closed or failed (a close event with its ``code``, an error, or a
        vanished peer)."""
        started = time.perf_counter()
        peer = decode_attachment(self.sockets.attachment(ws))
        if peer is None:
            return
        self._by_conn.pop(peer.conn_id, None)
        self._senders.pop(peer.conn_id, None)
        if peer.closed:  # we closed it and announced the leave already
            self.engine.forget(peer.conn_id)
            return
        self.telemetry.closed(code)
        await self._apply(self.engine.disconnect(peer, self._clock_ms()), started)

    # ----------------------------------------------------------------------- effects

    # ----------------------------------------------------------------------- operators

    async def admin(self, action: str, params: Mapping[str, str]) -> dict[str, Any]:
        """Run one admin action (see rooms.admin, rooms.operator); returns its JSON-able result."""
        return await RoomOperator(self).run(action, params)

    def now_ms(self) -> int:
        return self._clock_ms()

    def storage_bytes(self) -> int:
        return self._sql.size_bytes()

    @property
    def next_alarm_ms(self) -> int | None:
        return self._alarm_at

    def emit(self, line: str) -> None:
        self._log(line)

    async def close_connection(self, conn_id: str, code: int, reason: str) -> None:
        await self._close(conn_id, code, reason)

    async def apply(self, effects: list[Effect]) -> None:
        """Carry out effects the engine returned to an operator's action."""
        await self._apply(effects, time.perf_counter())

    async def alarm(self) -> ArchiveOutcome | None:
        """The object's alarm fired: archive what is waiting, then schedule the next run."""
        if self.archiver is None:
            return None
        store = self.engine.store
        if not store.created:  # nothing stored, nothing to archive (and nothing to create)
            return ArchiveOutcome([], 0)
        store.set_meta("alarm_at", None)
        self._alarm_at = None
        now_ms = self._clock_ms()
        self._observe_archive_lag(now_ms)
        outcome = await self.archiver.run(now_ms)
        self.telemetry.archive_runs += 1
        if outcome.error is not None:
            self.telemetry.archive_failures += 1
        await RoomOperator(self).refresh_directory()
        if outcome.error is not None:
            failures = int(store.meta("archive_failures") or 1)
            await self._set_alarm(now_ms + self.archiver.policy.retry_delay_ms(failures))
            event = Log("archive_failed", code=outcome.error, extra={"failures": failures})
        else:
            if outcome.more:
                await self._set_alarm(now_ms)
            archived = outcome.archived[-1].last if outcome.archived else None
            event = Log(
                "archived",
                seq=archived,
                extra={"segments": len(outcome.archived), "pruned": outcome.pruned},
            )
        self._log(log_line(self.room, event))
        return outcome

    def _observe_archive_lag(self, now_ms: int) -> None:
        store = self.engine.store
        oldest_waiting = store.get(store.archived + 1)
        if oldest_waiting is not None:
            self.telemetry.archive_lag.observe(max(0, now_ms - oldest_waiting.sent_ms) / 1000)

    def _archive_alarm_due(self) -> int | None:
        """When the alarm must be set for what was stored to be archived, or None when the
        alarm already set comes soon enough (read from memory: no SQL, no await)."""
        if self.archiver is None or self.alarms is None:
            return None
        due = self.archiver.due_in_ms()
        if due is None:
            return None
        now_ms = self._clock_ms()
        at_ms = now_ms + due
        current = self._alarm_at
        # A stored time already past means that alarm was used up without reaching `alarm()`
        # (a failed handler, retries exhausted, deleteAll): treat it as unset.
        if current is None or current <= now_ms or current > at_ms:
            return at_ms
        return None

    def _prune_without_archive(self, retention: ArchivePolicy) -> None:
        store = self.engine.store
        if store.head % PRUNE_EVERY == 0:
            store.prune(
                retention.retain_messages,
                self._clock_ms() - retention.dedupe_window_ms,
                archived_only=False,
            )

    async def _set_alarm(self, at_ms: int) -> None:
        if self.alarms is None:
            return
        await self.alarms.set(at_ms)
        self.engine.store.set_meta("alarm_at", at_ms)
        self._alarm_at = at_ms

    # ----------------------------------------------------------------------- effects

    async def _apply(self, effects: list[Effect], started: float) -> None:
        """Carry out effects in order; one failing effect never stops the others."""
        pending = self._apply_now(effects, started)
        if pending is not None:
            await pending()

    def _apply_now(self, effects: list[Effect], started: float) -> Pending:
        """`_apply` up to its first await: what has to wait (setting the alarm, reading the
        archive, in that order) is handed back, None when nothing does."""
        archive_reads: list[ReadArchive] = []
        waiting: list[Pending] = []
        stored = first_message = False
        telemetry = self.telemetry
        for effect in effects:
            match effect:
                case Send(conn_id, text):
                    telemetry.deliveries += 1
                    telemetry.bytes_out += utf8_len(text)
                    self._send(conn_id, text)
                case Broadcast(conn_ids, text):
                    telemetry.deliveries += len(conn_ids)
                    telemetry.bytes_out += utf8_len(text) * len(conn_ids)
                    for conn_id in conn_ids:
                        self._send(conn_id, text)
                case SavePeer(peer):
                    self._save_peer(peer)
                case Close(conn_id, code, reason):
                    waiting.append(self._close_now(conn_id, code, reason))
                case Stored(seq):
                    stored = True
                    first_message = seq == 1
                case ReadArchive():
                    archive_reads.append(effect)
                case Log():
                    if effect.event == "publish":
                        telemetry.messages_published += 1
                    elif effect.event == "rejected" and effect.code is not None:
                        telemetry.rejected(effect.code)
                    if effect.code == "rate_limited":
                        self.engine.store.count("rate_limited")
                    if effect.per_message and not self._log_messages:
                        continue
                    if effect.per_connection and not self._log_connections:
                        continue
                    elapsed_ms = (time.perf_counter() - started) * 1000
                    self._log(log_line(self.room, effect, elapsed_ms))
        while self._unreachable:  # leaves the member list and the broadcast set at once
            conn_id = self._unreachable.pop()
            waiting.append(self._close_now(conn_id, CloseCode.GOING_AWAY, "unreachable"))
        if stored:
            telemetry.publish_latency.observe(time.perf_counter() - started)
            if self._retention is not None:
                self._prune_without_archive(self._retention)
            alarm_at = self._archive_alarm_due()
            if alarm_at is not None:
                waiting.append(functools.partial(self._set_alarm, alarm_at))
            if first_message:  # a room is listed from its first message (rooms.directory)
                waiting.append(RoomOperator(self).refresh_directory)
        waiting += [functools.partial(self._read_archive, request) for request in archive_reads]
        return _in_order(waiting)

    async def _read_archive(self, request: ReadArchive) -> None:
        started = time.perf_counter()
        messages: list[Message] = []
        if self.archive is None:
            missing = [SeqRange(request.first, request.last)]
        else:
            messages, missing = await self.archive.reader.read(
                self.room, request.first, request.last
            )
        # Other events may have run while we awaited R2 and D1; the engine re-checks its state.
        effects = self.engine.archive_read(request, messages, missing, self._clock_ms())
        await self._apply(effects, started)

    def _save_peer(self, peer: Peer) -> None:
        ws = self._by_conn.get(peer.conn_id)
        if ws is None:
            return
        try:
            self.sockets.set_attachment(ws, encode_attachment(peer))
        except Exception as exc:  # e.g. the platform refused it: that socket cannot go on
            self._log(
                log_line(self.room, Log("attachment_failed", peer.conn_id, code=type(exc).__name__))
            )
            with contextlib.suppress(Exception):
                self.sockets.close(ws, CloseCode.INTERNAL_ERROR, "internal error")

    def _port_sender(self, ws: S) -> Sender:
        sockets = self.sockets
        return lambda text: sockets.send(ws, text)

    def _send(self, conn_id: str, text: str) -> None:
        send = self._senders.get(conn_id)
        if send is None:
            ws = self._by_conn.get(conn_id)
            if ws is None:
                return
            send = self._senders[conn_id] = self._make_sender(ws)
        try:
            send(text)
        except Exception as exc:  # gone, or cut off (a slow consumer): no more sends to it
            self._log(log_line(self.room, Log("send_failed", conn_id, code=type(exc).__name__)))
            self._senders[conn_id] = _unreachable
            self._unreachable.append(conn_id)

    async def _close(self, conn_id: str, code: int, reason: str) -> None:
        """Close a socket and announce the leave now: its close event may never reach us."""
        pending = self._close_now(conn_id, code, reason)
        if pending is not None:
            await pending()

    def _close_now(self, conn_id: str, code: int, reason: str) -> Pending:
        ws = self._by_conn.pop(conn_id, None)
        self._senders.pop(conn_id, None)
        peer = self.engine.peers.get(conn_id)
        if ws is None or peer is None:
            return None
        peer.closed = True
        self.telemetry.closed(code)
        with contextlib.suppress(Exception):  # the socket may already be gone
            self.sockets.set_attachment(ws, encode_attachment(peer))
        try:
            self.sockets.close(ws, code, reason)
        except Exception as exc:
            self._log(log_line(self.room, Log("close_failed", conn_id, code=type(exc).__name__)))
        return self._apply_now(self.engine.disconnect(peer, self._clock_ms()), time.perf_counter())

"""Local rooms: one actor per room, evicted when idle (emulated hibernation).

A `LocalRoom` owns a room's sockets and its SQLite file. Its `RoomHost` (the awake instance) is
dropped after `hibernate_after_s` of idleness, or after every event with `hibernate_every_event`,
and rebuilt from the database and the socket attachments on the next event, the way workerd
evicts a Durable Object and runs `__init__` again. All room work runs synchronously on the event
loop, so each room handles one event at a time (an await on R2 or D1 lets other events in, as
Cloudflare's input gate does for non-storage I/O).
"""

from __future__ import annotations

import asyncio
import bisect
import concurrent.futures
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rooms.archive import ArchiveOutcome
from rooms.auth import Identity
from rooms.buckets import KeyedBuckets
from rooms.effects import Log
from rooms.front import HttpReply
from rooms.host import ABNORMAL_CLOSURE, ArchiveBindings, RoomHost
from rooms.limits import Limits
from rooms.logs import log_line
from rooms.protocol import CloseCode, may_store
from rooms.telemetry import Telemetry
from roomsd.bindings import AlarmScheduler, RoomAlarm
from roomsd.output_gate import OutputGate, output_gate
from roomsd.sockets import LocalSocket, LocalSockets
from roomsd.sqlite import RoomConnection, SqliteSql, close_connection, prepare_file

log = logging.getLogger("rooms")


# An open room database holds ~140 KiB of SQLite heap, ~84 KiB of it page cache (BENCHMARKS.md).
# A room quiet this long, awake or asleep, gives its page cache back (PRAGMA shrink_memory);
# its next event re-reads the few pages it needs from the file (the OS has them cached).
QUIET_CACHE_RELEASE_S = 1.0
# An awake room quiet this long may close its database altogether, as a hibernated room does
# (`HibernationPolicy.open_idle_databases`): its next event reopens it in a worker thread.
QUIET_DATABASE_CLOSE_S = 2.0
# A file made ahead (`LocalRoom._prepare_ahead`) that no write has reached after this much quiet
# is closed and removed, whatever the open-databases budget: it only pays if the room's first
# messages come soon after its members joined, and an open one costs ~150 KiB.
UNUSED_FILE_AHEAD_S = 3.0
# ... and its slot under `HibernationPolicy.files_made_ahead` stays taken this much longer
# (`FilesAhead.went_unused`): joins that lead to no write (a long connect storm, rooms of people
# who only read) then make at most that many files in this time, not that many every
# `UNUSED_FILE_AHEAD_S` (a storm of 10,000 connections into 1,000 new rooms made 609).
UNUSED_FILE_COOLING_S = 30.0


# New rooms' files are made one at a time in one thread: the disk does them one at a time
# anyway, and every extra thread running beside the event loop takes the GIL from it more often.
_PREPARER = concurrent.futures.ThreadPoolExecutor(
    max_workers=1, thread_name_prefix="roomsd-prepare"
)


@dataclass(frozen=True)
class HibernationPolicy:
    after_idle_s: float = 10.0
    every_event: bool = False
    # Quiet rooms (hibernated, or awake and quiet for QUIET_DATABASE_CLOSE_S) whose SQLite
    # connection stays open, most recently active first. An open connection costs ~100-150 KiB,
    # and reopening one ~2 ms of a worker thread (SQLite recreates and syncs the WAL), so the
    # rooms likeliest to be busy again soon keep theirs and memory stays bounded.
    open_idle_databases: int = 16
    # New rooms whose file is made when their first member joins, ahead of their first write,
    # at most this many at once (`FilesAhead`); beyond it a room's file is made at its first
    # write, as always. 0: never ahead.
    files_made_ahead: int = 128

    def __post_init__(self) -> None:
        if self.open_idle_databases < 0:
            raise ValueError("open_idle_databases must be 0 or more")
        if self.files_made_ahead < 0:
            raise ValueError("files_made_ahead must be 0 or more")


class FilesAhead:
    """How many rooms hold a file made ahead of their first write that no frame that may store
    has reached yet: the bound on files that joins alone can make (`LocalRoom._prepare_ahead`).

    Such a file holds no room and goes when its connection closes (`close_connection`): when
    its last member leaves (`LocalRoom._drop_unused_ahead`), or after `UNUSED_FILE_AHEAD_S`
    of quiet (`RoomRegistry.sweep`), or when the room is forgotten. Joining a room that holds
    nothing already costs its opener a unit of the new-room budget (per user and per
    address); this bounds what many openers together can make, and so the open connections
    (~150 KiB each) and files that joins alone can cost at once. A file removed after its
    quiet keeps its slot for `UNUSED_FILE_COOLING_S` more, which bounds the files that joins
    without writes make over time as well."""

    def __init__(self) -> None:
        self.count = 0
        # When each slot of a file that went unused is free again (`went_unused`), earliest first.
        self._cooling: list[float] = []
        # New rooms' files made since start (GET /metrics): ahead, as a first member joined,
        # and at a first write that found none (over the bound, or its file went unused).
        self.made = 0
        self.made_at_write = 0

    def take(self, limit: int) -> bool:
        if self.count + len(self._cooling) >= limit:
            return False
        self.count += 1
        return True

    def give_back(self) -> None:
        self.count -= 1

    def went_unused(self, until: float) -> None:
        """A file made ahead was removed after `UNUSED_FILE_AHEAD_S` with nobody writing: its
        slot stays taken until ``until`` (`time.monotonic`), see `UNUSED_FILE_COOLING_S`."""
        bisect.insort(self._cooling, until)

    def cool_down(self, now: float) -> None:
        """Free the slots of unused files whose time is up."""
        while self._cooling and self._cooling[0] <= now:
            self._cooling.pop(0)


class NewRoomBudget:
    """The host's `NewRoomLimiter` in this process: ``per_minute`` rooms that hold nothing yet
    per key (a user, an address), as a burst that refills over a minute. Cloudflare's
    `NEW_ROOMS` rate-limiting binding has the same default (wrangler.jsonc)."""

    def __init__(self, per_minute: int) -> None:
        self._buckets = KeyedBuckets(per_minute, 60.0 / per_minute)

    async def allow(self, key: str) -> bool:
        return self._buckets.take(key, time.monotonic()) == 0


@dataclass(frozen=True)
class RoomServices:
    """What every local room shares: its limits, hibernation, log, archive and alarms."""

    limits: Limits
    policy: HibernationPolicy
    emit: Callable[[str], None]
    log_messages: bool = False
    archive: ArchiveBindings | None = None
    alarms: AlarmScheduler | None = None
    # Commit the writes of one event-loop iteration together, before any output leaves
    # (roomsd.output_gate); False: one commit per message, for comparison.
    group_commit: bool = True
    telemetry: Telemetry = field(default_factory=Telemetry)  # shared: GET /metrics reads it
    new_rooms: NewRoomBudget | None = None
    files_ahead: FilesAhead = field(default_factory=FilesAhead)  # shared by every room


class LocalRoom:
    def __init__(self, name: str, db_path: Path, services: RoomServices) -> None:
        self.name = name
        self.archive = services.archive
        self.alarms = services.alarms
        self.new_rooms = services.new_rooms
        self._files_ahead = services.files_ahead
        self._holds_ahead = False  # counted in `_files_ahead` (`_prepare_ahead`)
        self._made_ahead = False  # once per instance: a file that went unused is not made again
        self.db_path = db_path
        self.limits = services.limits
        self.policy = services.policy
        self.sockets = LocalSockets()
        self.wakes = 0
        self._emit = services.emit
        self._log_messages = services.log_messages
        self._group_commit = services.group_commit
        self.telemetry = services.telemetry
        self._sql: SqliteSql | None = None
        self._opening: asyncio.Future[SqliteSql] | None = None  # its file, opening off the loop
        # Its file, being created off the loop for the first write (`prepare_file`).
        self._preparing: asyncio.Future[RoomConnection] | None = None
        self._preparing_for: SqliteSql | None = None  # the database it is for
        self._fileless: SqliteSql | None = None  # this database, known to have no file
        self._host: RoomHost[LocalSocket] | None = None
        # This room's previous connection, still being closed off the loop: a new one opened
        # meanwhile would wait on its checkpoint with the event loop blocked (busy timeout).
        self._previous_closing: asyncio.Future[None] | None = None
        self._in_flight = 0  # events running now (each may await R2 or D1)
        self._cache_released_at: float | None = None  # `last_event` when it last shrank
        self.last_event = time.monotonic()

    @property
    def awake(self) -> bool:
        return self._host is not None

    @property
    def holds_database(self) -> bool:
        return self._sql is not None

    @property
    def stored(self) -> bool:
        """This room has stored something (its database says, connecting if it must)."""
        return self._sql is not None and self._sql.exists()

    def host(self) -> RoomHost[LocalSocket]:
        """The awake instance, rebuilt from storage and attachments if the room hibernated."""
        self.last_event = time.monotonic()
        if self._host is None:
            if self._sql is None:
                self._sql = self._new_database(self._gate())
            self._host = RoomHost(
                self.name,
                self._sql,
                self.sockets,
                self.limits,
                log=self._emit,
                log_messages=self._log_messages,
                archive=self.archive,
                alarms=RoomAlarm(self.alarms, self.name) if self.alarms else None,
                telemetry=self.telemetry,
                new_rooms=self.new_rooms,
            )
            self.wakes += 1
        return self._host

    def _gate(self) -> OutputGate | None:
        return output_gate() if self._group_commit else None

    def _new_database(self, gate: OutputGate | None) -> SqliteSql:
        sql = SqliteSql(self.db_path, gate, on_lost=self._lost_batch)
        sql.on_commit = self.telemetry.commit_time.observe
        return sql

    def _opened_database(self, gate: OutputGate | None, for_write: bool) -> SqliteSql:
        sql = self._new_database(gate)
        sql.open(for_write)  # read the file here, in the worker thread
        return sql

    async def _open_database(self, for_write: bool = False) -> None:
        """Open this room's existing file in a worker thread, not on the event loop.

        Opening reads the file and may have to recover or recreate its WAL (writes and fsyncs,
        ~2 ms here, more on a busy disk): every other room would wait meanwhile; for an event
        that may write, the new WAL's first frame is written there too. A room with no file
        has nothing to read; it is left to `host()`. Events arriving meanwhile wait for the
        same open."""
        opening = self._opening
        if opening is None:
            if not self.db_path.exists():
                return
            opening = self._opening = asyncio.ensure_future(
                asyncio.to_thread(self._opened_database, self._gate(), for_write)
            )
            opening.add_done_callback(self._opened)
        await asyncio.shield(opening)  # a cancelled waiter must not lose the connection
        self._opened(opening)  # done already, its callback may not have run (`_connect_off_loop`)

    def _opened(self, opening: asyncio.Future[SqliteSql]) -> None:
        """Keep the database ``opening`` opened, once (its callback or its waiter)."""
        if self._opening is not opening or not opening.done():
            return
        self._opening = None
        if opening.cancelled() or opening.exception() is not None:
            return  # the waiting event fails with the error, as a failed open always did
        sql = opening.result()
        if self._sql is None:
            self._sql = sql
        else:  # opened on the loop meanwhile (a synchronous `host()`): keep one connection
            sql.drop()

    def _has_file(self, sql: SqliteSql) -> bool:
        """Whether the room's file exists. ``sql`` without a file gets one only by connecting,
        so a no is remembered until its connection is released: a room that nobody writes to
        is not asked of the file system on every event (a storm of joins asks thousands)."""
        if self._fileless is sql:
            return False
        if self.db_path.exists():
            return True
        self._fileless = sql
        return False

    async def _connect_off_loop(self, for_write: bool) -> None:
        """Connect this room's database in a worker thread, creating its file first if it has
        none (for a frame that may write to it): the room's next statements then find it open.

        Creating a file, setting up its WAL and committing its first tables take ~5 ms of
        writes and syncs, which every other room would wait out on the event loop: a burst of
        new rooms' first messages stalled the whole server. A new file holds no room until the
        write itself creates `messages` (`prepare_file`), and is removed if the room's
        connection is closed without one, so a room nobody wrote to still leaves nothing
        behind. An existing file (a quiet room whose connection was closed) is opened and read
        here. A failure is only logged: the room then connects on the loop, as it always could.
        """
        preparing = self._preparing
        if preparing is None:
            if for_write and self._sql is not None and not self._has_file(self._sql):
                self._files_ahead.made_at_write += 1
            preparing = self._start_preparing(for_write)
        with contextlib.suppress(Exception):
            await asyncio.shield(preparing)  # a cancelled waiter must not lose the connection
        # A future already done is awaited without yielding, before its done callback has run:
        # take its connection now, or this event's statements would connect on the loop.
        self._take_prepared(preparing)

    def _start_preparing(self, for_write: bool) -> asyncio.Future[RoomConnection]:
        sql = self._sql
        loop = asyncio.get_running_loop()
        preparing = self._preparing = asyncio.ensure_future(
            loop.run_in_executor(_PREPARER, prepare_file, self.db_path, for_write)
        )
        self._preparing_for = sql
        preparing.add_done_callback(self._take_prepared)
        return preparing

    def _prepare_ahead(self) -> None:
        """Have the file of a room that has none made now, as a member joins, rather than by
        its first message: its first messages then find the connection open and the WAL
        started, and a burst of new rooms' first messages does not queue behind ~1.5 ms of
        file set-up each (BENCHMARKS.md). Not awaited: the join goes on meanwhile.

        Bounded by `HibernationPolicy.files_made_ahead` across the server: past it, or with
        0, the file is made at the first write as before. The file holds no room until a
        write (`prepare_file`) and goes when its connection is closed unused.

        At most once per room while it is in memory: a room whose file went unused (nobody
        wrote for `UNUSED_FILE_AHEAD_S`) had its chance, and making it again for each later
        join turned a long connect storm into a loop of files made and removed."""
        sql = self._sql
        if (
            sql is None
            or self._made_ahead
            or self.policy.every_event  # the file would be closed, and removed, at once
            or sql.is_open
            or self._preparing is not None
            or self._has_file(sql)
            or not self._files_ahead.take(self.policy.files_made_ahead)
        ):
            return
        self._holds_ahead = self._made_ahead = True
        self._files_ahead.made += 1
        self._start_preparing(for_write=True).add_done_callback(self._prepared_ahead)

    def _prepared_ahead(self, preparing: asyncio.Future[RoomConnection]) -> None:
        if preparing.cancelled() or preparing.exception() is not None or not self.database_open:
            self._give_back_ahead()  # no file was made, or it was closed (and removed) at once
        else:
            self._drop_unused_ahead()  # everyone left while it was being made

    def _drop_unused_ahead(self) -> None:
        """Every member left a room whose file was made ahead and that nobody wrote to: the
        file goes now (closed and removed in the preparer thread), not when the room is
        forgotten, so a room nobody wrote to costs no file once nobody is in it."""
        if not self._holds_ahead or len(self.sockets) or self.busy or self._preparing is not None:
            return
        sql = self.release_connection()
        if sql is None:
            return
        loop = asyncio.get_running_loop()
        self.after_close_of(asyncio.ensure_future(loop.run_in_executor(_PREPARER, _close, sql)))

    def _give_back_ahead(self) -> None:
        """This room's file made ahead is no longer waiting for a first write: the write came
        (it stored, or it was refused and the file goes with the connection, as any file made
        for a refused write does), or the connection is being closed."""
        if self._holds_ahead:
            self._holds_ahead = False
            self._files_ahead.give_back()

    def _take_prepared(self, preparing: asyncio.Future[RoomConnection]) -> None:
        """Give the database the connection ``preparing`` made, once (its done callback, or
        its waiter, whichever runs first)."""
        if self._preparing is not preparing or not preparing.done():
            return  # taken already, or not done yet
        self._preparing = None
        sql, self._preparing_for = self._preparing_for, None
        if preparing.cancelled():
            return
        if (error := preparing.exception()) is not None:
            log.warning(
                "preparing the file failed room=%s error=%s", self.name, type(error).__name__
            )
            return
        connection = preparing.result()
        if sql is not None and sql is self._sql and sql.adopt(connection):
            return
        if self.database_open:
            # Connected meanwhile, to the same file, which it may be claiming in a batch not
            # yet committed: removing "a file that holds no room" would lose that write.
            connection.close()
        else:  # released meanwhile: a file that holds no room goes
            close_connection(connection, self.db_path)

    def after_close_of(self, closing: asyncio.Future[None]) -> None:
        """Open the database again only once ``closing`` (its old connection's close) is done."""
        self._previous_closing = closing

    async def wake(self, for_write: bool = False) -> RoomHost[LocalSocket]:
        """`host()` for event handlers: first waits out a close of this room's old connection,
        then opens its file off the event loop (``for_write``: for a frame that may write)."""
        closing = self._previous_closing
        if closing is not None:
            if not closing.done():
                await asyncio.shield(closing)  # a cancelled waiter must not cancel the close
            if self._previous_closing is closing:
                self._previous_closing = None
        sql = self._sql
        if self._host is None and sql is None:
            await self._open_database(for_write)
        elif sql is not None and not sql.is_open and self._has_file(sql):
            await self._connect_off_loop(for_write)  # closed while the room was quiet
        return self.host()

    async def refusal(
        self, identity: Identity, address: str = "", *, opening: bool = True
    ) -> HttpReply | None:
        async with self._event() as host:
            return await host.refusal(identity, address, opening=opening)

    @property
    def busy(self) -> bool:
        """An event is running (it may be awaiting R2 or D1): not a moment to put it to sleep."""
        return self._in_flight > 0

    @property
    def closing(self) -> bool:
        """Its previous connection is still being closed (and its file perhaps removed): not a
        moment to forget it, or a new instance could open the file meanwhile."""
        return self._previous_closing is not None and not self._previous_closing.done()

    @contextlib.asynccontextmanager
    async def _event(self) -> AsyncIterator[RoomHost[LocalSocket]]:
        self._in_flight += 1
        try:
            yield await self.wake()
        finally:
            self._in_flight -= 1
            self.last_event = time.monotonic()
            self._after_event()

    async def connect(
        self,
        ws: LocalSocket,
        identity: Identity,
        since: int | None,
        request_id: str | None = None,
        address: str = "",
    ) -> None:
        async with self._event() as host:
            await host.connect(ws, identity, since, request_id=request_id, address=address)
            if self.policy.files_made_ahead:
                self._prepare_ahead()

    async def message(self, ws: LocalSocket, data: str | bytes) -> None:
        # `_event` spelled out: this runs once per frame, and an async context manager costs
        # a generator and three extra calls per frame.
        self._in_flight += 1
        try:
            if self._holds_ahead and may_store(data):
                self._give_back_ahead()
            host = self._host
            if host is None or self._previous_closing is not None:
                host = await self.wake(may_store(data))
            else:
                self.last_event = time.monotonic()
            sql = self._sql
            if sql is not None and not sql.is_open:  # a new room, or one quiet for a while
                writes = may_store(data)
                if writes or self._has_file(sql):
                    await self._connect_off_loop(for_write=writes)
                    host = await self.wake()
            await host.message(ws, data)
        finally:
            self._in_flight -= 1
            self.last_event = time.monotonic()
            self._after_event()

    async def closed(self, ws: LocalSocket) -> None:
        async with self._event() as host:
            if ws.cut_for_backlog:
                host.engine.store.count("slow_consumer")
                self.telemetry.slow_consumer_cuts += 1
            await host.closed(ws, ws.ws.close_code or ABNORMAL_CLOSURE)
            self.sockets.forget(ws)

    async def alarm(self) -> ArchiveOutcome | None:
        async with self._event() as host:
            return await host.alarm()

    async def admin(self, action: str, params: Mapping[str, str]) -> dict[str, Any]:
        async with self._event() as host:
            result = await host.admin(action, params)
        if self._sql is not None:
            self._sql.settle()  # the answer may show what the action wrote: committed first
        return result

    def _lost_batch(self, error: Exception) -> None:
        """A group commit failed: none of its messages was acked or delivered, but this room's
        memory (its head, its sockets' queued frames) already shows them. Restart the room
        from its file, as workerd resets an object whose storage write failed, and cut its
        sockets without their queued frames: clients reconnect and resume with ``since``."""
        self._emit(log_line(self.name, Log("commit_failed", code=type(error).__name__)))
        self._host = None
        for sock in self.sockets.all():
            sock.abort(CloseCode.INTERNAL_ERROR, "internal error")

    def hibernate(self) -> None:
        """Drop the in-memory instance; sockets stay open, storage stays on disk."""
        self._save_counts()
        self._host = None

    def _save_counts(self) -> None:
        if self._host is None or not self.database_open:  # a closed one wrote them as it closed
            return
        try:
            self._host.engine.store.save_counts()
        except Exception:  # operator counters only; the room's messages are committed
            log.exception("saving counters failed room=%s", self.name)

    def release_cache(self, now: float) -> bool:
        """Give the database's page cache back if the room has been quiet; True if it did."""
        sql = self._sql
        if (
            sql is None
            or self.busy
            or sql.uncommitted
            or now - self.last_event < QUIET_CACHE_RELEASE_S
            or self._cache_released_at == self.last_event  # nothing ran since the last time
        ):
            return False
        sql.release_memory()
        self._cache_released_at = self.last_event
        return True

    @property
    def holds_unused_file_ahead(self) -> bool:
        """Its file was made ahead and no frame that may store has reached it yet."""
        return self._holds_ahead

    @property
    def database_open(self) -> bool:
        return self._sql is not None and self._sql.is_open

    def release_connection(self) -> SqliteSql | None:
        """Hand over the database's connection, detached, for the caller to close; the room
        stays awake, and its next event connects again off the loop (`wake`)."""
        if self._sql is None or self.busy:
            return None
        self._save_counts()  # while the connection is open: writing them later would reopen it
        self._fileless = None  # closing may leave the file, or remove it: ask again
        self._give_back_ahead()
        return self._sql.detach()

    def release_database(self) -> SqliteSql | None:
        """Hibernate and hand over the database connection, detached, for the caller to close."""
        self.hibernate()
        self._give_back_ahead()
        sql, self._sql = self._sql, None
        if sql is not None:
            sql.settle()  # on the loop, before the close in a worker thread
        return sql

    def _after_event(self) -> None:
        if self._holds_ahead:
            self._drop_unused_ahead()
        if self.policy.every_event and not self.busy:
            sql = self.release_database()
            if sql is not None:
                sql.close()


def _close(sql: SqliteSql) -> None:
    try:
        sql.close()
    except Exception:  # it held no room: nothing committed is at stake
        log.exception("closing an unused file failed room_file=%s", sql.path_name)


@dataclass(frozen=True)
class ClosingDatabase:
    """A sleeping room's connection on its way to being closed, and when that is done."""

    room: str
    sql: SqliteSql
    closed: asyncio.Future[None]


async def close_databases(closing: list[ClosingDatabase]) -> None:
    """Close connections in a worker thread: closing checkpoints the WAL, an fsync."""
    loop = asyncio.get_running_loop()

    def settle(done: asyncio.Future[None]) -> None:
        if not done.done():
            done.set_result(None)

    def close_all() -> None:
        for item in closing:
            try:
                item.sql.close()
            except Exception:  # committed data is safe; a failed checkpoint is redone on open
                log.exception("closing the database failed room=%s", item.room)
            finally:
                loop.call_soon_threadsafe(settle, item.closed)

    await asyncio.to_thread(close_all)


class RoomRegistry:
    """Every room of this server, created on first use, removed when idle and empty."""

    def __init__(self, rooms_dir: Path, services: RoomServices) -> None:
        rooms_dir.mkdir(parents=True, exist_ok=True)
        self.rooms_dir = rooms_dir
        self.services = services
        self.policy = services.policy
        self.rooms: dict[str, LocalRoom] = {}
        # Hibernated rooms that still hold their database connection, least recently active first.
        self._idle_open: OrderedDict[str, None] = OrderedDict()
        self._closing: dict[str, asyncio.Future[None]] = {}  # room -> its old connection's close

    def get(self, name: str) -> LocalRoom:
        room = self.rooms.get(name)
        if room is None:
            # Names are validated by the front ([A-Za-z0-9._-]{1,64}): safe as file names.
            path = self.rooms_dir / f"{name}.sqlite"
            room = self.rooms[name] = LocalRoom(name, path, self.services)
            if (closing := self._closing.get(name)) is not None:
                room.after_close_of(closing)  # forgotten a moment ago, connection still closing
        return room

    def exists(self, name: str) -> bool:
        """A room exists once it stored something, and while anyone is connected to it."""
        room = self.rooms.get(name)
        if room is not None:
            if len(room.sockets) > 0:
                return True
            if room.database_open:  # its file may be one made for a write that stored nothing
                return room.stored
        return (self.rooms_dir / f"{name}.sqlite").exists()

    async def call(
        self, room: str, action: str, params: Mapping[str, str]
    ) -> dict[str, Any] | None:
        """The admin API's `RoomControl` port: run an action in the room's actor."""
        if not self.exists(room):
            return None
        return await self.get(room).admin(action, params)

    def sweep(self, now: float | None = None) -> list[ClosingDatabase]:
        """Hibernate idle rooms, forget idle rooms with no sockets, and keep at most
        `open_idle_databases` quiet rooms' connections open: hibernated rooms, and awake ones
        quiet for `QUIET_DATABASE_CLOSE_S`. A file made ahead that no write reached goes after
        `UNUSED_FILE_AHEAD_S` of quiet, its slot after `UNUSED_FILE_COOLING_S` more.

        Returns the connections to close, detached from their rooms: see `close_databases`.
        """
        now = time.monotonic() if now is None else now
        files_ahead = self.services.files_ahead
        files_ahead.cool_down(now)
        to_close: list[ClosingDatabase] = []
        quiet: list[LocalRoom] = []  # falling asleep, or awake and quiet with an open database
        for name, room in list(self.rooms.items()):
            if room.busy or room.closing:
                continue
            idle = now - room.last_event
            unused_ahead = room.holds_unused_file_ahead  # kept apart from the budget below
            if unused_ahead and idle >= UNUSED_FILE_AHEAD_S:
                files_ahead.went_unused(now + UNUSED_FILE_COOLING_S)
                self._hand_over(room, to_close, keep_awake=True)
                unused_ahead = False
            if idle < self.policy.after_idle_s:
                if (
                    idle >= QUIET_DATABASE_CLOSE_S
                    and not unused_ahead
                    and room.database_open
                    and name not in self._idle_open
                ):
                    quiet.append(room)
                continue
            if not len(room.sockets):
                del self.rooms[name]
                self._idle_open.pop(name, None)
                self._hand_over(room, to_close)
            elif room.awake:
                room.hibernate()
                quiet.append(room)
        for room in sorted(quiet, key=lambda r: r.last_event):
            self._idle_open[room.name] = None
            self._idle_open.move_to_end(room.name)
        while len(self._idle_open) > self.policy.open_idle_databases:
            name, _ = self._idle_open.popitem(last=False)
            oldest = self.rooms.get(name)
            if oldest is None:
                continue
            if not oldest.awake:
                self._hand_over(oldest, to_close)
            elif now - oldest.last_event >= QUIET_DATABASE_CLOSE_S:  # else: busy again, keeps it
                self._hand_over(oldest, to_close, keep_awake=True)
        return to_close

    def release_quiet_caches(self, now: float | None = None) -> int:
        """Every quiet room's SQLite page cache, given back; returns how many rooms gave."""
        now = time.monotonic() if now is None else now
        return sum(room.release_cache(now) for room in list(self.rooms.values()))

    def _hand_over(
        self, room: LocalRoom, to_close: list[ClosingDatabase], *, keep_awake: bool = False
    ) -> None:
        sql = room.release_connection() if keep_awake else room.release_database()
        if sql is None:
            return
        closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._closing[room.name] = closed
        closed.add_done_callback(lambda done: self._forget_close(room.name, done))
        room.after_close_of(closed)
        to_close.append(ClosingDatabase(room.name, sql, closed))

    def _forget_close(self, name: str, done: asyncio.Future[None]) -> None:
        if self._closing.get(name) is done:
            del self._closing[name]

    def close(self) -> None:
        for room in self.rooms.values():
            if (sql := room.release_database()) is not None:
                sql.close()
        self.rooms.clear()
        self._idle_open.clear()

"""D1, R2 and alarms for the local runtime, as the core's async ports, with fault injection.

`Faults` is the switch the brief asks for: tests (or `rooms serve --fault ...`) make the next R2
puts or D1 writes fail, or make the process die right after an R2 put, to exercise the archive's
retry paths exactly where production could fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from rooms.store import SqlValue
from roomsd.output_gate import output_gate, release_output
from roomsd.r2 import FileBucket

log = logging.getLogger("rooms")

# A D1 batch: statements with their parameters, run in one transaction.
Statements = Sequence[tuple[str, Sequence[SqlValue]]]


class InjectedFaultError(Exception):
    """A failure the operator or a test asked for."""


@dataclass
class Faults:
    r2_put_failures: int = 0  # the next N R2 puts raise
    d1_write_failures: int = 0  # the next N D1 batches raise
    crash_after_r2_put: bool = False  # the process exits right after an R2 put

    @classmethod
    def from_names(cls, names: Sequence[str]) -> Faults:
        faults = cls()
        for name in names:
            if name == "crash-after-r2-put":
                faults.crash_after_r2_put = True
            elif name == "r2-put":
                faults.r2_put_failures += 1
            elif name == "d1-write":
                faults.d1_write_failures += 1
            else:
                raise ValueError(f"unknown fault {name!r}")
        return faults


class LocalR2:
    """The R2 binding over a directory."""

    def __init__(self, bucket: FileBucket, faults: Faults) -> None:
        self.bucket = bucket
        self.faults = faults

    async def put(self, key: str, data: bytes) -> None:
        if self.faults.r2_put_failures > 0:
            self.faults.r2_put_failures -= 1
            raise InjectedFaultError("r2 put")
        release_output()  # a segment leaves the room: what it was chosen by is committed first
        self.bucket.put(key, data)
        if self.faults.crash_after_r2_put:
            log.info('{"event":"fault_crash_after_r2_put"}')
            os._exit(70)  # as abrupt as a killed process: no cleanup, no D1 write

    async def get(self, key: str) -> bytes | None:
        return self.bucket.get(key)


class LocalD1:
    """The D1 binding over a SQLite file: prepared statements, atomic batches.

    The batches asked for in one event-loop iteration are written together, in one transaction
    when the iteration's ready callbacks have run (`_write_queued`), each in a savepoint of its
    own: a batch that fails rolls back alone and fails only its caller. Each caller still
    awaits its own batch's commit, as it awaits D1 over the network on Cloudflare. A burst of
    new rooms' first messages (each writes its directory row, `rooms.directory`) then costs
    one commit, not one each on the event loop while every room waits (BENCHMARKS.md). Reads
    write what is queued first, so they see every batch asked for before them.
    """

    def __init__(self, db: sqlite3.Connection, faults: Faults) -> None:
        self.db = db
        self.faults = faults
        self._queued: list[tuple[Statements, asyncio.Future[None]]] = []

    async def all(self, query: str, *params: SqlValue) -> list[Mapping[str, SqlValue]]:
        self._write_queued()
        cursor = self.db.execute(query, params)
        names = [d[0] for d in cursor.description or ()]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    async def batch(self, statements: Statements) -> None:
        if self.faults.d1_write_failures > 0:
            self.faults.d1_write_failures -= 1
            raise InjectedFaultError("d1 write")
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None:  # driven by hand (tools, the core's tests): written at once
            self._write_alone(statements)
            return
        written = loop.create_future()
        written.add_done_callback(_retrieved)  # its caller may have stopped waiting
        self._queued.append((statements, written))
        if len(self._queued) == 1:
            loop.call_soon(self._write_queued)
        # Shielded: a caller that gives up waiting does not take its batch out of the others'
        # transaction (a request sent to D1 is not unsent either).
        await asyncio.shield(written)

    async def run(self, query: str, *params: SqlValue) -> int:
        await self.batch([(query, params)])
        return self.db.total_changes

    def _write_queued(self) -> None:
        queued, self._queued = self._queued, []
        if not queued:
            return
        release_output()  # the index names what rooms committed, never what they may lose
        db = self.db
        outcomes: list[tuple[asyncio.Future[None], BaseException | None]] = []
        try:
            db.execute("BEGIN IMMEDIATE")
            for statements, written in queued:
                outcomes.append((written, self._write_one(statements)))
            db.execute("COMMIT")
        except Exception as exc:  # the transaction itself failed: every batch in it did
            if db.in_transaction:
                db.execute("ROLLBACK")
            outcomes = [(written, exc) for _, written in queued]
        for written, error in outcomes:
            if written.done():
                continue
            if error is None:
                written.set_result(None)
            else:
                written.set_exception(error)

    def _write_alone(self, statements: Statements) -> None:
        self.db.execute("BEGIN IMMEDIATE")
        error = self._write_one(statements)
        self.db.execute("COMMIT")
        if error is not None:
            raise error

    def _write_one(self, statements: Statements) -> Exception | None:
        """One batch in its own savepoint; its error, after rolling it back alone."""
        db = self.db
        db.execute("SAVEPOINT batch")
        try:
            for query, params in statements:
                db.execute(query, tuple(params))
        except Exception as exc:
            db.execute("ROLLBACK TO batch")
            db.execute("RELEASE batch")
            return exc
        db.execute("RELEASE batch")
        return None


def _retrieved(written: asyncio.Future[None]) -> None:
    """Mark a batch's outcome as seen, so that asyncio logs nothing when no caller is left."""
    if not written.cancelled():
        written.exception()


class AlarmScheduler:
    """One alarm per room, persisted so that alarms set before a restart still fire.

    Its rows are written in a transaction that the output gate commits together with the rooms'
    writes of the same event-loop iteration (`roomsd.output_gate`, `settle`), not in one commit
    per alarm: a burst of new rooms' first messages, each setting its archive alarm, costs one
    commit on the event loop, not a hundred (BENCHMARKS.md). An alarm row is committed by the
    same release of the gate as the messages whose write set it.
    """

    SCHEMA = "CREATE TABLE IF NOT EXISTS alarms (room TEXT PRIMARY KEY, at_ms INTEGER NOT NULL)"

    def __init__(self, path: Path, fire: Callable[[str], Awaitable[None]]) -> None:
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        # Like the room databases: WAL + NORMAL survives a killed process without an fsync on
        # every alarm write inside the event loop (a quarter of the samples at saturation).
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute(self.SCHEMA)
        self._fire = fire
        self._batch_open = False
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._running: set[asyncio.Task[None]] = set()

    # Alarms that fell due while the server was down fire this far apart, oldest first: each
    # archives a room on the event loop (~5 ms), and a restart must serve requests at once
    # rather than after catching up on every room (100 overdue alarms delayed listening 0.5 s).
    CATCH_UP_SPACING_MS = 10

    def start(self) -> None:
        """Arm every stored alarm, as after a restart; overdue ones catch up spaced out."""
        now_ms = int(time.time() * 1000)
        rows = self.db.execute("SELECT room, at_ms FROM alarms ORDER BY at_ms").fetchall()
        overdue = 0
        for room, at_ms in rows:
            fire_at_ms = int(at_ms)
            if fire_at_ms <= now_ms:
                overdue += 1
                fire_at_ms = now_ms + overdue * self.CATCH_UP_SPACING_MS
            self._arm(str(room), int(at_ms), fire_at_ms)

    def pending(self, room: str) -> int | None:
        row = self.db.execute("SELECT at_ms FROM alarms WHERE room = ?", (room,)).fetchone()
        return int(row[0]) if row else None

    def set(self, room: str, at_ms: int) -> None:
        self._write(
            "INSERT INTO alarms (room, at_ms) VALUES (?, ?) "
            "ON CONFLICT (room) DO UPDATE SET at_ms = excluded.at_ms",
            room,
            at_ms,
        )
        self._arm(room, at_ms)

    def _write(self, query: str, *params: str | int) -> None:
        """Run ``query`` in the open batch, opening it (held by the gate) if none is."""
        db = self.db
        if not self._batch_open:
            db.execute("BEGIN IMMEDIATE")
            self._batch_open = True
            output_gate().hold(self)
        try:
            db.execute(query, params)
        except sqlite3.Error:
            if not db.in_transaction:  # SQLite rolled the batch back itself (disk full, I/O)
                self._batch_open = False
            raise

    def settle(self) -> None:
        """Commit the open batch (the output gate calls this); a failure is logged: the alarms
        stay armed in this process, only a restart would not find them."""
        if not self._batch_open:
            return
        self._batch_open = False
        try:
            self.db.execute("COMMIT")
        except sqlite3.Error as exc:
            if self.db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    self.db.execute("ROLLBACK")
            log.warning("saving alarms failed error=%s", type(exc).__name__)

    def _arm(self, room: str, at_ms: int, fire_at_ms: int | None = None) -> None:
        """Fire at ``fire_at_ms`` (default ``at_ms``); ``at_ms`` is the stored row's time."""
        if (timer := self._timers.pop(room, None)) is not None:
            timer.cancel()
        loop = asyncio.get_running_loop()
        delay_s = max(0.0, (at_ms if fire_at_ms is None else fire_at_ms) / 1000 - time.time())
        self._timers[room] = loop.call_later(delay_s, self._launch, room, at_ms)

    def _launch(self, room: str, at_ms: int) -> None:
        self._timers.pop(room, None)
        task = asyncio.create_task(self._run(room, at_ms))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _run(self, room: str, at_ms: int) -> None:
        try:
            await self._fire(room)
        except Exception:
            log.exception("alarm failed room=%s", room)
            self.set(room, int(time.time() * 1000) + 5000)  # at-least-once: try again
            return
        # Removed only once the handler finished, like workerd: a crash mid-run leaves the row,
        # and the alarm fires again after a restart. A handler that set a new time keeps it.
        self._write("DELETE FROM alarms WHERE room = ? AND at_ms = ?", room, at_ms)

    async def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        for task in list(self._running):
            task.cancel()
        self.settle()
        self.db.close()


class RoomAlarm:
    """The `Alarms` port of one room."""

    def __init__(self, scheduler: AlarmScheduler, room: str) -> None:
        self.scheduler = scheduler
        self.room = room

    async def set(self, at_ms: int) -> None:
        self.scheduler.set(self.room, at_ms)

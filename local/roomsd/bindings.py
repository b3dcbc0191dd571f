"""D1, R2 and alarms for the local runtime, as the core's async ports, with fault injection.

`Faults` is the switch the brief asks for: tests (or `rooms serve --fault ...`) make the next R2
puts or D1 writes fail, or make the process die right after an R2 put, to exercise the archive's
retry paths exactly where production could fail.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from rooms.store import SqlValue
from roomsd.output_gate import release_output
from roomsd.r2 import FileBucket

log = logging.getLogger("rooms")


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
    """The D1 binding over a SQLite file: prepared statements, atomic batches."""

    def __init__(self, db: sqlite3.Connection, faults: Faults) -> None:
        self.db = db
        self.faults = faults

    async def all(self, query: str, *params: SqlValue) -> list[Mapping[str, SqlValue]]:
        cursor = self.db.execute(query, params)
        names = [d[0] for d in cursor.description or ()]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    async def batch(self, statements: Sequence[tuple[str, Sequence[SqlValue]]]) -> None:
        if self.faults.d1_write_failures > 0:
            self.faults.d1_write_failures -= 1
            raise InjectedFaultError("d1 write")
        release_output()  # the index names what rooms committed, never what they may lose
        self.db.execute("BEGIN IMMEDIATE")
        try:
            for query, params in statements:
                self.db.execute(query, tuple(params))
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    async def run(self, query: str, *params: SqlValue) -> int:
        await self.batch([(query, params)])
        return self.db.total_changes


class AlarmScheduler:
    """One alarm per room, persisted so that alarms set before a restart still fire."""

    SCHEMA = "CREATE TABLE IF NOT EXISTS alarms (room TEXT PRIMARY KEY, at_ms INTEGER NOT NULL)"

    def __init__(self, path: Path, fire: Callable[[str], Awaitable[None]]) -> None:
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        # Like the room databases: WAL + NORMAL survives a killed process without an fsync on
        # every alarm write inside the event loop (a quarter of the samples at saturation).
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute(self.SCHEMA)
        self._fire = fire
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
        self.db.execute(
            "INSERT INTO alarms (room, at_ms) VALUES (?, ?) "
            "ON CONFLICT (room) DO UPDATE SET at_ms = excluded.at_ms",
            (room, at_ms),
        )
        self._arm(room, at_ms)

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
        self.db.execute("DELETE FROM alarms WHERE room = ? AND at_ms = ?", (room, at_ms))

    async def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        for task in list(self._running):
            task.cancel()
        self.db.close()


class RoomAlarm:
    """The `Alarms` port of one room."""

    def __init__(self, scheduler: AlarmScheduler, room: str) -> None:
        self.scheduler = scheduler
        self.room = room

    async def set(self, at_ms: int) -> None:
        self.scheduler.set(self.room, at_ms)

"""The `Sql` port over sqlite3: one WAL-mode database file per room."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from rooms.store import SqlValue
from roomsd.output_gate import OutputGate

T = TypeVar("T")


class SqliteSql:
    """A room's database. Statements outside `transaction` commit on their own.

    With an `OutputGate` (the server's rooms), transactions are grouped: the first one of an
    event-loop iteration opens a batch that stays open, each `transaction` inside it is a
    savepoint, and the gate commits the batch before any output leaves the process
    (`roomsd.output_gate`). Without one (tools, tests of the core), every `transaction` commits.

    The file is opened (and so created) by the first statement, not before: `exists` answers
    from the file system, so a room that only ever had readers leaves no file behind.
    """

    def __init__(
        self,
        path: Path | str,
        gate: OutputGate | None = None,
        on_lost: Callable[[Exception], None] | None = None,
    ) -> None:
        self._path = path
        self._connection: sqlite3.Connection | None = None
        self._depth = 0
        self._gate = gate
        self._batch_open = False
        # Called when a batch could not be committed: its writes are gone, though the room's
        # memory (its head, its queued frames) still shows them.
        self.on_lost = on_lost
        self.on_commit: Callable[[float], None] | None = None

    def open(self) -> None:
        """Have the file open now (`LocalRoom` calls this in a worker thread, so that connecting,
        which may recover or recreate the WAL, never runs on the event loop). A room that never
        stored anything has no file, and asking creates none."""
        if self._connection is None and _is_file(self._path):
            self._db.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()

    @property
    def _db(self) -> sqlite3.Connection:
        if self._connection is None:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, like the DO's implicit
            # commits.
            db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode survives a process crash (kill -9); only power loss rolls back.
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA foreign_keys=ON")
            # A deleted message's text is zeroed in the file, not left in free space
            # (docs/protocol.md, "What a delete removes"). It costs writes on deletes only.
            db.execute("PRAGMA secure_delete=ON")
            self._connection = db
        return self._connection

    def exists(self) -> bool:
        if self._connection is None and not _is_file(self._path):
            return False
        return bool(self.execute(_ROOM_TABLES_EXIST))

    def execute(self, query: str, *params: SqlValue) -> list[Sequence[SqlValue]]:
        for param in params:
            if isinstance(param, bool):  # Cloudflare would store 'true'; refuse it here too
                raise TypeError("bind int(flag), not bool: Cloudflare stores bools as text")
        return self._db.execute(query, params).fetchall()

    def transaction(self, fn: Callable[[], T]) -> T:
        if self._depth:
            return fn()
        if self._gate is not None:
            return self._in_batch(fn, self._gate)
        self._db.execute("BEGIN IMMEDIATE")
        self._depth += 1
        try:
            result = fn()
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        finally:
            self._depth -= 1
        try:
            self._db.execute("COMMIT")
        except sqlite3.Error:
            if self._db.in_transaction:  # a failed COMMIT can leave the transaction open
                self._db.execute("ROLLBACK")
            raise
        return result

    def _in_batch(self, fn: Callable[[], T], gate: OutputGate) -> T:
        db = self._db
        # The batch's first write needs no savepoint: if it fails, the batch holds nothing else
        # and is rolled back whole. Later ones get one, so that a failure undoes only itself.
        first = not self._batch_open
        if first:
            db.execute("BEGIN IMMEDIATE")
            self._batch_open = True
            gate.hold(self)
        else:
            db.execute("SAVEPOINT write")
        self._depth += 1
        try:
            result = fn()
        except BaseException:
            if first:
                self._batch_open = False
                if db.in_transaction:
                    db.execute("ROLLBACK")
            elif db.in_transaction:  # only this write goes; the batch's earlier ones stay
                db.execute("ROLLBACK TO write")
                db.execute("RELEASE write")
            else:  # SQLite rolled the whole batch back itself (disk full, I/O error)
                self._lose_batch(RuntimeError("batch rolled back"))
            raise
        finally:
            self._depth -= 1
        if not first:
            db.execute("RELEASE write")
        return result

    @property
    def uncommitted(self) -> bool:
        """Writes are waiting for the gate to commit them."""
        return self._batch_open

    def settle(self) -> None:
        """Commit the open batch, if any. A failed commit rolls back and calls `on_lost`."""
        if not self._batch_open:
            return
        self._batch_open = False
        started = time.perf_counter()
        try:
            self._db.execute("COMMIT")
            if self.on_commit is not None:  # the commit time, for GET /metrics
                self.on_commit(time.perf_counter() - started)
        except sqlite3.Error as exc:
            if self._db.in_transaction:  # a failed COMMIT can leave the transaction open
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
            self._lose_batch(exc)

    def _lose_batch(self, error: Exception) -> None:
        self._batch_open = False
        if self.on_lost is not None:
            self.on_lost(error)

    def release_memory(self) -> None:
        """Free the page cache and what else this connection can spare (it keeps working)."""
        if self._connection is not None:
            self._connection.execute("PRAGMA shrink_memory")

    def size_bytes(self) -> int:
        if self._connection is None and not _is_file(self._path):
            return 0
        page_count = self._db.execute("PRAGMA page_count").fetchone()[0]
        page_size = self._db.execute("PRAGMA page_size").fetchone()[0]
        return int(page_count) * int(page_size)

    def close(self) -> None:
        self.settle()  # closing would roll an open batch back
        if self._connection is not None:
            self._connection.close()
            self._connection = None


_ROOM_TABLES_EXIST = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'messages'"


def _is_file(path: Path | str) -> bool:
    return str(path) != ":memory:" and Path(path).is_file()

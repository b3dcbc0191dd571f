"""The `Sql` port over sqlite3: one WAL-mode database file per room."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from rooms.store import SCHEMA, SCHEMA_NAMES, SqlValue
from roomsd.output_gate import OutputGate

T = TypeVar("T")


class SqliteSql:
    """A room's database. Statements outside `transaction` commit on their own.

    With an `OutputGate` (the server's rooms), transactions are grouped: the first one of an
    event-loop iteration opens a batch that stays open, each `transaction` inside it is a
    savepoint, and the gate commits the batch before any output leaves the process
    (`roomsd.output_gate`). Without one (tools, tests of the core), every `transaction` commits.

    The file is opened (and so created) by the first statement, not before: `exists` answers
    from the file system, so a room that only ever had readers leaves no file behind. A file
    made ahead of a room's first write (`prepare_file`) holds no room until that write: closing
    its connection removes it.

    Such a file has every table already, `messages` too, and is marked unclaimed in its header
    (`user_version`, `_UNCLAIMED`): it holds a room once the core's first write runs the
    schema's `CREATE TABLE IF NOT EXISTS messages`, which here also clears the mark, in the
    same transaction as the write (a refused write rolls both back). The schema's other
    `CREATE ... IF NOT EXISTS` statements are skipped on a file known to have every table:
    no-ops, but each compiled afresh by a new connection. So a room's first write changes no
    schema on the event loop (a schema change costs its own write and the re-compiling of
    every statement after it: ~0.3 ms more, BENCHMARKS.md).
    """

    def __init__(
        self,
        path: Path | str,
        gate: OutputGate | None = None,
        on_lost: Callable[[Exception], None] | None = None,
    ) -> None:
        self._path = path
        self._connection: RoomConnection | None = None
        self._depth = 0
        self._gate = gate
        self._batch_open = False
        # Called when a batch could not be committed: its writes are gone, though the room's
        # memory (its head, its queued frames) still shows them.
        self.on_lost = on_lost
        self.on_commit: Callable[[float], None] | None = None

    def open(self, for_write: bool = False) -> None:
        """Have the file open now (`LocalRoom` calls this in a worker thread, so that connecting,
        which may recover or recreate the WAL, never runs on the event loop); ``for_write``
        also writes the new WAL's first frame (`_start_wal`). A room that never stored anything
        has no file, and asking creates none."""
        if self._connection is None and _is_file(self._path):
            self._db.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
            if for_write:
                _start_wal(self._db, self._path)

    @property
    def path_name(self) -> str:
        """The file's name, for logs."""
        return Path(self._path).name

    @property
    def is_open(self) -> bool:
        """Connected to its file (which therefore exists)."""
        return self._connection is not None

    def adopt(self, connection: RoomConnection) -> bool:
        """Use ``connection`` (from `prepare_file`, made in a worker thread) unless this database
        connected meanwhile; False if it did, and the caller closes ``connection``."""
        if self._connection is not None:
            return False
        self._connection = connection
        return True

    def detach(self) -> SqliteSql | None:
        """Commit, then hand this database's connection over in a new `SqliteSql` (for closing
        it in a worker thread); this one connects again when next used."""
        if self._connection is None:
            return None
        self.settle()
        detached = SqliteSql(self._path)
        detached._connection, self._connection = self._connection, None
        return detached

    @property
    def _db(self) -> RoomConnection:
        if self._connection is None:
            self._connection = _connect(self._path)
        return self._connection

    def exists(self) -> bool:
        if self._connection is None and not _is_file(self._path):
            return False
        return bool(self.execute(_ROOM_TABLES_EXIST))

    def execute(self, query: str, *params: SqlValue) -> list[Sequence[SqlValue]]:
        for param in params:
            if isinstance(param, bool):  # Cloudflare would store 'true'; refuse it here too
                raise TypeError("bind int(flag), not bool: Cloudflare stores bools as text")
        if query in _SCHEMA_CREATES:
            return self._create(query)
        return self._db.execute(query, params).fetchall()

    def run_schema(self, statements: Sequence[str]) -> None:
        for statement in statements:  # each intercepted by `execute` (`_create`)
            self.execute(statement)

    def _create(self, query: str) -> list[Sequence[SqlValue]]:
        """One of the schema's `CREATE ... IF NOT EXISTS`: skipped where every table exists
        (a file made from the image, asked once per connection); creating `messages` also
        claims a file made ahead (see the class)."""
        db = self._db
        if not db.has_every_table:
            db.has_every_table = _has_every_table(db)
            if not db.has_every_table:
                db.execute(query)
        if query == _CREATE_MESSAGES:
            db.execute(_CLAIM)
        return []

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

    def drop(self) -> None:
        """Close this connection and leave the file as it is: another connection to it is open
        (and may be claiming it in a batch not yet committed, see `close_connection`)."""
        if self._connection is not None:
            connection, self._connection = self._connection, None
            connection.close()

    def close(self) -> None:
        self.settle()  # closing would roll an open batch back
        if self._connection is not None:
            connection, self._connection = self._connection, None
            close_connection(connection, self._path)


def prepare_file(path: Path | str, for_write: bool = True) -> RoomConnection:
    """Connect a room's file, creating it ahead of its first write (``for_write``) with every
    table, marked unclaimed, and return the open connection. Run in a worker thread: creating a
    file, setting up its WAL and writing the WAL's first frames take file creations, deletions
    and syncs that the event loop would otherwise wait out, ~6 ms a room here.

    The file starts as a copy of one made once per process (`_prepared_image`): one file
    created and synced, instead of a rollback journal made, synced and deleted to switch it to
    WAL and again to commit its tables (half the time and the CPU). Its first rows are then
    written here, so the WAL's header, which SQLite syncs with a WAL's first frame (and the
    directory with a new file), is written and synced in this thread too, not by the room's
    first message. Marked unclaimed, the file holds no room yet (`SqliteSql.exists`): the
    room's first write claims it in the same transaction as the message (`SqliteSql._create`).
    Until then, closing the connection removes the file (`close_connection`).

    A file that exists is connected and its schema read; for a write, the WAL's first frame
    is written too (`_start_wal`). Without ``for_write`` no file is created."""
    if not for_write or Path(path).exists():
        return _reopen(path, for_write)
    image = _prepared_image()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return _reopen(path, for_write)
    try:
        # No main file, so a WAL left here is from an old file: never replay it into this one.
        for suffix in ("-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{path}{suffix}")
        written = 0
        while written < len(image):
            written += os.write(fd, image[written:])
        os.fdatasync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        raise
    os.close(fd)
    db = _connect(path)
    try:
        db.execute("BEGIN IMMEDIATE")
        for statement in _PREPARED_ROWS:
            db.execute(statement)
        db.execute("COMMIT")
    except BaseException:
        close_connection(db, path)
        raise
    db.has_every_table = True  # made from the image
    return db


def _reopen(path: Path | str, for_write: bool) -> RoomConnection:
    db = _connect(path)
    try:
        db.has_every_table = _has_every_table(db)  # reads the schema here, not on the loop
        if for_write:
            _start_wal(db, path)
    except BaseException:
        db.close()
        raise
    return db


def _start_wal(db: sqlite3.Connection, path: Path | str) -> None:
    """Write the first frame of an empty WAL: SQLite syncs a WAL's header with its first frame,
    and the directory with a new WAL file. Closing a room's last connection deletes its WAL,
    so without this a reopened room's next message would do those syncs on the event loop.
    Rewriting `user_version` with its own value changes no data but writes a page."""
    try:
        if os.path.getsize(f"{path}-wal") > 0:
            return  # it has frames already (left by a crash and recovered): no header to write
    except OSError:
        pass
    db.execute("BEGIN IMMEDIATE")
    try:
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        db.execute(f"PRAGMA user_version = {version}")
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


_image: bytes | None = None
_image_lock = threading.Lock()


def _prepared_image() -> bytes:
    """The bytes of an empty WAL-mode room file with every table, marked unclaimed."""
    global _image
    with _image_lock:
        if _image is None:
            with tempfile.TemporaryDirectory(prefix="roomsd-") as tmp:
                path = Path(tmp) / "prepared.sqlite"
                db = _connect(path)
                db.execute("BEGIN IMMEDIATE")
                for statement in _PREPARED_TABLES:
                    db.execute(statement)
                db.execute("COMMIT")
                db.close()  # checkpoints: everything is in the main file, the WAL is gone
                _image = path.read_bytes()
        return _image


def close_connection(db: sqlite3.Connection, path: Path | str) -> None:
    """Close a room's connection; a file that holds no room (`prepare_file` made it, or a
    first write failed after creating it) is removed with it, so nothing stays behind.

    Such a file is unlinked before its connection closes: SQLite does not checkpoint a
    database whose file is gone, so the close writes and syncs nothing. Closed first, it
    copied the file's first rows from the WAL into the file and synced both (two `fdatasync`s
    and two writes), only for the files to be removed: every room of a connect storm whose
    file was made as its first member joined paid that as its members left."""
    try:
        holds_room = bool(db.execute(_ROOM_TABLES_EXIST).fetchall())
    except sqlite3.Error:
        holds_room = True  # cannot tell: keep it
    if not holds_room and str(path) != ":memory:":
        for suffix in ("-wal", "-shm", ""):  # the main file last: a WAL never outlives it
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{path}{suffix}")
    db.close()


class RoomConnection(sqlite3.Connection):
    """A room file's connection, knowing whether the file has every table of the schema (then
    `SqliteSql` skips the schema's `CREATE ... IF NOT EXISTS`; tables are never dropped)."""

    has_every_table = False


def _has_every_table(db: sqlite3.Connection) -> bool:
    return bool(db.execute(_EVERY_TABLE_EXISTS).fetchone()[0] == len(SCHEMA_NAMES))


def _connect(path: Path | str) -> RoomConnection:
    # isolation_level=None: we issue BEGIN/COMMIT ourselves, like the DO's implicit commits.
    db = sqlite3.connect(
        path, isolation_level=None, check_same_thread=False, factory=RoomConnection
    )
    db.execute("PRAGMA journal_mode=WAL")
    # NORMAL in WAL mode survives a process crash (kill -9); only power loss rolls back.
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("PRAGMA foreign_keys=ON")
    # A deleted message's text is zeroed in the file, not left in free space
    # (docs/protocol.md, "What a delete removes"). It costs writes on deletes only.
    db.execute("PRAGMA secure_delete=ON")
    return db


# A file made ahead of its room's first write carries this `user_version` until that write
# (`SqliteSql._create`); every other room file has 0, SQLite's default.
_UNCLAIMED = 0x726F6F6D  # "room"
_CLAIM = "PRAGMA user_version = 0"
_ROOM_TABLES_EXIST = (
    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'messages'"
    f" AND (SELECT user_version FROM pragma_user_version) != {_UNCLAIMED}"
)
_SCHEMA_CREATES = frozenset(statement for statement in SCHEMA if statement.startswith("CREATE"))
_CREATE_MESSAGES = next(statement for statement in SCHEMA if "EXISTS messages " in statement)
_EVERY_TABLE_EXISTS = "SELECT count(*) FROM sqlite_master WHERE name IN ({})".format(
    ", ".join(f"'{name}'" for name in sorted(SCHEMA_NAMES))
)
# What `prepare_file`'s image holds: every table, index and trigger, marked unclaimed.
_PREPARED_TABLES = (
    *(statement for statement in SCHEMA if statement.startswith("CREATE")),
    f"PRAGMA user_version = {_UNCLAIMED}",
)
_PREPARED_ROWS = tuple(statement for statement in SCHEMA if not statement.startswith("CREATE"))


def _is_file(path: Path | str) -> bool:
    return str(path) != ":memory:" and Path(path).is_file()

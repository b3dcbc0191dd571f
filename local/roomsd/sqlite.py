"""The `Sql` port over sqlite3: one WAL-mode database file per room."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from rooms.store import SqlValue

T = TypeVar("T")


class SqliteSql:
    """A room's database. Statements outside `transaction` commit on their own."""

    def __init__(self, path: Path | str) -> None:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, like the DO's implicit commits.
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode survives a process crash (kill -9); only power loss can roll back.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._depth = 0

    def execute(self, query: str, *params: SqlValue) -> list[Sequence[SqlValue]]:
        for param in params:
            if isinstance(param, bool):  # Cloudflare would store 'true'; refuse it here too
                raise TypeError("bind int(flag), not bool: Cloudflare stores bools as text")
        return self._db.execute(query, params).fetchall()

    def transaction(self, fn: Callable[[], T]) -> T:
        if self._depth:
            return fn()
        self._db.execute("BEGIN IMMEDIATE")
        self._depth += 1
        try:
            result = fn()
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        finally:
            self._depth -= 1
        self._db.execute("COMMIT")
        return result

    def size_bytes(self) -> int:
        page_count = self._db.execute("PRAGMA page_count").fetchone()[0]
        page_size = self._db.execute("PRAGMA page_size").fetchone()[0]
        return int(page_count) * int(page_size)

    def close(self) -> None:
        self._db.close()

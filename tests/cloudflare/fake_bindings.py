"""Fakes of workerd's D1 and R2 bindings and of the object's alarm, for the archive path.

Class names match what the SDK keys on (pyodide-harness.md §4F). D1 runs real SQLite with our
migrations applied in file order; R2 keeps objects in memory. Both can be told to fail their
next calls, the way a remote binding fails in production (a rejected promise).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from tests.cloudflare.fake_js import (
    OPEN_DATABASES,
    ArrayBuffer,
    JsArray,
    JsException,
    JsObject,
    JsPromise,
    JsProxy,
    jsnull,
)

MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"


def _resolved(value: Any) -> JsPromise:
    async def settle() -> Any:
        return value

    return JsPromise(settle)


def _rejected(message: str) -> JsPromise:
    async def fail() -> Any:
        raise JsException("Error", message)

    return JsPromise(fail)


def _bind(value: Any) -> Any:
    if value is jsnull or value is None:
        return None
    if isinstance(value, bool):
        return int(value)  # reference §4: D1 binds booleans as 1/0
    if isinstance(value, int | float | str):
        return value
    raise JsException("Error", f"D1_TYPE_ERROR: Type '{type(value).__name__}' not supported")


class D1PreparedStatement(JsProxy):
    js_class = "D1PreparedStatement"

    def __init__(self, db: D1Database, query: str, params: tuple[Any, ...] = ()) -> None:
        self._db = db
        self.query = query
        self.params = params

    def bind(self, *values: Any) -> D1PreparedStatement:
        return D1PreparedStatement(self._db, self.query, tuple(_bind(v) for v in values))

    def _execute(self) -> JsObject:
        cursor = self._db.sqlite.execute(self.query, self.params)
        names = [d[0] for d in cursor.description or ()]
        rows = [JsObject(dict(zip(names, row, strict=True))) for row in cursor.fetchall()]
        meta = JsObject({"changes": cursor.rowcount, "last_row_id": cursor.lastrowid})
        return JsObject({"success": True, "results": JsArray(rows), "meta": meta})

    def all(self) -> JsPromise:
        if self._db.fail_reads:
            return _rejected("D1_ERROR: injected read failure")
        return _resolved(self._execute())

    def run(self) -> JsPromise:
        return self._db.batch(JsArray([self]))


class D1Database(JsProxy):
    js_class = "D1Database"

    def __init__(self) -> None:
        self.sqlite = sqlite3.connect(":memory:", isolation_level=None)
        OPEN_DATABASES.append(self.sqlite)
        for path in sorted(MIGRATIONS.glob("*.sql")):  # `wrangler d1 migrations apply` order
            self.sqlite.executescript(path.read_text())
        self.fail_batches = 0
        self.fail_reads = False
        self.batches = 0

    def prepare(self, query: str) -> D1PreparedStatement:
        return D1PreparedStatement(self, query)

    def batch(self, statements: Any) -> JsPromise:
        if not isinstance(statements, JsArray):
            raise JsException("TypeError", "batch() takes an Array of prepared statements")
        if self.fail_batches > 0:
            self.fail_batches -= 1
            return _rejected("D1_ERROR: injected write failure")
        self.sqlite.execute("BEGIN")
        try:
            results = [stmt._execute() for stmt in statements]
        except sqlite3.Error as exc:
            self.sqlite.execute("ROLLBACK")
            return _rejected(f"D1_ERROR: {exc}")
        self.sqlite.execute("COMMIT")
        self.batches += 1
        return _resolved(JsArray(results))


class R2ObjectBody(JsProxy):
    js_class = "GetResult"

    def __init__(self, key: str, data: bytes) -> None:
        self.key = key
        self.size = len(data)
        self._data = data

    def arrayBuffer(self) -> JsPromise:
        return _resolved(ArrayBuffer(self._data))

    def text(self) -> JsPromise:
        return _resolved(self._data.decode())


class R2Bucket(JsProxy):
    js_class = "R2Bucket"

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.fail_puts = 0
        self.puts = 0

    def put(self, key: str, value: Any, options: Any = None) -> JsPromise:
        if not isinstance(value, ArrayBuffer | str):  # Uint8Array is an ArrayBuffer here
            raise JsException("TypeError", "put() value must be a string, buffer or stream")
        if self.fail_puts > 0:
            self.fail_puts -= 1
            return _rejected("R2 put failed: injected")
        data = value.encode() if isinstance(value, str) else value.to_bytes()
        self.objects[key] = data
        self.puts += 1
        return _resolved(JsObject({"key": key, "size": len(data)}))

    def get(self, key: str, options: Any = None) -> JsPromise:
        data = self.objects.get(key)
        return _resolved(jsnull if data is None else R2ObjectBody(key, data))

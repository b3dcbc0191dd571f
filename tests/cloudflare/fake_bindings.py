"""Fakes of workerd's D1 and R2 bindings, for the archive path.

Class names match what the SDK keys on (docs/cloudflare.md §5.1; "§" below cites that page): the
SDK wraps `D1Database` and `R2Bucket`, converting arguments with `python_to_rpc` and results with
`python_from_rpc`. What reaches these classes is therefore what JS would see: `jsnull` for a
Python None, a `Uint8Array` for bytes, a plain `JsObject` for a dict of options.

D1 runs real SQLite with our migrations applied in file order (`wrangler d1 migrations apply`),
with D1's binding rules and result shapes. R2 keeps objects in memory with R2's object shape.
Both can be told to fail their next calls, the way a remote binding fails in production: the
promise rejects, and Python sees a `JsException` when it awaits.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from tests.cloudflare.fake_js import (
    OPEN_DATABASES,
    ArrayBuffer,
    Date,
    JsArray,
    JsException,
    JsObject,
    JsPromise,
    JsProxy,
    JsTypeError,
    becomes_bigint,
    jsnull,
)

MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"


def _resolved(value: Any) -> JsPromise:
    async def settle() -> Any:
        return value

    return JsPromise(settle)


def _rejected(error: JsException) -> JsPromise:
    async def fail() -> Any:
        raise error

    return JsPromise(fail)


def _option(options: Any, name: str, default: Any = None) -> Any:
    """A property of an options object (a plain JS object after the SDK's conversion)."""
    if options is None or options is jsnull:
        return default
    value = getattr(options, name, default)
    return default if value is jsnull else value


# --------------------------------------------------------------------------- D1


def _d1_value(value: Any) -> Any:
    """D1's `bind()` rules: null, number, string; boolean as 1/0; buffers as blobs (§5.2).

    A Python None that did not go through the SDK is JS undefined, and an int outside the safe
    range is a BigInt (`becomes_bigint`): D1 refuses both.
    """
    if value is jsnull:
        return None
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float) and not becomes_bigint(value):
        # Local D1 binds every JS number as a REAL (measured: `typeof(?)` of 7 is 'real'); an
        # INTEGER column's affinity turns it back into an integer.
        return float(value)
    if isinstance(value, str):
        return value
    if isinstance(value, ArrayBuffer):
        return value.to_bytes()
    kind = "undefined" if value is None else "bigint" if becomes_bigint(value) else "object"
    raise JsException("Error", f"D1_TYPE_ERROR: Type '{kind}' not supported for value '{value}'")


def _js_value(value: Any) -> Any:
    """A SQLite value as D1 returns it: NULL is null, a BLOB an Array of byte numbers."""
    if value is None:
        return jsnull
    if isinstance(value, bytes):
        return JsArray(value)
    if isinstance(value, float) and value.is_integer() and abs(value) <= 2**53:
        return int(value)  # an integral JS number reaches Python as an int
    return value


class D1PreparedStatement(JsProxy):
    js_class = "D1PreparedStatement"

    def __init__(self, db: D1Database, query: str, params: tuple[Any, ...] = ()) -> None:
        self._db = db
        self.query = query
        self.params = params

    def bind(self, *values: Any) -> D1PreparedStatement:
        # Like D1's shim, a value of the wrong type throws at bind(), not at execution.
        return D1PreparedStatement(self._db, self.query, tuple(_d1_value(v) for v in values))

    def _execute(self) -> tuple[list[str], list[tuple[Any, ...]], JsObject]:
        """Run on the database; raises JsException with D1's message format on an error."""
        sqlite = self._db.sqlite
        before = sqlite.total_changes
        started = time.perf_counter()
        try:
            cursor = sqlite.execute(self.query, self.params)
            rows = cursor.fetchall()
        except sqlite3.Error as exc:
            raise JsException("Error", f"D1_ERROR: {exc}: SQLITE_ERROR") from None
        changes = sqlite.total_changes - before
        names = [d[0] for d in cursor.description or ()]
        meta = JsObject({
            "served_by": "fake-d1",
            "duration": (time.perf_counter() - started) * 1000,
            "changes": changes,
            "last_row_id": cursor.lastrowid or 0,
            "changed_db": changes > 0,
            "size_after": self._db.size(),
            "rows_read": len(rows),
            "rows_written": changes,
            "served_by_primary": True,
            "timings": JsObject({"sql_duration_ms": (time.perf_counter() - started) * 1000}),
            "total_attempts": 1,
        })
        return names, rows, meta

    def _result(self) -> JsObject:
        names, rows, meta = self._execute()
        objects = [JsObject({n: _js_value(v) for n, v in zip(names, row, strict=True)})
                   for row in rows]
        return JsObject({"success": True, "results": JsArray(objects), "meta": meta})

    def _settle(self, produce: Any) -> JsPromise:
        if self._db.fail_reads > 0:
            self._db.fail_reads -= 1
            return _rejected(JsException("Error", "D1_ERROR: injected failure: SQLITE_IOERR"))
        try:
            return _resolved(produce())
        except JsException as exc:
            return _rejected(exc)

    def all(self) -> JsPromise:
        return self._settle(self._result)

    def run(self) -> JsPromise:
        return self._settle(self._result)  # same shape as all() on current D1 (§5.2)

    def first(self, column: Any = None) -> JsPromise:
        def first_row() -> Any:
            names, rows, _ = self._execute()
            if not rows:
                return jsnull
            row = dict(zip(names, rows[0], strict=True))
            if column is None:
                return JsObject({n: _js_value(v) for n, v in row.items()})
            if column not in row:
                raise JsException("Error", f"D1_COLUMN_NOTFOUND: Column not found ({column})")
            return _js_value(row[column])

        return self._settle(first_row)

    def raw(self, options: Any = None) -> JsPromise:
        def arrays() -> JsArray:
            names, rows, _ = self._execute()
            out = [JsArray(_js_value(v) for v in row) for row in rows]
            if _option(options, "columnNames", False):
                out.insert(0, JsArray(names))
            return JsArray(out)

        return self._settle(arrays)


class D1Database(JsProxy):
    """`env.DB`. Fault injection: ``fail_batches`` and ``fail_reads`` reject that many calls."""

    js_class = "D1Database"

    def __init__(self) -> None:
        self.sqlite = sqlite3.connect(":memory:", isolation_level=None)
        OPEN_DATABASES.append(self.sqlite)
        for path in sorted(MIGRATIONS.glob("*.sql")):  # `wrangler d1 migrations apply` order
            self.sqlite.executescript(path.read_text())
        self.fail_batches = 0
        self.fail_reads = 0  # statements run on their own: all/run/first/raw
        self.batches = 0  # committed batches

    def size(self) -> int:
        pages = self.sqlite.execute("PRAGMA page_count").fetchone()[0]
        return int(pages) * 4096

    def prepare(self, query: Any) -> D1PreparedStatement:
        if not isinstance(query, str):
            raise JsTypeError("Failed to execute 'prepare' on 'D1Database': parameter 1 is not "
                              "of type 'string'.")
        return D1PreparedStatement(self, query)

    def batch(self, statements: Any) -> JsPromise:
        """All statements in one transaction: every result, or a rejection and no writes."""
        if not isinstance(statements, JsArray) or not all(
            isinstance(s, D1PreparedStatement) for s in statements
        ):  # a Python list that skipped the SDK is a PyProxy, not an Array
            raise JsTypeError("batch() takes an Array of D1PreparedStatement")
        if self.fail_batches > 0:
            self.fail_batches -= 1
            return _rejected(JsException("Error", "D1_ERROR: injected failure: SQLITE_IOERR"))
        self.sqlite.execute("BEGIN")
        try:
            results = [stmt._result() for stmt in statements]
        except JsException as exc:
            self.sqlite.execute("ROLLBACK")
            return _rejected(exc)
        self.sqlite.execute("COMMIT")
        self.batches += 1
        return _resolved(JsArray(results))

    def exec(self, query: Any) -> JsPromise:
        """Several `;`-separated statements, no bindings; resolves to ``{count, duration}``."""
        statements = [s for s in str(query).split(";") if s.strip()]
        try:
            for statement in statements:
                self.sqlite.execute(statement)
        except sqlite3.Error as exc:
            return _rejected(JsException("Error", f"D1_EXEC_ERROR: {exc}"))
        return _resolved(JsObject({"count": len(statements), "duration": 0}))


# --------------------------------------------------------------------------- R2


class HeadResult(JsProxy):
    """An R2Object: what put() and head() return, and what list() lists (§5.4)."""

    js_class = "HeadResult"

    def __init__(self, key: str, data: bytes, uploaded_ms: float, version: str,
                 http_metadata: Any, custom_metadata: Any) -> None:
        self.key = key
        self.version = version
        self.size = len(data)
        self.etag = hashlib.md5(data).hexdigest()  # R2: an MD5
        self.httpEtag = f'"{self.etag}"'
        self.uploaded = Date(uploaded_ms)
        self.httpMetadata = http_metadata
        self.customMetadata = custom_metadata
        self.storageClass = "Standard"
        self.checksums = JsObject({"md5": ArrayBuffer(hashlib.md5(data).digest())})


class GetResult(HeadResult):
    """An R2ObjectBody: the object with its body, readable once (like any Body)."""

    js_class = "GetResult"

    def __init__(self, head: HeadResult, data: bytes) -> None:
        self.__dict__.update(head.__dict__)
        self._data = data
        self.bodyUsed = False

    def _consume(self) -> bytes:
        if self.bodyUsed:
            raise JsTypeError("Body has already been used. It can only be used once.")
        self.bodyUsed = True
        return self._data

    def _read(self, convert: Any) -> JsPromise:
        try:
            return _resolved(convert(self._consume()))
        except JsException as exc:
            return _rejected(exc)

    def arrayBuffer(self) -> JsPromise:
        return self._read(ArrayBuffer)  # the SDK hands Python a memoryview (§5.4)

    def text(self) -> JsPromise:
        return self._read(lambda data: data.decode())

    def json(self) -> JsPromise:
        return self._read(lambda data: json.loads(data))


class R2Bucket(JsProxy):
    """`env.ARCHIVE`. Fault injection: ``fail_puts`` and ``fail_gets`` reject that many calls."""

    js_class = "R2Bucket"

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self._heads: dict[str, HeadResult] = {}
        self.fail_puts = 0
        self.fail_gets = 0
        self.puts = 0  # successful puts
        self._versions = 0

    def put(self, key: Any, value: Any, options: Any = None) -> JsPromise:
        if not isinstance(key, str):
            raise JsTypeError("Failed to execute 'put' on 'R2Bucket': parameter 1 is not of "
                              "type 'string'.")
        # ArrayBuffer and views (Uint8Array is one here), string, or null. Python bytes that
        # skipped the SDK's to_js are a PyProxy and land here, as in workerd.
        if value is jsnull:
            data = b""
        elif isinstance(value, ArrayBuffer):
            data = value.to_bytes()
        elif isinstance(value, str):
            data = value.encode()
        else:
            raise JsTypeError("Failed to execute 'put' on 'R2Bucket': parameter 2 is not of "
                              "type 'ReadableStream or ArrayBuffer or ArrayBufferView or string "
                              "or Blob'.")
        if self.fail_puts > 0:
            self.fail_puts -= 1
            return _rejected(JsException("Error", "put: We encountered an internal error. "
                                         "Please try again. (10001)"))
        self._versions += 1
        head = HeadResult(key, data, time.time() * 1000, f"v{self._versions}",
                          _option(options, "httpMetadata", JsObject()),
                          _option(options, "customMetadata", JsObject()))
        self.objects[key] = data
        self._heads[key] = head
        self.puts += 1
        return _resolved(head)

    def get(self, key: Any, options: Any = None) -> JsPromise:
        if self.fail_gets > 0:
            self.fail_gets -= 1
            return _rejected(JsException("Error", "get: We encountered an internal error. "
                                         "Please try again. (10001)"))
        data = self.objects.get(str(key))
        if data is None:
            return _resolved(jsnull)
        byte_range = _option(options, "range")
        if byte_range is not None:
            suffix = _option(byte_range, "suffix")
            if suffix is not None:
                data = data[-int(suffix):]
            else:
                offset = int(_option(byte_range, "offset", 0))
                length = _option(byte_range, "length")
                data = data[offset:] if length is None else data[offset:offset + int(length)]
        return _resolved(GetResult(self._heads[str(key)], data))

    def head(self, key: Any) -> JsPromise:
        head = self._heads.get(str(key))
        return _resolved(jsnull if head is None else head)

    def delete(self, keys: Any) -> JsPromise:
        for key in list(keys) if isinstance(keys, JsArray) else [keys]:
            self.objects.pop(str(key), None)
            self._heads.pop(str(key), None)
        return _resolved(None)

    def list(self, options: Any = None) -> JsPromise:
        """``{objects, truncated, cursor, delimitedPrefixes}``, keys in lexicographic order."""
        prefix = str(_option(options, "prefix", ""))
        limit = int(_option(options, "limit", 1000))
        delimiter = _option(options, "delimiter")
        start_after = _option(options, "startAfter")
        start = int(_option(options, "cursor", "0") or 0)
        keys = [k for k in sorted(self.objects) if k.startswith(prefix)
                and (start_after is None or k > start_after)]
        objects: list[HeadResult] = []
        prefixes: list[str] = []
        position = start
        for key in keys[start:]:
            if len(objects) + len(prefixes) >= limit:
                break
            position += 1
            rest = key[len(prefix):]
            if delimiter and delimiter in rest:
                common = prefix + rest[: rest.index(delimiter) + len(delimiter)]
                if common not in prefixes:
                    prefixes.append(common)
                continue
            objects.append(self._heads[key])
        truncated = position < len(keys)
        listing: dict[str, Any] = {
            "objects": JsArray(objects),
            "truncated": truncated,
            "delimitedPrefixes": JsArray(prefixes),
        }
        if truncated:
            listing["cursor"] = str(position)
        return _resolved(JsObject(listing))

"""The Durable Object's implementations of the core's ports: `Sql` and `Sockets`.

`DurableObjectSql` runs `RoomStore`'s queries on the object's SQLite (`ctx.storage.sql`), and
`HibernatableSockets` maps the `Sockets` port onto the Hibernation API (`ctx.acceptWebSocket`,
`ctx.getWebSockets`, attachments). Section numbers (§) refer to docs/cloudflare.md.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from objects import ffi
from objects.ffi import JsObject
from rooms.store import SqlValue

T = TypeVar("T")

# workerd's WebSocket.close() takes 1000-4999 except codes that never go on the wire (RFC 6455
# section 7.4.1): 1005 and 1006 reach webSocketClose for a close without status or connection.
_UNSENDABLE_CLOSE_CODES = frozenset({1004, 1005, 1006, 1015})


def counts_as_open(ready_state: int) -> bool:
    """Whether a socket in this state is a member: CLOSING ones are listed too (§3.5)."""
    return bool(ready_state == ffi.WS_OPEN)


_ROOM_TABLES_EXIST = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'messages'"


class DurableObjectSql:
    """The `Sql` port over the object's own `DurableObjectStorage`, not the SDK's wrapper of it.

    The `workers` SDK wraps ``ctx.storage`` (workers/rpc.py `_BindingWrapper`): it converts every
    argument and result of every call, and hands `transactionSync` a new `create_proxy` that is
    never destroyed. In workerd that cost 460 us per SELECT and 370 us per INSERT, against 95 and
    80 us on the raw binding, and 120 us against 5 us per transaction (BENCHMARKS.md, "On real
    workerd"). The raw calls need what the wrapper did for us: SQL NULL bound as JS null (None
    would arrive as undefined), rows converted with `to_py`, and a JS function to call back.
    """

    def __init__(self, storage: JsObject) -> None:
        self._storage = ffi.unwrapped(storage)
        self._sql = self._storage.sql
        # Bound once: a method looked up on a JS object is a crossing of its own on every call.
        self._exec = self._sql.exec
        self._transaction_sync = self._storage.transactionSync

    def execute(self, query: str, *params: SqlValue) -> list[Sequence[SqlValue]]:
        for param in params:
            # §4.2: Cloudflare binds a bool as the text 'true'. Refuse it, as SqliteSql does.
            # (`is` rather than isinstance: bool has no subclasses, and this runs per value.)
            if param is True or param is False:
                raise TypeError("bind int(flag), not bool: Cloudflare stores bools as text")
        cursor = self._exec(query, *ffi.sql_bindings(params))
        # §4.3: consume the cursor now (no await may come between), and raw() keeps column order.
        return ffi.raw_rows(cursor)

    def run_schema(self, statements: Sequence[str]) -> None:
        # §4.3: one exec runs every statement of the text (the cursor is the last one's): one
        # crossing for a new room's tables instead of one per statement.
        ffi.raw_rows(self._exec(";\n".join(statements)))

    def exists(self) -> bool:
        # A read of the schema: creates nothing, so a room that never stored a message is an
        # object with no storage at all (docs/protocol.md#rooms).
        return bool(self.execute(_ROOM_TABLES_EXIST))

    def size_bytes(self) -> int:
        # §4.5: the database's current size in bytes, for operators (read afresh on the raw
        # binding; the SDK's wrapper would cache the first value).
        return int(self._sql.databaseSize)

    def transaction(self, fn: Callable[[], T]) -> T:
        # §4.4: BEGIN is refused on SQLite objects; transactionSync commits fn's writes together
        # and rolls back when it raises. The result stays on the Python side instead of making a
        # round trip through JS (where a tuple would become a PyProxy).
        pending = _Pending(fn)
        _PENDING.append(pending)
        try:
            self._transaction_sync(_run_innermost())
            result: T = pending.result
            return result
        finally:
            _PENDING.pop()


class _Pending:
    """A transaction's function and, once it ran, its result."""

    __slots__ = ("fn", "result")

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn
        self.result: Any = None


# The transactions under way, innermost last. transactionSync calls its function synchronously,
# so one JS function for the whole isolate serves every object: a proxy made per object (per
# wake) cost a `create_proxy` each time and was never destroyed.
_PENDING: list[_Pending] = []


def _run() -> None:
    pending = _PENDING[-1]
    pending.result = pending.fn()


@functools.cache
def _run_innermost() -> JsObject:
    """The JS function transactionSync calls: runs the innermost pending transaction."""
    return ffi.persistent_function(_run)


class HibernatableSockets:
    """The `Sockets` port over the Hibernation API; sockets are raw JS WebSockets (§3).

    A room waking up reads every socket's attachment and state in three crossings, not 2n + 1,
    through the prototype's functions mapped over the sockets in JS (§3.10, `listing`). Called
    from Python one socket at a time, those functions cost more than the socket's own method
    (BENCHMARKS.md), so single calls stay ``ws.method(...)``, and a delivery calls the socket's
    bound ``send``, looked up once (`sender`).
    """

    def __init__(self, ctx: Any) -> None:
        self._ctx = ctx
        self._deserialize = ffi.websocket_method("deserializeAttachment")
        self._ready_state = ffi.websocket_getter("readyState")

    def accept(self, ws: JsObject, tags: list[str]) -> None:
        # §3.1, §3.2: acceptWebSocket is a raw JS call, so the tags must be a JS Array, and the
        # socket must never be accept()ed as well.
        self._ctx.acceptWebSocket(ws, ffi.js_array(tags))

    def all(self) -> list[JsObject]:
        # §3.5: a JS Array; it may include CLOSING sockets, which RoomHost filters by is_open.
        return list(self._ctx.getWebSockets())

    def listing(self) -> list[tuple[JsObject, str | None, bool]]:
        """Every socket with its attachment and whether it is open, as `all`, `attachment` and
        `is_open` would give them, in three crossings: the map runs in JS (§3.10)."""
        sockets = self._ctx.getWebSockets()
        attachments = ffi.mapped(sockets, self._deserialize)  # a str, or null: nothing
        states = ffi.mapped(sockets, self._ready_state)
        return [
            (ws, value if isinstance(value, str) else None, counts_as_open(state))
            for ws, value, state in zip(sockets.to_py(depth=1), attachments, states, strict=True)
        ]

    def is_open(self, ws: JsObject) -> bool:
        return counts_as_open(ws.readyState)

    def tagged(self, prefix: str) -> str | None:
        """The rest of the first tag starting with ``prefix`` on any of the object's sockets."""
        for ws in self._ctx.getWebSockets():
            for tag in self._ctx.getTags(ws):
                if isinstance(tag, str) and tag.startswith(prefix):
                    return tag[len(prefix) :]
        return None

    def attachment(self, ws: JsObject) -> str | None:
        value = ws.deserializeAttachment()  # None (or jsnull) when nothing is attached
        return value if isinstance(value, str) else None

    def set_attachment(self, ws: JsObject, value: str) -> None:
        # §3.3: a dict would be a PyProxy and fail structured clone; a JSON str always clones.
        if not isinstance(value, str):
            raise TypeError("attachments are JSON strings")
        ws.serializeAttachment(value)

    def send(self, ws: JsObject, text: str) -> None:
        # §3.7: bytes would not fail but go out as the text "b'...'"; every frame we send is text.
        if not isinstance(text, str):
            raise TypeError("rooms send text frames only")
        ws.send(text)

    def sender(self, ws: JsObject) -> Callable[[str], None]:
        """``ws.send`` itself, looked up once (the host keeps one per socket, per frame a call).

        The cheapest delivery measured in Pyodide: 2.5 us per frame, against 2.8-3.4 through the
        prototype's function or a Python wrapper (BENCHMARKS.md); in workerd 10 against 20 us
        with the method looked up per frame. The host only ever sends the str frames the engine
        encoded (`Send.text`, `Broadcast.text`); `send` keeps the type check for other callers.
        """
        bound: Callable[[str], None] = ws.send
        return bound

    def close(self, ws: JsObject, code: int, reason: str) -> None:
        ws.close(code, reason)

    def answer_close(self, ws: JsObject, code: int) -> None:
        """Complete a close handshake the client started.

        §3.9: workerd does not answer a client's close frame on a hibernatable socket, even with
        `web_socket_auto_reply_to_close`: the socket is CLOSING here and the client waits for
        our answer. One already CLOSED (the echo of a close we sent) needs none. A dropped
        connection arrives as 1006, which cannot be sent: it is answered with 1000.
        """
        if ws.readyState != ffi.WS_CLOSING:
            return
        sendable = 1000 <= code < 5000 and code not in _UNSENDABLE_CLOSE_CODES
        ws.close(code if sendable else 1000, "")

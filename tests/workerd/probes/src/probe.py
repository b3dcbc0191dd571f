"""The probe Worker: asks the real workerd what it does, and answers in JSON.

Every fact tests/workerd/test_probes.py asserts comes from here. `Default` forwards
``/do/{object}/...`` to the `Probe` Durable Object of that name. The object:

* ``GET /do/{object}/probe/{name}``: runs ``probe_{name}`` and returns its dict as JSON;
* ``GET /do/{object}/ws?tag=..&answer=1``: a hibernatable WebSocket (tags from ``tag``; with
  ``answer=1`` the object calls ``ws.close()`` itself in ``webSocketClose``). Text frames are
  JSON commands (``op``: ``close``, ``info``, ``close_other``, ``write_send_abort``, ...);
* ``GET /do/{object}/events``: what its handlers recorded (``webSocketClose``, ``alarm``,
  ``__init__``...), kept in its SQLite storage so they survive eviction.

``GET /evict/{object}`` evicts an object now; ``GET /flags`` shows compatibility flags in effect.

Not part of the Worker bundle (src/); runs only in `wrangler dev` for the workerd test tier.
"""

from __future__ import annotations

import json
import time
import traceback
from typing import Any
from urllib.parse import parse_qs, urlsplit

import js
from pyodide.ffi import JsProxy, jsnull, to_js
from workers import DurableObject, Response, WorkerEntrypoint

# Per isolate: how many times `Probe.__init__` ran, per object name. Module globals live as long
# as the isolate; an evicted object runs __init__ again in the same isolate.
CONSTRUCTIONS: dict[str, int] = {}
KEPT: dict[str, Any] = {}  # WebSocket objects kept across an eviction (op "keep")
# The raw JS env the isolate's first object was constructed with (objects.room keeps what it
# read of env for the very same env object: whether later objects get that object is recorded).
FIRST_ENV: list[Any] = []

EVENTS_SCHEMA = """CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    data TEXT NOT NULL
)"""
CONFIG_SCHEMA = "CREATE TABLE IF NOT EXISTS config (key TEXT PRIMARY KEY, value TEXT NOT NULL)"


def kind(value: Any) -> str:
    """A value's type as a probe reports it (the JS constructor for a JsProxy)."""
    if value is jsnull:
        return "jsnull"
    if isinstance(value, JsProxy):
        try:
            return f"JsProxy:{value.constructor.name}"
        except Exception:
            return "JsProxy"
    return type(value).__name__


def error_of(fn: Any, *args: Any) -> str | None:
    """``fn(*args)``'s exception as "Type: message", or None when it returned."""
    try:
        fn(*args)
    except BaseException as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


async def aerror_of(call: Any) -> str | None:
    """``await call()``'s exception (raised by the call itself or by awaiting), or None."""
    try:
        await call()
    except BaseException as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def now_ms() -> int:
    return int(time.time() * 1000)


def json_response(value: Any, status: int = 200) -> Response:
    return Response(
        json.dumps(value, default=repr),
        status=status,
        headers={"content-type": "application/json"},
    )


class Default(WorkerEntrypoint):  # type: ignore[misc]
    async def fetch(self, request: Any) -> Response:
        path = urlsplit(request.url).path
        if path == "/health":
            return Response("ok")
        parts = path.split("/")
        if path == "/flags":
            import _cloudflare_compat_flags as flags

            names = ("python_workers", "python_workers_development", "unsafe_module",
                     "web_socket_auto_reply_to_close", "python_workers_314",
                     "enable_ctx_version_metadata")
            return json_response({name: getattr(flags, name, None) for name in names})
        if len(parts) == 3 and parts[1] == "evict":
            return await self.evict(parts[2])
        if len(parts) >= 3 and parts[1] == "do" and parts[2]:
            stub = self.env.PROBE.getByName(parts[2])
            response: Response = await stub.fetch(request.js_object)
            return response
        return Response("not found", status=404)

    async def evict(self, name: str) -> Response:
        """Evict the object ``name`` now, as workerd does after 10 s idle (`workerd:unsafe`).

        Needs the experimental `unsafe_module` flag. `workerd:unsafe` cannot be imported from
        Python, but a JS module can; wrangler bundles the .js files under
        python_modules/workers/ as ES modules, so tests/workerd/conftest.py puts
        probes/unsafe_evict.js there. The object's hibernatable sockets are hibernated, not
        closed, and its next event rebuilds it.
        """
        from workers.utils import import_sdk_javascript_module_async

        unsafe = await import_sdk_javascript_module_async("unsafe_evict.js")
        stub = self.env.PROBE._binding.getByName(name)  # the raw stub, not the SDK's wrapper
        try:
            await unsafe.evict(stub)
        except Exception as exc:
            return json_response({"evicted": False, "error": f"{type(exc).__name__}: {exc}"})
        return json_response({"evicted": True})


class Probe(DurableObject):  # type: ignore[misc]
    def __init__(self, ctx: Any, env: Any) -> None:
        super().__init__(ctx, env)
        self.name = str(self.ctx.id.name)
        CONSTRUCTIONS[self.name] = CONSTRUCTIONS.get(self.name, 0) + 1
        self.sql = self.ctx.storage.sql
        self.sql.exec(EVENTS_SCHEMA)
        self.sql.exec(CONFIG_SCHEMA)
        raw_env = self.env._env  # behind the SDK's wrapper
        if not FIRST_ENV:
            FIRST_ENV.append(raw_env)
        same_env = bool(FIRST_ENV[0] == raw_env)  # a JsProxy's == is JavaScript's ===
        self.record("init", {"constructions": CONSTRUCTIONS[self.name], "same_env": same_env})
        self.ctx.setWebSocketAutoResponse(js.WebSocketRequestResponsePair.new("ping", "pong"))

    # ----------------------------------------------------------------------------- helpers

    def record(self, event: str, data: dict[str, Any]) -> None:
        self.sql.exec(
            "INSERT INTO events (kind, data) VALUES (?, ?)", event, json.dumps(data, default=repr)
        )

    def config(self, key: str) -> str | None:
        rows = list(self.sql.exec("SELECT value FROM config WHERE key = ?", key))
        return str(rows[0]["value"]) if rows else None

    def set_config(self, key: str, value: str) -> None:
        self.sql.exec(
            "INSERT INTO config (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            key,
            value,
        )

    def socket_info(self, ws: Any) -> dict[str, Any]:
        attachment = ws.deserializeAttachment()
        return {
            "ready_state": ws.readyState,
            "tags": list(self.ctx.getTags(ws)),
            "attachment": attachment if isinstance(attachment, str) else kind(attachment),
        }

    def sockets(self) -> list[dict[str, Any]]:
        return [self.socket_info(ws) for ws in self.ctx.getWebSockets()]

    def pair(self) -> tuple[Any, Any]:
        client, server = js.WebSocketPair.new().object_values()
        return client, server

    # ----------------------------------------------------------------------------- fetch

    async def fetch(self, request: Any) -> Response:
        url = urlsplit(request.url)
        parts = url.path.split("/")  # "", "do", name, action, ...
        action = parts[3] if len(parts) > 3 else ""
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        try:
            if action == "ws":
                return self.upgrade(query, parse_qs(url.query).get("tag", []))
            if action == "events":
                rows = self.sql.exec("SELECT kind, data FROM events ORDER BY id")
                return json_response([[r["kind"], json.loads(r["data"])] for r in rows])
            if action == "state":
                return json_response({
                    "constructions": CONSTRUCTIONS.get(self.name, 0),
                    "sockets": self.sockets(),
                    "alarm": await self.ctx.storage.getAlarm(),
                })
            if action == "probe":
                probe = getattr(self, f"probe_{parts[4]}")
                return json_response(await probe(query))
        except Exception as exc:
            return json_response(
                {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()},
                status=500,
            )
        return Response("no such action", status=404)

    def upgrade(self, query: dict[str, str], tags: list[str]) -> Response:
        client, server = self.pair()
        self.ctx.acceptWebSocket(server, to_js(tags))
        server.serializeAttachment(json.dumps({"tags": tags, "answer": query.get("answer") == "1"}))
        if query.get("greet") == "1":  # a frame sent before the 101 is returned (like a welcome)
            server.send(json.dumps({"greeting": tags}))
        return Response(None, status=101, web_socket=client)

    # ----------------------------------------------------------------------------- sockets

    async def webSocketMessage(self, ws: Any, message: Any) -> None:  # noqa: N802
        if not isinstance(message, str):
            ws.send(json.dumps({"binary": kind(message)}))
            return
        command = json.loads(message)
        op = command["op"]
        if op == "info":
            ws.send(json.dumps({
                "constructions": CONSTRUCTIONS.get(self.name, 0),
                "ready_state": ws.readyState,
                "sockets": self.sockets(),
                "auto_response_timestamp": kind(self.ctx.getWebSocketAutoResponseTimestamp(ws)),
            }))
        elif op == "close":
            args = [a for a in (command.get("code"), command.get("reason")) if a is not None]
            failure = error_of(ws.close, *args)
            if failure is not None:
                ws.send(json.dumps({"close_error": failure}))
        elif op == "close_other":
            # Close another socket (by tag) and look at the list at once: is it still there?
            (other,) = self.ctx.getWebSockets(command["tag"])
            other.close(command.get("code", 1000), "closed by a peer's command")
            ws.send(json.dumps({
                "other_ready_state": other.readyState,
                "sockets": self.sockets(),
                "send_after_close": error_of(other.send, "late"),
            }))
        elif op == "send_other":
            (other,) = self.ctx.getWebSockets(command["tag"])
            other.send(json.dumps({"from_other": command.get("text")}))
            ws.send(json.dumps({"sent": True}))
        elif op == "keep":
            KEPT[self.name] = ws  # a JS object of this instance, kept past its eviction
            ws.send(json.dumps({"kept": True}))
        elif op == "use_kept":
            kept = KEPT[self.name]
            report = {"same": kept == ws, "ready_state": error_of(lambda: kept.readyState)}
            if report["ready_state"] is None:
                report["ready_state"] = kept.readyState
            # Sends {"via_kept": true} first when the old object still works.
            report["send"] = error_of(kept.send, json.dumps({"via_kept": True}))
            ws.send(json.dumps(report))
        elif op == "send_binary":
            ws.send(to_js(b"\x00\x01"))
        elif op == "send_bytes":
            ws.send(b"xy")
        elif op == "write_then_send":
            # Output gate: a send right after a storage write, in the same turn.
            self.sql.exec("INSERT INTO config (key, value) VALUES ('gate', 'written') "
                          "ON CONFLICT (key) DO UPDATE SET value = excluded.value")
            ws.send(json.dumps({"after_write": True}))
        elif op == "write_send_abort":
            # A send after a write, then the object is aborted before that write can commit.
            self.sql.exec("INSERT INTO config (key, value) VALUES ('aborted_write', 'written') "
                          "ON CONFLICT (key) DO UPDATE SET value = excluded.value")
            ws.send(json.dumps({"before_abort": "with write"}))
            self.ctx.abort("probe abort")
        elif op == "send_abort":
            ws.send(json.dumps({"before_abort": "no write"}))
            self.ctx.abort("probe abort")
        elif op == "echo":
            ws.send(json.dumps({"echo": command.get("text")}))
        elif op == "prototype_calls":
            # §3.10: the prototype's methods as plain functions of (socket, ...), called from
            # Python on any socket or by a JS Array's map, against the same read per socket.
            call = js.Function.prototype.call
            proto = js.WebSocket.prototype
            send = call.bind(proto.send)
            deserialize = call.bind(proto.deserializeAttachment)
            ready_state = call.bind(js.Object.getOwnPropertyDescriptor(proto, "readyState").get)
            sockets = self.ctx.getWebSockets()
            report = {
                "mapped": [
                    list(pair)
                    for pair in zip(
                        sockets.map(deserialize).to_py(), sockets.map(ready_state).to_py(),
                        strict=True,
                    )
                ],
                "direct": [[s.deserializeAttachment(), s.readyState] for s in sockets],
                "readyState_own_property": kind(
                    js.Object.getOwnPropertyDescriptor(ws, "readyState")
                ),
            }
            for other in sockets:
                if other.readyState == 1:
                    send(other, json.dumps({"by_prototype": command.get("text")}))
            ws.send(json.dumps(report))

    async def webSocketClose(  # noqa: N802
        self, ws: Any, code: Any, reason: Any, wasClean: Any  # noqa: N803
    ) -> None:
        sockets = self.ctx.getWebSockets()
        data: dict[str, Any] = {
            "code": code,
            "reason": reason,
            "was_clean": wasClean,
            "types": [kind(code), kind(reason), kind(wasClean)],
            "ready_state": ws.readyState,
            "listed": any(other == ws for other in sockets),
            "sockets": [s.readyState for s in sockets],
            "attachment": ws.deserializeAttachment(),
        }
        attachment = json.loads(ws.deserializeAttachment() or "{}")
        if attachment.get("answer"):
            data["answer_same_code"] = error_of(ws.close, code, "answer")
            data["answer_1000"] = error_of(ws.close, 1000, "answer")
            data["ready_state_after_answer"] = ws.readyState
        data["send_in_close"] = error_of(ws.send, "in close handler")
        self.record("webSocketClose", data)

    async def webSocketError(self, ws: Any, error: Any) -> None:  # noqa: N802
        self.record("webSocketError", {
            "error": str(error), "type": kind(error), "ready_state": ws.readyState,
        })

    # ----------------------------------------------------------------------------- alarms

    async def alarm(self, alarm_info: Any = None) -> None:
        storage = self.ctx.storage
        data: dict[str, Any] = {
            "info_type": kind(alarm_info),
            "retry_count": getattr(alarm_info, "retryCount", None),
            "is_retry": getattr(alarm_info, "isRetry", None),
            "at_ms": now_ms(),
            "get_alarm_inside": await storage.getAlarm(),
        }
        failures = int(self.config("alarm_failures") or 0)
        if failures > 0:
            self.set_config("alarm_failures", str(failures - 1))
            data["raised"] = True
            self.record("alarm", data)
            raise RuntimeError("probe alarm failure")
        self.record("alarm", data)

    async def probe_arm_alarm(self, query: dict[str, str]) -> dict[str, Any]:
        """Set the alarm ``in_ms`` from now (or at ``at``), after ``fail`` failing runs."""
        self.set_config("alarm_failures", query.get("fail", "0"))
        at = float(query["at"]) if "at" in query else now_ms() + int(query.get("in_ms", "0"))
        if at == int(at):
            at = int(at)
        before = now_ms()
        await self.ctx.storage.setAlarm(at)
        return {"set": at, "before_ms": before, "get": await self.ctx.storage.getAlarm()}

    async def probe_alarm_api(self, query: dict[str, str]) -> dict[str, Any]:
        storage = self.ctx.storage
        out: dict[str, Any] = {"initial": await storage.getAlarm()}
        future = now_ms() + 3_600_000
        await storage.setAlarm(future)
        got = await storage.getAlarm()
        out["future"] = [got == future, kind(got)]
        out["zero"] = await aerror_of(lambda: storage.setAlarm(0))
        out["negative"] = await aerror_of(lambda: storage.setAlarm(-1))
        out["string"] = await aerror_of(lambda: storage.setAlarm("soon"))
        import datetime

        when = datetime.datetime.fromtimestamp((future + 60_000) / 1000)
        await storage.setAlarm(when)
        out["datetime"] = (await storage.getAlarm()) - future
        await storage.deleteAlarm()
        out["deleted"] = await storage.getAlarm()
        raw = self.ctx._ctx.storage  # the JS DurableObjectStorage, not the SDK's wrapper
        await raw.setAlarm(future)
        out["raw_get"] = kind(await raw.getAlarm())
        await raw.deleteAlarm()
        out["raw_deleted"] = kind(await raw.getAlarm())
        return out

    # ----------------------------------------------------------------------------- probes

    async def probe_tags(self, query: dict[str, str]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        accept = self.ctx.acceptWebSocket
        _, server = self.pair()
        out["python_list"] = error_of(accept, server, ["a"])
        accept(server, to_js(["a", "b", "a"]))
        out["duplicates"] = list(self.ctx.getTags(server))
        out["eleven"] = error_of(accept, self.pair()[1], to_js([str(i) for i in range(11)]))
        out["ten_distinct_of_eleven"] = error_of(
            accept, self.pair()[1], to_js([str(i) for i in range(10)] + ["0"])
        )
        longest = to_js([f"{i}" * 256 for i in range(10)])
        out["ten_of_256"] = error_of(accept, self.pair()[1], longest)
        out["257"] = error_of(accept, self.pair()[1], to_js(["x" * 257]))
        out["256_two_byte"] = error_of(accept, self.pair()[1], to_js(["é" * 256]))
        out["128_two_byte"] = error_of(accept, self.pair()[1], to_js(["é" * 128]))
        out["129_two_byte"] = error_of(accept, self.pair()[1], to_js(["é" * 129]))
        out["eleven_with_early_duplicate"] = error_of(
            accept, self.pair()[1], to_js(["0", "0"] + [str(i) for i in range(1, 10)])
        )
        out["129_astral"] = error_of(accept, self.pair()[1], to_js(["😀" * 129]))
        out["no_tags"] = error_of(accept, self.pair()[1])
        out["empty_tag"] = error_of(accept, self.pair()[1], to_js([""]))
        out["get_by_tag"] = len(self.ctx.getWebSockets("b"))
        out["get_type"] = kind(self.ctx.getWebSockets())
        out["get_tags_unaccepted"] = error_of(self.ctx.getTags, self.pair()[1])
        return out

    async def probe_attachment(self, query: dict[str, str]) -> dict[str, Any]:
        _, server = self.pair()
        self.ctx.acceptWebSocket(server)
        out: dict[str, Any] = {"empty": kind(server.deserializeAttachment())}
        out["dict"] = error_of(server.serializeAttachment, {"a": 1})
        out["list"] = error_of(server.serializeAttachment, [1])
        out["bytes"] = error_of(server.serializeAttachment, b"x")
        server.serializeAttachment(to_js({"a": 1}, dict_converter=js.Object.fromEntries))
        back = server.deserializeAttachment()
        out["object"] = [kind(back), back.to_py()]
        server.serializeAttachment(to_js({"a": 1}))
        out["to_js_dict"] = kind(server.deserializeAttachment())
        server.serializeAttachment(None)
        out["none"] = kind(server.deserializeAttachment())
        server.serializeAttachment(7)
        out["int"] = server.deserializeAttachment()

        def largest(make: Any) -> int:
            low, high = 0, 20_000  # low fits, high does not
            while high - low > 1:
                middle = (low + high) // 2
                if error_of(server.serializeAttachment, make(middle)) is None:
                    low = middle
                else:
                    high = middle
            return low

        out["max_latin1_chars"] = largest(lambda n: "x" * n)
        out["max_two_byte_chars"] = largest(lambda n: "é" * n)
        out["max_bmp_chars"] = largest(lambda n: "€" * n)
        server.serializeAttachment("kept")
        out["too_big"] = error_of(server.serializeAttachment, "x" * 20_000)
        out["after_refusal"] = server.deserializeAttachment()
        return out

    async def probe_close_validation(self, query: dict[str, str]) -> dict[str, Any]:
        """What ws.close() accepts, each on a fresh accepted socket."""
        out: dict[str, Any] = {}
        cases: list[tuple[str, tuple[Any, ...]]] = [
            (str(code), (code, "r"))
            for code in (999, 1000, 1001, 1004, 1005, 1006, 1011, 1012, 1014, 1015, 1016,
                         2999, 3000, 4000, 4999, 5000)
        ]
        cases += [("no args", ()), ("code only", (4000,)), ("reason 123", (4000, "r" * 123)),
                  ("reason 124", (4000, "r" * 124)), ("float", (4000.0, "r")),
                  ("str code", ("4000", "r"))]
        for label, args in cases:
            _, server = self.pair()
            self.ctx.acceptWebSocket(server)
            out[label] = error_of(server.close, *args)
            if out[label] is None:
                out[label + " state"] = server.readyState
        _, server = self.pair()
        self.ctx.acceptWebSocket(server)
        server.close(1000, "once")
        out["second close"] = error_of(server.close, 1000, "twice")
        out["send after close"] = error_of(server.send, "x")
        out["closing listed"] = [s.readyState for s in self.ctx.getWebSockets()]
        _, unaccepted = self.pair()
        out["unaccepted close"] = error_of(unaccepted.close, 1000)
        out["unaccepted send"] = error_of(unaccepted.send, "x")
        return out

    async def probe_sql(self, query: dict[str, str]) -> dict[str, Any]:
        sql = self.ctx.storage.sql
        raw_sql = self.ctx._ctx.storage.sql  # no SDK wrapper
        sql.exec("CREATE TABLE IF NOT EXISTS t (k TEXT PRIMARY KEY, v)")
        sql.exec("DELETE FROM t")
        out: dict[str, Any] = {"wrapper": kind(sql), "raw": kind(raw_sql)}
        values = [("bool", True), ("int", 7), ("float", 1.5), ("blob", b"\x00\x01"),
                  ("none", None), ("str", "s"), ("max_safe", 2**53 - 1), ("big", 2**53 + 1)]
        for key, value in values:
            insert = "INSERT INTO t (k, v) VALUES (?, ?)"
            out[f"bind {key}"] = error_of(sql.exec, insert, key, value)
        out["list stored as"] = [
            [r["v"], r["t"]] for r in sql.exec("SELECT ? AS v, typeof(?) AS t", [1, 2], [1, 2])
        ]
        out["dict stored as"] = [
            [r["v"], r["t"]] for r in sql.exec("SELECT ? AS v, typeof(?) AS t", {"a": 1}, {"a": 1})
        ]
        out["bind bytearray"] = error_of(sql.exec, "SELECT ?", bytearray(b"x"))
        out["bind tuple"] = error_of(sql.exec, "SELECT ?", (1, 2))
        out["bind list"] = error_of(sql.exec, "SELECT ?", [1, 2])
        rows: dict[str, Any] = {}
        for row in sql.exec("SELECT k, v, typeof(v) AS type FROM t"):
            value = row["v"]
            shown = list(value.tobytes()) if isinstance(value, memoryview) else value
            rows[row["k"]] = [shown, row["type"], kind(value), kind(row)]
        out["rows"] = rows
        cursor = sql.exec("SELECT k, v FROM t WHERE k IN ('int', 'blob', 'none') ORDER BY k")
        out["cursor"] = kind(cursor)
        raw_iter = cursor.raw()
        out["raw_iter"] = kind(raw_iter)
        raw_rows = list(raw_iter)
        out["raw_rows"] = [[kind(r), [kind(v) for v in r]] for r in raw_rows]
        js_rows = list(raw_sql.exec("SELECT k, v FROM t WHERE k IN ('int', 'blob', 'none') "
                                    "ORDER BY k").raw())
        out["js_raw_rows"] = [[kind(r), [kind(v) for v in r]] for r in js_rows]
        out["js_row_objects"] = [kind(r) for r in raw_sql.exec("SELECT k FROM t LIMIT 1")]
        out["int64"] = [kind(v := sql.exec("SELECT 9007199254740993 AS n").one()["n"]), v]
        out["int_literal"] = kind(sql.exec("SELECT 7 AS n").one()["n"])
        out["columns"] = [kind(c := sql.exec("SELECT 1 AS a, 2 AS b").columnNames), list(c)]
        out["toArray"] = kind(sql.exec("SELECT 1 AS a").toArray())
        out["one none"] = error_of(lambda: sql.exec("SELECT 1 WHERE 0").one())
        out["one two"] = error_of(lambda: sql.exec("SELECT 1 UNION ALL SELECT 2").one())
        out["begin"] = error_of(sql.exec, "BEGIN TRANSACTION")
        out["savepoint"] = error_of(sql.exec, "SAVEPOINT s")
        out["cf table before kv"] = error_of(sql.exec, "SELECT * FROM _cf_KV")
        await self.ctx.storage.put("kv", 1)
        out["cf table"] = error_of(sql.exec, "SELECT * FROM _cf_KV")
        out["cf create"] = error_of(sql.exec, "CREATE TABLE _cf_mine (a)")
        out["pragma wal"] = error_of(sql.exec, "PRAGMA journal_mode = WAL")
        out["pragma page_count"] = error_of(sql.exec, "PRAGMA page_count")
        out["table_info"] = [r["name"] for r in sql.exec("PRAGMA table_info(t)")]
        out["params not last"] = error_of(sql.exec, "INSERT INTO t VALUES ('a', ?); SELECT 1", 1)
        out["wrong arity"] = error_of(sql.exec, "SELECT ?", 1, 2)
        out["attach"] = error_of(sql.exec, "ATTACH DATABASE ':memory:' AS other")
        out["written"] = sql.exec("INSERT INTO t VALUES ('w1', 1), ('w2', 2)").rowsWritten

        def write_then_fail() -> None:
            sql.exec("INSERT INTO t VALUES ('rolled back', 1)")
            raise ValueError("boom")

        out["transaction error"] = error_of(self.ctx.storage.transactionSync, write_then_fail)
        out["rolled back"] = sql.exec(
            "SELECT COUNT(*) AS n FROM t WHERE k = 'rolled back'").one()["n"]
        out["transaction result"] = [kind(r := self.ctx.storage.transactionSync(lambda: 42)), r]
        out["transaction tuple"] = error_of(self.ctx.storage.transactionSync, lambda: (1, 2))
        return out

    async def probe_size(self, query: dict[str, str]) -> dict[str, Any]:
        """`databaseSize` through the SDK's wrapper: attribute (cached?) versus subscript."""
        sql = self.ctx.storage.sql
        raw_sql = self.ctx._ctx.storage.sql
        first_attr = sql.databaseSize
        first_item = sql["databaseSize"]
        sql.exec("CREATE TABLE IF NOT EXISTS filler (data TEXT)")
        for _ in range(40):
            sql.exec("INSERT INTO filler VALUES (?)", "x" * 4000)
        return {
            "wrapper_type": kind(sql),
            "same_wrapper": sql is self.ctx.storage.sql,
            "attr": [first_attr, sql.databaseSize],
            "item": [first_item, sql["databaseSize"]],
            "raw": raw_sql.databaseSize,
            "raw_item": error_of(lambda: raw_sql["databaseSize"]),
            "types": [kind(first_attr), kind(first_item)],
        }

    async def probe_config(self, query: dict[str, str]) -> dict[str, Any]:
        return {r["key"]: r["value"] for r in self.sql.exec("SELECT key, value FROM config")}

    async def probe_kv(self, query: dict[str, str]) -> dict[str, Any]:
        storage = self.ctx.storage
        await storage.put("d", {"a": [1, 2]})
        value = await storage.get("d")
        return {"dict": [kind(value), value], "missing": await storage.get("nope")}

    async def probe_d1(self, query: dict[str, str]) -> dict[str, Any]:
        db = self.env.DB
        out: dict[str, Any] = {"binding": kind(db)}
        await db.prepare("DROP TABLE IF EXISTS t").run()
        await db.prepare("CREATE TABLE t (k TEXT PRIMARY KEY, v)").run()
        for key, value in [("none", None), ("bool", True), ("int", 7), ("float", 1.5),
                           ("str", "s"), ("blob", b"\x00\x01"), ("max_safe", 2**53 - 1)]:
            insert = db.prepare("INSERT INTO t (k, v) VALUES (?, ?)")
            out[f"bind {key}"] = await aerror_of(
                lambda s=insert, k=key, v=value: s.bind(k, v).run()
            )
        out["bind big"] = error_of(lambda: db.prepare("SELECT ?").bind(2**53 + 1))
        out["bind tuple"] = error_of(lambda: db.prepare("SELECT ?").bind((1, 2)))
        out["bind bytearray"] = error_of(lambda: db.prepare("SELECT ?").bind(bytearray(b"x")))
        result = await db.prepare("SELECT k, v, typeof(v) AS type FROM t ORDER BY k").all()
        out["all"] = [kind(result), sorted(result.keys())]
        out["meta keys"] = sorted(result["meta"].keys())
        out["rows"] = {
            r["k"]: [r["v"], r["type"], kind(r["v"]), kind(r)] for r in result["results"]
        }
        run = await db.prepare("INSERT INTO t (k, v) VALUES ('run', 1)").run()
        out["run"] = [kind(run), sorted(run.keys()), run["results"], run["meta"]["changes"],
                      kind(run["meta"]["last_row_id"])]
        out["first"] = await db.prepare("SELECT k FROM t ORDER BY k").first()
        out["first col"] = await db.prepare("SELECT k FROM t ORDER BY k").first("k")
        out["first none"] = await db.prepare("SELECT k FROM t WHERE 0").first()
        out["first missing col"] = await aerror_of(
            lambda: db.prepare("SELECT k FROM t").first("nope")
        )
        raw = await db.prepare("SELECT k, v FROM t WHERE k IN ('int', 'none') ORDER BY k").raw()
        out["raw"] = [kind(raw), raw]
        batch = await db.batch([db.prepare("SELECT 1 AS a"), db.prepare("SELECT 2 AS b")])
        out["batch"] = [kind(batch), [kind(b) for b in batch], [b["results"] for b in batch]]
        out["batch error"] = await aerror_of(lambda: db.batch([
            db.prepare("INSERT INTO t (k, v) VALUES ('in batch', 1)"),
            db.prepare("INSERT INTO nope VALUES (1)"),
        ]))
        rolled = await db.prepare("SELECT COUNT(*) AS n FROM t WHERE k = 'in batch'").first("n")
        out["batch rolled back"] = rolled == 0
        out["error"] = await aerror_of(lambda: db.prepare("SELECT * FROM nope").all())
        out["empty results"] = (await db.prepare("SELECT k FROM t WHERE 0").all())["results"]
        return out

    async def probe_r2(self, query: dict[str, str]) -> dict[str, Any]:
        bucket = self.env.BUCKET
        out: dict[str, Any] = {"binding": kind(bucket)}
        head = await bucket.put("k", b"\x00\xff")
        out["put"] = [kind(head), head.key, head.size]
        out["put bytearray"] = await aerror_of(lambda: bucket.put("ba", bytearray(b"x")))
        out["put memoryview"] = await aerror_of(lambda: bucket.put("mv", memoryview(b"x")))
        out["put str"] = await aerror_of(lambda: bucket.put("s", "text"))
        got = await bucket.get("k")
        out["get"] = kind(got)
        data = await got.arrayBuffer()
        out["arrayBuffer"] = [kind(data), list(bytes(data))]
        out["to_bytes"] = hasattr(data, "to_bytes")
        out["text"] = await (await bucket.get("s")).text()
        out["missing"] = kind(await bucket.get("nope"))
        out["head"] = kind(await bucket.head("k"))
        listing = await bucket.list(prefix="k")
        out["list"] = [kind(listing), [o.key for o in listing["objects"]]]
        return out

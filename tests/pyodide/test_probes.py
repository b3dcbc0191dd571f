"""Probes: each production pitfall the fakes reproduce, pinned from Python running in Pyodide.

These run small Python programs inside the real interpreter, through the real SDK, against the
harness's fakes of workerd (the rules of docs/cloudflare.md; each docstring names its "§"). They
pin two things at once: what Pyodide and the `workers` SDK do with our values (a list stays a
PyProxy, to_js makes a dict an Object, None becomes undefined, ...) and how workerd answers that
(refusal, silent coercion). An upgrade of Pyodide or of the SDK that changes any of it fails here
first, before it surprises src/objects/ in production.
"""

from __future__ import annotations

import textwrap
from typing import Any

import pytest

from tests.pyodide.harness_client import PyodideHarness

PRELUDE = """
import json
from js import Object, WebSocketPair, WebSocketRequestResponsePair
from pyodide.ffi import JsException, jsnull, to_js
from workers import DurableObject


class Probe(DurableObject):
    pass


def new_object(h, name):
    # As workerd constructs an object: raw (ctx, env); the SDK wraps ctx.storage and env.
    return Probe(h.newObjectState(name), h.env)


def error(fn, *args):
    try:
        fn(*args)
    except BaseException as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


async def aerror(awaitable):
    try:
        await awaitable
    except BaseException as exc:
        return f"{type(exc).__name__}: {exc}"
    return None
"""


def probe(harness: PyodideHarness, body: str) -> Any:
    return harness.probe(PRELUDE + textwrap.dedent(body))


@pytest.fixture
def clean(harness: PyodideHarness) -> Any:
    """Probes take their own warnings; nothing may be left over."""
    harness.take_diagnostics()
    yield
    diag = harness.take_diagnostics()
    assert diag["warnings"] == [], diag["warnings"]


pytestmark = pytest.mark.usefixtures("clean")


def test_only_ctx_storage_is_wrapped_by_the_sdk(harness: PyodideHarness) -> None:
    """§6.3, and most of §3 follows: hibernation methods and ws.* stay raw JS calls."""
    facts = probe(harness, """
        def main(h):
            obj = new_object(h, "wrapping")
            return {
                "ctx": type(obj.ctx).__name__,
                "storage": type(obj.ctx.storage).__name__,
                "accept": type(obj.ctx.acceptWebSocket).__name__,
                "env": type(obj.env).__name__,
                "db": type(obj.env.DB).__name__,
                "rooms": type(obj.env.ROOMS).__name__,
                "var": getattr(obj.env, "JWT_SECRET", None),
            }
    """)
    assert facts == {
        "ctx": "DurableObjectContext",
        "storage": "_BindingWrapper",
        "accept": "JsProxy",
        "env": "_EnvWrapper",
        "db": "_BindingWrapper",
        "rooms": "_DurableObjectNamespaceWrapper",
        "var": None,
    }


def test_python_values_crossing_into_raw_js(harness: PyodideHarness) -> None:
    """Only scalars convert by themselves; None is undefined; to_js(dict) is a Map."""
    kinds = probe(harness, """
        def main(h):
            return {
                "none": h.jsKind(None),
                "jsnull": h.jsKind(jsnull),
                "list": h.jsKind([1]),
                "dict": h.jsKind({"a": 1}),
                "bytes": h.jsKind(b"x"),
                "to_js(list)": h.jsKind(to_js([1])),
                "to_js(dict)": h.jsKind(to_js({"a": 1})),
                "to_js(dict, fromEntries)": h.jsKind(
                    to_js({"a": 1}, dict_converter=Object.fromEntries)
                ),
                "to_js(bytes)": h.jsKind(to_js(b"x")),
                "bool": h.jsKind(True),
                "big int": h.jsKind(2**53 + 1),
            }
    """)
    assert kinds == {
        "none": "undefined",
        "jsnull": "null",
        "list": "PyProxy",
        "dict": "PyProxy",
        "bytes": "PyProxy",
        "to_js(list)": "Array",
        "to_js(dict)": "Object",  # Pyodide 314 changed this: 0.28 gave a Map
        "to_js(dict, fromEntries)": "Object",
        "to_js(bytes)": "Uint8Array",
        "bool": "boolean",
        "big int": "bigint",
    }


def test_accept_websocket_needs_a_js_array_of_tags(harness: PyodideHarness) -> None:
    """§3.2: a Python list is refused; to_js works; at most 10 tags of 256 chars."""
    facts = probe(harness, """
        def main(h):
            obj = new_object(h, "tags")
            def pair():
                return WebSocketPair.new().object_values()
            out = {}
            _client, server = pair()
            out["list"] = error(obj.ctx.acceptWebSocket, server, ["a"])
            obj.ctx.acceptWebSocket(server, to_js(["a", "b", "a"]))
            out["tags"] = list(obj.ctx.getTags(server))
            sockets = obj.ctx.getWebSockets()
            out["getWebSockets"] = [type(sockets).__name__, len(obj.ctx.getWebSockets("b"))]
            eleven = to_js([str(i) for i in range(11)])
            out["eleven"] = error(obj.ctx.acceptWebSocket, pair()[1], eleven)
            out["long"] = error(obj.ctx.acceptWebSocket, pair()[1], to_js(["x" * 257]))
            most = to_js([f"{i}" * 256 for i in range(10)])
            out["max"] = error(obj.ctx.acceptWebSocket, pair()[1], most)
            out["no tags"] = error(obj.ctx.acceptWebSocket, pair()[1])
            return out
    """)
    assert "parameter 2 is not of type 'Array'" in facts["list"]
    assert facts["list"].startswith("JsException: TypeError")
    assert facts["tags"] == ["a", "b"]  # duplicates are dropped
    assert facts["getWebSockets"] == ["JsProxy", 1]
    assert "cannot have more than 10 tags" in facts["eleven"]
    assert "longer than the max tag length (256 characters)" in facts["long"]
    assert facts["max"] is None
    assert facts["no tags"] is None


def test_attachments_must_be_cloneable_and_small(harness: PyodideHarness) -> None:
    """§3.3: a dict is a PyProxy (DataCloneError); JSON strings up to 16 KiB serialized.

    to_js(dict) made a Map on Pyodide 0.28; on 314 it is an Object (§6.2).
    """
    facts = probe(harness, """
        def main(h):
            _client, server = WebSocketPair.new().object_values()
            out = {"empty is jsnull": server.deserializeAttachment() is jsnull}
            out["dict"] = error(server.serializeAttachment, {"a": 1})
            server.serializeAttachment(to_js({"a": 1}, dict_converter=Object.fromEntries))
            back = server.deserializeAttachment()
            out["object"] = [type(back).__name__, back.to_py()]
            server.serializeAttachment(to_js({"a": 1}))  # no dict_converter
            out["map"] = server.deserializeAttachment().constructor.name
            server.serializeAttachment("x" * 16379)
            out["16379 chars"] = h.serializedAttachmentSize(server)
            out["16380 chars"] = error(server.serializeAttachment, "x" * 16380)
            out["still"] = len(server.deserializeAttachment())
            return out
    """)
    assert facts["empty is jsnull"] is True
    assert "DataCloneError" in facts["dict"]
    assert facts["object"] == ["JsProxy", {"a": 1}]
    assert facts["map"] == "Object"  # to_js(dict) is a plain Object since Pyodide 314
    assert facts["16379 chars"] == 16384
    assert "cannot be larger than 16384 bytes" in facts["16380 chars"]
    assert facts["still"] == 16379  # a refused attachment leaves the old one


def test_sending_bytes_sends_their_repr_as_text(harness: PyodideHarness) -> None:
    """§3.7: ws.send(b"x") does not fail; the peer receives the TEXT "b'x'"."""
    facts = probe(harness, """
        def main(h):
            obj = new_object(h, "send")
            client, server = WebSocketPair.new().object_values()
            frames = h.recorder(client)
            obj.ctx.acceptWebSocket(server, to_js(["t"]))
            server.send(b"x")
            server.send(to_js(b"x"))
            server.send("text")
            got = []
            for frame in frames:
                data = frame.data
                if not isinstance(data, str):
                    data = ["binary", list(data.to_py().tobytes())]
                got.append(data)
            warnings = [w.kind for w in h.takeWarnings()]
            _c, fresh = WebSocketPair.new().object_values()
            out = {"frames": got, "warnings": warnings,
                   "before accept": error(fresh.send, "x")}
            server.close(1000, "done")
            out["after close"] = error(server.send, "x")
            out["ready"] = server.readyState
            _c2, other = WebSocketPair.new().object_values()
            obj.ctx.acceptWebSocket(other)
            out["code 1006"] = error(other.close, 1006)
            out["long reason"] = error(other.close, 4000, "r" * 124)
            return out
    """)
    assert facts["frames"] == ["b'x'", ["binary", [120]], "text"]
    assert facts["warnings"] == ["websocket-send-coerced"]
    assert "You must call one of accept() or state.acceptWebSocket()" in facts["before accept"]
    assert "Can't call WebSocket send() after close()" in facts["after close"]
    assert facts["ready"] == 2  # CLOSING: our close is sent, the peer's is not back yet
    assert "Invalid WebSocket close code: 1006" in facts["code 1006"]
    assert "123 bytes" in facts["long reason"]


def test_sql_bindings_and_results_follow_workerd(harness: PyodideHarness) -> None:
    """§4.2: bool -> TEXT 'true', numbers -> REAL, big ints refused, rows are JsDicts.

    As measured in workerd (tests/workerd/test_probes.py): Pyodide passes an int from 2**53 - 1
    up as a BigInt, which the binding refuses with a TypeError (not bound as TEXT).
    """
    facts = probe(harness, """
        def main(h):
            sql = new_object(h, "sql").ctx.storage.sql
            sql.exec("CREATE TABLE t (k TEXT PRIMARY KEY, v)")
            for key, value in [("bool", True), ("int", 7), ("float", 1.5),
                               ("blob", b"\\x00\\x01"), ("none", None), ("str", "s")]:
                sql.exec("INSERT INTO t (k, v) VALUES (?, ?)", key, value)
            insert = "INSERT INTO t (k, v) VALUES (?, ?)"
            big = {"max_safe": error(sql.exec, insert, "max_safe", 2**53 - 1),
                   "big": error(sql.exec, insert, "big", 2**53 + 1),
                   "below": error(sql.exec, "SELECT ?", 2**53 - 2)}
            list_as = sql.exec("SELECT ? AS v, typeof(?) AS t", [1, 2], [1, 2]).one()
            out = {"big ints": big, "list": [list_as.v, list_as.t]}
            for row in sql.exec("SELECT k, v, typeof(v) AS type FROM t"):
                value = row.v  # JsDict: attribute access
                if isinstance(value, memoryview):
                    value = ["memoryview", list(value.tobytes())]
                out[row["k"]] = [value, row.type, type(row).__name__]
            out["int64"] = [sql.exec("SELECT 9007199254740993 AS n").one()["n"]]
            out["warnings"] = sorted(w.kind for w in h.takeWarnings())
            out["tuple"] = error(sql.exec, "SELECT ?", (1, 2))
            out["bytearray"] = error(sql.exec, "SELECT ?", bytearray(b"x"))
            out["raw"] = [list(r) for r in sql.exec("SELECT k, v FROM t WHERE k = 'int'").raw()]
            out["columns"] = list(sql.exec("SELECT 1 AS a, 2 AS b").columnNames)
            out["size"] = sql.databaseSize > 0
            return out
    """)
    assert facts["bool"] == ["true", "text", "JsDict"]
    bigint = "JsException: TypeError: Cannot convert a BigInt value to a number"
    assert facts["big ints"] == {"max_safe": bigint, "big": bigint, "below": None}
    assert facts["list"] == ["1,2", "text"]  # the SDK makes an Array; SQL binds its String()
    assert facts["int"] == [7, "real", "JsDict"]  # bound as a double
    assert facts["float"] == [1.5, "real", "JsDict"]
    assert facts["blob"] == [["memoryview", [0, 1]], "blob", "JsDict"]
    assert facts["none"] == [None, "null", "JsDict"]
    assert facts["str"] == ["s", "text", "JsDict"]
    assert facts["int64"] == [9007199254740992.0]  # int64 -> double: precision lost
    assert facts["warnings"] == ["sql-binding-coerced"] * 3  # True, and the list twice
    assert "cannot be sent over RPC" in facts["tuple"]
    assert "cannot be sent over RPC" in facts["bytearray"]
    assert facts["raw"] == [["int", 7]]
    assert facts["columns"] == ["a", "b"]
    assert facts["size"] is True


def test_sql_refuses_transactions_reserved_names_attach_and_pragmas(
    harness: PyodideHarness,
) -> None:
    """§4.4: use transactionSync; `_cf_` names, ATTACH and most PRAGMAs are refused."""
    facts = probe(harness, """
        async def main(h):
            storage = new_object(h, "refusals").ctx.storage
            sql = storage.sql
            sql.exec("CREATE TABLE t (k TEXT, v)")
            await storage.put("kv", 1)
            out = {
                "begin": error(sql.exec, "BEGIN TRANSACTION"),
                "savepoint": error(sql.exec, "SAVEPOINT s"),
                "cf table": error(sql.exec, "SELECT * FROM _cf_KV"),
                "cf create": error(sql.exec, "CREATE TABLE _cf_mine (a)"),
                "attach": error(sql.exec, "ATTACH DATABASE ':memory:' AS other"),
                "pragma": error(sql.exec, "PRAGMA journal_mode = WAL"),
                "table_info": [r["name"] for r in sql.exec("PRAGMA table_info(t)")],
                "params not last": error(sql.exec, "INSERT INTO t VALUES ('a', ?); SELECT 1", 1),
                "multi": sql.exec(
                    "INSERT INTO t VALUES ('m', 1); SELECT COUNT(*) AS n FROM t"
                ).one()["n"],
                "one of none": error(lambda: sql.exec("SELECT 1 WHERE 0").one()),
                "one of two": error(lambda: sql.exec("SELECT 1 UNION ALL SELECT 2").one()),
                "wrong arity": error(sql.exec, "SELECT ?", 1, 2),
            }

            def write_then_fail():
                sql.exec("INSERT INTO t VALUES ('rolled back', 1)")
                raise ValueError("boom")

            out["transaction error"] = error(storage.transactionSync, write_then_fail)
            count = "SELECT COUNT(*) AS n FROM t WHERE k = 'rolled back'"
            out["rolled back"] = sql.exec(count).one()["n"]
            out["transaction result"] = storage.transactionSync(lambda: 42)
            out["kv"] = await storage.get("kv")
            return out
    """)
    for key in ("begin", "savepoint"):
        assert "state.storage.transactionSync()" in facts[key], key
    assert "access to _cf_KV.key is prohibited: SQLITE_AUTH" in facts["cf table"]
    for key in ("cf create", "attach", "pragma"):
        assert "not authorized: SQLITE_AUTH" in facts[key], key
    assert facts["table_info"] == ["k", "v"]
    assert "only the last statement can have parameters" in facts["params not last"]
    assert facts["multi"] == 1
    assert "got no results" in facts["one of none"]
    assert "got multiple results" in facts["one of two"]
    assert "Wrong number of parameter bindings" in facts["wrong arity"]
    assert facts["transaction error"] == "ValueError: boom"  # the Python exception comes back
    assert facts["rolled back"] == 0
    assert facts["transaction result"] == 42
    assert facts["kv"] == 1


def test_kv_and_alarm_storage_through_the_sdk(harness: PyodideHarness) -> None:
    facts = probe(harness, """
        async def main(h):
            storage = new_object(h, "kv").ctx.storage
            await storage.put("d", {"a": [1, 2]})
            value = await storage.get("d")
            out = {"dict": [type(value).__name__, value, value.a]}
            out["missing"] = await storage.get("nope")
            out["alarm before"] = await storage.getAlarm()
            await storage.setAlarm(1_900_000_000_000)
            out["alarm"] = await storage.getAlarm()
            out["past zero"] = await aerror(storage.setAlarm(0))
            await storage.deleteAlarm()
            out["alarm after"] = await storage.getAlarm()
            return out
    """)
    assert facts["dict"] == ["JsDict", {"a": [1, 2]}, [1, 2]]
    assert facts["missing"] is None
    assert facts["alarm before"] is None
    assert facts["alarm"] == 1_900_000_000_000
    assert "alarm time <= 0" in facts["past zero"]
    assert facts["alarm after"] is None


def test_run_sync_and_javascript_imports_work(harness: PyodideHarness) -> None:
    """JSPI is on (Node 24, as in production), so run_sync and import_from_javascript work."""
    facts = probe(harness, """
        def main(h):
            from js import Promise
            from pyodide.ffi import can_run_sync, run_sync
            from workers import import_from_javascript
            workers_module = import_from_javascript("cloudflare:workers")
            return {
                "can_run_sync": can_run_sync(),
                "run_sync": run_sync(Promise.resolve(5)),
                "cloudflare:workers": workers_module.DurableObject.name,
                "unknown": error(import_from_javascript, "cloudflare:nope"),
            }
    """)
    assert facts["can_run_sync"] is True
    assert facts["run_sync"] == 5
    assert facts["cloudflare:workers"] == "DurableObject"
    assert facts["unknown"].startswith("ImportError: Failed to import 'cloudflare:nope'")


def test_patch_env_is_broken_on_current_runtimes(harness: PyodideHarness) -> None:
    """The SDK still calls patch_env_helper, which workerd removed."""
    facts = probe(harness, """
        def main(h):
            from workers import patch_env
            def use():
                with patch_env(X="1"):
                    pass
            return {"patch_env": error(use)}
    """)
    assert facts["patch_env"].startswith("AttributeError")
    assert "patch_env_helper" in facts["patch_env"]


def test_a_dict_pyproxy_shows_its_keys_as_js_properties(harness: PyodideHarness) -> None:
    """Pyodide 314: a PyProxy of a dict answers get/has/ownKeys with its keys, so JS reading an
    options bag (`new Request(url, {"method": "POST"})`) sees them (§6.6). The CPython fakes still
    treat the keys as invisible, the stricter case; structured clone still refuses the proxy
    (see the attachment probe), so converting with to_js stays the rule."""
    facts = probe(harness, """
        def main(h):
            from js import Reflect, Request
            options = {"method": "POST", "x": 1}
            converted = to_js({"method": "POST"}, dict_converter=Object.fromEntries)
            return {
                "get": Reflect.get(options, "method"),
                "has": Reflect.has(options, "nope"),
                "keys": list(Object.keys(options)),
                "dict init": Request.new("https://x.example/", {"method": "POST"}).method,
                "converted init": Request.new("https://x.example/", converted).method,
            }
    """)
    assert facts == {"get": "POST", "has": False, "keys": ["method", "x"], "dict init": "POST",
                     "converted init": "POST"}


def test_sdk_response_carries_a_websocket_with_status_101(harness: PyodideHarness) -> None:
    facts = probe(harness, """
        def main(h):
            from workers import Response
            client, server = WebSocketPair.new().object_values()
            new_object(h, "resp").ctx.acceptWebSocket(server)
            response = Response(None, status=101, headers={"sec-websocket-protocol": "rooms.v1"},
                                web_socket=client)
            js_response = response.js_object
            _c, lonely = WebSocketPair.new().object_values()
            return {
                "status": [response.status, js_response.status],
                "same socket": js_response.webSocket == client,
                "protocol": js_response.headers.get("sec-websocket-protocol"),
                "no socket": error(lambda: Response(None, status=101)),
                "accepted end": error(lambda: Response(None, status=101, web_socket=server)),
            }
    """)
    assert facts["status"] == [101, 101]
    assert facts["same socket"] is True
    assert facts["protocol"] == "rooms.v1"
    assert "requires a webSocket" in facts["no socket"]
    assert "Can't return WebSocket in a Response" in facts["accepted end"]


def test_js_proxies_hash_and_compare_by_identity(harness: PyodideHarness) -> None:
    """Pins JsProxy equality (JS identity) and hashability, which per-socket maps rely on."""
    facts = probe(harness, """
        def main(h):
            obj = new_object(h, "identity")
            _c, server = WebSocketPair.new().object_values()
            obj.ctx.acceptWebSocket(server)
            (again,) = obj.ctx.getWebSockets()
            return {"equal": again == server, "same proxy": again is server,
                    "hash": error(hash, server)}
    """)
    assert facts["equal"] is True
    assert facts["same proxy"] is False
    assert facts["hash"] is None or facts["hash"].startswith("TypeError")


def test_d1_binding_validates_like_the_real_one(harness: PyodideHarness) -> None:
    facts = probe(harness, """
        async def main(h):
            db = new_object(h, "d1").env.DB
            statement = db.prepare("SELECT ? AS b, typeof(?) AS t, ? AS n")
            row = await statement.bind(True, True, None).all()
            first = row["results"][0]
            out = {"row": [first.b, first.t, first.n, type(first).__name__],
                   "success": row["success"]}
            # bind() validates at once
            out["bigint"] = error(lambda: db.prepare("SELECT ?").bind(2**53 + 1))
            out["tuple"] = error(lambda: db.prepare("SELECT ?").bind((1, 2)))
            applied = await db.prepare("SELECT name FROM d1_migrations ORDER BY id").all()
            out["migrations"] = [r.name for r in applied["results"]]
            out["error"] = await aerror(db.prepare("SELECT * FROM nope").all())
            out["first"] = await db.prepare("SELECT 1 AS one").first("one")
            return out
    """)
    assert facts["row"] == [1, "real", None, "JsDict"]  # local D1 binds numbers as REAL
    assert facts["success"] is True
    assert "D1_TYPE_ERROR: Type 'bigint' not supported" in facts["bigint"]
    assert "cannot be sent over RPC" in facts["tuple"]
    assert facts["migrations"] == ["0001_rooms.sql", "0002_archive.sql"]
    assert facts["error"].startswith("JsException: Error: D1_ERROR: no such table: nope")
    assert facts["first"] == 1


def test_r2_binding_round_trips_bytes(harness: PyodideHarness) -> None:
    facts = probe(harness, """
        async def main(h):
            bucket = new_object(h, "r2").env.ARCHIVE
            head = await bucket.put("k", b"\\x00\\xff")
            got = await bucket.get("k")
            data = await got.arrayBuffer()
            return {
                "put": [head.key, head.size, type(head).__name__],
                "get": [type(data).__name__, list(bytes(data))],
                "missing": await bucket.get("nope"),
                "bytearray": error(lambda: bucket.put("b", bytearray(b"x"))),
                "list": [o.key for o in (await bucket.list(prefix="k"))["objects"]],
            }
    """)
    assert facts["put"] == ["k", 2, "_BindingWrapper"]
    assert facts["get"] == ["memoryview", [0, 255]]
    assert facts["missing"] is None
    assert "cannot be sent over RPC" in facts["bytearray"]
    assert facts["list"] == ["k"]


def test_compat_flags_module(harness: PyodideHarness) -> None:
    facts = probe(harness, """
        def main(h):
            import _cloudflare_compat_flags as flags
            from workers.utils import get_compat_flag
            return {
                "preserve commas": flags.python_request_headers_preserve_commas,
                "implicit deps": flags.python_workflows_implicit_dependencies,
                "pth": flags.python_process_pth_files,
                "unknown": get_compat_flag("no_such_flag"),
                "sealed": error(setattr, flags, "brand_new_flag", True),
            }
    """)
    assert facts["preserve commas"] is True
    assert facts["implicit deps"] is True
    assert facts["pth"] is True
    assert facts["unknown"] is False
    assert facts["sealed"] is not None


def test_stale_socket_objects_die_with_their_instance(harness: PyodideHarness) -> None:
    """§3.4, harness side: after eviction, sockets come back as new JS objects."""
    facts = probe(harness, """
        def main(h):
            first = new_object(h, "stale")
            _c, server = WebSocketPair.new().object_values()
            first.ctx.acceptWebSocket(server, to_js(["t"]))
            server.serializeAttachment("kept")
            h.evictObjectState("stale")
            second = new_object(h, "stale")
            (again,) = second.ctx.getWebSockets()
            return {"old": error(server.send, "x"), "attachment": again.deserializeAttachment(),
                    "new object": again == server, "tags": list(second.ctx.getTags(again))}
    """)
    assert "Cannot perform I/O on behalf of a different Durable Object" in facts["old"]
    assert facts["attachment"] == "kept"
    assert facts["new object"] is False
    assert facts["tags"] == ["t"]

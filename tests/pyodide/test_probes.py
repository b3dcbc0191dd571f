"""Probes: small Python programs run inside the real interpreter, through the real SDK.

They pin what Pyodide and the `workers` SDK do with our values (a list stays a PyProxy, to_js
makes a dict an Object, None becomes undefined, which SDK objects wrap what, ...), and the ports
of src/objects/ (`DurableObjectSql`, `HibernatableSockets`, `D1Database`, `R2Bucket`) called
directly, over the harness's fakes of workerd: the conversions each port makes. An upgrade of
Pyodide or of the SDK that changes any of it fails here first, before it surprises src/objects/
in production. What workerd itself answers (tag and attachment limits, SQL and D1 bindings, R2
bodies, close codes, stale sockets) is pinned against the real workerd in
tests/workerd/test_probes.py, not here.
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


def probe(harness: PyodideHarness, body: str, imports: str = "") -> Any:
    return harness.probe(PRELUDE + imports + textwrap.dedent(body))


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
    options bag (`new Request(url, {"method": "POST"})`) sees them (§6.6). Structured clone still
    refuses the proxy (tests/workerd/test_probes.py::test_attachments), so converting with to_js
    stays the rule."""
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


# ------------------------------------------------------------------------ the adapters' ports

PORTS = """
from objects.bindings import D1Database, R2Bucket
from objects.platform import DurableObjectSql, HibernatableSockets
from rooms.archive import ArchiveIndex
from rooms.store import RoomStore
"""


@pytest.mark.parametrize("wrapped", [True, False], ids=["sdk-wrapped", "raw"])
def test_durable_object_sql_port(harness: PyodideHarness, wrapped: bool) -> None:
    """`DurableObjectSql` over ``ctx.storage`` as the SDK hands it to an object, and raw: rows
    are Python lists in column order (NULL is None), a bool is refused before the platform would
    store it as 'true' (§4.2), `transaction` commits together, returns fn's result and rolls back
    on an exception (§4.4), and the core's `RoomStore` works over it."""
    facts = probe(harness, imports=PORTS, body=f"""
        def main(h):
            state = h.newObjectState("sql-port")
            sql = DurableObjectSql(Probe(state, h.env).ctx.storage if {wrapped} else state.storage)
            sql.execute("CREATE TABLE t (b TEXT, a INTEGER, c REAL)")
            sql.execute("INSERT INTO t VALUES (?, ?, ?)", "x", 2**40, None)
            rows = sql.execute("SELECT b, a, c FROM t")
            out = {{"rows": repr(rows), "types": [type(rows).__name__, type(rows[0]).__name__],
                    "twice": repr(sql.execute("SELECT a, a FROM t"))}}
            sql.execute("CREATE TABLE f (flag INTEGER)")
            out["bool"] = error(sql.execute, "INSERT INTO f VALUES (?)", True)
            out["bools stored"] = sql.execute("SELECT COUNT(*) FROM f")

            def write_two():
                sql.execute("INSERT INTO f VALUES (1)")
                sql.execute("INSERT INTO f VALUES (2)")
                return ("done", 2)

            def write_then_fail():
                sql.execute("INSERT INTO f VALUES (3)")
                raise ValueError("stop")

            out["committed"] = sql.transaction(write_two) == ("done", 2)
            out["rolled back"] = error(sql.transaction, write_then_fail)
            out["flags"] = sql.execute("SELECT flag FROM f ORDER BY flag")
            store = RoomStore(sql)
            store.append(id="a", user_id="u", name="U", body="one", sent_ms=5)
            again = RoomStore(sql)
            message, duplicate = again.append(id="a", user_id="u", name="U", body="x", sent_ms=6)
            out["store"] = [message.seq, message.body, duplicate, again.head,
                            [m.body for m in again.after(0, 10)]]
            return out
    """)
    assert facts["rows"] == "[['x', 1099511627776, None]]"  # 2**40, an int
    assert facts["types"] == ["list", "list"]
    assert facts["twice"] == "[[1099511627776, 1099511627776]]"
    assert facts["bool"] == "TypeError: bind int(flag), not bool: Cloudflare stores bools as text"
    assert facts["bools stored"] == [[0]]
    assert facts["committed"] is True
    assert facts["rolled back"] == "ValueError: stop"
    assert facts["flags"] == [[1], [2]]
    assert facts["store"] == [1, "one", True, 1, ["one"]]


def test_hibernatable_sockets_port(harness: PyodideHarness) -> None:
    """`HibernatableSockets`: attachments are JSON strings both ways (nothing attached reads as
    None; a dict is refused, §3.3); frames are text only (bytes would go out as "b'...'", §3.7)."""
    facts = probe(harness, imports=PORTS, body="""
        def main(h):
            state = h.newObjectState("sockets-port")
            sockets = HibernatableSockets(state)
            client, server = WebSocketPair.new().object_values()
            frames = h.recorder(client)
            sockets.accept(server, ["c:1", "u:alice"])
            out = {"tags": list(state.getTags(server)),
                   "nothing attached": repr(sockets.attachment(server))}
            sockets.set_attachment(server, '{"v":1}')
            out["attachment"] = repr(sockets.attachment(server))
            out["dict"] = error(sockets.set_attachment, server, {"v": 1})
            out["still"] = sockets.attachment(server)
            sockets.send(server, "hi")
            out["bytes"] = error(sockets.send, server, b"hi")
            out["frames"] = [f.data for f in frames]
            return out
    """)
    assert facts["tags"] == ["c:1", "u:alice"]
    assert facts["nothing attached"] == "None"
    assert facts["attachment"] == repr('{"v":1}')
    assert facts["dict"] == "TypeError: attachments are JSON strings"
    assert facts["still"] == '{"v":1}'
    assert facts["bytes"] == "TypeError: rooms send text frames only"
    assert facts["frames"] == ["hi"]


def test_d1_and_r2_ports(harness: PyodideHarness) -> None:
    """`D1Database` rows are plain dicts and None binds as NULL; the core's `ArchiveIndex`
    records a segment once however often it is retried, and its default range binds (no int that
    Pyodide would make a BigInt). `R2Bucket` puts bytes (a bytearray would be a TypeError through
    the SDK, §5.4), gets bytes or None, and lets R2's failures through."""
    facts = probe(harness, imports=PORTS, body="""
        async def main(h):
            env = new_object(h, "bindings-port").env
            db = D1Database(env.DB)
            await db.batch([("CREATE TABLE t (a INTEGER, b TEXT)", ()),
                            ("INSERT INTO t VALUES (?, ?)", (1, None))])
            rows = await db.all("SELECT a, b FROM t WHERE a = ?", 1)
            out = {"rows": repr(rows), "row type": type(rows[0]).__name__}
            index = ArchiveIndex(db)
            for _ in range(2):
                await index.record("lobby", 1, 4, 99, "k", 1000)
            out["segments"] = [[r["first_seq"], r["last_seq"], r["count"], r["key"]]
                               for r in await index.segments("lobby", 1, 100)]
            out["default range"] = len(await index.segments("lobby"))
            bucket = R2Bucket(env.ARCHIVE)
            await bucket.put("rooms/x/segments/1", bytearray(b"\\x1f\\x8b data"))
            got = await bucket.get("rooms/x/segments/1")
            out["get"] = [type(got).__name__, list(got)]
            out["missing"] = repr(await bucket.get("rooms/x/segments/2"))
            h.env.ARCHIVE.failPuts = 1
            h.env.ARCHIVE.failGets = 1
            out["put failure"] = await aerror(bucket.put("k", b"x"))
            out["get failure"] = await aerror(bucket.get("k"))
            return out
    """)
    assert facts["rows"] == "[{'a': 1, 'b': None}]"
    assert facts["row type"] == "dict"
    assert facts["segments"] == [[1, 4, 4, "k"]]
    assert facts["default range"] == 1
    assert facts["get"] == ["bytes", list(b"\x1f\x8b data")]
    assert facts["missing"] == "None"
    assert facts["put failure"].startswith("JsException: Error: put: We encountered an internal")
    assert facts["get failure"].startswith("JsException: Error: get: We encountered an internal")


def test_handlers_are_called_as_they_are(harness: PyodideHarness) -> None:
    """`ffi.call_handlers_as_is` (docs/cloudflare.md §1.10): Pyodide's `relaxed_call`, which
    workerd calls a Durable Object's handlers through, finds no signature to bind on them and
    passes the arguments as they are, an extra one included; its cache, which keeps every
    callable it sees, keeps one entry for any number of instances, and no instance. A plain
    method has its arguments bound and its instance kept. The methods stay functions on the
    class, where workerd finds them (`collect_methods`). Should an upgrade of Pyodide read such
    a signature or stop calling through, this fails."""
    facts = probe(harness, body="""
        import gc, types, weakref
        from pyodide.code import _relaxed_call_sig, _relaxed_call_sig_cached, relaxed_call
        from objects import ffi
        from objects.room import HANDLERS, Room
        from worker import Default

        class Handlers:
            calls = []

            def __init__(self):
                ffi.call_handlers_as_is(self, ["as_is"])

            def as_is(self, ws, message, *_):
                Handlers.calls.append((ws, message, _))

            def bound(self, ws, message):
                Handlers.calls.append((ws, message))

        def main(h):
            first, second = Handlers(), Handlers()
            relaxed_call(first.as_is, "ws", "text")
            relaxed_call(second.as_is, "ws", "text", "extra")
            relaxed_call(first.bound, "ws", "text", "extra")
            before = _relaxed_call_sig_cached.cache_info().currsize
            kept = [weakref.ref(first), weakref.ref(second)]
            for _ in range(3):
                relaxed_call(Handlers().as_is, "ws", "again")
            entries = _relaxed_call_sig_cached.cache_info().currsize - before
            del first, second
            gc.collect()
            return {
                "signature": _relaxed_call_sig(Handlers().as_is) is None,
                "fetch": [_relaxed_call_sig(Room.fetch), _relaxed_call_sig(Default.fetch)],
                "on the class": [isinstance(Room.__dict__[name], types.FunctionType)
                                 for name in HANDLERS],
                "equal": Handlers().as_is == Handlers().as_is,
                "new cache entries": entries,
                "instances kept": [ref() is not None for ref in kept],
                "calls": [list(call) for call in Handlers.calls[:3]],
            }
    """)
    assert facts == {
        "signature": True,
        "fetch": [None, None],
        "on the class": [True] * 5,
        "equal": True,
        "new cache entries": 0,
        "instances kept": [True, False],  # the first one only through its plain method's entry
        "calls": [["ws", "text", []], ["ws", "text", ["extra"]], ["ws", "text"]],
    }

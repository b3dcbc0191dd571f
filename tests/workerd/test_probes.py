"""What the real workerd does, pinned: every behaviour the fakes of workerd assume, measured.

The fakes (tests/pyodide/harness/lib/*.mjs, the Pyodide tier's JS fakes of workerd) were written
from workerd's source and docs. Each test here asks the real workerd (the pinned wrangler's,
offline, like `make dev`) through the probe Worker in probes/ and asserts the answer. The fakes
were aligned with these facts on 2026-11-29 (docs/cloudflare.md §8.7 lists where they disagreed);
no test compares them with these answers, so a fact that changes here must be carried over to the
fakes by hand. Facts hold for local workerd 1.20261117.1 at compatibility date 2026-11-01.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import websockets

from tests.conftest import timeout
from tests.workerd.conftest import ProbeWorker

pytestmark = pytest.mark.integration

TAG_ERROR_256 = 'is longer than the max tag length (256 characters).'
ATTACHMENT_ERROR = "A WebSocket 'attachment' cannot be larger than 16384 bytes."
INVALID_CODE = "JsException: InvalidAccessError: Invalid WebSocket close code: {}."
SEND_AFTER_CLOSE = "JsException: TypeError: Can't call WebSocket send() after close()."
DROPPED = "WebSocket disconnected without sending Close frame."
EVICTION_S = 10  # workerd server.c++ ActorContainer::handleShutdown: 10 s without requests


Connect = Callable[[str], Awaitable[websockets.ClientConnection]]


@pytest.fixture
async def connect() -> AsyncIterator[Connect]:
    """Open WebSockets to the probe Worker; whatever is left open is cut after the test."""
    opened: list[websockets.ClientConnection] = []

    async def open_(url: str) -> websockets.ClientConnection:
        ws = await websockets.connect(url, open_timeout=timeout(30), max_queue=None)
        opened.append(ws)
        return ws

    yield open_
    for ws in opened:
        ws.transport.abort()  # some tests leave a closing handshake open on purpose
    for ws in opened:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ws.wait_closed(), 5)


async def command(ws: websockets.ClientConnection, **cmd: Any) -> dict[str, Any]:
    await ws.send(json.dumps(cmd))
    reply: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), timeout(10)))
    return reply


async def events_of(
    probe_worker: ProbeWorker, obj: str, kind: str, count: int | None = None
) -> list[Any]:
    """The object's ``kind`` events (waiting for ``count``), without blocking the event loop."""
    if count is None:
        return await asyncio.to_thread(probe_worker.events, obj, kind)
    return await asyncio.to_thread(probe_worker.wait_events, obj, kind, count)


async def server_close(ws: websockets.ClientConnection, seconds: float) -> Any:
    """Frames until the server's close frame; returns it (None if none came in time)."""
    try:
        while True:
            await asyncio.wait_for(ws.recv(), timeout(seconds))
    except websockets.ConnectionClosed as closed:
        return closed.rcvd
    except TimeoutError:
        return None


# ------------------------------------------------------------------------------ hibernation API


def test_accept_websocket_tags(probe_worker: ProbeWorker) -> None:
    """At most 10 tags of at most 256 UTF-8 bytes; a Python list is refused; dupes dropped."""
    facts = probe_worker.probe(probe_worker.name("tags"), "tags")
    assert facts["python_list"] == (
        "JsException: TypeError: Failed to execute 'acceptWebSocket' on 'DurableObjectState': "
        "parameter 2 is not of type 'Array'."
    )
    assert facts["duplicates"] == ["a", "b"]
    eleven = "JsException: Error: a Hibernatable WebSocket cannot have more than 10 tags"
    assert facts["eleven"] == eleven
    # The count is checked as tags are added, duplicates included, before they are dropped:
    # ten distinct tags and then a repeat fail, a repeat among the first ten does not.
    assert facts["ten_distinct_of_eleven"] == eleven
    assert facts["eleven_with_early_duplicate"] is None
    assert facts["ten_of_256"] is None
    assert facts["257"] == f'JsException: Error: "{"x" * 257}" {TAG_ERROR_256}'
    # The limit counts UTF-8 bytes, although the message says characters.
    assert facts["128_two_byte"] is None
    assert facts["129_two_byte"].endswith(TAG_ERROR_256)
    assert facts["256_two_byte"].endswith(TAG_ERROR_256)
    assert facts["129_astral"].endswith(TAG_ERROR_256)
    assert facts["no_tags"] is None
    assert facts["empty_tag"] is None
    assert facts["get_by_tag"] == 1
    assert facts["get_type"] == "JsProxy:Array"
    assert facts["get_tags_unaccepted"] == (
        "JsException: Error: you must call 'acceptWebSocket()' before attempting to access the "
        "tags of a WebSocket."
    )


def test_attachments(probe_worker: ProbeWorker) -> None:
    """Structured clone, at most 16384 bytes serialized (V8's format: 5 bytes of overhead)."""
    facts = probe_worker.probe(probe_worker.name("attachment"), "attachment")
    assert facts["empty"] == "jsnull"
    clone_error = "JsException: DataCloneError: [object Object] could not be cloned."
    assert facts["dict"] == facts["list"] == facts["bytes"] == clone_error
    assert facts["object"] == ["JsProxy:Object", {"a": 1}]
    assert facts["to_js_dict"] == "JsProxy:Object"
    assert facts["none"] == "NoneType"  # serializeAttachment(None): undefined, read back as None
    assert facts["int"] == 7
    # One byte per character for Latin-1 strings ("é" included), two for the rest of the BMP.
    assert facts["max_latin1_chars"] == 16379
    assert facts["max_two_byte_chars"] == 16379
    assert facts["max_bmp_chars"] == 8189
    assert facts["too_big"] == (
        f"JsException: Error: {ATTACHMENT_ERROR}'attachment' was 20006 bytes."
    )
    assert facts["after_refusal"] == "kept"


def test_what_ws_close_accepts(probe_worker: ProbeWorker) -> None:
    """1000-4999 except 1004, 1005, 1006 and 1015; reasons up to 123 UTF-8 bytes."""
    facts = probe_worker.probe(probe_worker.name("close-validation"), "close_validation")
    for code in (999, 1004, 1005, 1006, 1015, 5000):
        assert facts[str(code)] == INVALID_CODE.format(code), code
    for label in ("1000", "1001", "1011", "1012", "1014", "1016", "2999", "3000", "4000", "4999",
                  "no args", "code only", "reason 123", "float", "str code"):
        assert facts[label] is None, label
        assert facts[f"{label} state"] == 2, label  # CLOSING until the peer's close arrives
    assert facts["reason 124"] == (
        "JsException: SyntaxError: WebSocket close reason must not be longer than 123 bytes "
        "when UTF-8 encoded."
    )
    assert facts["second close"] is None  # ignored
    assert facts["send after close"] == SEND_AFTER_CLOSE
    unaccepted = ("JsException: TypeError: You must call one of accept() or "
                  "state.acceptWebSocket() on this WebSocket before sending messages.")
    assert facts["unaccepted close"] == facts["unaccepted send"] == unaccepted
    # Every socket closed above is still listed by getWebSockets(), as CLOSING.
    assert 2 in facts["closing listed"]


@pytest.mark.parametrize(
    ("code", "reason", "client_sees"),
    [(1000, "bye", (1000, "bye")), (4000, "bye", (4000, "bye")), (1011, "oops", (1011, "oops")),
     (3000, "", (3000, "")), (None, None, (1005, ""))],
)
async def test_a_close_by_the_object_reaches_the_client(
    probe_worker: ProbeWorker, connect: Connect, code: int | None, reason: str | None,
    client_sees: tuple[int, str],
) -> None:
    """The client gets the code and reason; its echo reaches webSocketClose, socket CLOSED."""
    obj = probe_worker.name("object-closes")
    ws = await connect(probe_worker.ws_url(obj, "a"))
    cmd: dict[str, Any] = {"op": "close"}
    if code is not None:
        cmd.update(code=code, reason=reason)
    await ws.send(json.dumps(cmd))
    rcvd = await server_close(ws, 10)
    assert (rcvd.code, rcvd.reason) == client_sees
    (event,) = await events_of(probe_worker, obj, "webSocketClose", 1)
    assert (event["code"], event["reason"], event["was_clean"]) == (*client_sees, True)
    assert event["types"] == ["int", "str", "bool"]
    # The object's own close was sent first, so the socket is CLOSED (3) in webSocketClose, yet
    # still listed by getWebSockets() during that handler; sending on it throws.
    assert (event["ready_state"], event["listed"], event["sockets"]) == (3, True, [3])
    assert event["send_in_close"] == SEND_AFTER_CLOSE


async def test_codes_that_never_go_on_the_wire_are_refused(
    probe_worker: ProbeWorker, connect: Connect
) -> None:
    obj = probe_worker.name("unsendable")
    ws = await connect(probe_worker.ws_url(obj, "a"))
    for code in (1005, 1006, 1015):
        reply = await command(ws, op="close", code=code, reason="r")
        assert reply == {"close_error": INVALID_CODE.format(code)}
    assert (await command(ws, op="echo", text="still open")) == {"echo": "still open"}
    await ws.close()


@pytest.mark.parametrize("code", [1000, 1001, 4000])
async def test_a_client_close_is_not_answered_by_the_runtime(
    probe_worker: ProbeWorker, connect: Connect, code: int
) -> None:
    """Hibernatable sockets get no automatic close reply (web_socket_auto_reply_to_close is on).

    webSocketClose sees the socket CLOSING (2) and listed; until the object calls close(), the
    client's closing handshake stays open (the client times out).
    """
    obj = probe_worker.name("client-closes")
    ws = await connect(probe_worker.ws_url(obj, "a"))
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(ws.close(code, "cya"), 3)
    assert time.monotonic() - started >= 3
    assert ws.protocol.close_rcvd is None
    (event,) = await events_of(probe_worker, obj, "webSocketClose", 1)
    assert (event["code"], event["reason"], event["was_clean"]) == (code, "cya", True)
    assert (event["ready_state"], event["listed"], event["sockets"]) == (2, True, [2])
    assert event["send_in_close"] is None  # the client closed its side only


async def test_the_object_answers_a_client_close_with_its_own_code(
    probe_worker: ProbeWorker, connect: Connect,
) -> None:
    obj = probe_worker.name("answered")
    ws = await connect(probe_worker.ws_url(obj, "a", answer=True))
    await asyncio.wait_for(ws.close(4000, "cya"), timeout(5))
    rcvd = ws.protocol.close_rcvd
    assert rcvd is not None
    assert (rcvd.code, rcvd.reason) == (4000, "answer")
    (event,) = await events_of(probe_worker, obj, "webSocketClose", 1)
    assert event["ready_state"] == 2
    assert event["answer_same_code"] is None  # the first close() answers the handshake
    assert event["answer_1000"] is None  # a second close() is ignored
    assert event["ready_state_after_answer"] == 3


async def test_a_dropped_connection(probe_worker: ProbeWorker, connect: Connect) -> None:
    """No close frame: webSocketClose (not webSocketError) with 1006, socket CLOSING."""
    obj = probe_worker.name("dropped")
    ws = await connect(probe_worker.ws_url(obj, "a", answer=True))
    ws.transport.abort()
    (event,) = await events_of(probe_worker, obj, "webSocketClose", 1)
    assert (event["code"], event["reason"], event["was_clean"]) == (1006, DROPPED, False)
    assert (event["ready_state"], event["listed"]) == (2, True)
    # 1006 cannot be sent; close(1000) on the dead socket does not throw.
    assert event["answer_same_code"] == INVALID_CODE.format(1006)
    assert event["answer_1000"] is None
    assert event["ready_state_after_answer"] == 3
    assert await events_of(probe_worker, obj, "webSocketError") == []


async def test_get_websockets_lists_closing_sockets_until_their_close_event(
    probe_worker: ProbeWorker, connect: Connect,
) -> None:
    obj = probe_worker.name("closing")
    a = await connect(probe_worker.ws_url(obj, "a"))
    b = await connect(probe_worker.ws_url(obj, "b"))
    await command(b, op="echo", text="b is active")  # see the eviction test for why
    reply = await command(a, op="close_other", tag="b", code=4001)
    assert reply["other_ready_state"] == 2
    assert [(s["tags"], s["ready_state"]) for s in reply["sockets"]] == [(["b"], 2), (["a"], 1)]
    assert reply["send_after_close"] == SEND_AFTER_CLOSE
    assert (await server_close(b, 10)).code == 4001
    await events_of(probe_worker, obj, "webSocketClose", 1)
    info = await command(a, op="info")
    assert [s["tags"] for s in info["sockets"]] == [["a"]]  # gone once its close was handled
    # A client close the object never answers: gone after webSocketClose too, though CLOSING.
    c = await connect(probe_worker.ws_url(obj, "c"))
    await c.send(json.dumps({"op": "echo", "text": "c"}))
    await c.recv()
    c.protocol.send_close(4002, "half")
    c.send_data()
    await events_of(probe_worker, obj, "webSocketClose", 2)
    info = await command(a, op="info")
    assert [s["tags"] for s in info["sockets"]] == [["a"]]
    await a.close()


async def test_websocket_methods_called_through_the_prototype(
    probe_worker: ProbeWorker, connect: Connect
) -> None:
    """§3.10: `WebSocket.prototype.send`, `deserializeAttachment` and the `readyState` getter,
    bound to `Function.prototype.call`, work on any socket, one at a time or in a JS map."""
    obj = probe_worker.name("prototype")
    a = await connect(probe_worker.ws_url(obj, "a"))
    b = await connect(probe_worker.ws_url(obj, "b"))
    await command(b, op="echo", text="b is active")
    await a.send(json.dumps({"op": "prototype_calls", "text": "hi"}))
    frames = [json.loads(await asyncio.wait_for(a.recv(), timeout(10))) for _ in range(2)]
    assert frames[0] == {"by_prototype": "hi"}  # sent to every open socket, a included
    report = frames[1]
    assert report["mapped"] == report["direct"]
    assert [state for _, state in report["mapped"]] == [1, 1]
    assert all('"tags"' in attachment for attachment, _ in report["mapped"])
    assert report["readyState_own_property"] == "NoneType"  # an accessor of the prototype
    assert json.loads(await asyncio.wait_for(b.recv(), timeout(10))) == {"by_prototype": "hi"}
    await a.close()
    await b.close()


async def test_auto_response_answers_without_an_event(
    probe_worker: ProbeWorker, connect: Connect
) -> None:
    obj = probe_worker.name("auto")
    ws = await connect(probe_worker.ws_url(obj, "a"))
    before = await command(ws, op="info")
    assert before["auto_response_timestamp"] == "jsnull"
    await ws.send("ping")
    assert await asyncio.wait_for(ws.recv(), timeout(5)) == "pong"
    after = await command(ws, op="info")
    assert after["auto_response_timestamp"] == "JsProxy:Date"
    assert after["constructions"] == before["constructions"]
    await ws.close()


async def test_frames_in_and_out(probe_worker: ProbeWorker, connect: Connect) -> None:
    """Binary frames arrive as ArrayBuffer; ws.send(bytes) sends the TEXT of their repr."""
    obj = probe_worker.name("frames")
    ws = await connect(probe_worker.ws_url(obj, "a"))
    await ws.send(b"\x01\x02")
    assert json.loads(await ws.recv()) == {"binary": "JsProxy:ArrayBuffer"}
    await ws.send(json.dumps({"op": "send_bytes"}))
    assert await ws.recv() == "b'xy'"
    await ws.send(json.dumps({"op": "send_binary"}))
    assert await ws.recv() == b"\x00\x01"
    await ws.close()


@pytest.mark.parametrize("op", ["send_abort", "write_send_abort"])
async def test_abort_cuts_the_sockets_and_drops_a_send_of_the_same_event(
    probe_worker: ProbeWorker, connect: Connect, op: str
) -> None:
    """ctx.abort(): every hibernatable socket is cut without a close frame (the client sees
    1006); a frame sent earlier in the same event never leaves and a write made in it is lost,
    whether or not a write came before the send. So an abort cannot show the output gate at
    work (docs/cloudflare.md §8)."""
    obj = probe_worker.name("abort")
    ws = await connect(probe_worker.ws_url(obj, "a"))
    await ws.send(json.dumps({"op": op}))
    with pytest.raises(websockets.ConnectionClosedError) as closed:
        await asyncio.wait_for(ws.recv(), timeout(10))  # the send before the abort: never
    assert closed.value.rcvd is None  # no close frame: 1006
    assert ws.close_code == 1006
    inits = await events_of(probe_worker, obj, "init")
    assert [i["constructions"] for i in inits] == [1, 2]  # rebuilt by that request
    config = await asyncio.to_thread(probe_worker.probe, obj, "config")
    assert config == {}  # the write made in the aborted event never committed either


# ------------------------------------------------------------------------------ storage


def test_sql_through_the_sdk_and_raw(probe_worker: ProbeWorker) -> None:
    facts = probe_worker.probe(probe_worker.name("sql"), "sql")
    assert (facts["wrapper"], facts["raw"]) == ("_BindingWrapper", "JsProxy:SqlStorage")
    for key in ("bool", "int", "float", "blob", "none", "str", "list"):
        assert facts[f"bind {key}"] is None, key
    # Pyodide hands ints from 2**53 - 1 up to JS as BigInt, which SQL bindings refuse.
    bigint = "JsException: TypeError: Cannot convert a BigInt value to a number"
    assert facts["bind max_safe"] == facts["bind big"] == bigint
    assert facts["bind bytearray"] == "TypeError: <class 'bytearray'> cannot be sent over RPC."
    assert facts["bind tuple"] == "TypeError: <class 'tuple'> cannot be sent over RPC."
    # The SDK turns a list or dict into a JS Array or Object; SQL binds its String().
    assert facts["list stored as"] == [["1,2", "text"]]
    assert facts["dict stored as"] == [["[object Object]", "text"]]
    assert facts["rows"] == {
        "bool": ["true", "text", "str", "JsDict"],
        "int": [7, "real", "int", "JsDict"],  # a JS number binds as a double
        "float": [1.5, "real", "float", "JsDict"],
        "blob": [[0, 1], "blob", "memoryview", "JsDict"],
        "none": [None, "null", "NoneType", "JsDict"],
        "str": ["s", "text", "str", "JsDict"],
    }
    assert (facts["cursor"], facts["raw_iter"]) == ("_BindingWrapper", "_BindingWrapper")
    assert facts["raw_rows"] == [
        ["list", ["str", "memoryview"]], ["list", ["str", "int"]], ["list", ["str", "NoneType"]],
    ]
    assert facts["js_raw_rows"] == [
        ["JsProxy:Array", ["str", "JsProxy:ArrayBuffer"]],
        ["JsProxy:Array", ["str", "int"]],
        ["JsProxy:Array", ["str", "jsnull"]],
    ]
    assert facts["js_row_objects"] == ["JsProxy:Object"]
    assert facts["int64"] == ["float", 9007199254740992.0]
    assert facts["int_literal"] == "int"
    assert facts["columns"] == ["list", ["a", "b"]]
    assert facts["toArray"] == "list"
    one = "JsException: Error: Expected exactly one result from SQL query, but got {} results."
    assert facts["one none"] == one.format("no")
    assert facts["one two"] == one.format("multiple")
    for key in ("begin", "savepoint"):
        assert "state.storage.transactionSync() APIs instead of the SQL BEGIN" in facts[key]
    assert facts["cf table before kv"] == "JsException: Error: no such table: _cf_KV: SQLITE_ERROR"
    assert facts["cf table"] == (
        "JsException: Error: access to _cf_KV.key is prohibited: SQLITE_AUTH"
    )
    for key in ("cf create", "pragma wal", "pragma page_count", "attach"):
        assert facts[key] == "JsException: Error: not authorized: SQLITE_AUTH", key
    assert facts["table_info"] == ["k", "v"]
    assert facts["params not last"] == (
        "JsException: Error: When executing multiple SQL statements in a single call, only the "
        "last statement can have parameters."
    )
    assert facts["wrong arity"] == (
        "JsException: Error: Wrong number of parameter bindings for SQL query."
    )
    assert facts["written"] == 4  # two rows, each written to the table and its key's index
    assert facts["transaction error"] == "ValueError: boom"
    assert facts["rolled back"] == 0
    assert facts["transaction result"] == ["int", 42]


def test_database_size_through_the_sdk_wrapper_is_cached(probe_worker: ProbeWorker) -> None:
    """`sql.databaseSize` keeps its first value through the wrapper; `sql["databaseSize"]` not."""
    facts = probe_worker.probe(probe_worker.name("size"), "size")
    assert facts["same_wrapper"] is True  # ctx.storage.sql is one cached wrapper too
    first, later = facts["attr"]
    assert later == first
    assert facts["item"][0] == first
    assert facts["item"][1] > first
    assert facts["raw"] == facts["item"][1]
    assert facts["raw_item"] == "TypeError: 'pyodide.ffi.JsProxy' object is not subscriptable"
    assert facts["types"] == ["int", "int"]


def test_kv_storage(probe_worker: ProbeWorker) -> None:
    facts = probe_worker.probe(probe_worker.name("kv"), "kv")
    assert facts == {"dict": ["JsDict", {"a": [1, 2]}], "missing": None}


def test_alarm_api(probe_worker: ProbeWorker) -> None:
    facts = probe_worker.probe(probe_worker.name("alarm-api"), "alarm_api")
    assert facts["initial"] is None
    assert facts["future"] == [True, "int"]  # epoch ms, back as an int through the SDK
    refused = "JsException: TypeError: setAlarm() cannot be called with an alarm time <= 0"
    assert facts["zero"] == facts["negative"] == refused
    assert facts["string"] == (
        "JsException: TypeError: Failed to execute 'setAlarm' on 'DurableObjectStorage': "
        "parameter 1 is not of type 'date'."
    )
    assert facts["datetime"] == 60_000  # a datetime goes through the SDK as a Date
    assert facts["deleted"] is None
    assert (facts["raw_get"], facts["raw_deleted"]) == ("int", "jsnull")


@pytest.mark.parametrize("when", ["seconds", "an hour ago"])
def test_an_alarm_in_the_past_fires_at_once(probe_worker: ProbeWorker, when: str) -> None:
    """A time in the past (epoch *seconds* are one, in January 1970) is moved to now."""
    obj = probe_worker.name("alarm-past")
    at = int(time.time()) if when == "seconds" else int(time.time() * 1000) - 3_600_000
    facts = probe_worker.probe(obj, "arm_alarm", at=at)
    assert facts["get"] != at
    assert facts["before_ms"] <= facts["get"] <= facts["before_ms"] + 1000
    (fired,) = probe_worker.wait_events(obj, "alarm", 1)
    assert fired["at_ms"] - facts["get"] < 2000
    assert (fired["retry_count"], fired["is_retry"]) == (0, False)


def test_a_failing_alarm_is_retried_with_backoff(probe_worker: ProbeWorker) -> None:
    """An exception in alarm() is retried after 2 s, then 4 s (plus up to 25% jitter)."""
    obj = probe_worker.name("alarm-retry")
    armed = probe_worker.probe(obj, "arm_alarm", in_ms=200, fail=2)
    runs = probe_worker.wait_events(obj, "alarm", 3, seconds=20)
    assert [(r["retry_count"], r["is_retry"], r.get("raised", False)) for r in runs] == [
        (0, False, True), (1, True, True), (2, True, False)]
    assert runs[0]["info_type"] == "JsProxy:AlarmInvocationInfo"
    assert all(r["get_alarm_inside"] is None for r in runs)  # no alarm while one runs
    assert runs[0]["at_ms"] - armed["get"] < 1000
    first_gap = runs[1]["at_ms"] - runs[0]["at_ms"]
    second_gap = runs[2]["at_ms"] - runs[1]["at_ms"]
    slack = timeout(1.5) * 1000  # a busy machine runs an alarm late, never early
    # Never early: measured from the alarm's set time, since a late first run would shorten the
    # gap between runs (seen: 1,906 ms on a loaded machine).
    assert runs[1]["at_ms"] - armed["get"] >= 2000, first_gap
    assert runs[2]["at_ms"] - armed["get"] >= 2000 + 4000, second_gap
    assert first_gap <= 2500 + slack, first_gap
    assert second_gap <= 5000 + slack, second_gap


# ------------------------------------------------------------------------------ D1 and R2


def test_d1_bindings_and_results(probe_worker: ProbeWorker) -> None:
    facts = probe_worker.probe(probe_worker.name("d1"), "d1")
    assert facts["binding"] == "_BindingWrapper"
    for key in ("none", "bool", "int", "float", "str", "blob"):
        assert facts[f"bind {key}"] is None, key
    bigint = "JsException: Error: D1_TYPE_ERROR: Type 'bigint' not supported for value '{}'"
    assert facts["bind max_safe"] == bigint.format(2**53 - 1)
    assert facts["bind big"] == bigint.format(2**53 + 1)
    assert facts["bind tuple"] == "TypeError: <class 'tuple'> cannot be sent over RPC."
    assert facts["bind bytearray"] == "TypeError: <class 'bytearray'> cannot be sent over RPC."
    assert facts["all"] == ["JsDict", ["meta", "results", "success"]]
    assert {"changes", "last_row_id", "rows_read", "rows_written", "duration"} <= set(
        facts["meta keys"])
    # None binds NULL; a bool binds 1; numbers bind as REAL (a column without affinity keeps
    # them so); a BLOB comes back as a list of byte values.
    assert facts["rows"] == {
        "blob": [[0, 1], "blob", "list", "JsDict"],
        "bool": [1, "real", "int", "JsDict"],
        "float": [1.5, "real", "float", "JsDict"],
        "int": [7, "real", "int", "JsDict"],
        "none": [None, "null", "NoneType", "JsDict"],
        "str": ["s", "text", "str", "JsDict"],
    }
    assert facts["run"] == ["JsDict", ["meta", "results", "success"], [], 1, "int"]
    assert facts["first"] == {"k": "blob"}
    assert facts["first col"] == "blob"
    assert facts["first none"] is None
    assert facts["first missing col"] == (
        "JsException: Error: D1_COLUMN_NOTFOUND: Column not found (nope)"
    )
    assert facts["raw"] == ["list", [["int", 7], ["none", None]]]
    assert facts["batch"] == ["list", ["JsDict", "JsDict"], [[{"a": 1}], [{"b": 2}]]]
    no_table = "JsException: Error: D1_ERROR: no such table: nope: SQLITE_ERROR"
    assert facts["batch error"] == facts["error"] == no_table
    assert facts["batch rolled back"] is True
    assert facts["empty results"] == []


def test_r2_bodies(probe_worker: ProbeWorker) -> None:
    facts = probe_worker.probe(probe_worker.name("r2"), "r2")
    assert facts["binding"] == "_BindingWrapper"
    assert facts["put"] == ["_BindingWrapper", "k", 2]
    assert facts["put bytearray"] == "TypeError: <class 'bytearray'> cannot be sent over RPC."
    assert facts["put memoryview"] is None
    assert facts["put str"] is None
    assert facts["get"] == "_BindingWrapper"
    assert facts["arrayBuffer"] == ["memoryview", [0, 255]]
    assert facts["to_bytes"] is False  # a memoryview: bytes(view), not .to_bytes()
    assert facts["text"] == "text"
    assert facts["missing"] == "NoneType"
    assert facts["head"] == "_BindingWrapper"
    assert facts["list"] == ["JsDict", ["k"]]


# ------------------------------------------------------------------------------ eviction


def test_command_line_flags_replace_the_configured_ones(probe_worker: ProbeWorker) -> None:
    """`wrangler dev --compatibility-flag` replaces wrangler.jsonc's compatibility_flags.

    The probe config lists enable_ctx_version_metadata; the command line (LOCAL_FLAGS and
    unsafe_module) does not, and it is off. python_workers stays on all the same.
    """
    flags = probe_worker.get("/flags")
    assert flags == {
        "python_workers": True,
        "python_workers_development": True,
        "unsafe_module": True,
        "web_socket_auto_reply_to_close": True,  # implied by the date, 2026-11-01
        "python_workers_314": False,
        "enable_ctx_version_metadata": False,  # configured, but dropped
    }


async def test_an_evicted_object_is_rebuilt_by_its_next_event(
    probe_worker: ProbeWorker, connect: Connect,
) -> None:
    """Evicted on demand (`workerd:unsafe`): sockets stay open with tags and attachments, the
    runtime answers the auto-response without rebuilding the object, the next message runs
    __init__ again in the same isolate (module globals survive), and the old instance's
    WebSocket objects are dead."""
    obj = probe_worker.name("evicted")
    ws = await connect(probe_worker.ws_url(obj, "a"))
    assert await command(ws, op="keep") == {"kept": True}
    assert await asyncio.to_thread(probe_worker.evict, obj) == {"evicted": True}
    again = await asyncio.to_thread(probe_worker.evict, obj)
    assert again == {
        "evicted": False,
        "error": "JsException: Error: Cannot evict Durable Object: it is not currently running.",
    }
    await ws.send("ping")
    assert await asyncio.wait_for(ws.recv(), timeout(5)) == "pong"
    stale = await command(ws, op="use_kept")  # rebuilds the object
    dead = ("JsException: Error: Cannot perform I/O on behalf of a different Durable Object. "
            "I/O objects (such as streams, request/response bodies, and others) created in the "
            "context of one Durable Object cannot be accessed from a different Durable Object "
            "in the same isolate.")
    assert stale["same"] is False
    assert stale["ready_state"].startswith(dead)
    assert stale["send"].startswith(dead)
    info = await command(ws, op="info")
    assert info["constructions"] == 2  # the ping did not construct it
    assert info["sockets"] == [
        {"ready_state": 1, "tags": ["a"], "attachment": '{"tags": ["a"], "answer": false}'}
    ]
    assert info["auto_response_timestamp"] == "JsProxy:Date"
    inits = await events_of(probe_worker, obj, "init")
    assert [i["constructions"] for i in inits] == [1, 2]
    # Rebuilt with the same JS env object as every object of the isolate before it: what
    # objects.room relies on to read env once per isolate (it checks, so this is speed only).
    assert [i["same_env"] for i in inits] == [True, True]


async def test_an_idle_object_is_evicted_and_rebuilt_while_its_sockets_stay_open(
    probe_worker: ProbeWorker, connect: Connect,
) -> None:
    """After 10 s without events the object is evicted; the next event runs __init__ again.

    Auto-responses (ping/pong) are not events and do not keep an object awake. Its sockets stay
    open through the eviction, with their tags and attachments.

    Seen on the side: a close() of a socket whose client never sent a frame, made from another
    socket's event, is not sent at once. In isolation it reached its client 10 s later, when the
    object was evicted; here other objects are being evicted around it, so only "by then" is
    asserted. A socket that has sent a frame gets its close at once (the test above).
    """
    idle, pinged = probe_worker.name("idle"), probe_worker.name("pinged")
    a = await connect(probe_worker.ws_url(idle, "a"))
    silent = await connect(probe_worker.ws_url(idle, "silent"))
    p = await connect(probe_worker.ws_url(pinged, "p"))
    assert (await command(a, op="info"))["constructions"] == 1
    assert (await command(p, op="info"))["constructions"] == 1
    await command(a, op="close_other", tag="silent", code=4009)
    started = time.monotonic()
    while time.monotonic() - started < EVICTION_S + 2:
        await p.send("ping")
        assert await asyncio.wait_for(p.recv(), timeout(5)) == "pong"
        await asyncio.sleep(0.5)
    closed = silent.protocol.close_rcvd
    assert closed is not None
    assert closed.code == 4009
    info = await command(a, op="info")
    assert info["constructions"] == 2  # evicted, rebuilt by this message
    assert info["sockets"] == [
        {"ready_state": 1, "tags": ["a"], "attachment": '{"tags": ["a"], "answer": false}'}
    ]
    assert (await command(p, op="info"))["constructions"] == 2
    inits = await events_of(probe_worker, idle, "init")
    assert [i["constructions"] for i in inits] == [1, 2]
    assert [i["same_env"] for i in inits] == [True, True]  # one env object per isolate

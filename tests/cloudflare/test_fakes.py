"""The fakes enforce the runtime's rules, so an adapter that breaks one fails its tests.

Each test makes the mistake on purpose, directly against the fake, and checks the failure the
real runtime would give (reference sections in fake_js.py).
"""

from __future__ import annotations

import asyncio
import datetime
import json
import time
from typing import Any

import pytest

from objects.room import Room
from rooms.protocol import PING_TEXT
from tests.cloudflare import fake_js
from tests.cloudflare.fake_bindings import D1Database, R2Bucket
from tests.cloudflare.fake_js import (
    WS_CLOSING,
    DurableObjectId,
    DurableObjectState,
    DurableObjectStorage,
    JsException,
    JsObject,
    Request,
    Response,
    WebSocketPair,
    build_module,
)
from tests.cloudflare.fake_pyodide import to_js
from tests.cloudflare.fake_workers import DurableObjectContext, _EnvWrapper
from tests.cloudflare.support import check_clean, make_cloudflare, token


@pytest.fixture
def ctx() -> DurableObjectState:
    return DurableObjectState(DurableObjectId("00", "t"), DurableObjectStorage())


def test_accept_websocket_rejects_a_python_list_of_tags(ctx: DurableObjectState) -> None:
    """A list reaches JS as a PyProxy: 'parameter 2 is not of type Array'."""
    _, server = WebSocketPair()
    with pytest.raises(TypeError, match="parameter 2 is not of type 'Array'"):
        ctx.acceptWebSocket(server, ["c:1"])
    ctx.acceptWebSocket(server, to_js(["c:1"]))
    assert list(ctx.getTags(server)) == ["c:1"]


def test_accept_websocket_enforces_the_tag_limits(ctx: DurableObjectState) -> None:
    """At most 10 tags of at most 256 UTF-8 bytes, duplicates dropped (measured in workerd)."""
    with pytest.raises(JsException, match="more than 10 tags"):
        ctx.acceptWebSocket(WebSocketPair()[1], to_js([f"t{i}" for i in range(11)]))
    with pytest.raises(JsException, match="more than 10 tags"):  # the repeat comes 11th
        ctx.acceptWebSocket(WebSocketPair()[1], to_js([f"t{i}" for i in range(10)] + ["t0"]))
    early = WebSocketPair()[1]
    ctx.acceptWebSocket(early, to_js(["t0", "t0"] + [f"t{i}" for i in range(1, 10)]))
    assert list(ctx.getTags(early)) == [f"t{i}" for i in range(10)]
    too_long = 'is longer than the max tag length \\(256 characters\\)'
    with pytest.raises(JsException, match=too_long):
        ctx.acceptWebSocket(WebSocketPair()[1], to_js(["x" * 257]))
    with pytest.raises(JsException, match=too_long):
        ctx.acceptWebSocket(WebSocketPair()[1], to_js(["é" * 129]))  # 258 bytes
    ctx.acceptWebSocket(WebSocketPair()[1], to_js(["é" * 128]))
    ctx.acceptWebSocket(WebSocketPair()[1], to_js(["x" * 256] * 10))
    with pytest.raises(JsException, match="you must call 'acceptWebSocket\\(\\)' before"):
        ctx.getTags(WebSocketPair()[1])


def test_accepted_socket_cannot_be_accepted_again_or_returned(ctx: DurableObjectState) -> None:
    """accept() after acceptWebSocket throws; so does accepting the client end."""
    client, server = WebSocketPair()
    ctx.acceptWebSocket(server, to_js([]))
    with pytest.raises(TypeError):
        server.accept()
    with pytest.raises(TypeError):
        ctx.acceptWebSocket(client, to_js([]))


def test_serialize_attachment_rejects_a_dict_and_anything_over_16_kib(
    ctx: DurableObjectState,
) -> None:
    """A dict is a PyProxy (DataCloneError); a str over 16 KiB is refused."""
    _, server = WebSocketPair()
    ctx.acceptWebSocket(server, to_js([]))
    with pytest.raises(JsException) as caught:
        server.serializeAttachment({"user_id": "alice"})
    assert caught.value.name == "DataCloneError"
    assert caught.value.message == "[object Object] could not be cloned."
    assert server.deserializeAttachment() is fake_js.jsnull  # nothing attached yet
    # V8's serialized size, as measured in workerd: 16379 one-byte or 8189 two-byte characters.
    server.serializeAttachment("x" * 16379)
    server.serializeAttachment("€" * 8189)
    with pytest.raises(JsException, match=r"cannot be larger than 16384 bytes\.'attachment' "
                       r"was 16385 bytes"):
        server.serializeAttachment("x" * 16380)
    with pytest.raises(JsException, match="cannot be larger than 16384 bytes"):
        server.serializeAttachment("€" * 8190)
    server.serializeAttachment(json.dumps({"user_id": "alice"}))
    assert server.deserializeAttachment() == '{"user_id": "alice"}'


def test_send_of_bytes_sends_their_repr_as_text(ctx: DurableObjectState) -> None:
    """Like the real FFI, send(b'x') does not fail: the client gets the text "b'x'"."""
    client, server = WebSocketPair()
    ctx.acceptWebSocket(server, to_js([]))
    server.send(b"\x01x")
    assert client.inbox == ["b'\\x01x'"]
    assert len(fake_js.FFI_WARNINGS) == 1  # the fixtures fail any test that leaves this
    fake_js.FFI_WARNINGS.clear()
    server.send(to_js(b"\x01x"))
    assert client.inbox[-1] == b"\x01x"


def test_send_after_close_raises_and_close_twice_does_not(ctx: DurableObjectState) -> None:
    """send() after our close() throws; a second close() is ignored."""
    _, server = WebSocketPair()
    with pytest.raises(TypeError, match="before sending"):
        server.send("too early")
    ctx.acceptWebSocket(server, to_js([]))
    server.close(1011, "internal error")
    server.close(1000, "again")
    with pytest.raises(TypeError, match="after close"):
        server.send("late")
    with pytest.raises(JsException, match="Invalid WebSocket close code: 1005") as caught:
        WebSocketPair()[0].close(1005, "")
    assert caught.value.name == "InvalidAccessError"  # as measured in workerd


def test_close_codes_and_reasons_as_workerd_checks_them(ctx: DurableObjectState) -> None:
    """Measured: numbers convert (4000.0, "4000"); a long reason is a SyntaxError."""
    for code in (4000.0, "4000", 1016, 2999):
        _, server = WebSocketPair()
        ctx.acceptWebSocket(server, to_js([]))
        server.close(code, "r")
        assert server.sent_close == (int(float(code)), "r")
    _, server = WebSocketPair()
    ctx.acceptWebSocket(server, to_js([]))
    for code in (999, 1004, 1006, 1015, 5000):
        with pytest.raises(JsException, match=f"Invalid WebSocket close code: {code}"):
            server.close(code, "r")
    with pytest.raises(JsException, match="not be longer than 123 bytes") as caught:
        server.close(4000, "r" * 124)
    assert caught.value.name == "SyntaxError"
    server.close(4000, "r" * 123)


def test_auto_response_timestamp_is_null_until_the_runtime_answers() -> None:
    cf = make_cloudflare()
    alice = cf.connect("lobby", token("alice"))
    state = cf.room("lobby").state
    assert state.getWebSocketAutoResponseTimestamp(alice.server) is fake_js.jsnull
    alice.send(PING_TEXT)
    assert isinstance(state.getWebSocketAutoResponseTimestamp(alice.server), fake_js.Date)
    check_clean(cf)


def test_a_dropped_connection_is_a_close_with_1006_and_the_room_closes_its_end() -> None:
    """Measured: webSocketClose(1006, wasClean false), CLOSING; no webSocketError."""
    cf = make_cloudflare()
    alice, bob = cf.connect("lobby", token("alice")), cf.connect("lobby", token("bob"))
    bob.drop()
    assert [p["event"] for p in alice.frames("presence")] == ["join", "leave"]
    assert bob.server.sent_close == (1000, "")  # the room's answer: 1006 cannot be sent
    assert bob.server.readyState == fake_js.WS_CLOSED
    assert bob.close_received is None  # nothing reaches a dropped client
    check_clean(cf)


def test_get_websockets_includes_closing_sockets(ctx: DurableObjectState) -> None:
    """A socket we closed stays listed (CLOSING) until its close event is delivered."""
    _, server = WebSocketPair()
    ctx.acceptWebSocket(server, to_js(["a"]))
    server.close(1000, "bye")
    assert server.readyState == WS_CLOSING
    assert list(ctx.getWebSockets()) == [server]
    assert list(ctx.getWebSockets("a")) == [server]
    assert list(ctx.getWebSockets("b")) == []


def test_sql_binds_a_bool_as_text_and_refuses_begin(ctx: DurableObjectState) -> None:
    """True is stored as 'true'; BEGIN, PRAGMA and _cf_ tables are not allowed."""
    sql = ctx.storage.sql
    sql.exec("CREATE TABLE t (flag)")
    sql.exec("INSERT INTO t VALUES (?)", True)
    assert [list(row) for row in sql.exec("SELECT flag, typeof(flag) FROM t").raw()] == [
        ["true", "text"]]
    for statement in ("BEGIN", "PRAGMA user_version", "CREATE TABLE _cf_x (a)"):
        with pytest.raises(JsException, match="not authorized"):
            sql.exec(statement)


def test_sql_binds_numbers_as_real_refuses_bigints_and_coerces_js_objects(
    ctx: DurableObjectState,
) -> None:
    """Measured in workerd: 7 is stored as REAL (and read back as 7); an int from 2**53 - 1
    up is a BigInt, refused; a JS Array or Object binds as its String()."""
    sql = ctx.storage.sql
    row = sql.exec("SELECT ? AS v, typeof(?) AS t", 7, 7).one()
    assert (row.v, row.t) == (7, "real")
    assert isinstance(row.v, int)
    sql.exec("SELECT ?", 2**53 - 2)
    for big in (2**53 - 1, 2**53 + 1):
        with pytest.raises(TypeError, match="Cannot convert a BigInt value to a number"):
            sql.exec("SELECT ?", big)
    row = sql.exec("SELECT ? AS v", fake_js.JsArray([1, 2])).one()
    assert row.v == "1,2"
    assert fake_js.FFI_WARNINGS == ["SQL binding was a JS Array; bound '1,2'"]
    fake_js.FFI_WARNINGS.clear()
    with pytest.raises(JsException, match=r"^Error: Wrong number of parameter bindings for SQL "
                       r"query\.$"):
        sql.exec("SELECT ?", 1, 2)
    with pytest.raises(JsException, match=r"only the last statement can have parameters\.$"):
        sql.exec("SELECT ?; SELECT 1", 1)


def test_sql_multi_statement_binds_the_last_and_one_needs_one_row(
    ctx: DurableObjectState,
) -> None:
    """Several statements run; bindings go to the last; one() throws unless one row."""
    sql = ctx.storage.sql
    cursor = sql.exec("CREATE TABLE t (a); INSERT INTO t VALUES (1); SELECT a + ? AS b FROM t", 1)
    assert cursor.one().b == 2
    with pytest.raises(JsException, match="exactly one"):
        sql.exec("SELECT a FROM t WHERE a > 5").one()


def test_transaction_sync_rolls_back_on_exception(ctx: DurableObjectState) -> None:
    """Writes inside a raising transactionSync callback are undone."""
    sql = ctx.storage.sql
    sql.exec("CREATE TABLE t (a)")

    def fail() -> None:
        sql.exec("INSERT INTO t VALUES (1)")
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError):
        ctx.storage.transactionSync(fail)
    assert ctx.storage.transactionSync(lambda: sql.exec("SELECT COUNT(*) FROM t").one()) \
        .to_py() == {"COUNT(*)": 0}


def test_response_allows_101_only_with_a_websocket_and_no_body() -> None:
    """workerd's Response takes status 101 with webSocket; a browser's would not."""
    client, _ = WebSocketPair()
    ok = Response.construct(None, JsObject({"status": 101, "webSocket": client}))
    assert ok.webSocket is client
    with pytest.raises(ValueError, match="101"):
        Response.construct(None, JsObject({"status": 101}))
    with pytest.raises(TypeError, match="null body"):
        Response.construct("x", JsObject({"status": 101, "webSocket": client}))
    with pytest.raises(ValueError, match="200 to 599"):
        Response.construct(None, JsObject({"status": 99}))


def test_request_init_given_as_a_python_dict_is_silently_ignored() -> None:
    """A dict init is a PyProxy with no JS properties: the headers are lost, with a warning."""
    request = Request.construct("https://x.example/", {"headers": {"x-a": "1"}})
    assert not request.headers.has("x-a")
    assert len(fake_js.FFI_WARNINGS) == 1
    fake_js.FFI_WARNINGS.clear()


def test_js_constructors_need_new() -> None:
    """js.X(...) without .new throws, as calling a JS class does."""
    js = build_module()
    with pytest.raises(TypeError, match="without 'new'"):
        js.Headers()
    assert js.Headers.new().has("x") is False


def test_hibernation_runs_init_again_and_keeps_sockets_and_storage() -> None:
    """After eviction the next event constructs a new Room over the same state."""
    cf = make_cloudflare()
    alice = cf.connect("lobby", token("alice"))
    slot = cf.room("lobby")
    first = slot.instance
    cf.hibernate()
    alice.publish("m", "hi")
    assert slot.instance is not first
    assert slot.constructions == 2
    assert alice.seqs() == [1]
    check_clean(cf)


def test_a_misspelled_handler_is_never_called() -> None:
    """workerd calls only the exact camelCase names; the event is dropped."""

    class Misspelled(Room):
        webSocketMessage = None  # type: ignore[assignment]

        async def websocketMessage(self, ws: Any, message: Any) -> None:  # pragma: no cover
            raise AssertionError("never called")

    cf = make_cloudflare(room_class=Misspelled)
    alice = cf.connect("lobby", token("alice"))
    alice.publish("m", "hi")
    assert alice.seqs() == []
    assert cf.dropped == ["webSocketMessage: no such handler"]


# --------------------------------------------------------------------------- D1, R2, alarms


def sdk_env(**bindings: Any) -> Any:
    """``self.env`` as the SDK hands it to Python code: D1 and R2 wrapped (docs/cloudflare.md
    §5.1)."""
    return _EnvWrapper(JsObject(bindings))


def run(awaitable: Any) -> Any:
    async def wait() -> Any:
        return await awaitable

    return asyncio.run(wait())


def test_d1_results_have_d1_shapes_and_bools_bind_as_integers() -> None:
    """all/run -> {success, results, meta}; first -> row or value or None; raw -> lists."""
    db = sdk_env(DB=D1Database()).DB
    run(db.exec("CREATE TABLE t (a INTEGER, b TEXT)"))
    written = run(db.prepare("INSERT INTO t VALUES (?, ?), (?, ?)").bind(True, None, 7, "x").run())
    assert (written["success"], written["meta"]["changes"], written["results"]) == (True, 2, [])
    rows = run(db.prepare("SELECT a, b FROM t ORDER BY a").all())
    assert rows["results"] == [{"a": 1, "b": None}, {"a": 7, "b": "x"}]
    assert rows["results"][1].b == "x"  # JsDict: attribute access too
    assert run(db.prepare("SELECT typeof(a) AS t FROM t WHERE a = 1").first("t")) == "integer"
    # Measured: local D1 binds numbers (and bools) as REAL; the INTEGER column above turned
    # them back into integers, a column without affinity keeps them REAL.
    assert run(db.prepare("SELECT typeof(?) AS t").bind(7).first("t")) == "real"
    with pytest.raises(JsException, match=r"D1_COLUMN_NOTFOUND: Column not found \(nope\)"):
        run(db.prepare("SELECT a FROM t").first("nope"))
    assert run(db.prepare("SELECT a FROM t WHERE a > 99").first()) is None
    assert run(db.prepare("SELECT a, b FROM t ORDER BY a").raw(columnNames=True)) == [
        ["a", "b"], [1, None], [7, "x"]]


def test_d1_refuses_undefined_and_reports_sql_errors_as_rejections() -> None:
    """A raw Python None is JS undefined (D1_TYPE_ERROR); SQL errors reject with D1_ERROR."""
    raw = D1Database()
    with pytest.raises(JsException, match="D1_TYPE_ERROR: Type 'undefined'"):
        raw.prepare("SELECT ?").bind(None)
    db = sdk_env(DB=raw).DB
    statement = db.prepare("SELECT * FROM no_such_table")  # prepare itself does not fail
    with pytest.raises(JsException, match="D1_ERROR: no such table"):
        run(statement.all())


def test_d1_batch_is_atomic_and_can_be_told_to_fail() -> None:
    """One failing statement rolls back the batch; an injected failure rejects it whole."""
    raw = D1Database()
    db = sdk_env(DB=raw).DB
    insert = "INSERT INTO rooms (name, created_ms, last_activity_ms) VALUES (?, 1, 1)"
    with pytest.raises(JsException, match="UNIQUE"):
        run(db.batch([db.prepare(insert).bind("a"), db.prepare(insert).bind("a")]))
    raw.fail_batches = 1
    with pytest.raises(JsException, match="injected"):
        run(db.batch([db.prepare(insert).bind("b")]))
    results = run(db.batch([db.prepare(insert).bind("c")]))
    assert [r["meta"]["changes"] for r in results] == [1]
    assert raw.sqlite.execute("SELECT name FROM rooms").fetchall() == [("c",)]
    with pytest.raises(TypeError, match="Array"):
        raw.batch([raw.prepare(insert).bind("d")])  # a Python list is a PyProxy, not an Array


def test_d1_has_the_migrations_applied_in_order() -> None:
    """Tables from migrations/0001 and 0002 exist, as `d1 migrations apply` leaves them."""
    tables = {row[0] for row in D1Database().sqlite.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"rooms", "segments", "audit"} <= tables


def test_r2_put_takes_bytes_but_not_a_bytearray() -> None:
    """Through the SDK bytes become a Uint8Array; a bytearray is a TypeError (docs/cloudflare.md
    §5.4)."""
    raw = R2Bucket()
    bucket = sdk_env(ARCHIVE=raw).ARCHIVE
    with pytest.raises(TypeError, match="bytearray"):
        run(bucket.put("k", bytearray(b"x")))
    with pytest.raises(TypeError, match="parameter 2"):
        raw.put("k", b"x")  # bytes that skipped the SDK's to_js are a PyProxy
    head = run(bucket.put("k", b"\x00gz", customMetadata={"room": "lobby"}))
    assert (head.key, head.size, head.httpEtag) == ("k", 3, f'"{head.etag}"')
    assert isinstance(head.uploaded, datetime.datetime)  # the SDK converts the Date
    assert raw.objects == {"k": b"\x00gz"}


def test_r2_get_head_and_list_have_r2_shapes() -> None:
    """get -> body (arrayBuffer as memoryview, once) or None; head; list with a cursor."""
    raw = R2Bucket()
    bucket = sdk_env(ARCHIVE=raw).ARCHIVE
    for key in ("rooms/a/segments/1", "rooms/a/segments/2", "rooms/b/segments/1"):
        run(bucket.put(key, key))
    body = run(bucket.get("rooms/a/segments/2"))
    data = run(body.arrayBuffer())
    assert isinstance(data, memoryview)
    assert bytes(data) == b"rooms/a/segments/2"
    with pytest.raises(TypeError, match="already been used"):
        run(body.text())
    assert run(bucket.get("missing")) is None
    assert run(bucket.head("missing")) is None
    assert run(bucket.head("rooms/b/segments/1")).size == len("rooms/b/segments/1")
    page = run(bucket.list(prefix="rooms/a/", limit=1))
    assert ([o.key for o in page["objects"]], page["truncated"]) == (["rooms/a/segments/1"], True)
    rest = run(bucket.list(prefix="rooms/a/", cursor=page["cursor"]))
    assert ([o.key for o in rest["objects"]], rest["truncated"]) == (["rooms/a/segments/2"], False)
    top = run(bucket.list(prefix="rooms/", delimiter="/"))
    assert top["delimitedPrefixes"] == ["rooms/a/", "rooms/b/"]


def test_r2_put_can_be_told_to_fail() -> None:
    raw = R2Bucket()
    bucket = sdk_env(ARCHIVE=raw).ARCHIVE
    raw.fail_puts = 1
    with pytest.raises(JsException, match="internal error"):
        run(bucket.put("k", b"x"))
    run(bucket.put("k", b"x"))
    assert (raw.objects, raw.puts) == ({"k": b"x"}, 1)


def test_alarm_takes_ms_or_a_datetime_and_get_returns_ms_or_none() -> None:
    """docs/cloudflare.md §4.9: setAlarm(ms | datetime -> Date); getAlarm() -> int ms or None;
    deleteAlarm."""
    state = DurableObjectState(DurableObjectId("00", "t"), DurableObjectStorage())
    storage = DurableObjectContext(state).storage  # SDK-wrapped, as a Room sees it
    assert run(storage.getAlarm()) is None
    run(storage.setAlarm(4_000_000_000_123))
    assert run(storage.getAlarm()) == 4_000_000_000_123
    at = datetime.datetime.fromtimestamp(4_100_000_000.5)
    run(storage.setAlarm(at))
    assert run(storage.getAlarm()) == 4_100_000_000_500
    with pytest.raises(TypeError, match="not of type 'date'"):
        run(storage.setAlarm("soon"))
    with pytest.raises(TypeError, match="alarm time <= 0"):
        run(storage.setAlarm(0))
    # As measured in workerd, a time in the past becomes now (it fires at once): epoch seconds
    # given for milliseconds are such a time.
    before = int(time.time() * 1000)
    run(storage.setAlarm(int(time.time())))
    assert before <= run(storage.getAlarm()) <= int(time.time() * 1000)
    run(storage.deleteAlarm())
    assert run(storage.getAlarm()) is None


def test_a_failing_alarm_handler_is_retried_and_a_passing_one_clears_the_alarm() -> None:
    """workerd deletes a fired alarm only when its handler succeeds; info says retry."""
    infos: list[tuple[int, bool]] = []

    class Flaky(Room):
        failures = 1

        async def alarm(self, alarm_info: Any = None) -> None:
            infos.append((alarm_info.retryCount, alarm_info.isRetry))
            if Flaky.failures:
                Flaky.failures -= 1
                raise RuntimeError("flaky")

    cf = make_cloudflare(room_class=Flaky)
    storage = cf.room("lobby").state.storage
    storage.alarm = 1
    cf.fire_alarm("lobby")
    assert storage.alarm == 1  # kept for the retry
    assert [type(e) for e in cf.escaped] == [RuntimeError]
    cf.escaped.clear()
    cf.fire_alarm("lobby")
    assert storage.alarm is None
    assert infos == [(0, False), (1, True)]
    check_clean(cf)

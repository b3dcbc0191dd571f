"""The `Sql` and `Sockets` ports on Cloudflare (`objects.platform`), against the fakes."""

from __future__ import annotations

import pytest

from objects.platform import DurableObjectSql, HibernatableSockets
from rooms.store import RoomStore
from tests.cloudflare.fake_js import (
    WS_CLOSED,
    WS_CLOSING,
    DurableObjectId,
    DurableObjectState,
    DurableObjectStorage,
    JsArray,
    WebSocket,
    WebSocketPair,
)
from tests.cloudflare.fake_workers import DurableObjectContext


@pytest.fixture(params=["sdk-wrapped", "raw"])
def storage(request: pytest.FixtureRequest) -> object:
    """``ctx.storage`` as the SDK hands it to a DO (wrapped), and the raw JS object."""
    state = DurableObjectState(DurableObjectId("00", "t"), DurableObjectStorage())
    return DurableObjectContext(state).storage if request.param == "sdk-wrapped" else state.storage


@pytest.fixture
def ctx() -> DurableObjectState:
    return DurableObjectState(DurableObjectId("00", "t"), DurableObjectStorage())


def server_socket() -> WebSocket:
    _, server = WebSocketPair()
    return server


def test_rows_come_back_as_lists_in_column_order(storage: object) -> None:
    """Rows are Python lists whichever way storage is reached; NULL is None."""
    sql = DurableObjectSql(storage)
    sql.execute("CREATE TABLE t (b TEXT, a INTEGER, c REAL)")
    sql.execute("INSERT INTO t VALUES (?, ?, ?)", "x", 2**40, None)
    assert sql.execute("SELECT b, a, c FROM t") == [["x", 2**40, None]]
    assert sql.execute("SELECT a, a FROM t") == [[2**40, 2**40]]


def test_binding_a_bool_raises_type_error(storage: object) -> None:
    """A bool would be stored as the text 'true'; the port refuses it before the platform."""
    sql = DurableObjectSql(storage)
    sql.execute("CREATE TABLE t (flag INTEGER)")
    with pytest.raises(TypeError, match="bool"):
        sql.execute("INSERT INTO t VALUES (?)", True)
    assert sql.execute("SELECT COUNT(*) FROM t") == [[0]]


def test_transaction_commits_together_and_rolls_back_on_exception(storage: object) -> None:
    """transaction() returns fn's result; an exception inside leaves nothing written."""
    sql = DurableObjectSql(storage)
    sql.execute("CREATE TABLE t (n INTEGER)")

    def write_two() -> tuple[str, int]:
        sql.execute("INSERT INTO t VALUES (1)")
        sql.execute("INSERT INTO t VALUES (2)")
        return ("done", 2)

    def write_then_fail() -> None:
        sql.execute("INSERT INTO t VALUES (3)")
        raise ValueError("stop")

    assert sql.transaction(write_two) == ("done", 2)
    with pytest.raises(ValueError, match="stop"):
        sql.transaction(write_then_fail)
    assert sql.execute("SELECT n FROM t ORDER BY n") == [[1], [2]]


def test_room_store_keeps_its_log_on_durable_object_sql(storage: object) -> None:
    """The core's RoomStore works unchanged over the port, and survives a new store instance."""
    sql = DurableObjectSql(storage)
    store = RoomStore(sql)
    store.append(id="a", user_id="u", name="U", body="one", sent_ms=5)
    again = RoomStore(sql)
    message, duplicate = again.append(id="a", user_id="u", name="U", body="x", sent_ms=6)
    assert (message.seq, message.body, duplicate) == (1, "one", True)
    assert again.head == 1
    assert [m.body for m in again.after(0, 10)] == ["one"]


def test_accept_passes_the_tags_as_a_js_array(ctx: DurableObjectState) -> None:
    """The port converts the tag list; the socket becomes hibernatable with those tags."""
    ws = server_socket()
    HibernatableSockets(ctx).accept(ws, ["c:1", "u:alice"])
    ((accepted, tags),) = ctx.accept_calls
    assert accepted is ws
    assert isinstance(tags, JsArray)
    assert list(ctx.getTags(ws)) == ["c:1", "u:alice"]


def test_all_includes_closing_sockets_and_is_open_tells_them_apart(
    ctx: DurableObjectState,
) -> None:
    """getWebSockets lists a CLOSING socket; is_open is true only for OPEN ones."""
    sockets = HibernatableSockets(ctx)
    open_ws, closing_ws = server_socket(), server_socket()
    sockets.accept(open_ws, [])
    sockets.accept(closing_ws, [])
    closing_ws.close(1000, "bye")
    assert closing_ws.readyState == WS_CLOSING
    assert sockets.all() == [open_ws, closing_ws]
    assert [sockets.is_open(ws) for ws in sockets.all()] == [True, False]


def test_attachment_round_trips_as_a_string(ctx: DurableObjectState) -> None:
    """Attachments are written as str and read back as str; nothing attached reads as None."""
    sockets = HibernatableSockets(ctx)
    ws = server_socket()
    sockets.accept(ws, [])
    assert sockets.attachment(ws) is None
    sockets.set_attachment(ws, '{"v":1}')
    assert sockets.attachment(ws) == '{"v":1}'
    assert ws.attachment_writes == ['{"v":1}']
    with pytest.raises(TypeError):
        sockets.set_attachment(ws, {"v": 1})  # type: ignore[arg-type]


def test_send_takes_text_only(ctx: DurableObjectState) -> None:
    """The port sends str frames and refuses bytes, which the runtime would send as "b'...'"."""
    sockets = HibernatableSockets(ctx)
    client, server = WebSocketPair()
    sockets.accept(server, [])
    sockets.send(server, "hi")
    with pytest.raises(TypeError):
        sockets.send(server, b"hi")  # type: ignore[arg-type]
    assert client.inbox == ["hi"]


def test_answer_close_replies_only_to_an_unanswered_close(ctx: DurableObjectState) -> None:
    """A CLOSING socket gets our close (1005 becomes 1000); a CLOSED one is left alone."""
    sockets = HibernatableSockets(ctx)
    client, server = WebSocketPair()
    sockets.accept(server, [])
    server.got_close, server.readyState = (1005, ""), WS_CLOSING
    sockets.answer_close(server, 1005)
    assert (server.readyState, client.got_close) == (WS_CLOSED, (1000, ""))
    sockets.answer_close(server, 1000)  # already closed: nothing more is sent
    assert server.sent_close == (1000, "")

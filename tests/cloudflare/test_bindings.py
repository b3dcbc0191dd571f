"""The archive ports on Cloudflare (`objects.bindings`) over the SDK-wrapped fake bindings."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

import pytest

from objects.bindings import D1Database, DurableObjectAlarms, R2Bucket
from objects.platform import DurableObjectSql
from rooms.archive import ArchiveIndex
from tests.cloudflare import fake_bindings
from tests.cloudflare.fake_js import (
    DurableObjectId,
    DurableObjectState,
    DurableObjectStorage,
    JsException,
    JsObject,
)
from tests.cloudflare.fake_workers import DurableObjectContext, _EnvWrapper

T = TypeVar("T")


def run(awaitable: Awaitable[T]) -> T:
    async def wait() -> T:
        return await awaitable

    return asyncio.run(wait())


@pytest.fixture
def d1() -> fake_bindings.D1Database:
    return fake_bindings.D1Database()


@pytest.fixture
def r2() -> fake_bindings.R2Bucket:
    return fake_bindings.R2Bucket()


def env(**bindings: Any) -> Any:
    return _EnvWrapper(JsObject(bindings))  # what a Room's self.env is (docs/cloudflare.md §5.1)


def test_d1_rows_are_plain_dicts_and_none_binds_as_null(d1: fake_bindings.D1Database) -> None:
    db = D1Database(env(DB=d1).DB)
    run(db.batch([("CREATE TABLE t (a INTEGER, b TEXT)", ()),
                  ("INSERT INTO t VALUES (?, ?)", (1, None))]))
    rows = run(db.all("SELECT a, b FROM t WHERE a = ?", 1))
    assert rows == [{"a": 1, "b": None}]
    assert type(rows[0]) is dict


def test_d1_batch_is_one_transaction(d1: fake_bindings.D1Database) -> None:
    """docs/cloudflare.md §5.3: a failing statement leaves none of the batch written, and the error
    propagates."""
    db = D1Database(env(DB=d1).DB)
    insert = "INSERT INTO rooms (name, created_ms, last_activity_ms) VALUES (?, 1, 1)"
    with pytest.raises(JsException, match="UNIQUE"):
        run(db.batch([(insert, ("a",)), (insert, ("a",))]))
    assert run(db.all("SELECT name FROM rooms")) == []


def test_archive_index_round_trips_through_d1(d1: fake_bindings.D1Database) -> None:
    """The core's index writes one segment row and upserts the room; a retry adds nothing."""
    index = ArchiveIndex(D1Database(env(DB=d1).DB))
    for _ in range(2):
        run(index.record("lobby", 1, 4, 99, "k", 1000, head=5, members=2))
    rows = run(index.segments("lobby", 1, 100))
    assert [(r["first_seq"], r["last_seq"], r["count"], r["key"]) for r in rows] == [
        (1, 4, 4, "k")]
    room = run(D1Database(env(DB=d1).DB).all("SELECT head_seq, archived_seq FROM rooms"))
    assert room == [{"head_seq": 5, "archived_seq": 4}]


def test_r2_put_sends_bytes_and_get_returns_bytes(r2: fake_bindings.R2Bucket) -> None:
    """docs/cloudflare.md §5.4: a bytearray would be a TypeError in the SDK, so the port sends
    bytes; get copies out."""
    bucket = R2Bucket(env(ARCHIVE=r2).ARCHIVE)
    run(bucket.put("rooms/x/segments/1", bytearray(b"\x1f\x8b data")))  # type: ignore[arg-type]
    got = run(bucket.get("rooms/x/segments/1"))
    assert (type(got), got) == (bytes, b"\x1f\x8b data")
    assert run(bucket.get("rooms/x/segments/2")) is None


def test_r2_failures_propagate(r2: fake_bindings.R2Bucket) -> None:
    bucket = R2Bucket(env(ARCHIVE=r2).ARCHIVE)
    r2.fail_puts, r2.fail_gets = 1, 1
    with pytest.raises(JsException):
        run(bucket.put("k", b"x"))
    with pytest.raises(JsException):
        run(bucket.get("k"))


def test_alarm_port_sets_the_object_alarm_in_epoch_ms() -> None:
    """A time in the past (epoch seconds are one) would be moved to now, as workerd does."""
    state = DurableObjectState(DurableObjectId("00", "t"), DurableObjectStorage())
    storage = DurableObjectContext(state).storage
    at_ms = int(time.time() * 1000) + 3_600_000
    run(DurableObjectAlarms(storage).set(at_ms))
    assert run(storage.getAlarm()) == at_ms


@pytest.mark.parametrize("wrapped", [True, False], ids=["sdk-wrapped", "raw"])
def test_sql_size_is_the_current_database_size(wrapped: bool) -> None:
    """`size_bytes` is `ctx.storage.sql.databaseSize` (docs/cloudflare.md §4.5), read afresh every
    time even though the SDK wrapper caches attributes."""
    state = DurableObjectState(DurableObjectId("00", "t"), DurableObjectStorage())
    storage = DurableObjectContext(state).storage if wrapped else state.storage
    sql = DurableObjectSql(storage)
    sql.execute("CREATE TABLE t (a TEXT)")
    before = sql.size_bytes()
    for _ in range(50):
        sql.execute("INSERT INTO t VALUES (?)", "x" * 1000)
    assert sql.size_bytes() > before > 0


def test_d1_refuses_an_int_that_pyodide_makes_a_bigint(d1: fake_bindings.D1Database) -> None:
    """Pyodide passes ints from 2**53 - 1 up as BigInt, and D1's bind() refuses a BigInt."""
    db = D1Database(env(DB=d1).DB)
    assert run(db.all("SELECT ? AS n", 2**53 - 2)) == [{"n": 2**53 - 2}]
    with pytest.raises(JsException, match="D1_TYPE_ERROR: Type 'bigint'"):
        run(db.all("SELECT ? AS n", 2**53 - 1))


def test_archive_index_default_range_binds_on_d1(d1: fake_bindings.D1Database) -> None:
    index = ArchiveIndex(D1Database(env(DB=d1).DB))
    run(index.record("lobby", 1, 4, 99, "k", 1000, head=5, members=2))
    assert len(run(index.segments("lobby"))) == 1

"""A room's store writes only when asked to store something: operator counters wait for the
room's next write, and a room that never stored a message leaves no file at all."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import pytest

from rooms.store import RoomStore, SqlValue, open_room, open_room_at_once, read_catalogue
from roomsd.sqlite import SqliteSql


def _stored(path: Path, key: str) -> object:
    with sqlite3.connect(path) as db:
        row = db.execute("SELECT value FROM room_meta WHERE key = ?", (key,)).fetchone()
    return row[0] if row else None


def test_counts_wait_for_the_next_write_and_then_survive(tmp_path: Path) -> None:
    path = tmp_path / "room.sqlite"
    sql = SqliteSql(path)
    store = RoomStore(sql)
    store.count("wakes")
    store.count("wakes")
    assert not path.exists()  # counting alone wrote nothing: the file is not even there
    assert store.counter("wakes") == 2  # but operators see it already
    store.append(id="a", user_id="u", name="U", body="hi", sent_ms=1)
    assert _stored(path, "wakes") == 2
    assert store.counter("wakes") == 2  # written once, not counted twice
    sql.close()

    reopened = RoomStore(SqliteSql(path))
    reopened.count("wakes")
    reopened.save_counts()  # what a local room does before closing its database
    assert _stored(path, "wakes") == 3


def test_a_room_that_is_only_read_leaves_no_file(tmp_path: Path) -> None:
    path = tmp_path / "room.sqlite"
    sql = SqliteSql(path)
    store = RoomStore(sql, "lobby")
    assert (store.head, store.archived, store.created) == (0, 0, False)
    assert store.after(0, 10) == []
    assert store.before(5, 10) == []
    assert store.get(1) is None
    assert (store.oldest_retained(), store.retained_count(), store.dedupe_count()) == (1, 0, 0)
    assert store.choose_segment(100) is None
    assert store.prune(0, 0) == 0
    store.count("wakes")
    store.save_counts()
    assert sql.size_bytes() == 0
    sql.close()
    assert not path.exists()

    again = RoomStore(SqliteSql(path), "lobby")
    message, _ = again.append(id="a", user_id="u", name="U", body="hi", sent_ms=1)
    assert (message.seq, again.created) == (1, True)
    assert _stored(path, "room") == "lobby"  # operators can tell which room a file holds


def test_a_failed_first_write_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "room.sqlite"
    sql = SqliteSql(path)
    store = RoomStore(sql, "lobby")

    def fail() -> None:
        store.set_meta("closed", 1)  # creates the tables inside the transaction ...
        raise RuntimeError("and then the write fails")

    with contextlib.suppress(RuntimeError):
        store._transaction(fail)
    assert not store.created
    assert not sql.exists()
    store.append(id="a", user_id="u", name="U", body="hi", sent_ms=1)
    assert store.created
    assert store.head == 1


def test_a_failed_write_keeps_its_counts_for_the_next_one(tmp_path: Path) -> None:
    sql = SqliteSql(tmp_path / "room.sqlite")
    store = RoomStore(sql)
    store.append(id="first", user_id="u", name="U", body="hi", sent_ms=1)
    store.count("rate_limited")
    sql.execute(
        "CREATE TRIGGER refuse BEFORE INSERT ON messages BEGIN SELECT RAISE(ABORT, 'no'); END"
    )
    try:
        store.append(id="a", user_id="u", name="U", body="hi", sent_ms=1)
    except sqlite3.IntegrityError:
        pass
    else:
        raise AssertionError("the trigger should have refused the insert")
    assert store.counter("rate_limited") == 1
    sql.execute("DROP TRIGGER refuse")
    store.append(id="b", user_id="u", name="U", body="hi", sent_ms=2)
    assert store.counter("rate_limited") == 1
    assert store.head == 2
    assert _stored(tmp_path / "room.sqlite", "rate_limited") == 1


def _stored_room(tmp_path: Path, *, closed: bool = False) -> Path:
    """A room file holding three messages and an alarm time (and `closed`, if asked)."""
    path = tmp_path / "room.sqlite"
    sql = SqliteSql(path)
    store = RoomStore(sql, "lobby")
    for n in range(3):
        store.append(id=f"m{n}", user_id="u", name="U", body="hi", sent_ms=n)
    store.set_meta("alarm_at", 1234)
    if closed:
        store.set_meta("closed", 1)
    sql.close()
    return path


def test_a_current_room_wakes_on_two_reads_and_writes_nothing(tmp_path: Path) -> None:
    """What a Durable Object reads when it wakes (`open_room` with the catalogue it read):
    one read of sqlite_master and one of room_meta with the newest seq, nothing written; the
    store and what the host and engine need come from those two reads."""
    path = _stored_room(tmp_path, closed=True)

    reopened = SqliteSql(path)
    statements = _counting(reopened)
    opened = open_room(reopened, read_catalogue(reopened))
    woken = RoomStore(reopened, "lobby", opened)
    assert len(statements) == 2
    assert all(s.lstrip().upper().startswith("SELECT") for s in statements)
    assert (opened.created, opened.name, woken.head) == (True, "lobby", 3)
    assert (woken.meta_as_opened("alarm_at"), woken.meta_as_opened("closed")) == (1234, 1)
    with pytest.raises(KeyError):
        woken.meta_as_opened("wakes")  # not read on opening: a caller must read it itself
    assert woken.meta("closed") == 1  # the same value, read afresh


def test_a_room_that_never_stored_opens_without_reading_its_tables(tmp_path: Path) -> None:
    path = tmp_path / "room.sqlite"
    sql = SqliteSql(path)
    opened = open_room(sql)  # without a catalogue: asks the port whether anything is stored
    assert (opened.created, opened.name, opened.newest, dict(opened.meta or {})) == (
        False, None, 0, {})
    assert not path.exists()
    assert RoomStore(sql, "lobby", opened).head == 0


def _counting(sql: SqliteSql) -> list[str]:
    statements: list[str] = []
    execute = sql.execute

    def counted(query: str, *params: object) -> list[Sequence[SqlValue]]:
        statements.append(query)
        return execute(query, *params)  # type: ignore[arg-type]

    sql.execute = counted  # type: ignore[method-assign]
    return statements


def test_a_room_that_stored_messages_opens_in_one_statement(tmp_path: Path) -> None:
    """What a Durable Object reads first when it wakes (`open_room_at_once`): the catalogue,
    the room_meta values and the newest seq in one SELECT, the same as `open_room` reads in
    two."""
    path = _stored_room(tmp_path)
    reopened = SqliteSql(path)
    statements = _counting(reopened)
    opened = open_room_at_once(reopened)
    assert opened is not None
    assert [s.split()[0] for s in statements] == ["SELECT"]
    assert opened == open_room(reopened, read_catalogue(reopened))
    assert (opened.created, opened.name, opened.newest) == (True, "lobby", 3)
    assert opened.meta == {
        "room": "lobby", "head": 0, "archived": 0, "alarm_at": 1234}


def test_opening_at_once_leaves_rooms_without_tables_to_the_catalogue(tmp_path: Path) -> None:
    """A room that stored nothing (no tables) or was stored before room_meta existed: None,
    and the caller reads the catalogue; other failures are not taken for either."""
    empty = SqliteSql(tmp_path / "empty.sqlite")
    assert open_room_at_once(empty) is None
    v1 = SqliteSql(tmp_path / "v1.sqlite")
    v1.execute("CREATE TABLE messages (seq INTEGER PRIMARY KEY, id TEXT NOT NULL, "
               "user_id TEXT NOT NULL, name TEXT NOT NULL, body TEXT NOT NULL, "
               "sent_ms INTEGER NOT NULL)")
    assert open_room_at_once(v1) is None
    assert open_room(v1, read_catalogue(v1)).meta is None  # its schema is completed on opening
    current = SqliteSql(tmp_path / "current.sqlite")
    RoomStore(current, "lobby").append(id="m", user_id="u", name="U", body="hi", sent_ms=1)
    current.execute("DROP TRIGGER claim_client_id")  # stored by an earlier version
    behind = open_room_at_once(current)
    assert behind is not None
    assert (behind.created, behind.meta) == (True, None)

    def broken(query: str, *params: object) -> list[Sequence[SqlValue]]:
        raise sqlite3.OperationalError("database or disk is full")

    current.execute = broken  # type: ignore[method-assign]
    with pytest.raises(sqlite3.OperationalError, match="disk is full"):
        open_room_at_once(current)

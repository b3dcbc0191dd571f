"""Operator counters are written with the room's next write, never on their own."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from rooms.store import RoomStore
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
    assert _stored(path, "wakes") is None  # counting alone wrote nothing
    assert store.counter("wakes") == 2  # but operators see it already
    store.append(id="a", user_id="u", name="U", body="hi", sent_ms=1)
    assert _stored(path, "wakes") == 2
    assert store.counter("wakes") == 2  # written once, not counted twice
    sql.close()

    reopened = RoomStore(SqliteSql(path))
    reopened.count("wakes")
    reopened.save_counts()  # what a local room does before closing its database
    assert _stored(path, "wakes") == 3


def test_a_failed_write_keeps_its_counts_for_the_next_one(tmp_path: Path) -> None:
    sql = SqliteSql(tmp_path / "room.sqlite")
    store = RoomStore(sql)
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
    assert _stored(tmp_path / "room.sqlite", "rate_limited") == 1

"""The local stand-ins for D1, R2 and the alarm scheduler."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sqlite3
import time
from pathlib import Path

import pytest

from roomsd.bindings import AlarmScheduler, Faults, LocalD1
from roomsd.config import PROJECT_ROOT
from roomsd.d1 import open_d1
from roomsd.r2 import FileBucket


def test_migrations_apply_in_order_once_and_are_tracked(tmp_path: Path) -> None:
    """Each file applies once, in name order, recorded like wrangler's d1_migrations."""
    migrations = tmp_path / "migrations"
    migrations.mkdir()
    (migrations / "0002_b.sql").write_text("ALTER TABLE t ADD COLUMN b TEXT;")
    (migrations / "0001_a.sql").write_text("CREATE TABLE t (a INTEGER);")
    db, applied = open_d1(tmp_path / "d1.sqlite", migrations)
    assert applied == ["0001_a.sql", "0002_b.sql"]
    db.execute("INSERT INTO t (a, b) VALUES (1, 'x')")
    db.close()
    db, applied = open_d1(tmp_path / "d1.sqlite", migrations)
    assert applied == []
    names = [r[0] for r in db.execute("SELECT name FROM d1_migrations ORDER BY id")]
    assert names == ["0001_a.sql", "0002_b.sql"]
    db.close()


def test_a_failing_migration_leaves_no_trace(tmp_path: Path) -> None:
    """A broken file is not recorded and its partial statements are rolled back."""
    migrations = tmp_path / "migrations"
    migrations.mkdir()
    (migrations / "0001_bad.sql").write_text("CREATE TABLE ok (a INTEGER); SELECT * FROM nope;")
    with pytest.raises(sqlite3.OperationalError):
        open_d1(tmp_path / "d1.sqlite", migrations)
    db = sqlite3.connect(tmp_path / "d1.sqlite")
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "ok" not in tables
    assert db.execute("SELECT COUNT(*) FROM d1_migrations").fetchone() == (0,)
    db.close()


def test_project_migrations_apply_cleanly(tmp_path: Path) -> None:
    """The real migrations/ directory applies on an empty database."""
    db, applied = open_d1(tmp_path / "d1.sqlite", PROJECT_ROOT / "migrations")
    assert applied
    assert db.execute("SELECT COUNT(*) FROM rooms").fetchone() == (0,)
    db.close()


def test_d1_commits_without_a_sync_per_batch(tmp_path: Path) -> None:
    """WAL with synchronous NORMAL, as the room files: D1 batches run on the event loop, and
    with FULL every new room's directory row synced the WAL there while every room waited."""
    db, _ = open_d1(tmp_path / "d1.sqlite", PROJECT_ROOT / "migrations")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    db.close()


def test_bucket_writes_atomically_and_refuses_escaping_keys(tmp_path: Path) -> None:
    """put replaces whole objects; keys cannot climb out of the bucket directory."""
    bucket = FileBucket(tmp_path / "r2")
    bucket.put("rooms/lobby/1-10.ndjson", b"one")
    bucket.put("rooms/lobby/1-10.ndjson", b"two")
    assert bucket.get("rooms/lobby/1-10.ndjson") == b"two"
    assert bucket.get("missing") is None
    assert bucket.list("rooms/") == ["rooms/lobby/1-10.ndjson"]
    for bad in ("../escape", "a//b", "", "a/./b"):
        with pytest.raises(ValueError, match="invalid object key"):
            bucket.put(bad, b"x")


async def test_alarms_overdue_at_start_catch_up_spaced_out_oldest_first(tmp_path: Path) -> None:
    """After downtime the server serves at once; due alarms fire one by one, none is lost."""
    fired: list[tuple[str, float]] = []
    all_fired = asyncio.Event()

    async def fire(room: str) -> None:
        fired.append((room, time.monotonic()))
        if len(fired) == 3:
            all_fired.set()

    path = tmp_path / "alarms.sqlite"
    now_ms = int(time.time() * 1000)
    with sqlite3.connect(path) as db:  # what a server stopped a minute ago left behind
        db.execute(AlarmScheduler.SCHEMA)
        for room, late_ms in (("c", 58_000), ("a", 60_000), ("b", 59_000)):
            db.execute("INSERT INTO alarms (room, at_ms) VALUES (?, ?)", (room, now_ms - late_ms))

    scheduler = AlarmScheduler(path, fire)
    scheduler.start()
    assert fired == []  # nothing runs before the server gets to serve
    # Armed CATCH_UP_SPACING_MS apart, not as a burst. Read from the timers, not from when the
    # handlers ran: on a loaded machine a late first timer can run right before the second.
    armed = sorted(timer.when() for timer in scheduler._timers.values())
    gaps = [later - earlier for earlier, later in itertools.pairwise(armed)]
    assert len(armed) == 3
    assert all(gap >= AlarmScheduler.CATCH_UP_SPACING_MS / 1000 * 0.9 for gap in gaps)
    await asyncio.wait_for(all_fired.wait(), 5)
    assert [room for room, _ in fired] == ["a", "b", "c"]
    # Each fired alarm's row is deleted after its handler returns: wait for the last (a busy
    # machine may take longer than a fixed sleep).
    deadline = time.monotonic() + 5
    remaining = "SELECT COUNT(*) FROM alarms"
    while scheduler.db.execute(remaining).fetchone()[0] and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    assert scheduler.db.execute(remaining).fetchone()[0] == 0
    await scheduler.close()


def _counting_commits(db: sqlite3.Connection) -> list[str]:
    """The COMMITs ``db`` runs from now on (SQLite's statement trace)."""
    commits: list[str] = []
    db.set_trace_callback(lambda sql: commits.append(sql) if sql == "COMMIT" else None)
    return commits


def _d1_with_table(path: Path) -> LocalD1:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER NOT NULL)")
    return LocalD1(db, Faults())


def _rows_seen_elsewhere(path: Path, table: str) -> int:
    """What another connection (another process, after a crash) finds committed."""
    with contextlib.closing(sqlite3.connect(path)) as other:
        return int(other.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])


async def test_d1_batches_of_one_iteration_share_a_commit_and_fail_alone(tmp_path: Path) -> None:
    """A burst of new rooms' directory rows is one commit on the loop, yet each batch is still
    atomic and its caller learns its own outcome once it is committed."""
    d1 = _d1_with_table(tmp_path / "d1.sqlite")
    commits = _counting_commits(d1.db)
    insert = "INSERT INTO t (k, v) VALUES (?, ?)"
    good = [d1.batch([(insert, (f"k{i}", i)), (insert, (f"j{i}", i))]) for i in range(50)]
    # Its second row breaks the primary key: the batch's first row must go with it.
    bad = d1.batch([(insert, ("lone", 1)), (insert, ("k7", 0))])
    outcomes = await asyncio.gather(*good, bad, return_exceptions=True)
    assert outcomes[:50] == [None] * 50
    assert isinstance(outcomes[50], sqlite3.IntegrityError)
    assert commits == ["COMMIT"]
    assert _rows_seen_elsewhere(tmp_path / "d1.sqlite", "t") == 100  # committed, not "lone"
    d1.db.close()


async def test_d1_reads_see_batches_asked_for_before_them(tmp_path: Path) -> None:
    d1 = _d1_with_table(tmp_path / "d1.sqlite")
    writing = asyncio.ensure_future(d1.batch([("INSERT INTO t (k, v) VALUES ('a', 1)", ())]))
    await asyncio.sleep(0)  # the batch is queued, its iteration has not ended
    assert await d1.all("SELECT k, v FROM t") == [{"k": "a", "v": 1}]
    await writing
    d1.db.close()


async def test_d1_batch_given_up_by_its_caller_is_still_written(tmp_path: Path) -> None:
    """A caller cancelled while waiting (a closing room) does not unsend its batch, and the
    other batches of its transaction are not harmed."""
    d1 = _d1_with_table(tmp_path / "d1.sqlite")
    mine = asyncio.ensure_future(d1.batch([("INSERT INTO t (k, v) VALUES ('mine', 1)", ())]))
    other = asyncio.ensure_future(d1.batch([("INSERT INTO t (k, v) VALUES ('other', 2)", ())]))
    await asyncio.sleep(0)
    mine.cancel()
    await other
    with pytest.raises(asyncio.CancelledError):
        await mine
    assert _rows_seen_elsewhere(tmp_path / "d1.sqlite", "t") == 2
    d1.db.close()


async def test_alarm_rows_are_committed_by_the_output_gate_once_per_burst(tmp_path: Path) -> None:
    """A hundred new rooms setting their archive alarms in one iteration cost one commit, made
    when the gate releases the iteration's writes; close() commits what is still open."""

    async def fire(room: str) -> None:
        pass

    path = tmp_path / "alarms.sqlite"
    scheduler = AlarmScheduler(path, fire)
    commits = _counting_commits(scheduler.db)
    later_ms = int(time.time() * 1000) + 3_600_000
    for i in range(100):
        scheduler.set(f"room-{i}", later_ms)
    assert _rows_seen_elsewhere(path, "alarms") == 0  # not committed yet
    assert scheduler.pending("room-7") == later_ms  # but the scheduler sees its own rows
    await asyncio.sleep(0)  # the iteration ends: the gate commits
    await asyncio.sleep(0)
    assert commits == ["COMMIT"]
    assert _rows_seen_elsewhere(path, "alarms") == 100
    scheduler.set("room-late", later_ms)
    await scheduler.close()  # before the gate's release: close commits it
    assert _rows_seen_elsewhere(path, "alarms") == 101

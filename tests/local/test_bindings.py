"""The local stand-ins for D1 and R2."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

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

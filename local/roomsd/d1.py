"""D1 locally: one SQLite file with `migrations/` applied in order and tracked.

Tracking mirrors wrangler's `d1_migrations` table, so a database migrated here and one migrated
by `wrangler d1 migrations apply` agree on what has been applied.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

TRACKING_TABLE = """CREATE TABLE IF NOT EXISTS d1_migrations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT UNIQUE,
    applied_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
)"""


def migration_files(migrations_dir: Path) -> list[Path]:
    return sorted(p for p in migrations_dir.glob("*.sql") if p.is_file())


def apply_migrations(db: sqlite3.Connection, migrations_dir: Path) -> list[str]:
    """Apply each not-yet-applied migration in its own transaction; return the names applied."""
    db.execute(TRACKING_TABLE)
    done = {row[0] for row in db.execute("SELECT name FROM d1_migrations")}
    applied: list[str] = []
    for path in migration_files(migrations_dir):
        if path.name in done:
            continue
        script = path.read_text()
        # executescript commits first; wrap explicitly so a failing file leaves no trace.
        db.executescript(
            f"BEGIN;\n{script}\n;INSERT INTO d1_migrations (name) VALUES ('{_quote(path.name)}');"
            "\nCOMMIT;"
        )
        applied.append(path.name)
    return applied


def open_d1(path: Path, migrations_dir: Path) -> tuple[sqlite3.Connection, list[str]]:
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    # Like the room databases and the alarms: WAL + NORMAL survives a killed process (only a
    # power loss may roll the newest commits back) without an fsync on every batch. Batches run
    # on the event loop, and every new room writes its directory row with its first message:
    # with FULL, each of those synced the WAL while every other room waited.
    db.execute("PRAGMA synchronous=NORMAL")
    try:
        applied = apply_migrations(db, migrations_dir)
    except sqlite3.Error:
        if db.in_transaction:
            db.execute("ROLLBACK")
        db.close()
        raise
    return db, applied


def _quote(name: str) -> str:
    return name.replace("'", "''")

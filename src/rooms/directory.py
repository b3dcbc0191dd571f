"""The room directory: one row per room in D1, so that operators list rooms without waking them.

A Durable Object cannot be enumerated, so the front Worker learns of rooms only from a table it
can query: each room writes its own row there (docs/admin.md, "The room directory"). It does so

- at its first message, which is also the first time a room writes anything, so a room that
  only ever saw joins is never listed;
- at the end of every archive run (the alarm, at most `interval_ms` after a write);
- whenever an operator inspects it (`GET /admin/rooms/{room}`), so opening a room refreshes its
  row in the list.

Never on the message path: a busy room's row is at most one archive interval old, and
`updated_ms` says exactly how old. The newest write wins (a write never replaces a newer one),
the creation time only ever moves earlier and the counters of messages only ever grow.
"""

from __future__ import annotations

from dataclasses import dataclass

from rooms.archive import Database

_COLUMNS = (
    "name",
    "created_ms",
    "last_activity_ms",
    "head_seq",
    "archived_seq",
    "member_count",
    "socket_count",
    "rows_retained",
    "updated_ms",
)
UPSERT = (
    f"INSERT INTO rooms ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' for _ in _COLUMNS)}) "
    "ON CONFLICT (name) DO UPDATE SET "
    "created_ms = MIN(created_ms, excluded.created_ms), "
    "last_activity_ms = MAX(last_activity_ms, excluded.last_activity_ms), "
    "head_seq = MAX(head_seq, excluded.head_seq), "
    "archived_seq = MAX(archived_seq, excluded.archived_seq), "
    "member_count = excluded.member_count, "
    "socket_count = excluded.socket_count, "
    "rows_retained = excluded.rows_retained, "
    "updated_ms = excluded.updated_ms "
    "WHERE excluded.updated_ms >= rooms.updated_ms"
)


@dataclass(frozen=True, slots=True)
class DirectoryEntry:
    """One room's row: what the room knew at `updated_ms`."""

    name: str
    created_ms: int  # the first message's time
    last_activity_ms: int  # the newest message's time (0: not known, the row keeps its own)
    head_seq: int
    archived_seq: int
    member_count: int  # users with at least one joined socket
    socket_count: int  # open sockets, joined or not yet
    rows_retained: int  # message rows still in the room's own storage
    updated_ms: int


class RoomDirectory:
    """Writes rooms' rows; `rooms.admin` reads them."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def record(self, entry: DirectoryEntry) -> None:
        # The fields by name, not `asdict`: that deep-copies each value (a new room's first
        # message writes its row on the event loop, BENCHMARKS.md).
        await self.db.batch([(UPSERT, tuple(getattr(entry, c) for c in _COLUMNS))])

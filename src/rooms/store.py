"""A room's durable message log over a synchronous SQL port.

Both platforms give a room synchronous SQLite: the Durable Object's ``ctx.storage.sql.exec`` and
the local runtime's ``sqlite3``. `Sql` is the small port they both implement; `RoomStore` holds
every query, so the two runtimes store identical rows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

from rooms.protocol import Message, SeqRange

T = TypeVar("T")
# No bool: Cloudflare binds it as the text 'true' (reference section 3.1). Bind int(flag) instead.
SqlValue = str | int | float | None


class Sql(Protocol):
    """One SQLite database, used synchronously."""

    def execute(self, query: str, *params: SqlValue) -> list[Sequence[SqlValue]]:
        """Run one statement and return all its rows (fully consumed, nothing held open)."""
        ...

    def transaction(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` atomically: all its writes commit together or none do."""
        ...


SCHEMA = (
    """CREATE TABLE IF NOT EXISTS room_meta (
        key TEXT PRIMARY KEY,
        value INTEGER NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS messages (
        seq INTEGER PRIMARY KEY,
        id TEXT NOT NULL,
        user_id TEXT NOT NULL,
        name TEXT NOT NULL,
        body TEXT NOT NULL,
        sent_ms INTEGER NOT NULL
    )""",
    # Kept apart from `messages` so that idempotency survives pruning of old message rows.
    """CREATE TABLE IF NOT EXISTS dedupe (
        user_id TEXT NOT NULL,
        id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        PRIMARY KEY (user_id, id)
    ) WITHOUT ROWID""",
    "INSERT OR IGNORE INTO room_meta (key, value) VALUES ('head', 0)",
)

_MESSAGE_COLUMNS = "seq, id, user_id, name, body, sent_ms"


def _message(row: Sequence[SqlValue]) -> Message:
    seq, id_, user_id, name, body, sent_ms = row
    return Message(
        seq=int(seq or 0),
        id=str(id_),
        user_id=str(user_id),
        name=str(name),
        body=str(body),
        sent_ms=int(sent_ms or 0),
    )


class RoomStore:
    """The ordered, gapless message log of one room."""

    def __init__(self, sql: Sql) -> None:
        self._sql = sql
        for statement in SCHEMA:
            sql.execute(statement)
        # The store is the room's only writer, so the cached head stays true until the next write.
        self._head = int(sql.execute("SELECT value FROM room_meta WHERE key = 'head'")[0][0] or 0)

    @property
    def head(self) -> int:
        """The seq of the newest stored message (0 for an empty room)."""
        return self._head

    def append(
        self, *, id: str, user_id: str, name: str, body: str, sent_ms: int
    ) -> tuple[Message, bool]:
        """Store a message under the next seq; return it and whether it was a retransmit.

        A retransmit (same user and id) returns the originally stored message unchanged.
        """

        def write() -> tuple[Message, bool]:
            seen = self._sql.execute(
                "SELECT seq FROM dedupe WHERE user_id = ? AND id = ?", user_id, id
            )
            if seen:
                original = self.get(int(seen[0][0] or 0))
                if original is not None:
                    return original, True
                # The row was pruned: the seq is still the truth, the body no longer here.
                stub = Message(
                    seq=int(seen[0][0] or 0), id=id, user_id=user_id, name=name, body="", sent_ms=0
                )
                return stub, True
            seq = self._head + 1
            self._sql.execute(
                f"INSERT INTO messages ({_MESSAGE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                seq,
                id,
                user_id,
                name,
                body,
                sent_ms,
            )
            self._sql.execute(
                "INSERT INTO dedupe (user_id, id, seq) VALUES (?, ?, ?)", user_id, id, seq
            )
            self._sql.execute("UPDATE room_meta SET value = ? WHERE key = 'head'", seq)
            message = Message(
                seq=seq, id=id, user_id=user_id, name=name, body=body, sent_ms=sent_ms
            )
            return message, False

        message, duplicate = self._sql.transaction(write)
        if not duplicate:
            self._head = message.seq  # only after the commit succeeded
        return message, duplicate

    def get(self, seq: int) -> Message | None:
        rows = self._sql.execute(f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE seq = ?", seq)
        return _message(rows[0]) if rows else None

    def oldest_retained(self) -> int:
        """The lowest seq still stored here (head + 1 when nothing is)."""
        rows = self._sql.execute("SELECT MIN(seq) FROM messages")
        low = rows[0][0] if rows else None
        return int(low) if low is not None else self._head + 1

    def after(self, since: int, limit: int) -> list[Message]:
        """Up to ``limit`` messages with seq > ``since``, oldest first."""
        rows = self._sql.execute(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE seq > ? ORDER BY seq LIMIT ?",
            since,
            limit,
        )
        return [_message(row) for row in rows]

    def before(self, before: int, limit: int) -> list[Message]:
        """Up to ``limit`` messages with seq < ``before``, oldest first."""
        rows = self._sql.execute(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE seq < ? ORDER BY seq DESC LIMIT ?",
            before,
            limit,
        )
        return [_message(row) for row in reversed(rows)]

    def missing_between(self, first: int, last: int) -> list[SeqRange]:
        """The part of [first, last] no longer retained here (empty until pruning exists)."""
        if first > last:
            return []
        low = self.oldest_retained()
        if first >= low:
            return []
        return [SeqRange(first, min(last, low - 1))]

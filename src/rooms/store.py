"""A room's durable message log over a synchronous SQL port.

Both platforms give a room synchronous SQLite: the Durable Object's ``ctx.storage.sql.exec`` and
the local runtime's ``sqlite3``. `Sql` is the small port they both implement; `RoomStore` holds
every query, so the two runtimes store identical rows.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from rooms.lifecycle import MessageState, redacted, seqs_to_check
from rooms.protocol import EventKind, Message, ReactionCount

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

    def run_schema(self, statements: Sequence[str]) -> None:
        """Run the schema's statements in order, inside the caller's transaction (a platform
        where every call costs may run them in one)."""
        ...

    def size_bytes(self) -> int:
        """The database's size on disk, for operators."""
        ...

    def exists(self) -> bool:
        """Whether a room's tables were ever created here. Asking must write nothing: a room
        that never stored a message leaves nothing behind (docs/protocol.md#rooms)."""
        ...


SCHEMA = (
    # Small named values: head, archived seq, the pending segment, counters, the room's name.
    """CREATE TABLE IF NOT EXISTS room_meta (
        key TEXT PRIMARY KEY,
        value
    )""",
    # Messages and lifecycle events, one row per seq. `kind`, `target` and `emoji` are NULL for
    # a plain message; `deleted` marks a body blanked by a delete (docs/protocol.md).
    """CREATE TABLE IF NOT EXISTS messages (
        seq INTEGER PRIMARY KEY,
        id TEXT NOT NULL,
        user_id TEXT NOT NULL,
        name TEXT NOT NULL,
        body TEXT NOT NULL,
        sent_ms INTEGER NOT NULL,
        kind TEXT,
        target INTEGER,
        emoji TEXT,
        deleted INTEGER NOT NULL DEFAULT 0
    )""",
    # Kept apart from `messages` so that idempotency survives pruning of old message rows.
    """CREATE TABLE IF NOT EXISTS dedupe (
        user_id TEXT NOT NULL,
        id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        at_ms INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (user_id, id)
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS dedupe_by_time ON dedupe (at_ms)",
    # What edits and deletes did to a message, one row per edited or deleted message. Never
    # pruned with the log: folded pages and archive reads of old messages need it.
    """CREATE TABLE IF NOT EXISTS message_state (
        seq INTEGER PRIMARY KEY,
        author TEXT NOT NULL,
        body TEXT NOT NULL,
        edits INTEGER NOT NULL DEFAULT 0,
        edit_seqs TEXT NOT NULL DEFAULT '',
        deleted_seq INTEGER
    )""",
    # Current reactions: one row per (message, emoji, user); `seq` is the event that added it.
    """CREATE TABLE IF NOT EXISTS reactions (
        target INTEGER NOT NULL,
        emoji TEXT NOT NULL,
        user_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        PRIMARY KEY (target, emoji, user_id)
    ) WITHOUT ROWID""",
    # Each user's read-up-to seq: per user, never broadcast.
    """CREATE TABLE IF NOT EXISTS read_state (
        user_id TEXT PRIMARY KEY,
        seq INTEGER NOT NULL,
        at_ms INTEGER NOT NULL
    )""",
    # Seqs blanked by a delete that an R2 segment may still hold: the archiver rewrites them.
    "CREATE TABLE IF NOT EXISTS redactions (seq INTEGER PRIMARY KEY)",
    # Every row stored in the log claims its (user, client id) key in the same statement, so a
    # message is one statement (`RoomStore.append`): on Cloudflare each statement is a call
    # into the runtime and back, the largest fixed cost of a publish that we can remove.
    # A key already claimed fails the insert, and the row with it.
    """CREATE TRIGGER IF NOT EXISTS claim_client_id AFTER INSERT ON messages
    BEGIN
        INSERT INTO dedupe (user_id, id, seq, at_ms)
        VALUES (NEW.user_id, NEW.id, NEW.seq, NEW.sent_ms);
    END""",
    "INSERT OR IGNORE INTO room_meta (key, value) VALUES ('head', 0)",
    "INSERT OR IGNORE INTO room_meta (key, value) VALUES ('archived', 0)",
)

# Columns added after v1: a room stored by an older version gets them on its first wake.
LIFECYCLE_COLUMNS = (
    ("kind", "TEXT"),
    ("target", "INTEGER"),
    ("emoji", "TEXT"),
    ("deleted", "INTEGER NOT NULL DEFAULT 0"),
)

# Every table and index SCHEMA creates.
SCHEMA_NAMES = frozenset(
    re.search(r"EXISTS (\w+)", statement).group(1)  # type: ignore[union-attr]
    for statement in SCHEMA
    if statement.startswith("CREATE")
)

_MESSAGE_COLUMNS = "seq, id, user_id, name, body, sent_ms"  # what a plain message writes
_READ_COLUMNS = f"{_MESSAGE_COLUMNS}, kind, target, emoji, deleted"


def _message(row: Sequence[SqlValue]) -> Message:
    seq, id_, user_id, name, body, sent_ms, kind, target, emoji, deleted = row
    return Message(
        seq=int(seq or 0),
        id=str(id_),
        user_id=str(user_id),
        name=str(name),
        body=str(body),
        sent_ms=int(sent_ms or 0),
        kind=str(kind) if kind is not None else None,
        target=int(target) if target is not None else None,
        emoji=str(emoji) if emoji is not None else None,
        deleted=bool(deleted),
    )


def _state(row: Sequence[SqlValue]) -> MessageState:
    seq, author, body, edits, edit_seqs, deleted_seq = row
    return MessageState(
        seq=int(seq or 0),
        author=str(author),
        body=str(body),
        edits=int(edits or 0),
        edit_seqs=tuple(int(s) for s in str(edit_seqs or "").split(",") if s),
        deleted_seq=int(deleted_seq) if deleted_seq is not None else None,
    )


_STATE_COLUMNS = "seq, author, body, edits, edit_seqs, deleted_seq"


# What a waking room reads from room_meta (its name, head, archive progress, alarm time and
# closed flag), in one statement together with the log's newest seq: the NULL key marks the
# MAX(seq) row (room_meta's keys are never NULL).
WAKE_KEYS = ("room", "head", "archived", "alarm_at", "closed")
_WAKE_READ = (
    "SELECT key, value FROM room_meta WHERE key IN ({}) "
    "UNION ALL SELECT NULL, MAX(seq) FROM messages"
).format(", ".join(f"'{key}'" for key in WAKE_KEYS))
# Only the `messages` table's statement is read: `_schema_ready` looks at no other, and the rest
# of the text would be converted for nothing on every wake of a Durable Object.
_CATALOGUE_COLUMNS = "name, CASE WHEN name = 'messages' THEN sql ELSE '' END"
CATALOGUE_READ = f"SELECT {_CATALOGUE_COLUMNS} FROM sqlite_master"
# The catalogue and `_WAKE_READ` in one statement, for a room whose tables exist (its first
# column says which part a row belongs to). Naming room_meta and messages, it fails where
# they do not exist, and the caller reads the catalogue first (`open_room_at_once`).
_OPEN_READ = (
    f"SELECT 'table', {_CATALOGUE_COLUMNS} FROM sqlite_master "
    "UNION ALL SELECT 'meta', key, value FROM room_meta WHERE key IN ({}) "
    "UNION ALL SELECT 'newest', NULL, MAX(seq) FROM messages"
).format(", ".join(f"'{key}'" for key in WAKE_KEYS))


@dataclass(frozen=True, slots=True)
class OpenedRoom:
    """What a room reads of its storage when it wakes: two statements for a current room."""

    # Every table, index and trigger by name -> its CREATE statement for `messages`, "" else.
    catalogue: Mapping[str, str]
    meta: Mapping[str, SqlValue] | None  # the WAKE_KEYS found; None: schema to complete first
    newest: int  # MAX(seq) of the log, 0 when empty

    @property
    def created(self) -> bool:
        """Whether the room ever stored anything (its tables exist)."""
        return "messages" in self.catalogue

    @property
    def name(self) -> str | None:
        """The room's name as stored with its first message (None before, or for a room
        stored before room_meta kept it: see the legacy ``room_name`` table)."""
        value = (self.meta or {}).get("room")
        return str(value) if value else None


def read_catalogue(sql: Sql) -> dict[str, str]:
    """Every table, index and trigger in the database (`OpenedRoom.catalogue`)."""
    return {str(name): str(text) for name, text in sql.execute(CATALOGUE_READ)}


def open_room_at_once(sql: Sql) -> OpenedRoom | None:
    """`open_room` in one statement instead of two, for a room that stored messages; None
    when its tables do not exist (nothing stored yet, or stored by a version before room_meta):
    then the caller reads the catalogue and opens from it. What a room that stored messages
    reads on every wake; one that never did pays a failed statement, so a caller that asks
    again and again (a room nobody wrote to) reads the catalogue first instead."""
    try:
        rows = sql.execute(_OPEN_READ)
    except Exception as exc:  # sqlite3 and workerd raise different types, with this text
        if "no such table" in str(exc):
            return None
        raise
    catalogue: dict[str, str] = {}
    meta: dict[str, SqlValue] = {}
    newest = 0
    for part, key, value in rows:
        if part == "table":
            catalogue[str(key)] = str(value)
        elif part == "meta":
            meta[str(key)] = value
        else:
            newest = int(value or 0)
    if not _schema_ready(catalogue):
        return OpenedRoom(catalogue, None, 0)
    return OpenedRoom(catalogue, meta, newest)


def open_room(sql: Sql, catalogue: Mapping[str, str] | None = None) -> OpenedRoom:
    """Read what a waking room needs: the catalogue (``catalogue``, when the caller has read it
    already: one read of sqlite_master per wake) and, for a room whose schema is current, the
    `WAKE_KEYS` and the newest seq in one statement. Writes nothing: a room that never stored a
    message leaves nothing behind (docs/protocol.md#rooms), which is why, without
    ``catalogue``, the port's `Sql.exists` is asked first (a local room's file)."""
    if catalogue is None:
        catalogue = read_catalogue(sql) if sql.exists() else {}
    if "messages" not in catalogue:
        return OpenedRoom(catalogue, {}, 0)
    if not _schema_ready(catalogue):
        return OpenedRoom(catalogue, None, 0)
    return _read_meta(sql, catalogue)


def _read_meta(sql: Sql, catalogue: Mapping[str, str]) -> OpenedRoom:
    meta: dict[str, SqlValue] = {}
    newest = 0
    for key, value in sql.execute(_WAKE_READ):
        if key is None:
            newest = int(value or 0)
        else:
            meta[str(key)] = value
    return OpenedRoom(catalogue, meta, newest)


def _schema_ready(catalogue: Mapping[str, str]) -> bool:
    """Whether every table and index exists, lifecycle columns included: a current room runs
    no schema statement on waking (a wake runs this on every event of a hibernating room)."""
    return catalogue.keys() >= SCHEMA_NAMES and "deleted INTEGER" in catalogue["messages"]


class RoomStore:
    """The ordered, gapless message log of one room.

    A room's tables are created by its first write (normally its first message), never by
    reading: connecting to a room, joining it and leaving it store nothing, so a name nobody
    wrote to leaves no file here and no stored object on Cloudflare. Until then every read
    answers as for an empty room without touching SQL.
    """

    def __init__(self, sql: Sql, room: str = "", opened: OpenedRoom | None = None) -> None:
        """``opened``: what `open_room` read from ``sql`` just before, with nothing written
        since (a Durable Object reads it in its constructor: its name is in it)."""
        self._sql = sql
        self._room = room  # written into room_meta at creation, for operators
        if opened is None:
            opened = open_room(sql)
        self._created = opened.created
        if opened.meta is None:  # stored by an older version: complete its schema, then read
            for statement in SCHEMA:
                sql.execute(statement)
            self._migrate()
            opened = _read_meta(sql, opened.catalogue)
        # The room_meta values a wake needs, as read on opening (`meta_as_opened`).
        self._opened_meta: Mapping[str, SqlValue] = opened.meta or {}
        # The store is the room's only writer, so cached values stay true until its next write.
        # A message's insert is its only write: `head` in room_meta is written before a prune
        # only, for when every row is gone.
        self._head = max(int(self._opened_meta.get("head") or 0), opened.newest)
        self._archived = int(self._opened_meta.get("archived") or 0)
        # Operator counters wait for the room's next write: counting a wake must not cost a
        # write of its own (a billed row write on Cloudflare, a commit on the wake path here).
        self._unsaved_counts: dict[str, int] = {}
        # A delete queued redactions of archived seqs: the archiver should run now.
        self.redaction_due = False

    def meta_as_opened(self, key: str) -> SqlValue:
        """One of `WAKE_KEYS` as the store read it on opening, without a statement of its own:
        for the host and engine built together with the store, before its first write."""
        if key not in WAKE_KEYS:
            raise KeyError(f"{key!r} is not read on opening (WAKE_KEYS)")
        return self._opened_meta.get(key)

    @property
    def created(self) -> bool:
        """Whether this room has stored anything (its tables exist)."""
        return self._created

    def _rows(self, query: str, *params: SqlValue) -> list[Sequence[SqlValue]]:
        """A read: no rows before the room's tables exist, and no SQL run to find that out."""
        return self._sql.execute(query, *params) if self._created else []

    def _count(self, query: str, *params: SqlValue) -> int:
        rows = self._rows(query, *params)
        return int(rows[0][0] or 0) if rows else 0

    def _create(self) -> None:
        """Create the room's tables: called by every write, a no-op after the first."""
        if self._created:
            return
        self._sql.run_schema(SCHEMA)
        self._sql.execute(
            "INSERT OR IGNORE INTO room_meta (key, value) VALUES ('room', ?)", self._room
        )
        self._created = True

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
            seq = self._head + 1
            # One statement: the row is stored unless its key was claimed before (a
            # retransmit), and the trigger claims the key for it (SCHEMA, claim_client_id).
            stored = self._sql.execute(
                f"INSERT INTO messages ({_MESSAGE_COLUMNS}) SELECT ?, ?, ?, ?, ?, ? "
                "WHERE NOT EXISTS (SELECT 1 FROM dedupe WHERE user_id = ? AND id = ?) "
                "RETURNING seq",
                seq,
                id,
                user_id,
                name,
                body,
                sent_ms,
                user_id,
                id,
            )
            if not stored:
                return self._original(user_id, id, name), True
            message = Message(
                seq=seq, id=id, user_id=user_id, name=name, body=body, sent_ms=sent_ms
            )
            return message, False

        message, duplicate = self._transaction(write)
        if not duplicate:
            self._head = message.seq
        return message, duplicate

    def _original(self, user_id: str, id: str, name: str) -> Message:
        """The message a retransmit repeats, as first stored."""
        rows = self._rows("SELECT seq FROM dedupe WHERE user_id = ? AND id = ?", user_id, id)
        seq = int(rows[0][0] or 0)
        original = self.get(seq)
        if original is not None:
            return original
        # The row was pruned: the seq is still the truth, the body no longer here.
        return Message(seq=seq, id=id, user_id=user_id, name=name, body="", sent_ms=0)

    def _migrate(self) -> None:
        """Give a room stored before the message lifecycle the columns it needs.

        A read that returns no rows, so a room that is up to date writes nothing on waking."""
        try:
            self._sql.execute("SELECT kind, target, emoji, deleted FROM messages LIMIT 0")
        except Exception:  # no such column: a v1 room (sqlite3 and workerd raise differently)
            for column, declaration in LIFECYCLE_COLUMNS:
                try:
                    self._sql.execute(f"ALTER TABLE messages ADD COLUMN {column} {declaration}")
                except Exception:  # added by an earlier, interrupted migration
                    continue

    # ----------------------------------------------------------------------- lifecycle

    def dedupe_seq(self, user_id: str, id: str) -> int | None:
        """The seq a user's client id already stored, if any (the retransmit check of events)."""
        rows = self._rows("SELECT seq FROM dedupe WHERE user_id = ? AND id = ?", user_id, id)
        return int(rows[0][0] or 0) if rows else None

    def _insert_event(
        self,
        *,
        id: str,
        user_id: str,
        name: str,
        sent_ms: int,
        kind: str,
        target: int,
        body: str = "",
        emoji: str | None = None,
    ) -> Message:
        """Write one event under the next seq (inside a transaction); the trigger claims its
        dedupe key (SCHEMA, claim_client_id)."""
        seq = self._head + 1
        self._sql.execute(
            f"INSERT INTO messages ({_MESSAGE_COLUMNS}, kind, target, emoji) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            seq,
            id,
            user_id,
            name,
            body,
            sent_ms,
            kind,
            target,
            emoji,
        )
        return Message(
            seq=seq,
            id=id,
            user_id=user_id,
            name=name,
            body=body,
            sent_ms=sent_ms,
            kind=kind,
            target=target,
            emoji=emoji,
        )

    def _store_event(self, write: Callable[[], Message], kind: str) -> Message:
        self.count(f"events_{kind}")  # rides along in the event's own transaction
        message = self._transaction(write)
        self._head = message.seq
        return message

    def edit(
        self, *, id: str, user_id: str, name: str, target: Message, body: str, sent_ms: int
    ) -> Message:
        """Store an edit of ``target`` (checked by the engine) and its new current body."""

        def write() -> Message:
            event = self._insert_event(
                id=id,
                user_id=user_id,
                name=name,
                sent_ms=sent_ms,
                kind=EventKind.EDIT,
                target=target.seq,
                body=body,
            )
            self._sql.execute(
                f"INSERT INTO message_state ({_STATE_COLUMNS}) VALUES (?, ?, ?, 1, ?, NULL) "
                "ON CONFLICT (seq) DO UPDATE SET body = excluded.body, edits = edits + 1, "
                "edit_seqs = edit_seqs || ',' || excluded.edit_seqs",
                target.seq,
                target.user_id,
                body,
                str(event.seq),
            )
            return event

        return self._store_event(write, EventKind.EDIT)

    def delete(
        self, *, id: str, user_id: str, name: str, target: int, author: str, sent_ms: int
    ) -> Message:
        """Store a delete of ``target`` and blank its body and its edits' bodies, atomically.

        Blanked seqs an R2 segment may already hold are queued in `redactions` for the
        archiver, which rewrites those segments (docs/protocol.md, "What a delete removes").
        """

        def write() -> Message:
            event = self._insert_event(
                id=id,
                user_id=user_id,
                name=name,
                sent_ms=sent_ms,
                kind=EventKind.DELETE,
                target=target,
            )
            before = self.state(target)
            self._sql.execute(
                f"INSERT INTO message_state ({_STATE_COLUMNS}) VALUES (?, ?, '', 0, '', ?) "
                "ON CONFLICT (seq) DO UPDATE SET body = '', deleted_seq = excluded.deleted_seq",
                target,
                author,
                event.seq,
            )
            self._sql.execute(
                "UPDATE messages SET body = '', deleted = 1 "
                "WHERE seq = ? OR (kind = ? AND target = ?)",
                target,
                EventKind.EDIT,
                target,
            )
            self._sql.execute("DELETE FROM reactions WHERE target = ?", target)
            pending = self.pending_segment()
            in_r2 = max(self._archived, pending[1] if pending else 0)
            for seq in (target, *(before.edit_seqs if before else ())):
                if seq <= in_r2:
                    self._sql.execute("INSERT OR IGNORE INTO redactions (seq) VALUES (?)", seq)
                    self.redaction_due = True
            return event

        return self._store_event(write, EventKind.DELETE)

    def react(
        self,
        *,
        id: str,
        user_id: str,
        name: str,
        target: int,
        emoji: str,
        remove: bool,
        sent_ms: int,
    ) -> Message:
        """Store a reaction (or its removal); the engine checked that it changes something."""
        kind = EventKind.UNREACT if remove else EventKind.REACT

        def write() -> Message:
            event = self._insert_event(
                id=id,
                user_id=user_id,
                name=name,
                sent_ms=sent_ms,
                kind=kind,
                target=target,
                emoji=emoji,
            )
            if remove:
                self._sql.execute(
                    "DELETE FROM reactions WHERE target = ? AND emoji = ? AND user_id = ?",
                    target,
                    emoji,
                    user_id,
                )
            else:
                self._sql.execute(
                    "INSERT INTO reactions (target, emoji, user_id, seq) VALUES (?, ?, ?, ?)",
                    target,
                    emoji,
                    user_id,
                    event.seq,
                )
            return event

        return self._store_event(write, kind)

    def state(self, seq: int) -> MessageState | None:
        rows = self._rows(f"SELECT {_STATE_COLUMNS} FROM message_state WHERE seq = ?", seq)
        return _state(rows[0]) if rows else None

    def states_between(self, first: int, last: int) -> dict[int, MessageState]:
        rows = self._rows(
            f"SELECT {_STATE_COLUMNS} FROM message_state WHERE seq BETWEEN ? AND ?", first, last
        )
        return {state.seq: state for state in map(_state, rows)}

    def reaction_seq(self, target: int, emoji: str, user_id: str) -> int | None:
        """The seq of the event by which ``user_id`` reacted ``emoji`` on ``target``, if any."""
        rows = self._rows(
            "SELECT seq FROM reactions WHERE target = ? AND emoji = ? AND user_id = ?",
            target,
            emoji,
            user_id,
        )
        return int(rows[0][0] or 0) if rows else None

    def emoji_on(self, target: int) -> set[str]:
        """The distinct emoji on a message now."""
        rows = self._rows("SELECT DISTINCT emoji FROM reactions WHERE target = ?", target)
        return {str(row[0]) for row in rows}

    def reactions_between(
        self, first: int, last: int, user_id: str
    ) -> dict[int, list[ReactionCount]]:
        """Reaction counts per message in [first, last], each emoji in the order it came."""
        rows = self._rows(
            "SELECT target, emoji, COUNT(*), MAX(user_id = ?) FROM reactions "
            "WHERE target BETWEEN ? AND ? GROUP BY target, emoji ORDER BY target, MIN(seq)",
            user_id,
            first,
            last,
        )
        counts: dict[int, list[ReactionCount]] = {}
        for target, emoji, count, mine in rows:
            counts.setdefault(int(target or 0), []).append(
                ReactionCount(emoji=str(emoji), count=int(count or 0), mine=bool(mine))
            )
        return counts

    def deleted_between(self, first: int, last: int) -> set[int]:
        rows = self._rows(
            "SELECT seq FROM message_state WHERE deleted_seq IS NOT NULL AND seq BETWEEN ? AND ?",
            first,
            last,
        )
        return {int(row[0] or 0) for row in rows}

    def redact(self, messages: list[Message]) -> list[Message]:
        """``messages`` (read from the archive) with every deleted body removed."""
        span = seqs_to_check(messages)
        if span is None:
            return messages
        deleted = self.deleted_between(*span)
        if not deleted:
            return messages
        return [redacted(message, deleted) for message in messages]

    def pending_redactions(self, limit: int = 1000) -> list[int]:
        rows = self._rows("SELECT seq FROM redactions ORDER BY seq LIMIT ?", limit)
        return [int(row[0] or 0) for row in rows]

    def clear_redactions(self, first: int, last: int) -> None:
        self._sql.execute("DELETE FROM redactions WHERE seq BETWEEN ? AND ?", first, last)

    def redaction_count(self) -> int:
        return self._count("SELECT COUNT(*) FROM redactions")

    def event_counts(self) -> dict[str, int]:
        """How many edits, deletes, reactions and removed reactions the room has stored."""
        kinds = (EventKind.EDIT, EventKind.DELETE, EventKind.REACT, EventKind.UNREACT)
        return {kind: self.counter(f"events_{kind}") for kind in kinds}

    # ----------------------------------------------------------------------- read state

    def read_seq(self, user_id: str) -> int:
        rows = self._rows("SELECT seq FROM read_state WHERE user_id = ?", user_id)
        return int(rows[0][0] or 0) if rows else 0

    def set_read(self, user_id: str, seq: int, at_ms: int) -> None:
        def write() -> None:
            self._sql.execute(
                "INSERT INTO read_state (user_id, seq, at_ms) VALUES (?, ?, ?) "
                "ON CONFLICT (user_id) DO UPDATE SET seq = MAX(seq, excluded.seq), "
                "at_ms = excluded.at_ms",
                user_id,
                seq,
                at_ms,
            )

        self._transaction(write)

    def unread(self, user_id: str, after: int) -> int:
        """Plain messages by others after ``after``, not deleted, among the retained rows."""
        rows = self._rows(
            "SELECT COUNT(*) FROM messages "
            "WHERE seq > ? AND kind IS NULL AND deleted = 0 AND user_id != ?",
            after,
            user_id,
        )
        return int(rows[0][0] or 0) if rows else 0

    # ----------------------------------------------------------------------- meta and counters

    def meta(self, key: str) -> SqlValue:
        rows = self._rows("SELECT value FROM room_meta WHERE key = ?", key)
        return rows[0][0] if rows else None

    def metas(self, prefix: str) -> dict[str, SqlValue]:
        """Every meta entry whose key starts with ``prefix``, keyed by the rest of the key."""
        rows = self._rows(
            "SELECT key, value FROM room_meta WHERE substr(key, 1, ?) = ?", len(prefix), prefix
        )
        return {str(key)[len(prefix) :]: value for key, value in rows}

    def set_meta(self, key: str, value: SqlValue) -> None:
        self._create()
        self._sql.execute(
            "INSERT INTO room_meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            key,
            value,
        )

    def bump(self, counter: str, by: int = 1) -> None:
        """Add to a named counter now (see `count` for one that can wait)."""
        self._create()
        self._sql.execute(
            "INSERT INTO room_meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = value + excluded.value",
            counter,
            by,
        )

    def count(self, counter: str, by: int = 1) -> None:
        """Add to an operator counter (wakes, rejections) with the room's next write."""
        self._unsaved_counts[counter] = self._unsaved_counts.get(counter, 0) + by

    def counter(self, name: str) -> int:
        """A counter's value, including what is counted but not yet written."""
        return int(self.meta(name) or 0) + self._unsaved_counts.get(name, 0)

    def save_counts(self) -> None:
        """Write the counters now (before a local room closes its database). A room that never
        stored anything drops them: counting its wakes must not create it."""
        if self._unsaved_counts and self._created:
            self._transaction(lambda: None)

    def _transaction(self, write: Callable[[], T]) -> T:
        """Run ``write`` atomically, with the counters counted since the last write."""

        def write_with_counts() -> T:
            self._create()
            for counter, by in self._unsaved_counts.items():
                self.bump(counter, by)
            return write()

        created = self._created
        try:
            result = self._sql.transaction(write_with_counts)
        except BaseException:
            self._created = created  # the tables were rolled back with the rest
            raise
        self._unsaved_counts.clear()  # only once the commit succeeded
        return result

    # ----------------------------------------------------------------------- archiving

    @property
    def archived(self) -> int:
        """The highest seq confirmed archived (in R2 and indexed in D1)."""
        return self._archived

    def pending_segment(self) -> tuple[int, int] | None:
        """The range an unfinished archive attempt chose; a retry must reuse it exactly."""
        first, last = self.meta("pending_first"), self.meta("pending_last")
        if first is None or last is None:
            return None
        return int(first), int(last)

    def choose_segment(self, max_messages: int) -> tuple[int, int] | None:
        """The next range to archive, persisted before any I/O so that retries agree on it."""
        pending = self.pending_segment()
        if pending is not None:
            return pending
        first, last = self._archived + 1, min(self._head, self._archived + max_messages)
        if first > last:
            return None

        def write() -> None:
            self.set_meta("pending_first", first)
            self.set_meta("pending_last", last)

        self._transaction(write)
        return first, last

    def mark_archived(self, last: int) -> None:
        def write() -> None:
            self.set_meta("archived", last)
            self._sql.execute(
                "DELETE FROM room_meta WHERE key IN ('pending_first', 'pending_last')"
            )

        self._sql.transaction(write)
        self._archived = last

    def prune(
        self, retain_messages: int, dedupe_before_ms: int, *, archived_only: bool = True
    ) -> int:
        """Drop rows beyond the newest ``retain_messages``; return how many went.

        With an archive only confirmed-archived messages are ever deleted, so nothing is lost;
        a room without one (``archived_only=False``) keeps exactly its retention window. Dedupe
        entries are kept for their own time window, independent of message rows.
        """
        if not self._created:
            return 0
        newest_kept = self._head - retain_messages
        cutoff = min(self._archived, newest_kept) if archived_only else newest_kept
        removed = 0
        if cutoff > 0:
            self.set_meta("head", self._head)  # the rows that told it may all be going
            counted = self._sql.execute("SELECT COUNT(*) FROM messages WHERE seq <= ?", cutoff)
            removed = int(counted[0][0] or 0)
            self._sql.execute("DELETE FROM messages WHERE seq <= ?", cutoff)
        self._sql.execute("DELETE FROM dedupe WHERE at_ms < ?", dedupe_before_ms)
        return removed

    def retained_count(self) -> int:
        return self._count("SELECT COUNT(*) FROM messages")

    def dedupe_count(self) -> int:
        return self._count("SELECT COUNT(*) FROM dedupe")

    def between(self, first: int, last: int) -> list[Message]:
        """The retained messages with first <= seq <= last, oldest first."""
        rows = self._rows(
            f"SELECT {_READ_COLUMNS} FROM messages WHERE seq BETWEEN ? AND ? ORDER BY seq",
            first,
            last,
        )
        return [_message(row) for row in rows]

    # ----------------------------------------------------------------------- reads

    def get(self, seq: int) -> Message | None:
        rows = self._rows(f"SELECT {_READ_COLUMNS} FROM messages WHERE seq = ?", seq)
        return _message(rows[0]) if rows else None

    def oldest_retained(self) -> int:
        """The lowest seq still stored here (head + 1 when nothing is)."""
        rows = self._rows("SELECT MIN(seq) FROM messages")
        low = rows[0][0] if rows else None
        return int(low) if low is not None else self._head + 1

    def after(self, since: int, limit: int) -> list[Message]:
        """Up to ``limit`` messages with seq > ``since``, oldest first."""
        rows = self._rows(
            f"SELECT {_READ_COLUMNS} FROM messages WHERE seq > ? ORDER BY seq LIMIT ?",
            since,
            limit,
        )
        return [_message(row) for row in rows]

    def before(self, before: int, limit: int) -> list[Message]:
        """Up to ``limit`` messages with seq < ``before``, oldest first."""
        rows = self._rows(
            f"SELECT {_READ_COLUMNS} FROM messages WHERE seq < ? ORDER BY seq DESC LIMIT ?",
            before,
            limit,
        )
        return [_message(row) for row in reversed(rows)]

"""Archiving a room to R2 (segments) and D1 (the index), and reading it back.

The steps, each safe to retry from the top after a failure anywhere:

1. choose the range after the last archived seq and persist it as *pending* in the room's own
   SQL (a retry reuses it, so the key and the bytes are the same);
2. put the segment to R2 under its deterministic key (an overwrite writes identical bytes);
3. record it in D1: ``INSERT OR IGNORE`` the segment row (the host then refreshes the room's
   row in the directory, `rooms.directory`);
4. mark the range archived in the room's SQL, then prune old rows beyond the retention window.

After the new segments, each run rewrites the segments that still hold a body a delete removed
(the room's `redactions` queue): same key, those bodies blanked, the index's size updated. Until
that succeeds every archive read is redacted by the room (docs/protocol.md, "What a delete
removes").

A crash between 2 and 3 repeats 2 and 3; between 3 and 4 repeats 2 and 3, whose insert is then
a no-op. So in effect each message is archived exactly once, the index has no gaps (ranges are
consecutive because ``archived`` only moves after step 3), and no range is indexed twice.

The ports are async because R2 and D1 are remote on Cloudflare; the logic has no platform code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field

from rooms.protocol import Message, SeqRange
from rooms.segments import SegmentError, decode_segment, encode_segment, segment_key
from rooms.store import RoomStore, SqlValue

Row = Mapping[str, SqlValue]


class Database(Protocol):
    """The D1 binding, reduced to prepared statements."""

    async def all(self, query: str, *params: SqlValue) -> list[Row]: ...
    async def batch(self, statements: Sequence[tuple[str, Sequence[SqlValue]]]) -> None:
        """Run the statements in one transaction (D1's batch is atomic)."""
        ...


class ObjectStore(Protocol):
    """The R2 binding, reduced to whole-object put and get."""

    async def put(self, key: str, data: bytes) -> None: ...
    async def get(self, key: str) -> bytes | None: ...


class ArchivePolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    interval_ms: int = Field(default=30_000, ge=0, description="archive this long after a write")
    threshold: int = Field(default=500, ge=1, description="archive at once past this many")
    max_segment: int = Field(default=1000, ge=1, le=10_000)
    retain_messages: int = Field(default=2000, ge=0, description="rows kept in the room")
    dedupe_window_ms: int = Field(default=24 * 3600 * 1000, ge=0)
    retry_base_ms: int = Field(default=1000, ge=1)
    retry_max_ms: int = Field(default=5 * 60 * 1000, ge=1)

    def retry_delay_ms(self, failures: int) -> int:
        """Exponential backoff after ``failures`` consecutive failed attempts."""
        return int(min(self.retry_max_ms, self.retry_base_ms * 2 ** max(0, failures - 1)))


@dataclass(frozen=True)
class ArchiveOutcome:
    archived: list[SeqRange]
    pruned: int
    error: str | None = None
    more: bool = False  # messages are still waiting: archive again soon


class ArchiveIndex:
    """The D1 side: the segments index (the room list is `rooms.directory`)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def record(
        self, room: str, first: int, last: int, size: int, key: str, now_ms: int
    ) -> None:
        await self.db.batch(
            [
                (
                    "INSERT OR IGNORE INTO segments "
                    "(room, first_seq, last_seq, count, bytes, key, created_ms) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (room, first, last, last - first + 1, size, key, now_ms),
                ),
            ]
        )

    async def resize(self, room: str, first: int, size: int) -> None:
        """A segment was rewritten in place (a delete redacted it): record its new size."""
        await self.db.batch(
            [
                (
                    "UPDATE segments SET bytes = ? WHERE room = ? AND first_seq = ?",
                    (size, room, first),
                )
            ]
        )

    async def segments(
        self, room: str, first: int = 1, last: int | None = None, limit: int = 1000
    ) -> list[Row]:
        """Index rows of the segments overlapping [first, last] (no upper bound when None)."""
        # No sentinel like 2**53 - 1 for "no bound": Pyodide passes it to JS as a BigInt,
        # which D1 refuses to bind (found by the Pyodide tier).
        columns = "SELECT room, first_seq, last_seq, count, bytes, key, created_ms FROM segments"
        if last is None:
            return await self.db.all(
                f"{columns} WHERE room = ? AND last_seq >= ? ORDER BY first_seq LIMIT ?",
                room,
                first,
                limit,
            )
        return await self.db.all(
            f"{columns} WHERE room = ? AND last_seq >= ? AND first_seq <= ? "
            "ORDER BY first_seq LIMIT ?",
            room,
            first,
            last,
            limit,
        )


class ArchiveReader:
    """Serves seq ranges that a room no longer retains, from R2 through the D1 index."""

    def __init__(self, index: ArchiveIndex, bucket: ObjectStore) -> None:
        self.index = index
        self.bucket = bucket

    async def read(self, room: str, first: int, last: int) -> tuple[list[Message], list[SeqRange]]:
        """Messages in [first, last] and the ranges that could not be served. Never raises."""
        try:
            rows = await self.index.segments(room, first, last)
        except Exception:
            return [], [SeqRange(first, last)]
        messages: list[Message] = []
        expected = first
        missing: list[SeqRange] = []
        for row in rows:
            seg_first, seg_last = int(row["first_seq"] or 0), int(row["last_seq"] or 0)
            try:
                data = await self.bucket.get(str(row["key"]))
                if data is None:
                    raise SegmentError(f"segment object {row['key']} is missing")
                got = decode_segment(data, room, seg_first, seg_last)
            except Exception:
                continue  # reported as missing below: a hole is named, never skipped
            for message in got:
                if expected <= message.seq <= last:
                    if message.seq > expected:
                        missing.append(SeqRange(expected, message.seq - 1))
                    messages.append(message)
                    expected = message.seq + 1
        if expected <= last:
            missing.append(SeqRange(expected, last))
        return messages, missing


class Archiver:
    """One room's archive step, run from its alarm."""

    def __init__(
        self,
        room: str,
        store: RoomStore,
        index: ArchiveIndex,
        bucket: ObjectStore,
        policy: ArchivePolicy,
    ) -> None:
        self.room = room
        self.store = store
        self.index = index
        self.bucket = bucket
        self.policy = policy

    def due_in_ms(self) -> int | None:
        """When the next archive should run, counted from a write; None when all is archived."""
        if self.store.redaction_due:  # a delete reached archived messages: rewrite them now
            return 0
        waiting = self.store.head - self.store.archived
        if waiting <= 0 and self.store.pending_segment() is None:
            return None
        return 0 if waiting >= self.policy.threshold else self.policy.interval_ms

    async def run(self, now_ms: int) -> ArchiveOutcome:
        """Archive everything waiting, segment by segment. Records failures; never raises."""
        done: list[SeqRange] = []
        for _ in range(20):  # bounded work per alarm; `more` asks for another run
            chosen = self.store.choose_segment(self.policy.max_segment)
            if chosen is None:
                break
            first, last = chosen
            try:
                await self._archive(first, last, now_ms)
            except Exception as exc:
                return self._failed(done, f"{type(exc).__name__} archiving {first}-{last}")
            done.append(SeqRange(first, last))
        try:
            await self._redact()
        except Exception as exc:
            return self._failed(done, f"{type(exc).__name__} redacting segments")
        self.store.set_meta("archive_failures", 0)
        pruned = self.store.prune(
            self.policy.retain_messages, now_ms - self.policy.dedupe_window_ms
        )
        more = self.store.head > self.store.archived
        return ArchiveOutcome(done, pruned, more=more)

    def _failed(self, done: list[SeqRange], error: str) -> ArchiveOutcome:
        failures = int(self.store.meta("archive_failures") or 0) + 1
        self.store.set_meta("archive_failures", failures)
        self.store.set_meta("last_archive_error", error)
        return ArchiveOutcome(done, 0, error=error)

    async def _redact(self) -> None:
        """Rewrite the archived segments that hold bodies a delete removed."""
        pending = [seq for seq in self.store.pending_redactions() if seq <= self.store.archived]
        if not pending:
            self.store.redaction_due = False
            return
        for row in await self.index.segments(self.room, pending[0], pending[-1]):
            first, last = int(row["first_seq"] or 0), int(row["last_seq"] or 0)
            if not any(first <= seq <= last for seq in pending):
                continue
            key = str(row["key"])
            data = await self.bucket.get(key)
            if data is None:
                raise SegmentError(f"segment object {key} is missing")
            messages = decode_segment(data, self.room, first, last)
            cleaned = self.store.redact(messages)
            if cleaned != messages:
                rewritten = encode_segment(self.room, cleaned)
                await self.bucket.put(key, rewritten)
                await self.index.resize(self.room, first, len(rewritten))
            self.store.clear_redactions(first, last)
        self.store.redaction_due = False

    async def _archive(self, first: int, last: int, now_ms: int) -> None:
        messages = self.store.between(first, last)
        if [m.seq for m in messages] != list(range(first, last + 1)):
            raise SegmentError(f"rows {first}-{last} are incomplete; refusing to archive a gap")
        data = encode_segment(self.room, messages)
        key = segment_key(self.room, first, last)
        await self.bucket.put(key, data)
        await self.index.record(self.room, first, last, len(data), key, now_ms)
        self.store.mark_archived(last)

"""What an operator asks of one awake room: inspection, reads, actions, its directory row.

`rooms.admin` (the front) reaches a room through the `RoomControl` port; the room's object
(or the local room actor) then calls `RoomHost.admin`, which hands over to `RoomOperator`. Kept
out of `RoomHost` so that the class on the message path holds the message path only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import msgspec

from rooms.directory import DirectoryEntry
from rooms.effects import Log
from rooms.engine import BAN_PREFIX
from rooms.logs import log_line
from rooms.protocol import CloseCode, Message, SeqRange

if TYPE_CHECKING:
    from rooms.host import RoomHost

KICKED_REASON = "disconnected by an operator"
# The newest this many messages when an operator names no range.
RECENT_MESSAGES = 50


class RoomOperator:
    """One room's answers to the admin API; every method runs inside the room's object."""

    def __init__(self, host: RoomHost[Any]) -> None:
        self.host = host

    async def run(self, action: str, params: Mapping[str, str]) -> dict[str, Any]:
        """Run one admin action (see rooms.admin); returns its JSON-able result."""
        host = self.host
        if action == "inspect":
            await self.refresh_directory()
            return self.inspect()
        if action == "messages":
            return await self.messages(params)
        if action == "archive":
            outcome = await host.alarm()
            if outcome is None:
                return {"archived": [], "error": "archiving is not configured"}
            return {
                "archived": [[r.first, r.last] for r in outcome.archived],
                "pruned": outcome.pruned,
                "error": outcome.error,
            }
        if action in ("disconnect", "ban"):
            user_id = params.get("user_id", "")
            result: dict[str, Any] = {"user_id": user_id}
            if action == "ban":  # before the sockets go, so that none can come straight back
                result["until_ms"] = host.now_ms() + int(params["duration_s"]) * 1000
                host.engine.ban(user_id, result["until_ms"])
            conn_ids = [c for c, p in host.engine.peers.items() if p.user_id == user_id]
            for conn_id in conn_ids:
                await host.close_connection(conn_id, CloseCode.KICKED, KICKED_REASON)
            return {**result, "sockets_closed": len(conn_ids)}
        if action in ("close", "open"):
            host.engine.set_closed(action == "close")
            return {"closed": host.engine.closed}
        if action == "delete":
            return await self.delete(int(params["seq"]))
        raise ValueError(f"unknown admin action {action!r}")

    async def delete(self, seq: int) -> dict[str, Any]:
        """Delete message ``seq`` as an operator, even one only the archive still holds.

        The answer names the delete event's seq (an earlier one when the message was already
        deleted), or carries ``refused``: an error code and message for the admin API."""
        host = self.host
        store = host.engine.store
        message = store.get(seq) if 1 <= seq <= store.head else None
        if message is None and 1 <= seq < store.oldest_retained() and host.archive is not None:
            archived, _ = await host.archive.reader.read(host.room, seq, seq)
            if not archived:
                return _refused("archive_unavailable", "the archive could not serve the message")
            message = archived[0]
        if message is None or message.kind is not None:
            return _refused("message_not_found", f"seq {seq} is not a message in this room")
        effects, deleted_by = host.engine.operator_delete(seq, message.user_id, host.now_ms())
        await host.apply(effects)
        return {
            "seq": seq,
            "author": message.user_id,
            "deleted_by_seq": deleted_by,
            "already_deleted": not effects,
        }

    # ----------------------------------------------------------------------- reads

    def inspect(self) -> dict[str, Any]:
        host = self.host
        store = host.engine.store
        members: dict[str, dict[str, Any]] = {}
        for peer in host.engine.peers.values():
            if not peer.joined:
                continue
            entry = members.setdefault(
                peer.user_id, {"user_id": peer.user_id, "name": peer.name, "sockets": []}
            )
            entry["sockets"].append(
                {
                    "conn_id": peer.conn_id,
                    "joined_ms": peer.joined_ms,
                    "last_message_ms": peer.last_message_ms,
                    "messages_sent": peer.sent,
                }
            )
        row = self.directory_entry()
        error = store.meta("last_archive_error")
        now_ms = host.now_ms()
        bans = [
            {"user_id": user_id, "until_ms": int(until)}
            for user_id, until in sorted(store.metas(BAN_PREFIX).items())
            if until is not None and int(until) > now_ms
        ]
        return {
            "room": host.room,
            "created_ms": row.created_ms,
            "last_activity_ms": row.last_activity_ms,
            "members": sorted(members.values(), key=lambda m: str(m["user_id"])),
            "member_count": row.member_count,
            "socket_count": row.socket_count,
            "head_seq": store.head,
            "archived_seq": store.archived,
            "oldest_retained_seq": store.oldest_retained(),
            "rows_retained": store.retained_count(),
            "dedupe_entries": store.dedupe_count(),
            "storage_bytes": host.storage_bytes(),
            "next_alarm_ms": host.next_alarm_ms,
            "wakes": store.counter("wakes"),
            "rate_limit_rejections": store.counter("rate_limited"),
            "slow_consumer_disconnects": store.counter("slow_consumer"),
            "archive_failures": int(store.meta("archive_failures") or 0),
            "last_archive_error": str(error) if error is not None else None,
            "closed": host.engine.closed,
            "bans": bans,  # the timed bans still running
            "events": store.event_counts(),
            "redactions_pending": store.redaction_count(),
        }

    async def messages(self, params: Mapping[str, str]) -> dict[str, Any]:
        """Messages of [first, last], bounded by the head: the retained rows from the room's
        storage, older ones from the archive. Without a range, the newest RECENT_MESSAGES;
        with ``first`` only, up to ``count`` from there. ``missing`` names real holes only
        (ranges the archive could not serve), never seqs past the head."""
        host = self.host
        store = host.engine.store
        head = store.head
        count = int(params.get("count") or RECENT_MESSAGES)
        if "first" in params:
            first = int(params["first"])
            last = min(int(params.get("last") or first + count - 1), head)
        else:
            last = min(int(params.get("last") or head), head)
            first = max(1, last - count + 1)
        messages: list[Message] = []
        missing: list[SeqRange] = []
        if first <= last:
            oldest = store.oldest_retained()
            if first < oldest:
                below = min(last, oldest - 1)
                if host.archive is None:
                    missing.append(SeqRange(first, below))
                else:
                    messages, missing = await host.archive.reader.read(host.room, first, below)
                    # The archive may predate a delete: its bodies never reach an operator.
                    messages = store.redact(messages)
            if last >= oldest:
                messages += store.between(max(first, oldest), last)
        bodies = params.get("bodies", "1") != "0"
        return {
            "room": host.room,
            "head_seq": head,
            "first": first,
            "last": last,
            "messages": [_message_dict(m, bodies) for m in messages],
            "missing": [[r.first, r.last] for r in missing],
        }

    # ----------------------------------------------------------------------- directory

    def directory_entry(self) -> DirectoryEntry:
        """This room's row in the directory (`rooms.directory`), as of now."""
        host = self.host
        store = host.engine.store
        now_ms = host.now_ms()
        oldest = store.oldest_retained()
        retained = store.head - oldest + 1  # the rows are gapless up to the head
        # The oldest retained row is the first message until a prune; past that the directory
        # already holds the true creation time, and keeps the earlier of the two.
        first = store.get(oldest) if retained > 0 else None
        # One row (a room's first message): read it once.
        newest = first if retained == 1 else store.get(store.head) if retained > 0 else None
        return DirectoryEntry(
            name=host.room,
            created_ms=first.sent_ms if first is not None else now_ms,
            last_activity_ms=newest.sent_ms if newest is not None else 0,
            head_seq=store.head,
            archived_seq=store.archived,
            member_count=len(host.engine.members()),
            socket_count=sum(1 for p in host.engine.peers.values() if not p.closed),
            rows_retained=retained,
            updated_ms=now_ms,
        )

    async def refresh_directory(self) -> None:
        """Write this room's directory row; a failure is logged, and the next write repairs it."""
        host = self.host
        if host.archive is None or host.engine.store.head == 0:
            return  # no directory, or no message yet: a room is listed from its first
        try:
            await host.archive.directory.record(self.directory_entry())
        except Exception as exc:
            host.emit(log_line(host.room, Log("directory_write_failed", code=type(exc).__name__)))


def _refused(code: str, message: str) -> dict[str, Any]:
    return {"refused": {"code": code, "message": message}}


def _message_dict(message: Message, body: bool) -> dict[str, Any]:
    # As on the wire: a plain message has the v1 fields, an event adds its own.
    fields: dict[str, Any] = msgspec.to_builtins(message)
    del fields["type"]
    if not body:
        fields["body_chars"] = len(fields.pop("body"))
    return fields

"""The admin room-inspection API, platform-free: routing, auth, D1 queries, audit.

Every route needs ``Authorization: Bearer <ADMIN_TOKEN>`` (compared in constant time; a wrong
or missing token gets the same 401, never a hint). Room-wide reads come from D1; a room's live
state comes from its object through the `RoomControl` port (a Durable Object stub on Cloudflare,
the room actor locally). Every action that changes something is written to D1's ``audit`` table.

Every route, with request and response examples, is in docs/admin.md (a test checks those
examples against the real server): the room list (the directory, `rooms.directory`), live
inspection, messages, archive segments, the actions, and the audit log.
"""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from pydantic import BaseModel

from rooms.archive import ArchiveReader, Database
from rooms.front import BAD_ROOM_NAME, ROOM_NAME, HttpReply, error_reply
from rooms.operator import RECENT_MESSAGES
from rooms.store import SqlValue

MAX_READ_RANGE = 1000
# `sort` values of the room list and the directory columns they order by.
SORT_COLUMNS = {
    "last_activity": "last_activity_ms",
    "name": "name",
    "created": "created_ms",
    "head": "head_seq",
    "members": "member_count",
    "sockets": "socket_count",
}
# Seqs a client may name; beyond 2**53 - 2 a number would reach JS as a BigInt.
MAX_SEQ = 2**53 - 2
_ROOM_ROUTE = re.compile(r"/admin/rooms/([^/]+)(?:/([a-z]+))?")
ROOM_ACTIONS = frozenset({"archive", "disconnect", "ban", "close", "open", "delete"})
# Why a room refused an operator's delete, as HTTP statuses.
_DELETE_REFUSALS = {"message_not_found": 404, "archive_unavailable": 503}
MAX_BAN_S = 30 * 24 * 3600


class RoomSummary(BaseModel):
    """A room's directory row: its figures as of `updated_ms` (rooms.directory)."""

    name: str
    created_ms: int
    last_activity_ms: int
    head_seq: int
    archived_seq: int
    member_count: int
    socket_count: int
    rows_retained: int
    updated_ms: int


class RoomList(BaseModel):
    rooms: list[RoomSummary]
    total: int  # rooms matching `q`, on every page
    next_cursor: str | None  # pass as `cursor` (same sort, order and q) for the next page


class SocketInfo(BaseModel):
    conn_id: str
    joined_ms: int
    last_message_ms: int
    messages_sent: int


class MemberInfo(BaseModel):
    user_id: str
    name: str
    sockets: list[SocketInfo]


class BanInfo(BaseModel):
    user_id: str
    until_ms: int


class EventCounts(BaseModel):
    """Lifecycle events the room has stored since it was created, by kind."""

    edit: int
    delete: int
    react: int
    unreact: int


class Inspection(BaseModel):
    room: str
    created_ms: int
    last_activity_ms: int
    members: list[MemberInfo]
    member_count: int
    socket_count: int
    head_seq: int
    archived_seq: int
    oldest_retained_seq: int
    rows_retained: int
    dedupe_entries: int
    storage_bytes: int
    next_alarm_ms: int | None
    wakes: int
    rate_limit_rejections: int
    slow_consumer_disconnects: int
    archive_failures: int
    last_archive_error: str | None
    closed: bool
    bans: list[BanInfo]
    events: EventCounts
    redactions_pending: int  # deleted seqs an R2 segment still holds until the next archive run


class SegmentInfo(BaseModel):
    first_seq: int
    last_seq: int
    count: int
    bytes: int
    key: str
    created_ms: int


class SegmentList(BaseModel):
    room: str
    segments: list[SegmentInfo]


class MessageList(BaseModel):
    room: str
    head_seq: int
    first: int
    last: int
    messages: list[dict[str, Any]]  # with `body`, or `body_chars` when asked with bodies=0
    missing: list[tuple[int, int]]  # seqs in [first, last] that neither storage could serve


class ActionResult(BaseModel):
    room: str
    action: str
    result: dict[str, Any]


class AuditEntry(BaseModel):
    id: int
    at_ms: int
    actor: str
    action: str
    room: str | None
    target: str | None
    detail: str | None


class DirectoryTotals(BaseModel):
    rooms: int
    members: int
    sockets: int
    messages: int  # the sum of the rooms' heads
    unarchived: int  # messages not archived yet, summed over the rooms


class Overview(BaseModel):
    """The service at a glance: the directory's totals (as of each room's `updated_ms`), and
    the runtime's live counters where it has them (the local runtime; null on Cloudflare, whose
    figures are in Analytics Engine)."""

    now_ms: int
    directory: DirectoryTotals
    live: dict[str, Any] | None


class AuditList(BaseModel):
    entries: list[AuditEntry]
    next_cursor: str | None  # pass as `cursor` for older entries


class RoomControl(Protocol):
    """Reach one room's live object. Returns the room's answer, or None for no such room."""

    async def call(
        self, room: str, action: str, params: Mapping[str, str]
    ) -> dict[str, Any] | None: ...


def authorized(headers: Mapping[str, str], admin_token: str | None) -> bool:
    if not admin_token:
        return False  # no admin token configured: the API is closed
    given = headers.get("authorization", "")
    expected = f"Bearer {admin_token}"
    # surrogateescape: a header byte that is not UTF-8 (the local server keeps it as a lone
    # surrogate) is a wrong token, not an error.
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected.encode())


def _reply(model: BaseModel, status: int = 200) -> HttpReply:
    return HttpReply(status, model.model_dump_json().encode())


def _int(query: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    if not raw.isascii() or not raw.isdigit() or not low <= int(raw) <= high:
        raise ValueError(f"`{name}` must be a whole number from {low} to {high}")
    return int(raw)


class AdminApi:
    """Answers /admin/* requests."""

    def __init__(
        self,
        db: Database,
        reader: ArchiveReader,
        rooms: RoomControl,
        admin_token: str | None,
        live: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.db = db
        self.reader = reader
        self.rooms = rooms
        self.admin_token = admin_token
        self.live = live

    async def handle(
        self,
        method: str,
        path: str,
        query: Mapping[str, str],
        headers: Mapping[str, str],
        now_ms: int,
    ) -> HttpReply:
        if not authorized(headers, self.admin_token):
            return error_reply(401, "unauthorized", "admin credentials required")
        try:
            return await self._route(method, path, query, now_ms)
        except ValueError as exc:
            return error_reply(400, "bad_request", str(exc))

    async def _route(
        self, method: str, path: str, query: Mapping[str, str], now_ms: int
    ) -> HttpReply:
        if path == "/admin/rooms":
            return await self._only(method, "GET") or await self.list_rooms(query)
        if path == "/admin/audit":
            return await self._only(method, "GET") or await self.audit(query)
        if path == "/admin/overview":
            return await self._only(method, "GET") or await self.overview(now_ms)
        match = _ROOM_ROUTE.fullmatch(path)
        if match is None:
            return error_reply(404, "not_found", "no such admin route")
        room, sub = match.group(1), match.group(2)
        if not ROOM_NAME.fullmatch(room):
            return error_reply(400, "bad_room_name", BAD_ROOM_NAME)
        if sub is None:
            return await self._only(method, "GET") or await self.inspect(room)
        if sub == "segments":
            return await self._only(method, "GET") or await self.segments(room, query)
        if sub == "messages":
            return await self._only(method, "GET") or await self.messages(room, query, now_ms)
        if sub in ROOM_ACTIONS:
            return await self._only(method, "POST") or await self.act(room, sub, query, now_ms)
        return error_reply(404, "not_found", "no such admin route")

    @staticmethod
    async def _only(method: str, allowed: str) -> HttpReply | None:
        if method != allowed:
            return error_reply(405, "method_not_allowed", f"use {allowed}")
        return None

    async def list_rooms(self, query: Mapping[str, str]) -> HttpReply:
        limit = _int(query, "limit", 50, 1, 500)
        sort = query.get("sort", "last_activity")
        column = SORT_COLUMNS.get(sort)
        if column is None:
            raise ValueError(f"`sort` must be one of {', '.join(SORT_COLUMNS)}")
        order = query.get("order", "desc")
        if order not in ("asc", "desc"):
            raise ValueError("`order` must be asc or desc")
        filters: list[str] = []
        params: list[SqlValue] = []
        name_filter = query.get("q", "")
        if name_filter:
            if not ROOM_NAME.fullmatch(name_filter):
                raise ValueError("`q` is part of a room name: letters, digits, '.', '_', '-'")
            filters.append("instr(lower(name), ?) > 0")
            params.append(name_filter.lower())
        counted = await self.db.all("SELECT COUNT(*) AS n FROM rooms" + _where(filters), *params)
        total = int(counted[0]["n"] or 0) if counted else 0
        cursor = query.get("cursor")
        if cursor:
            params.extend(_parse_cursor(cursor, column))
            keys = "name" if column == "name" else f"({column}, name)"
            marks = "?" if column == "name" else "(?, ?)"
            filters.append(f"{keys} {'<' if order == 'desc' else '>'} {marks}")
        direction = order.upper()
        tiebreak = "" if column == "name" else f", name {direction}"
        rows = await self.db.all(
            f"SELECT {', '.join(RoomSummary.model_fields)} FROM rooms{_where(filters)} "
            f"ORDER BY {column} {direction}{tiebreak} LIMIT ?",
            *params,
            limit + 1,
        )
        rooms = [RoomSummary.model_validate(dict(row)) for row in rows[:limit]]
        last = rooms[-1] if len(rows) > limit else None
        next_cursor = None
        if last is not None:
            value = getattr(last, column)
            next_cursor = last.name if column == "name" else f"{value}:{last.name}"
        return _reply(RoomList(rooms=rooms, total=total, next_cursor=next_cursor))

    async def overview(self, now_ms: int) -> HttpReply:
        rows = await self.db.all(
            "SELECT COUNT(*) AS rooms, COALESCE(SUM(member_count), 0) AS members, "
            "COALESCE(SUM(socket_count), 0) AS sockets, COALESCE(SUM(head_seq), 0) AS messages, "
            "COALESCE(SUM(head_seq - archived_seq), 0) AS unarchived FROM rooms"
        )
        totals = DirectoryTotals.model_validate(dict(rows[0]))
        live = self.live() if self.live is not None else None
        return _reply(Overview(now_ms=now_ms, directory=totals, live=live))

    async def inspect(self, room: str) -> HttpReply:
        answer = await self.rooms.call(room, "inspect", {})
        if answer is None:
            return error_reply(404, "room_not_found", "no such room")
        return _reply(Inspection.model_validate(answer))

    async def segments(self, room: str, query: Mapping[str, str]) -> HttpReply:
        after = _int(query, "after", 0, 0, MAX_SEQ - 1)
        limit = _int(query, "limit", 100, 1, 1000)
        rows = await self.reader.index.segments(room, after + 1, None, limit)
        return _reply(
            SegmentList(room=room, segments=[SegmentInfo.model_validate(dict(row)) for row in rows])
        )

    async def messages(self, room: str, query: Mapping[str, str], now_ms: int) -> HttpReply:
        params: dict[str, str] = {}
        for name in ("first", "last"):
            if name in query:
                params[name] = str(_int(query, name, 1, 1, MAX_SEQ))
        params["count"] = str(_int(query, "count", RECENT_MESSAGES, 1, MAX_READ_RANGE))
        if "first" in params and "last" in params:
            first, last = int(params["first"]), int(params["last"])
            if last < first or last - first + 1 > MAX_READ_RANGE:
                raise ValueError(f"ask for 1 to {MAX_READ_RANGE} seqs with first <= last")
        bodies = query.get("bodies", "1")
        if bodies not in ("0", "1"):
            raise ValueError("`bodies` must be 0 or 1")
        params["bodies"] = bodies
        answer = await self.rooms.call(room, "messages", params)
        if answer is None:
            return error_reply(404, "room_not_found", "no such room")
        listed = MessageList.model_validate(answer)
        if bodies == "1" and listed.messages:  # who read which messages is on the record
            seqs = f"{listed.first}-{listed.last}"
            detail = {"first": listed.first, "last": listed.last, "count": len(listed.messages)}
            await self._audit(now_ms, "read_messages", room, seqs, detail)
        return _reply(listed)

    async def act(self, room: str, action: str, query: Mapping[str, str], now_ms: int) -> HttpReply:
        params: dict[str, str] = {}
        target = None
        if action in ("disconnect", "ban"):
            target = query.get("user_id")
            if not target:
                raise ValueError("`user_id` is required")
            params["user_id"] = target
        if action == "ban":
            params["duration_s"] = str(_int(query, "duration_s", 3600, 60, MAX_BAN_S))
        if action == "delete":
            if "seq" not in query:
                raise ValueError("`seq` is required")
            params["seq"] = target = str(_int(query, "seq", 1, 1, MAX_SEQ))
        answer = await self.rooms.call(room, action, params)
        if answer is None:
            return error_reply(404, "room_not_found", "no such room")
        refused = answer.get("refused")
        if isinstance(refused, dict):
            code = str(refused.get("code"))
            return error_reply(_DELETE_REFUSALS.get(code, 400), code, str(refused.get("message")))
        await self._audit(now_ms, action, room, target, answer)
        return _reply(ActionResult(room=room, action=action, result=answer))

    async def _audit(
        self, now_ms: int, action: str, room: str, target: str | None, detail: dict[str, Any]
    ) -> None:
        await self.db.batch(
            [
                (
                    "INSERT INTO audit (at_ms, actor, action, room, target, detail) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (now_ms, "admin", action, room, target, json.dumps(detail, sort_keys=True)),
                )
            ]
        )

    async def audit(self, query: Mapping[str, str]) -> HttpReply:
        limit = _int(query, "limit", 100, 1, 1000)
        filters: list[str] = []
        params: list[SqlValue] = []
        room = query.get("room")
        if room is not None:
            if not ROOM_NAME.fullmatch(room):
                raise ValueError(BAD_ROOM_NAME)
            filters.append("room = ?")
            params.append(room)
        if "cursor" in query:
            filters.append("id < ?")
            params.append(_int(query, "cursor", 1, 1, MAX_SEQ))
        rows = await self.db.all(
            f"SELECT * FROM audit{_where(filters)} ORDER BY id DESC LIMIT ?", *params, limit + 1
        )
        entries = [AuditEntry.model_validate(dict(r)) for r in rows[:limit]]
        next_cursor = str(entries[-1].id) if len(rows) > limit else None
        return _reply(AuditList(entries=entries, next_cursor=next_cursor))


def _where(filters: list[str]) -> str:
    return " WHERE " + " AND ".join(filters) if filters else ""


def _parse_cursor(cursor: str, column: str) -> list[SqlValue]:
    """The keyset a `next_cursor` of this sort names (``value:name``, or the name alone)."""
    if column == "name":
        if not ROOM_NAME.fullmatch(cursor):
            raise ValueError("`cursor` is not one this API returned")
        return [cursor]
    value, _, name = cursor.partition(":")
    if not (value.isascii() and value.isdigit() and ROOM_NAME.fullmatch(name)) or (
        int(value) > MAX_SEQ  # past what SQLite, D1 and JavaScript hold exactly
    ):
        raise ValueError("`cursor` is not one this API returned")
    return [int(value), name]

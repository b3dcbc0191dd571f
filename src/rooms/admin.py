"""The admin room-inspection API, platform-free: routing, auth, D1 queries, audit.

Every route needs ``Authorization: Bearer <ADMIN_TOKEN>`` (compared in constant time; a wrong
or missing token gets the same 401, never a hint). Room-wide reads come from D1; a room's live
state comes from its object through the `RoomControl` port (a Durable Object stub on Cloudflare,
the room actor locally). Every action that changes something is written to D1's ``audit`` table.

Routes (all JSON, shapes below as pydantic models, errors in the common shape):

    GET  /admin/rooms?limit=&cursor=          rooms by last activity, newest first (RoomList)
    GET  /admin/rooms/{room}                  live inspection from the room's object (Inspection)
    GET  /admin/rooms/{room}/segments?after=&limit=      archive segments (SegmentList)
    GET  /admin/rooms/{room}/messages?first=&last=       archived messages (ArchivedMessages)
    POST /admin/rooms/{room}/archive          archive now (ActionResult)
    POST /admin/rooms/{room}/disconnect?user_id=   close a user's sockets with 4003
    POST /admin/rooms/{room}/ban?user_id=&duration_s=   disconnect, and refuse the user's
                                              upgrades (403 banned) for 60 s to 30 days
    POST /admin/rooms/{room}/close            refuse new messages (error `room_closed`)
    POST /admin/rooms/{room}/open             accept messages again
    GET  /admin/audit?limit=                  the newest audit entries (AuditList)
"""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Mapping
from typing import Any, Protocol

from pydantic import BaseModel

from rooms.archive import ArchiveReader, Database
from rooms.front import BAD_ROOM_NAME, ROOM_NAME, HttpReply, error_reply
from rooms.protocol import Message

MAX_READ_RANGE = 1000
# Seqs a client may name; beyond 2**53 - 2 a number would reach JS as a BigInt.
MAX_SEQ = 2**53 - 2
_ROOM_ROUTE = re.compile(r"/admin/rooms/([^/]+)(?:/([a-z]+))?")
ROOM_ACTIONS = frozenset({"archive", "disconnect", "ban", "close", "open"})
MAX_BAN_S = 30 * 24 * 3600


class RoomSummary(BaseModel):
    name: str
    created_ms: int
    last_activity_ms: int
    head_seq: int
    archived_seq: int
    member_count: int


class RoomList(BaseModel):
    rooms: list[RoomSummary]
    next_cursor: str | None  # pass as `cursor` for the next page


class SocketInfo(BaseModel):
    conn_id: str
    joined_ms: int
    last_message_ms: int
    messages_sent: int


class MemberInfo(BaseModel):
    user_id: str
    name: str
    sockets: list[SocketInfo]


class Inspection(BaseModel):
    room: str
    members: list[MemberInfo]
    head_seq: int
    archived_seq: int
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


class ArchivedMessages(BaseModel):
    room: str
    messages: list[dict[str, Any]]
    missing: list[tuple[int, int]]


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


class AuditList(BaseModel):
    entries: list[AuditEntry]


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
        self, db: Database, reader: ArchiveReader, rooms: RoomControl, admin_token: str | None
    ) -> None:
        self.db = db
        self.reader = reader
        self.rooms = rooms
        self.admin_token = admin_token

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
            return await self._only(method, "GET") or await self.messages(room, query)
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
        cursor = query.get("cursor")
        if cursor:
            activity, _, name = cursor.partition(":")
            if not (activity.isascii() and activity.isdigit() and name) or (
                int(activity) > MAX_SEQ  # past what SQLite, D1 and JavaScript hold exactly
            ):
                raise ValueError("`cursor` is not one this API returned")
            rows = await self.db.all(
                "SELECT * FROM rooms WHERE (last_activity_ms, name) < (?, ?) "
                "ORDER BY last_activity_ms DESC, name DESC LIMIT ?",
                int(activity),
                name,
                limit + 1,
            )
        else:
            rows = await self.db.all(
                "SELECT * FROM rooms ORDER BY last_activity_ms DESC, name DESC LIMIT ?", limit + 1
            )
        rooms = [RoomSummary.model_validate(dict(row)) for row in rows[:limit]]
        last = rooms[-1] if len(rows) > limit else None
        next_cursor = f"{last.last_activity_ms}:{last.name}" if last else None
        return _reply(RoomList(rooms=rooms, next_cursor=next_cursor))

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

    async def messages(self, room: str, query: Mapping[str, str]) -> HttpReply:
        first = _int(query, "first", 1, 1, MAX_SEQ)
        last = _int(query, "last", min(first + 99, MAX_SEQ), 1, MAX_SEQ)
        if last < first or last - first + 1 > MAX_READ_RANGE:
            raise ValueError(f"ask for 1 to {MAX_READ_RANGE} seqs with first <= last")
        messages, missing = await self.reader.read(room, first, last)
        return _reply(
            ArchivedMessages(
                room=room,
                messages=[_message_dict(m) for m in messages],
                missing=[(r.first, r.last) for r in missing],
            )
        )

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
        answer = await self.rooms.call(room, action, params)
        if answer is None:
            return error_reply(404, "room_not_found", "no such room")
        await self.db.batch(
            [
                (
                    "INSERT INTO audit (at_ms, actor, action, room, target, detail) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (now_ms, "admin", action, room, target, json.dumps(answer, sort_keys=True)),
                )
            ]
        )
        return _reply(ActionResult(room=room, action=action, result=answer))

    async def audit(self, query: Mapping[str, str]) -> HttpReply:
        limit = _int(query, "limit", 100, 1, 1000)
        rows = await self.db.all("SELECT * FROM audit ORDER BY id DESC LIMIT ?", limit)
        return _reply(AuditList(entries=[AuditEntry.model_validate(dict(r)) for r in rows]))


def _message_dict(message: Message) -> dict[str, Any]:
    return {f: getattr(message, f) for f in message.__struct_fields__}

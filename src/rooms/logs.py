"""Structured logs: one JSON line per event, with only whitelisted, non-sensitive fields."""

from __future__ import annotations

import json

from rooms.effects import Log


def log_line(room: str, event: Log, duration_ms: float | None = None) -> str:
    record: dict[str, object] = {"event": event.event, "room": room}
    if event.user_id is not None:
        record["user_id"] = event.user_id
    if event.conn_id is not None:
        record["conn_id"] = event.conn_id
    if event.seq is not None:
        record["seq"] = event.seq
    if event.code is not None:
        record["code"] = event.code
    if duration_ms is not None:
        record["duration_ms"] = round(duration_ms, 3)
    record.update(event.extra)
    return json.dumps(record, separators=(",", ":"))


def http_log_line(event: str, status: int, path_kind: str, **fields: str | int | float) -> str:
    record: dict[str, object] = {"event": event, "status": status, "path": path_kind, **fields}
    return json.dumps(record, separators=(",", ":"))

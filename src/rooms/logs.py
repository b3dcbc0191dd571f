"""Structured logs: one JSON line per event, with only whitelisted, non-sensitive fields.

A line is written field by field, exactly as `json.dumps(record, separators=(",", ":"))` would
write it: a connect storm writes four lines per connection, and a dict and a `json.JSONEncoder`
for each cost twice what the line itself does.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from json.encoder import encode_basestring_ascii

from rooms.effects import Log

_ESCAPE = encode_basestring_ascii  # a str as `json.dumps` writes it: quoted, escaped, ASCII


def json_value(value: object) -> str:
    """``value`` as `json.dumps` writes it; strs, ints and finite floats without an encoder."""
    if type(value) is str:
        return _ESCAPE(value)
    if type(value) is int:  # not a bool, which json writes as true or false
        return int.__repr__(value)
    if type(value) is float and math.isfinite(value):  # json writes NaN and Infinity its way
        return float.__repr__(value)
    return json.dumps(value, separators=(",", ":"))


_FIXED_FIELDS = frozenset(("event", "room", "user_id", "conn_id", "seq", "code", "duration_ms"))


def _line(parts: list[str], fields: Mapping[str, object]) -> str:
    for name, value in fields.items():
        parts.append(f",{json_value(name)}:{json_value(value)}")
    parts.append("}")
    return "".join(parts)


def log_line(room: str, event: Log, duration_ms: float | None = None) -> str:
    if not _FIXED_FIELDS.isdisjoint(event.extra):  # an extra field replaces one in its place
        return _dict_log_line(room, event, duration_ms)
    parts = [f'{{"event":{json_value(event.event)},"room":{json_value(room)}']
    if event.user_id is not None:
        parts.append(f',"user_id":{json_value(event.user_id)}')
    if event.conn_id is not None:
        parts.append(f',"conn_id":{json_value(event.conn_id)}')
    if event.seq is not None:
        parts.append(f',"seq":{json_value(event.seq)}')
    if event.code is not None:
        parts.append(f',"code":{json_value(event.code)}')
    if duration_ms is not None:
        parts.append(f',"duration_ms":{json_value(round(duration_ms, 3))}')
    return _line(parts, event.extra)


def _dict_log_line(room: str, event: Log, duration_ms: float | None) -> str:
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
    head = f'{{"event":{json_value(event)},"status":{json_value(status)},'
    head += f'"path":{json_value(path_kind)}'
    return _line([head], fields)

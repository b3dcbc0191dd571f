"""Log lines are exactly what `json.dumps` writes for the same fields, in the same order."""

from __future__ import annotations

import json

from hypothesis import given, strategies as st

from rooms.effects import Log
from rooms.logs import http_log_line, log_line

SEPARATORS = (",", ":")
texts = st.text()  # every code point: quotes, controls, separators, surrogates, emoji
scalars = st.one_of(
    texts, st.integers(), st.floats(), st.booleans(), st.none(), st.lists(st.integers())
)
field_names = st.one_of(
    texts, st.sampled_from(["event", "room", "user_id", "conn_id", "seq", "code", "duration_ms"])
)


def reference_log_line(room: str, event: Log, duration_ms: float | None) -> str:
    """The line as rooms.logs wrote it before it wrote field by field: one dict, one dumps."""
    record: dict[str, object] = {"event": event.event, "room": room}
    for name in ("user_id", "conn_id", "seq", "code"):
        if getattr(event, name) is not None:
            record[name] = getattr(event, name)
    if duration_ms is not None:
        record["duration_ms"] = round(duration_ms, 3)
    record.update(event.extra)
    return json.dumps(record, separators=SEPARATORS)


@given(
    room=texts,
    name=texts,
    conn_id=st.none() | texts,
    user_id=st.none() | texts,
    seq=st.none() | st.integers(),
    code=st.none() | texts,
    extra=st.dictionaries(field_names, scalars, max_size=4),
    duration_ms=st.none() | st.floats(allow_nan=False, allow_infinity=False, width=32),
)
def test_a_room_line_is_the_json_of_its_fields(
    room: str,
    name: str,
    conn_id: str | None,
    user_id: str | None,
    seq: int | None,
    code: str | None,
    extra: dict[str, int | str],
    duration_ms: float | None,
) -> None:
    event = Log(name, conn_id, user_id, seq=seq, code=code, extra=extra)
    line = log_line(room, event, duration_ms)
    assert line == reference_log_line(room, event, duration_ms)
    assert "\n" not in line  # one line, whatever a user id holds
    assert line.isascii()


@given(
    event=texts,
    status=st.integers(),
    path=texts,
    fields=st.dictionaries(texts.filter(lambda k: k not in ("event", "status", "path")), scalars),
)
def test_an_http_line_is_the_json_of_its_fields(
    event: str, status: int, path: str, fields: dict[str, str | int | float]
) -> None:
    line = http_log_line(event, status, path, **fields)
    record = {"event": event, "status": status, "path": path, **fields}
    assert line == json.dumps(record, separators=SEPARATORS)


def test_a_connection_line_reads_as_before() -> None:
    event = Log("connect", "c2a0836fa3e45503", "ann", extra={"request_id": "f4e4744eeda60267"})
    assert log_line("lobby", event, 1.14) == (
        '{"event":"connect","room":"lobby","user_id":"ann","conn_id":"c2a0836fa3e45503",'
        '"duration_ms":1.14,"request_id":"f4e4744eeda60267"}'
    )

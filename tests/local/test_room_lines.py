"""`serve` writes the rooms' log lines straight to its handler's stream, the same bytes as
through `logging`, and only where nothing else is configured for them."""

from __future__ import annotations

import io
import logging

import pytest

from roomsd import server
from roomsd.server import room_log, write_room_lines_directly

LINE = '{"event":"connect","room":"lobby","user_id":"alice","conn_id":"c0ffee"}'


def plain_root(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    """The root logger as `serve`'s `logging.basicConfig` leaves it, writing to a buffer. Set
    in the test's body: pytest adds its own capturing handler to the root for each phase."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [handler])
    monkeypatch.setattr(root, "level", logging.INFO)
    rooms = logging.getLogger("rooms")
    monkeypatch.setattr(rooms, "handlers", [])
    monkeypatch.setattr(rooms, "filters", [])
    monkeypatch.setattr(rooms, "level", logging.NOTSET)
    monkeypatch.setattr(server, "_room_lines", None)
    logging.getLogger().manager._clear_cache()  # type: ignore[attr-defined]
    return stream


def test_the_lines_are_written_directly_with_the_bytes_logging_wrote(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = plain_root(monkeypatch)
    room_log(LINE)  # through `logging`
    through_logging = out.getvalue()
    assert write_room_lines_directly()
    room_log(LINE)
    room_log("ünïcode \u2028 line")
    assert out.getvalue() == through_logging * 2 + "ünïcode \u2028 line\n"
    assert through_logging == LINE + "\n"
    logging.getLogger().addHandler(logging.NullHandler())  # a second handler: not plain
    assert not write_room_lines_directly()


def test_a_filter_another_handler_or_level_keeps_the_logging_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = plain_root(monkeypatch)
    rooms = logging.getLogger("rooms")
    dropped: list[str] = []

    def drop(record: logging.LogRecord) -> bool:
        dropped.append(record.getMessage())
        return False

    monkeypatch.setattr(rooms, "filters", [drop])
    assert not write_room_lines_directly()
    room_log(LINE)
    assert (out.getvalue(), dropped) == ("", [LINE])  # the filter saw it and dropped it
    monkeypatch.setattr(rooms, "filters", [])
    monkeypatch.setattr(rooms, "level", logging.WARNING)
    logging.getLogger().manager._clear_cache()  # type: ignore[attr-defined]
    assert not write_room_lines_directly()
    room_log(LINE)
    assert out.getvalue() == ""  # INFO is off for the rooms: nothing written
    monkeypatch.setattr(rooms, "level", logging.NOTSET)
    logging.getLogger().manager._clear_cache()  # type: ignore[attr-defined]
    collected: list[logging.LogRecord] = []
    own = logging.Handler()
    own.emit = collected.append  # type: ignore[method-assign]
    monkeypatch.setattr(rooms, "handlers", [own])
    assert not write_room_lines_directly()
    room_log(LINE)
    assert [record.getMessage() for record in collected] == [LINE]

"""The archive on every runtime: the alarm moves messages to R2 segments indexed in D1 (local
files and SQLite, or wrangler dev's local R2 and D1), and reads back across it lose nothing."""

from __future__ import annotations

import itertools
import json
import uuid
from typing import Any

import pytest

from rooms.segments import segment_key
from tests.e2e.conftest import (
    ARCHIVING,
    ServiceBase,
    eventually,
    recv_json,
    recv_until,
    replay,
)
from tests.workerd_service import Profile

pytestmark = pytest.mark.integration
COUNT = 22  # a few segments' worth, far more than the 3 rows a room keeps


@pytest.fixture
def profile() -> Profile:
    """The alarm archives 50 ms after a write, 4 messages a segment, and the room keeps 3."""
    return ARCHIVING


async def inspect(service: ServiceBase, room: str) -> dict[str, Any]:
    view: dict[str, Any] = (await service.admin("GET", f"/admin/rooms/{room}")).json()
    return view


async def history_pages(service: ServiceBase, room: str, limit: int) -> list[dict[str, Any]]:
    """Every `history` page from the newest back to seq 1, as a client scrolling up asks."""
    pages = []
    async with await service.connect(room, "scroller", since=None) as ws:
        await ws.send(json.dumps({"type": "hello"}))  # joins at the head: nothing replayed
        assert (await recv_until(ws, "welcome"))["resume"]["complete"] is True
        before = None
        while True:
            request: dict[str, Any] = {"type": "history", "limit": limit, "ref": f"p{len(pages)}"}
            if before is not None:
                request["before"] = before
            await ws.send(json.dumps(request))
            page = await recv_json(ws)
            assert (page["type"], page["ref"]) == ("history", f"p{len(pages)}")
            pages.append(page)
            before = page["next_before"]
            if before is None:
                return pages


async def test_the_alarm_archives_and_every_read_crosses_the_archive_seamlessly(
    service: ServiceBase,
) -> None:
    """After the alarm has archived and pruned, a resume from 0 or 5 and history paging below
    the retained window return every message once, in order; the index and the segments agree.
    """
    room = service.room("archive")
    async with await service.connect(room, "writer") as writer:
        await recv_until(writer, "welcome")
        for i in range(COUNT):
            await writer.send(json.dumps({"type": "publish", "id": f"m{i}", "body": f"b{i}"}))
        assert [(await recv_until(writer, "ack"))["seq"] for _ in range(COUNT)] == list(
            range(1, COUNT + 1))
    # Nobody asks for it: the alarm set by the writes archives everything, segment by segment.
    view = await eventually(
        lambda: inspect(service, room),
        # The run ends after the room's directory row is written (an await on D1), so the
        # archived seq shows before the alarm is cleared: wait for both.
        lambda v: v["archived_seq"] == COUNT
        and v["rows_retained"] == 3
        and v["next_alarm_ms"] is None,
    )
    assert (view["head_seq"], view["archived_seq"], view["rows_retained"]) == (COUNT, COUNT, 3)
    assert (view["archive_failures"], view["last_archive_error"]) == (0, None)
    assert view["next_alarm_ms"] is None  # nothing left to archive

    # The D1 index: consecutive segments of at most 4 covering 1..COUNT, keyed deterministically.
    segments = (await service.admin("GET", f"/admin/rooms/{room}/segments")).json()["segments"]
    assert segments[0]["first_seq"] == 1
    assert segments[-1]["last_seq"] == COUNT
    for seg, after in itertools.pairwise(segments):
        assert after["first_seq"] == seg["last_seq"] + 1
    for seg in segments:
        assert 1 <= seg["count"] == seg["last_seq"] - seg["first_seq"] + 1 <= 4
        assert seg["key"] == segment_key(room, seg["first_seq"], seg["last_seq"])
        assert seg["bytes"] > 0
    # ... and R2 behind it: the operators' read of every archived message.
    read = (await service.admin("GET", f"/admin/rooms/{room}/messages?first=1&last={COUNT}")).json()
    assert [m["body"] for m in read["messages"]] == [f"b{i}" for i in range(COUNT)]
    assert read["missing"] == []

    expected = [(seq, f"m{seq - 1}", f"b{seq - 1}") for seq in range(1, COUNT + 1)]
    for since in (0, 5):  # both start below the 3 retained rows
        welcome, messages = await replay(service, room, since=since)
        assert welcome["head"] == COUNT
        assert welcome["resume"] == {"since": since, "complete": True, "missing": [],
                                     "reason": None}
        assert [(m["seq"], m["id"], m["body"]) for m in messages] == expected[since:]

    pages = await history_pages(service, room, limit=6)
    assert [[m["seq"] for m in page["messages"]] for page in pages] == [
        list(range(17, 23)), list(range(11, 17)), list(range(5, 11)), list(range(1, 5))]
    assert [page["missing"] for page in pages] == [[]] * 4
    assert [page["next_before"] for page in pages] == [17, 11, 5, None]

    # The room carries on after its archive: the seq continues and the retained window moves.
    async with await service.connect(room, "writer", since=COUNT) as writer:
        await recv_until(writer, "welcome")
        await writer.send(json.dumps({"type": "publish", "id": "late", "body": "after"}))
        assert (await recv_until(writer, "ack"))["seq"] == COUNT + 1
    view = await eventually(
        lambda: inspect(service, room), lambda v: v["archived_seq"] == COUNT + 1
    )
    assert (view["archived_seq"], view["rows_retained"]) == (COUNT + 1, 3)
    welcome, messages = await replay(service, room, since=0)
    assert [m["seq"] for m in messages] == list(range(1, COUNT + 2))


def stored_objects(service: ServiceBase) -> list[bytes]:
    """Every object's bytes as the runtime's R2 keeps them on disk (gunzipped when gzip): the
    local runtime's bucket directory, or the storage `wrangler dev --persist-to` writes."""
    import contextlib
    import gzip
    from pathlib import Path

    from tests.e2e.conftest import LocalService, WorkerdService

    if isinstance(service, LocalService):
        root = service.settings.data_dir / "r2"
    else:
        assert isinstance(service, WorkerdService)
        args = list(service.dev.args)
        root = Path(args[args.index("--persist-to") + 1])
    found = []
    for path in root.rglob("*"):
        if path.is_file() and (path.suffix == ".gz" or "r2" in path.parts):
            data = path.read_bytes()
            with contextlib.suppress(OSError, EOFError):
                data = gzip.decompress(data)
            found.append(data)
    return found


async def test_a_deleted_message_leaves_the_archive_and_no_read_serves_it(
    service: ServiceBase,
) -> None:
    """An operator deletes an archived, pruned message (edited before): no replay, history or
    admin read serves either body at once, and the room's next archive run rewrites the R2
    segments so that the bytes are gone from the bucket too."""
    room = service.room("erase")
    secret = f"secret-{uuid.uuid4().hex}"
    async with await service.connect(room, "writer") as writer:
        await recv_until(writer, "welcome")
        frames: list[dict[str, Any]] = [
            {"type": "publish", "id": "m0", "body": "b0"},
            {"type": "publish", "id": "m1", "body": f"{secret} first"},
            {"type": "edit", "id": "e1", "target": 2, "body": f"{secret} edited"},
            *({"type": "publish", "id": f"m{i}", "body": f"b{i}"} for i in range(2, 10)),
        ]
        for frame in frames:
            await writer.send(json.dumps(frame))
        assert [(await recv_until(writer, "ack"))["seq"] for _ in frames] == list(range(1, 12))
    view = await eventually(lambda: inspect(service, room),
                            lambda v: v["archived_seq"] == 11 and v["rows_retained"] == 3)
    assert view["archived_seq"] == 11
    assert any(secret.encode() in data for data in stored_objects(service))

    deleted = await service.admin("POST", f"/admin/rooms/{room}/delete?seq=2")
    assert deleted.json()["result"] == {"seq": 2, "author": "writer", "deleted_by_seq": 12,
                                        "already_deleted": False}
    _, messages = await replay(service, room, since=0)
    assert [m["seq"] for m in messages] == list(range(1, 13))
    pages = await history_pages(service, room, limit=5)
    read = (await service.admin("GET", f"/admin/rooms/{room}/messages?first=1&last=12")).json()
    assert secret not in json.dumps([messages, pages, read])
    assert [m.get("deleted", False) for m in messages[:4]] == [False, True, True, False]

    view = await eventually(lambda: inspect(service, room),
                            lambda v: v["redactions_pending"] == 0 and v["archived_seq"] == 12)
    assert (view["redactions_pending"], view["archive_failures"]) == (0, 0)
    stored = stored_objects(service)
    assert any(room.encode() in data and b"durable-rooms.segment" in data for data in stored)
    assert not [data for data in stored if secret.encode() in data]

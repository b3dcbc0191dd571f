"""Parity: one scenario on the local runtime (roomsd over real sockets) and in Pyodide (the
Cloudflare entrypoints) gives the same frames, ignoring connection ids and timestamps, and
stores the same rows.

The steps run one at a time and each waits for the acting socket's answer, so every socket's
stream is deterministic on both runtimes. Each client ends with a history request whose reply
marks the end of its stream.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import websockets
from aiohttp import web

from rooms.archive import ArchivePolicy
from rooms.limits import Limits
from roomsd.config import PROJECT_ROOT, Settings
from roomsd.rooms import HibernationPolicy
from roomsd.server import make_app
from tests.pyodide.conftest import (
    ROOM_LIMITS,
    SECRET,
    Expect,
    check_clean,
    new_world,
    token,
)
from tests.pyodide.harness_client import PyodideHarness

pytestmark = pytest.mark.integration

ROOM = "parity"
USERS = ("alice", "bob", "carol")
# (user, action, argument, the frame type that answers it on the acting socket)
STEPS: list[tuple[str, str, Any, str]] = [
    ("alice", "connect", 0, "welcome"),
    ("bob", "connect", 0, "welcome"),
    ("alice", "send", {"type": "publish", "id": "m1", "body": "hello"}, "ack"),
    ("alice", "send", {"type": "publish", "id": "m2", "body": "world"}, "ack"),
    ("bob", "send", {"type": "publish", "id": "b1", "body": "hi alice"}, "ack"),
    ("alice", "send", {"type": "publish", "id": "m1", "body": "hello (retransmit)"}, "ack"),
    ("bob", "send", "{not json", "error"),
    ("bob", "send", {"type": "publish", "id": "", "body": "x"}, "error"),
    ("bob", "send", {"type": "signal", "kind": "typing", "data": {"on": True}}, None),
    ("carol", "connect", 2, "welcome"),
    ("alice", "send", {"type": "history", "before": 3, "limit": 2, "ref": "h"}, "history"),
    ("carol", "send", {"type": "publish", "id": "c1", "body": "late"}, "ack"),
]
VOLATILE = {"conn_id", "sent_ms"}


def normalize(frame: Any) -> Any:
    if isinstance(frame, dict):
        return {k: normalize(v) for k, v in frame.items() if k not in VOLATILE}
    if isinstance(frame, list):
        return [normalize(v) for v in frame]
    return frame


def end_marker(user: str) -> dict[str, Any]:
    return {"type": "history", "limit": 1, "ref": f"end-{user}"}


# --------------------------------------------------------------------------- local runtime


async def run_local(data_dir: Path) -> tuple[dict[str, list[Any]], dict[str, Any], Any]:
    settings = Settings(
        data_dir=data_dir,
        public_dir=PROJECT_ROOT / "public",
        migrations_dir=PROJECT_ROOT / "migrations",
        jwt_secret=SECRET,
        limits=Limits.model_validate_json(ROOM_LIMITS),
        hibernation=HibernationPolicy(after_idle_s=3600),
        archive=ArchivePolicy(interval_ms=3_600_000),
    )
    runner = web.AppRunner(make_app(settings), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    sockets: dict[str, websockets.ClientConnection] = {}
    frames: dict[str, list[Any]] = {user: [] for user in USERS}

    async def read_until(user: str, type_: str, ref: str | None = None) -> None:
        while True:
            raw = await asyncio.wait_for(sockets[user].recv(), 10)
            frame = json.loads(raw)
            frames[user].append(frame)
            if frame["type"] == type_ and (ref is None or frame.get("ref") == ref):
                return

    try:
        for user, action, argument, answer in STEPS:
            if action == "connect":
                url = f"ws://127.0.0.1:{port}/rooms/{ROOM}/ws?since={argument}&token={token(user)}"
                sockets[user] = await websockets.connect(url, max_queue=None)
            else:
                text = argument if isinstance(argument, str) else json.dumps(argument)
                await sockets[user].send(text)
            if answer is not None:
                await read_until(user, answer)
        for user in USERS:
            await sockets[user].send(json.dumps(end_marker(user)))
            await read_until(user, "history", ref=f"end-{user}")
        try:
            await websockets.connect(f"ws://127.0.0.1:{port}/rooms/{ROOM}/ws?since=0")
            unauthorized: Any = None
        except websockets.InvalidStatus as exc:
            unauthorized = [exc.response.status_code, json.loads(exc.response.body or b"{}")]
    finally:
        for ws in sockets.values():
            await ws.close()
        await runner.cleanup()
    database = sqlite3.connect(data_dir / "rooms" / f"{ROOM}.sqlite")
    try:
        rows = stored_rows(lambda q: [dict(zip([d[0] for d in c.description], r, strict=True))
                                      for c in [database.execute(q)] for r in c.fetchall()])
    finally:
        database.close()
    return frames, rows, unauthorized


def stored_rows(query: Callable[[str], list[dict[str, Any]]]) -> dict[str, Any]:
    return {
        "messages": query("SELECT seq, id, user_id, name, body FROM messages ORDER BY seq"),
        "dedupe": query("SELECT user_id, id, seq FROM dedupe ORDER BY user_id, id"),
        "meta": query("SELECT key, value FROM room_meta WHERE key IN ('head', 'archived') "
                      "ORDER BY key"),
    }


# --------------------------------------------------------------------------- Pyodide


def run_pyodide(harness: PyodideHarness,
                hibernate: bool) -> tuple[dict[str, list[Any]], dict[str, Any], Any]:
    world = new_world(harness)
    world.set_hibernate_every_event(hibernate)
    clients = {}
    for user, action, argument, _answer in STEPS:
        if action == "connect":
            clients[user] = world.connect(ROOM, token(user), since=argument)
        else:
            clients[user].send(argument)
    for user in USERS:
        clients[user].send(end_marker(user))
    frames = {user: clients[user].frames() for user in USERS}
    rows = stored_rows(lambda q: world.sql(ROOM, q))
    result = world.upgrade(ROOM, None)
    unauthorized = [result.status, result.json()]
    check_clean(harness, world, Expect())
    return frames, rows, unauthorized


@pytest.fixture(scope="module")
def local_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, list[Any]],
                                                                 dict[str, Any], Any]:
    return asyncio.run(run_local(tmp_path_factory.mktemp("local")))


@pytest.mark.parametrize("hibernate", [False, True], ids=["awake", "hibernate-every-event"])
def test_local_runtime_and_pyodide_send_the_same_frames_and_store_the_same_rows(
    harness: PyodideHarness, local_run: Any, hibernate: bool
) -> None:
    local_frames, local_rows, local_401 = local_run
    frames, rows, unauthorized = run_pyodide(harness, hibernate)
    for user in USERS:
        assert normalize(frames[user]) == normalize(local_frames[user]), user
    assert rows == local_rows
    assert unauthorized == local_401 == [401, {"error": {"code": "token_missing",
                                                         "message": "a token is required"}}]
    # The scenario covered what it claims to.
    types = {f["type"] for fs in local_frames.values() for f in fs}
    assert types >= {"welcome", "presence", "ack", "message", "error", "history", "signal"}
    assert [m["seq"] for m in local_rows["messages"]] == [1, 2, 3, 4]

"""A room's database and the event loop: a sleeping room's file is opened in a worker thread,
never on the loop, and events that arrive while it opens wait for that one open; a new room's
file is created in a worker thread too, and removed again if no write stored anything; a quiet
room gives its page cache back."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from typing import Any

import pytest
import websockets

import roomsd.sqlite
from roomsd.rooms import QUIET_DATABASE_CLOSE_S, HibernationPolicy, LocalRoom, close_databases
from roomsd.sqlite import SqliteSql
from tests.local.conftest import ServerFactory, recv_until

pytestmark = pytest.mark.integration


async def test_a_sleeping_room_opens_its_file_off_the_event_loop(
    server_factory: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = await server_factory(
        hibernation=HibernationPolicy(after_idle_s=0.0, open_idle_databases=0)
    )
    opened_in: list[str] = []  # where each SQLite connection to a room file was made
    connect = sqlite3.connect

    def recording(path: Any, *args: Any, **kwargs: Any) -> sqlite3.Connection:
        if "rooms" in str(path):
            opened_in.append(threading.current_thread().name)
        return connect(path, *args, **kwargs)

    monkeypatch.setattr(roomsd.sqlite.sqlite3, "connect", recording)
    async with (
        await server.connect("sleepy", "alice") as alice,
        await server.connect("sleepy", "bob") as bob,
    ):
        await recv_until(alice, "welcome")
        await recv_until(bob, "welcome")
        await alice.send(json.dumps({"type": "publish", "id": "1", "body": "before"}))
        await recv_until(alice, "ack")
        room = server.registry.rooms["sleepy"]
        await close_databases(server.registry.sweep())  # asleep, its connection closed
        assert not room.holds_database
        assert room.db_path.exists()
        opened_in.clear()
        # Two frames close together: one open (the second waits for it or finds it done).
        await alice.send(json.dumps({"type": "publish", "id": "2", "body": "after"}))
        await bob.send(json.dumps({"type": "publish", "id": "3", "body": "also"}))
        acks = [await recv_until(alice, "ack"), await recv_until(bob, "ack")]
        seqs = sorted(ack["seq"] for ack in acks)
        assert seqs == [2, 3]
        assert len(opened_in) == 1, opened_in
        assert opened_in[0] != threading.main_thread().name
        assert room.holds_database


def _record_connects(monkeypatch: pytest.MonkeyPatch, path: Any) -> list[str]:
    """The thread of every SQLite connection made to ``path`` from now on."""
    opened_in: list[str] = []
    connect = sqlite3.connect

    def recording(target: Any, *args: Any, **kwargs: Any) -> sqlite3.Connection:
        if str(target) == str(path):
            opened_in.append(threading.current_thread().name)
        return connect(target, *args, **kwargs)

    monkeypatch.setattr(roomsd.sqlite.sqlite3, "connect", recording)
    return opened_in


async def test_a_new_room_creates_its_file_off_the_event_loop(
    server_factory: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Creating a file, its WAL and its tables writes and syncs: done in a worker thread when
    the first frame that may store arrives, not on the loop, and not before (joining and
    signalling create nothing). Messages arriving meanwhile wait for the same file and keep one
    gapless order; each is committed before its ack."""
    server = await server_factory()
    path = server.settings.data_dir / "rooms" / "fresh.sqlite"
    opened_in = _record_connects(monkeypatch, path)
    async with (
        await server.connect("fresh", "alice") as alice,
        await server.connect("fresh", "bob") as bob,
    ):
        await recv_until(alice, "welcome")
        await recv_until(bob, "welcome")
        await alice.send(json.dumps({"type": "signal", "kind": "typing", "data": True}))
        await recv_until(bob, "signal")
        assert not path.exists()
        assert opened_in == []
        # Two first messages close together: one file (the second waits for it or finds it).
        await alice.send(json.dumps({"type": "publish", "id": "1", "body": "first"}))
        await bob.send(json.dumps({"type": "publish", "id": "2", "body": "second"}))
        acks = [await recv_until(alice, "ack"), await recv_until(bob, "ack")]
        assert sorted(ack["seq"] for ack in acks) == [1, 2]
        assert len(opened_in) == 1, opened_in
        assert opened_in[0] != threading.main_thread().name
        monkeypatch.undo()
        with sqlite3.connect(path) as other:  # committed, seen from another connection
            rows = other.execute("SELECT seq, body FROM messages ORDER BY seq").fetchall()
        assert sorted(body for _, body in rows) == ["first", "second"]


async def test_a_file_made_for_a_write_that_stored_nothing_is_removed(
    server_factory: ServerFactory,
) -> None:
    """A publish the room refuses (a body over the limit) still had the file made for it; the
    room holds no message, so once it is forgotten nothing of it is left."""
    server = await server_factory(
        hibernation=HibernationPolicy(after_idle_s=0.0, open_idle_databases=0)
    )
    path = server.settings.data_dir / "rooms" / "refused.sqlite"
    async with await server.connect("refused", "alice") as alice:
        welcome = await recv_until(alice, "welcome")
        too_long = "x" * (welcome["max_body_chars"] + 1)
        await alice.send(json.dumps({"type": "publish", "id": "1", "body": too_long}))
        assert (await recv_until(alice, "error"))["code"] == "body_too_long"
        assert path.exists()  # made for the write, holding no room
        room = server.registry.rooms["refused"]
        assert room.holds_database
    await recv_until_gone(server, "refused")
    assert not server.registry.exists("refused")  # the admin API finds no room already
    await close_databases(server.registry.sweep())
    assert "refused" not in server.registry.rooms
    assert not path.exists()
    assert not server.registry.exists("refused")


async def test_an_awake_quiet_room_closes_its_database_and_reopens_it_off_the_loop(
    server_factory: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past `open_idle_databases` quiet rooms, an awake room quiet for a while gives its whole
    connection back (its host stays); its next frames, a read and then a write, find the file
    opened again in a worker thread, and its log goes on gapless."""
    server = await server_factory(
        hibernation=HibernationPolicy(after_idle_s=3600, open_idle_databases=0)
    )
    path = server.settings.data_dir / "rooms" / "lull.sqlite"
    async with await server.connect("lull", "alice") as alice:
        await recv_until(alice, "welcome")
        await alice.send(json.dumps({"type": "publish", "id": "1", "body": "before"}))
        await recv_until(alice, "ack")
        room = server.registry.rooms["lull"]
        assert server.registry.sweep(time.monotonic()) == []  # not quiet long enough yet
        later = time.monotonic() + QUIET_DATABASE_CLOSE_S + 0.5
        await close_databases(server.registry.sweep(later))
        assert room.awake
        assert not room.database_open
        assert room.wakes == 1
        opened_in = _record_connects(monkeypatch, path)
        async with await server.connect("lull", "bob", since=0) as bob:  # a join reads the log
            assert (await recv_until(bob, "welcome"))["head"] == 1
            assert (await recv_until(bob, "message"))["body"] == "before"  # the replay
            assert len(opened_in) == 1, opened_in
            await close_databases(server.registry.sweep(time.monotonic() + 10))
            assert not room.database_open
            await alice.send(json.dumps({"type": "history", "before": 5}))  # a read
            history = await recv_until(alice, "history")
            assert [m["body"] for m in history["messages"]] == ["before"]
            await alice.send(json.dumps({"type": "publish", "id": "2", "body": "after"}))
            assert (await recv_until(alice, "ack"))["seq"] == 2
            assert (await recv_until(bob, "message"))["seq"] == 2
        assert len(opened_in) == 2, opened_in  # the join's reopen, then the read's
        assert threading.main_thread().name not in opened_in
        assert room.wakes == 1  # the same host all along


async def recv_until_gone(server: Any, room: str) -> None:
    """Wait until the server has seen every socket of ``room`` close."""
    for _ in range(500):
        if not len(server.registry.rooms[room].sockets):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{room} still has sockets")


async def test_an_open_that_fails_fails_the_event_not_the_room(
    server_factory: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file that cannot be opened refuses that upgrade (500, as any failed open did); the
    room is not left half-open, and the next upgrade opens it."""
    server = await server_factory(
        hibernation=HibernationPolicy(after_idle_s=0.0, open_idle_databases=0)
    )
    async with await server.connect("flaky", "alice") as alice:
        await recv_until(alice, "welcome")
        await alice.send(json.dumps({"type": "publish", "id": "1", "body": "x"}))
        await recv_until(alice, "ack")
    await asyncio.sleep(0)
    await close_databases(server.registry.sweep())
    failures = [OSError("disk on fire")]
    original = LocalRoom._new_database

    def failing_once(self: LocalRoom, gate: object) -> SqliteSql:
        if failures:
            raise failures.pop()
        return original(self, gate)  # type: ignore[arg-type]

    monkeypatch.setattr(LocalRoom, "_new_database", failing_once)
    with pytest.raises(websockets.InvalidStatus) as refused:
        await server.connect("flaky", "alice", since=1)
    assert refused.value.response.status_code == 500
    assert not server.registry.rooms["flaky"].holds_database
    async with await server.connect("flaky", "alice", since=1) as alice:
        welcome = await recv_until(alice, "welcome")
        assert welcome["head"] == 1


def _sqlite_heap_bytes() -> int:
    """What SQLite has allocated in this process (sqlite3_memory_used)."""
    import _sqlite3
    import ctypes

    library = ctypes.CDLL(_sqlite3.__file__)
    library.sqlite3_memory_used.restype = ctypes.c_int64
    return int(library.sqlite3_memory_used())


async def test_a_quiet_room_gives_its_page_cache_back_and_goes_on(
    server_factory: ServerFactory,
) -> None:
    """Awake and quiet for a second, a room frees its SQLite page cache (most of an open
    database's memory); its next message is stored and delivered as always."""
    server = await server_factory()  # rooms stay awake (hibernation after an hour)
    async with await server.connect("quiet", "alice") as alice:
        await recv_until(alice, "welcome")
        for i in range(20):
            await alice.send(json.dumps({"type": "publish", "id": f"m{i}", "body": "x" * 200}))
            await recv_until(alice, "ack")
        room = server.registry.rooms["quiet"]
        assert room.awake
        assert server.registry.release_quiet_caches(time.monotonic()) == 0  # not quiet yet
        before = _sqlite_heap_bytes()
        assert server.registry.release_quiet_caches(time.monotonic() + 2) == 1
        assert before - _sqlite_heap_bytes() > 16 * 1024
        assert room.awake
        assert room.holds_database
        assert server.registry.release_quiet_caches(time.monotonic() + 4) == 0  # nothing ran
        await alice.send(json.dumps({"type": "publish", "id": "after", "body": "still here"}))
        assert (await recv_until(alice, "ack"))["seq"] == 21
        assert server.registry.release_quiet_caches(time.monotonic() + 6) == 1

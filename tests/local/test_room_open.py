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
from pathlib import Path
from typing import Any

import pytest
import websockets

import roomsd.rooms
import roomsd.sqlite
from rooms.auth import Identity
from rooms.limits import Limits
from roomsd.rooms import (
    QUIET_DATABASE_CLOSE_S,
    UNUSED_FILE_AHEAD_S,
    UNUSED_FILE_COOLING_S,
    HibernationPolicy,
    LocalRoom,
    RoomServices,
    close_databases,
)
from roomsd.sqlite import SqliteSql
from tests.local.conftest import ServerFactory, recv_until

pytestmark = pytest.mark.integration
_CONNECT = sqlite3.connect


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
    """Creating a file, its WAL and its tables writes and syncs: with no file made ahead
    (`files_made_ahead=0`), done in a worker thread when the first frame that may store
    arrives, not on the loop, and not before (joining and signalling create nothing). Messages
    arriving meanwhile wait for the same file and keep one gapless order; each is committed
    before its ack."""
    server = await server_factory(
        hibernation=HibernationPolicy(after_idle_s=3600, files_made_ahead=0)
    )
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


def _claimed(path: Any) -> tuple[int, list[str]]:
    """The file's `user_version` (0 once a write claimed it) and its messages' bodies, as
    another connection sees them (committed)."""
    with _CONNECT(path) as other:  # not the one `_record_connects` replaces
        version = other.execute("PRAGMA user_version").fetchone()[0]
        bodies = [row[0] for row in other.execute("SELECT body FROM messages ORDER BY seq")]
    other.close()
    return version, bodies


async def _until_open(room: LocalRoom) -> None:
    """Wait until ``room``'s file, made as its first member joined, is open (or 5 s pass)."""
    for _ in range(500):
        if room.database_open:
            return
        await asyncio.sleep(0.01)


async def test_a_new_room_has_its_file_made_as_its_first_member_joins(
    server_factory: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file is made in the preparer thread when the first member joins, so the room's
    first messages find it open; it holds no room until the first write claims it in the
    message's own transaction, and the loop connects to it at no point."""
    server = await server_factory()
    path = server.settings.data_dir / "rooms" / "early.sqlite"
    opened_in = _record_connects(monkeypatch, path)
    async with await server.connect("early", "alice") as alice:
        await recv_until(alice, "welcome")
        room = server.registry.rooms["early"]
        await _until_open(room)
        assert room.database_open
        assert path.exists()
        assert not room.stored  # every table, marked unclaimed: no room yet
        assert _claimed(path) == (roomsd.sqlite._UNCLAIMED, [])
        await alice.send(json.dumps({"type": "publish", "id": "1", "body": "first"}))
        assert (await recv_until(alice, "ack"))["seq"] == 1
        assert room.stored
        assert _claimed(path) == (0, ["first"])
    assert opened_in == ["roomsd-prepare_0"], opened_in  # one connection, not on the loop
    assert server.registry.services.files_ahead.count == 0


async def test_files_made_ahead_are_bounded_and_removed_when_unused(
    server_factory: ServerFactory,
) -> None:
    """An attacker joining many new rooms makes at most `files_made_ahead` files; beyond that a
    room gets its file at its first write, and a slot frees once a room's first write came.
    Rooms nobody wrote to leave no file once they are forgotten. The server counts the files
    made each way (`GET /metrics`)."""
    server = await server_factory(
        hibernation=HibernationPolicy(after_idle_s=0.0, open_idle_databases=0, files_made_ahead=2)
    )
    rooms_dir = server.settings.data_dir / "rooms"
    names = ["ahead-a", "ahead-b", "ahead-c", "ahead-d"]
    sockets = [await server.connect(name, "mallory") for name in names]
    for ws in sockets:
        await recv_until(ws, "welcome")
    for _ in range(500):
        if sum(server.registry.rooms[name].database_open for name in names) == 2:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)  # nothing more is being made
    made = sorted(name for name in names if (rooms_dir / f"{name}.sqlite").exists())
    assert len(made) == 2, made
    assert server.registry.services.files_ahead.count == 2
    # A first write to a room with a file made ahead frees its slot for the next new room.
    writer = sockets[names.index(made[0])]
    await writer.send(json.dumps({"type": "publish", "id": "1", "body": "kept"}))
    assert (await recv_until(writer, "ack"))["seq"] == 1
    assert server.registry.services.files_ahead.count == 1
    async with await server.connect("ahead-e", "mallory") as late:
        await recv_until(late, "welcome")
        for _ in range(500):
            if (rooms_dir / "ahead-e.sqlite").exists():
                break
            await asyncio.sleep(0.01)
        assert (rooms_dir / "ahead-e.sqlite").exists()
        assert server.registry.services.files_ahead.count == 2
    # A room joined over the bound has its file made at its first write.
    over = next(name for name in names if name not in made)
    assert not (rooms_dir / f"{over}.sqlite").exists()
    await sockets[names.index(over)].send(json.dumps({"type": "publish", "id": "1", "body": "b"}))
    assert (await recv_until(sockets[names.index(over)], "ack"))["seq"] == 1
    files = server.registry.services.files_ahead
    assert (files.made, files.made_at_write) == (3, 1)  # GET /metrics: rooms_new_room_files
    for ws in sockets:
        await ws.close()
    for name in [*names, "ahead-e"]:
        await recv_until_gone(server, name)
    await close_databases(server.registry.sweep(time.monotonic() + 1))
    for _ in range(500):  # a room left by everyone closes its unused file in the preparer
        left = sorted(path.name for path in rooms_dir.iterdir())
        if len(left) == 2:
            break
        await asyncio.sleep(0.01)
    assert left == sorted([f"{made[0]}.sqlite", f"{over}.sqlite"]), left  # the rooms that stored
    assert _claimed(rooms_dir / f"{made[0]}.sqlite") == (0, ["kept"])
    assert _claimed(rooms_dir / f"{over}.sqlite") == (0, ["b"])
    assert server.registry.services.files_ahead.count == 0
    assert [name for name in names if server.registry.exists(name)] == sorted([made[0], over])


async def test_a_file_made_ahead_goes_when_unused_and_the_room_still_works(
    server_factory: ServerFactory,
) -> None:
    """A member who joins and writes nothing keeps no file for long: after
    `UNUSED_FILE_AHEAD_S` of quiet the sweep closes and removes it, whatever the budget of
    open databases; a later join does not make it again, and the room's first message later
    makes one at its write."""
    server = await server_factory(
        hibernation=HibernationPolicy(after_idle_s=3600, open_idle_databases=64)
    )
    path = server.settings.data_dir / "rooms" / "lurk.sqlite"
    async with await server.connect("lurk", "alice") as alice:
        await recv_until(alice, "welcome")
        room = server.registry.rooms["lurk"]
        await _until_open(room)
        assert path.exists()
        assert room.holds_unused_file_ahead
        assert server.registry.sweep(time.monotonic() + QUIET_DATABASE_CLOSE_S + 0.1) == []
        await close_databases(server.registry.sweep(time.monotonic() + UNUSED_FILE_AHEAD_S))
        assert not path.exists()
        assert not room.database_open
        assert server.registry.services.files_ahead.count == 0
        # Once per room: a later join does not make the file again (a long storm of joins
        # into quiet rooms would make and remove files over and over).
        async with await server.connect("lurk", "bob") as bob:
            await recv_until(bob, "welcome")
            await asyncio.sleep(0.2)  # a file made ahead would be under way by now
            assert not path.exists()
            assert not room.database_open
            assert server.registry.services.files_ahead.count == 0
        await alice.send(json.dumps({"type": "publish", "id": "1", "body": "late"}))
        assert (await recv_until(alice, "ack"))["seq"] == 1
        assert _claimed(path) == (0, ["late"])


async def test_an_unused_file_keeps_its_slot_for_a_while(server_factory: ServerFactory) -> None:
    """A file made ahead that went unused (removed after `UNUSED_FILE_AHEAD_S` of quiet while
    its members stayed) keeps its slot under `files_made_ahead` for `UNUSED_FILE_COOLING_S`
    more: joins that never write make at most that many files in that time. (Before, the slot
    came back at once: a storm of 10,000 connections into 1,000 new rooms made 609 files with
    a bound of 128, each made and removed in the preparer thread.) Then the next new room
    gets its file ahead again."""
    server = await server_factory(
        hibernation=HibernationPolicy(after_idle_s=3600, open_idle_databases=64, files_made_ahead=1)
    )
    rooms_dir = server.settings.data_dir / "rooms"
    files = server.registry.services.files_ahead
    async with await server.connect("cool-a", "alice") as alice:
        await recv_until(alice, "welcome")
        await _until_open(server.registry.rooms["cool-a"])
        assert (rooms_dir / "cool-a.sqlite").exists()
        later = time.monotonic() + UNUSED_FILE_AHEAD_S
        await close_databases(server.registry.sweep(later))
        assert not (rooms_dir / "cool-a.sqlite").exists()
        assert files.count == 0
        async with await server.connect("cool-b", "bob") as bob:
            await recv_until(bob, "welcome")
            await asyncio.sleep(0.2)  # a file made ahead would be under way by now
            assert not (rooms_dir / "cool-b.sqlite").exists()  # the slot is still cooling
            assert files.made == 1
        await close_databases(server.registry.sweep(later + UNUSED_FILE_COOLING_S))
        async with await server.connect("cool-c", "carol") as carol:
            await recv_until(carol, "welcome")
            await _until_open(server.registry.rooms["cool-c"])
            assert (rooms_dir / "cool-c.sqlite").exists()
            assert files.made == 2


async def test_a_first_write_racing_its_finished_file_stays_in_that_file(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file made ahead is finished, but its future's callbacks have not run when the room's
    first publish gets its turn in the same loop iteration: the publish takes the connection
    itself rather than connecting on the loop, and the acked message is in the file. (Before,
    the loop connected, and the prepared connection, closed as "holding no room", removed the
    file the publish had just been committed to.)"""
    finished = threading.Event()
    prepare = roomsd.rooms.prepare_file

    def signalling(*args: Any) -> sqlite3.Connection:
        try:
            return prepare(*args)
        finally:
            finished.set()

    monkeypatch.setattr(roomsd.rooms, "prepare_file", signalling)
    services = RoomServices(
        Limits(messages_per_second=1000, burst=1000),
        HibernationPolicy(after_idle_s=3600),
        emit=print,
    )
    path = tmp_path / "race.sqlite"
    room = LocalRoom("race", path, services)
    sock = _CountingSocket()
    await room.connect(sock, Identity("alice", "Alice"), 0)  # type: ignore[arg-type]
    assert finished.wait(30)  # the loop is held: the future's completion is queued, not run
    frame = json.dumps({"type": "publish", "id": "1", "body": "raced"})
    publishing = asyncio.ensure_future(room.message(sock, frame))  # type: ignore[arg-type]
    await publishing
    await asyncio.sleep(0.05)  # the gate commits; any late callback runs
    assert any('"ack"' in text for text in sock.sent)
    assert path.exists()
    assert _claimed(path) == (0, ["raced"])
    room.release_database().close()  # type: ignore[union-attr]
    assert _claimed(path) == (0, ["raced"])


def test_a_file_that_holds_no_room_is_removed_without_a_checkpoint(tmp_path: Any) -> None:
    """Closing the connection of a file made ahead that nobody wrote to removes the file, the
    WAL and its index, and writes nothing into the file on the way: SQLite skips its
    checkpoint-on-close once the file is unlinked (before, the close copied the file's first
    rows out of the WAL into the file and synced both, only for everything to be removed).
    A hard link keeps the file's inode to look at afterwards."""
    path = tmp_path / "unused.sqlite"
    db = roomsd.sqlite.prepare_file(path)
    kept = tmp_path / "inode-of-unused"
    kept.hardlink_to(path)
    image = kept.read_bytes()
    assert Path(f"{path}-wal").stat().st_size > 0  # the first rows wait in the WAL
    roomsd.sqlite.close_connection(db, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [kept.name]
    assert kept.read_bytes() == image  # no checkpoint wrote into it
    # A file that holds a room is closed as always: checkpointed, and kept.
    path = tmp_path / "stored.sqlite"
    db = roomsd.sqlite.prepare_file(path)
    room = SqliteSql(path)
    assert room.adopt(db)
    room.execute(roomsd.sqlite._CREATE_MESSAGES)  # the first write's claim
    room.close()
    assert path.exists()
    assert not Path(f"{path}-wal").exists()
    assert _claimed(path) == (0, [])


class _CountingSocket:
    """What `LocalRoom` needs of a socket, keeping the frames sent."""

    def __init__(self) -> None:
        self.tags: tuple[str, ...] = ()
        self.attachment: str | None = None
        self.is_open = True
        self.cut_for_backlog = False
        self.sent: list[str] = []

    def accept(self, tags: list[str]) -> None:
        self.tags = tuple(tags)

    def send(self, text: str) -> None:
        self.sent.append(text)

    def close(self, code: int, reason: str) -> None:
        self.is_open = False

    def abort(self, code: int, reason: str) -> None:
        self.is_open = False


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

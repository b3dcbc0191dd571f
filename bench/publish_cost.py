"""CPU per publish in the room's own code (engine, host, SQLite), without sockets or a generator.

A figure that a loaded machine cannot skew much: CPU seconds (`time.process_time`) of this
process alone, or, under `valgrind --tool=callgrind`, instructions. Rooms of 10 members on the
local runtime's real classes (`LocalRoom`, `SqliteSql`, the output gate); frames go to sockets
that count them. Publishes arrive ``--together`` per event-loop iteration in each room, over
``--rooms`` rooms, so the group commit can be compared with one commit per message
(``--each``) at the batch sizes a server sees (1: paced traffic; 10: a busy room).

    .venv/bin/python bench/publish_cost.py --rooms 100 --together 1
    .venv/bin/python bench/publish_cost.py --rooms 100 --first    # a new room's first message
    .venv/bin/python bench/publish_cost.py --rooms 100 --first --files-made-ahead 128 --archive
    valgrind --tool=callgrind --callgrind-out-file=/dev/null \
        .venv/bin/python bench/publish_cost.py --socket-path 300   # instructions: 0 vs 300
    ROOMS_COMMIT_EACH_MESSAGE=1 .venv/bin/python bench/publish_cost.py --rooms 100 --together 1
    valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.out \\
        .venv/bin/python bench/publish_cost.py --rooms 20 --iterations 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "local")]

from rooms.archive import ArchivePolicy  # noqa: E402
from rooms.auth import Identity  # noqa: E402
from rooms.host import ArchiveBindings  # noqa: E402
from rooms.limits import Limits  # noqa: E402
from roomsd.bindings import AlarmScheduler, Faults, LocalD1, LocalR2  # noqa: E402
from roomsd.d1 import open_d1  # noqa: E402
from roomsd.r2 import FileBucket  # noqa: E402
from roomsd.rooms import HibernationPolicy, LocalRoom, RoomServices  # noqa: E402


class CountingSocket:
    """What `LocalRoom` needs of a `LocalSocket`, counting frames instead of writing them."""

    def __init__(self) -> None:
        self.tags: tuple[str, ...] = ()
        self.attachment: str | None = None
        self.is_open = True
        self.cut_for_backlog = False
        self.frames = 0

    def accept(self, tags: list[str]) -> None:
        self.tags = tuple(tags)

    def send(self, text: str) -> None:
        self.frames += 1

    def close(self, code: int, reason: str) -> None:
        self.is_open = False

    def abort(self, code: int, reason: str) -> None:
        self.is_open = False


def server_archive(data: Path) -> tuple[ArchiveBindings, AlarmScheduler]:
    """The server's archive (local D1 and R2) and alarms, as `roomsd.server.make_app` makes
    them: a new room's first message writes its directory row and sets its alarm."""
    d1, _ = open_d1(data / "d1.sqlite", ROOT / "migrations")
    faults = Faults()
    bucket = LocalR2(FileBucket(data / "r2"), faults)

    async def fire(room: str) -> None:
        pass

    alarms = AlarmScheduler(data / "alarms.sqlite", fire)
    return ArchiveBindings(LocalD1(d1, faults), bucket, ArchivePolicy()), alarms


async def connected_rooms(
    rooms: int, members: int, data: Path, files_made_ahead: int = 0, archive: bool = False
) -> tuple[RoomServices, list[tuple[LocalRoom, Any]]]:
    """``rooms`` real rooms of ``members`` counting sockets each, and each room's first socket."""
    archived, alarms = server_archive(data) if archive else (None, None)
    services = RoomServices(
        Limits(messages_per_second=1_000_000, burst=1_000_000),
        HibernationPolicy(after_idle_s=3600, files_made_ahead=files_made_ahead),
        emit=lambda line: None,
        group_commit=os.environ.get("ROOMS_COMMIT_EACH_MESSAGE", "") != "1",
        archive=archived,
        alarms=alarms,
    )
    local_rooms = [LocalRoom(f"r{i}", data / f"r{i}.sqlite", services) for i in range(rooms)]
    senders: list[tuple[LocalRoom, Any]] = []
    for room in local_rooms:
        for m in range(members):
            sock = CountingSocket()
            await room.connect(sock, Identity(f"u{m}", f"U{m}"), 0)  # type: ignore[arg-type]
            if m == 0:
                senders.append((room, sock))
    return services, senders


async def measure(
    rooms: int, members: int, together: int, iterations: int, data: Path
) -> dict[str, Any]:
    services, senders = await connected_rooms(rooms, members, data)
    # One warm-up round: every room has its file, tables and statements.
    for room, sock in senders:
        await room.message(sock, json.dumps({"type": "publish", "id": "warm", "body": "x"}))
    await asyncio.sleep(0)
    body = "x" * 100
    n = 0
    started_cpu, started = time.process_time(), time.perf_counter()
    for i in range(iterations):
        for room, sock in senders:
            for k in range(together):
                n += 1
                frame = json.dumps({"type": "publish", "id": f"m{i}-{k}", "body": body})
                await room.message(sock, frame)
        await asyncio.sleep(0)  # the iteration ends: the gate commits what it holds
    await asyncio.sleep(0)
    cpu, wall = time.process_time() - started_cpu, time.perf_counter() - started
    return {
        "commit": "each message" if not services.group_commit else "grouped",
        "rooms": rooms,
        "together": together,
        "publishes": n,
        "cpu_us_per_publish": round(cpu / n * 1e6, 1),
        "wall_us_per_publish": round(wall / n * 1e6, 1),
    }


class LoopClock:
    """The event loop's busy time: the wall time of every callback it runs (the time every
    other socket waits, whether the callback computes or blocks in a system call), and the CPU
    time of the loop's thread."""

    def __init__(self) -> None:
        self.busy = 0.0
        self.longest = 0.0
        self._run = asyncio.events.Handle._run

    def __enter__(self) -> LoopClock:
        run, clock = self._run, self

        def timed(handle: asyncio.events.Handle) -> None:
            started = time.perf_counter()
            try:
                run(handle)
            finally:
                took = time.perf_counter() - started
                clock.busy += took
                clock.longest = max(clock.longest, took)

        asyncio.events.Handle._run = timed  # type: ignore[method-assign,assignment]
        self.thread_cpu = time.thread_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.thread_cpu = time.thread_time() - self.thread_cpu
        asyncio.events.Handle._run = self._run  # type: ignore[method-assign]


async def measure_first(
    rooms: int, members: int, data: Path, files_made_ahead: int = 0, archive: bool = False
) -> dict[str, Any]:
    """A new room's first message: what it costs the event loop (file, tables, first append;
    with ``archive``, its directory row and alarm too), and the process (the loop and the
    preparer thread), during the joins and the burst."""
    joins_cpu = time.process_time()
    _, senders = await connected_rooms(rooms, members, data, files_made_ahead, archive)
    # A ladder step's "go" comes after its joins: the files made ahead are ready (or, on a
    # loaded machine, not all of them yet: wait for them, up to a minute).
    for _ in range(600):
        await asyncio.sleep(0.1)
        if all(room.database_open for room, _ in senders[:files_made_ahead]):
            break
    joins_cpu = time.process_time() - joins_cpu
    made_ahead = sum((data / f"r{i}.sqlite").exists() for i in range(rooms))
    frame = json.dumps({"type": "publish", "id": "first", "body": "x" * 100})
    started, burst_cpu = time.perf_counter(), time.process_time()
    with LoopClock() as clock:
        # Every room's first message at once, as a ladder step's new rooms send theirs.
        await asyncio.gather(*(room.message(sock, frame) for room, sock in senders))
        await asyncio.sleep(0)  # the gate commits
        await asyncio.sleep(0)
    wall, burst_cpu = time.perf_counter() - started, time.process_time() - burst_cpu
    stored = sum((data / f"r{i}.sqlite").exists() for i in range(rooms))
    return {
        "first_message_of_new_rooms": rooms,
        "archive": archive,
        "files_made_ahead": made_ahead,
        "files_created": stored,
        "loop_busy_ms_per_room": round(clock.busy / rooms * 1e3, 3),
        "loop_thread_cpu_ms_per_room": round(clock.thread_cpu / rooms * 1e3, 3),
        "process_cpu_ms_per_room_burst": round(burst_cpu / rooms * 1e3, 3),
        "process_cpu_ms_per_room_joins": round(joins_cpu / rooms * 1e3, 3),
        "longest_loop_callback_ms": round(clock.longest * 1e3, 3),
        "wall_ms": round(wall * 1e3, 1),
    }


class _Transport:
    """A transport that takes every write at once: what is left is the socket's own code."""

    def write(self, data: bytes) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0


class _Request:
    def __init__(self) -> None:
        self.transport = _Transport()


class _WebSocket:
    closed = False


async def measure_socket_path(rounds: int, members: int = 100) -> dict[str, Any]:
    """``rounds`` broadcasts to ``members`` real `LocalSocket`s, each flushed by the real
    flusher; compare the instructions of 0 rounds with N under callgrind (the machine's load
    does not move those)."""
    from roomsd.sockets import LocalSocket, _flusher

    socks = [LocalSocket(_Request(), _WebSocket(), 1 << 30) for _ in range(members)]  # type: ignore[arg-type]
    flusher = _flusher()
    started = time.process_time()
    for i in range(rounds):
        text = json.dumps({"type": "message", "seq": i, "body": "x" * 100})
        for sock in socks:
            sock.send(text)
        flusher._flush()
    cpu = time.process_time() - started
    deliveries = rounds * members
    return {"deliveries": deliveries, "cpu_ns_per_delivery": round(cpu / max(deliveries, 1) * 1e9)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rooms", type=int, default=100)
    parser.add_argument("--members", type=int, default=10)
    parser.add_argument("--together", type=int, default=1, help="publishes per room per iteration")
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument(
        "--first", action="store_true", help="measure each new room's first message instead"
    )
    parser.add_argument(
        "--files-made-ahead",
        type=int,
        default=0,
        metavar="N",
        help="with --first: files made as members join, at most N (the server's default: 128)",
    )
    parser.add_argument(
        "--archive",
        action="store_true",
        help="with --first: the server's archive and alarms (directory rows, alarms) too",
    )
    parser.add_argument(
        "--socket-path", type=int, metavar="ROUNDS", help="only the socket send/flush path"
    )
    args = parser.parse_args()
    if args.socket_path is not None:
        print(json.dumps(asyncio.run(measure_socket_path(args.socket_path))))
        return
    with tempfile.TemporaryDirectory(prefix="publish-cost-") as tmp:
        if args.first:
            result = asyncio.run(
                measure_first(
                    args.rooms, args.members, Path(tmp), args.files_made_ahead, args.archive
                )
            )
        else:
            result = asyncio.run(
                measure(args.rooms, args.members, args.together, args.iterations, Path(tmp))
            )
    print(json.dumps(result))


if __name__ == "__main__":
    main()

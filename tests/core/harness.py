"""Drive a RoomHost through in-memory sockets: the protocol, readable, with no event loop."""

from __future__ import annotations

import json
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from rooms.archive import ArchivePolicy
from rooms.auth import Identity
from rooms.host import ArchiveBindings, RoomHost
from rooms.limits import Limits
from roomsd.bindings import Faults, LocalD1, LocalR2
from roomsd.config import PROJECT_ROOT
from roomsd.d1 import open_d1
from roomsd.r2 import FileBucket
from roomsd.sqlite import SqliteSql

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Drive a host coroutine that never suspends (no real I/O here) without an event loop."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coro.close()
    raise AssertionError("the host suspended: core tests must not do real I/O")


class MemorySocket:
    """A hibernatable socket that records what the room sent it."""

    def __init__(self) -> None:
        self.tags: list[str] = []
        self.attachment: str | None = None
        self.open = True
        self.sent: list[dict[str, Any]] = []
        self.close_code: int | None = None

    def frames(self, type_: str | None = None) -> list[dict[str, Any]]:
        return [f for f in self.sent if type_ is None or f["type"] == type_]

    def take(self, type_: str | None = None) -> list[dict[str, Any]]:
        """Frames of that type received since the last take (all types when None)."""
        got = self.frames(type_)
        self.sent = [f for f in self.sent if f not in got]
        return got


class MemorySockets:
    def __init__(self) -> None:
        self.accepted: list[MemorySocket] = []

    def accept(self, ws: MemorySocket, tags: list[str]) -> None:
        ws.tags = list(tags)
        self.accepted.append(ws)

    def all(self) -> list[MemorySocket]:
        return [ws for ws in self.accepted if ws.open]

    def is_open(self, ws: MemorySocket) -> bool:
        return ws.open

    def attachment(self, ws: MemorySocket) -> str | None:
        return ws.attachment

    def set_attachment(self, ws: MemorySocket, value: str) -> None:
        ws.attachment = value

    def send(self, ws: MemorySocket, text: str) -> None:
        if not ws.open:
            raise RuntimeError("socket closed")
        ws.sent.append(json.loads(text))

    def close(self, ws: MemorySocket, code: int, reason: str) -> None:
        ws.open = False
        ws.close_code = code


class Client:
    def __init__(self, harness: RoomHarness, ws: MemorySocket, user_id: str) -> None:
        self.harness = harness
        self.ws = ws
        self.user_id = user_id

    def send(self, frame: dict[str, Any] | str | bytes) -> None:
        data = json.dumps(frame) if isinstance(frame, dict) else frame
        run(self.harness.host.message(self.ws, data))
        self.harness.after_event()

    def publish(self, id_: str, body: str) -> None:
        self.send({"type": "publish", "id": id_, "body": body})

    def take(self, type_: str | None = None) -> list[dict[str, Any]]:
        return self.ws.take(type_)

    def seqs(self) -> list[int]:
        return [f["seq"] for f in self.ws.frames("message")]

    def leave(self) -> None:
        self.ws.open = False
        run(self.harness.host.closed(self.ws))
        self.harness.after_event()


class RecordedAlarm:
    """The `Alarms` port, recording what the room asked for."""

    def __init__(self) -> None:
        self.at_ms: int | None = None
        self.history: list[int] = []

    async def set(self, at_ms: int) -> None:
        self.at_ms = at_ms
        self.history.append(at_ms)


def archive_bindings(root: Path, policy: ArchivePolicy) -> tuple[ArchiveBindings, Faults]:
    """D1 (SQLite with our migrations) and R2 (a directory), as the local runtime has them."""
    db, _ = open_d1(root / "d1.sqlite", PROJECT_ROOT / "migrations")
    faults = Faults()
    bindings = ArchiveBindings(LocalD1(db, faults), LocalR2(FileBucket(root / "r2"), faults),
                               policy)
    return bindings, faults


class RoomHarness:
    """A room with a real SQLite store; `hibernate()` rebuilds the host from storage + sockets."""

    def __init__(self, limits: Limits | None = None, *, hibernate_every_event: bool = False,
                 path: str = ":memory:", archive: ArchiveBindings | None = None,
                 retention: ArchivePolicy | None = None) -> None:
        self.limits = limits or Limits()
        self.archive = archive
        self.retention = retention
        self.alarm = RecordedAlarm()
        self.sql = SqliteSql(path)
        self.sockets = MemorySockets()
        self.now_ms = 1_000_000
        self.logs: list[str] = []
        self.hibernate_every_event = hibernate_every_event
        self.host = self._new_host()

    def _new_host(self) -> RoomHost[MemorySocket]:
        return RoomHost("lobby", self.sql, self.sockets, self.limits, log=self.logs.append,
                        clock_ms=lambda: self.now_ms, archive=self.archive,
                        alarms=self.alarm if self.archive else None, retention=self.retention)

    def hibernate(self) -> None:
        self.host = self._new_host()

    def after_event(self) -> None:
        if self.hibernate_every_event:
            self.hibernate()

    def join(self, user_id: str, since: int | None = 0, name: str | None = None) -> Client:
        ws = MemorySocket()
        run(self.host.connect(ws, Identity(user_id, name or user_id.title()), since))
        self.after_event()
        return Client(self, ws, user_id)

    def tick(self, ms: int) -> None:
        self.now_ms += ms

"""Group commit behind the output gate (local/roomsd/output_gate.py), through real sockets and
real SQLite: the publishes of one event-loop iteration share a commit, no frame leaves before the
message it shows is committed, and a failed commit loses only what nobody saw."""

from __future__ import annotations

import json
import os
import sqlite3
import struct
from pathlib import Path
from typing import Any

import pytest
import websockets

from rooms.protocol import CloseCode
from roomsd import sockets as local_sockets
from roomsd.server import SETTINGS
from tests.local.conftest import ServerFactory, closed_by_server, recv_until

pytestmark = pytest.mark.integration


def masked_text_frame(text: str) -> bytes:
    """One client-to-server text frame (RFC 6455 5.2: clients mask)."""
    data = text.encode()
    mask = os.urandom(4)
    head = bytes((0x81,))
    if len(data) < 126:
        head += bytes((0x80 | len(data),))
    else:
        head += struct.pack("!BH", 0x80 | 126, len(data))
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data))


async def publish_at_once(ws: websockets.ClientConnection, bodies: list[str], prefix: str) -> None:
    """Publishes written to the connection in one write: they reach the server together."""
    frames = [
        masked_text_frame(json.dumps({"type": "publish", "id": f"{prefix}{i}", "body": body}))
        for i, body in enumerate(bodies)
    ]
    ws.transport.write(b"".join(frames))


def committed_seqs(path: Path) -> set[int]:
    """What another connection sees: committed rows only."""
    db = sqlite3.connect(path)
    try:
        return {seq for (seq,) in db.execute("SELECT seq FROM messages")}
    finally:
        db.close()


def shown_seqs(frame_bytes: bytes) -> list[int]:
    """The seqs that acks and messages in a run of server frames (unmasked) show."""
    seqs = []
    at = 0
    while at < len(frame_bytes):
        size = frame_bytes[at + 1] & 0x7F
        start = at + 2
        if size == 126:
            size, start = struct.unpack("!H", frame_bytes[at + 2 : at + 4])[0], at + 4
        elif size == 127:
            size, start = struct.unpack("!Q", frame_bytes[at + 2 : at + 10])[0], at + 10
        text = frame_bytes[at] & 0x0F == 1
        payload = frame_bytes[start : start + size]
        at = start + size
        if text:
            frame = json.loads(payload)
            if frame.get("type") in ("ack", "message"):
                seqs.append(int(frame["seq"]))
    return seqs


@pytest.fixture
def writes_checked(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Path, list[int]]]:
    """Every transport write of room frames, checked against the room's file at that moment:
    each ack and message written must already be committed (visible to another connection)."""
    seen: list[tuple[Path, list[int]]] = []
    original = local_sockets.LocalSocket._write_queued

    def checked(self: local_sockets.LocalSocket) -> None:
        transport = self.request.transport
        assert transport is not None
        write = transport.write

        def write_checked(data: Any) -> None:
            seqs = shown_seqs(bytes(data))
            if seqs:
                path = _room_file_of(self)
                missing = set(seqs) - committed_seqs(path)
                assert not missing, f"frames showing uncommitted seqs {missing} were written"
                seen.append((path, seqs))
            write(data)

        transport.write = write_checked  # type: ignore[method-assign]
        try:
            original(self)
        finally:
            del transport.write

    monkeypatch.setattr(local_sockets.LocalSocket, "_write_queued", checked)
    return seen


def _room_file_of(sock: local_sockets.LocalSocket) -> Path:
    room = sock.request.path.split("/")[2]  # /rooms/{room}/ws
    return Path(sock.request.app[SETTINGS].data_dir) / "rooms" / f"{room}.sqlite"


@pytest.mark.parametrize("group_commit", [True, False], ids=["grouped", "each-message"])
async def test_publishes_arriving_together_share_a_commit_and_frames_wait_for_it(
    server_factory: ServerFactory,
    writes_checked: list[tuple[Path, list[int]]],
    group_commit: bool,
) -> None:
    server = await server_factory(group_commit=group_commit)
    async with await server.connect("together", "alice") as alice, \
            await server.connect("together", "bob") as bob:
        await recv_until(alice, "welcome")
        await recv_until(bob, "welcome")
        room = server.registry.rooms["together"]
        assert room._sql is not None
        commits: list[str] = []
        room._sql._db.set_trace_callback(
            lambda statement: commits.append(statement) if statement == "COMMIT" else None
        )
        await publish_at_once(alice, [f"body {i}" for i in range(20)], "m")
        acks = [(await recv_until(alice, "ack"))["seq"] for _ in range(20)]
        delivered = [(await recv_until(bob, "message"))["seq"] for _ in range(20)]
    assert acks == delivered == list(range(1, 21))  # one gapless order, as always
    assert committed_seqs(room.db_path) == set(range(1, 21))
    written = sorted({seq for _, seqs in writes_checked for seq in seqs})
    assert written == list(range(1, 21))  # and every one of them was checked on its way out
    if group_commit:
        # One write from the client is one read on the server: one batch, however the
        # frames were parsed. Allow a split read or two, never a commit per message.
        assert 1 <= len(commits) <= 3, commits
    else:
        assert len(commits) == 20


DEFERRED_POISON = (
    # A foreign key checked at COMMIT (deferred): a message with the body "poison" makes the
    # whole transaction fail to commit, the way a full disk would, without faking SQLite.
    "CREATE TABLE parent (id INTEGER PRIMARY KEY)",
    "CREATE TABLE child (parent INTEGER REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED)",
    "CREATE TRIGGER poison AFTER INSERT ON messages WHEN NEW.body = 'poison' "
    "BEGIN INSERT INTO child VALUES (42); END",
)


async def test_a_failed_group_commit_loses_only_what_nobody_saw(
    server_factory: ServerFactory, writes_checked: list[tuple[Path, list[int]]]
) -> None:
    server = await server_factory()
    async with await server.connect("fragile", "alice") as alice, \
            await server.connect("fragile", "bob") as bob:
        await recv_until(alice, "welcome")
        await recv_until(bob, "welcome")
        room = server.registry.rooms["fragile"]
        await alice.send(json.dumps({"type": "publish", "id": "first", "body": "kept"}))
        assert (await recv_until(alice, "ack"))["seq"] == 1
        assert (await recv_until(bob, "message"))["seq"] == 1
        db = sqlite3.connect(room.db_path)
        for statement in DEFERRED_POISON:
            db.execute(statement)
        db.commit()
        db.close()
        await publish_at_once(alice, ["a", "poison", "b"], "batch")
        # Nothing of the failed batch reaches anyone: both sockets are cut with 1011.
        for ws in (alice, bob):
            closed = await closed_by_server(ws)
            assert closed.rcvd is None or closed.rcvd.code == CloseCode.INTERNAL_ERROR
    assert committed_seqs(room.db_path) == {1}
    assert all(set(seqs) == {1} for _, seqs in writes_checked), writes_checked
    # The room restarted from its file: the next message is seq 2, with no gap and no repeat.
    async with await server.connect("fragile", "alice", since=1) as alice:
        welcome = await recv_until(alice, "welcome")
        assert welcome["head"] == 1
        await alice.send(json.dumps({"type": "publish", "id": "after", "body": "fine"}))
        assert (await recv_until(alice, "ack"))["seq"] == 2
    assert committed_seqs(room.db_path) == {1, 2}

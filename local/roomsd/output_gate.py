"""The output gate: nothing leaves the process before the writes made ahead of it are committed.

Cloudflare holds a Durable Object's outgoing messages until its storage writes are durable (the
output gate), so an object may write, answer and move on without waiting for each commit. The
local runtime does the same, which lets it commit the publishes of one event-loop iteration
together (group commit) instead of one SQLite transaction per message:

- a room's database opens a transaction at its first write of an iteration and keeps it open
  (`roomsd.sqlite.SqliteSql` with a gate); each message still gets its own savepoint, so one
  failed write rolls back alone;
- frames queue in their sockets meanwhile (`roomsd.sockets`), and R2, D1 and alarm writes go
  out through the bindings;
- before any of those leave (the socket flusher, a socket's writer task, an R2 put, a D1 batch)
  and once per loop iteration in any case, `release` commits every open transaction.

So an ack or a broadcast is written to a socket only after the message it carries is committed,
exactly as with a commit per message. A commit that fails loses only what nobody has seen: its
room drops its frames, cuts its sockets (clients resume with ``since``) and restarts from its
file (`roomsd.rooms.LocalRoom`).
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Protocol

log = logging.getLogger("rooms")


class Batch(Protocol):
    """A database holding writes that nothing outside the process may see yet."""

    def settle(self) -> None:
        """Commit now; on failure roll back and tell the owner (never raises)."""
        ...


class OutputGate:
    """The open write batches of one event loop, committed before any output leaves."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._held: list[Batch] = []
        self._scheduled = False

    @property
    def holding(self) -> bool:
        return bool(self._held)

    def hold(self, batch: Batch) -> None:
        """``batch`` opened a transaction: commit it before output, at the latest next iteration."""
        self._held.append(batch)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._release_soon)

    def release(self) -> None:
        """Commit every open batch (a no-op when none is open)."""
        while self._held:  # a failed batch's clean-up may open no new one, but be sure
            held, self._held = self._held, []
            for batch in held:
                batch.settle()

    def _release_soon(self) -> None:
        self._scheduled = False
        self.release()


_GATES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, OutputGate] = (
    weakref.WeakKeyDictionary()
)


def output_gate() -> OutputGate:
    """The running loop's gate."""
    loop = asyncio.get_running_loop()
    gate = _GATES.get(loop)
    if gate is None:
        gate = _GATES[loop] = OutputGate(loop)
    return gate


def release_output() -> None:
    """Commit what is pending before output that does not go through a socket (R2, D1)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return  # no loop, so no gate and nothing held
    gate = _GATES.get(loop)
    if gate is not None:
        gate.release()

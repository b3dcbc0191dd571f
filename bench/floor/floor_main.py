"""Main module of the Python floor variants served by bench/workerd_floor.py (never deployed).

The front Worker and the Room's upgrade path are ours, unchanged: `Default` comes from
src/worker.py and `Room` subclasses ours. Only what a room does with a client's frame is
swapped, as the variant named in the `FLOOR_VARIANT` var asks:

- ``empty``: `webSocketMessage` returns at once. What entering Python for an event costs.
- ``direct``: the JS baseline's publish (bench/baselines/workerd-js) in the most direct
  Python: `json.loads`, the same checks, one INSERT read to its end, an ack and one send per
  socket of the room, no port, no engine, no attachment, no metrics. What the baseline's work
  costs when Python does it.

Neither answers anything but a publish; both are measuring devices, not rooms.
"""

from __future__ import annotations

import json
import time
from typing import Any

from objects import ffi, room
from worker import Default

__all__ = ["Default", "Room"]

MAX_BODY_CHARS = 4000
CREATE = (
    "CREATE TABLE IF NOT EXISTS floor_messages (seq INTEGER PRIMARY KEY, id TEXT NOT NULL, "
    "user_id TEXT NOT NULL, body TEXT NOT NULL, sent_ms INTEGER NOT NULL)"
)
INSERT = "INSERT INTO floor_messages (seq, id, user_id, body, sent_ms) VALUES (?, ?, ?, ?, ?)"


class _Direct:
    """One room's state for the ``direct`` handler: as the baseline keeps it in its object."""

    def __init__(self, room: Any) -> None:
        ctx = ffi.unwrapped_context(room.ctx)
        self.ctx = ctx
        self.sql = ctx.storage.sql
        self.sql.exec(CREATE)
        self.head = 0
        self.last_ms = 0
        # The room's sockets, as the baseline's in-memory map: listed again after an upgrade.
        self.sockets: list[Any] | None = None


def _empty(self: Any, ws: Any, message: Any, *_: Any) -> None:
    return None


def _direct(self: Any, ws: Any, message: Any, *_: Any) -> None:
    state: _Direct | None = self.__dict__.get("_floor")
    if state is None:
        state = self.__dict__["_floor"] = _Direct(self)
    try:
        frame = json.loads(message)
    except ValueError:
        frame = None
    if not (
        isinstance(frame, dict)
        and frame.get("type") == "publish"
        and isinstance(frame.get("id"), str)
        and 1 <= len(frame["id"]) <= 64
        and isinstance(frame.get("body"), str)
        and len(frame["body"]) <= MAX_BODY_CHARS
    ):
        ws.send(json.dumps({"type": "error", "code": "bad_frame", "message": "not a publish"}))
        return
    # The baseline reads the member from its map (filled at the upgrade); the sockets' own
    # attachment format is ours, so the variant names every sender alike.
    user = "floor"
    seq = state.head + 1
    sent_ms = max(int(time.time() * 1000), state.last_ms)
    state.sql.exec(INSERT, seq, frame["id"], user, frame["body"], sent_ms).toArray()
    state.head, state.last_ms = seq, sent_ms
    ws.send(json.dumps({"type": "ack", "id": frame["id"], "seq": seq, "duplicate": False}))
    text = json.dumps(
        {
            "type": "message",
            "seq": seq,
            "id": frame["id"],
            "user_id": user,
            "name": user,
            "body": frame["body"],
            "sent_ms": sent_ms,
        }
    )
    if state.sockets is None:
        state.sockets = list(state.ctx.getWebSockets())
    for socket in state.sockets:
        socket.send(text)


VARIANTS = {"empty": _empty, "direct": _direct}


class Room(room.Room):
    """Our Room with the variant's `webSocketMessage`. workerd gets its handlers as our Room
    hands them over (`ffi.call_handlers_as_is`, docs/cloudflare.md §1.10), so the variants
    pay what ours pays to be called, no more."""

    def __init__(self, ctx: Any, env: Any) -> None:
        super().__init__(ctx, env)
        self._floor_handler = VARIANTS[
            ffi.var_text(getattr(env, "FLOOR_VARIANT", None)) or "direct"
        ]

    def webSocketMessage(self, ws: Any, message: Any, *_: Any) -> None:  # noqa: N802
        self._floor_handler(self, ws, message)

    async def fetch(self, request: Any, *_: Any) -> Any:
        response = await super().fetch(request)
        state: _Direct | None = self.__dict__.get("_floor")
        if state is not None:
            state.sockets = None  # a socket may have joined
        return response

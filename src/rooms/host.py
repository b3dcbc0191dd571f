"""Runs a `RoomEngine` over one platform's hibernatable sockets.

A `RoomHost` is what a room's object is while it is awake. It holds nothing that hibernation
would lose: the log lives in SQL, each connection's `Peer` lives in its socket's attachment, and
a new host rebuilt from those (after `__init__` runs again on Cloudflare, or after the local
runtime evicts the room) carries on exactly where the old one stopped. The Durable Object adapter
and the local runtime both drive this class; only their `Sockets` implementation differs.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

from rooms.auth import Identity
from rooms.effects import Broadcast, Close, Effect, Log, SavePeer, Send
from rooms.engine import RoomEngine
from rooms.limits import Limits
from rooms.logs import log_line
from rooms.peers import Peer, decode_attachment, encode_attachment, new_peer
from rooms.store import RoomStore, Sql

S = TypeVar("S")


class Sockets(Protocol[S]):
    """The platform's hibernatable WebSocket API, reduced to what a room needs."""

    def accept(self, ws: S, tags: list[str]) -> None: ...
    def all(self) -> list[S]: ...
    def is_open(self, ws: S) -> bool: ...
    def attachment(self, ws: S) -> str | None: ...
    def set_attachment(self, ws: S, value: str) -> None: ...
    def send(self, ws: S, text: str) -> None: ...
    def close(self, ws: S, code: int, reason: str) -> None: ...


def conn_tag(conn_id: str) -> str:
    return f"c:{conn_id}"


def user_tag(user_id: str) -> str:
    return f"u:{user_id}"


def wall_clock_ms() -> int:
    return int(time.time() * 1000)


class RoomHost(Generic[S]):
    """One awake room: the engine, its store, and the map from connection ids to sockets."""

    def __init__(
        self,
        room: str,
        sql: Sql,
        sockets: Sockets[S],
        limits: Limits,
        *,
        log: Callable[[str], None] = print,
        clock_ms: Callable[[], int] = wall_clock_ms,
    ) -> None:
        self.room = room
        self.sockets = sockets
        self._log = log
        self._clock_ms = clock_ms
        self._by_conn: dict[str, S] = {}
        peers: list[Peer] = []
        for ws in sockets.all():
            peer = decode_attachment(sockets.attachment(ws))
            if peer is None or peer.closed or not sockets.is_open(ws):
                continue  # closing or foreign sockets never count as members
            peers.append(peer)
            self._by_conn[peer.conn_id] = ws
        self.engine = RoomEngine(room, RoomStore(sql), limits, peers)

    def admits(self, identity: Identity) -> bool:
        return self.engine.admits(identity.user_id)

    def connect(self, ws: S, identity: Identity, since: int | None) -> str:
        """Accept ``ws`` into the room; returns its connection id."""
        started = time.perf_counter()
        now_ms = self._clock_ms()
        # Drawn here, never at import time: Workers forbid top-level entropy.
        conn_id = secrets.token_hex(8)
        peer = new_peer(conn_id, identity.user_id, identity.name, self.engine.limits, now_ms)
        self.sockets.accept(ws, [conn_tag(conn_id), user_tag(identity.user_id)])
        self.sockets.set_attachment(ws, encode_attachment(peer))
        self._by_conn[conn_id] = ws
        self._apply(self.engine.connect(peer, since, now_ms), started)
        return conn_id

    def message(self, ws: S, data: str | bytes) -> None:
        started = time.perf_counter()
        peer = decode_attachment(self.sockets.attachment(ws))
        if peer is None or peer.closed:
            return
        if peer.conn_id not in self._by_conn:  # accepted by another host instance
            self._by_conn[peer.conn_id] = ws
            self.engine.peers.setdefault(peer.conn_id, peer)
        self._apply(self.engine.receive(peer.conn_id, data, self._clock_ms()), started)

    def closed(self, ws: S) -> None:
        """The socket closed or failed (a close event, an error, or a vanished peer)."""
        started = time.perf_counter()
        peer = decode_attachment(self.sockets.attachment(ws))
        if peer is None:
            return
        self._by_conn.pop(peer.conn_id, None)
        if peer.closed:  # we closed it and announced the leave already
            self.engine.peers.pop(peer.conn_id, None)
            return
        user_id = peer.user_id if peer.joined else None
        self._apply(self.engine.disconnect(peer.conn_id, user_id, self._clock_ms()), started)

    # ----------------------------------------------------------------------- effects

    def _apply(self, effects: list[Effect], started: float) -> None:
        for effect in effects:
            match effect:
                case Send(conn_id, text):
                    self._send(conn_id, text)
                case Broadcast(conn_ids, text):
                    for conn_id in conn_ids:
                        self._send(conn_id, text)
                case SavePeer(peer):
                    ws = self._by_conn.get(peer.conn_id)
                    if ws is not None:
                        self.sockets.set_attachment(ws, encode_attachment(peer))
                case Close(conn_id, code, reason):
                    self._close(conn_id, code, reason)
                case Log():
                    elapsed_ms = (time.perf_counter() - started) * 1000
                    self._log(log_line(self.room, effect, elapsed_ms))

    def _send(self, conn_id: str, text: str) -> None:
        ws = self._by_conn.get(conn_id)
        if ws is None:
            return
        try:
            self.sockets.send(ws, text)
        except Exception as exc:  # the peer vanished; its close event will clean up
            self._log(log_line(self.room, Log("send_failed", conn_id, code=type(exc).__name__)))

    def _close(self, conn_id: str, code: int, reason: str) -> None:
        """Close a socket and announce the leave now: its close event may never reach us."""
        ws = self._by_conn.pop(conn_id, None)
        peer = self.engine.peers.get(conn_id)
        if ws is None or peer is None:
            return
        peer.closed = True
        self.sockets.set_attachment(ws, encode_attachment(peer))
        try:
            self.sockets.close(ws, code, reason)
        except Exception as exc:
            self._log(log_line(self.room, Log("close_failed", conn_id, code=type(exc).__name__)))
        user_id = peer.user_id if peer.joined else None
        self._apply(self.engine.disconnect(conn_id, user_id, self._clock_ms()), time.perf_counter())

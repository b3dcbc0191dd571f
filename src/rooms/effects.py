"""What the room engine asks its driver to do. The engine never performs I/O itself."""

from __future__ import annotations

from dataclasses import dataclass, field

from rooms.peers import Peer


@dataclass(frozen=True, slots=True)
class Send:
    """Send one text frame to one connection."""

    conn_id: str
    text: str


@dataclass(frozen=True, slots=True)
class Broadcast:
    """Send one text frame, encoded once, to each listed connection."""

    conn_ids: tuple[str, ...]
    text: str


@dataclass(frozen=True, slots=True)
class Close:
    conn_id: str
    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class SavePeer:
    """Persist a connection's state where it survives hibernation (the socket attachment)."""

    peer: Peer


@dataclass(frozen=True, slots=True)
class Log:
    """One structured log event. Fields never carry message bodies, tokens or secrets."""

    event: str
    conn_id: str | None = None
    user_id: str | None = None
    seq: int | None = None
    code: str | None = None
    extra: dict[str, int | str] = field(default_factory=dict)


Effect = Send | Broadcast | Close | SavePeer | Log

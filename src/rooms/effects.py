"""What the room engine asks its driver to do. The engine never performs I/O itself."""

from __future__ import annotations

from dataclasses import dataclass, field

from rooms.peers import Peer
from rooms.protocol import SeqRange


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
    # One per chat message (publish): a busy single box may leave these out of its log.
    per_message: bool = False
    # One per connection (connect, join, disconnect): on Cloudflare only with LOG_CONNECTIONS=1.
    per_connection: bool = False


@dataclass(frozen=True, slots=True)
class Stored:
    """A message was stored: the driver makes sure an archive alarm is due."""

    seq: int


@dataclass(frozen=True, slots=True)
class ReadArchive:
    """Fetch seqs [first, last] from the archive, then hand them to `RoomEngine.archive_read`.

    Asked for when a resume or a history page reaches below what the room retains. The
    connection gets nothing else until the engine has the archived part, so order holds.
    """

    conn_id: str
    first: int
    last: int
    purpose: str  # "join" or "history"
    since: int = 0  # join: the client's since
    missing: tuple[SeqRange, ...] = ()  # join: ranges already known to be skipped
    before: int = 0  # history: the page's upper bound (exclusive)
    ref: str | None = None  # history: the client's request ref
    fold: bool = False  # history: fold events into their messages


Effect = Send | Broadcast | Close | SavePeer | Log | Stored | ReadArchive

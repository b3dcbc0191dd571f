"""The wire protocol: every JSON text frame a client and a room exchange, defined once.

Frames are msgspec Structs tagged by their ``type`` field. Schema evolution follows msgspec's
rules: new fields always get defaults, field types never change, and unknown fields are ignored
so that an older page keeps working against a newer room. ``docs/protocol.md`` is the prose
version of this module.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Annotated, Any

import msgspec

# Client-chosen ids (message ids, history request refs) and signal kinds.
ClientId = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
SignalKind = Annotated[str, msgspec.Meta(min_length=1, max_length=32)]
# A signal's `data` is relayed to every member: bounded in depth so one client cannot hand the
# others' JSON parsers a structure they refuse (CPython's json stops near 1,000 levels).
MAX_SIGNAL_DEPTH = 16
Seq = Annotated[int, msgspec.Meta(ge=0)]
# The seq a lifecycle event acts on. Bounded where JavaScript and SQLite still hold it exactly.
TargetSeq = Annotated[int, msgspec.Meta(ge=1, le=2**53 - 2)]
# A reaction as decoded; `Limits.max_emoji_chars` and `rooms.lifecycle.valid_emoji` then apply.
EmojiText = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


class CloseCode(IntEnum):
    """WebSocket close codes a room uses (RFC 6455 section 7.4 plus our 4000-range codes)."""

    NORMAL = 1000
    GOING_AWAY = 1001
    POLICY_VIOLATION = 1008  # repeated abuse: bad frames or rate-limit breaches past the bound
    MESSAGE_TOO_BIG = 1009  # a frame over the configured max frame bytes
    INTERNAL_ERROR = 1011  # a bug on our side; never carries details
    SLOW_CONSUMER = 4008  # the client stopped reading; reconnect and resume with `since`
    KICKED = 4003  # an operator disconnected the user


class ErrorCode:
    """The ``code`` values of `Error` frames (and of HTTP error bodies)."""

    BAD_JSON = "bad_json"
    BAD_FRAME = "bad_frame"
    UNKNOWN_TYPE = "unknown_type"
    BINARY_NOT_SUPPORTED = "binary_not_supported"
    BODY_TOO_LONG = "body_too_long"
    SIGNAL_TOO_LARGE = "signal_too_large"
    FRAME_TOO_LARGE = "frame_too_large"
    RATE_LIMITED = "rate_limited"
    HELLO_REQUIRED = "hello_required"
    ALREADY_JOINED = "already_joined"
    SINCE_AHEAD = "since_ahead"
    ROOM_CLOSED = "room_closed"
    ROOM_FULL = "room_full"
    TOO_MANY_SOCKETS = "too_many_sockets"
    BANNED = "banned"
    TARGET_NOT_FOUND = "target_not_found"
    TARGET_NOT_RETAINED = "target_not_retained"
    TARGET_DELETED = "target_deleted"
    NOT_AUTHOR = "not_author"
    TOO_MANY_EDITS = "too_many_edits"
    TOO_MANY_REACTIONS = "too_many_reactions"
    BAD_EMOJI = "bad_emoji"
    TOO_MANY_FROM_ADDRESS = "too_many_from_address"
    TOO_MANY_NEW_ROOMS = "too_many_new_rooms"
    INTERNAL = "internal"


class EventKind:
    """The ``kind`` of a lifecycle event in the log (a plain message has none)."""

    EDIT = "edit"
    DELETE = "delete"
    REACT = "react"
    UNREACT = "unreact"


# --------------------------------------------------------------------------- client -> room


class ClientFrame(msgspec.Struct, tag_field="type", frozen=True, forbid_unknown_fields=False):
    """Base of every frame a client sends."""


class Hello(ClientFrame, tag="hello", frozen=True):
    """Join the room (when the URL carried no ``since``), replaying messages after ``since``."""

    since: Seq | None = None


class Publish(ClientFrame, tag="publish", frozen=True):
    """Store and broadcast a message; ``id`` makes retransmits idempotent per user."""

    id: ClientId
    body: str


class HistoryRequest(ClientFrame, tag="history", frozen=True):
    """Page backwards: up to ``limit`` messages with seq < ``before`` (default: the head + 1)."""

    before: Seq | None = None
    limit: Annotated[int, msgspec.Meta(ge=1)] = 50
    ref: ClientId | None = None
    # True: the page's plain messages with their edits, deletion and reactions folded in.
    fold: bool = False


class Edit(ClientFrame, tag="edit", frozen=True):
    """The author replaces the body of message ``target``; idempotent by ``id`` like a publish."""

    id: ClientId
    target: TargetSeq
    body: str


class Delete(ClientFrame, tag="delete", frozen=True):
    """The author removes message ``target``: its body and its edits' bodies are blanked."""

    id: ClientId
    target: TargetSeq


class React(ClientFrame, tag="react", frozen=True):
    """Add (or, with ``remove``, take back) this user's ``emoji`` on message ``target``."""

    id: ClientId
    target: TargetSeq
    emoji: EmojiText
    remove: bool = False


class Read(ClientFrame, tag="read", frozen=True):
    """This user has read everything up to ``seq`` (a per-user position, never broadcast)."""

    seq: Seq


class Signal(ClientFrame, tag="signal", frozen=True):
    """An ephemeral frame (typing, cursor, ...) relayed to the other members, never stored."""

    kind: SignalKind
    data: Any = None


class Ping(ClientFrame, tag="ping", frozen=True):
    """Keep-alive. The exact text `PING_TEXT` is answered by the platform, not the room."""


# --------------------------------------------------------------------------- room -> client


class ServerFrame(msgspec.Struct, tag_field="type", frozen=True, omit_defaults=False):
    """Base of every frame a room sends."""


class Member(msgspec.Struct, frozen=True, omit_defaults=True):
    user_id: str
    name: str
    guest: bool = False  # sent only when true: a member signed in with a guest token


class SeqRange(msgspec.Struct, frozen=True, array_like=True):
    """An inclusive range of sequence numbers, sent as ``[first, last]``."""

    first: int
    last: int


class Resume(msgspec.Struct, frozen=True):
    """What the replay after a welcome covers: ``complete`` or the ``missing`` ranges."""

    since: int
    complete: bool
    missing: list[SeqRange] = msgspec.field(default_factory=list)
    reason: str | None = None


class Welcome(ServerFrame, tag="welcome", frozen=True):
    room: str
    user_id: str
    conn_id: str
    head: int
    presence: list[Member]
    resume: Resume
    # The room's `max_body_chars`, so a client can count and refuse before sending.
    max_body_chars: int = 0
    read: int = 0  # this user's read-up-to seq
    unread: int = 0  # messages by others after it, not deleted, among the retained ones


class ReactionCount(msgspec.Struct, frozen=True):
    """One emoji on a folded message: how many users chose it, and whether the asker did."""

    emoji: str
    count: int
    mine: bool = False


class Message(ServerFrame, tag="message", frozen=True, omit_defaults=True):
    """A stored message or lifecycle event, as replayed, broadcast and returned by history.

    Every field after ``sent_ms`` is left out when it has its default, so a plain message is
    exactly the v1 frame and costs nothing more to encode for the many sockets it goes to.
    """

    seq: int
    id: str
    user_id: str
    name: str
    body: str
    sent_ms: int
    kind: str | None = None  # an `EventKind`; None for a plain message
    target: int | None = None  # events: the message acted on
    emoji: str | None = None  # react / unreact
    deleted: bool = False  # the body was removed because the message was deleted
    edits: int = 0  # folded pages: times edited
    reactions: list[ReactionCount] = msgspec.field(default_factory=list)  # folded pages


class Ack(ServerFrame, tag="ack", frozen=True):
    id: str
    seq: int
    duplicate: bool = False


class History(ServerFrame, tag="history", frozen=True):
    messages: list[Message]
    ref: str | None = None
    # seq to pass as ``before`` for the next older page; None when the start is reached.
    next_before: int | None = None
    missing: list[SeqRange] = msgspec.field(default_factory=list)
    # Folded pages: the head when the page was folded (every event up to it is folded in).
    as_of: int | None = None


class SignalRelay(ServerFrame, tag="signal", frozen=True):
    user_id: str
    kind: str
    data: Any = None


class Presence(ServerFrame, tag="presence", frozen=True):
    """One user arrived or left. The welcome carries the whole list; after it, only changes:
    a room filling up would otherwise send everyone the full list on every join (O(n^2))."""

    event: str  # "join" | "leave"
    member: Member


class Pong(ServerFrame, tag="pong", frozen=True):
    pass


class ReadState(ServerFrame, tag="read", frozen=True):
    """This user's read-up-to seq moved: sent to each of the user's own joined sockets."""

    seq: int
    unread: int


class Error(ServerFrame, tag="error", frozen=True):
    code: str
    message: str
    ref: str | None = None


AnyClientFrame = Hello | Publish | HistoryRequest | Signal | Ping | Edit | Delete | React | Read
AnyServerFrame = (
    Welcome | Message | Ack | History | SignalRelay | Presence | Pong | Error | ReadState
)

_client_decoder = msgspec.json.Decoder(AnyClientFrame)
_encoder = msgspec.json.Encoder()

# The exact ping text clients send and the platform answers itself (setWebSocketAutoResponse).
PING_TEXT = '{"type":"ping"}'
PONG_TEXT = '{"type":"pong"}'


def decode_client_frame(text: str | bytes) -> AnyClientFrame:
    """Decode one client frame; raises msgspec.DecodeError (incl. ValidationError) on bad input."""
    frame: AnyClientFrame = _client_decoder.decode(text)
    return frame


class _FrameType(msgspec.Struct, frozen=True):
    type: str = ""


_type_decoder = msgspec.json.Decoder(_FrameType)
# The client frames that may write to the room's storage; every other kind only reads.
STORING_FRAME_TYPES = frozenset({"publish", "edit", "delete", "react", "read"})


def may_store(text: str | bytes) -> bool:
    """Whether a client frame is of a kind that may write to the room's storage, read from its
    ``type`` alone (a runtime gets storage ready before handling one). False for anything that
    does not decode: the room rejects that without writing."""
    try:
        return _type_decoder.decode(text).type in STORING_FRAME_TYPES
    except (msgspec.DecodeError, UnicodeError, RecursionError):
        return False


def encode(frame: ServerFrame | ClientFrame) -> str:
    """Encode a frame as the JSON text that goes on the socket."""
    return _encoder.encode(frame).decode()

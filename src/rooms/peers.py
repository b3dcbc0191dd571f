"""Per-connection state that must survive hibernation, and its attachment codec.

On Cloudflare this lives in the socket attachment (structured clone, 16 KiB max); locally the
same JSON string sits on the socket object. Rooms rebuild their member list from it on wake.
"""

from __future__ import annotations

import msgspec

from rooms.limits import PLATFORM_MAX_ATTACHMENT_BYTES, Limits

ATTACHMENT_VERSION = 1


class Peer(msgspec.Struct, kw_only=True):
    """One socket's view of the room: who it is and how it has behaved."""

    v: int = ATTACHMENT_VERSION
    conn_id: str
    user_id: str
    name: str
    joined: bool = False
    joining: bool = False  # waiting for the archived part of its replay
    joined_ms: int = 0
    connected_ms: int = 0
    guest: bool = False
    last_message_ms: int = 0
    sent: int = 0
    tokens: float = 0.0
    refill_ms: int = 0
    strikes: int = 0
    # Set when the room closed this socket itself and already announced the leave.
    closed: bool = False
    # The signal budget (None: full, as for attachments written before signals had one).
    signal_tokens: float | None = None
    signal_refill_ms: int = 0
    # The client's address as the front saw it (an IPv6 one as its /64), for the per-address
    # cap; never sent to anyone. Empty when unknown.
    address: str = ""


class Budget(msgspec.Struct, kw_only=True):
    """One user's rate budgets in a room: a token bucket for publishes and history requests,
    and one for signals. Shared by all of the user's sockets, so that opening more sockets buys
    no more frames; kept in each socket's `Peer` as it is spent, to survive hibernation."""

    tokens: float
    refill_ms: int
    signal_tokens: float
    signal_refill_ms: int

    @classmethod
    def of(cls, peer: Peer, limits: Limits) -> Budget:
        signal = float(limits.signal_burst) if peer.signal_tokens is None else peer.signal_tokens
        return cls(
            tokens=peer.tokens,
            refill_ms=peer.refill_ms,
            signal_tokens=signal,
            signal_refill_ms=peer.signal_refill_ms,
        )

    def fresher(self, other: Budget) -> Budget:
        """Of two copies of one user's budget, the one spent last (the other is stale); of two
        spent in the same millisecond, the emptier."""
        return other if other._age_key() > self._age_key() else self

    def _age_key(self) -> tuple[int, float, float]:
        return (self.last_spent_ms, -self.tokens, -self.signal_tokens)

    @property
    def last_spent_ms(self) -> int:
        return max(self.refill_ms, self.signal_refill_ms)

    def save_to(self, peer: Peer) -> None:
        peer.tokens, peer.refill_ms = self.tokens, self.refill_ms
        peer.signal_tokens, peer.signal_refill_ms = self.signal_tokens, self.signal_refill_ms

    def take(self, limits: Limits, now_ms: int) -> bool:
        """Token-bucket rate limit; returns False when the user is over its rate."""
        self.tokens = _refilled(
            self.tokens, now_ms - self.refill_ms, limits.messages_per_second, limits.burst
        )
        self.refill_ms = max(self.refill_ms, now_ms)
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True

    def take_signal(self, limits: Limits, now_ms: int) -> bool:
        """The same for signals, from their own bucket."""
        self.signal_tokens = _refilled(
            self.signal_tokens,
            now_ms - self.signal_refill_ms,
            limits.signals_per_second,
            limits.signal_burst,
        )
        self.signal_refill_ms = max(self.signal_refill_ms, now_ms)
        if self.signal_tokens < 1.0:
            return False
        self.signal_tokens -= 1.0
        return True

    def full_by(self, limits: Limits) -> int:
        """When both buckets are full again (ms): from then on it equals a new user's budget."""
        publish_ms = (
            self.refill_ms + (limits.burst - self.tokens) * 1000 / limits.messages_per_second
        )
        signal_ms = (
            self.signal_refill_ms
            + (limits.signal_burst - self.signal_tokens) * 1000 / limits.signals_per_second
        )
        return int(max(publish_ms, signal_ms)) + 1


def _refilled(tokens: float, elapsed_ms: int, per_second: float, burst: int) -> float:
    return min(float(burst), tokens + max(0, elapsed_ms) / 1000 * per_second)


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Peer)


def new_peer(
    conn_id: str,
    user_id: str,
    name: str,
    limits: Limits,
    now_ms: int,
    *,
    guest: bool = False,
    address: str = "",
) -> Peer:
    return Peer(
        conn_id=conn_id,
        user_id=user_id,
        name=name,
        guest=guest,
        address=address,
        # A full bucket dated 0: never "fresher" than the user's budget as another socket of
        # theirs spent it (`Budget.fresher`), so a new socket brings no new frames.
        tokens=float(limits.burst),
        refill_ms=0,
        connected_ms=now_ms,
    )


def encode_attachment(peer: Peer) -> str:
    text = _encoder.encode(peer).decode()
    if len(text.encode()) > PLATFORM_MAX_ATTACHMENT_BYTES:
        # Cannot happen with validated identities (sub and name are bounded); guard anyway.
        raise ValueError("peer attachment over the platform's 16 KiB limit")
    return text


def decode_attachment(value: object) -> Peer | None:
    """The peer stored on a socket, or None for anything unexpected (never raises)."""
    if not isinstance(value, str):
        return None
    try:
        peer = _decoder.decode(value)
    except msgspec.DecodeError:
        return None
    return peer if peer.v == ATTACHMENT_VERSION else None

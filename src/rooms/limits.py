"""Every tunable bound of a room in one validated object.

Config is strict where the wire is lenient: an unknown or out-of-range setting fails at start-up
rather than surprising a user at run time.
"""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

# Cloudflare's own limits, enforced by the local runtime too so that what works locally works
# there (docs/cloudflare.md §3.2, §3.3, §3.6, §3.8).
PLATFORM_MAX_TAGS = 10
PLATFORM_MAX_TAG_BYTES = 256  # UTF-8 bytes, not characters
PLATFORM_MAX_ATTACHMENT_BYTES = 16 * 1024
PLATFORM_MAX_MESSAGE_BYTES = 32 * 1024 * 1024
PLATFORM_MAX_AUTO_RESPONSE_CHARS = 2048


class Limits(BaseModel):
    """Bounds applied to every room and connection."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_frame_bytes: int = Field(default=64 * 1024, ge=256, le=PLATFORM_MAX_MESSAGE_BYTES)
    max_body_chars: int = Field(default=4000, ge=1, le=1_000_000)
    messages_per_second: float = Field(default=20.0, gt=0)
    burst: int = Field(default=40, ge=1, description="token-bucket size for the rate limit")
    max_members: int = Field(default=1000, ge=1, description="distinct joined users per room")
    max_sockets_per_user: int = Field(default=10, ge=1, description="one user's sockets in a room")
    # Generous: a whole office or campus may share one address (behind NAT). It stops one host
    # with many free guest identities from filling a room (docs/security.md).
    max_sockets_per_address: int = Field(
        default=100, ge=1, description="sockets from one client address (IPv6: its /64) in a room"
    )
    hello_timeout_ms: int = Field(
        default=10_000, ge=100, description="a socket that has not joined by then is closed"
    )
    max_strikes: int = Field(default=10, ge=1, description="bad frames tolerated before 1008")
    max_history_page: int = Field(default=200, ge=1, le=1000)
    max_replay: int = Field(default=1000, ge=1, description="messages replayed on a resume")
    max_backlog_bytes: int = Field(default=1024 * 1024, ge=1024, description="slow-consumer bound")
    # Signals are relayed to every member and never stored: small, and on a budget of their own
    # so that typing indicators never eat into a sender's messages (or the reverse).
    max_signal_bytes: int = Field(default=2048, ge=16, description="a signal's `data`, as JSON")
    signals_per_second: float = Field(default=10.0, gt=0)
    signal_burst: int = Field(default=20, ge=1, description="token-bucket size for signals")
    # Message lifecycle (docs/protocol.md, "Message lifecycle").
    max_edits_per_message: int = Field(default=20, ge=0, le=1000)
    max_reactions_per_message: int = Field(
        default=20, ge=0, le=1000, description="distinct emoji on one message"
    )
    max_emoji_chars: int = Field(default=16, ge=1, le=64, description="code points per reaction")

    @model_validator(mode="after")
    def _body_fits_in_a_frame(self) -> Limits:
        if self.max_body_chars > self.max_frame_bytes:
            raise ValueError("max_body_chars cannot exceed max_frame_bytes")
        return self


SettingsModel = TypeVar("SettingsModel", bound=BaseModel)


def settings_from_json(model: type[SettingsModel], raw: str | None, name: str) -> SettingsModel:
    """A settings model from a JSON var (defaults when unset); ValueError names what is wrong.

    Used for ROOM_LIMITS and ARCHIVE_POLICY on both runtimes, so a bad value fails at start-up.
    """
    if not raw:
        return model()
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise ValueError(f"{name} is invalid: {exc}") from None

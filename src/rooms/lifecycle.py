"""Message lifecycle rules that need no storage: what a reaction may be, and how events fold.

Edits, deletions and reactions are events in the room's log (docs/protocol.md, "Message
lifecycle"). The store keeps their effect on each message (`MessageState`, reactions) so that a
folded `history` page, or an archived page, never needs the events themselves.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from rooms.protocol import EventKind, Message, ReactionCount

_ZWJ = 0x200D
_VS16 = 0xFE0F
_KEYCAP = 0x20E3
_KEYCAP_BASES = frozenset("0123456789#*")


def _emoji_part(code: int) -> bool:
    # The emoji blocks are accepted whole, assigned or not: production's Python (3.14) knows
    # newer emoji than the local runtime's (3.11), and both must accept the same reactions.
    return (
        0x1F000 <= code <= 0x1FAFF
        or code in (_ZWJ, _VS16, _KEYCAP)
        or 0xE0020 <= code <= 0xE007F  # tag characters: subdivision flags
        or unicodedata.category(chr(code)) == "So"
    )


def valid_emoji(text: str, max_chars: int) -> bool:
    """Whether ``text`` is one emoji (a sequence of emoji parts) of at most ``max_chars``.

    Hand-written rather than a library: the `emoji` package would add megabytes of name tables
    to the Worker bundle for a check that needs only the code points' categories.
    """
    if not 1 <= len(text) <= max_chars:
        return False
    symbols = 0
    for index, char in enumerate(text):
        code = ord(char)
        if char in _KEYCAP_BASES:
            # A keycap: the digit, then VS16 and/or the combining keycap.
            if not any(ord(c) == _KEYCAP for c in text[index + 1 : index + 3]):
                return False
            continue
        if not _emoji_part(code):
            return False
        if code not in (_ZWJ, _VS16) and not 0xE0020 <= code <= 0xE007F:
            symbols += 1
    return symbols > 0


@dataclass(frozen=True, slots=True)
class MessageState:
    """What events did to one message: its current body, how often edited, whether deleted."""

    seq: int
    author: str
    body: str
    edits: int
    edit_seqs: tuple[int, ...]
    deleted_seq: int | None

    @property
    def deleted(self) -> bool:
        return self.deleted_seq is not None


def fold(
    page: Iterable[Message],
    states: Mapping[int, MessageState],
    reactions: Mapping[int, list[ReactionCount]],
) -> list[Message]:
    """The plain messages of ``page`` as they are now: events are left out, their effects in."""
    folded: list[Message] = []
    for message in page:
        if message.kind is not None:
            continue
        state = states.get(message.seq)
        counts = reactions.get(message.seq, [])
        if state is None:
            folded.append(_with_reactions(message, counts) if counts else message)
            continue
        folded.append(
            Message(
                seq=message.seq,
                id=message.id,
                user_id=message.user_id,
                name=message.name,
                body="" if state.deleted else state.body,
                sent_ms=message.sent_ms,
                deleted=state.deleted,
                edits=state.edits,
                reactions=[] if state.deleted else counts,
            )
        )
    return folded


def _with_reactions(message: Message, counts: list[ReactionCount]) -> Message:
    return Message(
        seq=message.seq,
        id=message.id,
        user_id=message.user_id,
        name=message.name,
        body=message.body,
        sent_ms=message.sent_ms,
        reactions=counts,
    )


def redacted(message: Message, deleted: set[int]) -> Message:
    """``message`` with its body removed when it, or the message it edits, was deleted."""
    if message.deleted or not (
        message.seq in deleted or (message.kind == EventKind.EDIT and message.target in deleted)
    ):
        return message
    return Message(
        seq=message.seq,
        id=message.id,
        user_id=message.user_id,
        name=message.name,
        body="",
        sent_ms=message.sent_ms,
        kind=message.kind,
        target=message.target,
        emoji=message.emoji,
        deleted=True,
    )


def seqs_to_check(messages: Sequence[Message]) -> tuple[int, int] | None:
    """The seq range whose deletions decide which of ``messages`` must be redacted."""
    seqs = [m.seq for m in messages] + [
        m.target for m in messages if m.kind == EventKind.EDIT and m.target is not None
    ]
    return (min(seqs), max(seqs)) if seqs else None

"""Archive segments: the immutable R2 objects that hold a room's history.

Format (version 1): gzip-compressed NDJSON. The first line is a header object
``{"format": "durable-rooms.segment", "v": 1, "room", "first", "last", "count"}``; each following
line is one `Message` exactly as the wire protocol sends it. Compression uses mtime 0 so that
the same messages always produce the same bytes: a retried put writes an identical object.

Keys are deterministic, ``rooms/{room}/segments/{first:012d}-{last:012d}.ndjson.gz``, so a retry
after any failure targets the same object and the index can never hold two segments for one
range.
"""

from __future__ import annotations

import gzip
import io
from collections.abc import Sequence

import msgspec

from rooms.protocol import Message

SEGMENT_FORMAT = "durable-rooms.segment"
SEGMENT_VERSION = 1


class SegmentHeader(msgspec.Struct, frozen=True):
    format: str
    v: int
    room: str
    first: int
    last: int
    count: int


class SegmentError(Exception):
    """A stored segment is unreadable or not what its key promises."""


_encoder = msgspec.json.Encoder()
_header_decoder = msgspec.json.Decoder(SegmentHeader)
_message_decoder = msgspec.json.Decoder(Message)


def segment_key(room: str, first: int, last: int) -> str:
    return f"rooms/{room}/segments/{first:012d}-{last:012d}.ndjson.gz"


def encode_segment(room: str, messages: Sequence[Message]) -> bytes:
    if not messages:
        raise ValueError("a segment holds at least one message")
    first, last = messages[0].seq, messages[-1].seq
    if [m.seq for m in messages] != list(range(first, last + 1)):
        raise ValueError("segment messages must be consecutive seqs")
    header = SegmentHeader(SEGMENT_FORMAT, SEGMENT_VERSION, room, first, last, len(messages))
    lines = [_encoder.encode(header), *(_encoder.encode(m) for m in messages)]
    raw = b"\n".join(lines) + b"\n"
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0, compresslevel=6) as gz:
        gz.write(raw)
    return buffer.getvalue()


def decode_segment(data: bytes, room: str, first: int, last: int) -> list[Message]:
    """The messages of a segment, checked against the range its index entry names."""
    try:
        lines = gzip.decompress(data).splitlines()
        header = _header_decoder.decode(lines[0])
        messages = [_message_decoder.decode(line) for line in lines[1:] if line]
    except (OSError, EOFError, IndexError, msgspec.DecodeError) as exc:
        raise SegmentError(f"segment {first}-{last} of {room!r} is unreadable") from exc
    if header.format != SEGMENT_FORMAT or header.v != SEGMENT_VERSION:
        raise SegmentError(f"segment {first}-{last} has unknown format {header.format} v{header.v}")
    seqs = [m.seq for m in messages]
    if (header.room, header.first, header.last) != (room, first, last) or seqs != list(
        range(first, last + 1)
    ):
        raise SegmentError(f"segment {first}-{last} of {room!r} does not match its index entry")
    return messages

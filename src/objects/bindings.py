"""D1, R2 and the object's alarm as the core's archive ports (`Database`, `ObjectStore`, `Alarms`).

The SDK wraps `env.DB` and `env.ARCHIVE` (docs/cloudflare.md §5.1): arguments are converted to JS
and results back to Python, rows arrive as `JsDict`. These classes only adapt shapes. Section
numbers (§) below refer to docs/cloudflare.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rooms.store import SqlValue


def _plain(value: Any) -> SqlValue:
    if isinstance(value, bool):  # never bind a bool (§4.2); D1 rows hold ints anyway
        return int(value)
    if value is None or isinstance(value, int | float | str):
        return value
    return str(value)


class D1Database:
    """The `Database` port over the SDK-wrapped D1 binding."""

    def __init__(self, binding: Any) -> None:
        self._db = binding

    async def all(self, query: str, *params: SqlValue) -> list[Mapping[str, SqlValue]]:
        result = await self._db.prepare(query).bind(*params).all()
        rows = result["results"] or []
        return [{str(k): _plain(v) for k, v in dict(row).items()} for row in rows]

    async def batch(self, statements: Sequence[tuple[str, Sequence[SqlValue]]]) -> None:
        # §5.3: D1's batch runs the statements in one transaction.
        prepared = [self._db.prepare(query).bind(*params) for query, params in statements]
        await self._db.batch(prepared)


class R2Bucket:
    """The `ObjectStore` port over the SDK-wrapped R2 binding."""

    def __init__(self, binding: Any) -> None:
        self._bucket = binding

    async def put(self, key: str, data: bytes) -> None:
        # §5.4: bytes are copied to a Uint8Array; a bytearray would raise TypeError.
        await self._bucket.put(key, bytes(data))

    async def get(self, key: str) -> bytes | None:
        body = await self._bucket.get(key)
        if body is None:
            return None
        buffer = await body.arrayBuffer()  # §5.4: a memoryview through the SDK
        return buffer.to_bytes() if hasattr(buffer, "to_bytes") else bytes(buffer)


class DurableObjectAlarms:
    """The `Alarms` port over ``ctx.storage.setAlarm`` (epoch ms; §4.9)."""

    def __init__(self, storage: Any) -> None:
        self._storage = storage

    async def set(self, at_ms: int) -> None:
        await self._storage.setAlarm(at_ms)


class RateLimit:
    """The host's `NewRoomLimiter` over a Workers rate-limiting binding (`ratelimits` in
    wrangler.jsonc): ``limit({key})`` answers ``{success}``. Its counts are per Cloudflare
    location and approximate, which is enough to stop one user creating rooms in bulk."""

    def __init__(self, binding: Any) -> None:
        self._binding = binding

    async def allow(self, key: str) -> bool:
        outcome = await self._binding.limit({"key": key})
        success = outcome["success"] if isinstance(outcome, Mapping) else outcome.success
        return bool(success)

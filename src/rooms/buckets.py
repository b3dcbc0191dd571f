"""Token buckets keyed by client, user or address, bounded in memory.

One instance holds many buckets (a guest issuer's per-address buckets, the local runtime's
new-room budget per user and per address). A full bucket is the same as one never seen, so full
ones are dropped first when there are too many keys; then the least recently used.
"""

from __future__ import annotations


class KeyedBuckets:
    """``burst`` tokens per key, one more every ``refill_s`` seconds."""

    def __init__(self, burst: int, refill_s: float, max_keys: int = 10_000) -> None:
        if burst < 1 or refill_s <= 0 or max_keys < 1:
            raise ValueError("burst and max_keys must be >= 1 and refill_s > 0")
        self.burst = burst
        self.refill_s = refill_s
        self.max_keys = max_keys
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, counted at, in s)

    def take(self, key: str, now_s: float) -> float:
        """Take one token from ``key``'s bucket: 0 if granted, else seconds until one is."""
        tokens, then = self._buckets.pop(key, (float(self.burst), now_s))
        tokens = min(float(self.burst), tokens + max(0.0, now_s - then) / self.refill_s)
        if tokens < 1:
            self._buckets[key] = (tokens, now_s)
            return (1 - tokens) * self.refill_s
        self._buckets[key] = (tokens - 1, now_s)  # re-inserted: the dict stays in LRU order
        if len(self._buckets) > self.max_keys:
            self._prune(now_s)
        return 0.0

    def __len__(self) -> int:
        return len(self._buckets)

    def _prune(self, now_s: float) -> None:
        for key, (tokens, then) in list(self._buckets.items()):
            if tokens + (now_s - then) / self.refill_s >= self.burst:
                del self._buckets[key]  # full again: the same as never seen
        while len(self._buckets) > self.max_keys:
            del self._buckets[next(iter(self._buckets))]  # the least recently seen

"""What one load-test run does: the scenario, its shape, its bounds and where it points.

A `Config` is plain data: it crosses into worker processes as a dict and is written into the
JSON result (without secrets or tokens).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

SCENARIOS = ("fanout", "connect-storm", "idle", "reconnect-resume")

# Hard bounds: a load test always ends by itself and never grows without limit.
MAX_CONNECTIONS = 100_000
MAX_DURATION_S = 3600.0
MAX_RATE_PER_ROOM = 100_000.0
MAX_PROCS = 64


class ConfigError(ValueError):
    """An argument is out of range or inconsistent; the message says which and why."""


@dataclass(frozen=True)
class Config:
    scenario: str = "fanout"
    url: str = "ws://127.0.0.1:8787"
    rooms: int = 1
    clients: int = 10  # per room
    senders: int = 1  # per room (fanout, reconnect-resume)
    rate: float = 10.0  # messages/s per room, open loop (ignored when window > 0)
    window: int = 0  # closed loop: publishes in flight per sender (0: open loop at `rate`)
    duration: float = 5.0  # seconds of sending (fanout, reconnect-resume) or holding (idle)
    size: int = 64  # message body characters
    # fanout: this share of sends are an edit of, or a reaction to, the sender's latest message
    # (docs/protocol.md, "Message lifecycle"): events take seqs like messages, order check included
    lifecycle_mix: float = 0.0
    concurrency: int = 100  # handshakes in flight per process
    connect_timeout: float = 10.0
    drain_timeout: float = 10.0
    procs: int = 1
    room_prefix: str = ""  # default: lt-<run id>-
    user_prefix: str = "lt"
    token_in: str = "query"  # or "subprotocol"
    insecure: bool = False
    ca_file: str | None = None
    drop_interval: float = 2.0  # reconnect-resume: mean seconds between drops of one client
    drop_mode: str = "abort"  # or "close"
    reconnect_delay: float = 0.05
    wake_probe: int = 0  # idle: rooms that get a publish after the hold (cold, then warm)
    ping_interval: float = 0.0  # idle: client pings every N seconds (0: none)
    seed: int = 1
    run_id: str = ""
    server_pid: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def total_clients(self) -> int:
        return self.rooms * self.clients

    @property
    def senders_per_room(self) -> int:
        if self.scenario in ("fanout", "reconnect-resume"):
            return min(self.senders, self.clients)
        return 0

    @property
    def prefix(self) -> str:
        return self.room_prefix or f"lt-{self.run_id}-"

    def room_name(self, index: int) -> str:
        return f"{self.prefix}{index}"

    def user_id(self, client: int) -> str:
        return f"{self.user_prefix}-{self.run_id}-{client}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        return cls(**data)

    def validate(self) -> Config:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ConfigError(message)

        need(self.scenario in SCENARIOS, f"unknown scenario {self.scenario!r}")
        need(
            self.url.startswith(("ws://", "wss://")),
            f"--url must start with ws:// or wss:// (got {self.url!r})",
        )
        need(self.rooms >= 1, "--rooms must be at least 1")
        need(self.clients >= 1, "--clients must be at least 1")
        need(
            self.total_clients <= MAX_CONNECTIONS,
            f"--rooms x --clients is {self.total_clients}; at most {MAX_CONNECTIONS} connections",
        )
        need(self.senders >= 0, "--senders must be 0 or more")
        if self.scenario in ("fanout", "reconnect-resume"):
            need(self.senders >= 1, "--senders must be at least 1 for this scenario")
            need(self.senders <= self.clients, "--senders cannot exceed --clients (per room)")
        need(self.window >= 0, "--window must be 0 (open loop) or more")
        need(
            self.window > 0 or 0 < self.rate <= MAX_RATE_PER_ROOM,
            f"--rate must be above 0 and at most {MAX_RATE_PER_ROOM:g} messages/s per room",
        )
        need(
            0 < self.duration <= MAX_DURATION_S,
            f"--duration must be above 0 and at most {MAX_DURATION_S:g} seconds",
        )
        need(1 <= self.size <= 1_000_000, "--size must be between 1 and 1000000 characters")
        need(self.concurrency >= 1, "--concurrency must be at least 1")
        need(0 < self.connect_timeout <= 300, "--connect-timeout must be in (0, 300] seconds")
        need(0 <= self.drain_timeout <= 300, "--drain-timeout must be in [0, 300] seconds")
        need(1 <= self.procs <= MAX_PROCS, f"--procs must be between 1 and {MAX_PROCS}")
        need(self.token_in in ("query", "subprotocol"), "--token-in is query or subprotocol")
        need(self.drop_interval > 0, "--drop-interval must be above 0")
        need(self.drop_mode in ("abort", "close"), "--drop-mode is abort or close")
        need(self.reconnect_delay >= 0, "--reconnect-delay must be 0 or more")
        need(0 <= self.wake_probe <= self.rooms, "--wake-probe must be between 0 and --rooms")
        need(self.ping_interval >= 0, "--ping-interval must be 0 or more")
        need(0 <= self.lifecycle_mix <= 1, "--lifecycle-mix must be between 0 and 1")
        return self

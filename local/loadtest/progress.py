"""Live progress on the terminal: a rich status line on a TTY, plain lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO


class Display:
    """Aggregates the workers' progress events and shows them (mode: rich, plain or none)."""

    def __init__(self, mode: str, scenario: str, total_clients: int, stream: TextIO | None = None):
        self.stream = stream or sys.stderr
        if mode == "auto":
            mode = "rich" if self.stream.isatty() else "plain"
        self.mode = mode
        self.scenario = scenario
        self.total = total_clients
        self.workers: dict[int, dict[str, Any]] = {}
        self.current = "starting"
        self.t0 = 0
        self.t_end = 0
        self._started = time.monotonic()
        self._last_line = 0.0
        self._prev: tuple[float, int] | None = None
        self._rate = 0.0
        self._live: Any = None

    # lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        if self.mode == "rich":
            from rich.console import Console
            from rich.live import Live

            console = Console(file=self.stream)
            self._live = Live(self._render(), console=console, refresh_per_second=4)
            self._live.start()

    def stop(self) -> None:
        if self._live is not None:
            self._live.update(self._render())
            self._live.stop()
            self._live = None
        elif self.mode == "plain":
            self._plain(force=True)

    def note(self, text: str) -> None:
        if self.mode == "none":
            return
        if self._live is not None:
            self._live.console.print(text)
        else:
            print(text, file=self.stream, flush=True)

    # events -----------------------------------------------------------------------------

    def phase(self, name: str, *, t0: int = 0, t_end: int = 0) -> None:
        self.current = name
        if t0:
            self.t0, self.t_end = t0, t_end
        self._refresh()

    def update(self, worker: int, progress: dict[str, Any]) -> None:
        self.workers[worker] = progress
        deliveries = self._sum("deliveries")
        now = time.monotonic()
        if self._prev is not None and now - self._prev[0] >= 0.9:
            self._rate = (deliveries - self._prev[1]) / (now - self._prev[0])
            self._prev = (now, deliveries)
        elif self._prev is None:
            self._prev = (now, deliveries)
        self._refresh()

    # rendering --------------------------------------------------------------------------

    def _sum(self, key: str) -> int:
        return sum(int(w.get(key) or 0) for w in self.workers.values())

    def _worst(self, key: str) -> float | None:
        values = [w[key] for w in self.workers.values() if w.get(key) is not None]
        return max(values) if values else None

    def status(self) -> str:
        parts = [f"{self.scenario}", self.current]
        if self.t0:
            elapsed = max(0.0, (time.monotonic_ns() - self.t0) / 1e9)
            length = (self.t_end - self.t0) / 1e9
            if length:
                parts.append(f"{min(elapsed, length):5.1f}/{length:g}s")
        else:
            parts.append(f"{time.monotonic() - self._started:5.1f}s")
        parts.append(f"open {self._sum('open')}/{self.total}")
        failed = self._sum("connects_failed")
        if failed:
            parts.append(f"connect failures {failed}")
        sent = self._sum("sent")
        if sent:
            parts.append(f"sent {sent} acked {self._sum('acked')}")
        deliveries = self._sum("deliveries")
        if deliveries:
            parts.append(f"delivered {deliveries} ({self._rate:,.0f}/s)")
        p50, p99 = self._worst("p50_us"), self._worst("p99_us")
        if p99 is not None and p50 is not None:
            parts.append(f"p50 {p50 / 1000:.1f}ms p99 {p99 / 1000:.1f}ms")
        errors = self._sum("errors")
        parts.append(f"errors {errors}")
        return "  ".join(parts)

    def _render(self) -> Any:
        from rich.text import Text

        return Text(self.status())

    def _refresh(self) -> None:
        if self._live is not None:
            self._live.update(self._render())
        elif self.mode == "plain":
            self._plain()

    def _plain(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last_line >= 1.0:
            self._last_line = now
            print(self.status(), file=self.stream, flush=True)

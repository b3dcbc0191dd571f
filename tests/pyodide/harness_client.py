"""The host side of the Pyodide harness: one Node process, JSON lines over its stdin/stdout.

`PyodideHarness` starts tests/pyodide/harness/server.mjs under the pinned Node 24 and boots
Pyodide in it once; `World` is one deployment inside it (its own objects, D1 and R2); `Client`
is a WebSocket a test opened through the front Worker. A failure inside Pyodide arrives as
`HarnessError`, whose text includes the Python traceback.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import queue
import subprocess
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parents[2]
STATE_FILE = ROOT / ".cache" / "pyodide" / "state.json"
ORIGIN = "https://rooms.example"
CALL_TIMEOUT_S = float(os.environ.get("ROOMS_PYODIDE_TIMEOUT_S", "120"))


class HarnessError(Exception):
    """An operation failed inside the harness (JS or Python); the message has the details."""


class HarnessUnavailableError(Exception):
    """The harness is not installed (run `make pyodide-setup`)."""


def load_state() -> dict[str, str]:
    if not STATE_FILE.exists():
        raise HarnessUnavailableError(
            f"{STATE_FILE.relative_to(ROOT)} is missing: run `make pyodide-setup`"
        )
    state: dict[str, str] = json.loads(STATE_FILE.read_text())
    for key in ("node", "harness", "python_modules"):
        if not Path(state[key]).exists():
            raise HarnessUnavailableError(f"{state[key]} is missing: run `make pyodide-setup`")
    return state


class PyodideHarness:
    """One Node process with Pyodide booted and the Worker imported."""

    def __init__(self, src: Path | None = None, *, snapshot: bool = True) -> None:
        state = load_state()
        self.src = (src or ROOT / "src").resolve()
        command = [
            state["node"],
            state["harness"],
            "--src", str(self.src),
            "--python-modules", state["python_modules"],
            "--cache", state["cache"],
            "--wrangler", str(ROOT / "wrangler.jsonc"),
            "--migrations", str(ROOT / "migrations"),
        ]
        if not snapshot:
            command.append("--no-snapshot")
        self._stderr: list[str] = []
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            bufsize=1,
        )
        self._replies: queue.Queue[str | None] = queue.Queue()
        self._threads = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        self._next_id = 1
        self.boot_info: dict[str, Any] = self.call("boot")

    def _read_stdout(self) -> None:
        assert self._process.stdout is not None
        with contextlib.suppress(ValueError, OSError):  # closed by close()
            for line in self._process.stdout:
                self._replies.put(line)
        self._replies.put(None)

    def _read_stderr(self) -> None:
        assert self._process.stderr is not None
        with contextlib.suppress(ValueError, OSError):
            for line in self._process.stderr:
                self._stderr.append(line.rstrip("\n"))
                del self._stderr[:-200]

    def stderr_tail(self, lines: int = 40) -> str:
        return "\n".join(self._stderr[-lines:])

    def call(self, op: str, **args: Any) -> Any:
        """Run one operation; returns its result or raises `HarnessError`."""
        if self._process.poll() is not None:
            raise HarnessError(f"the harness exited ({self._process.returncode}):\n"
                               f"{self.stderr_tail()}")
        request_id = self._next_id
        self._next_id += 1
        assert self._process.stdin is not None
        self._process.stdin.write(json.dumps({"id": request_id, "op": op, "args": args}) + "\n")
        self._process.stdin.flush()
        deadline = time.monotonic() + CALL_TIMEOUT_S
        while True:
            try:
                line = self._replies.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise HarnessError(f"{op} got no answer in {CALL_TIMEOUT_S} s:\n"
                                   f"{self.stderr_tail()}") from None
            if line is None:
                raise HarnessError(f"the harness exited during {op}:\n{self.stderr_tail()}")
            reply = json.loads(line)
            if reply.get("id") == request_id:
                break
        if reply["ok"]:
            return reply["result"]
        error = reply["error"]
        raise HarnessError(f"{op} failed: {error['name']}: {error['message']}\n"
                           f"--- JS stack ---\n{error['stack']}")

    def world(self, **config: Any) -> World:
        return World(self, self.call("world.new", **config)["world"])

    def probe(self, code: str) -> Any:
        """Run Python ``code`` (defining ``main(h)``) inside Pyodide; returns main's result."""
        return self.call("py.probe", code=code)

    def take_diagnostics(self, world: World | None = None) -> dict[str, Any]:
        result: dict[str, Any] = self.call(
            "diag.take", world=world.id if world is not None else None
        )
        return result

    def close(self) -> None:
        if self._process.poll() is None:
            with contextlib.suppress(HarnessError):
                self.call("shutdown")
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        for thread in self._threads:
            thread.join(timeout=5)
        for stream in (self._process.stdin, self._process.stdout, self._process.stderr):
            if stream is not None:
                stream.close()


@dataclass
class HttpResult:
    status: int
    headers: dict[str, str]
    body: str
    client: Client | None

    def json(self) -> Any:
        return json.loads(self.body)


class World:
    """One deployment inside the harness: env from wrangler.jsonc plus test vars."""

    def __init__(self, harness: PyodideHarness, world_id: int) -> None:
        self.harness = harness
        self.id = world_id

    def call(self, op: str, **args: Any) -> Any:
        return self.harness.call(op, world=self.id, **args)

    def fetch(
        self,
        path: str,
        *,
        method: str = "GET",
        headers: Mapping[str, str] | Iterable[tuple[str, str]] = (),
        body: str | None = None,
    ) -> HttpResult:
        pairs = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
        result = self.call("fetch", url=ORIGIN + path, method=method, headers=pairs, body=body)
        client = Client(self, result["client"]) if result["client"] is not None else None
        return HttpResult(result["status"], dict(result["headers"]), result["body"], client)

    def upgrade(
        self,
        room: str,
        token: str | None,
        *,
        since: int | None = 0,
        headers: Mapping[str, str] | None = None,
        protocols: list[str] | None = None,
    ) -> HttpResult:
        query: dict[str, Any] = {}
        if token is not None:
            query["token"] = token
        if since is not None:
            query["since"] = since
        all_headers = {"upgrade": "websocket", "connection": "Upgrade", **(headers or {})}
        if protocols:
            all_headers["sec-websocket-protocol"] = ", ".join(protocols)
        path = f"/rooms/{room}/ws" + (f"?{urlencode(query)}" if query else "")
        return self.fetch(path, headers=all_headers)

    def connect(self, room: str, token: str | None, **kwargs: Any) -> Client:
        result = self.upgrade(room, token, **kwargs)
        if result.status != 101 or result.client is None:
            raise AssertionError(f"upgrade to {room} answered {result.status}: {result.body}")
        return result.client

    def set_hibernate_every_event(self, on: bool) -> None:
        self.call("world.set", hibernateEveryEvent=on)

    def evict(self, room: str | None = None) -> int:
        evicted: int = self.call("do.evict", room=room)["evicted"]
        return evicted

    def info(self, room: str) -> dict[str, Any]:
        info: dict[str, Any] = self.call("do.info", room=room)
        return info

    def sql(self, room: str, query: str, *params: Any) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self.call("do.sql", room=room, sql=query, params=list(params))
        return rows

    def alarm(self, room: str) -> dict[str, Any]:
        result: dict[str, Any] = self.call("do.alarm", room=room)
        return result

    def fail_sql(self, room: str, match: str, count: int = 1,
                 message: str = "database or disk is full: SQLITE_FULL") -> None:
        """The room's next ``count`` SQL statements containing ``match`` fail with ``message``."""
        self.call("do.failSql", room=room, match=match, count=count, message=message)

    def fail_d1_batches(self, count: int = 1) -> None:
        """D1's next ``count`` batches fail (D1_ERROR), writing nothing."""
        self.call("d1.failBatches", count=count)

    def fail_r2(self, *, puts: int = 0, gets: int = 0) -> None:
        """R2's next ``puts`` puts and ``gets`` gets fail (an internal error, as R2 reports it)."""
        self.call("r2.fail", puts=puts, gets=gets)

    def r2_puts(self) -> int:
        """How many R2 puts succeeded."""
        puts: int = self.call("r2.puts")
        return puts

    def d1(self, query: str, *params: Any) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self.call("d1.query", sql=query, params=list(params))
        return rows

    def r2(self, prefix: str = "") -> list[dict[str, Any]]:
        objects: list[dict[str, Any]] = self.call("r2.list", prefix=prefix)
        for item in objects:
            item["data"] = base64.b64decode(item.pop("base64"))
        return objects

    def analytics_points(self) -> list[dict[str, Any]] | None:
        """The Analytics Engine data points written since the last call (None: no binding)."""
        points: list[dict[str, Any]] | None = self.call("analytics.points")
        return points

    def stats(self, *, reset: bool = False) -> dict[str, Any]:
        stats: dict[str, Any] = self.call("stats", reset=reset)
        return stats


@dataclass
class Client:
    """A WebSocket opened through the front Worker; frames accumulate in ``received``."""

    world: World
    id: int
    received: list[dict[str, Any]] = field(default_factory=list)
    closes: list[tuple[int, str]] = field(default_factory=list)
    binary: list[bytes] = field(default_factory=list)
    protocol: str | None = None

    def _pull(self) -> dict[str, Any]:
        result: dict[str, Any] = self.world.harness.call("ws.frames", client=self.id)
        self.protocol = result["protocol"]
        for frame in result["frames"]:
            if frame["type"] == "text":
                try:
                    self.received.append(json.loads(frame["data"]))
                except ValueError:  # the room only sends JSON; keep what came for the assertion
                    self.received.append({"type": "not-json", "text": frame["data"]})
            elif frame["type"] == "binary":
                self.binary.append(base64.b64decode(frame["base64"]))
            else:
                self.closes.append((frame["code"], frame["reason"]))
        return result

    def state(self) -> dict[str, Any]:
        return self._pull()

    def send(self, *frames: str | bytes | Mapping[str, Any]) -> None:
        wire: list[dict[str, str]] = []
        for frame in frames:
            if isinstance(frame, bytes):
                wire.append({"base64": base64.b64encode(frame).decode()})
            elif isinstance(frame, str):
                wire.append({"text": frame})
            else:
                wire.append({"text": json.dumps(frame, separators=(",", ":"))})
        self.world.harness.call("ws.send", client=self.id, frames=wire)

    def publish(self, message_id: str, body: str) -> None:
        self.send({"type": "publish", "id": message_id, "body": body})

    def frames(self, type_: str | None = None) -> list[dict[str, Any]]:
        """Every frame received so far (of ``type_``)."""
        self._pull()
        return [f for f in self.received if type_ is None or f["type"] == type_]

    def take(self, type_: str | None = None) -> list[dict[str, Any]]:
        """The frames received so far (of ``type_``), removed from ``received``."""
        got = self.frames(type_)
        taken = {id(f) for f in got}
        self.received = [f for f in self.received if id(f) not in taken]
        return got

    def seqs(self) -> list[int]:
        return [m["seq"] for m in self.frames("message")]

    def close(self, code: int | None = 1000, reason: str = "") -> None:
        """Send a close frame (``code=None``: one without a status, 1005 to the room)."""
        self.world.harness.call("ws.close", client=self.id, code=code, reason=reason)

    def drop(self) -> None:
        self.world.harness.call("ws.drop", client=self.id)

    def fail(self) -> None:
        """The connection fails: the room gets `webSocketError`."""
        self.world.harness.call("ws.fail", client=self.id)

    def fail_attachment_writes(self, count: int = 1, message: str = "boom") -> None:
        """The room's next ``count`` `serializeAttachment` calls on this socket throw."""
        self.world.harness.call("ws.failAttachmentWrites", client=self.id, count=count,
                                message=message)

    def hold_closes(self, hold: bool = True) -> None:
        """Leave the room's close frames unanswered (a slow client) until `answer_close`."""
        self.world.harness.call("ws.holdCloses", client=self.id, hold=hold)

    def answer_close(self) -> None:
        self.world.harness.call("ws.answerClose", client=self.id)

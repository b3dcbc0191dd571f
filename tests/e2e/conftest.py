"""One end-to-end suite, run against each runtime a user can meet.

Every test here takes the `service` fixture and talks to it only through real sockets: HTTP and
WebSocket on 127.0.0.1. The runtimes:

- ``local``: the CPython runtime (local/roomsd), in this process, rooms awake;
- ``local-hibernating``: the same, every room put to sleep after every event;
- ``workerd``: the Worker and its Durable Objects in the real workerd through `wrangler dev`
  (local/workerd), from the project's own offline Pyodide bundle.

Settings a test needs (limits, archive policy, allowed origins) are a `Profile`; each runtime is
started with exactly those settings. One `wrangler dev` per profile serves the whole session (it
takes ~8 s to start, tests/workerd_service.py), so tests use fresh room names from
`service.room()`, and the suite uses only the few profiles below: a test picks one with
``@use_profile(...)`` or a module-level ``profile`` fixture. A local service starts afresh for
every test.

Where a runtime legitimately differs (a close code the platform sends itself, say), the test
asserts per runtime and says why. Where workerd falls short, its case is marked with
``@runtimes(workerd=<reason>)``: a strict xfail, so that a fix shows up as a failure to remove.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import aiohttp
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from rooms.archive import ArchivePolicy
from rooms.auth import mint_token
from rooms.limits import Limits
from roomsd.rooms import HibernationPolicy
from tests.conftest import timeout
from tests.frames import (  # the frame helpers, also for the tests that import them from here
    close_frame,
    closed_by_server,
    publish,
    recv_json,
    recv_until,
)
from tests.local.conftest import RunningServer, make_settings, start_server
from tests.workerd_service import (
    ADMIN_TOKEN,
    SECRET,
    Profile,
    WorkerdPool,
    workerd_pool,
)
from workerd.wrangler import WranglerDev

# The session fixture, registered for this directory, and the frame helpers tests import here.
__all__ = [
    "close_frame",
    "closed_by_server",
    "publish",
    "recv_json",
    "recv_until",
    "workerd_pool",
]

RUNTIMES = ["local", "local-hibernating", "workerd"]
HOUR_MS = 3_600_000
ORIGIN = "https://chat.example"

# ------------------------------------------------------------------ the suite's profiles
# Few on purpose: each one costs a `wrangler dev` for the session. Settings that no test of
# another profile depends on are grouped, and each profile says who relies on what.

DEFAULT = Profile()
"""Most tests: default limits but a high rate limit, the default archive policy, guests on."""

STRICT = Profile(
    limits=Limits(max_frame_bytes=2048, max_body_chars=1000, messages_per_second=1000, burst=1000),
    archive=ArchivePolicy(interval_ms=HOUR_MS, max_segment=5, retain_messages=2),
    name="strict",
)
"""Small frames (oversized-frame tests); archive only when an operator asks (test_admin.py).

The admin room-list test expects D1's room list to hold only the rooms it archives itself: no
other test of this profile may archive (the alarm is an hour away, the threshold 500 messages).
"""

GATED = Profile(
    limits=Limits(max_members=1, messages_per_second=0.2, burst=3),
    allowed_origins=(ORIGIN,),
    admin_token=None,
    name="gated",
)
"""An Origin allow-list, one user per room, a slow rate limit, and no admin token.

Every client of this profile sends ``Origin: ORIGIN`` unless it tests the refusal.
"""

ARCHIVING = Profile(
    archive=ArchivePolicy(interval_ms=50, max_segment=4, retain_messages=3),
    guest_tokens=False,
    name="archiving",
)
"""The alarm archives 50 ms after a write, 4 messages a segment, keeping 3 rows; no guests."""


ABUSE = Profile(
    limits=Limits(
        max_sockets_per_address=3,
        messages_per_second=0.2,
        burst=3,
        signals_per_second=0.01,
        signal_burst=20,
    ),
    new_rooms_per_minute=3,
    name="abuse",
)
"""Tight abuse bounds (tests/e2e/test_abuse.py): 3 sockets per address in a room, 3 frames in a
burst per user, 20 signals and then almost no refill (so that counts never depend on how fast a
loaded machine delivers them), 3 new rooms a minute per user and per address. Its tests send
from loopback addresses of their own (`fresh_address`), so that they never share an address's
budget."""


def fresh_address() -> str:
    """A loopback address (127.x.y.z) no other test sends from, for per-address limits."""
    return f"127.{random.randrange(1, 255)}.{random.randrange(256)}.{random.randrange(1, 255)}"


def use_profile(profile: Profile) -> pytest.MarkDecorator:
    """Run the test's ``service`` with ``profile`` (parametrizing the `profile` fixture)."""
    return pytest.mark.parametrize("profile", [profile], ids=[profile.name])


def runtimes(**xfail: str) -> pytest.MarkDecorator:
    """The runtimes, with a strict xfail (and its reason) for each runtime named.

    ``@runtimes(workerd="...")``: that runtime's case is a known bug or platform difference.
    """
    reasons = {name.replace("_", "-"): reason for name, reason in xfail.items()}
    assert set(reasons) <= set(RUNTIMES), f"no such runtime: {set(reasons) - set(RUNTIMES)}"
    params = [
        pytest.param(
            runtime,
            id=runtime,
            marks=[pytest.mark.xfail(strict=True, reason=reasons[runtime])]
            if runtime in reasons
            else [],
        )
        for runtime in RUNTIMES
    ]
    return pytest.mark.parametrize("service", params, indirect=True)


@dataclass
class HttpReply:
    status: int
    headers: dict[str, str]  # names in lower case
    text: str

    def json(self) -> Any:
        return json.loads(self.text)


class Service(Protocol):
    """What a test may do with a running service."""

    runtime: str

    @property
    def base(self) -> str: ...  # host:port

    def room(self, prefix: str) -> str: ...

    async def restart(self) -> None: ...


class ServiceBase:
    runtime: str
    port: int
    profile: Profile

    @property
    def base(self) -> str:
        return f"127.0.0.1:{self.port}"

    def room(self, prefix: str) -> str:
        """A room name no other test in this session uses (workerd's state lives all session)."""
        return f"{prefix}-{uuid.uuid4().hex[:10]}"

    def token(self, user: str, **claims: Any) -> str:
        return mint_token(SECRET, user, **claims)

    def url(self, room: str, **query: Any) -> str:
        qs = "&".join(f"{k}={v}" for k, v in query.items())
        return f"ws://{self.base}/rooms/{room}/ws" + (f"?{qs}" if qs else "")

    async def connect(
        self, room: str, user: str, since: int | None = 0, **kwargs: Any
    ) -> websockets.ClientConnection:
        """A joined socket (or one that must send `hello`, with ``since=None``).

        On a profile with an Origin allow-list the socket sends an allowed Origin unless the
        caller passes one.
        """
        query: dict[str, Any] = {"token": self.token(user)}
        if since is not None:
            query["since"] = since
        kwargs.setdefault("max_queue", None)
        if self.profile.allowed_origins:
            kwargs.setdefault("origin", self.profile.allowed_origins[0])
        return await websockets.connect(
            self.url(room, **query), open_timeout=timeout(15), **kwargs
        )

    async def http(
        self,
        method: str,
        path: str,
        headers: dict[str, str] | None = None,
        body: bytes | str | None = None,
        source: str | None = None,
    ) -> HttpReply:
        """One request; ``source`` is the loopback address to send it from (127.x.y.z)."""
        connector = aiohttp.TCPConnector(local_addr=(source, 0) if source else None)
        async with aiohttp.ClientSession(connector=connector) as session, session.request(
            method, f"http://{self.base}{path}", headers=headers, data=body,
            timeout=aiohttp.ClientTimeout(total=timeout(30)),
        ) as reply:
            headers = {name.lower(): value for name, value in reply.headers.items()}
            return HttpReply(reply.status, headers, await reply.text())

    async def admin(self, method: str, path: str) -> HttpReply:
        return await self.http(method, path, {"Authorization": f"Bearer {ADMIN_TOKEN}"})


class LocalService(ServiceBase):
    def __init__(self, runtime: str, profile: Profile, data_dir: Path) -> None:
        self.runtime = runtime
        self.profile = profile
        self.settings = make_settings(
            data_dir,
            admin_token=profile.admin_token,
            limits=profile.limits,
            archive=profile.archive,
            allowed_origins=frozenset(profile.allowed_origins),
            guest_tokens=profile.guest_tokens,
            new_rooms_per_minute=profile.new_rooms_per_minute,
            hibernation=HibernationPolicy(
                after_idle_s=3600, every_event=runtime == "local-hibernating"
            ),
        )
        self.server: RunningServer | None = None
        self.port = 0
        self.log_lines: list[str] = []  # the service's log lines (logger "rooms", INFO)
        self._log_handler = _Collect(self.log_lines)
        self._logger = logging.getLogger("rooms")
        self._log_level = self._logger.level

    async def start(self) -> None:
        self._logger.addHandler(self._log_handler)
        self._logger.setLevel(logging.INFO)
        self.server = await start_server(self.settings, self.port)
        self.port = self.server.port

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop()
            self.server = None
        self._logger.removeHandler(self._log_handler)
        self._logger.setLevel(self._log_level)

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    def log_text(self) -> str:
        """What the service logged so far."""
        return "\n".join(self.log_lines)


class _Collect(logging.Handler):
    def __init__(self, lines: list[str]) -> None:
        super().__init__(logging.INFO)
        self.lines = lines

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


class WorkerdService(ServiceBase):
    runtime = "workerd"

    def __init__(self, dev: WranglerDev, profile: Profile) -> None:
        self.dev = dev
        self.profile = profile
        self.port = dev.port

    def log_text(self) -> str:
        """What `wrangler dev` printed so far: the Worker's console lines among its own."""
        return self.dev.log_path.read_text(errors="replace")

    async def restart(self) -> None:
        """Stop `wrangler dev` (workerd with it) and start it again on the same state and port."""
        await asyncio.to_thread(self.dev.stop)
        await asyncio.to_thread(self.dev.start)


AnyService = LocalService | WorkerdService


@pytest.fixture
def profile() -> Profile:
    """Tests that need other settings use ``@use_profile`` or override this fixture."""
    return DEFAULT


@pytest.fixture(params=RUNTIMES)
async def service(
    request: pytest.FixtureRequest, profile: Profile, tmp_path: Path
) -> AsyncIterator[AnyService]:
    if request.param == "workerd":
        pool: WorkerdPool = request.getfixturevalue("workerd_pool")
        dev = await asyncio.to_thread(pool.get, profile)
        yield WorkerdService(dev, profile)
        return
    local = LocalService(request.param, profile, tmp_path / "data")
    await local.start()
    yield local
    await local.stop()




async def replay(service: ServiceBase, room: str, since: int = 0) -> tuple[dict[str, Any],
                                                                           list[dict[str, Any]]]:
    """A fresh socket's welcome and every message replayed after ``since`` (up to the head)."""
    async with await service.connect(room, "auditor", since=since) as ws:
        welcome = await recv_until(ws, "welcome")
        messages: list[dict[str, Any]] = []
        missing = sum(r[1] - r[0] + 1 for r in welcome["resume"]["missing"])
        while len(messages) < welcome["head"] - since - missing:
            frame = await recv_json(ws)
            if frame["type"] == "message":
                messages.append(frame)
        return welcome, messages


async def expect_http_error(url: str, status: int, code: str, **kwargs: Any) -> None:
    """An upgrade refused before it happens, with the JSON error shape and no traceback."""
    try:
        accepted = await websockets.connect(url, open_timeout=timeout(15), **kwargs)
    except InvalidStatus as refused:
        response = refused.response
    else:
        await accepted.close()  # the test fails either way; it need not leak the socket too
        pytest.fail(f"the upgrade was accepted; expected {status} {code}")
    assert response.status_code == status
    assert response.headers["Content-Type"].startswith("application/json")
    body = json.loads(response.body)
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str)
    assert "Traceback" not in response.body.decode()


T = TypeVar("T")


async def eventually(
    probe: Callable[[], Awaitable[T]], done: Callable[[T], bool], seconds: float = 20
) -> T:
    """Call ``probe`` until ``done`` holds for its answer; the last answer after ``seconds``."""
    deadline = time.monotonic() + timeout(seconds)
    while True:
        value = await probe()
        if done(value) or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.05)

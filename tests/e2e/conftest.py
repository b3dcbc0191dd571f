"""One end-to-end suite, run against each runtime a user can meet.

Every test here takes the `service` fixture and talks to it only through real sockets: HTTP and
WebSocket on 127.0.0.1. The runtimes:

- ``local``: the CPython runtime (local/roomsd), in this process, rooms awake;
- ``local-hibernating``: the same, every room put to sleep after every event;
- ``workerd``: the Worker and its Durable Objects in the real workerd through `wrangler dev`
  (local/workerd), from the project's own offline Pyodide bundle.

Settings a test needs (limits, archive policy, allowed origins) are a `Profile`; each runtime is
started with exactly those settings. One `wrangler dev` per profile serves the whole session (it
takes ~8 s to start), so tests use fresh room names from `service.room()`.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import pytest
import websockets

from rooms.archive import ArchivePolicy
from rooms.auth import mint_token
from rooms.limits import Limits
from roomsd.rooms import HibernationPolicy
from tests.conftest import timeout
from tests.local.conftest import RunningServer, make_settings, start_server
from workerd.wrangler import (
    Toolchain,
    WorkerdNotInstalledError,
    WranglerDev,
    apply_migrations,
    dev_args,
    free_port,
)

SECRET = "test-secret-that-is-long-enough-for-hs256"
ADMIN_TOKEN = "admin-token-for-tests-0123456789abcdef"
RUNTIMES = ["local", "local-hibernating", "workerd"]
REQUIRED = os.environ.get("ROOMS_WORKERD_REQUIRED") == "1"


@dataclass(frozen=True)
class Profile:
    """The settings a service is started with, the same on every runtime."""

    limits: Limits = field(default_factory=lambda: Limits(messages_per_second=1000, burst=1000))
    archive: ArchivePolicy = field(default_factory=ArchivePolicy)
    allowed_origins: tuple[str, ...] = ()
    guest_tokens: bool = True

    def variables(self) -> dict[str, str]:
        """The Worker's vars/secrets for this profile (what `.dev.vars` would hold)."""
        return {
            "JWT_SECRET": SECRET,
            "ADMIN_TOKEN": ADMIN_TOKEN,
            "GUEST_TOKENS": "1" if self.guest_tokens else "0",
            "ALLOWED_ORIGINS": ",".join(self.allowed_origins),
            "ROOM_LIMITS": self.limits.model_dump_json(),
            "ARCHIVE_POLICY": self.archive.model_dump_json(),
        }


@dataclass
class HttpReply:
    status: int
    headers: dict[str, str]
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
        query: dict[str, Any] = {"token": self.token(user)}
        if since is not None:
            query["since"] = since
        kwargs.setdefault("max_queue", None)
        return await websockets.connect(
            self.url(room, **query), open_timeout=timeout(15), **kwargs
        )

    async def http(
        self,
        method: str,
        path: str,
        headers: dict[str, str] | None = None,
        body: bytes | str | None = None,
    ) -> HttpReply:
        async with aiohttp.ClientSession() as session, session.request(
            method, f"http://{self.base}{path}", headers=headers, data=body,
            timeout=aiohttp.ClientTimeout(total=timeout(30)),
        ) as reply:
            return HttpReply(reply.status, dict(reply.headers), await reply.text())

    async def admin(self, method: str, path: str) -> HttpReply:
        return await self.http(method, path, {"Authorization": f"Bearer {ADMIN_TOKEN}"})


class LocalService(ServiceBase):
    def __init__(self, runtime: str, profile: Profile, data_dir: Path) -> None:
        self.runtime = runtime
        self.settings = make_settings(
            data_dir,
            admin_token=ADMIN_TOKEN,
            limits=profile.limits,
            archive=profile.archive,
            allowed_origins=frozenset(profile.allowed_origins),
            guest_tokens=profile.guest_tokens,
            hibernation=HibernationPolicy(
                after_idle_s=3600, every_event=runtime == "local-hibernating"
            ),
        )
        self.server: RunningServer | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await start_server(self.settings, self.port)
        self.port = self.server.port

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop()
            self.server = None

    async def restart(self) -> None:
        await self.stop()
        await self.start()


class WorkerdService(ServiceBase):
    runtime = "workerd"

    def __init__(self, dev: WranglerDev) -> None:
        self.dev = dev
        self.port = dev.port

    async def restart(self) -> None:
        """Stop `wrangler dev` (workerd with it) and start it again on the same state and port."""
        await asyncio.to_thread(self.dev.stop)
        await asyncio.to_thread(self.dev.start)


class WorkerdPool:
    """One `wrangler dev` per profile, started on first use and stopped at the session's end."""

    def __init__(self, tools: Toolchain, root: Path) -> None:
        self.tools = tools
        self.root = root
        self.running: dict[Profile, WranglerDev] = {}
        self._template: Path | None = None

    def _migrated_state(self, target: Path) -> None:
        # Applying migrations/ takes a wrangler run (~4 s); do it once and copy the result.
        if self._template is None:
            self._template = self.root / "template-state"
            apply_migrations(self.tools, self._template)
        shutil.copytree(self._template, target)

    def get(self, profile: Profile) -> WranglerDev:
        if profile not in self.running:
            index = len(self.running)
            state = self.root / f"state-{index}"
            self._migrated_state(state)
            env_file = self.root / f"vars-{index}.env"
            # Single quotes: dotenv takes the JSON values literally.
            env_file.write_text(
                "".join(f"{k}='{v}'\n" for k, v in profile.variables().items())
            )
            port = free_port()
            dev = WranglerDev(
                self.tools, dev_args(port, state, env_file=env_file), port,
                self.root / f"wrangler-{index}.log",
            )
            dev.start()
            self.running[profile] = dev
        return self.running[profile]

    def stop_all(self) -> None:
        for dev in self.running.values():
            dev.stop()


@pytest.fixture(scope="session")
def workerd_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerdPool]:
    try:
        tools = Toolchain.installed()
    except WorkerdNotInstalledError as exc:
        if REQUIRED:
            raise
        pytest.skip(f"workerd tier not installed: {exc}")
    pool = WorkerdPool(tools, tmp_path_factory.mktemp("workerd"))
    yield pool
    pool.stop_all()


@pytest.fixture
def profile() -> Profile:
    """Tests that need other settings override this fixture or parametrize ``profile``."""
    return Profile()


@pytest.fixture(params=RUNTIMES)
async def service(
    request: pytest.FixtureRequest, profile: Profile, tmp_path: Path
) -> AsyncIterator[LocalService | WorkerdService]:
    if request.param == "workerd":
        pool: WorkerdPool = request.getfixturevalue("workerd_pool")
        dev = await asyncio.to_thread(pool.get, profile)
        yield WorkerdService(dev)
        return
    local = LocalService(request.param, profile, tmp_path / "data")
    await local.start()
    yield local
    await local.stop()


# ------------------------------------------------------------------ frame helpers


async def recv_json(ws: websockets.ClientConnection, seconds: float = 10) -> dict[str, Any]:
    raw = await asyncio.wait_for(ws.recv(), timeout(seconds))
    frame: dict[str, Any] = json.loads(raw)
    return frame


async def recv_until(ws: websockets.ClientConnection, type_: str) -> dict[str, Any]:
    """Skip frames (presence, ...) until one of ``type_`` arrives."""
    while True:
        frame = await recv_json(ws)
        if frame["type"] == type_:
            return frame


async def closed_by_server(ws: websockets.ClientConnection) -> websockets.ConnectionClosed:
    """Read (and drop) frames until the server closes; return how it closed."""
    while True:
        try:
            await asyncio.wait_for(ws.recv(), timeout(15))
        except websockets.ConnectionClosed as closed:
            return closed


async def publish(ws: websockets.ClientConnection, id_: str, body: str) -> dict[str, Any]:
    """Publish one message and return its ack."""
    await ws.send(json.dumps({"type": "publish", "id": id_, "body": body}))
    return await recv_until(ws, "ack")

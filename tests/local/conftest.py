"""A real local server on 127.0.0.1:<ephemeral> in the test's event loop, and clients for it.

tests/e2e starts the local runtime through `make_settings` and `start_server` too, beside workerd.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import websockets
from aiohttp import web

from rooms.auth import mint_token
from rooms.limits import Limits
from roomsd.config import PROJECT_ROOT, Settings
from roomsd.rooms import HibernationPolicy, RoomRegistry
from roomsd.server import REGISTRY, make_app, runner_options
from tests.conftest import timeout
from tests.frames import closed_by_server, recv_json, recv_until

SECRET = "test-secret-that-is-long-enough-for-hs256"
# The frame helpers, for the tests that import them from here.
__all__ = ["closed_by_server", "recv_json", "recv_until"]


@dataclass
class RunningServer:
    settings: Settings
    runner: web.AppRunner
    port: int

    @property
    def base(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def registry(self) -> RoomRegistry:
        return self.runner.app[REGISTRY]

    def url(self, room: str, **query: Any) -> str:
        qs = "&".join(f"{k}={v}" for k, v in query.items())
        return f"ws://{self.base}/rooms/{room}/ws" + (f"?{qs}" if qs else "")

    async def connect(self, room: str, user: str, since: int | None = 0,
                      **kwargs: Any) -> websockets.ClientConnection:
        query: dict[str, Any] = {"token": mint_token(SECRET, user)}
        if since is not None:
            query["since"] = since
        # Unbounded client queue by default: a test that stops reading early must not stall
        # the close handshake. The slow-consumer test passes its own max_queue.
        kwargs.setdefault("max_queue", None)
        return await websockets.connect(self.url(room, **query), open_timeout=timeout(5),
                                        **kwargs)

    async def stop(self) -> None:
        await self.runner.cleanup()


async def start_server(settings: Settings, port: int = 0) -> RunningServer:
    runner = web.AppRunner(make_app(settings), **runner_options(settings))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    bound = runner.addresses[0][1]
    return RunningServer(settings, runner, bound)


def make_settings(data_dir: Path, **overrides: Any) -> Settings:
    base = Settings(
        data_dir=data_dir,
        public_dir=PROJECT_ROOT / "public",
        migrations_dir=PROJECT_ROOT / "migrations",
        jwt_secret=SECRET,
        limits=Limits(messages_per_second=1000, burst=1000),
        hibernation=HibernationPolicy(after_idle_s=3600),
        new_rooms_per_minute=100_000,  # tests open many rooms; the limit has tests/e2e's own
    )
    return replace(base, **overrides)


ServerFactory = Callable[..., Awaitable[RunningServer]]


@pytest.fixture
async def server_factory(tmp_path: Path) -> AsyncIterator[ServerFactory]:
    started: list[RunningServer] = []

    async def factory(**overrides: Any) -> RunningServer:
        settings = make_settings(tmp_path / "data", **overrides)
        server = await start_server(settings)
        started.append(server)
        return server

    yield factory
    for server in started:
        await server.stop()

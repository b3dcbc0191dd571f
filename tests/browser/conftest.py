"""The browser tier: Debian's chromium, driven by Playwright, against the local runtime.

One headless browser per session (a fresh profile, loopback only); every test gets its own
server on an ephemeral port and its own browser contexts (separate storage: separate users).
Tests that take `chat_server` instead run against the real workerd too (`wrangler dev`, shared
with tests/e2e through tests/workerd_service.py, its state living all session).
The browser comes from scripts/setup-browser.sh (`make browser`), never from `playwright install`.
"""

from __future__ import annotations

import asyncio
import os
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from playwright.async_api import Browser, BrowserContext, Page, async_playwright, expect

from roomsd.config import Settings
from tests.conftest import timeout
from tests.local.conftest import RunningServer, make_settings, start_server
from tests.workerd_service import Profile, WorkerdPool, workerd_pool

__all__ = ["workerd_pool"]  # the session fixture, registered for this directory

CHROMIUM = Path(os.environ.get("ROOMS_CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
saved_artifacts: list[Path] = []

expect.set_options(timeout=timeout(10) * 1000)


# Every browser test module starts with `pytestmark = BROWSER_TEST`: the tests run in the
# session's event loop, where the browser lives.
BROWSER_TEST = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.integration]


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for path in saved_artifacts:
        terminalreporter.write_line(f"browser artifact: {path}")


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Debian's chromium; CI (CI=true) fails without it, elsewhere the tier is skipped."""
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: `make browser` (scripts/setup-browser.sh)")
        pytest.skip(f"{CHROMIUM} is missing: run `make browser` (scripts/setup-browser.sh)")
    return CHROMIUM


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def browser(chromium: Path) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        # launch() gives the browser a fresh temporary profile of its own; contexts are
        # separate on top of it (storage, cookies), as two people on two machines would be.
        browser = await playwright.chromium.launch(
            executable_path=str(chromium), headless=True, args=CHROMIUM_ARGS
        )
        yield browser
        await browser.close()


@dataclass
class Person:
    """One browser context with one page: a separate person with separate storage."""

    context: BrowserContext
    page: Page
    errors: list[str] = field(default_factory=list)  # uncaught exceptions in the page
    sockets: list[str] = field(default_factory=list)  # the URL of every WebSocket it opened

    def since_values(self) -> list[int | None]:
        """The ``since`` of each WebSocket opened so far (None: joined with a hello)."""
        values: list[int | None] = []
        for url in self.sockets:
            match = re.search(r"[?&]since=(\d+)", url)
            values.append(int(match.group(1)) if match else None)
        return values

    async def join(self, base: str, room: str, name: str) -> None:
        await self.page.goto(f"http://{base}/#room={room}")
        await self.page.fill("#join-name", name)
        await self.page.press("#join-name", "Enter")
        await self.online()

    async def online(self) -> None:
        await expect(self.page.locator("#status")).to_have_attribute("data-state", "online")

    async def say(self, body: str) -> None:
        await self.page.fill("#body", body)
        await self.page.press("#body", "Enter")

    async def log(self) -> list[tuple[int, str]]:
        """The confirmed messages as shown, top to bottom: (seq, body text)."""
        rows: list[list[Any]] = await self.page.eval_on_selector_all(
            "#log li.msg",
            "els => els.map(e => [Number(e.dataset.seq), e.querySelector('.body').textContent])",
        )
        return [(int(seq), str(body)) for seq, body in rows]

    async def wait_for_count(self, count: int) -> list[tuple[int, str]]:
        await expect(self.page.locator("#log li.msg")).to_have_count(count)
        return await self.log()

    async def outbox_empty(self) -> None:
        await expect(self.page.locator("#outbox li")).to_have_count(0)


PersonFactory = Callable[..., Awaitable[Person]]


@pytest_asyncio.fixture(loop_scope="session")
async def people(browser: Browser) -> AsyncIterator[PersonFactory]:
    made: list[Person] = []

    async def factory(**context_options: Any) -> Person:
        context = await browser.new_context(**context_options)
        page = await context.new_page()
        person = Person(context, page)
        page.on("pageerror", lambda exc: person.errors.append(str(exc)))
        page.on("websocket", lambda ws: person.sockets.append(ws.url))
        made.append(person)
        return person

    yield factory
    for person in made:
        await person.context.close()
    assert [error for person in made for error in person.errors] == []  # no uncaught exceptions


class Servers:
    """Start, stop and restart local servers over one data dir (tests/local's launcher)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.running: list[RunningServer] = []

    async def start(self, settings: Settings | None = None, port: int = 0,
                    **overrides: Any) -> RunningServer:
        settings = settings or make_settings(self.data_dir, **overrides)
        for attempt in range(50):
            try:
                server = await start_server(settings, port)
                break
            except OSError:  # the old listener's port is not free yet
                if attempt == 49 or port == 0:
                    raise
                await asyncio.sleep(0.1)
        self.running.append(server)
        return server

    async def stop(self, server: RunningServer) -> None:
        self.running.remove(server)
        await server.stop()

    async def restart(self, server: RunningServer) -> RunningServer:
        """The same settings, port and data dir: what a deploy or a crash-restart looks like."""
        await self.stop(server)
        return await self.start(server.settings, server.port)


@pytest_asyncio.fixture(loop_scope="session")
async def servers(tmp_path: Path) -> AsyncIterator[Servers]:
    servers = Servers(tmp_path / "data")
    yield servers
    for server in list(servers.running):
        await servers.stop(server)


@dataclass(frozen=True)
class ChatServer:
    """A running service the page can be pointed at, on either runtime."""

    runtime: str
    base: str  # host:port

    def room(self, prefix: str) -> str:
        """``prefix`` on a fresh local server; a name of its own on workerd (state is shared)."""
        return prefix if self.runtime == "local" else f"{prefix}-{uuid.uuid4().hex[:8]}"

    def artifact(self, name: str) -> Path:
        """``name`` locally, ``name-<runtime>`` otherwise (same suffix)."""
        if self.runtime == "local":
            return artifact_path(name)
        stem, _, suffix = name.rpartition(".")
        return artifact_path(f"{stem}-{self.runtime}.{suffix}")


@pytest_asyncio.fixture(loop_scope="session", params=["local", "workerd"])
async def chat_server(request: pytest.FixtureRequest, servers: Servers) -> ChatServer:
    """The local runtime (a fresh server) or the real workerd with the default e2e profile."""
    if request.param == "workerd":
        pool: WorkerdPool = request.getfixturevalue("workerd_pool")
        dev = await asyncio.to_thread(pool.get, Profile())
        return ChatServer("workerd", f"127.0.0.1:{dev.port}")
    return ChatServer("local", (await servers.start()).base)


def artifact_path(name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    saved_artifacts.append(path)
    return path

"""A real local runtime on 127.0.0.1:<ephemeral>, in the test's event loop."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from rooms.limits import Limits
from roomsd.rooms import HibernationPolicy
from tests.local.conftest import RunningServer, make_settings, start_server


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[RunningServer]:
    settings = make_settings(
        tmp_path / "data",
        limits=Limits(messages_per_second=1000, burst=1000),
        hibernation=HibernationPolicy(after_idle_s=0.5),
    )
    running = await start_server(settings)
    yield running
    await running.stop()

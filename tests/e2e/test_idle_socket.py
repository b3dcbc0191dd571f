"""A room socket forwarded by the front Worker stays usable however long it sits idle.

The front hands the upgrade to the room's object with a subrequest; the 101 it returns carries the
client's socket. If anything aborted that subrequest later (an AbortController, a cancelled
Python task, the front's request ending), the client's socket would die with it (docs/cloudflare.md
§2.7). This holds one socket idle for a minute while the service keeps working, then uses it.
"""

from __future__ import annotations

import asyncio
import json
import os

import pytest

from tests.e2e.conftest import ServiceBase, publish, recv_json, recv_until

pytestmark = pytest.mark.integration
IDLE_S = float(os.environ.get("ROOMS_IDLE_SOCKET_S", "60"))


@pytest.mark.parametrize("service", ["workerd"], indirect=True)
async def test_a_socket_idle_for_a_minute_still_works(service: ServiceBase) -> None:
    room = service.room("idle")
    async with await service.connect(room, "sleeper") as idle:
        await recv_until(idle, "welcome")
        deadline = asyncio.get_running_loop().time() + IDLE_S
        visits = 0
        # Meanwhile other clients come and go through the same front Worker, so the isolate
        # keeps running requests (and collecting garbage) while the idle socket waits.
        while asyncio.get_running_loop().time() < deadline:
            async with await service.connect(room, f"visitor{visits}") as visitor:
                await recv_until(visitor, "welcome")
                await publish(visitor, f"v{visits}", "hello")
            visits += 1
            await asyncio.sleep(min(5.0, max(0.0, deadline - asyncio.get_running_loop().time())))
        await idle.send(json.dumps({"type": "publish", "id": "late", "body": "still here"}))
        acks, seen = [], []
        while "late" not in seen:
            frame = await recv_json(idle)
            if frame["type"] == "ack":
                acks.append(frame["seq"])
            elif frame["type"] == "message":
                seen.append(frame["id"])
        assert acks == [visits + 1]
        assert seen == [f"v{i}" for i in range(visits)] + ["late"]

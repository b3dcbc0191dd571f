"""POST /auth/guest on the local runtime: the page's way in, over real HTTP and WebSockets."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import websockets

from rooms.guest import GUEST_USER_ID, GuestPolicy
from tests.browser.conftest import BROWSER_TEST, Servers
from tests.conftest import timeout
from tests.local.conftest import RunningServer, recv_until

pytestmark = BROWSER_TEST


async def post(server: RunningServer, payload: Any, **headers: str) -> tuple[int, Any, Any]:
    async with aiohttp.ClientSession() as http, http.post(
        f"http://{server.base}/auth/guest", data=json.dumps(payload), headers=headers
    ) as resp:
        return resp.status, await resp.json(), resp.headers


async def test_a_guest_token_opens_a_room_under_a_guest_identity(servers: Servers) -> None:
    server = await servers.start()
    status, answer, headers = await post(server, {"name": "Ada"})
    assert status == 200
    assert headers["cache-control"] == "no-store"
    assert GUEST_USER_ID.fullmatch(answer["user_id"])
    url = f"ws://{server.base}/rooms/lobby/ws?since=0"
    async with websockets.connect(
        url, subprotocols=["rooms.v1", answer["token"]], open_timeout=timeout(5)
    ) as ws:
        welcome = await recv_until(ws, "welcome")
        assert welcome["user_id"] == answer["user_id"]
        assert welcome["presence"] == [{"user_id": answer["user_id"], "name": "Ada"}]


async def test_guest_tokens_are_rate_limited_per_client(servers: Servers) -> None:
    server = await servers.start()
    burst = GuestPolicy().burst
    statuses = [(await post(server, {"name": "x"}))[0] for _ in range(burst + 1)]
    assert statuses == [200] * burst + [429]
    status, answer, headers = await post(server, {"name": "x"})
    assert (status, answer["error"]["code"]) == (429, "rate_limited")
    assert int(headers["retry-after"]) >= 1


async def test_switched_off_and_bad_requests_answer_in_the_error_shape(servers: Servers) -> None:
    on = await servers.start()
    status, answer, _ = await post(on, {"name": ""})
    assert (status, answer["error"]["code"]) == (400, "bad_name")
    async with aiohttp.ClientSession() as http, http.get(f"http://{on.base}/auth/guest") as resp:
        assert (resp.status, (await resp.json())["error"]["code"]) == (405, "method_not_allowed")
    off = await servers.start(guest_tokens=False)
    status, answer, _ = await post(off, {"name": "Ada"})
    assert (status, answer["error"]["code"]) == (404, "guest_tokens_disabled")

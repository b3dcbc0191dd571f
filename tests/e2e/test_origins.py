"""With no ALLOWED_ORIGINS, browsers may use the service only from its own pages, on every runtime.

docs/protocol.md ("Settings"): a request without Origin is no browser's and is not checked; one
with an Origin must come from the origin it was sent to (the chat page the service serves).
"""

from __future__ import annotations

import json

import pytest
import websockets
from websockets.exceptions import InvalidStatus

from tests.e2e.conftest import ServiceBase, recv_until

pytestmark = pytest.mark.integration


async def refused_status(service: ServiceBase, url: str, origin: str) -> tuple[int, str]:
    with pytest.raises(InvalidStatus) as refused:
        await websockets.connect(url, origin=origin)  # type: ignore[arg-type]
    response = refused.value.response
    return response.status_code, json.loads(response.body)["error"]["code"]


async def test_own_pages_and_non_browsers_connect_other_origins_are_refused(
    service: ServiceBase,
) -> None:
    room = service.room("origins")
    url = service.url(room, token=service.token("alice"), since=0)
    async with websockets.connect(url, origin=f"http://{service.base}") as own:  # type: ignore[arg-type]
        await recv_until(own, "welcome")
    async with websockets.connect(url) as no_origin:
        await recv_until(no_origin, "welcome")
    others = ["https://evil.example", f"http://{service.base}.evil.example", "null"]
    if service.runtime != "workerd":
        # wrangler dev's proxy rewrites every header URL whose host is its own to its inner
        # origin, scheme included (ProxyWorker's rewriteUrlRelatedHeaders), so the Worker never
        # sees this one there; on Cloudflare and locally the scheme must match too.
        others.append(f"https://{service.base}")
    for other in others:
        assert await refused_status(service, url, other) == (403, "origin_not_allowed")
    own_page = await service.http(
        "POST",
        "/auth/guest",
        {"Origin": f"http://{service.base}", "Content-Type": "application/json"},
        json.dumps({"name": "Ann"}),
    )
    assert own_page.status == 200
    elsewhere = await service.http(
        "POST",
        "/auth/guest",
        {"Origin": "https://evil.example", "Content-Type": "application/json"},
        json.dumps({"name": "Eve"}),
    )
    assert (elsewhere.status, elsewhere.json()["error"]["code"]) == (403, "origin_not_allowed")

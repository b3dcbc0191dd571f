"""`GET /metrics` takes the admin token or METRICS_TOKEN, nothing else (docs/admin.md#metrics)."""

from __future__ import annotations

import aiohttp

from tests.local.conftest import ServerFactory

METRICS_TOKEN = "m" * 40


async def get(base: str, headers: dict[str, str], method: str = "GET") -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.request(
        method, f"http://{base}/metrics", headers=headers
    ) as reply:
        return reply.status, await reply.text()


async def test_the_metrics_token_reads_metrics_and_nothing_else(
    server_factory: ServerFactory,
) -> None:
    server = await server_factory(metrics_token=METRICS_TOKEN)
    status, text = await get(server.base, {"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert status == 200
    assert "# TYPE rooms_publish_latency_seconds histogram" in text
    assert "# TYPE rooms_messages_published_total counter" in text
    status, _ = await get(server.base, {"Authorization": f"Bearer {METRICS_TOKEN}"}, "POST")
    assert status == 405
    async with aiohttp.ClientSession() as session, session.get(
        f"http://{server.base}/admin/rooms", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}
    ) as reply:
        assert reply.status == 401  # the scraper's token is no admin token


async def test_without_any_token_configured_metrics_are_closed(
    server_factory: ServerFactory,
) -> None:
    server = await server_factory(admin_token=None)
    for headers in ({}, {"Authorization": "Bearer "}, {"Authorization": "Bearer None"}):
        status, text = await get(server.base, headers)
        assert status == 401
        assert "rooms_" not in text

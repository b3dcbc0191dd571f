"""`GET /metrics` (docs/admin.md#metrics): Prometheus text on the local runtime whose figures
match what the clients did and what the admin API reports; on workerd no such route (the rooms
write to Workers Analytics Engine instead: tests/pyodide/test_metrics.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import websockets
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import ServiceBase, recv_until
from tests.workerd_service import ADMIN_TOKEN

pytestmark = pytest.mark.integration
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
DOC = Path(__file__).parents[2] / "docs" / "admin.md"


async def scrape(service: ServiceBase) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    reply = await service.http("GET", "/metrics", AUTH)
    assert reply.status == 200, reply.text
    assert reply.headers["content-type"].startswith("text/plain; version=")
    samples = {}
    for family in text_string_to_metric_families(reply.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def writes_to_analytics_engine_without_failing(service: ServiceBase) -> None:
    """No /metrics on Cloudflare. The rooms and the front write to the METRICS dataset
    (wrangler.jsonc), which `wrangler dev` simulates: what they write is checked in the Pyodide
    tier; here real workerd runs the adapter and nothing fails."""
    reply = await service.http("GET", "/metrics", AUTH)
    assert (reply.status, reply.json()["error"]["code"]) == (404, "not_found")
    room = service.room("metrics")
    async with await service.connect(room, "alice") as alice:
        await recv_until(alice, "welcome")
        for i in range(3):
            await alice.send(json.dumps({"type": "publish", "id": f"m{i}", "body": "x"}))
            await recv_until(alice, "ack")
        await alice.send("{not json")
        await recv_until(alice, "error")
    with pytest.raises(websockets.InvalidStatus):
        await websockets.connect(service.url(room, token="nope"))
    async with await service.connect(room, "bob") as bob:  # a later event writes the counts
        await recv_until(bob, "welcome")
    log = service.dev.log_path  # type: ignore[attr-defined]
    text = log.read_text(errors="replace")
    assert f'"room":"{room}"' in text  # the Worker's own lines reach this log
    assert '"handler":"metrics"' not in text


async def test_metrics_count_what_clients_did_and_match_the_admin_api(
    service: ServiceBase,
) -> None:
    if service.runtime == "workerd":
        await writes_to_analytics_engine_without_failing(service)
        return
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        reply = await service.http("GET", "/metrics", headers)
        assert (reply.status, reply.json()["error"]["code"]) == (401, "unauthorized")
    before = await scrape(service)
    room = service.room("metrics")
    async with await service.connect(room, "alice") as alice, \
            await service.connect(room, "bob") as bob:
        await recv_until(alice, "welcome")
        await recv_until(bob, "welcome")
        for i in range(3):
            await alice.send(json.dumps({"type": "publish", "id": f"m{i}", "body": "héllo"}))
            await recv_until(alice, "ack")
            await recv_until(bob, "message")
        await bob.send("{not json")
        assert (await recv_until(bob, "error"))["code"] == "bad_json"
        live = await scrape(service)
        assert value(live, "rooms_connections") == 2
        assert value(live, "rooms_users") == 2
        awake = value(live, "rooms_rooms", state="awake")
        asleep = value(live, "rooms_rooms", state="asleep")
        assert awake + asleep == 1
        assert awake == (0 if service.runtime == "local-hibernating" else 1)
    with pytest.raises(websockets.InvalidStatus):
        await websockets.connect(service.url(room, token="nope"))
    await service.http("POST", f"/admin/rooms/{room}/archive", AUTH)
    await service.http("POST", f"/admin/rooms/{room}/ban?user_id=bob", AUTH)
    with pytest.raises(websockets.InvalidStatus):  # refused by the room itself: 403 banned
        await service.connect(room, "bob")
    after = await scrape(service)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    # Exactly the metrics docs/admin.md lists (its table, by name).
    documented = set(re.findall(r"^\| `(rooms_\w+)(?:\{\w+\})?` \|", DOC.read_text(), re.M))
    families = {name.removesuffix("_total") for name in
                {re.sub(r"_(bucket|count|sum)$", "", n) for n, _ in after}}
    assert {d.removesuffix("_total") for d in documented} == families
    assert delta("rooms_messages_published_total") == 3
    assert delta("rooms_connections_opened_total") == 2
    assert delta("rooms_connections_closed_total", code="1000") == 2
    assert value(after, "rooms_connections") == 0
    # Each publish: an ack to alice and the message to both; plus two welcomes, a presence
    # join to alice, the error to bob; at least (the leave and presence frames vary by timing).
    assert delta("rooms_deliveries_total") >= 3 * 3 + 2 + 1 + 1
    assert delta("rooms_sent_bytes_total") > delta("rooms_deliveries_total") * 20
    assert delta("rooms_received_bytes_total") >= 3 * len('"body":"héllo"'.encode())
    assert delta("rooms_rejections_total", code="bad_json") == 1
    assert delta("rooms_rejections_total", code="token_invalid") == 1
    assert delta("rooms_rejections_total", code="banned") == 1
    assert delta("rooms_publish_latency_seconds_count") == 3
    assert delta("rooms_publish_latency_seconds_bucket", le="+Inf") == 3
    assert delta("rooms_publish_latency_seconds_sum") > 0
    assert delta("rooms_sqlite_write_seconds_count") >= 3
    assert delta("rooms_sqlite_commit_seconds_count") >= 1  # grouped: one may hold several
    assert delta("rooms_archive_runs_total") == 1
    assert delta("rooms_archive_failures_total") == 0
    assert delta("rooms_archive_lag_seconds_count") == 1
    assert delta("rooms_woken_total") >= 1
    # The same figures through the admin API: three messages, nobody left.
    view = (await service.http("GET", f"/admin/rooms/{room}", AUTH)).json()
    assert (view["head_seq"], view["member_count"], view["archived_seq"]) == (3, 0, 3)

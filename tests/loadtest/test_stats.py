"""The histogram's percentiles and the per-client order check, without any sockets."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from loadtest.config import Config
from loadtest.stats import Histogram, Timeline
from loadtest.worker import ClientSpec, Worker, _ServerFrame, sent_ns_of


def test_percentiles_are_within_one_percent() -> None:
    hist = Histogram()
    for value in range(1, 100_001):
        hist.add(float(value))
    for pct, exact in ((50, 50_000), (90, 90_000), (99, 99_000), (99.9, 99_900)):
        assert hist.percentile_us(pct) == pytest.approx(exact, rel=0.01)
    assert hist.summary_ms()["max"] == 100.0
    assert hist.summary_ms()["count"] == 100_000


def test_histograms_survive_json_and_merge() -> None:
    a, b = Timeline(), Timeline()
    a.add(0, 100.0)
    b.add(0, 300.0)
    b.add(2, 5000.0)
    merged = Timeline.from_json(a.to_json())
    merged.merge(Timeline.from_json(b.to_json()))
    total = merged.total()
    assert total.count == 3
    assert total.max_us == 5000.0
    assert [row["t"] for row in merged.rows()] == [0, 2]


def test_message_ids_carry_the_intended_send_time() -> None:
    assert sent_ns_of("3.17.123456789") == 123456789
    assert sent_ns_of("someone-else") is None
    assert sent_ns_of("1.2.x") is None


class _NoChannel:
    async def send(self, message: dict[str, Any]) -> None:
        raise AssertionError("unused")

    async def recv(self) -> dict[str, Any]:
        raise AssertionError("unused")


async def test_order_check_names_gaps_duplicates_and_stragglers() -> None:
    await asyncio.sleep(0)
    cfg = Config(rooms=1, clients=4, run_id="t")
    specs = [ClientSpec(i, 0, i, "token") for i in range(4)]
    worker = Worker(cfg, specs, _NoChannel(), None)
    streams = {0: [1, 2, 3, 4], 1: [1, 2, 4], 2: [1, 2, 2, 3, 4], 3: [1, 2]}
    for index, seqs in streams.items():
        client = worker.clients[index]
        client.ever_connected = True
        for seq in seqs:
            client._on_message(_ServerFrame(type="message", seq=seq, id=f"0.{seq}.1"), 10)
    order = worker._order({0: 4})
    assert order["counts"] == {
        "ok": 1,
        "gaps": 1,
        "duplicates": 1,
        "behind": 1,
        "failed": 3,
    }
    assert any("1 missing" in e for e in order["examples"])
    assert any("1 duplicate or out of order" in e for e in order["examples"])
    assert any("stopped at seq 2 of 4" in e for e in order["examples"])

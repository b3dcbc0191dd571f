"""Small real runs of every scenario against the local runtime, checked end to end."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from loadtest.config import Config
from loadtest.progress import Display
from loadtest.report import markdown, write_json
from loadtest.runner import RunError, run
from loadtest.tokens import TokenSource
from tests.conftest import timeout
from tests.local.conftest import SECRET, RunningServer
from tests.local.test_process import ENV

pytestmark = pytest.mark.integration


def config(server: RunningServer, **fields: Any) -> Config:
    base = Config(
        url=f"ws://{server.base}",
        rooms=2,
        clients=3,
        senders=2,
        rate=40,
        duration=1.0,
        drain_timeout=5,
        run_id=os.urandom(3).hex(),
    )
    return replace(base, **fields).validate()


async def run_quietly(cfg: Config) -> dict[str, Any]:
    display = Display("none", cfg.scenario, cfg.total_clients)
    return await asyncio.wait_for(run(cfg, TokenSource(secret=SECRET), display), timeout(30))


async def test_fanout_every_client_sees_every_seq_once_in_order(
    server: RunningServer, tmp_path: Path
) -> None:
    result = await run_quietly(config(server))
    order = result["order"]
    assert order["ok"], order
    assert order["counts"] == {"ok": 6}
    stored = order["messages_stored"]
    assert stored == result["publish"]["acked"] == result["publish"]["sent"] > 50
    # Every message reached all 3 clients of its room, the sender included.
    assert result["delivery"]["deliveries"] == result["delivery"]["expected"] == 3 * stored
    latency = result["delivery"]["latency_ms"]
    assert latency["count"] == 3 * stored
    assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["p99.9"]
    assert latency["p99.9"] <= latency["max"]
    assert result["connect"]["ok"] == 6
    assert result["errors"] == {}
    write_json(result, tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text())["order"]["ok"] is True
    assert "order check: **passed**" in markdown(result)


async def test_fanout_with_edits_and_reactions_keeps_the_order_check(
    server: RunningServer,
) -> None:
    """--lifecycle-mix: a quarter of the sends edit or react to the sender's latest message;
    events take seqs like messages, so every client still sees every seq once, in order."""
    result = await run_quietly(config(server, lifecycle_mix=0.25))
    order = result["order"]
    assert order["ok"], order
    assert order["counts"] == {"ok": 6}
    publish = result["publish"]
    assert 0.15 * publish["sent"] < publish["lifecycle_sent"] <= 0.25 * publish["sent"] + 2
    assert order["messages_stored"] == publish["acked"] - publish["duplicates"]
    assert result["delivery"]["deliveries"] == 3 * order["messages_stored"]
    assert result["errors"] == {}


async def test_reconnect_resume_misses_nothing_and_repeats_nothing(
    server: RunningServer,
) -> None:
    cfg = config(server, scenario="reconnect-resume", rooms=1, clients=4, rate=60, duration=1.5)
    cfg = replace(cfg, drop_interval=0.4, reconnect_delay=0.02)
    result = await run_quietly(cfg)
    assert result["reconnect"]["drops"] > 0
    assert result["reconnect"]["reconnects"] == result["reconnect"]["drops"]
    assert result["order"]["ok"], result["order"]
    assert result["delivery"]["replayed"] > 0  # missed messages came back with `since`
    # Live deliveries plus replayed ones are every stored message once per client, and the
    # summary says so instead of "N of M expected" with N short of M.
    delivery = result["delivery"]
    assert delivery["deliveries"] + delivery["replayed"] == delivery["expected"]
    assert (
        f"{delivery['deliveries']:,} live + {delivery['replayed']:,} replayed after reconnects = "
        f"{delivery['expected']:,} of {delivery['expected']:,} expected"
    ) in markdown(result)


async def test_a_run_where_no_client_connects_stops_before_publishing(
    server: RunningServer,
) -> None:
    cfg = config(server)
    wrong = TokenSource(secret="not-the-secret-of-this-server-but-long-enough")
    display = Display("none", cfg.scenario, cfg.total_clients)
    with pytest.raises(RunError, match=r"no client could connect \(http_401_token_invalid 6\)"):
        await asyncio.wait_for(run(cfg, wrong, display), timeout(60))


async def test_idle_holds_then_probes_the_sleeping_rooms(server: RunningServer) -> None:
    # The server sweeps idle rooms once a second and evicts those idle for 0.5 s: a 2 s hold
    # always spans a sweep after the rooms went quiet (1 s did only when the phase was right).
    cfg = config(server, scenario="idle", rooms=3, clients=2, duration=2.0, wake_probe=2)
    result = await run_quietly(cfg)
    wake = result["wake_probe"]
    assert wake["cold_ms"]["count"] == wake["warm_ms"]["count"] == 2
    assert wake["added_median_ms"] is not None
    assert result["order"]["ok"]
    assert result["order"]["messages_stored"] == 6  # a primer and two probes in two rooms
    # The rooms were evicted during the hold (hibernate after 0.5 s) and woke for the probe.
    room = server.registry.rooms[cfg.room_name(0)]
    assert room.wakes >= 2


async def test_connect_storm_counts_refusals_by_code(server: RunningServer) -> None:
    cfg = config(server, scenario="connect-storm", rooms=2, clients=5, concurrency=3)
    result = await run_quietly(cfg)
    assert result["connect"]["ok"] == 10
    assert result["connect"]["time_ms"]["count"] == 10
    assert result["order"]["ok"]
    bad = replace(cfg, url=cfg.url, run_id=cfg.run_id + "b")
    display = Display("none", bad.scenario, bad.total_clients)
    wrong = TokenSource(secret="not-the-secret-of-this-server-but-long-enough")
    refused = await run(bad, wrong, display)
    assert refused["connect"]["failed"] == 10
    assert refused["errors"] == {"http_401_token_invalid": 10}
    assert not refused["ok"]


async def test_the_cli_in_two_processes_writes_its_json_and_summary(
    server: RunningServer, tmp_path: Path
) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "loadtest",
        "fanout",
        *("--url", f"ws://{server.base}", "--secret", SECRET, "--procs", "2"),
        *("--rooms", "2", "--clients", "3", "--senders", "1", "--rate", "30"),
        *("--duration", "1", "--out", str(tmp_path), "--name", "run", "--progress", "plain"),
        *("--token-in", "subprotocol"),
        env=ENV,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout(60))
    assert proc.returncode == 0, err.decode()
    result = json.loads((tmp_path / "run.json").read_text())
    assert result["order"]["ok"]
    assert result["order"]["clients_checked"] == 6
    assert result["generator"]["procs"] == 2
    assert len(result["generator"]["nofile"]) == 2
    summary = (tmp_path / "run.md").read_text()
    assert "order check: **passed** (6/6 clients" in summary
    assert "order check: **passed**" in out.decode()
    assert "fanout  sending" in err.decode()  # the plain progress lines


async def test_plots_are_written(server: RunningServer, tmp_path: Path) -> None:
    from loadtest.report import figures, plot  # matplotlib is in the loadtest group: never skipped

    result = await run_quietly(config(server, rooms=1, clients=2, senders=1, duration=0.5))
    written = plot(result, tmp_path / "run")
    assert [p.name for p in written] == ["run-latency-time.png", "run-latency-dist.png"]
    assert all(p.stat().st_size > 1000 for p in written)
    for _, fig in figures(result):  # what the PNGs show: a legend for every mark, plain ticks
        fig.canvas.draw()
        labels = [t.get_text() for ax in fig.axes for axis in (ax.xaxis, ax.yaxis)
                  for t in axis.get_ticklabels()]
        assert not any("times" in label or "\u00d7" in label for label in labels), labels
    over_time = figures(result)[0][1]
    legend = [t.get_text() for t in over_time.axes[0].get_legend().get_texts()]
    assert legend == ["p50", "p99", "max", "deliveries per second (bars, right axis)"]

"""Issue 10's targets for the local runtime, measured as the issue measures them.

Server pinned to one core, generator to the other (bench/run.py's PIN), 100-byte bodies, open
loop, latency from each message's intended send time; a step counts only if its p99 is within
50 ms and the generator got every delivery (within 5% of the offered rate, nothing lost).

- ladders: for 1 x 100 and 100 x 10, rates rising until the second step past the bound; the
  highest step within it is "max deliveries/s at p99 <= 50 ms". Deliveries per server CPU-second
  are compared at the highest rate every server kept up with (the same offered load for all).
  `rooms-each` is the runtime with one commit per message, against the group commit.
- half: our max halved, on a fresh server: p99 must be under 5 ms.
- storms: 2,000 connections into 200 new rooms and 10,000 into 1,000 (10 per room), 200
  handshakes in flight: seconds until every client is welcomed, handshake p99.
- awake memory: 10 x 100 and 200 x 10 connections held with every room awake (no hibernation
  during the hold): server RSS growth per connection.

`run.py` drives these with its `running` and `loadtest`; `headline` turns the results into the
table issue 10 asks for (target, baseline, ours, ratio).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

P99_BOUND_MS = 50.0
HALF_P99_MS = 5.0
SIZE = "100"
# name: rooms, clients per room, senders per room, msg/s per room for each step
LADDERS: dict[str, tuple[int, int, int, tuple[float, ...]]] = {
    "ladder-1x100": (1, 100, 10, (100, 200, 400, 600, 800, 1000, 1200, 1500, 1800, 2200)),
    "ladder-100x10": (100, 10, 1, (5, 10, 20, 30, 40, 50, 60, 70, 80, 100)),
}
STORMS = {"storm-200x10": (200, 10, 1.0), "storm-1000x10": (1000, 10, 3.0)}  # rooms, clients, s
AWAKE = {"awake-10x100": (10, 100), "awake-200x10": (200, 10)}
TARGET_SCENARIOS = (*LADDERS, *STORMS, *AWAKE)
# Rooms stay awake for the whole awake-memory hold (the default puts them to sleep after 2 s).
AWAKE_HOLD_S = 6.0

Running = Callable[..., AbstractContextManager[Any]]
Loadtest = Callable[[Any, str, str, list[str], Path], Any]
Log = Callable[[Any], None]


def _step(run: Any, offered: float) -> dict[str, Any]:
    result = run.result
    d = result["delivery"]
    lat = d["latency_ms"]
    cpu = (result.get("server") or {}).get("cpu_s_sending")
    kept_up = (
        d["per_s"] is not None
        and d["per_s"] >= 0.95 * offered
        and d["deliveries"] >= 0.999 * (d["expected"] or 0)
    )
    return {
        "offered_per_s": offered,
        "deliveries_per_s": d["per_s"],
        "p50_ms": lat["p50"],
        "p99_ms": lat["p99"],
        "server_cpu_s": cpu,
        "per_cpu_s": round(d["in_window"] / cpu) if cpu and d["in_window"] else None,
        "kept_up": kept_up,
        "within_bound": kept_up and lat["p99"] is not None and lat["p99"] <= P99_BOUND_MS,
        "order_ok": result["order"]["ok"],
        "generator_util": result["generator"]["cpu_util_sending"],
        "other_cpu_s": round(run.other_cpu_s, 2),
    }


def ladder_step_args(
    rooms: int, clients: int, senders: int, rate: float, duration: float
) -> list[str]:
    return [
        "--rooms", str(rooms), "--clients", str(clients), "--senders", str(senders),
        "--rate", f"{rate:g}", "--duration", f"{duration:g}", "--size", SIZE,
        "--concurrency", "200", "--connect-timeout", "60", "--drain-timeout", "15",
    ]  # fmt: skip


def ladder(
    name: str,
    kind: str,
    duration: float,
    workdir: Path,
    runs: Path,
    running: Running,
    loadtest: Loadtest,
    log: Log,
) -> dict[str, Any]:
    """One server, rising open-loop rates in new rooms each step, up to the second miss."""
    rooms, clients, senders, rates = LADDERS[name]
    steps: list[dict[str, Any]] = []
    misses = 0
    with running(kind, workdir) as server:
        for rate in rates:
            offered = rate * rooms * clients
            args = ladder_step_args(rooms, clients, senders, rate, duration)
            args += ["--room-prefix", f"{name}-{rate:g}-"]
            stem = f"{name}-{kind}-{rate:g}".replace(".", "p")
            step = _step(loadtest(server, "fanout", stem, args, runs), offered)
            step["rate_per_room"] = rate
            steps.append(step)
            log({"scenario": f"{name} {rate:g}/s/room", "server": kind, **step})
            if not step["within_bound"]:
                misses += 1
                if misses >= 2:
                    break
    return summarise_ladder(steps)


def summarise_ladder(steps: list[dict[str, Any]]) -> dict[str, Any]:
    within = [s for s in steps if s["within_bound"]]
    best = max(within, key=lambda s: s["offered_per_s"]) if within else None
    return {
        "steps": steps,
        "max_at_p99_bound": best["deliveries_per_s"] if best else None,
        "max_rate_per_room": best["rate_per_room"] if best else None,
        "p99_at_max_ms": best["p99_ms"] if best else None,
        "order_ok": all(s["order_ok"] for s in steps),
    }


def half(
    name: str,
    rate_per_room: float,
    duration: float,
    workdir: Path,
    runs: Path,
    running: Running,
    loadtest: Loadtest,
    log: Log,
) -> dict[str, Any]:
    """Our own max at p99 <= 50 ms, halved, on a fresh runtime."""
    rooms, clients, senders, _ = LADDERS[name]
    rate = round(rate_per_room / 2, 2)
    with running("rooms", workdir) as server:
        args = ladder_step_args(rooms, clients, senders, rate, duration)
        run = loadtest(server, "fanout", f"{name}-half-rooms".replace(".", "p"), args, runs)
    step = _step(run, rate * rooms * clients)
    step["rate_per_room"] = rate
    log({"scenario": f"{name} half ({rate:g}/s/room)", "server": "rooms", **step})
    return step


def storm(
    name: str, kind: str, workdir: Path, runs: Path, running: Running, loadtest: Loadtest, log: Log
) -> dict[str, Any]:
    rooms, clients, _ = STORMS[name]
    args = ["--rooms", str(rooms), "--clients", str(clients), "--concurrency", "200"]
    args += ["--connect-timeout", "60"]
    with running(kind, workdir) as server:
        run = loadtest(server, "connect-storm", f"{name}-{kind}", args, runs)
    connect = run.result["connect"]
    row = {
        "connections": connect["ok"],
        "failed": connect["failed"],
        "wall_s": connect.get("wall_s"),
        "p50_ms": connect["time_ms"]["p50"],
        "p99_ms": connect["time_ms"]["p99"],
        "server_cpu_s": round(run.server_cpu_s, 2),
        "other_cpu_s": round(run.other_cpu_s, 2),
    }
    log({"scenario": name, "server": kind, **row})
    return row


def awake_memory(
    name: str, kind: str, workdir: Path, runs: Path, running: Running, loadtest: Loadtest, log: Log
) -> dict[str, Any]:
    rooms, clients = AWAKE[name]
    args = ["--rooms", str(rooms), "--clients", str(clients), "--duration", f"{AWAKE_HOLD_S:g}"]
    args += ["--concurrency", "200", "--connect-timeout", "60", "--room-prefix", f"{name}-"]
    # A message in every room before the hold: each room has its file and its open database,
    # as a room in use does (a room that never had a message holds neither).
    args += ["--wake-probe", str(rooms)]
    # No sleep during the hold: the rooms are measured awake, databases open.
    with running(kind, workdir, hibernate_after_s=600.0) as server:
        run = loadtest(server, "idle", f"{name}-{kind}", args, runs)
    server_stats = run.result.get("server") or {}
    row = {
        "connections": run.result["connect"]["ok"],
        "rss_per_connection_kb": server_stats.get("rss_per_connection_kb"),
        "rss_per_connection_kb_at_end": server_stats.get("rss_per_connection_kb_at_end"),
        "peak_rss_mb": round(run.server_peak_rss_mb, 1),
    }
    log({"scenario": name, "server": kind, **row})
    return row


def run_targets(
    only: list[str],
    servers: list[str],
    duration: float,
    workdir: Path,
    runs: Path,
    running: Running,
    loadtest: Loadtest,
    log: Log,
) -> dict[str, Any]:
    """Every scenario of ``only`` that is one of issue 10's, for every server of ``servers``."""
    out: dict[str, Any] = {}
    for name in only:
        if name in LADDERS:
            kinds = list(servers)
            if name == "ladder-100x10" and "rooms" in kinds and "rooms-each" not in kinds:
                kinds.insert(1, "rooms-each")  # the comparison issue 10 asks for
            section: dict[str, Any] = {
                kind: ladder(name, kind, duration, workdir, runs, running, loadtest, log)
                for kind in kinds
            }
            ours = section.get("rooms", {})
            if ours.get("max_rate_per_room"):
                section["half"] = half(
                    name, ours["max_rate_per_room"], duration, workdir, runs, running, loadtest, log
                )
            out[name] = section
        elif name in STORMS:
            out[name] = {k: storm(name, k, workdir, runs, running, loadtest, log) for k in servers}
        elif name in AWAKE:
            out[name] = {
                k: awake_memory(name, k, workdir, runs, running, loadtest, log) for k in servers
            }
    return out


# --------------------------------------------------------------------------- the headline


def _ratio(ours: float | None, base: float | None) -> float | None:
    return None if ours is None or not base else round(ours / base, 3)


def _common_step(section: dict[str, Any], kinds: list[str]) -> float | None:
    """The highest offered rate every one of ``kinds`` kept up with."""
    kept: set[float] | None = None
    for kind in kinds:
        rates = {s["offered_per_s"] for s in section[kind]["steps"] if s["kept_up"]}
        kept = rates if kept is None else kept & rates
    return max(kept) if kept else None


def _per_cpu_at(section: dict[str, Any], kind: str, offered: float | None) -> float | None:
    if kind not in section or offered is None:
        return None
    for step in section[kind]["steps"]:
        if step["offered_per_s"] == offered:
            per: float | None = step["per_cpu_s"]
            return per
    return None


def headline(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 10's targets: one row each, with the baseline, ours and the ratio."""
    rows: list[dict[str, Any]] = []

    def row(target: str, baseline: str, base: Any, ours: Any, ratio: Any, met: Any) -> None:
        rows.append(
            {
                "target": target,
                "baseline": baseline,
                "base": base,
                "ours": ours,
                "ratio": ratio,
                "met": met,
            }
        )

    shapes = (("ladder-100x10", "100 x 10"), ("ladder-1x100", "1 x 100"))
    for name, label in shapes:
        section = results.get(name)
        if not section:
            continue
        ours = section.get("rooms", {}).get("max_at_p99_bound")
        if name == "ladder-100x10":
            base = section.get("websockets", {}).get("max_at_p99_bound")
            r = _ratio(ours, base)
            row(
                f"{label}: max deliveries/s at p99 <= 50 ms, every message committed before "
                "its ack (group commit)",
                "websockets",
                base,
                ours,
                r,
                # No step within the bound is a miss, not "n/a".
                (ours is not None and r is not None and r >= 1) if base is not None else None,
            )
            each = section.get("rooms-each", {}).get("max_at_p99_bound")
            row(
                f"{label}: the same with one commit per message (for comparison)",
                "rooms, group commit",
                ours,
                each,
                _ratio(each, ours),
                None,
            )
        kinds = [k for k in ("rooms", "websockets", "node") if k in section]
        at = _common_step(section, kinds)
        for baseline in ("node", "websockets"):
            if baseline not in section:
                continue
            theirs = _per_cpu_at(section, baseline, at)
            mine = _per_cpu_at(section, "rooms", at)
            r = _ratio(mine, theirs)
            target = name == "ladder-1x100" and baseline == "node"
            where = (
                f"at {at:,.0f} deliveries/s (the highest rate every server kept up with)"
                if at is not None
                else "(no rate that every server kept up with)"
            )
            row(
                f"{label}: deliveries per server CPU-second {where}",
                baseline,
                theirs,
                mine,
                r,
                (None if r is None else r >= 1) if target else None,
            )
        halfway = section.get("half")
        if halfway:
            p99 = halfway["p99_ms"]
            row(
                f"{label}: p99 ms at half our max ({halfway['offered_per_s']:,.0f} deliveries/s)",
                "bound",
                HALF_P99_MS,
                p99,
                _ratio(p99, HALF_P99_MS),
                None if p99 is None else (p99 < HALF_P99_MS and halfway["kept_up"]),
            )
    for name, (rooms, clients, bound_s) in STORMS.items():
        section = results.get(name)
        if not section or "rooms" not in section:
            continue
        ours = section["rooms"]
        base_kind = "websockets" if "websockets" in section else None
        base = section[base_kind]["wall_s"] if base_kind else None
        met = ours["failed"] == 0 and ours["wall_s"] is not None and ours["wall_s"] <= bound_s
        if name == "storm-200x10":
            met = met and ours["p99_ms"] is not None and ours["p99_ms"] <= 100
        row(
            f"{rooms * clients:,} connections into {rooms:,} new rooms: seconds until all "
            f"welcomed <= {bound_s:g} s"
            + (" with handshake p99 <= 100 ms" if name == "storm-200x10" else "")
            + f" (ours: p99 {ours['p99_ms']:,.0f} ms, {ours['failed']} failed)",
            base_kind or "-",
            base,
            ours["wall_s"],
            _ratio(ours["wall_s"], base),
            met,
        )
    for name, (rooms, clients) in AWAKE.items():
        section = results.get(name)
        if not section or "rooms" not in section:
            continue
        # Idle: at the end of the hold, once the connect burst's buffers are gone; every room
        # is still awake then (no hibernation during the hold), with its database open.
        ours = section["rooms"]["rss_per_connection_kb_at_end"]
        base = section.get("websockets", {}).get("rss_per_connection_kb_at_end")
        r = _ratio(ours, base)
        row(
            f"idle memory per connection, {rooms:,} rooms x {clients:,}, rooms awake, KiB, at "
            f"the end of a {AWAKE_HOLD_S:g}-s hold (<= 1.5x)",
            "websockets",
            base,
            ours,
            r,
            None if r is None else r <= 1.5,
        )
    return rows


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def markdown(results: dict[str, Any]) -> Iterator[str]:
    rows = headline(results)
    if rows:
        yield "### Issue 10's targets (local runtime; server and generator pinned to a core each)"
        yield ""
        yield "Ratio: ours / the baseline's figure (for seconds and KiB, lower is better)."
        yield ""
        yield "| target | baseline | baseline's figure | ours | ratio | met |"
        yield "|---|---|---|---|---|---|"
        for r in rows:
            met = "n/a" if r["met"] is None else ("yes" if r["met"] else "**no**")
            yield (
                f"| {r['target']} | {r['baseline']} | {_cell(r['base'])} | {_cell(r['ours'])} "
                f"| {_cell(r['ratio'])} | {met} |"
            )
    for name in LADDERS:
        section = results.get(name)
        if not section:
            continue
        yield ""
        yield f"Steps of {name} (open loop; within bound: kept up and p99 <= 50 ms):"
        yield ""
        yield (
            "| server | msg/s/room | offered del/s | delivered/s | p50 / p99 ms | server CPU s "
            "| del per CPU-s | within bound | gen | other CPU s | order |"
        )
        yield "|---|---|---|---|---|---|---|---|---|---|---|"
        for kind, data in section.items():
            steps = [data] if kind == "half" else data["steps"]
            for s in steps:
                label = "rooms (half)" if kind == "half" else kind
                yield (
                    f"| {label} | {s['rate_per_room']:g} | {s['offered_per_s']:,.0f} | "
                    f"{_cell(s['deliveries_per_s'])} | {_cell(s['p50_ms'])} / "
                    f"{_cell(s['p99_ms'])} | {_cell(s['server_cpu_s'])} | "
                    f"{_cell(s['per_cpu_s'])} | {'yes' if s['within_bound'] else 'no'} | "
                    f"{_cell(s['generator_util'])} | {_cell(s['other_cpu_s'])} | "
                    f"{'ok' if s['order_ok'] else '**FAILED**'} |"
                )
    storms = [(n, results[n]) for n in STORMS if results.get(n)]
    if storms:
        yield ""
        yield (
            "| connect storm | server | connected | failed | seconds to all welcomed | "
            "handshake p50 / p99 ms | server CPU s |"
        )
        yield "|---|---|---|---|---|---|---|"
        for name, section in storms:
            for kind, s in section.items():
                yield (
                    f"| {name} | {kind} | {_cell(s['connections'])} | {_cell(s['failed'])} | "
                    f"{_cell(s['wall_s'])} | {_cell(s['p50_ms'])} / {_cell(s['p99_ms'])} | "
                    f"{_cell(s['server_cpu_s'])} |"
                )
    awake = [(n, results[n]) for n in AWAKE if results.get(n)]
    if awake:
        yield ""
        yield (
            "| awake memory | server | connections | RSS per connection KiB (connected / end "
            "of hold) | peak RSS MB |"
        )
        yield "|---|---|---|---|---|"
        for name, section in awake:
            for kind, s in section.items():
                yield (
                    f"| {name} | {kind} | {_cell(s['connections'])} | "
                    f"{_cell(s['rss_per_connection_kb'])} / "
                    f"{_cell(s['rss_per_connection_kb_at_end'])} | {_cell(s['peak_rss_mb'])} |"
                )

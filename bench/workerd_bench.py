"""The Worker in the real workerd (`wrangler dev`, offline), against a JS baseline, same generator.

Every shape runs twice in the same run, one after the other: on our Python Worker and on the JS
baseline (bench/baselines/workerd-js: a JavaScript Worker and Durable Object doing the work of
Cloudflare's chat demo: the WebSocket Hibernation API, one SQLite write per message, a
broadcast), each on its own fresh `wrangler dev` (fresh state: for ours D1 migrated, no rooms),
pinned with taskset to one core (wrangler's node process and both workerd processes: the proxy
and the Worker's), with the generator pinned to the other core. Every step of a sweep uses new
room names, so each step's rooms are new objects in the same process.

Figures, for ours, the baseline and their ratio:

- fan-out, open loop: the highest rate (deliveries/s) with p99 publish-to-delivery <= 50 ms, and
  the highest rate kept up (deliveries within 5% of offered, drained), for 1 x 100 and 100 x 10;
- deliveries per CPU-second: CPU of the whole wrangler process tree (/proc) while sending, at
  the highest rate kept up, and at the highest rate both kept up;
- connect storms into new rooms: 1,000 clients into 100 rooms, 100 clients into 1 room.

`JS_DEMO` keeps the figures of Cloudflare's demo itself, measured by hand before the baseline
existed, for a footnote.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "local"), str(ROOT / "src")]

from loadtest.runner import process_tree  # noqa: E402
from workerd.wrangler import (  # noqa: E402
    Toolchain,
    apply_migrations,
    dev_args,
    free_port,
    read_jsonc,
)

JS_BASELINE = ROOT / "bench" / "baselines" / "workerd-js"
SERVER_CORE = "1"
GENERATOR_CORE = "0"
P99_BOUND_MS = 50.0
# Cloudflare's JS chat demo (a storage write per message), measured by hand on this machine the
# same way before bench/baselines/workerd-js existed: only a footnote now.
JS_DEMO: dict[str, Any] = {
    "fanout-1x100": {
        "max_at_p99_50ms": 10_000,
        "p50_ms": 12.7,
        "kept_up": 14_000,
        "per_cpu_s": 14_800,
    },
    "fanout-100x10": {"max_at_p99_50ms": 2_000, "kept_up": None, "per_cpu_s": 4_600},
    "storm-100x10": {"wall_s": 4.9},
    "storm-1x100": {"wall_s": 1.0},
}
# msg/s per room for each step of the open-loop ladders (deliveries/s = rate x rooms x clients).
LADDERS = {
    "fanout-1x100": (1, 100, 10, (10, 20, 40, 60, 80, 100, 120, 140, 170, 200)),
    "fanout-100x10": (100, 10, 1, (0.5, 1, 2, 3, 4, 5, 6, 8, 10, 14)),
}
# Connect storms into new rooms: rooms x clients.
STORMS = {"storm-100x10": (100, 10), "storm-1x100": (1, 100)}


def tree_cpu_s(root: int) -> float:
    total = 0.0
    for pid in process_tree(root):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def snapshot(root: Path, target: Path) -> Path:
    """A copy of ``root``'s src/ and wrangler.jsonc, with the rest of what wrangler reads linked."""
    if target.exists():
        return target
    target.mkdir(parents=True)
    shutil.copytree(root / "src", target / "src", ignore=shutil.ignore_patterns("__pycache__"))
    # The storms open hundreds of new rooms a minute from one address: the NEW_ROOMS budget
    # (docs/protocol.md#rooms) would refuse them, so the bench's copy lifts it.
    config = read_jsonc(root / "wrangler.jsonc")
    for binding in config.get("ratelimits", []):
        binding["simple"]["limit"] = 1_000_000
    (target / "wrangler.jsonc").write_text(json.dumps(config, indent=2))
    for name in ("public", "migrations", "python_modules", "node_modules", "package.json"):
        (target / name).symlink_to((root / name).resolve())
    return target


def cpu_by_process(root: int) -> dict[str, float]:
    """CPU seconds of each process in ``root``'s tree, keyed by command name and pid."""
    out: dict[str, float] = {}
    for pid in process_tree(root):
        try:
            with open(f"/proc/{pid}/stat") as f:
                head, _, rest = f.read().rpartition(")")
        except OSError:
            continue
        fields = rest.split()
        name = head.partition("(")[2]
        out[f"{name}:{pid}"] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


@dataclass
class Workerd:
    """One pinned `wrangler dev` serving the Worker."""

    port: int
    proc: subprocess.Popen[bytes]
    log: Path
    started: float
    inspector_port: int

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid


class WorkerdFarm:
    """Starts pinned `wrangler dev`s on fresh state: our Worker, or the JS baseline."""

    def __init__(
        self,
        workdir: Path,
        variables: dict[str, str],
        root: Path = ROOT,
        *,
        baseline: bool = False,
        baseline_root: Path = JS_BASELINE,
        label: str | None = None,
    ) -> None:
        self.tools = Toolchain.installed()
        self.baseline = baseline
        self.label = label or ("js" if baseline else "ours")
        self.workdir = workdir / self.label
        self.workdir.mkdir(parents=True, exist_ok=True)
        # wrangler dev rebuilds and reloads the Worker whenever a file under src/ changes, so it
        # serves a snapshot of the project: edits made meanwhile never restart a measurement.
        if baseline:
            self.root = self.workdir / "project"
            if not self.root.exists():
                ignore = shutil.ignore_patterns(".wrangler")
                shutil.copytree(baseline_root, self.root, ignore=ignore)
        else:
            self.root = snapshot(root, self.workdir / "project")
        self.variables = variables
        self.template = self.workdir / "workerd-template"
        self.count = 0
        self.pin = shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2

    def _state(self) -> Path:
        self.count += 1
        state = self.workdir / f"workerd-state-{self.count}"
        if self.baseline:  # no D1: an empty directory
            state.mkdir()
            return state
        if not self.template.exists():
            apply_migrations(self.tools, self.template)
        shutil.copytree(self.template, state)
        return state

    def _args(self, port: int, state: Path, env_file: Path) -> list[str]:
        if not self.baseline:
            return dev_args(port, state, env_file=env_file)
        # The JS baseline needs none of the Python flags dev_args adds; the rest is the same.
        args = ["dev", "--ip", "127.0.0.1", "--port", str(port), "--persist-to", str(state)]
        args += ["--inspector-port", str(free_port()), "--show-interactive-dev-session=false"]
        return [*args, "--live-reload=false", "--env-file", str(env_file)]

    @contextlib.contextmanager
    def running(self) -> Iterator[Workerd]:
        state = self._state()
        env_file = self.workdir / "workerd.env"
        env_file.write_text("".join(f"{k}='{v}'\n" for k, v in self.variables.items()))
        port = free_port()
        args = self._args(port, state, env_file)
        inspector_port = int(args[args.index("--inspector-port") + 1])
        cmd = self.tools.wrangler_command(*args)
        if self.pin:
            cmd = ["taskset", "-c", SERVER_CORE, *cmd]
        log = self.workdir / f"workerd-{self.count}.log"
        started = time.monotonic()
        with log.open("ab") as sink:
            proc = subprocess.Popen(
                cmd,
                cwd=self.root,
                env=self.tools.env(),
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        server = Workerd(port, proc, log, started, inspector_port)
        try:
            _wait_health(server)
            yield server
        finally:
            _stop(server)


def start_fanout(
    server: Workerd,
    secret: str,
    out: Path,
    *,
    pin: bool,
    rooms: int,
    clients: int,
    senders: int,
    rate: float,
    duration: float,
) -> subprocess.Popen[bytes]:
    """`rooms loadtest fanout` against ``server`` at a fixed open-loop rate (``rate`` messages
    per second per room, 100-character bodies), on the generator's core when ``pin``, its log
    and results in ``out``. Returns once the generator has begun sending."""
    cmd = [sys.executable, "-m", "loadtest", "fanout", "--url", server.url, "--secret", secret]
    cmd += ["--rooms", str(rooms), "--clients", str(clients), "--senders", str(senders)]
    cmd += ["--rate", str(rate), "--size", "100", "--duration", str(duration)]
    cmd += ["--progress", "plain", "--out", str(out), "--server-pid", str(server.pid)]
    cmd += ["--connect-timeout", "60"]
    if pin:
        cmd = ["taskset", "-c", GENERATOR_CORE, *cmd]
    env = {"PYTHONPATH": f"{ROOT / 'src'}:{ROOT / 'local'}", "PATH": "/usr/bin:/bin"}
    log = out / "loadtest.log"
    with log.open("wb") as sink:
        generator = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=sink, stderr=sink)
    deadline = time.monotonic() + 120
    while "sending" not in log.read_text(errors="replace"):
        if generator.poll() is not None or time.monotonic() > deadline:
            print(log.read_text(errors="replace")[-3000:])
            raise SystemExit(f"the generator never started sending: see {log}")
        time.sleep(0.2)
    return generator


def _wait_health(server: Workerd, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"wrangler dev exited: see {server.log}")
        with contextlib.suppress(OSError, urllib.error.URLError):
            url = f"http://127.0.0.1:{server.port}/health"
            with urllib.request.urlopen(url, timeout=5) as reply:
                if reply.status == 200:
                    return
        time.sleep(0.25)
    raise TimeoutError(f"wrangler dev did not answer /health: see {server.log}")


def _stop(server: Workerd) -> None:
    proc = server.proc
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(15)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


# --------------------------------------------------------------------------- runs


LoadtestFn = Callable[[Workerd, str, str, list[str]], dict[str, Any]]


def step_summary(result: dict[str, Any], offered: float, cpu_s: float) -> dict[str, Any]:
    d = result["delivery"]
    in_window = d["in_window"] or 0
    lat = d["latency_ms"]
    kept_up = (
        d["per_s"] is not None
        and d["per_s"] >= 0.95 * offered
        and d["deliveries"] >= 0.999 * (d["expected"] or 0)
    )
    return {
        "offered_per_s": offered,
        "deliveries_per_s": d["per_s"],
        "deliveries": d["deliveries"],
        "expected": d["expected"],
        "p50_ms": lat["p50"],
        "p99_ms": lat["p99"],
        "max_ms": lat.get("max"),
        "cpu_s_sending": round(cpu_s, 2),
        # Runnable but waiting for the pinned core (other processes on it): a step not kept up
        # with a wait near its CPU was starved by the machine, not by its own work.
        "cpu_wait_s_sending": result.get("server", {}).get("cpu_wait_s_sending"),
        "per_cpu_s": round(in_window / cpu_s) if cpu_s and in_window else None,
        "kept_up": kept_up,
        "order_ok": result["order"]["ok"],
        "errors": result["errors"],
        "generator_util": result["generator"]["cpu_util_sending"],
    }


def sweep(
    farm: WorkerdFarm,
    name: str,
    duration: float,
    loadtest: LoadtestFn,
    log: Callable[[dict[str, Any]], None],
    rates: tuple[float, ...] | None = None,
) -> dict[str, Any]:
    """One open-loop ladder on one fresh `wrangler dev`; stops at the second step not kept up."""
    rooms, clients, senders, ladder = LADDERS[name]
    steps: list[dict[str, Any]] = []
    misses = 0
    with farm.running() as server:
        for rate in rates or ladder:
            offered = rate * rooms * clients
            args = [
                "--rooms", str(rooms), "--clients", str(clients), "--senders", str(senders),
                "--rate", str(rate), "--duration", str(duration), "--size", "100",
                "--concurrency", "100", "--connect-timeout", "60", "--drain-timeout", "15",
                "--room-prefix", f"{name}-{rate:g}-",
            ]  # fmt: skip
            run_name = f"{farm.label}-workerd-{name}-{rate:g}".replace(".", "p")
            result = loadtest(server, "fanout", run_name, args)
            step = step_summary(result, offered, result.get("server", {}).get("cpu_s_sending", 0))
            step["rate_per_room"] = rate
            steps.append(step)
            log({"scenario": f"workerd {name} {rate:g}/s/room", "server": farm.label, **step})
            # Past the latency bound, on up to the rate it no longer keeps up with.
            if not step["kept_up"]:
                misses += 1
                if misses >= 2:
                    break
    within = [s for s in steps if s["p99_ms"] is not None and s["p99_ms"] <= P99_BOUND_MS]
    within = [s for s in within if s["kept_up"]]
    kept = [s for s in steps if s["kept_up"]]
    best = max(within, key=lambda s: s["offered_per_s"], default=None)
    top = max(kept, key=lambda s: s["offered_per_s"], default=None)
    return {
        "scenario": f"workerd {name}",
        "server": farm.label,
        "steps": steps,
        "max_at_p99_50ms": best["deliveries_per_s"] if best else None,
        "p50_at_max_ms": best["p50_ms"] if best else None,
        "kept_up": top["deliveries_per_s"] if top else None,
        "per_cpu_s": top["per_cpu_s"] if top else None,
        "order_ok": all(s["order_ok"] for s in steps),
    }


def storm(
    farm: WorkerdFarm,
    rooms: int,
    clients: int,
    loadtest: LoadtestFn,
    log: Callable[[dict[str, Any]], None],
) -> dict[str, Any]:
    """Connect ``rooms`` x ``clients`` into new rooms as fast as 100 handshakes in flight allow."""
    name = f"storm-{rooms}x{clients}"
    with farm.running() as server:
        args = [
            "--rooms", str(rooms), "--clients", str(clients), "--concurrency", "100",
            "--connect-timeout", "60", "--room-prefix", f"{name}-",
        ]  # fmt: skip
        cpu_before = tree_cpu_s(server.pid)
        result = loadtest(server, "connect-storm", f"{farm.label}-workerd-{name}", args)
        cpu = tree_cpu_s(server.pid) - cpu_before
    c = result["connect"]
    row = {
        "scenario": f"workerd {name}",
        "server": farm.label,
        "connections": c["ok"],
        "failed": c["failed"],
        "wall_s": c["wall_s"],
        "connect_ms": c["time_ms"],
        "cpu_s": round(cpu, 2),
        "order_ok": c["failed"] == 0,
    }
    log(row)
    return row


def run_parts(
    farms: list[WorkerdFarm],
    parts: tuple[str, ...],
    duration: float,
    loadtest: LoadtestFn,
    log: Callable[[dict[str, Any]], None],
) -> dict[str, Any]:
    """Each part on each farm (ours, then the JS baseline), one fresh `wrangler dev` each."""
    section: dict[str, Any] = {"pinned": all(f.pin for f in farms), "js_demo_by_hand": JS_DEMO}
    for part in parts:
        runs: dict[str, Any] = {}
        for farm in farms:
            if part in LADDERS:
                runs[farm.label] = sweep(farm, part, duration, loadtest, log)
            elif part in STORMS:
                runs[farm.label] = storm(farm, *STORMS[part], loadtest, log)
            else:
                raise ValueError(part)
        runs["order_ok"] = all(run["order_ok"] for run in runs.values())
        section[part] = runs
    return section


def same_rate(
    ours: dict[str, Any], js: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The steps of both sweeps at the highest rate both kept up with, if any."""
    theirs = {s["rate_per_room"]: s for s in js["steps"] if s["kept_up"]}
    both = [
        (s, theirs[s["rate_per_room"]])
        for s in ours["steps"]
        if s["kept_up"] and s["rate_per_room"] in theirs
    ]
    return max(both, key=lambda pair: pair[0]["rate_per_room"], default=None)


def _fmt(v: Any) -> str:
    if v is None:
        return "none"
    return f"{v:,.0f}" if isinstance(v, int | float) and v >= 100 else f"{v}"


def _ratio(ours: Any, js: Any) -> str:
    if not ours or not js:
        return "-"
    return f"{ours / js:.2f}"


def markdown(section: dict[str, Any]) -> list[str]:
    """The "On real workerd" tables for the generated part of BENCHMARKS.md."""
    lines = [
        "",
        "### On real workerd (`wrangler dev`)",
        "",
        "Our Worker and the JS baseline (`bench/baselines/workerd-js`: a JavaScript Worker and "
        "Durable Object doing the work of Cloudflare's chat demo: Hibernation API, one SQLite "
        "write per message, a broadcast) in the same run, on the same pinned wrangler and "
        "workerd, one after the other for each shape. workerd pinned to one core, the generator "
        "to the other; open loop, 100-character bodies, latency from the intended send time; one "
        "fresh `wrangler dev` per sweep. CPU is the whole wrangler process tree's while sending. "
        "The ratio column is ours / JS: above 1 is better for deliveries, below 1 for seconds "
        "and CPU per connection.",
        "",
        "| shape | figure | ours | JS baseline | ours / JS |",
        "|---|---|---|---|---|",
    ]
    for name, label in (("fanout-1x100", "1 x 100"), ("fanout-100x10", "100 x 10")):
        runs = section.get(name)
        if runs is None:
            continue
        ours, js = runs["ours"], runs["js"]

        def p50(run: dict[str, Any]) -> str:
            at = run.get("p50_at_max_ms")
            return f" (p50 {at:.1f} ms)" if at else ""

        lines.append(
            f"| {label} | max deliveries/s at p99 <= 50 ms | {_fmt(ours['max_at_p99_50ms'])}"
            f"{p50(ours)} | {_fmt(js['max_at_p99_50ms'])}{p50(js)} | "
            f"{_ratio(ours['max_at_p99_50ms'], js['max_at_p99_50ms'])} |"
        )
        lines.append(
            f"| {label} | highest rate kept up, deliveries/s | {_fmt(ours['kept_up'])} | "
            f"{_fmt(js['kept_up'])} | {_ratio(ours['kept_up'], js['kept_up'])} |"
        )
        lines.append(
            f"| {label} | deliveries per CPU-second there | {_fmt(ours['per_cpu_s'])} | "
            f"{_fmt(js['per_cpu_s'])} | {_ratio(ours['per_cpu_s'], js['per_cpu_s'])} |"
        )
        pair = same_rate(ours, js)
        if pair is not None:
            a, b = pair
            lines.append(
                f"| {label} | deliveries per CPU-second at the same rate "
                f"({a['offered_per_s']:,.0f}/s, the highest both kept up) | "
                f"{_fmt(a['per_cpu_s'])} | {_fmt(b['per_cpu_s'])} | "
                f"{_ratio(a['per_cpu_s'], b['per_cpu_s'])} |"
            )
    for name, label in (
        ("storm-100x10", "1,000 clients into 100 new rooms"),
        ("storm-1x100", "100 clients into 1 new room"),
    ):
        runs = section.get(name)
        if runs is None:
            continue
        ours, js = runs["ours"], runs["js"]

        def connected(run: dict[str, Any]) -> str:
            c = run["connect_ms"]
            return f"{run['wall_s']:.2f} ({c['p50']:.0f} / {c['p99']:.0f}; {run['failed']} failed)"

        def per_conn(run: dict[str, Any]) -> float | None:
            n = run["connections"]
            return round(1000 * run["cpu_s"] / n, 1) if n else None

        lines.append(
            f"| {label} | seconds to connect all (handshake p50 / p99 ms) | {connected(ours)} | "
            f"{connected(js)} | {_ratio(ours['wall_s'], js['wall_s'])} |"
        )
        lines.append(
            f"| {label} | CPU ms per connection | {_fmt(per_conn(ours))} | {_fmt(per_conn(js))} "
            f"| {_ratio(per_conn(ours), per_conn(js))} |"
        )
    demo = JS_DEMO
    lines += [
        "",
        "Measured by hand before the baseline existed (issue 15), Cloudflare's own chat demo on "
        "this machine: 1 x 100 "
        f"{demo['fanout-1x100']['per_cpu_s']:,} deliveries per CPU-second at "
        f"{demo['fanout-1x100']['kept_up']:,}/s, 100 x 10 "
        f"{demo['fanout-100x10']['per_cpu_s']:,}, 1,000 clients into 100 rooms "
        f"{demo['storm-100x10']['wall_s']} s, 100 into 1 room {demo['storm-1x100']['wall_s']} s.",
    ]
    for name in LADDERS:
        runs = section.get(name)
        if runs is None:
            continue
        lines += [
            "",
            f"Steps of the {name} sweep (CPU s: the wrangler tree's while sending; CPU wait s: how "
            "long its threads were runnable but waiting for the core, i.e. other processes had "
            "it; a step not kept up with a large wait was starved by the machine):",
            "",
            "| server | msg/s/room | offered del/s | delivered/s | p50 / p99 / max ms | CPU s "
            "| CPU wait s | del per CPU-s | kept up | order |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for label in ("ours", "js"):
            for s in runs[label]["steps"]:
                lines.append(
                    f"| {label} | {s['rate_per_room']:g} | {s['offered_per_s']:,.0f} | "
                    f"{(s['deliveries_per_s'] or 0):,.0f} | {s['p50_ms']} / {s['p99_ms']} / "
                    f"{s['max_ms']} | {s['cpu_s_sending']} | {_fmt(s.get('cpu_wait_s_sending'))} | "
                    f"{_fmt(s['per_cpu_s'])} | "
                    f"{'yes' if s['kept_up'] else 'no'} | "
                    f"{'ok' if s['order_ok'] else '**FAILED**'} |"
                )
    return lines


def dump(section: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(section, indent=2) + "\n")

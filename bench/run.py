"""`make bench`: fixed load scenarios against the local runtime and two baselines, same run.

Servers, each started fresh for every scenario on 127.0.0.1:
  rooms       the local runtime (`python -m roomsd serve`): every message stored in SQLite
              (WAL, one commit per publish) before anyone sees it
  websockets  bench/baselines/ws_broadcast.py: plain `websockets`, in-memory broadcast
  node        bench/baselines/node/server.js: Node.js `ws`, in-memory broadcast

The generator is `loadtest` (the `rooms loadtest` CLI) in a separate process. Each run records
the generator's JSON result plus the server's CPU seconds and peak RSS (from /proc) and the CPU
other processes used meanwhile (this machine is shared: noisy runs are flagged, not hidden).
Writes bench/results/latest.json, bench/results/latest.md, the raw runs under
bench/results/runs/, and refreshes the generated part of BENCHMARKS.md.

    make bench                          # everything (about 6-8 minutes on 2 cores)
    .venv/bin/python bench/run.py --only fanout-1x100 --servers rooms,websockets
    .venv/bin/python bench/run.py --profile    # also py-spy profiles of the runtime
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.util
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import targets

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
PYTHON = sys.executable
ENV = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}:{ROOT / 'local'}"}
SECRET = "bench-secret-that-is-long-enough-for-hs256-0123456789"
ADMIN_TOKEN = "bench-admin-token-that-is-long-enough-0123456789"
# Generous limits so that the rate limiter never shapes a benchmark; everything else default.
# The generator is one address: the per-address cap (docs/protocol.md#limits) must not count it.
ROOM_LIMITS = {
    "messages_per_second": 1_000_000,
    "burst": 1_000_000,
    "max_sockets_per_address": 100_000,
}
SERVERS = ("rooms", "websockets", "node")
# rooms-uvloop: the runtime on uvloop; rooms-each: with one commit per message instead of the
# group commit (ROOMS_COMMIT_EACH_MESSAGE=1), for issue 10's comparison (bench/targets.py).
EXPERIMENTS = ("rooms-uvloop", "rooms-each")
ROOMS_KINDS = ("rooms", *EXPERIMENTS)
# As in issue 10 (and bench/workerd_bench.py): the server on one core, the generator on the
# other, so that neither takes the other's CPU. Off on a machine with one core or no taskset.
PIN = (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None
SERVER_CORE, GENERATOR_CORE = "1", "0"
UVLOOP_ROOMS = (
    "import asyncio, sys, uvloop; asyncio.set_event_loop_policy(uvloop.EventLoopPolicy()); "
    "from roomsd.cli import main; sys.exit(main(sys.argv[1:]))"
)
HIBERNATE_AFTER_S = 2.0
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
WORKERD_BEGIN, WORKERD_END = "<!-- bench-workerd:begin -->", "<!-- bench-workerd:end -->"
# The generator runs on uvloop when the bench group is installed (the servers never do).
UVLOOP = importlib.util.find_spec("uvloop") is not None


# --------------------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def proc_cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_mem_mb(pid: int) -> tuple[float, float]:
    """(current RSS, peak RSS) in MiB."""
    values: dict[str, float] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) / 1024
    return values.get("VmRSS", 0.0), values.get("VmHWM", 0.0)


def machine_busy_s() -> float:
    """CPU seconds all processes of this machine have used (from /proc/stat)."""
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    idle = parts[3] + parts[4]  # idle + iowait
    return (sum(parts[:8]) - idle) / os.sysconf("SC_CLK_TCK")


@dataclass
class Server:
    kind: str
    port: int
    proc: subprocess.Popen[bytes]
    data_dir: Path | None
    started: float
    log: Path

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid


def start_server(
    kind: str,
    workdir: Path,
    data_dir: Path | None = None,
    hibernate_after_s: float = HIBERNATE_AFTER_S,
) -> Server:
    port = free_port()
    log = workdir / f"{kind}-{port}.log"
    env = {k: v for k, v in ENV.items() if k not in ("ROOM_LIMITS", "JWT_SECRET")}
    if kind in ROOMS_KINDS:
        data_dir = data_dir or workdir / f"data-{port}"
        dev_vars = workdir / "dev.vars"
        dev_vars.write_text(
            f"JWT_SECRET={SECRET}\nADMIN_TOKEN={ADMIN_TOKEN}\nROOM_LIMITS={json.dumps(ROOM_LIMITS)}\n"
            # One generator opens every new room of a storm from one address and a few users,
            # and holds thousands of sockets from that address: the new-room budget and the
            # per-address connection cap (docs/security.md) would refuse most of them.
            "NEW_ROOMS_PER_MINUTE=1000000\nMAX_CONNECTIONS_PER_ADDRESS=1000000\n"
        )
        # rooms-uvloop (an experiment, not a default): the same runtime on uvloop's event loop.
        launcher = ["-c", UVLOOP_ROOMS] if kind == "rooms-uvloop" else ["-m", "roomsd"]
        if kind == "rooms-each":
            env["ROOMS_COMMIT_EACH_MESSAGE"] = "1"
        cmd = [
            PYTHON,
            *launcher,
            "--dev-vars",
            str(dev_vars),
            "serve",
            "--port",
            str(port),
            "--data-dir",
            str(data_dir),
            "--hibernate-after",
            str(hibernate_after_s),
        ]
    elif kind == "websockets":
        cmd = [PYTHON, str(BENCH / "baselines" / "ws_broadcast.py"), "--port", str(port)]
    elif kind == "node":
        cmd = ["node", str(BENCH / "baselines" / "node" / "server.js"), "--port", str(port)]
    else:
        raise ValueError(kind)
    if PIN:
        cmd = ["taskset", "-c", SERVER_CORE, *cmd]
    started = time.monotonic()
    with log.open("ab") as sink:
        proc = subprocess.Popen(cmd, env=env, stdout=sink, stderr=sink, cwd=ROOT)
    server = Server(kind, port, proc, data_dir, started, log)
    wait_listening(server)
    return server


def wait_listening(server: Server, timeout_s: float = 20.0) -> float:
    """Seconds from the server's start until it accepts TCP connections."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"{server.kind} exited: see {server.log}")
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", server.port), 0.2),
        ):
            return time.monotonic() - server.started
        time.sleep(0.01)
    raise RuntimeError(f"{server.kind} did not listen within {timeout_s}s: see {server.log}")


def stop_server(server: Server) -> None:
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
        try:
            server.proc.wait(10)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait()


@contextlib.contextmanager
def running(
    kind: str,
    workdir: Path,
    data_dir: Path | None = None,
    hibernate_after_s: float = HIBERNATE_AFTER_S,
) -> Iterator[Server]:
    server = start_server(kind, workdir, data_dir, hibernate_after_s)
    try:
        yield server
    finally:
        stop_server(server)


# --------------------------------------------------------------------------- load runs


@dataclass
class Run:
    scenario: str
    server: str
    result: dict[str, Any]
    server_cpu_s: float
    server_peak_rss_mb: float
    other_cpu_s: float
    generator_cpu_s: float
    wall_s: float
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        r = self.result
        delivery, server = r["delivery"], r.get("server", {})
        per_s = delivery["per_s"]
        cpu_sending = server.get("cpu_s_sending")
        in_window = delivery["in_window"]
        return {
            "scenario": self.scenario,
            "server": self.server,
            "ok": r["ok"],
            "order_ok": r["order"]["ok"],
            "connections": r["connect"]["ok"],
            "connect_failed": r["connect"]["failed"],
            "connects_per_s": r["connect"]["per_s"],
            "connect_ms": r["connect"]["time_ms"],
            "presence_mb": r["connect"].get("presence_mb"),
            "deliveries_per_s": per_s,
            "acked_per_s": r["publish"]["acked_per_s"],
            "latency_ms": delivery["latency_ms"],
            "send_lag_p99_ms": r["publish"]["send_lag_ms"]["p99"],
            "errors": r["errors"],
            "server_cpu_s": round(self.server_cpu_s, 2),
            "server_cpu_s_sending": cpu_sending,
            "server_util_sending": server.get("cpu_util_sending"),
            "server_cpu_us_per_delivery": round(cpu_sending * 1e6 / in_window, 2)
            if cpu_sending and in_window
            else None,
            "server_peak_rss_mb": round(self.server_peak_rss_mb, 1),
            "rss_per_connection_kb": server.get("rss_per_connection_kb"),
            "rss_per_connection_kb_at_end": server.get("rss_per_connection_kb_at_end"),
            "generator_cpu_s": round(self.generator_cpu_s, 2),
            "generator_util_sending": r["generator"]["cpu_util_sending"],
            "other_cpu_s": round(self.other_cpu_s, 2),
            "wall_s": round(self.wall_s, 1),
            "wake_probe": r.get("wake_probe"),
            "reconnect": r["reconnect"],
            **self.extra,
        }


def loadtest(server: Server, scenario: str, name: str, args: list[str], runs_dir: Path) -> Run:
    cmd = [
        PYTHON,
        "-m",
        "loadtest",
        scenario,
        "--url",
        server.url,
        "--secret",
        SECRET,
        "--server-pid",
        str(server.pid),
        "--out",
        str(runs_dir),
        "--name",
        name,
        "--progress",
        "none",
        *(["--uvloop"] if UVLOOP else []),
        *args,
    ]
    if PIN:
        cmd = ["taskset", "-c", GENERATOR_CORE, *cmd]
    cpu_before = proc_cpu_s(server.pid)
    busy_before = machine_busy_s()
    started = time.monotonic()
    log_path = runs_dir / f"{name}.log"
    with log_path.open("wb") as sink:
        proc = subprocess.Popen(cmd, env=ENV, cwd=ROOT, stdout=sink, stderr=sink)
    _, status, usage = os.wait4(proc.pid, 0)  # wait4: the generator's CPU use, children included
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - started
    busy = machine_busy_s() - busy_before
    server_cpu = proc_cpu_s(server.pid) - cpu_before
    _, peak = proc_mem_mb(server.pid)
    path = runs_dir / f"{name}.json"
    if not path.exists():
        sys.stderr.write(log_path.read_text(errors="replace")[-4000:])
        raise RuntimeError(f"loadtest {name} wrote no result (exit {proc.returncode})")
    result = json.loads(path.read_text())
    # The generator's children (worker processes) are included in wait4's usage when joined.
    gen_cpu = usage.ru_utime + usage.ru_stime
    other = max(0.0, busy - server_cpu - gen_cpu)
    return Run(scenario, server.kind, result, server_cpu, peak, other, gen_cpu, wall)


# --------------------------------------------------------------------------- scenarios


@dataclass(frozen=True)
class Scale:
    duration: float = 8.0
    idle_rooms: int = 1000
    idle_clients: int = 10
    idle_hold: float = 15.0
    storm_rooms: int = 20
    storm_clients: int = 100
    workerd_duration: float = 5.0


def fanout_args(rooms: int, clients: int, senders: int, duration: float, load: str) -> list[str]:
    base = [
        "--rooms",
        str(rooms),
        "--clients",
        str(clients),
        "--senders",
        str(senders),
        "--duration",
        str(duration),
        "--size",
        "64",
        "--concurrency",
        "200",
    ]
    return base + load.split()


FANOUTS = {
    # name: rooms, clients per room, senders per room, closed-loop window per sender
    "fanout-1x100": (1, 100, 10, 16),
    "fanout-100x10": (100, 10, 1, 16),
}


def run_fanout(
    name: str, servers: list[str], scale: Scale, workdir: Path, runs: Path, log: Any
) -> list[Run]:
    rooms, clients, senders, window = FANOUTS[name]
    out: list[Run] = []
    saturation: dict[str, Run] = {}
    for kind in servers:
        with running(kind, workdir) as server:
            args = fanout_args(rooms, clients, senders, scale.duration, f"--window {window}")
            run = loadtest(server, "fanout", f"{name}-saturate-{kind}", args, runs)
            run.scenario = f"{name} saturate"
            saturation[kind] = run
            out.append(run)
            log(run)
    # Half of the local runtime's saturation rate, open loop, the same rate for every server.
    base = saturation.get("rooms") or next(iter(saturation.values()))
    acked = base.result["publish"]["acked_per_s"] or 0
    rate_per_room = max(1.0, round(acked / 2 / rooms, 1))
    for kind in servers:
        with running(kind, workdir) as server:
            args = fanout_args(rooms, clients, senders, scale.duration, f"--rate {rate_per_room}")
            run = loadtest(server, "fanout", f"{name}-half-{kind}", args, runs)
            run.scenario = f"{name} half-rate"
            run.extra["rate_per_room"] = rate_per_room
            out.append(run)
            log(run)
    if "rooms" in servers:  # and a quarter, for the runtime: where does the latency knee sit?
        quarter = max(1.0, round(rate_per_room / 2, 1))
        with running("rooms", workdir) as server:
            args = fanout_args(rooms, clients, senders, scale.duration, f"--rate {quarter}")
            run = loadtest(server, "fanout", f"{name}-quarter-rooms", args, runs)
            run.scenario = f"{name} quarter-rate"
            run.extra["rate_per_room"] = quarter
            out.append(run)
            log(run)
    return out


def run_idle(servers: list[str], scale: Scale, workdir: Path, runs: Path, log: Any) -> list[Run]:
    out: list[Run] = []
    args = [
        "--rooms",
        str(scale.idle_rooms),
        "--clients",
        str(scale.idle_clients),
        "--duration",
        str(scale.idle_hold),
        "--concurrency",
        "200",
        "--connect-timeout",
        "30",
        "--wake-probe",
        "100",
        "--room-prefix",
        "idle-",
    ]
    for kind in servers:
        data_dir = workdir / "idle-data" if kind == "rooms" else None
        with running(kind, workdir, data_dir) as server:
            rss_start, _ = proc_mem_mb(server.pid)
            run = loadtest(server, "idle", f"idle-{kind}", args, runs)
            run.scenario = "idle"
            run.extra["rss_start_mb"] = round(rss_start, 1)
            out.append(run)
            log(run)
    return out


def measure_restart(workdir: Path, log: Any) -> dict[str, Any]:
    """Restart the runtime on the idle scenario's data (1,000 rooms on disk): time to serve.

    As installed by `make setup` (site-packages compiled by uv, our modules by compileall),
    three starts, after a pause that lets the previous run's 10,000 sockets finish closing;
    and once with no bytecode at all (every module compiled from source), for scale.
    """
    data_dir = workdir / "idle-data"
    result: dict[str, Any] = {
        "scenario": "restart",
        "server": "rooms",
        "room_files": len(list((data_dir / "rooms").glob("*.sqlite"))),
    }
    time.sleep(3)
    starts = [_restart_once(workdir, data_dir, ENV) for _ in range(3)]
    no_bytecode = {**ENV, "PYTHONPYCACHEPREFIX": str(workdir / "empty-pycache")}
    no_bytecode["PYTHONDONTWRITEBYTECODE"] = "1"
    result["starts"] = starts
    result["from_source"] = _restart_once(workdir, data_dir, no_bytecode)
    welcomes = sorted(s["first_welcome_s"] for s in starts if s["first_welcome_s"] is not None)
    result["first_welcome_s"] = welcomes[len(welcomes) // 2] if welcomes else None
    result["listening_s"] = sorted(s["listening_s"] for s in starts)[1]
    result["python_start_and_imports_s"] = sorted(s["imports_s"] for s in starts)[1]
    log(result)
    return result


def _restart_once(workdir: Path, data_dir: Path, env: dict[str, str]) -> dict[str, Any]:
    import websockets.sync.client as ws_client

    sys.path[:0] = [str(ROOT / "src")]
    from rooms.auth import mint_token

    token = mint_token(SECRET, "restart-probe")
    port = free_port()
    log_path = workdir / "restart.log"
    cmd = [PYTHON, "-m", "roomsd", "--dev-vars", str(workdir / "dev.vars"), "serve"]
    cmd += ["--port", str(port), "--data-dir", str(data_dir)]
    started = time.monotonic()
    with log_path.open("ab") as sink:
        proc = subprocess.Popen(cmd, env=env, stdout=sink, stderr=sink, cwd=ROOT)
    srv = Server("rooms", port, proc, data_dir, started, log_path)
    first_welcome = head = None
    try:
        listening = wait_listening(srv)
        url = f"ws://127.0.0.1:{port}/rooms/idle-0/ws?since=0&token={token}"
        deadline = time.monotonic() + 20
        while first_welcome is None and time.monotonic() < deadline:
            try:
                with ws_client.connect(url, open_timeout=5) as conn:
                    frame = json.loads(conn.recv(timeout=5))
                    if frame.get("type") == "welcome":
                        first_welcome = time.monotonic() - started
                        head = frame.get("head")
            except OSError:
                time.sleep(0.01)
    finally:
        stop_server(srv)
    # For scale: the bare interpreter plus the runtime's imports, without serving anything.
    t = time.monotonic()
    subprocess.run([PYTHON, "-c", "import roomsd.server, roomsd.cli"], env=env, check=True)
    return {
        "listening_s": round(listening, 3),
        "first_welcome_s": round(first_welcome, 3) if first_welcome else None,
        "welcome_head": head,
        "imports_s": round(time.monotonic() - t, 3),
    }


def run_storm(servers: list[str], scale: Scale, workdir: Path, runs: Path, log: Any) -> list[Run]:
    out = []
    args = [
        "--rooms",
        str(scale.storm_rooms),
        "--clients",
        str(scale.storm_clients),
        "--concurrency",
        "200",
        "--connect-timeout",
        "30",
    ]
    for kind in servers:
        with running(kind, workdir) as server:
            run = loadtest(server, "connect-storm", f"connect-storm-{kind}", args, runs)
            run.scenario = "connect-storm"
            out.append(run)
            log(run)
    return out


def run_reconnect(scale: Scale, workdir: Path, runs: Path, log: Any) -> list[Run]:
    args = [
        "--rooms",
        "10",
        "--clients",
        "10",
        "--senders",
        "2",
        "--rate",
        "50",
        "--duration",
        str(scale.duration),
        "--drop-interval",
        "2",
    ]
    with running("rooms", workdir) as server:
        run = loadtest(server, "reconnect-resume", "reconnect-resume-rooms", args, runs)
        run.scenario = "reconnect-resume"
        log(run)
    return [run]


def run_profiles(
    scale: Scale, workdir: Path, out_dir: Path, log: Any, half_rates: dict[str, float]
) -> dict[str, Any]:
    """py-spy on the runtime: each fan-out at saturation and at its half rate (unmeasured runs)."""
    pyspy = shutil.which("py-spy", path=str(Path(PYTHON).parent)) or shutil.which("py-spy")
    if pyspy is None:
        raise SystemExit("--profile needs py-spy: `uv sync --group bench`")
    profiles: dict[str, Any] = {}
    out_dir.mkdir(parents=True, exist_ok=True)
    plans = []
    for name, (rooms, clients, senders, window) in FANOUTS.items():
        plans.append((f"{name} saturate", rooms, clients, senders, f"--window {window}"))
        if name in half_rates:
            load = f"--rate {half_rates[name]}"
            plans.append((f"{name} half-rate", rooms, clients, senders, load))
    for label, rooms, clients, senders, load in plans:
        stem = label.replace(" ", "-")
        with running("rooms", workdir) as server:
            raw = out_dir / f"{stem}.collapsed.txt"  # for flamegraph.pl or speedscope
            # Sample the sending phase only: start after the connections are made.
            seconds = str(max(2, int(scale.duration) - 2))
            record = ["record", "-p", str(server.pid), "-d", seconds, "-r", "250", "-f", "raw"]
            spy_cmd = [pyspy, *record, "-o", str(raw), "--nonblocking"]
            args = fanout_args(rooms, clients, senders, scale.duration + 4, load)
            spies: list[subprocess.Popen[bytes]] = []
            spy_started = threading.Timer(4.0, _start_spy, args=(spy_cmd, spies))
            spy_started.start()
            loadtest(server, "fanout", f"profile-{stem}", args, workdir)
            spy_started.join()
            for spy in spies:
                spy.wait(60)
        profiles[label] = top_functions(raw)
        log({"scenario": f"profile {label}", "server": "rooms", "top": profiles[label][:5]})
    return profiles


def _start_spy(cmd: list[str], spies: list[subprocess.Popen[bytes]]) -> None:
    spies.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))


def top_functions(raw: Path, n: int = 25) -> list[dict[str, Any]]:
    """Self and inclusive time per function from py-spy's collapsed stacks."""
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        samples = int(count)
        frames = [_frame_name(f) for f in stack.split(";")]
        total += samples
        own[frames[-1]] = own.get(frames[-1], 0) + samples
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + samples
    rows: list[dict[str, Any]] = [
        {
            "function": f,
            "self_pct": round(100 * own.get(f, 0) / total, 1),
            "inclusive_pct": round(100 * inclusive[f] / total, 1),
        }
        for f in inclusive
    ]
    rows.sort(key=lambda r: (-r["self_pct"], -r["inclusive_pct"]))
    return rows[:n]


def _frame_name(frame: str) -> str:
    # "func (path/file.py:123)" -> "func (file.py)"; line numbers would split one function.
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rpartition(":")[0]
    return f"{name} ({'/'.join(Path(path).parts[-2:])})" if path else name


# --------------------------------------------------------------------------- real workerd


def run_workerd(
    scale: Scale, workdir: Path, runs: Path, log: Any, parts: tuple[str, ...]
) -> dict[str, Any]:
    """The Worker in real workerd (`wrangler dev`): sweeps and connect storms (workerd_bench)."""
    import workerd_bench as wb

    variables = {
        "JWT_SECRET": SECRET,
        "ADMIN_TOKEN": ADMIN_TOKEN,
        "ROOM_LIMITS": json.dumps(ROOM_LIMITS),
    }
    farms = [
        wb.WorkerdFarm(workdir, variables),
        wb.WorkerdFarm(workdir, variables, baseline=True),
    ]

    def generate(server: Any, scenario: str, name: str, args: list[str]) -> dict[str, Any]:
        cmd = [PYTHON, "-m", "loadtest", scenario, "--url", server.url, "--secret", SECRET]
        cmd += ["--server-pid", str(server.pid), "--out", str(runs), "--name", name]
        cmd += ["--progress", "none", *(["--uvloop"] if UVLOOP else []), *args]
        if farms[0].pin:
            cmd = ["taskset", "-c", wb.GENERATOR_CORE, *cmd]
        log_path = runs / f"{name}.log"
        path = runs / f"{name}.json"
        path.unlink(missing_ok=True)
        with log_path.open("wb") as sink:
            subprocess.run(cmd, env=ENV, cwd=ROOT, stdout=sink, stderr=sink, check=False)
        if not path.exists():
            sys.stderr.write(log_path.read_text(errors="replace")[-4000:])
            raise RuntimeError(f"loadtest {name} wrote no result")
        result: dict[str, Any] = json.loads(path.read_text())
        return result

    def show(row: dict[str, Any]) -> None:
        print(f"  {json.dumps(row, default=str)[:400]}", flush=True)

    section: dict[str, Any] = wb.run_parts(farms, parts, scale.workerd_duration, generate, show)
    log({"scenario": "workerd", "server": "workerd", "parts": list(parts)})
    return section


# --------------------------------------------------------------------------- reporting


def environment() -> dict[str, Any]:
    def version(cmd: list[str]) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return "unknown"

    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commit": version(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]),
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "node": version(["node", "--version"]),
        "platform": platform.platform(),
        "loadavg_at_start": os.getloadavg(),
        "generator_event_loop": "uvloop" if UVLOOP else "asyncio",
    }


def ratio(ours: float | None, theirs: float | None) -> float | None:
    if ours is None or not theirs:
        return None
    return round(ours / theirs, 3)


def analyse(runs: list[dict[str, Any]], restart: dict[str, Any] | None) -> dict[str, Any]:
    by = {(r["scenario"], r["server"]): r for r in runs}
    targets: list[dict[str, Any]] = []

    def get(scenario: str, server: str, key: str) -> Any:
        run = by.get((scenario, server))
        return None if run is None else run.get(key)

    for name, label in (("fanout-1x100", "1 room x 100"), ("fanout-100x10", "100 rooms x 10")):
        sat = f"{name} saturate"
        ours = get(sat, "rooms", "deliveries_per_s")
        base = get(sat, "websockets", "deliveries_per_s")
        r = ratio(ours, base)
        cpu_ours = get(sat, "rooms", "server_cpu_us_per_delivery")
        cpu_base = get(sat, "websockets", "server_cpu_us_per_delivery")
        cpu_r = ratio(cpu_base, cpu_ours)
        gen = get(sat, "websockets", "generator_util_sending")
        targets.append(
            {
                "target": f"{label}: deliveries/s at saturation >= 70% of plain websockets",
                "measured": f"{r:.0%} ({ours:,.0f} vs {base:,.0f}/s); per server CPU second "
                f"{cpu_r:.0%}; generator utilisation in the baseline's run {gen}"
                if r is not None and cpu_r is not None and ours is not None and base is not None
                else "not measured",
                "met": None if r is None else r >= 0.7,
            }
        )
        half = by.get((f"{name} half-rate", "rooms"), {})
        quarter = by.get((f"{name} quarter-rate", "rooms"), {})
        p99 = (half.get("latency_ms") or {}).get("p99")
        measured = "not measured"
        if p99 is not None:
            measured = (
                f"{p99:.2f} ms at {half['rate_per_room']:g} msg/s/room (p50 "
                f"{half['latency_ms']['p50']:.2f} ms; CPU utilisation: server "
                f"{half.get('server_util_sending')}, generator {half['generator_util_sending']})"
            )
            if quarter:
                measured += (
                    f"; at a quarter ({quarter['rate_per_room']:g} msg/s/room): p99 "
                    f"{quarter['latency_ms']['p99']:.2f} ms"
                )
        targets.append(
            {
                "target": f"{label}: p99 publish-to-delivery at half the saturation rate < 10 ms",
                "measured": measured,
                "met": None if p99 is None else p99 < 10,
            }
        )
    # Per *hibernated* connection: measured at the end of the hold, when every room has slept
    # (right after connecting, rooms are still awake with their databases open).
    idle_ours = get("idle", "rooms", "rss_per_connection_kb_at_end")
    idle_base = get("idle", "websockets", "rss_per_connection_kb_at_end")
    awake_ours = get("idle", "rooms", "rss_per_connection_kb")
    conns = get("idle", "rooms", "connections")
    r = ratio(idle_ours, idle_base)
    targets.append(
        {
            "target": "10,000 idle hibernated connections over 1,000 rooms; memory per connection "
            "<= 1.5x plain websockets",
            "measured": f"{conns:,} held; {idle_ours:.1f} KiB vs {idle_base:.1f} KiB = {r:.2f}x "
            f"once the rooms hibernated ({_fmt(awake_ours)} KiB right after connecting, rooms "
            "still awake)"
            if r is not None and conns is not None and idle_ours is not None and idle_base
            else "not measured",
            "met": None if r is None else (r <= 1.5 and conns == 10_000),
        }
    )
    wake = get("idle", "rooms", "wake_probe") or {}
    added = wake.get("added_median_ms")
    targets.append(
        {
            "target": "first message to a hibernated room adds < 1 ms at the median",
            "measured": "not measured"
            if added is None
            else f"{added:+.2f} ms (ack p50 {wake['cold_ms']['p50']:.2f} ms cold vs "
            f"{wake['warm_ms']['p50']:.2f} ms awake, {wake['rooms']} rooms)",
            "met": None if added is None else added < 1,
        }
    )
    if restart:
        first = restart.get("first_welcome_s")
        cold = restart.get("from_source", {})
        targets.append(
            {
                "target": "restart with 1,000 rooms on disk serves its first request within 1 s",
                "measured": "not measured"
                if first is None
                else f"{first:.2f} s to the first welcome, median of 3 starts "
                f"({restart['room_files']} room files; interpreter and imports "
                f"{restart['python_start_and_imports_s']:.2f} s); with no bytecode at all "
                f"{_fmt(cold.get('first_welcome_s'), 2)} s",
                "met": None if first is None else first < 1,
            }
        )
    return {"targets": targets}


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def markdown(summary: dict[str, Any]) -> str:
    env = summary["environment"]
    load = ", ".join(f"{x:.2f}" for x in env["loadavg_at_start"])
    lines = [
        f"Measured {env['date']} at commit `{env['commit']}` on {env['cpus']} cores "
        f"({env['cpu_model']}), {env['memory_gb']} GiB, Python {env['python']}, Node "
        f"{env['node']}; load average at start {load}."
        f" Reproduce with `{summary['command']}`.",
        *([""] if summary.get("issue10") else []),
        *targets.markdown(summary.get("issue10") or {}),
    ]
    if not summary["runs"]:
        return "\n".join(lines) + "\n"
    lines += [
        "",
        "### Round 1's targets (closed-loop saturation, hibernated idle, restart)",
        "",
        "| target | measured | met |",
        "|---|---|---|",
    ]
    for t in summary["analysis"]["targets"]:
        met = "n/a" if t["met"] is None else ("yes" if t["met"] else "**no**")
        lines.append(f"| {t['target']} | {t['measured']} | {met} |")
    lines += [
        "",
        "### Every run",
        "",
        "Ratios are ours / baseline in the same run. `CPU us/del` is server CPU microseconds per "
        "delivery while sending (a capacity measure that does not depend on the generator); "
        "`gen` is the generator's CPU utilisation while sending (near 1.0: the generator, not "
        "the server, may be the limit); `other CPU s` is CPU used by unrelated processes on "
        "this shared machine during the run.",
        "",
        "| scenario | server | deliveries/s | vs websockets | vs node | p50 / p99 / p99.9 ms | "
        "server CPU s | CPU us/del | peak RSS MB | gen | other CPU s | order |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    runs = summary["runs"]
    by = {(r["scenario"], r["server"]): r for r in runs}
    for run in runs:
        if run["scenario"] in ("idle", "connect-storm"):
            continue
        lat = run["latency_ms"]
        base_ws = by.get((run["scenario"], "websockets"), {}).get("deliveries_per_s")
        base_node = by.get((run["scenario"], "node"), {}).get("deliveries_per_s")
        lines.append(
            f"| {run['scenario']}"
            + (f" ({run['rate_per_room']:g} msg/s/room)" if run.get("rate_per_room") else "")
            + f" | {run['server']} | {_fmt(run['deliveries_per_s'], 0)} | "
            f"{_fmt(ratio(run['deliveries_per_s'], base_ws), 2)} | "
            f"{_fmt(ratio(run['deliveries_per_s'], base_node), 2)} | "
            f"{_fmt(lat['p50'], 2)} / {_fmt(lat['p99'], 2)} / {_fmt(lat['p99.9'], 2)} | "
            f"{_fmt(run['server_cpu_s_sending'])} | {_fmt(run['server_cpu_us_per_delivery'])} | "
            f"{_fmt(run['server_peak_rss_mb'])} | {_fmt(run['generator_util_sending'], 2)} | "
            f"{_fmt(run['other_cpu_s'])} | {'ok' if run['order_ok'] else '**FAILED**'} |"
        )
    idle = [r for r in runs if r["scenario"] == "idle"]
    if idle:
        lines += [
            "",
            "| idle | connections | RSS per connection KiB (connected / end of hold) | "
            "vs websockets (end of hold: every room asleep) | peak RSS MB | connect p50 / p99 ms "
            "| wake probe ack p50 cold / warm ms |",
            "|---|---|---|---|---|---|---|",
        ]
        base: dict[str, Any] = next((r for r in idle if r["server"] == "websockets"), {})
        for run in idle:
            wake = run.get("wake_probe") or {}
            per_conn = run["rss_per_connection_kb"]
            vs = ratio(
                run["rss_per_connection_kb_at_end"], base.get("rss_per_connection_kb_at_end")
            )
            lines.append(
                f"| {run['server']} | {_fmt(run['connections'])} | "
                f"{_fmt(per_conn)} / {_fmt(run['rss_per_connection_kb_at_end'])} | {_fmt(vs, 2)}"
                f" | {_fmt(run['server_peak_rss_mb'])} | {_fmt(run['connect_ms']['p50'], 2)} / "
                f"{_fmt(run['connect_ms']['p99'], 2)} | "
                f"{_fmt((wake.get('cold_ms') or {}).get('p50'), 2)} / "
                f"{_fmt((wake.get('warm_ms') or {}).get('p50'), 2)} |"
            )
    storm = [r for r in runs if r["scenario"] == "connect-storm"]
    if storm:
        lines += [
            "",
            "| connect storm | connections | failed | connects/s | vs websockets | "
            "connect p50 / p99 / max ms | server CPU s | presence MiB received |",
            "|---|---|---|---|---|---|---|---|",
        ]
        base = next((r for r in storm if r["server"] == "websockets"), {})
        for run in storm:
            c = run["connect_ms"]
            lines.append(
                f"| {run['server']} | {_fmt(run['connections'])} | {_fmt(run['connect_failed'])} | "
                f"{_fmt(run['connects_per_s'], 0)} | "
                f"{_fmt(ratio(run['connects_per_s'], base.get('connects_per_s')), 2)} | "
                f"{_fmt(c['p50'], 2)} / {_fmt(c['p99'], 2)} / {_fmt(c['max'], 2)} | "
                f"{_fmt(run['server_cpu_s'])} | {_fmt(run.get('presence_mb'))} |"
            )
    restart = summary.get("restart")
    if restart:
        starts = ", ".join(_fmt(s["first_welcome_s"], 3) for s in restart.get("starts", []))
        lines += [
            "",
            f"Restart: {restart['room_files']:,} room files on disk, as installed by `make "
            f"setup` (bytecode compiled at install): first welcome after {starts} s in three "
            f"starts (median listening {_fmt(restart['listening_s'], 3)} s; interpreter and "
            f"imports alone {_fmt(restart['python_start_and_imports_s'], 3)} s). With no "
            f"bytecode at all (every module compiled from source): "
            f"{_fmt(restart.get('from_source', {}).get('first_welcome_s'), 3)} s.",
        ]
    profiles = summary.get("profiles")
    if profiles:
        for name, rows in profiles.items():
            lines += [
                "",
                f"Profile of the runtime, {name} (py-spy, share of samples; the full collapsed "
                "stacks are in bench/results/profiles/):",
                "",
                "| function | self % | inclusive % |",
                "|---|---|---|",
            ]
            lines += [
                f"| `{r['function']}` | {r['self_pct']} | {r['inclusive_pct']} |" for r in rows[:15]
            ]
    return "\n".join(lines) + "\n"


def update_benchmarks_md(text: str, begin: str = BEGIN, end: str = END) -> None:
    path = ROOT / "BENCHMARKS.md"
    current = path.read_text() if path.exists() else f"# Benchmarks\n\n{begin}\n{end}\n"
    if begin not in current or end not in current:
        current += f"\n{begin}\n{end}\n"
    head, _, rest = current.partition(begin)
    _, _, tail = rest.partition(end)
    path.write_text(f"{head}{begin}\n{text}{end}{tail}")


# --------------------------------------------------------------------------- main


ALL = (
    *targets.TARGET_SCENARIOS,
    "fanout-1x100",
    "fanout-100x10",
    "idle",
    "connect-storm",
    "reconnect-resume",
    "workerd",
)
WORKERD_PARTS = ("fanout-1x100", "fanout-100x10", "storm-100x10", "storm-1x100")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(ALL), help=f"comma-separated of {ALL}")
    parser.add_argument("--servers", default=",".join(SERVERS), help="comma-separated")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per fan-out run")
    parser.add_argument(
        "--idle-rooms", type=int, default=1000, help="idle: rooms (10 connections each)"
    )
    parser.add_argument("--idle-hold", type=float, default=15.0, help="idle: seconds held")
    parser.add_argument("--profile", action="store_true", help="also profile the runtime")
    parser.add_argument(
        "--workerd-parts",
        default=",".join(WORKERD_PARTS),
        help=f"with --only workerd: comma-separated of {WORKERD_PARTS}",
    )
    parser.add_argument(
        "--workerd-duration", type=float, default=5.0, help="seconds per workerd sweep step"
    )
    parser.add_argument("--no-markdown", action="store_true", help="leave BENCHMARKS.md alone")
    parser.add_argument(
        "--render", action="store_true", help="only re-render latest.json into the Markdown"
    )
    args = parser.parse_args(argv)
    if args.render:
        latest: dict[str, Any] = json.loads((RESULTS / "latest.json").read_text())
        latest["analysis"] = analyse(latest["runs"], latest.get("restart"))
        text = markdown(latest)
        (RESULTS / "latest.md").write_text(text)
        (RESULTS / "latest.json").write_text(json.dumps(latest, indent=2) + "\n")
        if not args.no_markdown:
            update_benchmarks_md(text)
        return 0
    only = [s for s in args.only.split(",") if s]
    servers = [s for s in args.servers.split(",") if s]
    bad = [s for s in only if s not in ALL]
    bad += [s for s in servers if s not in SERVERS + EXPERIMENTS]
    if bad:
        parser.error(f"unknown: {', '.join(bad)}")
    local_scenarios = [s for s in only if s != "workerd"]
    if (
        local_scenarios
        and "node" in servers
        and not (BENCH / "baselines" / "node" / "node_modules" / "ws").exists()
    ):
        parser.error("the Node baseline needs `npm ci --prefix bench/baselines/node`")
    scale = Scale(
        duration=args.duration,
        idle_rooms=args.idle_rooms,
        idle_hold=args.idle_hold,
        workerd_duration=args.workerd_duration,
    )
    workerd_parts = tuple(p for p in args.workerd_parts.split(",") if p)
    if any(p not in WORKERD_PARTS for p in workerd_parts):
        parser.error(f"--workerd-parts: choose from {WORKERD_PARTS}")

    runs_dir = RESULTS / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()

    def log(item: Run | dict[str, Any]) -> None:
        row = item.summary() if isinstance(item, Run) else item
        lat = row.get("latency_ms") or {"p99": row.get("p99_ms")}
        print(
            f"[{time.monotonic() - began:6.1f}s] {row['scenario']:<26} {row['server']:<10} "
            + (
                f"deliveries/s {_fmt(row.get('deliveries_per_s'), 0):>9}  p99 "
                f"{_fmt(lat.get('p99'), 2):>7} ms  server CPU {_fmt(row.get('server_cpu_s'))} s  "
                f"peak {_fmt(row.get('server_peak_rss_mb'))} MB  other CPU "
                f"{_fmt(row.get('other_cpu_s'))} s  order {'ok' if row.get('order_ok') else 'FAIL'}"
                if "deliveries_per_s" in row
                else json.dumps({k: v for k, v in row.items() if k not in ("scenario", "server")})
            ),
            flush=True,
        )

    all_runs: list[Run] = []
    issue10: dict[str, Any] = {}
    restart = None
    workerd = None
    profiles = None
    with tempfile.TemporaryDirectory(prefix="rooms-bench-") as tmp:
        workdir = Path(tmp)
        issue10 = targets.run_targets(
            [n for n in only if n in targets.TARGET_SCENARIOS],
            servers,
            scale.duration,
            workdir,
            runs_dir,
            running,
            loadtest,
            log,
        )
        for name in only:
            if name in FANOUTS:
                all_runs += run_fanout(name, servers, scale, workdir, runs_dir, log)
            elif name == "idle":
                all_runs += run_idle(servers, scale, workdir, runs_dir, log)
                if "rooms" in servers:
                    restart = measure_restart(workdir, log)
            elif name == "connect-storm":
                all_runs += run_storm(servers, scale, workdir, runs_dir, log)
            elif name == "reconnect-resume" and "rooms" in servers:
                all_runs += run_reconnect(scale, workdir, runs_dir, log)
            elif name == "workerd":
                workerd = run_workerd(scale, workdir, runs_dir, log, workerd_parts)
        if args.profile:
            half_rates = {
                r.scenario.split()[0]: r.extra["rate_per_room"]
                for r in all_runs
                if r.scenario.endswith("half-rate") and r.server == "rooms"
            }
            profiles = run_profiles(scale, workdir, RESULTS / "profiles", log, half_rates)

    rows = [r.summary() for r in all_runs]
    given = " ".join(argv if argv is not None else sys.argv[1:])
    if os.environ.get("MAKELEVEL"):
        command = f'make bench BENCH_ARGS="{given}"' if given else "make bench"
    else:
        command = f"PYTHONPATH=src:local .venv/bin/python bench/run.py {given}".rstrip()
    summary: dict[str, Any] = {
        "command": command,
        "environment": environment(),
        "runs": rows,
        "issue10": issue10,
        "restart": restart,
        "profiles": profiles,
        "workerd": workerd,
        "wall_s": round(time.monotonic() - began, 1),
    }
    failed = [r for r in rows if not r["order_ok"] and r["scenario"] != "connect-storm"]
    failed += [
        {"scenario": f"{name} {kind}"}
        for name, section in issue10.items()
        if name in targets.LADDERS
        for kind, data in section.items()
        if kind != "half" and not data["order_ok"]
    ]
    if workerd is not None:
        # Its own files and its own block of BENCHMARKS.md, so `--only workerd` leaves the
        # local runtime's tables alone.
        import workerd_bench

        head = {k: summary[k] for k in ("command", "environment", "wall_s")}
        (RESULTS / "workerd.json").write_text(json.dumps({**head, **workerd}, indent=2) + "\n")
        env = summary["environment"]
        text = "\n".join(
            [
                f"Measured {env['date']} at commit `{env['commit']}`"
                f" ({env['cpus']} cores, {env['cpu_model']}); load average at start "
                + ", ".join(f"{x:.2f}" for x in env["loadavg_at_start"])
                + f". Reproduce with `{command}`.",
                *workerd_bench.markdown(workerd),
            ]
        )
        (RESULTS / "workerd.md").write_text(text + "\n")
        if not args.no_markdown:
            update_benchmarks_md(text + "\n", WORKERD_BEGIN, WORKERD_END)
        print()
        print(text)
        failed += [
            {"scenario": k}
            for k, v in workerd.items()
            if isinstance(v, dict) and not v.get("order_ok", True)
        ]
        if not rows and not issue10:
            return 1 if failed else 0
    summary["analysis"] = analyse(rows, restart)
    (RESULTS / "latest.json").write_text(json.dumps(summary, indent=2) + "\n")
    text = markdown(summary)
    (RESULTS / "latest.md").write_text(text)
    if not args.no_markdown:
        update_benchmarks_md(text)
    print()
    print(text)
    print(f"bench: {summary['wall_s']}s; wrote {RESULTS / 'latest.json'}, {RESULTS / 'latest.md'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Where the Worker spends its CPU in real workerd: a V8 CPU profile taken through the inspector.

Starts one pinned `wrangler dev` (as `bench/run.py --only workerd` does), drives it with
`rooms loadtest fanout` at a fixed open-loop rate, and records a sampling CPU profile of the
Worker's isolate (Chrome DevTools protocol: Profiler.start/stop through wrangler's inspector
proxy) while the generator sends. Prints self time by function (JS, wasm and V8 categories)
and writes the raw profile for DevTools or speedscope.

    PYTHONPATH=src:local .venv/bin/python bench/workerd_profile.py --rooms 1 --clients 100 \\
        --rate 20 --seconds 6
    ... --root /tmp/copy-of-the-project   # an instrumented copy (src/ edited), same harness
    ... --js                              # the JS baseline (bench/baselines/workerd-js) instead
    ... --perf                            # CPU by native symbol and by part, with `perf record`
    MINIFLARE_WORKERD_V8_FLAGS=--perf-basic-prof ... --perf   # JIT code named too (V8's perf map;
        # V8 also leaves an isolate-*-v8.log per isolate in the current directory: remove them)
    ... --compare                         # --perf on ours, then on the JS baseline, side by side
    ... --storm --rooms 20 --clients 10 --warm 200   # per connection, in a warmed-up process

Python frames are not visible to V8: time in Python shows as wasm functions of the interpreter
(`_PyEval_EvalFrameDefault` and friends); time in the FFI shows as Pyodide's JS glue; time in
workerd's C++ (SQLite, sockets) shows under the JS API function that called it.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import websockets.sync.client as ws_client
from websockets.typing import Origin

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "bench")]

import workerd_bench as wb  # noqa: E402

SECRET = "bench-secret-that-is-long-enough-for-hs256-0123456789"
ROOM_LIMITS = {"messages_per_second": 1_000_000, "burst": 1_000_000}


class Inspector:
    """A minimal CDP client for the Worker's isolate (wrangler's inspector proxy)."""

    def __init__(self, port: int) -> None:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json", timeout=10) as reply:
            targets = json.loads(reply.read())
        if not targets:
            raise RuntimeError("the inspector lists no targets")
        url = targets[0]["webSocketDebuggerUrl"]
        if not url.startswith("ws"):
            url = f"ws://{url}"
        self.conn = ws_client.connect(
            url,
            max_size=None,
            open_timeout=10,
            origin=Origin("http://localhost"),
            ping_interval=None,
            legacy=True,  # held open across calls, closed by `close` (not a context manager)
        )
        self.next_id = 0

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        self.conn.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.conn.recv(timeout=120))
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result

    def close(self) -> None:
        self.conn.close()


def self_times(profile: dict[str, Any]) -> tuple[list[tuple[str, float]], float]:
    """Self time (ms) per function from a V8 .cpuprofile, largest first, and the total."""
    nodes = {n["id"]: n for n in profile["nodes"]}
    per_node: Counter[int] = Counter()
    for node_id, delta in zip(profile["samples"], profile["timeDeltas"], strict=False):
        per_node[node_id] += delta
    out: Counter[str] = Counter()  # us
    for node_id, us in per_node.items():
        frame = nodes[node_id]["callFrame"]
        name = frame["functionName"] or "(anonymous)"
        url = frame.get("url", "").rsplit("/", 1)[-1]
        out[f"{name} {url}".strip()] += us
    return [(fn, us / 1000) for fn, us in out.most_common()], sum(per_node.values()) / 1000


def inclusive_times(profile: dict[str, Any], names: list[str]) -> dict[str, float]:
    """Inclusive time (ms) of every function whose name is in ``names``."""
    nodes = {n["id"]: n for n in profile["nodes"]}
    parent: dict[int, int] = {}
    for n in profile["nodes"]:
        for child in n.get("children", []):
            parent[child] = n["id"]
    per_node: Counter[int] = Counter()
    for node_id, delta in zip(profile["samples"], profile["timeDeltas"], strict=False):
        per_node[node_id] += delta
    out: Counter[str] = Counter()  # us
    for node_id, us in per_node.items():
        seen: set[str] = set()
        cur: int | None = node_id
        while cur is not None:
            name = nodes[cur]["callFrame"]["functionName"]
            if name in names and name not in seen:
                out[name] += us
                seen.add(name)
            cur = parent.get(cur)
    return {name: us / 1000 for name, us in out.items()}


# perf symbol -> a coarse part of workerd, first match wins (regexes over "symbol (object)").
PERF_PARTS: tuple[tuple[str, str], ...] = (
    ("JIT code: JS, and for ours Pyodide's wasm", r"^\[JIT"),
    # Named only with V8's perf map (MINIFLARE_WORKERD_V8_FLAGS=--perf-basic-prof, below).
    ("JIT, named: wasm (for ours the Python interpreter and the C it calls)", r"^JS:wasm-function"),
    ("JIT, named: calls between wasm and JS", r"^JS:(wasm-to-js|js-to-wasm)"),
    ("JIT, named: JS (for ours Pyodide's FFI and the runtime's Python glue)", r"^JS:"),
    ("kernel (sockets, scheduling, page faults)", r"\(\[kernel"),
    ("V8 compiling JS and wasm (tier-up)", r"compiler::|turboshaft|maglev|Maglev|baseline::"),
    ("inspector: console.log to wrangler", r"v8_crdtp|inspector|Inspector|V8Console"),
    ("wasm runtime (V8)", r"Wasm|wasm::|Liftoff"),
    ("GC (V8, cppgc)", r"Marking|Sweep|Scaveng|GlobalHandles|cppgc|Heap::|Evacuat|Compactor"),
    ("V8 runtime and builtins", r"^(v8::|Builtins_)"),
    ("SQLite", r"^(sqlite3|wal|pcache|yy_|btree|pager|vdbe|jsonTranslate)"),
    ("malloc (tcmalloc)", r"(?i)tcmalloc"),
    (
        "workerd I/O, promises, JS API (kj, workerd::, hyper, tokio)",
        r"kj|workerd|tokio|hyper|capnp",
    ),
    ("libc", r"\(libc"),
)


def perf_part(symbol: str) -> str:
    for part, pattern in PERF_PARTS:
        if re.search(pattern, symbol):
            return part
    return "other"


class Perf:
    """`perf record` of the wrangler tree's workerd processes: CPU samples, native symbols.

    V8's profiler samples wall time on the isolate's thread, so on a loaded machine its
    shares follow the scheduler as much as the code; perf counts CPU, kernel included, and
    names workerd's C++ (the binary is not stripped). JIT code (JavaScript, and the Pyodide
    interpreter's wasm) has no symbols here and is counted as one bucket.
    """

    def __init__(self, root_pid: int, data: Path, hz: int) -> None:
        self.hz = hz
        self.data = data
        self.pids = {
            int(k.rpartition(":")[2])
            for k in wb.cpu_by_process(root_pid)
            if k.startswith("workerd")
        }
        self.proc = subprocess.Popen(
            ["perf", "record", "-F", str(hz), "-o", str(data), "-p", ",".join(map(str, self.pids))],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(0.5)  # perf attaches

    def stop(self) -> dict[int, Counter[str]]:
        """Samples per symbol, per workerd pid."""
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(60)
        script = subprocess.run(
            ["perf", "script", "-i", str(self.data), "-F", "pid,ip,sym,dso"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        out: dict[int, Counter[str]] = {pid: Counter() for pid in self.pids}
        for line in script.splitlines():
            pid_text, _, rest = line.strip().partition(" ")
            if not pid_text.isdigit():
                continue
            _ip, _, rest = rest.strip().partition(" ")  # symbols resolve only with the ip
            sym, _, dso = rest.strip().rpartition(" (")
            dso = dso.rstrip(")").rsplit("/", 1)[-1]
            if dso in ("", "unknown", "[unknown]") or sym in ("", "[unknown]"):
                key = f"[JIT: JS and wasm] ({dso or 'unknown'})"
            else:
                key = f"{sym[:110]} ({dso})"
            out.setdefault(int(pid_text), Counter())[key] += 1
        return out

    def report(
        self, samples: dict[int, Counter[str]], per: float, unit: str, top: int
    ) -> list[dict[str, float]]:
        """Prints each process's parts and symbols; returns its parts (us per ``unit``),
        the busiest process (the Worker's) first."""
        out: list[dict[str, float]] = []
        for pid, counts in sorted(samples.items(), key=lambda kv: -sum(kv[1].values())):
            total = sum(counts.values())
            if not total:
                continue
            ms = 1000 * total / self.hz
            print(
                f"perf, workerd {pid}: {total} samples = {ms:.0f} ms CPU, "
                f"{1000 * ms / per:.0f} us per {unit}"
            )
            by_dso: Counter[str] = Counter()
            for sym, n in counts.items():
                by_dso[sym.rpartition(" (")[2].rstrip(")")] += n
            print(
                "  by object: "
                + ", ".join(f"{dso} {100 * n / total:.1f}%" for dso, n in by_dso.most_common(6))
            )
            parts: Counter[str] = Counter()
            for sym, n in counts.items():
                parts[perf_part(sym)] += n
            for part, n in parts.most_common():
                print(f"  {1e6 * n / self.hz / per:9.1f} us {100 * n / total:5.1f}%  {part}")
            for sym, n in counts.most_common(top):
                cost = 1e6 * n / self.hz / per
                print(f"{cost:9.1f} us {100 * n / total:5.1f}%  {sym}")
            us = {part: 1e6 * n / self.hz / per for part, n in parts.items()}
            out.append({"all": 1e6 * total / self.hz / per, **us})
        return out


Parts = list[dict[str, float]]


def compare(ours: Parts, js: Parts, unit: str) -> None:
    """Our parts beside the baseline's, per process (the Worker's workerd, then the proxy)."""
    for label, a, b in zip(
        ("the Worker's workerd", "wrangler's proxy workerd"), ours, js, strict=False
    ):
        print(f"\n{label}, us of CPU per {unit}:")
        print(f"{'ours':>9} {'JS':>9} {'diff':>9}  part")
        for part in sorted(set(a) | set(b), key=lambda k: -(a.get(k, 0) - b.get(k, 0))):
            x, y = a.get(part, 0.0), b.get(part, 0.0)
            print(f"{x:9.0f} {y:9.0f} {x - y:+9.0f}  {part}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rooms", type=int, default=1)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--senders", type=int, default=10)
    parser.add_argument("--rate", type=float, default=20, help="msg/s per room")
    parser.add_argument("--seconds", type=float, default=6, help="profiled seconds")
    parser.add_argument("--interval-us", type=int, default=200, help="sampling interval")
    parser.add_argument("--root", type=Path, default=ROOT, help="project copy to serve")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "profiles")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--name", default=None)
    parser.add_argument(
        "--js",
        action="store_true",
        help="serve the JS baseline (bench/baselines/workerd-js) instead of our Worker",
    )
    parser.add_argument("--no-profile", action="store_true", help="only measure CPU")
    parser.add_argument(
        "--perf",
        action="store_true",
        help="record the workerd processes with `perf` (CPU by native symbol) instead of V8",
    )
    parser.add_argument("--perf-hz", type=int, default=1999)
    parser.add_argument(
        "--warm",
        type=int,
        default=0,
        help="with --storm: first connect this many clients (10 a room) unmeasured, so the "
        "measured storm finds the isolate warm (code compiled, modules imported)",
    )
    parser.add_argument(
        "--storm",
        action="store_true",
        help="profile a connect storm (--rooms x --clients into new rooms) instead of a fan-out",
    )
    parser.add_argument(
        "--compare",
        action="store_true",
        help="with --perf: run ours, then the JS baseline, and print their parts side by side",
    )
    args = parser.parse_args()
    if args.perf or args.compare:
        args.perf = args.no_profile = True
    run = storm if args.storm else fanout
    if not args.compare:
        run(args)
        return 0
    args.js = False
    ours = run(args)
    args.js = True
    js = run(args)
    compare(ours, js, "connection" if args.storm else "publish")
    return 0


def fanout(args: argparse.Namespace) -> Parts:
    """Profile a fan-out at a fixed rate: CPU per publish by process, and V8's or perf's profile."""
    variables = {"JWT_SECRET": SECRET, "ROOM_LIMITS": json.dumps(ROOM_LIMITS)}
    kind = "js" if args.js else "workerd"
    name = args.name or f"{kind}-{args.rooms}x{args.clients}-{args.rate:g}"
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="rooms-wprof-") as tmp:
        farm = wb.WorkerdFarm(Path(tmp), variables, root=args.root, baseline=args.js)
        with farm.running() as server:
            inspector = Inspector(server.inspector_port)
            inspector.call("Profiler.enable")
            inspector.call("Profiler.setSamplingInterval", interval=args.interval_us)
            gen = wb.start_fanout(
                server,
                SECRET,
                Path(tmp),
                pin=farm.pin,
                rooms=args.rooms,
                clients=args.clients,
                senders=args.senders,
                rate=args.rate,
                duration=args.seconds + 4,
            )
            time.sleep(1.0)
            perf = Perf(server.pid, Path(tmp) / "perf.data", args.perf_hz) if args.perf else None
            cpu0 = wb.tree_cpu_s(server.pid)
            per0 = wb.cpu_by_process(server.pid)
            if not args.no_profile:
                inspector.call("Profiler.start")
            time.sleep(args.seconds)
            profile = {} if args.no_profile else inspector.call("Profiler.stop")["profile"]
            perf_samples = perf.stop() if perf else {}
            cpu = wb.tree_cpu_s(server.pid) - cpu0
            per = {
                k: round(v - per0.get(k, 0.0), 2) for k, v in wb.cpu_by_process(server.pid).items()
            }
            inspector.close()
            threading.Thread(target=gen.wait, daemon=True).start()
            gen.wait(120)
            (args.out / f"{name}.wrangler.log").write_bytes(server.log.read_bytes())
            result_files = sorted(Path(tmp).glob("fanout-*.json"))
            result = json.loads(result_files[-1].read_text()) if result_files else {}
    publishes = args.rate * args.rooms * args.seconds
    print(f"tree CPU {cpu:.2f} s in {args.seconds:g} s: {per}")
    print(f"CPU per publish: tree {1000 * cpu / publishes:.2f} ms", end="")
    workerd_cpu = max((v for k, v in per.items() if k.startswith("workerd")), default=0.0)
    print(f", busiest workerd {1000 * workerd_cpu / publishes:.2f} ms")
    if result:
        d = result["delivery"]
        print(
            f"load: {d['per_s']} deliveries/s, p50 {d['latency_ms']['p50']} ms, p99 "
            f"{d['latency_ms']['p99']} ms, acked {result['publish']['acked']}, order "
            f"{result['order']['ok']}"
        )
        for example in result["order"].get("examples", [])[:3]:
            print(f"  order: {example}")
    parts = perf.report(perf_samples, publishes, "publish", args.top) if perf else []
    if args.no_profile:
        return parts
    path = args.out / f"{name}.cpuprofile"
    path.write_text(json.dumps(profile))
    own, total = self_times(profile)
    print(f"profile: {path} ({total:.0f} ms sampled)")
    print(f"{'self ms':>9} {'%':>6}  function")
    for fn, ms in own[: args.top]:
        print(f"{ms:9.1f} {100 * ms / total:6.1f}  {fn}")
    return parts


def storm(args: argparse.Namespace) -> Parts:
    """Profile a whole connect storm: CPU per connection by process, and the V8 profile."""
    variables = {"JWT_SECRET": SECRET, "ROOM_LIMITS": json.dumps(ROOM_LIMITS)}
    kind = "js" if args.js else "workerd"
    name = args.name or f"{kind}-storm-{args.rooms}x{args.clients}"
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="rooms-wprof-") as tmp:
        farm = wb.WorkerdFarm(Path(tmp), variables, root=args.root, baseline=args.js)
        with farm.running() as server:
            inspector = Inspector(server.inspector_port)
            inspector.call("Profiler.enable")
            inspector.call("Profiler.setSamplingInterval", interval=args.interval_us)

            def storm_command(rooms: int, clients: int, prefix: str) -> list[str]:
                cmd = [sys.executable, "-m", "loadtest", "connect-storm", "--url", server.url]
                cmd += ["--secret", SECRET, "--rooms", str(rooms), "--clients", str(clients)]
                cmd += ["--concurrency", "100", "--connect-timeout", "60", "--progress", "none"]
                cmd += ["--out", tmp, "--room-prefix", f"{prefix}-{time.time_ns()}-"]
                return ["taskset", "-c", wb.GENERATOR_CORE, *cmd] if farm.pin else cmd

            env = {"PYTHONPATH": f"{ROOT / 'src'}:{ROOT / 'local'}", "PATH": "/usr/bin:/bin"}
            if args.warm:
                warm = storm_command(max(1, args.warm // 10), 10, "warm")
                subprocess.run(warm, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, check=True)
            cmd = storm_command(args.rooms, args.clients, "storm")
            perf = Perf(server.pid, Path(tmp) / "perf.data", args.perf_hz) if args.perf else None
            cpu0 = wb.tree_cpu_s(server.pid)
            per0 = wb.cpu_by_process(server.pid)
            if not args.no_profile:
                inspector.call("Profiler.start")
            subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, check=True)
            profile = {} if args.no_profile else inspector.call("Profiler.stop")["profile"]
            perf_samples = perf.stop() if perf else {}
            cpu = wb.tree_cpu_s(server.pid) - cpu0
            per = {
                k: round(v - per0.get(k, 0.0), 2) for k, v in wb.cpu_by_process(server.pid).items()
            }
            inspector.close()
            result_files = sorted(Path(tmp).glob("connect-storm-*.json"))
            result = json.loads(result_files[-1].read_text()) if result_files else {}
    n = args.rooms * args.clients
    print(f"tree CPU {cpu:.2f} s for {n} connections: {per}")
    print(f"CPU per connection: tree {1000 * cpu / n:.2f} ms", end="")
    for k, v in sorted(per.items()):
        print(f", {k.split(':')[0]} {1000 * v / n:.2f}", end="")
    print()
    if result:
        c = result["connect"]
        print(f"connect: {c['ok']} ok, {c['failed']} failed, {c['wall_s']} s, {c['time_ms']}")
    parts = perf.report(perf_samples, n, "connection", args.top) if perf else []
    if args.no_profile:
        return parts
    path = args.out / f"{name}.cpuprofile"
    path.write_text(json.dumps(profile))
    own, total = self_times(profile)
    print(f"profile: {path} ({total:.0f} ms sampled)")
    for fn, ms in own[: args.top]:
        print(f"{ms:9.1f} {100 * ms / total:6.1f}  {fn}")
    return parts


if __name__ == "__main__":
    sys.exit(main())

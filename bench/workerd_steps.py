"""Sweep steps on real workerd, phase by phase: CPU and CPU wait of each wrangler process.

Runs steps of a `bench/workerd_bench.py` ladder (default: 100 x 10 at 0.5 and 1 msg/s per room)
on one fresh pinned `wrangler dev`, as `make bench-workerd` does, and samples every second the
CPU time and the run-queue wait (schedstat: runnable, waiting for the core) of each process of
the wrangler tree: node (wrangler, which relays the Worker's console lines), the proxy workerd
and the Worker's workerd. Prints them per phase of each step (connect, send, drain) with the
load average, and whether every delivery arrived in order. Answers "is a step that fell behind
stalled, losing messages, or behind on CPU, and whose":

    PYTHONPATH=src:local .venv/bin/python bench/workerd_steps.py
    ... --root /tmp/copy-of-the-project   # an edited copy of src/ (say, log lines removed)
    ... --rates 1,2 --out /tmp/steps.json  # other steps; the samples as JSON
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "bench"), str(ROOT / "local"), str(ROOT / "src")]

import run as bench_run  # noqa: E402
import workerd_bench as wb  # noqa: E402

from loadtest.runner import process_tree  # noqa: E402

Sample = tuple[float, float, dict[str, tuple[float, float]]]  # at, load 1 min, pid -> cpu, wait


def per_process(root: int) -> dict[str, tuple[float, float]]:
    """``name:pid`` -> (CPU s, run-queue wait s), each summed over the process's threads."""
    out: dict[str, tuple[float, float]] = {}
    for pid in process_tree(root):
        try:
            name = Path(f"/proc/{pid}/comm").read_text().strip()
            on_cpu = waiting = 0
            for tid in os.listdir(f"/proc/{pid}/task"):
                ran, waited, _ = Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()
                on_cpu += int(ran)
                waiting += int(waited)
        except (OSError, ValueError):
            continue
        out[f"{name}:{pid}"] = (on_cpu / 1e9, waiting / 1e9)
    return out


def roles(last: dict[str, tuple[float, float]]) -> dict[str, str]:
    """Which process is which: the busier workerd runs the Worker; node is the busier node."""

    def busiest(prefix: str) -> str | None:
        named = [k for k in last if k.startswith(prefix)]
        return max(named, key=lambda k: last[k][0], default=None)

    worker = busiest("workerd:")
    out = {k: "proxy" if k.startswith("workerd:") else "other" for k in last}
    if worker:
        out[worker] = "worker"
    node = max((k for k in last if not k.startswith("workerd:")), key=lambda k: last[k][0])
    out[node] = "node"
    return out


def phase_rows(samples: list[Sample], result: dict[str, Any]) -> list[str]:
    marks = result["server"]["marks"]
    names = roles(samples[-1][2])
    rows = []
    for phase, begin, end in (("connect", "start", "connected"), ("send", "go", "t_end"),
                              ("drain", "t_end", "end")):  # fmt: skip
        a = min(samples, key=lambda s: abs(s[0] - marks[begin]["at"]))
        b = min(samples, key=lambda s: abs(s[0] - marks[end]["at"]))
        seconds = max(b[0] - a[0], 1e-9)
        by_role: dict[str, list[float]] = {}
        for key, (cpu, wait) in b[2].items():
            before = a[2].get(key, (0.0, 0.0))
            acc = by_role.setdefault(names.get(key, "other"), [0.0, 0.0])
            acc[0] += cpu - before[0]
            acc[1] += wait - before[1]
        loads = [s[1] for s in samples if a[0] <= s[0] <= b[0]] or [a[1]]
        parts = "  ".join(
            f"{role} {cpu / seconds:.2f}/{wait / seconds:.2f}"
            for role, (cpu, wait) in sorted(by_role.items())
            if role != "other"
        )
        tree = marks[end]["cpu_s"] - marks[begin]["cpu_s"]
        rows.append(
            f"  {phase:8s} {marks[end]['at'] - marks[begin]['at']:6.1f} s  tree {tree:6.2f} CPU-s"
            f"  per s, CPU/wait: {parts}  load {min(loads):.1f}-{max(loads):.1f}"
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ladder", default="fanout-100x10", choices=sorted(wb.LADDERS))
    parser.add_argument("--rates", default="0.5,1", help="msg/s per room, comma-separated")
    parser.add_argument("--duration", type=float, default=5.0, help="sending seconds per step")
    parser.add_argument("--root", type=Path, default=ROOT, help="project copy to serve")
    parser.add_argument("--out", type=Path, default=None, help="write the samples here (JSON)")
    args = parser.parse_args()
    variables = {
        "JWT_SECRET": bench_run.SECRET,
        "ADMIN_TOKEN": bench_run.ADMIN_TOKEN,
        "ROOM_LIMITS": json.dumps(bench_run.ROOM_LIMITS),
    }
    samples: list[Sample] = []
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="workerd-steps-") as tmp:
        farm = wb.WorkerdFarm(Path(tmp), variables, root=args.root)
        runs = Path(tmp) / "runs"
        runs.mkdir()

        def generate(server: wb.Workerd, scenario: str, name: str, cmd_args: list[str]) -> Any:
            cmd = [bench_run.PYTHON, "-m", "loadtest", scenario, "--url", server.url]
            cmd += ["--secret", bench_run.SECRET, "--server-pid", str(server.pid)]
            cmd += ["--out", str(runs), "--name", name, "--progress", "none", *cmd_args]
            if farm.pin:
                cmd = ["taskset", "-c", wb.GENERATOR_CORE, *cmd]
            subprocess.run(cmd, env=bench_run.ENV, cwd=ROOT, capture_output=True, check=False)
            result = json.loads((runs / f"{name}.json").read_text())
            results.append(result)
            return result

        started = farm.running

        @contextlib.contextmanager
        def sampled() -> Iterator[wb.Workerd]:
            stop = threading.Event()
            with started() as server:

                def sample() -> None:
                    while not stop.is_set():
                        load = float(Path("/proc/loadavg").read_text().split()[0])
                        samples.append((time.monotonic(), load, per_process(server.pid)))
                        stop.wait(1.0)

                thread = threading.Thread(target=sample, daemon=True)
                thread.start()
                try:
                    yield server
                finally:
                    stop.set()
                    thread.join()

        farm.running = sampled  # type: ignore[method-assign]  # this farm's servers, sampled
        rates = tuple(float(r) for r in args.rates.split(","))
        wb.sweep(farm, args.ladder, args.duration, generate, lambda row: None, rates=rates)
    for rate, result in zip(rates, results, strict=True):
        d = result["delivery"]
        print(
            f"{args.ladder} {rate:g} msg/s/room: {d['per_s']}/s delivered in the window, "
            f"{d['deliveries']} of {d['expected']} in all, p50 {d['latency_ms']['p50']} ms, "
            f"order {'ok' if result['order']['ok'] else 'FAILED'} "
            f"({result['order']['clients_checked']} clients)"
        )
        print("\n".join(phase_rows(samples, result)))
    if args.out:
        args.out.write_text(json.dumps({"samples": samples, "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

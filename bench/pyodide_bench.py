"""Benchmark of the Worker inside Pyodide (not a test): start-up and cost per published message.

    make bench-pyodide            # or: .venv/bin/python bench/pyodide_bench.py [--messages N]

Reports, from the Pyodide test harness (tests/pyodide/harness):

* the module import time of src/worker.py: in a fresh interpreter with the dependencies
  (workers SDK, pydantic, msgspec, PyJWT) imported first, and again in-process with src/'s
  modules dropped from sys.modules (production gives a Worker 1 s to start; it imports at deploy
  time and starts requests from a memory snapshot);
* the cost of one published message in a room of 100 members: the `webSocketMessage` handler,
  which validates, appends to SQLite, acks and broadcasts to 100 sockets: the CPU time of Node's
  main thread over the handler (Python in Pyodide, plus the fakes' share: delivering the 101
  frames, SQLite), and its wall time (higher on a busy machine). Once with the object awake,
  once rebuilt (`__init__` and a RoomHost from 100 attachments) before every message, as after
  hibernation.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "src")]

from tests.pyodide.conftest import new_world, token  # noqa: E402
from tests.pyodide.harness_client import PyodideHarness  # noqa: E402

REIMPORT = """
import importlib, sys, time

def main(h):
    roots = {"worker", "objects", "rooms"}
    saved = {k: m for k, m in sys.modules.items() if k.split(".")[0] in roots}
    times = []
    try:
        for _ in range(RUNS):
            for key in [k for k in sys.modules if k.split(".")[0] in roots]:
                del sys.modules[key]
            started = time.perf_counter()
            importlib.import_module("worker")
            times.append((time.perf_counter() - started) * 1000)
    finally:
        for key in [k for k in sys.modules if k.split(".")[0] in roots]:
            del sys.modules[key]
        sys.modules.update(saved)
    return times
"""


def publish_cost(
    harness: PyodideHarness, members: int, messages: int, hibernate: bool
) -> dict[str, float]:
    world = new_world(harness)
    clients = [world.connect("bench", token(f"user{i}", f"User {i}")) for i in range(members)]
    world.set_hibernate_every_event(hibernate)
    sender = clients[0]
    sender.publish("warm-up", "x")
    world.stats(reset=True)
    for i in range(messages):
        sender.publish(f"m{i}", f"message number {i} for everyone in the room")
    stats = world.stats(reset=True)["webSocketMessage"]
    received = len(clients[-1].frames("message"))
    assert received == messages + 1, received
    harness.take_diagnostics(world)
    return {
        "handler_wall_ms": stats["wall_ms"] / stats["events"],
        "cpu_ms": stats["cpu_us"] / stats["events"] / 1000,
        "events": stats["events"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="Pyodide benchmark of the Worker")
    parser.add_argument("--members", type=int, default=100)
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--reimports", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    started = time.perf_counter()
    harness = PyodideHarness()
    boot_s = time.perf_counter() - started
    try:
        info = harness.boot_info
        timings = info["timings"]
        reimport = harness.probe(REIMPORT.replace("RUNS", str(args.reimports)))
        awake = publish_cost(harness, args.members, args.messages, hibernate=False)
        rebuilt = publish_cost(harness, args.members, max(20, args.messages // 4), hibernate=True)
    finally:
        harness.close()

    figures = {
        "pyodide": info["pyodide"],
        "python": info["python"].split()[0],
        "node": info["node"],
        "boot_s": round(boot_s, 2),
        "load_pyodide_ms": timings["load_pyodide_ms"],
        "import_deps_ms": timings["import_deps_ms"],
        "import_worker_ms": timings["import_main_ms"],
        "import_worker_with_deps_ms": round(
            timings["import_deps_ms"] + timings["import_main_ms"], 1
        ),
        "reimport_worker_median_ms": round(statistics.median(reimport), 1),
        "members": args.members,
        "publish_awake_handler_ms": round(awake["handler_wall_ms"], 3),
        "publish_awake_cpu_ms": round(awake["cpu_ms"], 3),
        "publish_rebuilt_handler_ms": round(rebuilt["handler_wall_ms"], 3),
        "publish_rebuilt_cpu_ms": round(rebuilt["cpu_ms"], 3),
        "messages_awake": awake["events"],
        "messages_rebuilt": rebuilt["events"],
    }
    print(f"Pyodide {figures['pyodide']} (Python {figures['python']}) on Node {figures['node']}")
    print(f"  boot (snapshot {info['snapshot']})                {figures['boot_s']:8.2f} s")
    print(f"  import src/worker.py, deps already imported   {figures['import_worker_ms']:8.1f} ms")
    print(
        f"  import src/worker.py incl. SDK/pydantic/...   "
        f"{figures['import_worker_with_deps_ms']:8.1f} ms"
    )
    print(
        f"  re-import src/ modules (median of {args.reimports})        "
        f"{figures['reimport_worker_median_ms']:8.1f} ms"
    )
    print(
        f"  publish to a {args.members}-member room, awake         "
        f"{figures['publish_awake_cpu_ms']:8.3f} ms CPU/msg "
        f"({figures['publish_awake_handler_ms']:.3f} ms wall, {awake['events']} messages)"
    )
    print(
        f"  publish to a {args.members}-member room, rebuilt each  "
        f"{figures['publish_rebuilt_cpu_ms']:8.3f} ms CPU/msg "
        f"({figures['publish_rebuilt_handler_ms']:.3f} ms wall, {rebuilt['events']} messages)"
    )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()

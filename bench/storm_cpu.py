"""Server CPU of connect storms, by thread, alternating two checkouts (A/B on a shared machine).

For each storm a fresh `rooms serve` of the checkout is pinned to one core and `loadtest
connect-storm` (this checkout's) to the other, as `bench/run.py` does; the server's CPU is read
from /proc for the event loop's thread and for all its other threads together (the preparer,
the closing threads), from before the storm until 4 s after it (the leaves included), with the
files made ahead and at first writes from `GET /metrics` (where the checkout counts them).
Wall time and handshake p99 are printed too, but on a shared machine only the CPU means much.

    .venv/bin/python bench/storm_cpu.py --a /path/to/main --b . --pairs 2
    .venv/bin/python bench/storm_cpu.py --a . --b . --b-args "--files-made-ahead 0" --rooms 1000
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PYTHON = str(ROOT / ".venv" / "bin" / "python")
SECRET = "bench-secret-that-is-long-enough-for-hs256-0123456789"
ADMIN = "a" * 40
TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of the process's main thread (`loop`) and of all its other threads."""
    out = {"loop": 0.0, "threads": 0.0}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile
        out["loop" if int(tid) == pid else "threads"] += (int(fields[11]) + int(fields[12])) / TICK
    return out


def files_made(port: int) -> dict[str, float]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/metrics", headers={"Authorization": f"Bearer {ADMIN}"}
    )
    with urllib.request.urlopen(request) as reply:
        text = reply.read().decode()
    pattern = r'rooms_new_room_files_total\{when="(\w+)"\} (\S+)'
    return {m.group(1): float(m.group(2)) for m in re.finditer(pattern, text)}


def storm(root: Path, serve_args: str, rooms: int, clients: int) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="storm-cpu-"))
    (work / "dev.vars").write_text(
        f"JWT_SECRET={SECRET}\nADMIN_TOKEN={ADMIN}\n"
        "NEW_ROOMS_PER_MINUTE=1000000\nMAX_CONNECTIONS_PER_ADDRESS=1000000\n"
    )
    port = free_port()
    server_cmd = [
        "taskset", "-c", "1", PYTHON, "-m", "roomsd", "--dev-vars", str(work / "dev.vars"),
        "serve", "--port", str(port), "--data-dir", str(work / "data"), *serve_args.split(),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": f"{root / 'src'}:{root / 'local'}"}
    with (work / "server.log").open("wb") as log:
        server = subprocess.Popen(server_cmd, env=env, cwd=root, stdout=log, stderr=log)
    try:
        for _ in range(400):
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        time.sleep(1)
        before, load = thread_cpu(server.pid), os.getloadavg()[0]
        generator = [
            "taskset", "-c", "0", PYTHON, "-m", "loadtest", "connect-storm",
            "--url", f"ws://127.0.0.1:{port}", "--secret", SECRET, "--out", str(work),
            "--name", "storm", "--progress", "none", "--rooms", str(rooms),
            "--clients", str(clients), "--concurrency", "200", "--connect-timeout", "60",
        ]  # fmt: skip
        generator_env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}:{ROOT / 'local'}"}
        subprocess.run(generator, env=generator_env, cwd=ROOT, check=True, capture_output=True)
        time.sleep(4)  # the leaves
        after = thread_cpu(server.pid)
        try:
            made: dict[str, float] | None = files_made(port)
        except OSError:
            made = None
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait()
    connect = json.loads((work / "storm.json").read_text())["connect"]
    cpu = {name: round(after[name] - before[name], 2) for name in after}
    return {
        "server_cpu_s": round(sum(cpu.values()), 2),
        **{f"{name}_cpu_s": value for name, value in cpu.items()},
        "files_made": made,
        "wall_s": connect.get("wall_s"),
        "p99_ms": connect["time_ms"]["p99"],
        "connected": connect["ok"],
        "failed": connect["failed"],
        "load": round(load, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--a", type=Path, required=True, help="checkout A")
    parser.add_argument("--b", type=Path, required=True, help="checkout B")
    parser.add_argument("--a-args", default="", help="more `rooms serve` options for A")
    parser.add_argument("--b-args", default="", help="more `rooms serve` options for B")
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--rooms", type=int, default=200)
    parser.add_argument("--clients", type=int, default=10, help="connections per room")
    args = parser.parse_args()
    for _ in range(args.pairs):
        for side, root, serve_args in (("A", args.a, args.a_args), ("B", args.b, args.b_args)):
            row = storm(root.resolve(), serve_args, args.rooms, args.clients)
            print(json.dumps({"side": side, "root": str(root), "serve_args": serve_args, **row}))


if __name__ == "__main__":
    main()

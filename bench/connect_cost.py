"""Server instructions per connection in a connect storm: a figure a loaded machine cannot skew.

Starts the local runtime under `valgrind --tool=callgrind` (pinned to one core, the generator
to the other, as `bench/run.py` does), zeroes the counters once it listens, runs one
`loadtest connect-storm` into new rooms, waits for the leaves, and dumps. Instructions for the
storm (each connection's upgrade, welcome, presence, leave and log lines) divided by the
connections; CPU time on this shared machine moves by +-25% between runs of one command, the
count by about 1%. Valgrind runs the server ~50x slower: a few hundred connections are enough.

    .venv/bin/python bench/connect_cost.py --rooms 20          # 200 connections, ~2 minutes
    .venv/bin/python bench/connect_cost.py --rooms 20 --root /path/to/another/checkout
    .venv/bin/python bench/connect_cost.py --rooms 20 --serve-args "--files-made-ahead 0"
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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYTHON = str(ROOT / ".venv" / "bin" / "python")
SECRET = "bench-secret-that-is-long-enough-for-hs256-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_listening(port: int, server: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit("the server exited before it listened")
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(1)
    raise SystemExit(f"the server did not listen within {timeout_s:.0f} s")


def instructions(dump: Path) -> int:
    """The `summary:` line of a callgrind dump: instructions between the zero and the dump."""
    match = re.search(r"^summary:\s+(\d+)", dump.read_text(errors="replace"), re.M)
    if match is None:
        raise SystemExit(f"no summary in {dump}")
    return int(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rooms", type=int, default=20)
    parser.add_argument("--clients", type=int, default=10, help="connections per room")
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout whose server runs")
    parser.add_argument(
        "--serve-args", default="", help='more `rooms serve` options, e.g. "--files-made-ahead 0"'
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="connect-cost-"))
    dev_vars = work / "dev.vars"
    dev_vars.write_text(
        f"JWT_SECRET={SECRET}\nADMIN_TOKEN={'a' * 40}\n"
        "NEW_ROOMS_PER_MINUTE=1000000\nMAX_CONNECTIONS_PER_ADDRESS=1000000\n"
    )
    port = free_port()
    out = work / "callgrind.out"
    root = args.root.resolve()
    env = {**os.environ, "PYTHONPATH": f"{root / 'src'}:{root / 'local'}"}
    server_cmd = [
        "taskset", "-c", "1", "valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
        PYTHON, "-m", "roomsd", "--dev-vars", str(dev_vars), "serve", "--port", str(port),
        "--data-dir", str(work / "data"), *args.serve_args.split(),
    ]  # fmt: skip
    with (work / "server.log").open("wb") as log:
        server = subprocess.Popen(server_cmd, env=env, cwd=root, stdout=log, stderr=log)
    try:
        wait_listening(port, server, 600)
        time.sleep(2)  # start-up's last callbacks
        subprocess.run(
            ["callgrind_control", "--zero", str(server.pid)], check=True, capture_output=True
        )
        storm = [
            "taskset", "-c", "0", PYTHON, "-m", "loadtest", "connect-storm",
            "--url", f"ws://127.0.0.1:{port}", "--secret", SECRET, "--out", str(work),
            "--name", "storm", "--progress", "none", "--rooms", str(args.rooms),
            "--clients", str(args.clients), "--concurrency", "200", "--connect-timeout", "120",
        ]  # fmt: skip
        generator_env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}:{ROOT / 'local'}"}
        subprocess.run(storm, env=generator_env, cwd=ROOT, check=True, capture_output=True)
        time.sleep(5)  # the leaves reach the server and are handled
        subprocess.run(
            ["callgrind_control", "--dump", str(server.pid)], check=True, capture_output=True
        )
        time.sleep(1)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait()
    connect = json.loads((work / "storm.json").read_text())["connect"]
    total = instructions(Path(f"{out}.1"))
    print(
        json.dumps(
            {
                "connections": connect["ok"],
                "failed": connect["failed"],
                "instructions": total,
                "per_connection": round(total / max(connect["ok"], 1)),
                "root": str(root),
                "serve_args": args.serve_args,
                "work": str(work),
            }
        )
    )


if __name__ == "__main__":
    main()

"""One step of a `make bench` ladder, second by second: where in the step its latency went.

A ladder step's p99 is one figure over the whole step; this runs the same step (the same
generator, shape, message size and pinning as `bench/targets.py`, new rooms, a fresh server)
and prints each second's deliveries, p50, p99 and max, so that a tail made in the step's
first second (new rooms' first messages, a garbage collection after the step's connections)
can be told from one that lasts.

    .venv/bin/python bench/ladder_step.py --rate 10                 # 100 x 10, 10 msg/s/room
    .venv/bin/python bench/ladder_step.py --rate 10 --server websockets
    .venv/bin/python bench/ladder_step.py --shape ladder-1x100 --rate 400 --repeat 3
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import run
import targets


def one_step(shape: str, server_kind: str, rate: float, duration: float) -> None:
    rooms, clients, senders, _ = targets.LADDERS[shape]
    with tempfile.TemporaryDirectory(prefix="rooms-step-") as tmp:
        workdir = Path(tmp)
        runs = workdir / "runs"
        runs.mkdir()
        with run.running(server_kind, workdir) as server:
            args = targets.ladder_step_args(rooms, clients, senders, rate, duration)
            result = run.loadtest(server, "fanout", "step", args, runs)
    delivery = result.result["delivery"]
    print(
        f"{shape} {server_kind} {rate:g} msg/s/room: {delivery['per_s']:,.0f} deliveries/s, "
        f"server CPU {result.server_cpu_s:.2f} s, other CPU {result.other_cpu_s:.2f} s"
    )
    print("  second  deliveries   p50 ms   p99 ms   max ms")
    for row in result.result["timeline"]:
        if row["count"]:
            print(
                f"  {row['t']:>6}  {row['count']:>10,}  {row['p50']:>7.1f}  {row['p99']:>7.1f}"
                f"  {row['max']:>7.1f}"
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=sorted(targets.LADDERS), default="ladder-100x10")
    parser.add_argument("--server", default="rooms", help="rooms, websockets, node, ...")
    parser.add_argument("--rate", type=float, required=True, help="messages/s per room")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds of sending")
    parser.add_argument("--repeat", type=int, default=1, help="steps, each on a fresh server")
    args = parser.parse_args()
    for _ in range(args.repeat):
        one_step(args.shape, args.server, args.rate, args.duration)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What a Python Worker pays on workerd for a publish: our Room against floors and the JS baseline.

Serves five variants, each on its own fresh pinned `wrangler dev` (as `make bench` serves the
Worker: workerd on one core, the generator on the other), and drives each with the same open-loop
fan-out at a fixed rate, the variants alternating within each round:

- ``js``: the JS baseline (bench/baselines/workerd-js), the work of Cloudflare's chat demo;
- ``js-empty``: the same with `webSocketMessage` returning at once;
- ``py-empty``: our Worker with `webSocketMessage` returning at once (bench/floor/floor_main.py);
- ``py-direct``: our Worker with the baseline's publish written in the most direct Python;
- ``ours``: our Worker as it is.

Prints, per shape and variant, the CPU per publish of the Worker's workerd process (/proc, the
median over rounds and every round's figure) and of the whole wrangler tree, with the load's
deliveries/s and p99. A variant that answers nothing (the two empty ones) has no latency.

    PYTHONPATH=src:local .venv/bin/python bench/workerd_floor.py            # both shapes, 3 rounds
    ... --shapes 100x10 --rounds 2 --seconds 10
    ... --variants ours --copy trial=/tmp/trial   # A/B: a project copy with its src/ edited
    ... --from-start --seconds 4                  # the new rooms' first messages included

Each step's rooms are new objects, as in `make bench`: the first messages of new rooms land in
the load's first seconds, which the CPU figure skips unless `--from-start`; the worst p99 of
the first three seconds is printed either way.

Reading it: ``py-empty`` minus ``js-empty`` is what entering Python costs an event; ``py-direct``
minus ``py-empty`` against ``js`` minus ``js-empty`` is what the same work costs done from
Python; ``ours`` minus ``py-direct`` is what our Room does beyond the baseline.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "bench")]

import workerd_bench as wb  # noqa: E402

from workerd.wrangler import read_jsonc  # noqa: E402

SECRET = "bench-secret-that-is-long-enough-for-hs256-0123456789"
ROOM_LIMITS = {"messages_per_second": 1_000_000, "burst": 1_000_000}
VARIABLES = {"JWT_SECRET": SECRET, "ROOM_LIMITS": json.dumps(ROOM_LIMITS)}
VARIANTS = ("js", "js-empty", "py-empty", "py-direct", "ours")
# rooms, clients per room, senders per room, messages per second per room
SHAPES = {"1x100": (1, 100, 10, 40.0), "100x10": (100, 10, 1, 0.5)}
JS_HANDLER = "  webSocketMessage(ws, data) {\n"


@dataclass(frozen=True)
class Run:
    workerd_ms: float  # the Worker's workerd process, CPU per publish
    tree_ms: float  # the whole wrangler tree, CPU per publish
    deliveries_per_s: float
    p99_ms: float | None
    first_p99_ms: float | None  # the worst p99 of the load's first three seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=list(SHAPES))
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10, help="measured seconds per run")
    parser.add_argument(
        "--from-start",
        action="store_true",
        help="measure from the first publish (the rooms' first messages in), not 1 s after",
    )
    parser.add_argument(
        "--copy",
        action="append",
        default=[],
        metavar="NAME=ROOT",
        help="also serve the project copy at ROOT (its src/ edited) as variant NAME",
    )
    args = parser.parse_args()
    copies = dict(item.split("=", 1) for item in args.copy)
    with tempfile.TemporaryDirectory(prefix="rooms-floor-") as tmp:
        farms = {name: farm(name, Path(tmp)) for name in args.variants}
        for name, root in copies.items():
            farms[name] = wb.WorkerdFarm(
                Path(tmp) / name, dict(VARIABLES), root=Path(root), label=name
            )
        for shape in args.shapes:
            runs: dict[str, list[Run]] = {name: [] for name in farms}
            for round_ in range(args.rounds):
                for name, factory in farms.items():
                    run = fanout(factory, SHAPES[shape], args.seconds, Path(tmp), args.from_start)
                    runs[name].append(run)
                    print(f"{shape} round {round_ + 1} {name}: {run}", flush=True)
            report(shape, runs)
    return 0


def farm(name: str, tmp: Path) -> wb.WorkerdFarm:
    """The `wrangler dev` factory serving variant ``name``."""
    variables = dict(VARIABLES)
    if name.startswith("js"):
        source = wb.JS_BASELINE
        if name == "js-empty":
            source = tmp / "js-empty-source"
            shutil.copytree(wb.JS_BASELINE, source, ignore=shutil.ignore_patterns(".wrangler"))
            worker = source / "worker.mjs"
            text = worker.read_text()
            if JS_HANDLER not in text:
                raise SystemExit(f"bench/baselines/workerd-js no longer has {JS_HANDLER!r}")
            worker.write_text(text.replace(JS_HANDLER, JS_HANDLER + "    return;\n", 1))
        return wb.WorkerdFarm(
            tmp / name, variables, baseline=True, baseline_root=source, label=name
        )
    root = ROOT
    if name.startswith("py-"):
        root = wb.snapshot(ROOT, tmp / f"{name}-source")
        shutil.copy(ROOT / "bench" / "floor" / "floor_main.py", root / "src" / "floor_main.py")
        config = read_jsonc(root / "wrangler.jsonc")
        config["main"] = "src/floor_main.py"
        (root / "wrangler.jsonc").write_text(json.dumps(config, indent=2))
        variables["FLOOR_VARIANT"] = name.removeprefix("py-")
    return wb.WorkerdFarm(tmp / name, variables, root=root, label=name)


def fanout(
    factory: wb.WorkerdFarm,
    shape: tuple[int, int, int, float],
    seconds: float,
    tmp: Path,
    from_start: bool = False,
) -> Run:
    """One fan-out at a fixed rate on a fresh `wrangler dev`: CPU per publish while sending."""
    rooms, clients, senders, rate = shape
    out = Path(tempfile.mkdtemp(dir=tmp, prefix="run-"))
    with factory.running() as server:
        generator = wb.start_fanout(
            server,
            SECRET,
            out,
            pin=factory.pin,
            rooms=rooms,
            clients=clients,
            senders=senders,
            rate=rate,
            duration=seconds + 4,
        )
        if not from_start:
            time.sleep(1.0)  # past the first publishes of new rooms
        before = wb.cpu_by_process(server.pid)
        time.sleep(seconds)
        after = wb.cpu_by_process(server.pid)
        generator.wait(120)
    publishes = rate * rooms * seconds
    spent = {k: v - before.get(k, 0.0) for k, v in after.items()}
    workerd = max((v for k, v in spent.items() if k.startswith("workerd")), default=0.0)
    result = json.loads(sorted(out.glob("fanout-*.json"))[-1].read_text())
    delivery = result["delivery"]
    first = [s["p99"] for s in result["timeline"][:3] if s.get("p99") is not None]
    return Run(
        workerd_ms=round(1000 * workerd / publishes, 2),
        tree_ms=round(1000 * sum(spent.values()) / publishes, 2),
        deliveries_per_s=delivery["per_s"],
        p99_ms=delivery["latency_ms"]["p99"],
        first_p99_ms=max(first) if first else None,
    )


def report(shape: str, runs: dict[str, list[Run]]) -> None:
    rooms, clients, _, rate = SHAPES[shape]
    print(f"\n{shape}: {rate:g} msg/s per room, {rooms * rate * clients:,.0f} deliveries/s offered")
    print(
        "| variant | Worker's workerd ms per publish (median; each round) | tree ms | p99 ms "
        "| worst p99 of the first 3 s |"
    )
    print("|---|---|---|---|---|")
    for name, each in runs.items():
        workerd = statistics.median(r.workerd_ms for r in each)
        tree = statistics.median(r.tree_ms for r in each)
        p99s = [r.p99_ms for r in each if r.p99_ms is not None]
        p99 = f"{statistics.median(p99s):.1f}" if p99s else "-"
        firsts = [r.first_p99_ms for r in each if r.first_p99_ms is not None]
        first = f"{statistics.median(firsts):.1f}" if firsts else "-"
        rounds = ", ".join(f"{r.workerd_ms:.2f}" for r in each)
        print(f"| {name} | {workerd:.2f} ({rounds}) | {tree:.2f} | {p99} | {first} |")


if __name__ == "__main__":
    sys.exit(main())

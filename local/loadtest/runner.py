"""The coordinator: splits the clients over worker processes, runs the phases, merges results.

Sequence, the same for one in-process worker or many worker processes:

    worker -> spawned      coordinator -> connect     (all workers connect their clients)
    worker -> ready        coordinator -> go {t0, t_end}  (one shared start on the monotonic clock)
    worker -> sent {heads} coordinator -> heads       (the highest seq of every room, run-wide)
    worker -> result       (stats and the order check against those heads)

Workers send `progress` events every half second throughout; they feed the live display.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import math
import multiprocessing
import multiprocessing.connection
import os
import platform
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from loadtest.config import Config
from loadtest.stats import Histogram, Timeline, merge_counters
from loadtest.tokens import TokenSource
from loadtest.worker import Channel, ClientSpec, Worker

START_DELAY_NS = 200_000_000  # between `go` and the first publish, so every worker is waiting


class RunError(RuntimeError):
    pass


# --------------------------------------------------------------------------- channels


class QueueChannel:
    """One end of an in-process channel."""

    def __init__(self, inbox: asyncio.Queue[dict[str, Any]], outbox: asyncio.Queue[dict[str, Any]]):
        self._inbox = inbox
        self._outbox = outbox

    async def send(self, message: dict[str, Any]) -> None:
        self._outbox.put_nowait(message)

    async def recv(self) -> dict[str, Any]:
        return await self._inbox.get()


def queue_pair() -> tuple[QueueChannel, QueueChannel]:
    a: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    b: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    return QueueChannel(a, b), QueueChannel(b, a)


class PipeChannel:
    """A `multiprocessing` pipe seen from the event loop (EOF arrives as an `eof` event).

    A thread does the blocking reads: a result bigger than the pipe's buffer arrives in
    pieces, and a reader registered with the event loop (uvloop makes its fd non-blocking)
    would fail half-way through it.
    """

    def __init__(self, conn: multiprocessing.connection.Connection) -> None:
        self._conn = conn
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._loop = asyncio.get_running_loop()
        self._reader = threading.Thread(target=self._read_all, name="pipe-reader", daemon=True)
        self._reader.start()

    def _read_all(self) -> None:
        while True:
            try:
                message = self._conn.recv()
            except Exception:  # EOF, a closed pipe, or a message cut short: the worker is gone
                message = {"ev": "eof"}
            try:
                self._loop.call_soon_threadsafe(self._queue.put_nowait, message)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                return
            if message.get("ev") == "eof":
                return

    async def send(self, message: dict[str, Any]) -> None:
        self._conn.send(message)

    async def recv(self) -> dict[str, Any]:
        return await self._queue.get()

    def close(self) -> None:
        """Close once the worker process has exited (its end closed, so the reader is done):
        closing an fd a thread still reads from could hand it someone else's data."""
        self._reader.join(timeout=5)
        self._conn.close()


def _worker_process(
    conn: multiprocessing.connection.Connection,
    cfg_data: dict[str, Any],
    specs: list[tuple[int, int, int, str | None]],
    secret: str | None,
    index: int,
    use_uvloop: bool,
) -> None:
    """Entry point of a worker process (spawned: nothing is inherited but these arguments)."""
    cfg = Config.from_dict(cfg_data)
    client_specs = [ClientSpec(*s) for s in specs]

    async def main() -> None:
        chan = PipeChannel(conn)
        mint = TokenSource(secret=secret).mint if secret else None
        await Worker(cfg, client_specs, chan, mint, index).run()

    with contextlib.suppress(KeyboardInterrupt):
        _run_loop(main, use_uvloop)


def _run_loop(main: Callable[[], Coroutine[Any, Any, None]], use_uvloop: bool) -> None:
    if use_uvloop:
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())


def uvloop_available() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


# --------------------------------------------------------------------------- planning


def plan(cfg: Config, tokens: dict[str, str] | str | None) -> list[list[ClientSpec]]:
    """Client specs per worker: whole rooms per process when there are enough rooms."""
    shares: list[list[ClientSpec]] = [[] for _ in range(cfg.procs)]
    index = 0
    for room in range(cfg.rooms):
        for in_room in range(cfg.clients):
            if isinstance(tokens, dict):
                token: str | None = tokens[cfg.user_id(index)]
            else:
                token = tokens
            worker = room % cfg.procs if cfg.rooms >= cfg.procs else index % cfg.procs
            shares[worker].append(ClientSpec(index, room, in_room, token))
            index += 1
    return shares


def all_user_ids(cfg: Config) -> list[str]:
    return [cfg.user_id(i) for i in range(cfg.total_clients)]


# --------------------------------------------------------------------------- server sampling


def process_tree(root: int) -> list[int]:
    """``root`` and its descendants, from the parent ids in /proc/*/stat."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def _run_queue_wait_s(pid: int) -> float:
    """Seconds ``pid``'s threads spent runnable but waiting for a CPU (0 without schedstat)."""
    total = 0
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0
    for tid in threads:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[1])  # on CPU, waiting on a run queue, slices (ns)
        except (OSError, ValueError, IndexError):
            continue  # a thread that just exited, or a kernel without schedstat
    return total / 1e9


@dataclass
class ServerSampler:
    """CPU seconds and memory of a local server process, read from /proc at marked moments."""

    pid: int
    marks: dict[str, dict[str, float]] = field(default_factory=dict)

    def read(self) -> dict[str, float] | None:
        """The server's CPU seconds, CPU wait and memory, summed over its process tree.

        One process for the local runtime; `wrangler dev` is node plus two workerd processes.
        ``wait_s`` is how long its threads were runnable but waiting for a CPU (schedstat): on
        a shared machine, a server that falls behind with a large wait was starved, not slow.
        """
        ticks = os.sysconf("SC_CLK_TCK")
        cpu = rss = peak = wait = 0.0
        for pid in process_tree(self.pid):
            wait += _run_queue_wait_s(pid)
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rpartition(")")[2].split()
                with open(f"/proc/{pid}/status") as f:
                    status = dict(
                        line.split(":", 1) for line in f.read().splitlines() if ":" in line
                    )
            except OSError:
                if pid == self.pid:
                    return None
                continue  # a child that just exited
            # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
            cpu += (int(fields[11]) + int(fields[12])) / ticks
            rss += int(status["VmRSS"].split()[0]) / 1024
            peak += int(status["VmHWM"].split()[0]) / 1024
        return {
            "cpu_s": cpu,
            "wait_s": wait,
            "rss_mb": rss,
            "peak_rss_mb": peak,
            "at": time.monotonic(),
        }

    def mark(self, name: str) -> None:
        sample = self.read()
        if sample is not None:
            self.marks[name] = sample

    def summary(self, connected: int, duration_s: float) -> dict[str, Any]:
        marks = self.marks
        out: dict[str, Any] = {"pid": self.pid, "marks": marks}
        end = marks.get("end")
        if end:
            out["peak_rss_mb"] = round(end["peak_rss_mb"], 1)
        if "go" in marks and "t_end" in marks:
            cpu = marks["t_end"]["cpu_s"] - marks["go"]["cpu_s"]
            out["cpu_s_sending"] = round(cpu, 2)
            out["cpu_util_sending"] = round(cpu / duration_s, 3) if duration_s else None
            if "wait_s" in marks["go"] and "wait_s" in marks["t_end"]:
                wait = marks["t_end"]["wait_s"] - marks["go"]["wait_s"]
                out["cpu_wait_s_sending"] = round(wait, 2)
        if "start" in marks and end:
            out["cpu_s_total"] = round(end["cpu_s"] - marks["start"]["cpu_s"], 2)
        if "start" in marks and "connected" in marks and connected:
            grown = marks["connected"]["rss_mb"] - marks["start"]["rss_mb"]
            out["rss_per_connection_kb"] = round(grown * 1024 / connected, 2)
        if "start" in marks and "t_end" in marks and connected:
            grown = marks["t_end"]["rss_mb"] - marks["start"]["rss_mb"]
            out["rss_per_connection_kb_at_end"] = round(grown * 1024 / connected, 2)
        return out


# --------------------------------------------------------------------------- the run


Display = Any  # loadtest.progress.Display (kept loose to avoid an import cycle in typing)


async def run(
    cfg: Config, source: TokenSource, display: Display, *, use_uvloop: bool = False
) -> dict[str, Any]:
    """Run one load test and return its merged result (see `report.py` for the fields)."""
    started_at = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    tokens = await asyncio.to_thread(
        source.resolve, all_user_ids(cfg) if source.kind == "command" else []
    )
    await reachable(cfg)
    shares = plan(cfg, tokens)
    secret = source.secret
    chans: list[Channel] = []
    tasks: list[asyncio.Task[None]] = []
    procs: list[multiprocessing.process.BaseProcess] = []
    pipes: list[PipeChannel] = []
    if cfg.procs == 1:
        mine, theirs = queue_pair()
        mint = source.mint if secret else None
        worker = Worker(cfg, shares[0], theirs, mint, 0)
        tasks.append(asyncio.create_task(worker.run()))
        chans.append(mine)
    else:
        ctx = multiprocessing.get_context("spawn")
        for index, share in enumerate(shares):
            ours, theirs_conn = ctx.Pipe()
            specs = [(s.index, s.room, s.in_room, s.token) for s in share]
            proc = ctx.Process(
                target=_worker_process,
                args=(theirs_conn, cfg.to_dict(), specs, secret, index, use_uvloop),
                daemon=True,
                name=f"loadtest-worker-{index}",
            )
            proc.start()
            theirs_conn.close()
            procs.append(proc)
            pipe = PipeChannel(ours)
            pipes.append(pipe)
            chans.append(pipe)
    try:
        result = await _coordinate(cfg, chans, tasks, display)
    finally:
        for task in tasks:
            if not task.done():
                task.cancel()
        for child in procs:
            child.join(timeout=5)
            if child.is_alive():
                child.terminate()
                child.join(timeout=5)
        for pipe in pipes:
            pipe.close()
    result["started_at"] = started_at
    result["generator"]["event_loop"] = "uvloop" if use_uvloop else "asyncio"
    return result


async def reachable(cfg: Config) -> None:
    """Fail at once, before any client, when nothing listens at the target: every client would
    otherwise wait out its own connect and the report would count publishes that never left."""
    parts = urlsplit(cfg.url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "wss" else 80)
    try:
        async with asyncio.timeout(cfg.connect_timeout):
            _, writer = await asyncio.open_connection(host, port)
    except TimeoutError:
        raise RunError(
            f"nothing answered at {cfg.url} within --connect-timeout {cfg.connect_timeout:g} s: "
            "check --url"
        ) from None
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc) or type(exc).__name__
        hint = "start the server (`make serve`) or check --url"
        raise RunError(f"nothing answers at {cfg.url} ({reason}): {hint}") from None
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


async def _coordinate(
    cfg: Config, chans: list[Channel], tasks: list[asyncio.Task[None]], display: Display
) -> dict[str, Any]:
    inboxes: list[asyncio.Queue[dict[str, Any]]] = [asyncio.Queue() for _ in chans]
    sampler = ServerSampler(cfg.server_pid) if cfg.server_pid else None

    async def pump(i: int) -> None:
        while True:
            message = await chans[i].recv()
            if message.get("ev") == "progress":
                display.update(i, message)
            else:
                inboxes[i].put_nowait(message)

    pumps = [asyncio.create_task(pump(i)) for i in range(len(chans))]

    async def gather(event: str, timeout_s: float) -> list[dict[str, Any]]:
        out = []
        deadline = time.monotonic() + timeout_s
        for i, inbox in enumerate(inboxes):
            getter = asyncio.ensure_future(inbox.get())
            waiting: set[asyncio.Future[Any]] = {getter, *tasks}
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    getter.cancel()
                    raise RunError(f"worker {i} sent no {event!r} in {timeout_s:.0f}s")
                done, _ = await asyncio.wait(
                    waiting, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
                )
                if getter in done:
                    break
                for task in done:  # an in-process worker ended early: surface its error
                    waiting.discard(task)
                    if task.exception() is not None:
                        getter.cancel()
                        raise RunError(f"worker failed: {task.exception()!r}")
            message = getter.result()
            if message.get("ev") != event:
                raise RunError(f"worker {i} sent {message!r} instead of {event!r}")
            out.append(message)
        return out

    async def broadcast(message: dict[str, Any]) -> None:
        for chan in chans:
            await chan.send(message)

    per_worker = math.ceil(cfg.total_clients / len(chans))
    connect_bound = math.ceil(per_worker / cfg.concurrency) * cfg.connect_timeout + 60
    try:
        spawned = await gather("spawned", 120)
        if sampler:
            sampler.mark("start")
        display.phase("connecting")
        connect_started = time.monotonic()
        await broadcast({"cmd": "connect"})
        ready = await gather("ready", connect_bound)
        connect_wall = time.monotonic() - connect_started
        if cfg.scenario != "connect-storm" and not any(r["connected"] for r in ready):
            codes: Counter[str] = Counter()
            for r in ready:
                merge_counters(codes, r.get("errors", {}))
            listed = ", ".join(f"{code} {n}" for code, n in codes.most_common()) or "no code"
            raise RunError(f"no client could connect ({listed}): nothing was published")
        if sampler:
            sampler.mark("connected")
        duration_ns = 0 if cfg.scenario == "connect-storm" else int(cfg.duration * 1e9)
        t0 = time.monotonic_ns() + START_DELAY_NS
        t_end = t0 + duration_ns
        display.phase("holding" if cfg.scenario == "idle" else "sending", t0=t0, t_end=t_end)
        await broadcast({"cmd": "go", "t0": t0, "t_end": t_end})
        marker = asyncio.create_task(_mark_at(sampler, t0, t_end)) if sampler else None
        probe_bound = cfg.wake_probe * 2 * cfg.connect_timeout
        sent = await gather(
            "sent", duration_ns / 1e9 + cfg.drain_timeout + probe_bound + connect_bound + 60
        )
        if marker is not None:
            await marker
        heads: dict[int, int] = {}
        for message in sent:
            for room, head in message["heads"].items():
                heads[int(room)] = max(heads.get(int(room), 0), int(head))
        display.phase("draining")
        await broadcast({"cmd": "heads", "heads": {str(k): v for k, v in heads.items()}})
        results = await gather("result", cfg.drain_timeout + 120)
        if sampler:
            sampler.mark("end")
    finally:
        for pump_task in pumps:
            pump_task.cancel()
    for task in tasks:
        await task
    return merge(cfg, spawned, ready, results, heads, connect_wall, sampler)


async def _mark_at(sampler: ServerSampler | None, t0: int, t_end: int) -> None:
    assert sampler is not None
    for name, at in (("go", t0), ("t_end", t_end)):
        delay = (at - time.monotonic_ns()) / 1e9
        if delay > 0:
            await asyncio.sleep(delay)
        sampler.mark(name)


# --------------------------------------------------------------------------- merging


def merge(
    cfg: Config,
    spawned: list[dict[str, Any]],
    ready: list[dict[str, Any]],
    results: list[dict[str, Any]],
    heads: dict[int, int],
    connect_wall: float,
    sampler: ServerSampler | None,
) -> dict[str, Any]:
    latency = Timeline()
    hists = {
        name: Histogram()
        for name in (
            "ack",
            "replay",
            "connect",
            "reconnect",
            "send_lag",
            "wake_cold",
            "wake_warm",
        )
    }
    errors: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    order_counts: Counter[str] = Counter()
    examples: list[str] = []
    cpu = cpu_sending = 0.0
    for part in results:
        stats = part["stats"]
        latency.merge(Timeline.from_json(stats["latency"]))
        for name, hist in hists.items():
            hist.merge(Histogram.from_json(stats[name]))
        merge_counters(errors, stats["errors"])
        merge_counters(counts, stats["counts"])
        merge_counters(order_counts, part["order"]["counts"])
        examples.extend(part["order"]["examples"])
        cpu += part["cpu_s"]
        cpu_sending += part["cpu_sending_s"]
    total = latency.total()
    duration = 0.0 if cfg.scenario == "connect-storm" else cfg.duration
    connected = sum(int(r["connected"]) for r in ready)
    per_room = Counter(
        room for room in range(cfg.rooms) for _ in range(cfg.clients)
    )  # clients per room
    expected = sum(head * per_room[room] for room, head in heads.items())
    order_ok = (
        order_counts["failed"] == 0 and order_counts["ok"] > 0 and order_counts["ok"] == connected
    )
    result: dict[str, Any] = {
        "tool": "rooms-loadtest",
        "format": 1,
        "scenario": cfg.scenario,
        "run_id": cfg.run_id,
        "target": cfg.url,
        "config": _public_config(cfg),
        "generator": {
            "procs": cfg.procs,
            "nofile": [w["nofile"] for w in spawned],
            "cpu_s": round(cpu, 2),
            "cpu_s_sending": round(cpu_sending, 2),
            "cpu_util_sending": round(cpu_sending / (duration * cfg.procs), 3)
            if duration
            else None,
            "python": platform.python_version(),
            "platform": sys.platform,
            "cpus": os.cpu_count(),
        },
        "connect": {
            "attempted": cfg.total_clients,
            "ok": counts["connects_ok"],
            "failed": cfg.total_clients - counts["connects_ok"],
            "wall_s": round(connect_wall, 3),
            "per_s": round(counts["connects_ok"] / connect_wall, 1) if connect_wall else None,
            "time_ms": hists["connect"].summary_ms(),
            "presence_frames": counts["presence_frames"],
            "presence_mb": round(counts["presence_bytes"] / 2**20, 2),
        },
        "publish": {
            "sent": counts["sent"],
            "lifecycle_sent": counts.get("lifecycle_sent", 0),  # edits and reactions among them
            "acked": counts["acked"],
            "duplicates": counts["duplicates"],
            "rejected": counts["rejected"],
            "acked_per_s": round(counts["acked"] / duration, 1) if duration else None,
            "ack_ms": hists["ack"].summary_ms(),
            "send_lag_ms": hists["send_lag"].summary_ms(),
        },
        "delivery": {
            "deliveries": counts["deliveries"],
            "in_window": counts["deliveries_in_window"],
            "per_s": round(counts["deliveries_in_window"] / duration, 1) if duration else None,
            "expected": expected,
            "latency_ms": total.summary_ms(),
            "replayed": counts["replayed"],
            "replay_ms": hists["replay"].summary_ms(),
        },
        "reconnect": {
            "drops": counts["drops"],
            "reconnects": counts["reconnects"],
            "time_ms": hists["reconnect"].summary_ms(),
        },
        "errors": dict(sorted(errors.items())),
        "order": {
            "ok": order_ok,
            "clients_checked": connected,
            "counts": dict(order_counts),
            "examples": examples[:10],
            "messages_stored": sum(heads.values()),
        },
        "timeline": latency.rows(),
        "latency_histogram": _distribution(total),
    }
    if cfg.wake_probe:
        cold, warm = hists["wake_cold"], hists["wake_warm"]
        added = None
        if cold.count and warm.count:
            added = round((cold.percentile_us(50) - warm.percentile_us(50)) / 1000, 3)
        result["wake_probe"] = {
            "rooms": cfg.wake_probe,
            "cold_ms": cold.summary_ms(),
            "warm_ms": warm.summary_ms(),
            "added_median_ms": added,
        }
    if sampler:
        result["server"] = sampler.summary(connected, duration)
    result["ok"] = order_ok
    return result


def _distribution(hist: Histogram) -> list[list[float]]:
    """[latency ms, count] per histogram bucket, for the distribution plot."""
    from loadtest.stats import GROWTH

    return [[round((GROWTH**key - 1) / 1000, 4), n] for key, n in sorted(hist.buckets.items())]


def _public_config(cfg: Config) -> dict[str, Any]:
    data = cfg.to_dict()
    data.pop("extra", None)
    return data

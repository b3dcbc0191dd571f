"""`rooms loadtest` (also `python -m loadtest`): load-test a durable-rooms server.

Examples (against `make serve`, whose JWT_SECRET is read from .dev.vars):

    rooms loadtest fanout --rooms 1 --clients 100 --senders 10 --rate 500 --duration 10
    rooms loadtest fanout --rooms 100 --clients 10 --window 4 --duration 10 --procs 2
    rooms loadtest connect-storm --rooms 10 --clients 200 --concurrency 200
    rooms loadtest idle --rooms 1000 --clients 10 --duration 30 --wake-probe 100
    rooms loadtest reconnect-resume --rooms 10 --clients 10 --rate 50 --drop-interval 1

Against a deployed Worker: `--url wss://rooms.example.com --token-command 'mint-token {user}'`.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import re
import secrets
import sys
import time
from pathlib import Path

from loadtest.config import SCENARIOS, Config, ConfigError
from loadtest.progress import Display
from loadtest.report import markdown, plot, write_json
from loadtest.runner import RunError, run, uvloop_available
from loadtest.tokens import TokenError, token_source
from roomsd.os_resources import raise_open_file_limit

PROJECT_ROOT = Path(__file__).resolve().parents[2]
FDS_PER_PROCESS_RESERVE = 64
_PREFIX = re.compile(r"^[A-Za-z0-9._-]{0,40}$")


def _positive_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults in the help, except empty ones (their help says what happens instead)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, "", False):
            return action.help
        return super()._get_help_string(action)


def build_parser(prog: str = "rooms loadtest") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description=(
            "Load-test a durable-rooms server (the local runtime or a deployed Worker): "
            "open-loop publishing, publish-to-delivery latency from the intended send time, "
            "deliveries/s, connect times, errors by code, and an order check that every client "
            "saw every seq once, in order. Writes a JSON result and a Markdown summary."
        ),
        epilog=(
            "Scenarios: fanout (R rooms x C clients, S senders per room publishing for D "
            "seconds), connect-storm (R x C connections as fast as --concurrency allows), idle "
            "(R x C connections held for D seconds; --wake-probe publishes to rooms after the "
            "hold), reconnect-resume (fanout while clients drop and resume with since). "
            "Exit status: 0 when the order check passed, 1 when it failed or the run broke "
            "down, 2 for bad arguments."
        ),
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("scenario", choices=SCENARIOS, help="what to run")

    target = parser.add_argument_group("target")
    target.add_argument("--url", default="ws://127.0.0.1:8787", help="ws:// or wss:// base URL")
    target.add_argument(
        "--token-in",
        choices=("query", "subprotocol"),
        default="query",
        help="send the token as ?token= or as the rooms.v1 subprotocol",
    )
    target.add_argument("--insecure", action="store_true", help="wss: skip TLS verification")
    target.add_argument("--ca-file", help="wss: trust this CA bundle")

    auth = parser.add_argument_group(
        "tokens (one of; default: $JWT_SECRET, then the project's .dev.vars)"
    )
    auth.add_argument("--secret", help="HS256 signing secret: mint one token per client")
    auth.add_argument("--secret-env", metavar="VAR", help="read the secret from $VAR")
    auth.add_argument("--dev-vars", type=Path, metavar="PATH", help="JWT_SECRET from this file")
    auth.add_argument("--token", help="one token for every client (all are then one user)")
    auth.add_argument(
        "--token-command",
        metavar="CMD",
        help="shell command printing a token; {user} is replaced by each client's user id "
        "(run once per client), otherwise run once",
    )

    shape = parser.add_argument_group("shape")
    shape.add_argument("--rooms", type=_positive_int, default=1, help="rooms (R)")
    shape.add_argument("--clients", type=_positive_int, default=10, help="clients per room (C)")
    shape.add_argument("--senders", type=_positive_int, default=1, help="senders per room (S)")
    shape.add_argument("--rate", type=_number, default=10.0, help="messages/s per room, open loop")
    shape.add_argument(
        "--window",
        type=_positive_int,
        default=0,
        help="closed loop instead of --rate: publishes in flight per sender (saturation)",
    )
    shape.add_argument(
        "--duration", type=_number, default=5.0, help="seconds of sending or holding (D)"
    )
    shape.add_argument("--size", type=_positive_int, default=64, help="message body chars (M)")
    shape.add_argument(
        "--lifecycle-mix",
        type=_number,
        default=0.0,
        help="share of sends that edit or react to the sender's latest message (0 to 1)",
    )

    conn = parser.add_argument_group("connections and bounds")
    conn.add_argument(
        "--concurrency", type=_positive_int, default=100, help="handshakes in flight per process"
    )
    conn.add_argument("--connect-timeout", type=_number, default=10.0, help="seconds")
    conn.add_argument(
        "--drain-timeout",
        type=_number,
        default=10.0,
        help="seconds to wait for acks and deliveries after sending stops",
    )

    chaos = parser.add_argument_group("reconnect-resume and idle")
    chaos.add_argument(
        "--drop-interval", type=_number, default=2.0, help="mean seconds between drops per client"
    )
    chaos.add_argument("--drop-mode", choices=("abort", "close"), default="abort")
    chaos.add_argument("--reconnect-delay", type=_number, default=0.05, help="seconds")
    chaos.add_argument(
        "--wake-probe",
        type=_positive_int,
        default=0,
        metavar="N",
        help="idle: publish once in N rooms before the hold and twice after it; the first "
        "publish after the hold (to a hibernated room) is timed against the second",
    )
    chaos.add_argument(
        "--ping-interval", type=_number, default=0.0, help="idle: client pings every N s (0: none)"
    )

    gen = parser.add_argument_group("generator and output")
    gen.add_argument(
        "--procs", type=_positive_int, default=1, help="spread the clients over N processes"
    )
    gen.add_argument("--uvloop", action="store_true", help="run the generator on uvloop")
    gen.add_argument("--seed", type=_positive_int, default=1, help="for drops and send phases")
    gen.add_argument(
        "--room-prefix", default="", help="room names are <prefix><n> (default: lt-<run id>-)"
    )
    gen.add_argument(
        "--server-pid",
        type=_positive_int,
        help="a local server's pid: record its CPU seconds and memory",
    )
    gen.add_argument("--out", type=Path, default=Path("loadtest-results"), help="output folder")
    gen.add_argument("--name", help="output file stem (default: <scenario>-<run id>)")
    gen.add_argument("--plot", action="store_true", help="also write PNG plots (matplotlib)")
    gen.add_argument(
        "--progress", choices=("auto", "rich", "plain", "none"), default="auto", help="live display"
    )
    return parser


def config_from(args: argparse.Namespace, run_id: str) -> Config:
    return Config(
        scenario=args.scenario,
        url=args.url.rstrip("/"),
        rooms=args.rooms,
        clients=args.clients,
        senders=args.senders,
        rate=args.rate,
        window=args.window,
        duration=args.duration,
        size=args.size,
        lifecycle_mix=args.lifecycle_mix,
        concurrency=args.concurrency,
        connect_timeout=args.connect_timeout,
        drain_timeout=args.drain_timeout,
        procs=args.procs,
        room_prefix=args.room_prefix,
        token_in=args.token_in,
        insecure=args.insecure,
        ca_file=args.ca_file,
        drop_interval=args.drop_interval,
        drop_mode=args.drop_mode,
        reconnect_delay=args.reconnect_delay,
        wake_probe=args.wake_probe,
        ping_interval=args.ping_interval,
        seed=args.seed,
        run_id=run_id,
        server_pid=args.server_pid,
    )


def main(argv: list[str] | None = None, prog: str = "rooms loadtest") -> int:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    run_id = time.strftime("%H%M%S") + secrets.token_hex(2)
    if not _PREFIX.match(args.room_prefix):
        parser.error("--room-prefix: up to 40 characters of [A-Za-z0-9._-]")
    if "?" in args.url or "#" in args.url:
        parser.error("--url is a base URL without a query (rooms are at <url>/rooms/<room>/ws)")
    try:
        cfg = config_from(args, run_id).validate()
    except ConfigError as exc:
        parser.error(str(exc))
    try:
        source = token_source(
            secret=args.secret,
            secret_env=args.secret_env,
            dev_vars=args.dev_vars,
            token=args.token,
            command=args.token_command,
            default_dev_vars=PROJECT_ROOT / ".dev.vars",
        )
    except TokenError as exc:
        parser.error(str(exc))
    soft, hard = raise_open_file_limit()
    per_process = math.ceil(cfg.total_clients / cfg.procs) + FDS_PER_PROCESS_RESERVE
    if per_process > soft:
        parser.error(
            f"{cfg.total_clients} connections over {cfg.procs} process(es) need about "
            f"{per_process} open files per process, but the limit is {soft} (hard {hard}): "
            "pass a larger --procs or raise `ulimit -Hn`"
        )
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            parser.error("--plot needs matplotlib: `make setup` installs it (or pip install it)")
    if args.uvloop and not uvloop_available():
        parser.error("--uvloop needs uvloop: `uv sync --group bench` (or pip install it)")

    stem = args.out / (args.name or f"{cfg.scenario}-{run_id}")
    display = Display(args.progress, cfg.scenario, cfg.total_clients)
    display.start()
    try:
        coro = run(cfg, source, display, use_uvloop=args.uvloop)
        if args.uvloop:
            import uvloop

            result = uvloop.run(coro)
        else:
            result = asyncio.run(coro)
    except KeyboardInterrupt:
        display.stop()
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except (RunError, TokenError, OSError) as exc:
        display.stop()
        print(f"{prog}: the run failed: {exc}", file=sys.stderr)
        return 1
    display.stop()

    summary = markdown(result)
    print(summary)
    try:  # only now: a run that broke down leaves no result behind
        args.out.mkdir(parents=True, exist_ok=True)
        write_json(result, stem.with_suffix(".json"))
        stem.with_suffix(".md").write_text(summary)
        written = [stem.with_suffix(".json"), stem.with_suffix(".md")]
        if args.plot:
            written += plot(result, stem)
    except OSError as exc:
        print(f"{prog}: cannot write the results to {args.out}: {exc}", file=sys.stderr)
        return 1
    print("wrote " + ", ".join(str(p) for p in written))
    return 0 if result["ok"] else 1

"""`rooms`: run durable-rooms locally, and mint development tokens."""

from __future__ import annotations

import argparse
import errno
import gc
import logging
import os
import socket
import sqlite3
import sys
from pathlib import Path
from typing import Any, NoReturn

from aiohttp import web

from rooms.auth import MIN_ADMIN_TOKEN_CHARS, mint_token, weak_admin_token, weak_jwt_secret
from roomsd import logredact
from roomsd.bindings import Faults
from roomsd.config import (
    PROJECT_ROOT,
    ConfigError,
    Settings,
    archive_policy_from,
    count_from,
    ensure_dev_secret,
    guest_tokens_from,
    limits_from,
    origins_from,
    token_policy_of,
    vars_from,
)
from roomsd.os_resources import limit_malloc_arenas, raise_open_file_limit
from roomsd.rooms import HibernationPolicy
from roomsd.server import make_app, runner_options, write_room_lines_directly


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a TCP port: use 1-65535 (0: any free)")
    return value


class _Parser(argparse.ArgumentParser):
    """Usage mistakes in one line, exit status 2, with where to look."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (`{self.prog} --help` lists the options)\n")


class _FullHelp(argparse.Action):
    """`rooms --help`: the commands, then every command's own options (serve's above all)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        commands: list[argparse.ArgumentParser] = getattr(parser, "commands", [])
        print(parser.format_help())
        for command in commands:
            print(command.format_help())
        print("rooms loadtest --help: the load tester's options")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="rooms",
        description="durable-rooms on this machine: no account, no network.",
        add_help=False,
    )
    parser.add_argument(
        "-h",
        "--help",
        action=_FullHelp,
        help="show this help, with every command's options, and exit",
    )
    parser.add_argument(
        "--dev-vars",
        type=Path,
        default=PROJECT_ROOT / ".dev.vars",
        help="secrets and vars file (default: %(default)s)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser(
        "serve",
        help="serve the rooms, the front and public/ over HTTP",
        description="rooms serve: the rooms, the front and the chat page (public/) over HTTP.",
    )
    serve.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: %(default)s)"
    )
    serve.add_argument("--port", type=_port, default=8787, help="TCP port (default: %(default)s)")
    serve.add_argument(
        "--data-dir",
        type=Path,
        default=PROJECT_ROOT / ".data",
        help="room databases, D1 and R2 live here (default: %(default)s)",
    )
    serve.add_argument(
        "--hibernate-after",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="evict idle room instances after this long (default: %(default)s)",
    )
    serve.add_argument(
        "--open-idle-databases",
        type=_count,
        default=16,
        metavar="N",
        help="quiet rooms (hibernated, or awake and quiet for 3 s) that keep their SQLite "
        "connection open, most recent first; each costs ~100-150 KiB, reopening one ~2 ms "
        "of a worker thread (default: %(default)s)",
    )
    serve.add_argument(
        "--files-made-ahead",
        type=_count,
        default=128,
        metavar="N",
        help="new rooms whose file is made as their first member joins, ahead of their first "
        "message, at most this many at once (the rest at their first write; a file nobody "
        "wrote to is removed, and one removed after 3 s unused still counts for 30 s; 0: never "
        "ahead) (default: %(default)s)",
    )
    serve.add_argument(
        "--hibernate-every-event",
        action="store_true",
        help="evict room instances after every event (for tests)",
    )
    serve.add_argument(
        "--log-messages",
        action="store_true",
        help="log a line for every published message, not only connections and errors",
    )
    serve.add_argument(
        "--fault",
        action="append",
        default=[],
        choices=["r2-put", "d1-write", "crash-after-r2-put"],
        help="inject a failure (repeatable; for testing the archive's retries)",
    )

    token = sub.add_parser(
        "token",
        help="mint a development JWT signed with JWT_SECRET",
        description="rooms token: a development JWT signed with the server's JWT_SECRET "
        "(from --dev-vars, which must exist, or the environment).",
    )
    token.add_argument("user", help="the user id (the token's `sub`)")
    token.add_argument("--name", help="display name (default: the user id)")
    token.add_argument("--ttl", type=int, default=24 * 3600, help="seconds (default: 1 day)")

    # Parsed by loadtest.cli (see `rooms loadtest --help`); listed here for `rooms --help`.
    sub.add_parser("loadtest", help="load-test a rooms server (local or deployed)", add_help=False)
    parser.commands = [serve, token]  # type: ignore[attr-defined]  # for _FullHelp
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["loadtest"]:
        from loadtest.cli import main as loadtest

        return loadtest(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        if args.command == "token":
            return token(args)
        return serve(args)
    except ConfigError as exc:
        print(f"rooms: {exc}", file=sys.stderr)
        return 2


def token(args: argparse.Namespace) -> int:
    """Mint a token with the server's secret; never create one (the server would not know it)."""
    path: Path = args.dev_vars
    if not path.exists() and "JWT_SECRET" not in os.environ:
        raise ConfigError(
            f"no secrets file at {path}: start the server once with it to create it "
            f"(`rooms --dev-vars {path} serve`), or pass the server's file with --dev-vars"
        )
    values = vars_from(path)
    secret = values.get("JWT_SECRET")
    if not secret:
        raise ConfigError(f"{path} has no JWT_SECRET: start the server once with it to add one")
    print(mint_token(secret, args.user, args.name, ttl_s=args.ttl, policy=token_policy_of(values)))
    return 0


def bind_port(host: str, port: int) -> socket.socket:
    """The server's socket, bound before anything is printed: a taken port is one clear line,
    not a traceback after the banner. It listens only once the app serves (asyncio calls
    listen()), so a client never connects to a server that is still starting."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as aiohttp does
            sock.bind(address)
        except OSError:
            sock.close()
            raise
        return sock
    except socket.gaierror:
        raise ConfigError(
            f"cannot resolve --host {host!r}: give an address such as 127.0.0.1"
        ) from None
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"port {port} on {host} is already in use (another `rooms serve` or `make dev`?):"
                f" stop it, or pick another port with --port"
            ) from None
        if exc.errno == errno.EACCES:
            raise ConfigError(
                f"port {port} needs privileges: pick one above 1023 with --port"
            ) from None
        raise ConfigError(
            f"cannot listen on {host}:{port} ({exc.strerror}): check --host and --port"
        ) from None


def prepare_data_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-check"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise ConfigError(
            f"cannot write the data directory {path} ({exc.strerror}): fix its permissions or "
            f"pick another with --data-dir"
        ) from None


def page_base(host: str, port: int) -> str:
    """The URL a browser on this machine uses (a wildcard address is no place to browse to)."""
    shown = {"0.0.0.0": "127.0.0.1", "::": "[::1]", "": "127.0.0.1"}.get(host, host)
    if ":" in shown and not shown.startswith("["):
        shown = f"[{shown}]"
    return f"http://{shown}:{port}"


def serve(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    # The lines are the message alone: no record needs its thread's or process's name, which
    # `logging` would otherwise look up for each of a connection's four lines.
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)  # it would log query tokens
    logredact.install()
    write_room_lines_directly()  # the same lines, without `logging`'s record path
    ensure_dev_secret(args.dev_vars)
    ensure_dev_secret(args.dev_vars, "ADMIN_TOKEN")
    values = vars_from(args.dev_vars)
    admin_token = values.get("ADMIN_TOKEN")
    metrics_token = values.get("METRICS_TOKEN")
    problem = (
        weak_jwt_secret(values["JWT_SECRET"])
        or (weak_admin_token(admin_token) if admin_token else None)
        or (weak_metrics_token(metrics_token) if metrics_token else None)
    )
    if problem is not None:
        raise ConfigError(f"{problem} (in {args.dev_vars} or the environment)")
    # Room files, the archive and the alarm table are the service's data: this user's alone.
    os.umask(0o077)
    settings = Settings(
        host=args.host,
        port=args.port,
        data_dir=args.data_dir,
        jwt_secret=values["JWT_SECRET"],
        admin_token=values.get("ADMIN_TOKEN"),
        metrics_token=metrics_token or None,
        archive=archive_policy_from(values.get("ARCHIVE_POLICY")),
        faults=Faults.from_names(args.fault),
        allowed_origins=origins_from(values.get("ALLOWED_ORIGINS")),
        guest_tokens=guest_tokens_from(values.get("GUEST_TOKENS")),
        tokens=token_policy_of(values),
        limits=limits_from(values.get("ROOM_LIMITS")),
        hibernation=HibernationPolicy(
            after_idle_s=args.hibernate_after,
            every_event=args.hibernate_every_event,
            open_idle_databases=args.open_idle_databases,
            files_made_ahead=args.files_made_ahead,
        ),
        log_messages=args.log_messages,
        new_rooms_per_minute=count_from(values, "NEW_ROOMS_PER_MINUTE", 30),
        max_connections_per_address=count_from(values, "MAX_CONNECTIONS_PER_ADDRESS", 256),
    )
    open_files, _ = raise_open_file_limit()  # a socket each: 1,024 would cap connections
    limit_malloc_arenas()  # before any worker thread allocates (memory per idle connection)
    prepare_data_dir(settings.data_dir)
    sock = bind_port(settings.host, settings.port)
    try:
        app = make_app(settings)
    except (sqlite3.Error, OSError) as exc:
        sock.close()
        raise ConfigError(
            f"cannot open the data in {settings.data_dir} ({exc}): fix its permissions, or "
            f"pick another directory with --data-dir"
        ) from None
    base = page_base(settings.host, sock.getsockname()[1])
    print(
        f"durable-rooms on {base}  (data: {settings.data_dir}; up to {open_files:,} open files)\n"
        f"  chat page: {base}/#room=lobby\n"
        f"  admin console: {base}/console/  (sign in with ADMIN_TOKEN from {args.dev_vars})\n"
        f"  admin API: {base}/admin/rooms  (Authorization: Bearer <ADMIN_TOKEN>; docs/admin.md)",
        file=sys.stderr,
    )
    # The ~50,000 objects of the imported modules live as long as the process: out of the
    # cyclic collector's reach, a full collection no longer stalls every room for ~35 ms.
    gc.collect()
    gc.freeze()
    web.run_app(app, sock=sock, print=None, **runner_options(settings))
    return 0


def weak_metrics_token(token: str) -> str | None:
    """As for ADMIN_TOKEN: a scraper's token is a credential too."""
    if len(token) < MIN_ADMIN_TOKEN_CHARS:
        return f"METRICS_TOKEN must be at least {MIN_ADMIN_TOKEN_CHARS} characters"
    return None

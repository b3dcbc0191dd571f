"""`rooms`: run durable-rooms locally, and mint development tokens."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
from pathlib import Path

from aiohttp import web

from rooms.auth import mint_token, weak_admin_token, weak_jwt_secret
from roomsd import logredact
from roomsd.bindings import Faults
from roomsd.config import (
    PROJECT_ROOT,
    ConfigError,
    Settings,
    archive_policy_from,
    ensure_dev_secret,
    guest_tokens_from,
    limits_from,
    origins_from,
    token_policy_of,
    vars_from,
)
from roomsd.os_resources import raise_open_file_limit
from roomsd.rooms import HibernationPolicy
from roomsd.server import make_app


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rooms", description="durable-rooms on this machine: no account, no network."
    )
    parser.add_argument(
        "--dev-vars",
        type=Path,
        default=PROJECT_ROOT / ".dev.vars",
        help="secrets and vars file (default: %(default)s)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve the rooms, the front and public/ over HTTP")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8787)
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
        default=64,
        metavar="N",
        help="hibernated rooms that keep their SQLite connection open, most recent first; "
        "each costs ~150 KiB, reopening one ~2 ms (default: %(default)s)",
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

    token = sub.add_parser("token", help="mint a development JWT signed with JWT_SECRET")
    token.add_argument("user", help="the user id (the token's `sub`)")
    token.add_argument("--name", help="display name (default: the user id)")
    token.add_argument("--ttl", type=int, default=24 * 3600, help="seconds (default: 1 day)")

    # Parsed by loadtest.cli (see `rooms loadtest --help`); listed here for `rooms --help`.
    sub.add_parser("loadtest", help="load-test a rooms server (local or deployed)", add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["loadtest"]:
        from loadtest.cli import main as loadtest

        return loadtest(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        if args.command == "token":
            secret = ensure_dev_secret(args.dev_vars)
            policy = token_policy_of(vars_from(args.dev_vars))
            print(mint_token(secret, args.user, args.name, ttl_s=args.ttl, policy=policy))
            return 0
        return serve(args)
    except ConfigError as exc:
        print(f"rooms: {exc}", file=sys.stderr)
        return 2


def serve(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)  # it would log query tokens
    logredact.install()
    ensure_dev_secret(args.dev_vars)
    ensure_dev_secret(args.dev_vars, "ADMIN_TOKEN")
    values = vars_from(args.dev_vars)
    admin_token = values.get("ADMIN_TOKEN")
    problem = weak_jwt_secret(values["JWT_SECRET"]) or (
        weak_admin_token(admin_token) if admin_token else None
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
        ),
        log_messages=args.log_messages,
    )
    open_files, _ = raise_open_file_limit()  # a socket each: 1,024 would cap connections
    print(
        f"durable-rooms on http://{settings.host}:{settings.port}  (data: {settings.data_dir}; "
        f"up to {open_files:,} open files)",
        file=sys.stderr,
    )
    app = make_app(settings)
    # The ~50,000 objects of the imported modules live as long as the process: out of the
    # cyclic collector's reach, a full collection no longer stalls every room for ~35 ms.
    gc.collect()
    gc.freeze()
    web.run_app(app, host=settings.host, port=settings.port, print=None, access_log=None)
    return 0

"""The local HTTP + WebSocket server (aiohttp): the front and the rooms in one process.

The request path mirrors Cloudflare's: `rooms.front.route` authenticates and routes exactly as
the front Worker does, then the upgrade goes to the room's actor, which accepts the socket the
way the Durable Object does. Static files come from `public/` like the Worker's assets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

from aiohttp import WSMsgType, web

from rooms.front import (
    AdminRequest,
    CheckAdmission,
    ForwardUpgrade,
    GuestTokenRequest,
    HttpReply,
    admitted_reply,
    client_address,
    error_reply,
    reply_error_code,
    route,
)
from rooms.guest import GuestIssuer
from rooms.host import ArchiveBindings
from rooms.limits import PLATFORM_MAX_MESSAGE_BYTES
from rooms.logs import http_log_line
from rooms.protocol import PING_TEXT, PONG_TEXT, CloseCode
from rooms.telemetry import Telemetry
from roomsd import http_errors
from roomsd.bindings import AlarmScheduler, LocalD1, LocalR2
from roomsd.config import Settings
from roomsd.d1 import open_d1
from roomsd.metrics import MetricsEndpoint, live_figures
from roomsd.os_resources import release_free_memory
from roomsd.r2 import FileBucket
from roomsd.rooms import NewRoomBudget, RoomRegistry, RoomServices, close_databases
from roomsd.sockets import LocalSocket

if TYPE_CHECKING:
    from rooms.admin import AdminApi

log = logging.getLogger("rooms")

SETTINGS: web.AppKey[Settings] = web.AppKey("settings", Settings)
# How long a client may take to send a request body the front reads (POST /auth/guest).
BODY_TIMEOUT_S = 10.0
REGISTRY: web.AppKey[RoomRegistry] = web.AppKey("registry", RoomRegistry)


@dataclass(frozen=True)
class Bindings:
    """What the Worker's env holds on Cloudflare: D1 (the archive index) and R2 (segments)."""

    d1: LocalD1
    r2: LocalR2


BINDINGS: web.AppKey[Bindings] = web.AppKey("bindings", Bindings)
ALARMS: web.AppKey[AlarmScheduler] = web.AppKey("alarms", AlarmScheduler)


class LazyAdmin:
    """The admin API, built on its first request: building its pydantic models costs every
    restart ~50 ms (of ~0.6 s) for an endpoint operators rarely call."""

    def __init__(
        self,
        d1: LocalD1,
        archive: ArchiveBindings,
        rooms: RoomRegistry,
        token: str | None,
        live: Callable[[], dict[str, Any]],
    ):
        self._args = (d1, archive, rooms, token, live)
        self._api: AdminApi | None = None

    def get(self) -> AdminApi:
        if self._api is None:
            from rooms.admin import AdminApi

            d1, archive, rooms, token, live = self._args
            self._api = AdminApi(d1, archive.reader, rooms, token, live)
        return self._api


ADMIN: web.AppKey[LazyAdmin] = web.AppKey("admin", LazyAdmin)
GUEST: web.AppKey[GuestIssuer] = web.AppKey("guest", GuestIssuer)
TELEMETRY: web.AppKey[Telemetry] = web.AppKey("telemetry", Telemetry)
METRICS: web.AppKey[MetricsEndpoint] = web.AppKey("metrics", MetricsEndpoint)


def rejected(telemetry: Telemetry, reply: HttpReply) -> None:
    """Count an error reply by its code (docs/admin.md#metrics)."""
    code = reply_error_code(reply)
    if code is not None:
        telemetry.rejected(code)


# Where `room_log` writes its lines itself (`write_room_lines_directly`); None: through `logging`.
_room_lines: TextIO | None = None


def write_room_lines_directly() -> bool:
    """Have `room_log` write each line straight to the stream of the one handler `serve`
    configured (the root's, writing each message alone as a line) instead of through
    `logging`: the bytes are the same, without a `LogRecord`, the logger's and handler's
    filters and locks, and the formatting, for each of a connection's three lines (about 9% of
    the event loop's CPU in a connect storm, BENCHMARKS.md). Only where nothing else is
    configured: a logger or handler of its own for `rooms`, a filter, another level or format
    (an embedding application's, a test's `caplog`) keeps the `logging` path. True if set."""
    global _room_lines
    root, rooms = logging.getLogger(), logging.getLogger("rooms")
    handler = root.handlers[0] if len(root.handlers) == 1 else None
    plain = (
        isinstance(handler, logging.StreamHandler)
        and type(handler) is logging.StreamHandler
        and handler.formatter is not None
        and handler.formatter._fmt == "%(message)s"
        and handler.level == logging.NOTSET
        and not handler.filters
        and handler.terminator == "\n"
        and not rooms.handlers
        and not rooms.filters
        and not root.filters
        and rooms.propagate
        and rooms.getEffectiveLevel() <= logging.INFO
    )
    _room_lines = handler.stream if plain and isinstance(handler, logging.StreamHandler) else None
    return _room_lines is not None


def room_log(line: str) -> None:
    """A room's JSON log line, at INFO: `log.info` without its caller lookup (once per event),
    or written directly (`write_room_lines_directly`). One `write` of the whole line: lines
    that other threads log through the handler (one `write` each too) never interleave."""
    stream = _room_lines
    if stream is not None:
        stream.write(line + "\n")
        stream.flush()  # as the handler does after each line
    elif log.isEnabledFor(logging.INFO):
        log.handle(log.makeRecord(log.name, logging.INFO, __file__, 0, line, (), None))


def _reply(reply: HttpReply) -> web.Response:
    return web.Response(status=reply.status, body=reply.body, headers=dict(reply.headers))


async def front(request: web.Request) -> web.StreamResponse:
    if request.path == "/metrics":
        authorization = request.headers.get("Authorization", "")
        return _reply(request.app[METRICS].handle(request.method, authorization))
    settings = request.app[SETTINGS]
    started = time.perf_counter()
    headers = {k.lower(): v for k, v in request.headers.items()}
    own_origin = f"{request.scheme}://{request.host}"
    decision = route(
        request.method, request.path, request.query, headers, settings.front, own_origin
    )
    if isinstance(decision, HttpReply):
        rejected(request.app[TELEMETRY], decision)
        log.info(
            http_log_line(
                "http",
                decision.status,
                _path_kind(request.path),
                duration_ms=round((time.perf_counter() - started) * 1000, 3),
            )
        )
        return _reply(decision)
    if isinstance(decision, ForwardUpgrade):
        del headers  # not kept alive for the socket's whole life (memory per idle connection)
        return await room_socket(request, decision)
    if isinstance(decision, CheckAdmission):
        address = client_address(request.remote)
        reply = await check_admission(request.app[REGISTRY], decision, address)
        log.info(http_log_line("check", reply.status, "/rooms/{room}/check"))
        return _reply(reply)
    if isinstance(decision, AdminRequest):
        reply = (
            await request.app[ADMIN]
            .get()
            .handle(request.method, request.path, request.query, headers, int(time.time() * 1000))
        )
        log.info(
            http_log_line(
                "admin",
                reply.status,
                "/admin",
                duration_ms=round((time.perf_counter() - started) * 1000, 3),
            )
        )
        return _reply(reply)
    if isinstance(decision, GuestTokenRequest):
        reply = await guest_token(request, settings)
        log.info(http_log_line("guest", reply.status, "/auth/guest"))
        response = _reply(reply)
        if reply.status in (408, 413):  # the rest of the body is never read: end the connection
            response.force_close()
        return response
    return await static(request)


async def guest_token(request: web.Request, settings: Settings) -> HttpReply:
    """POST /auth/guest: the body bounded in size and in the time the client takes to send it."""
    issuer = request.app[GUEST]
    refused = issuer.refuse_declared_length(request.headers.get("Content-Length"))
    if refused is not None:
        return refused
    limit = issuer.policy.max_body_bytes
    try:
        body = await asyncio.wait_for(read_at_most(request, limit + 1), BODY_TIMEOUT_S)
    except TimeoutError:
        return error_reply(408, "request_timeout", "the request body did not arrive in time")
    # A body over the limit is passed on as it is: the issuer answers 413 body_too_large.
    now_ms = int(time.time() * 1000)
    address = client_address(request.remote)
    return issuer.handle(body, address, settings.jwt_secret, now_ms, settings.tokens)


async def read_at_most(request: web.Request, limit: int) -> bytes:
    """The body up to ``limit`` bytes (what is past it is never read)."""
    body = bytearray()
    while len(body) < limit:
        chunk = await request.content.read(limit - len(body))
        if not chunk:
            break
        body += chunk
    return bytes(body)


async def check_admission(registry: RoomRegistry, check: CheckAdmission, address: str) -> HttpReply:
    """What an upgrade would get now. A room that does not exist refuses nobody: it is not
    created (nor woken) for the question, and no new-room budget is spent on it."""
    if not registry.exists(check.room):
        return admitted_reply()
    refused = await registry.get(check.room).refusal(check.identity, address, opening=False)
    return refused if refused is not None else admitted_reply()


class AddressCounts:
    """Open WebSockets per client address, across every room: one host may hold at most
    `Settings.max_connections_per_address` (docs/security.md, the HTTP table)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: dict[str, int] = {}

    def try_open(self, address: str) -> bool:
        if not address:
            return True
        count = self._open.get(address, 0)
        if count >= self.limit:
            return False
        self._open[address] = count + 1
        return True

    def closed(self, address: str) -> None:
        if not address:
            return
        count = self._open.pop(address, 0) - 1
        if count > 0:
            self._open[address] = count


ADDRESSES: web.AppKey[AddressCounts] = web.AppKey("addresses", AddressCounts)
TOO_MANY_CONNECTIONS = error_reply(
    429, "too_many_connections", "too many open connections from this address"
)


async def room_socket(request: web.Request, upgrade: ForwardUpgrade) -> web.StreamResponse:
    addresses = request.app[ADDRESSES]
    address = client_address(request.remote)
    if not addresses.try_open(address):
        log.info(http_log_line("http", 429, "/rooms/{room}/ws", code="too_many_connections"))
        rejected(request.app[TELEMETRY], TOO_MANY_CONNECTIONS)
        return _reply(TOO_MANY_CONNECTIONS)
    try:
        return await _room_socket(request, upgrade, address)
    finally:
        addresses.closed(address)


async def _room_socket(
    request: web.Request, upgrade: ForwardUpgrade, address: str
) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    room = request.app[REGISTRY].get(upgrade.room)
    refused = await room.refusal(upgrade.identity, address)  # the room counts its own refusals
    # The front's line for this upgrade; the room's `connect` line carries the same request id.
    # Through `room_log`: `log.info` looks up its caller, which gives this coroutine's frame a
    # frame object that then lives as long as the connection (~280 bytes each).
    room_log(
        http_log_line(
            "upgrade",
            refused.status if refused is not None else 101,
            "/rooms/{room}/ws",
            room=upgrade.room,
            user_id=upgrade.identity.user_id,
            request_id=upgrade.request_id,
        )
    )
    if refused is not None:
        return _reply(refused)
    ws = web.WebSocketResponse(
        protocols=(upgrade.subprotocol,) if upgrade.subprotocol else (),
        # Frames up to 4x our limit reach the engine, which answers with an error frame and
        # 1009; larger ones are refused by aiohttp itself (also 1009) without buffering them.
        max_msg_size=min(settings.limits.max_frame_bytes * 4, PLATFORM_MAX_MESSAGE_BYTES),
        heartbeat=settings.heartbeat_s,  # vanished peers are detected and leave the room
        autoping=True,
        # No permessage-deflate: a broadcast is encoded once and must not be compressed again
        # for every member (CPU per message x members), and Cloudflare does not negotiate it.
        compress=False,
    )
    await ws.prepare(request)
    sock = LocalSocket(request, ws, settings.limits.max_backlog_bytes)
    try:
        await room.connect(
            sock, upgrade.identity, upgrade.since, request_id=upgrade.request_id, address=address
        )
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                if msg.data == PING_TEXT:  # setWebSocketAutoResponse: the room stays asleep
                    sock.send(PONG_TEXT)
                    continue
                await room.message(sock, msg.data)
            elif msg.type == WSMsgType.BINARY:
                await room.message(sock, msg.data)
            if not sock.is_open:
                break
    except Exception:
        log.exception("room socket failed room=%s", upgrade.room)
        if not ws.closed:
            await ws.close(code=CloseCode.INTERNAL_ERROR, message=b"internal error")
    finally:
        await room.closed(sock)
        await sock.finished()
    return ws


async def static(request: web.Request) -> web.StreamResponse:
    public = request.app[SETTINGS].public_dir.resolve()
    relative = request.path.lstrip("/") or "index.html"
    try:
        path = (public / relative).resolve()
        if path.is_dir():
            path = path / "index.html"
        found = path.is_relative_to(public) and path.is_file()
    except (ValueError, OSError):  # a NUL byte (%00) or a name too long for the file system
        found = False
    if not found:
        return _reply(error_reply(404, "not_found", "no such path"))
    return web.FileResponse(path)


def _path_kind(path: str) -> str:
    # Log the route, not the raw path: room names are fine, query strings (tokens) never.
    if path.startswith("/rooms/"):
        return "/rooms/{room}/check" if path.endswith("/check") else "/rooms/{room}/ws"
    return path if path == "/health" else "static"


async def _sweeper(app: web.Application) -> AsyncIterator[None]:
    registry = app[REGISTRY]

    async def sweep_forever() -> None:
        while True:
            await asyncio.sleep(1)
            try:
                closing = registry.sweep()
                if closing:
                    await close_databases(closing)
                if registry.release_quiet_caches() or closing:
                    release_free_memory()
            except Exception:  # the sweeper must outlive any one bad room
                log.exception("sweep failed")

    task = asyncio.create_task(sweep_forever())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _shutdown_sockets(app: web.Application) -> None:
    for room in list(app[REGISTRY].rooms.values()):
        for sock in room.sockets.all():
            sock.close(CloseCode.GOING_AWAY, "server shutting down")


def runner_options(settings: Settings) -> dict[str, Any]:
    """How aiohttp serves the app (`web.run_app`, `web.AppRunner`).

    aiohttp's keep-alive timer runs whenever no request is being handled: on a new connection
    until its request head is complete, and between requests. A client that sends nothing, or
    dribbles its headers a byte at a time, is closed after `request_head_timeout_s`; a request
    in progress (a WebSocket included) is not affected."""
    return {"access_log": None, "keepalive_timeout": settings.request_head_timeout_s}


def make_app(settings: Settings) -> web.Application:
    if not settings.jwt_secret:
        raise ValueError("settings.jwt_secret is required")
    http_errors.install()
    data = settings.data_dir
    d1, applied = open_d1(data / "d1.sqlite", settings.migrations_dir)
    for name in applied:
        log.info('{"event":"d1_migration_applied","name":"%s"}', name)
    bindings = Bindings(
        d1=LocalD1(d1, settings.faults), r2=LocalR2(FileBucket(data / "r2"), settings.faults)
    )
    archive = ArchiveBindings(bindings.d1, bindings.r2, settings.archive)
    registry_box: list[RoomRegistry] = []

    async def fire_alarm(room: str) -> None:
        await registry_box[0].get(room).alarm()

    alarms = AlarmScheduler(data / "alarms.sqlite", fire_alarm)
    registry = RoomRegistry(
        data / "rooms",
        RoomServices(
            settings.limits,
            settings.hibernation,
            room_log,
            settings.log_messages,
            archive,
            alarms,
            group_commit=settings.group_commit,
            new_rooms=NewRoomBudget(settings.new_rooms_per_minute),
        ),
    )
    registry_box.append(registry)
    telemetry = registry.services.telemetry
    app = web.Application()
    app[SETTINGS] = settings
    app[REGISTRY] = registry
    app[BINDINGS] = bindings
    app[ALARMS] = alarms
    app[ADMIN] = LazyAdmin(
        bindings.d1,
        archive,
        registry,
        settings.admin_token,
        lambda: live_figures(telemetry, registry),
    )
    app[GUEST] = GuestIssuer()
    app[TELEMETRY] = telemetry
    app[METRICS] = MetricsEndpoint(
        telemetry, registry, settings.admin_token, settings.metrics_token
    )
    app[ADDRESSES] = AddressCounts(settings.max_connections_per_address)
    app.cleanup_ctx.append(_sweeper)
    app.on_shutdown.append(_shutdown_sockets)

    async def start_alarms(app: web.Application) -> None:
        alarms.start()

    async def close_storage(app: web.Application) -> None:
        await alarms.close()
        registry.close()
        d1.close()

    app.on_startup.append(start_alarms)
    app.on_cleanup.append(close_storage)
    app.router.add_route("*", "/{tail:.*}", front)
    return app

"""`Room`: one Durable Object per room, hosting a `RoomHost` over hibernatable WebSockets.

Section numbers (§) refer to docs/cloudflare.md. Nothing that matters lives in memory. workerd
evicts a hibernating object and runs `__init__` again on the next event (§3.4), so the message
log is in SQLite, each connection's state is in its socket's attachment, and the room's own name
is in a one-row table, written by the first upgrade. A message is stored and broadcast with no
await in between; the only awaits are on the archive (R2, D1, the alarm), where other events may
interleave (§4.7), and the host re-checks its state after each of them.

With `env.DB` and `env.ARCHIVE` bound, the room archives to R2 segments indexed in D1 from its
alarm (§4.9, §5), and serves history older than it retains from there.

The front Worker is the only caller of `fetch` (objects are reachable only through bindings,
§2.3); it has verified the token and forwards the identity in ``x-rooms-*`` headers.
"""

from __future__ import annotations

import contextlib
import functools
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import SplitResult, urlsplit

from workers import DurableObject, Response

from objects import ffi
from objects.bindings import D1Database, DurableObjectAlarms, R2Bucket, RateLimit
from objects.ffi import JsObject
from objects.metrics import MetricsSettings, metrics_settings
from objects.platform import DurableObjectSql, HibernatableSockets
from objects.web import (
    INTERNAL_ERROR,
    emit,
    log_failure,
    lower_headers,
    query_params,
    reply_response,
)
from rooms.archive import ArchivePolicy
from rooms.auth import Identity
from rooms.front import (
    CHECK_PATH,
    CLIENT_ADDRESS_HEADER,
    ROOM_NAME,
    ROOM_PATH,
    SUBPROTOCOL,
    HttpReply,
    admitted_reply,
    error_reply,
    identity_from_forwarded,
    json_reply,
    offered_subprotocols,
    parse_since,
    request_id_from_forwarded,
)
from rooms.guest import parse_switch
from rooms.host import ArchiveBindings, RoomHost, room_tag
from rooms.limits import Limits, SettingsModel, settings_from_json
from rooms.protocol import PING_TEXT, PONG_TEXT, CloseCode
from rooms.store import OpenedRoom, open_room, open_room_at_once, read_catalogue
from rooms.telemetry import Telemetry

# Where rooms created by earlier versions stored their name; newer ones keep it in room_meta's
# 'room' row, written with the room's first message (the store creates its tables then).
LEGACY_NAME = "SELECT name FROM room_name WHERE id = 1"
UNNAMED = "?"  # only if an object somehow gets socket events before its first upgrade
# What workerd calls on a room (§1.9, §1.10).
HANDLERS = ("fetch", "webSocketMessage", "webSocketClose", "webSocketError", "alarm")
# How the front reaches a room's admin actions: /admin/{room}/{action}?params
ADMIN_PATH = re.compile(r"/admin/([A-Za-z0-9._-]{1,64})/([a-z]+)")


@dataclass(frozen=True, slots=True)
class Admission:
    """An upgrade that passed every check, ready to connect."""

    host: RoomHost[JsObject]
    identity: Identity
    since: int | None
    subprotocol: bool  # whether the client offered ours
    request_id: str | None  # the front's, for the room's `connect` log line
    address: str  # the client's, as the front forwarded it ("" when unknown)


class RoomMismatchError(Exception):
    """The object was asked to serve a room other than the one it stores."""


class Room(DurableObject):  # type: ignore[misc]  # workers is untyped on the host
    """A room's Durable Object: handlers translate workerd events into `RoomHost` calls."""

    # None: read the ROOM_LIMITS var (JSON); a subclass may fix limits (tests do).
    limits: ClassVar[Limits | None] = None

    def __init__(self, ctx: Any, env: Any) -> None:
        super().__init__(ctx, env)
        # Called by workerd without binding their arguments, and without its cache keeping
        # this instance alive after an eviction (§1.10).
        ffi.call_handlers_as_is(self, HANDLERS)
        # The raw ctx: the SDK's wrapper checks each attribute's JS class on its first read, on
        # every wake (the storage port unwraps ctx.storage anyway).
        raw_ctx = ffi.unwrapped_context(self.ctx)
        self._sql = DurableObjectSql(raw_ctx.storage)
        self._sockets = HibernatableSockets(raw_ctx)
        # §3.8: the runtime answers the keep-alive itself, without waking the object.
        raw_ctx.setWebSocketAutoResponse(ffi.auto_response_pair(PING_TEXT, PONG_TEXT))
        # What env says, read once per isolate and env (`_deployment`). A bad ROOM_LIMITS or
        # ARCHIVE_POLICY fails here, on every event, rather than at run time.
        deployment = _deployment(self.env)
        self._room_limits = (
            self.limits
            if self.limits is not None
            else _settings(Limits, deployment.room_limits, "ROOM_LIMITS")
        )
        # ARCHIVE_POLICY also sets what a room without D1/R2 keeps (its retention window).
        self._policy = deployment.policy
        self._archive = deployment.archive
        # Optional: without the binding, opening new rooms is not rate-limited.
        self._new_rooms = deployment.new_rooms
        # One log line per published message only when asked for, as `rooms serve --log-messages`
        # locally: each line is a console.log that the platform collects (and bills); under
        # `wrangler dev` a line cost 0.2 ms in workerd and 4 ms in wrangler's own process
        # (BENCHMARKS.md, "On real workerd").
        self._log_messages = deployment.log_messages
        # The connect, join and disconnect lines, likewise only when asked for (LOG_CONNECTIONS=1):
        # under `wrangler dev` each line cost ~6 ms of CPU (wrangler relays it), on Cloudflare a
        # console.log the isolate pays for and the platform bills. Refusals and failures are
        # always logged; connections are counted in the metrics (BENCHMARKS.md, round 5).
        self._log_connections = deployment.log_connections
        # What the room stored (`_read_stored`): read by the first handler that needs it, once
        # per instance, so that a failure is caught and logged by that handler. The stored name
        # never changes once written; reading it on every upgrade cost a SELECT (250 us in
        # workerd).
        self._was_read = False
        self._opened: OpenedRoom | None = None
        self._stored: str | None = None
        # The name the object was reached by, until the stored one is read (§2.4).
        self._name = ffi.object_name(raw_ctx)
        # Built by the first handler (`_awake`, `_host_for`), synchronously before its first
        # await, so the store's tables exist in time (§4.6) and a failure while rebuilding from
        # storage and sockets is caught and logged by that handler instead of failing __init__.
        self._host: RoomHost[JsObject] | None = None
        # Operator figures, written to Analytics Engine when METRICS is bound (objects.metrics).
        self._telemetry = Telemetry()
        metrics = deployment.metrics
        self._metrics = metrics.sink(self._telemetry) if metrics is not None else None

    # ----------------------------------------------------------------------- workerd handlers

    @ffi.called_as_is
    async def fetch(self, request: Any, *_: Any) -> Any:
        """An SDK `Response`, or for an accepted upgrade the JS 101 itself (§1.2). Called as it
        is, without its arguments bound to its signature (§1.10)."""
        server: JsObject | None = None
        try:
            url = urlsplit(str(request.js_object.url))  # read once, raw (§1.5)
            admin = ADMIN_PATH.fullmatch(url.path)
            if admin is not None:
                return await self._admin(admin.group(1), admin.group(2), url.query)
            check = CHECK_PATH.fullmatch(url.path)
            if check is not None:
                return reply_response(await self._check(check.group(1), request))
            checked = await self._admit(request, url)
            if isinstance(checked, HttpReply):
                self._write_metrics()
                return reply_response(checked)
            client, server = ffi.websocket_pair()
            await checked.host.connect(
                server,
                checked.identity,
                checked.since,
                request_id=checked.request_id,
                address=checked.address,
            )
            self._write_metrics()
            # Echo our subprotocol only if the client offered it (the front narrowed the offer).
            return ffi.upgrade_response(client, SUBPROTOCOL if checked.subprotocol else None)
        except Exception as exc:
            self._failed("fetch", exc, server)
            return reply_response(INTERNAL_ERROR)

    def webSocketMessage(
        self, ws: JsObject, message: str | JsObject, *_: Any
    ) -> Awaitable[None] | None:
        """A plain `def`: nearly every frame needs no await, and an `async def` costs every
        event a task on Pyodide's event loop (§1.9). Only a frame that has to wait (the archive
        alarm to set, the archive to read) hands workerd a coroutine to await. Every handler is
        called as it is: no arguments bound to its signature, no instance kept (§1.10)."""
        try:
            pending = self._awake().message_now(ws, ffi.frame_data(message))
            if pending is None:
                self._write_metrics()
                return None
        except Exception as exc:
            self._failed("webSocketMessage", exc, ws)
            return None
        return self._finish("webSocketMessage", pending, ws)

    async def _finish(
        self, handler: str, pending: Callable[[], Awaitable[None]], ws: JsObject
    ) -> None:
        """The part of an event that had to wait, with the handler's own error handling."""
        try:
            await pending()
            self._write_metrics()
        except Exception as exc:
            self._failed(handler, exc, ws)

    async def webSocketClose(
        self, ws: JsObject, code: int, reason: str, wasClean: bool, *_: Any
    ) -> None:
        try:
            await self._awake().closed(ws, code)
            self._sockets.answer_close(ws, code)
            self._write_metrics()
        except Exception as exc:
            self._failed("webSocketClose", exc)

    async def webSocketError(self, ws: JsObject, error: JsObject, *_: Any) -> None:
        try:
            await self._awake().closed(ws)
        except Exception as exc:
            self._failed("webSocketError", exc)

    # ----------------------------------------------------------------------- upgrade

    async def _admit(self, request: Any, url: SplitResult) -> Admission | HttpReply:
        """Check a forwarded upgrade: the admission to carry out, or the error to answer."""
        match = ROOM_PATH.fullmatch(url.path)
        if match is None or not ROOM_NAME.fullmatch(match.group(1)):
            return error_reply(404, "not_found", "room URLs look like /rooms/{room}/ws")
        headers = lower_headers(request)
        if headers.get("upgrade", "").lower() != "websocket":
            return error_reply(426, "upgrade_required", "this URL takes a WebSocket upgrade")
        identity = identity_from_forwarded(headers)
        if identity is None:
            return error_reply(400, "identity_missing", "the request carries no verified identity")
        try:
            since = parse_since(query_params(url.query).get("since"))
        except ValueError:
            return error_reply(400, "bad_since", "`since` must be a whole number >= 0")
        host = self._host_for(match.group(1))
        address = headers.get(CLIENT_ADDRESS_HEADER, "")
        refused = await host.refusal(identity, address)
        if refused is not None:
            return refused
        subprotocol = SUBPROTOCOL in offered_subprotocols(headers)
        return Admission(
            host, identity, since, subprotocol, request_id_from_forwarded(headers), address
        )

    async def _check(self, room: str, request: Any) -> HttpReply:
        """The front's pre-check of an upgrade: this room's refusal, or admitted. A room that
        stored nothing and has nobody in it refuses nobody; nothing is stored for the question,
        and no new-room budget spent."""
        headers = lower_headers(request)
        identity = identity_from_forwarded(headers)
        if identity is None:
            return error_reply(400, "identity_missing", "the request carries no verified identity")
        stored = self._stored_now()
        if stored is None and not self._sockets.all():
            return admitted_reply()
        if (stored or self._name) != room:
            raise RoomMismatchError("object serves another room")
        address = headers.get(CLIENT_ADDRESS_HEADER, "")
        refused = await self._awake().refusal(identity, address, opening=False)
        return refused if refused is not None else admitted_reply()

    # ----------------------------------------------------------------------- host lifecycle

    def _read_stored(self) -> None:
        """Read what the room stored, once per instance: the catalogue and the room_meta values
        a wake needs, its name among them, in one statement for a room that stored messages
        (`rooms.store.open_room_at_once`; one that did not fails it, then reads its catalogue).
        The first host is built from that, with no statement of its own (nothing is written
        before it).

        A room that stored nothing yet and whose id has no name (§2.4) reads its name from the
        tag its sockets were accepted with (`rooms.host.room_tag`)."""
        if self._was_read:
            return
        opened = open_room_at_once(self._sql) or self._open()
        self._stored = self._stored_name(opened)
        self._name = self._stored or self._name or self._sockets.tagged(room_tag(""))
        self._opened, self._was_read = opened, True

    def _open(self) -> OpenedRoom:
        """What the room stored; reading writes nothing (a room nobody wrote to leaves no
        storage behind, docs/protocol.md#rooms). One read of the catalogue serves both
        "created?" and the schema check: reading sqlite_master creates nothing here."""
        return open_room(self._sql, read_catalogue(self._sql))

    def _stored_now(self) -> str | None:
        """The stored name, read again if this instance's host may have stored it since."""
        self._read_stored()
        if self._stored is None and self._host is not None:
            self._stored = self._stored_name(self._open())
        return self._stored

    def _stored_name(self, opened: OpenedRoom) -> str | None:
        """The name the room stored with its first message; None before."""
        if "room_name" in opened.catalogue:  # a room created by an earlier version
            rows = self._sql.execute(LEGACY_NAME)
            if rows and rows[0][0]:
                return str(rows[0][0])
        return opened.name

    def _new_host(self, name: str) -> RoomHost[JsObject]:
        alarms = DurableObjectAlarms(self.ctx.storage) if self._archive is not None else None
        # What __init__ read serves the first host only: hosts built later (after a failure, or
        # for another name) read afresh, as the first one may have written since.
        opened, self._opened = self._opened, None
        return RoomHost(
            name,
            self._sql,
            self._sockets,
            self._room_limits,
            log=emit,
            log_messages=self._log_messages,
            log_connections=self._log_connections,
            archive=self._archive,
            alarms=alarms,
            retention=self._policy,
            telemetry=self._telemetry,
            new_rooms=self._new_rooms,
            opened=opened,
        )

    async def alarm(self, alarm_info: Any = None, *_: Any) -> None:
        """§4.9: archive what is waiting; the host sets the next alarm itself (with backoff).

        An exception escaping here would make workerd retry the alarm, with its message in the
        runtime's log; it is caught and logged like every handler's instead. Archiver failures
        never raise (the host reschedules with backoff), so only a bug lands here, and then the
        retry is ours: without an alarm a quiet room would never archive again.
        """
        try:
            self._read_stored()
            if self._name is None:
                return  # never named: nothing was ever stored, so nothing is waiting
            await self._awake().alarm()
            self._write_metrics(force=True)
        except Exception as exc:
            self._failed("alarm", exc)
            await self._retry_alarm()

    async def _retry_alarm(self) -> None:
        if self._archive is None:
            return
        with contextlib.suppress(Exception):  # the failure is logged already
            storage = self.ctx.storage
            if await storage.getAlarm() is None:  # the host may have set one before failing
                retry_ms = self._archive.policy.retry_max_ms
                await storage.setAlarm(int(time.time() * 1000) + retry_ms)

    async def _admin(self, room: str, action: str, query: str) -> Response:
        """An admin action forwarded by the front (only the front can reach an object, §2.3).

        A room that stored nothing exists only while someone is connected to it."""
        stored = self._stored_now()
        if stored is None and not self._sockets.all():
            return reply_response(error_reply(404, "room_not_found", "no such room"))
        if (stored or self._name) != room:
            raise RoomMismatchError("object serves another room")
        result = await self._awake().admin(action, query_params(query))
        return reply_response(json_reply(200, result))

    def _host_for(self, name: str) -> RoomHost[JsObject]:
        """The host for an upgrade to ``name`` (the store keeps the name with the first message)."""
        self._read_stored()
        if self._stored is not None and self._stored != name:
            raise RoomMismatchError("object serves another room")  # a front bug; details stay here
        if self._host is None or self._name != name:
            self._name = name
            self._host = self._new_host(name)
        return self._host

    def _awake(self) -> RoomHost[JsObject]:
        if self._host is None:  # the first event's, rebuilt after a failure, or never named
            self._read_stored()
            self._host = self._new_host(self._name or UNNAMED)
        return self._host

    def _write_metrics(self, *, force: bool = False) -> None:
        """What this object counted, to Analytics Engine (objects.metrics). A failure here is
        logged and never reaches the event that was handled."""
        if self._metrics is None:
            return
        try:
            self._metrics.after_event(self._name or UNNAMED, force=force)
        except Exception as exc:
            log_failure("metrics", exc, room=self._name or UNNAMED)

    def _failed(self, handler: str, exc: Exception, ws: JsObject | None = None) -> None:
        """Log an unexpected exception; never let it (or its message) reach a client."""
        log_failure(handler, exc, room=self._name or UNNAMED)
        # The host may be half-way through applying effects: rebuild it from storage and
        # attachments on the next event, exactly as after hibernation.
        self._host = None
        if ws is None:
            return
        # The client reconnects and resumes by seq. Closing fails only for a socket not accepted
        # yet or already closed; the failure logged above is what matters.
        with contextlib.suppress(Exception):
            self._sockets.close(ws, CloseCode.INTERNAL_ERROR, "internal error")


@dataclass(frozen=True, slots=True)
class Deployment:
    """What a room object reads of ``env``: vars parsed and bindings wrapped as ports.

    Read through the SDK's env wrapper, each binding costs crossings to check its JS class, and
    every wake of every object used to read eight of them. The ports hold no state of their
    own, so objects of one isolate share them."""

    env: JsObject  # the raw JS env this was read from
    room_limits: str | None  # the ROOM_LIMITS text, parsed by `_settings` (a class may fix it)
    policy: ArchivePolicy
    archive: ArchiveBindings | None  # without D1/R2 the room keeps its retention window only
    new_rooms: RateLimit | None
    log_messages: bool
    log_connections: bool
    metrics: MetricsSettings | None


# The isolate's last `Deployment`, used again only for the very same env object (JS identity:
# a JsProxy's == is JavaScript's ===). Another env, as a test harness running several
# deployments in one isolate has, reads afresh; a read that raised is not kept.
_last_deployment: list[Deployment] = []


def _deployment(env: Any) -> Deployment:
    raw = ffi.unwrapped_env(env)
    if _last_deployment and _last_deployment[0].env == raw:
        return _last_deployment[0]
    policy = _settings(ArchivePolicy, _var(env, "ARCHIVE_POLICY"), "ARCHIVE_POLICY")
    db, bucket = getattr(env, "DB", None), getattr(env, "ARCHIVE", None)
    new_rooms = getattr(env, "NEW_ROOMS", None)
    deployment = Deployment(
        env=raw,
        room_limits=_var(env, "ROOM_LIMITS"),
        policy=policy,
        archive=(
            ArchiveBindings(D1Database(db), R2Bucket(bucket), policy)
            if db is not None and bucket is not None
            else None
        ),
        new_rooms=RateLimit(new_rooms) if new_rooms is not None else None,
        log_messages=parse_switch(_var(env, "LOG_MESSAGES"), default=False),
        log_connections=parse_switch(_var(env, "LOG_CONNECTIONS"), default=False),
        metrics=metrics_settings(env),
    )
    _last_deployment[:] = [deployment]
    return deployment


@functools.lru_cache(maxsize=16)
def _settings(model: type[SettingsModel], raw: str | None, name: str) -> SettingsModel:
    """`settings_from_json`, once per isolate for each text: every object of the isolate, and
    every wake of each, reads the same vars (the models are frozen, so one copy is shared).
    A bad value raises every time: failures are not cached."""
    return settings_from_json(model, raw, name)


def _var(env: Any, name: str) -> str | None:
    # An absent var is undefined, an AttributeError through the SDK's env wrapper.
    return ffi.var_text(getattr(env, name, None))

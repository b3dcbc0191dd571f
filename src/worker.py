"""The front Worker: route, authenticate, and hand WebSocket upgrades to the room's object.

`rooms.front.route` makes every decision; this module only reads the request and the env, turns
the decision into a response, and forwards upgrades to `env.ROOMS.getByName(room)`. Section numbers
(§) refer to docs/cloudflare.md.
"""

from __future__ import annotations

import gc
import json
import time
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import SplitResult, parse_qsl, urlencode, urlsplit, urlunsplit

from workers import Response, WorkerEntrypoint

from objects import ffi
from objects.bindings import D1Database, R2Bucket
from objects.ffi import JsObject
from objects.metrics import write_front_rejection
from objects.room import Room  # noqa: F401  (§1.1: workerd exports DO classes of the main module)
from objects.web import (
    INTERNAL_ERROR,
    emit,
    log_failure,
    lower_headers,
    query_params,
    reply_response,
)
from rooms.admin import AdminApi
from rooms.archive import ArchiveIndex, ArchiveReader
from rooms.auth import token_policy_from, weak_admin_token, weak_jwt_secret
from rooms.front import (
    CHECK_PATH,
    ROOM_PATH,
    SUBPROTOCOL,
    AdminRequest,
    CheckAdmission,
    ForwardUpgrade,
    FrontConfig,
    GuestTokenRequest,
    HttpReply,
    client_address,
    error_reply,
    forwarded_headers,
    parse_origins,
    reply_error_code,
    route,
)
from rooms.guest import GuestIssuer, parse_switch
from rooms.logs import http_log_line

# Per isolate: the guest-token rate-limit buckets (nothing random is drawn at import).
GUEST_ISSUER = GuestIssuer()
# The isolate's last (raw env, FrontConfig) read (`Default._config`), used again only for the
# very same env object: another env (a test harness running several deployments in one isolate)
# reads afresh.
_last_config: list[tuple[Any, FrontConfig]] = []
MISCONFIGURED = error_reply(500, "server_misconfigured", "the server is misconfigured")
NOT_FOUND = error_reply(404, "not_found", "nothing here")
# Every client-sent header in our namespace is dropped before forwarding, not only today's
# identity headers: the room trusts whatever the front sends it.
TRUSTED_HEADER_PREFIX = "x-rooms-"
# Headers that may carry credentials; the room needs none of them.
CREDENTIAL_HEADERS = frozenset({"authorization", "cookie", "sec-websocket-protocol"})
LogFields = dict[str, str | int | float]


class Default(WorkerEntrypoint):  # type: ignore[misc]  # workers is untyped on the host
    """The Worker's HTTP entrypoint (§1.2: the class must be named Default)."""

    @ffi.called_as_is
    async def fetch(self, request: Any, *_: Any) -> Any:
        """The response: an SDK `Response`, or the room's JS 101 as it came (§1.2). Called as
        it is (§1.10): workerd makes a `Default` per request, so `relaxed_call` would read this
        signature again for every request."""
        started = time.perf_counter()
        fields: LogFields = {}
        kind = "other"
        try:
            js_request = request.js_object  # the URL and method read once each, raw (§1.5)
            method = fields["method"] = str(js_request.method)
            raw_url = str(js_request.url)
            url = urlsplit(raw_url)
            kind = path_kind(url.path)
            response = await self._handle(request, method, raw_url, url, fields)
        except Exception as exc:
            log_failure("fetch", exc, path=kind)
            fields["code"] = "internal"
            response = reply_response(INTERNAL_ERROR)
        status = int(response.status)
        fields["duration_ms"] = round((time.perf_counter() - started) * 1000, 3)
        code = fields.get("code")
        if isinstance(code, str) and code != "not_found":  # refusals, by code (docs/admin.md)
            try:
                write_front_rejection(self.env, code)
            except Exception as exc:  # figures are never worth a failed request
                log_failure("metrics", exc, path=kind)
        # An accepted upgrade is logged once, by the room (its `connect` line carries this
        # request's request_id): one console line per connection, not two (README.md, "Run it
        # locally"). Every other answer, refusals of upgrades included, gets the front's line.
        if status != 101:
            emit(http_log_line("request", status, kind, **fields))
        return response

    async def _handle(
        self, request: Any, method: str, raw_url: str, url: SplitResult, fields: LogFields
    ) -> Any:
        config = self._config()
        if config is None:
            fields["code"] = "server_misconfigured"
            return reply_response(MISCONFIGURED)
        path = url.path
        headers = lower_headers(request)
        own_origin = f"{url.scheme}://{url.netloc}"
        decision = route(method, path, query_params(url.query), headers, config, own_origin)
        if isinstance(decision, HttpReply):
            code = reply_error_code(decision)
            if code is not None:
                fields["code"] = code
            return reply_response(decision)
        if isinstance(decision, ForwardUpgrade):
            fields.update(decision.log, room=decision.room, user_id=decision.identity.user_id)
            fields["request_id"] = decision.request_id
            return await self._forward(raw_url, headers, decision)
        if isinstance(decision, CheckAdmission):
            fields.update(room=decision.room, user_id=decision.identity.user_id)
            reply = await self._check(decision, client_address(headers.get("cf-connecting-ip")))
            code = reply_error_code(reply)
            if code is not None:
                fields["code"] = code
            return reply_response(reply)
        if isinstance(decision, AdminRequest):
            return await self._admin(method, path, url.query, headers, fields)
        if isinstance(decision, GuestTokenRequest):
            refused = GUEST_ISSUER.refuse_declared_length(headers.get("content-length"))
            if refused is not None:
                fields["code"] = "body_too_large"
                return reply_response(refused)
            body = await request.bytes()
            client = client_address(headers.get("cf-connecting-ip"))
            now_ms = int(time.time() * 1000)
            reply = GUEST_ISSUER.handle(body, client, config.jwt_secret, now_ms, config.tokens)
            code = reply_error_code(reply)
            if code is not None:
                fields["code"] = code
            return reply_response(reply)
        assets = getattr(self.env, "ASSETS", None)  # an absent binding is an AttributeError
        found: Response | None = await assets.fetch(request) if assets is not None else None
        if found is None or found.status == 404:  # the binding's own 404 has an empty body
            fields["code"] = "not_found"
            return reply_response(NOT_FOUND)
        return found

    def _config(self) -> FrontConfig | None:
        """The front's settings, read from env once per isolate and env object (as the room's
        `_deployment`): each read through the SDK's env wrapper is a crossing or more, and the
        vars cannot change under a running isolate. A failed read is not kept."""
        raw_env = ffi.unwrapped_env(self.env)
        if _last_config and _last_config[0][0] == raw_env:  # JS identity (§6.8)
            return _last_config[0][1]
        config = self._read_config()
        if config is not None:
            _last_config[:] = [(raw_env, config)]
        return config

    def _read_config(self) -> FrontConfig | None:
        # Secrets and plain vars arrive as str (§5.5); a missing one is an AttributeError.
        secret = getattr(self.env, "JWT_SECRET", None)
        if not isinstance(secret, str) or not secret:
            return None
        problem = weak_jwt_secret(secret)
        if problem is not None:
            emit(config_error_line(problem))
            return None
        env = self.env
        try:
            origins = parse_origins(ffi.var_text(getattr(env, "ALLOWED_ORIGINS", None)))
            guest = parse_switch(getattr(env, "GUEST_TOKENS", None), default=False)
            tokens = token_policy_from(
                ffi.var_text(getattr(env, "TOKEN_MAX_LIFETIME_S", None)),
                ffi.var_text(getattr(env, "TOKEN_AUDIENCE", None)),
                ffi.var_text(getattr(env, "TOKEN_ISSUER", None)),
            )
        except ValueError:
            return None  # -> 500 server_misconfigured, never a silent default
        return FrontConfig(secret, origins, guest, tokens)

    async def _admin(
        self, method: str, path: str, query: str, headers: dict[str, str], fields: LogFields
    ) -> Response:
        db, bucket = getattr(self.env, "DB", None), getattr(self.env, "ARCHIVE", None)
        if db is None or bucket is None:
            fields["code"] = "server_misconfigured"
            return reply_response(MISCONFIGURED)
        database = D1Database(db)
        reader = ArchiveReader(ArchiveIndex(database), R2Bucket(bucket))
        token = getattr(self.env, "ADMIN_TOKEN", None)
        problem = weak_admin_token(token) if isinstance(token, str) and token else None
        if problem is not None:
            emit(config_error_line(problem))
            fields["code"] = "server_misconfigured"
            return reply_response(MISCONFIGURED)
        api = AdminApi(
            database,
            reader,
            DurableObjectRooms(self.env.ROOMS),
            token if isinstance(token, str) else None,
        )
        reply = await api.handle(
            method, path, query_params(query), headers, int(time.time() * 1000)
        )
        code = reply_error_code(reply)
        if code is not None:
            fields["code"] = code
        return reply_response(reply)

    async def _check(self, check: CheckAdmission, address: str) -> HttpReply:
        """Ask the room's object whether it would admit this identity now (its refusal as is)."""
        url = f"https://rooms.internal/rooms/{check.room}/check"
        headers = dict(forwarded_headers([], check.identity, address=address))
        response = await self.env.ROOMS.getByName(check.room).fetch(url, headers=headers)
        body = (await response.text()).encode()
        return HttpReply(
            response.status,
            body,
            (("content-type", "application/json"), ("cache-control", "no-store")),
        )

    async def _forward(
        self, raw_url: str, client_headers: dict[str, str], upgrade: ForwardUpgrade
    ) -> JsObject:
        """Send the upgrade to the room's object and return its answer as it came: the JS 101
        with the client socket, or the room's refusal (§1.2: no SDK `Response` around it).

        §2.3: only bindings reach an object, so identity headers set here can be trusted there.
        """
        headers = upgrade_headers(client_headers.items(), upgrade)
        forwarded = ffi.upgrade_request(strip_token(raw_url), "GET", headers)
        # The raw stub, not the SDK's: its fetch ties the subrequest to an AbortController, and
        # the client's socket lives exactly as long as this subrequest (docs/cloudflare.md §2.7).
        stub = ffi.raw_env_binding(self.env, "ROOMS").getByName(upgrade.room)
        return await stub.fetch(forwarded)


class DurableObjectRooms:
    """The admin API's `RoomControl` port: a room's actions run inside its object."""

    def __init__(self, namespace: Any) -> None:
        self._rooms = namespace

    async def call(
        self, room: str, action: str, params: Mapping[str, str]
    ) -> dict[str, Any] | None:
        url = f"https://rooms.internal/admin/{room}/{action}?{urlencode(dict(params))}"
        response = await self._rooms.getByName(room).fetch(url, method="POST")
        if response.status == 404:
            return None
        if response.status != 200:
            raise RuntimeError(f"room admin {action} answered {response.status}")
        answer: dict[str, Any] = await response.json()
        return answer


def upgrade_headers(
    client_headers: Iterable[tuple[str, str]], upgrade: ForwardUpgrade
) -> list[tuple[str, str]]:
    """The forwarded request's headers: ours for identity, nothing that carries credentials."""
    kept = []
    address = ""
    for name, value in client_headers:
        lower = name.lower()
        if lower == "cf-connecting-ip":  # set by Cloudflare's edge, never by the client
            address = client_address(value)
        if lower.startswith(TRUSTED_HEADER_PREFIX) or lower in CREDENTIAL_HEADERS:
            continue
        kept.append((lower, value))
    if upgrade.subprotocol is not None:
        # The offer may hold the token (new WebSocket(url, ["rooms.v1", token])); the room only
        # needs to know that ours was offered.
        kept.append(("sec-websocket-protocol", SUBPROTOCOL))
    return forwarded_headers(kept, upgrade.identity, upgrade.request_id, address)


def strip_token(url: str) -> str:
    """``url`` without its ``token`` query parameter: the room has no use for the token."""
    if "token" not in url:  # nothing to strip: the URL as it came
        return url
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "token"]
    return urlunsplit(parts._replace(query=urlencode(query)))


def config_error_line(problem: str) -> str:
    """One JSON log line naming a misconfigured setting (never its value)."""
    return json.dumps({"event": "config_error", "problem": problem}, separators=(",", ":"))


def path_kind(path: str) -> str:
    """A low-cardinality label for the request log (room names go in their own field)."""
    if path == "/health":
        return "health"
    if ROOM_PATH.fullmatch(path):
        return "room"
    if CHECK_PATH.fullmatch(path):
        return "room_check"
    if path.startswith("/rooms/"):
        return "rooms_other"
    return "other"


# Every object made by now (~42,000: our modules, the SDK, pydantic, msgspec, PyJWT) lives as
# long as the isolate. Frozen, they are left out of Python's cyclic collector, whose full pass
# over them took 325 ms in Pyodide: a stall of every room of the isolate, due whenever enough
# new objects have survived. The local runtime does the same (BENCHMARKS.md).
gc.freeze()

"""The front door, platform-free: route a request, authenticate an upgrade, shape HTTP errors.

`route` decides; the front Worker and the local server only translate its answer into their
platform's response or forward the upgrade to the room.
"""

from __future__ import annotations

import ipaddress
import json
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import quote, unquote

from rooms.auth import DEFAULT_TOKEN_POLICY, AuthError, Identity, TokenPolicy, verify_token

# "." and ".." name no file or object key anywhere (a directory of the local R2, a path segment
# that URL parsers remove), so they are refused with the rest, before any room exists.
ROOM_NAME = re.compile(r"(?!\.\.?\Z)[A-Za-z0-9._-]{1,64}")
BAD_ROOM_NAME = "room names are 1-64 chars of [A-Za-z0-9._-], other than . and .."
ROOM_PATH = re.compile(r"/rooms/([^/]*)/ws")
# The pre-check of an upgrade (docs/protocol.md#connecting): browsers never learn why an upgrade
# failed, so a page asks here for the HTTP error the upgrade got.
CHECK_PATH = re.compile(r"/rooms/([^/]*)/check")
ADMITTED = b'{"admitted":true}'
GUEST_PATH = "/auth/guest"
# ALLOWED_ORIGINS="*" alone: pages of any origin may open rooms and get guest tokens.
ANY_ORIGIN = "*"
SUBPROTOCOL = "rooms.v1"
# Set by the front on the request it forwards to the room; any client-sent copy is removed first.
USER_ID_HEADER = "x-rooms-user-id"
USER_NAME_HEADER = "x-rooms-user-name"
USER_GUEST_HEADER = "x-rooms-user-guest"
CLIENT_ADDRESS_HEADER = "x-rooms-client-address"
IDENTITY_HEADERS = (USER_ID_HEADER, USER_NAME_HEADER, USER_GUEST_HEADER, CLIENT_ADDRESS_HEADER)
# The upgrade's request id: in the front's log line and the room's `connect` line, so the two
# can be joined (the room's later lines for that socket carry its `conn_id`).
REQUEST_ID_HEADER = "x-rooms-request-id"
REQUEST_ID = re.compile(r"[0-9a-f]{16}")


def new_request_id() -> str:
    # Drawn per request, never at import time: Workers forbid top-level entropy.
    return secrets.token_hex(8)


def request_id_from_forwarded(headers: Mapping[str, str]) -> str | None:
    value = headers.get(REQUEST_ID_HEADER, "")
    return value if REQUEST_ID.fullmatch(value) else None


@dataclass(frozen=True, slots=True)
class FrontConfig:
    jwt_secret: str
    # Which pages may open rooms and get guest tokens (`origin_allowed`): empty, only the
    # server's own origin; {"*"}, any origin; otherwise exactly these.
    allowed_origins: frozenset[str] = frozenset()
    guest_tokens: bool = False  # POST /auth/guest mints guest tokens (rooms.guest)
    tokens: TokenPolicy = DEFAULT_TOKEN_POLICY  # lifetime cap, audience, issuer (TOKEN_*)


@dataclass(frozen=True, slots=True)
class HttpReply:
    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = (("content-type", "application/json"),)


@dataclass(frozen=True, slots=True)
class ForwardUpgrade:
    """Hand this upgrade to the room's object, carrying the verified identity."""

    room: str
    identity: Identity
    since: int | None
    subprotocol: str | None  # to echo in the 101 when the client offered ours
    log: dict[str, str] = field(default_factory=dict)
    request_id: str = field(default_factory=new_request_id)


@dataclass(frozen=True, slots=True)
class CheckAdmission:
    """Ask the room whether it would admit ``identity`` now; the answer is its refusal (the
    upgrade's HTTP error) or 200 ``{"admitted": true}`` (`admitted_reply`)."""

    room: str
    identity: Identity


class NotHandled:
    """The path is not the front's: serve static assets (or 404)."""


NOT_HANDLED = NotHandled()


class AdminRequest:
    """The path belongs to the admin API (rooms.admin.AdminApi answers it)."""


ADMIN_REQUEST = AdminRequest()


class GuestTokenRequest:
    """An allowed ``POST /auth/guest``: rooms.guest.GuestIssuer answers it with the body."""


GUEST_TOKEN_REQUEST = GuestTokenRequest()


def error_reply(status: int, code: str, message: str) -> HttpReply:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    return HttpReply(status, body)


def reply_error_code(reply: HttpReply) -> str | None:
    """The ``error.code`` of an error reply (for logs and counters; parsed for errors only)."""
    if reply.status < 400:
        return None
    try:
        code = json.loads(reply.body)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None
    return code if isinstance(code, str) else None


def json_reply(status: int, value: object) -> HttpReply:
    return HttpReply(status, json.dumps(value).encode())


def admitted_reply() -> HttpReply:
    headers = (("content-type", "application/json"), ("cache-control", "no-store"))
    return HttpReply(200, ADMITTED, headers)


def parse_since(raw: str | None) -> int | None:
    """The ``since`` query value as a seq; raises ValueError for anything but a whole number."""
    if raw is None:
        return None
    if not raw.isascii() or not raw.isdigit() or len(raw) > 15:
        raise ValueError(raw)
    return int(raw)


def offered_subprotocols(headers: Mapping[str, str]) -> list[str]:
    raw = headers.get("sec-websocket-protocol", "")
    return [part.strip() for part in raw.split(",") if part.strip()]


def parse_origins(raw: str | None) -> frozenset[str]:
    """`ALLOWED_ORIGINS`: comma-separated Origins, or "*" alone; ValueError for "*" and more."""
    origins = frozenset(o.strip() for o in (raw or "").split(",") if o.strip())
    if ANY_ORIGIN in origins and len(origins) > 1:
        raise ValueError('"*" (any origin) cannot be listed beside origins')
    return origins


def origin_allowed(origin: str | None, own_origin: str | None, allowed: frozenset[str]) -> bool:
    """Whether a browser page of ``origin`` may use this server, whose own is ``own_origin``.

    The check protects users' browsers from other sites' pages. A request without ``Origin`` is
    no browser's: any client can send any Origin it likes, so there is nothing to check and its
    token is its credential. With no list, only pages of the origin the request was sent to
    (scheme, host and port: the chat page this server serves) pass.
    """
    if origin is None or ANY_ORIGIN in allowed:
        return True
    if allowed:
        return origin in allowed
    return own_origin is not None and origin.lower() == own_origin.lower()


def route(
    method: str,
    path: str,
    query: Mapping[str, str],
    headers: Mapping[str, str],
    config: FrontConfig,
    own_origin: str | None = None,
) -> HttpReply | ForwardUpgrade | CheckAdmission | AdminRequest | GuestTokenRequest | NotHandled:
    """Decide what a request gets. ``headers`` keys must be lower-case; ``own_origin`` is the
    ``scheme://host[:port]`` the request was sent to (None: unknown, so no page is our own)."""
    if path.startswith("/admin/"):
        return ADMIN_REQUEST
    if path == GUEST_PATH:
        if not config.guest_tokens:
            return error_reply(404, "guest_tokens_disabled", "this server issues no guest tokens")
        if method != "POST":
            return error_reply(405, "method_not_allowed", "use POST")
        if not origin_allowed(headers.get("origin"), own_origin, config.allowed_origins):
            return error_reply(403, "origin_not_allowed", "this Origin may not get guest tokens")
        return GUEST_TOKEN_REQUEST
    if path == "/health":
        if method not in ("GET", "HEAD"):
            return error_reply(405, "method_not_allowed", "use GET")
        return json_reply(200, {"status": "ok"})
    check = CHECK_PATH.fullmatch(path)
    if check is not None:
        return _route_check(method, check.group(1), headers, config, own_origin)
    match = ROOM_PATH.fullmatch(path)
    if match is None:
        if path.startswith("/rooms/"):
            return error_reply(404, "not_found", "room URLs look like /rooms/{room}/ws")
        return NOT_HANDLED
    return _route_upgrade(method, match.group(1), query, headers, config, own_origin)


def _route_upgrade(
    method: str,
    room: str,
    query: Mapping[str, str],
    headers: Mapping[str, str],
    config: FrontConfig,
    own_origin: str | None,
) -> HttpReply | ForwardUpgrade:
    if not ROOM_NAME.fullmatch(room):
        return error_reply(400, "bad_room_name", BAD_ROOM_NAME)
    if method != "GET":
        return error_reply(405, "method_not_allowed", "open the room with a GET upgrade")
    if headers.get("upgrade", "").lower() != "websocket":
        return error_reply(426, "upgrade_required", "this URL takes a WebSocket upgrade")
    if not origin_allowed(headers.get("origin"), own_origin, config.allowed_origins):
        return error_reply(403, "origin_not_allowed", "this Origin may not open rooms")
    try:
        since = parse_since(query.get("since"))
    except ValueError:
        return error_reply(400, "bad_since", "`since` must be a whole number >= 0")
    offered = offered_subprotocols(headers)
    token = query.get("token") or _token_from_subprotocols(offered)
    try:
        identity = verify_token(token or "", config.jwt_secret, config.tokens)
    except AuthError as exc:
        return error_reply(401, exc.code, exc.message)
    subprotocol = SUBPROTOCOL if SUBPROTOCOL in offered else None
    return ForwardUpgrade(room=room, identity=identity, since=since, subprotocol=subprotocol)


def _route_check(
    method: str,
    room: str,
    headers: Mapping[str, str],
    config: FrontConfig,
    own_origin: str | None,
) -> HttpReply | CheckAdmission:
    """The upgrade's checks, in its order, for ``GET /rooms/{room}/check`` with the token in
    ``Authorization: Bearer`` (never in the URL: it would land in logs and histories)."""
    if not ROOM_NAME.fullmatch(room):
        return error_reply(400, "bad_room_name", BAD_ROOM_NAME)
    if method != "GET":
        return error_reply(405, "method_not_allowed", "use GET")
    if not origin_allowed(headers.get("origin"), own_origin, config.allowed_origins):
        return error_reply(403, "origin_not_allowed", "this Origin may not open rooms")
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        token = ""
    try:
        identity = verify_token(token.strip(), config.jwt_secret, config.tokens)
    except AuthError as exc:
        return error_reply(401, exc.code, exc.message)
    return CheckAdmission(room=room, identity=identity)


def _token_from_subprotocols(offered: Iterable[str]) -> str | None:
    # Browsers cannot set headers on a WebSocket, so the token may ride as a subprotocol:
    # new WebSocket(url, ["rooms.v1", token]). The server only ever echoes "rooms.v1".
    for entry in offered:
        if entry != SUBPROTOCOL and entry.count(".") == 2:
            return entry
    return None


def client_address(raw: str | None) -> str:
    """The client address that per-address limits count: an IPv4 address as it is, an IPv6
    one as its /64 (one host gets a whole /64, so single addresses would not limit it), and ""
    for anything that is not an address (no limit can be keyed on it)."""
    try:
        address = ipaddress.ip_address((raw or "").strip())
    except ValueError:
        return ""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def forwarded_headers(
    client_headers: Iterable[tuple[str, str]],
    identity: Identity,
    request_id: str | None = None,
    address: str = "",
) -> list[tuple[str, str]]:
    """The headers to forward to the room: client copies of ours dropped, ours added."""
    kept = [(k, v) for k, v in client_headers if k.lower() not in IDENTITY_HEADERS]
    # Header values must be Latin-1 safe; names may not be, so percent-encode them.
    return [
        *kept,
        (USER_ID_HEADER, _header_safe(identity.user_id)),
        (USER_NAME_HEADER, _header_safe(identity.name)),
        *([(USER_GUEST_HEADER, "1")] if identity.guest else []),
        *([(REQUEST_ID_HEADER, request_id)] if request_id else []),
        *([(CLIENT_ADDRESS_HEADER, address)] if address else []),
    ]


def identity_from_forwarded(headers: Mapping[str, str]) -> Identity | None:
    """The identity the front attached (only the front can reach a room)."""
    user_id = headers.get(USER_ID_HEADER)
    name = headers.get(USER_NAME_HEADER)
    if not user_id or not name:
        return None
    guest = headers.get(USER_GUEST_HEADER) == "1"
    return Identity(user_id=unquote(user_id), name=unquote(name), guest=guest)


def _header_safe(value: str) -> str:
    return quote(value, safe="")

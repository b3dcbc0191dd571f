"""Guest tokens: ``POST /auth/guest`` mints a short-lived token for a display name.

Off unless the deployment turns it on (``GUEST_TOKENS=1``; the local runtime turns it on by
default). `rooms.front.route` answers the method, the switch and the Origin check, and hands
``POST /auth/guest`` over as `GUEST_TOKEN_REQUEST`; the platform then reads the body and the
client's address (locally the peer address, on Cloudflare ``cf-connecting-ip``) and calls
`GuestIssuer.handle`. Deployments that issue tokens from their own backend leave this off.

Request: ``{"name": "Ada"}``, optionally with ``"token"``: a guest token this endpoint issued
(still valid, or expired less than ``renew_grace_s`` ago) to renew it under the same user id, so
that a page's retransmits stay idempotent. Every token carries ``guest_since``, when its user id
was first issued; renewals stop ``max_identity_s`` after it, so an identity cannot live forever.
Reply: ``{"token", "user_id", "name", "expires_ms"}``.
Each client address has a token bucket; the buckets live in this object's memory (per isolate
on Cloudflare), which is a speed bump, not a quota.

Platform-free: no I/O, and random ids are drawn per request, never at import time (Pyodide
snapshots module state).
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass

import jwt

from rooms.auth import (
    ALGORITHM,
    DEFAULT_TOKEN_POLICY,
    FORBIDDEN_NAME_CHARS,
    MAX_NAME_CHARS,
    TokenPolicy,
    valid_text,
)
from rooms.buckets import KeyedBuckets
from rooms.front import HttpReply, error_reply

GUEST_PREFIX = "guest-"
GUEST_USER_ID = re.compile(r"guest-[0-9a-f]{16}")
_SWITCH_ON = frozenset({"1", "true", "yes", "on"})
_SWITCH_OFF = frozenset({"0", "false", "no", "off", ""})
NO_STORE = (("content-type", "application/json"), ("cache-control", "no-store"))


def parse_switch(raw: str | None, default: bool) -> bool:
    """A boolean setting such as ``GUEST_TOKENS``: 1/0, true/false, yes/no, on/off."""
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _SWITCH_ON:
        return True
    if value in _SWITCH_OFF:
        return False
    raise ValueError(f"expected 1 or 0 (true/false, yes/no, on/off), got {raw!r}")


@dataclass(frozen=True, slots=True)
class GuestPolicy:
    ttl_s: int = 3600  # a guest token lives one hour; the page renews it before it runs out
    burst: int = 10  # tokens one client may fetch at once ...
    refill_s: float = 6.0  # ... and one more every `refill_s` seconds (10 a minute)
    renew_grace_s: int = 24 * 3600  # an expired guest token may be renewed this long after
    max_identity_s: int = 7 * 24 * 3600  # ... but no renewal once its user id is this old
    max_clients: int = 10_000  # buckets kept; full (idle) buckets are dropped first
    max_body_bytes: int = 2048


def _random_user_id() -> str:
    return GUEST_PREFIX + secrets.token_hex(8)


class GuestIssuer:
    """Answers ``POST /auth/guest``; holds the per-client rate-limit buckets."""

    def __init__(
        self,
        policy: GuestPolicy | None = None,
        random_user_id: Callable[[], str] = _random_user_id,
    ) -> None:
        self.policy = policy or GuestPolicy()
        self._random_user_id = random_user_id
        self._buckets = KeyedBuckets(
            self.policy.burst, self.policy.refill_s, max_keys=self.policy.max_clients
        )

    def refuse_declared_length(self, content_length: str | None) -> HttpReply | None:
        """413 before any byte is read when the declared body is over the limit (or no number).

        The platform then reads at most ``policy.max_body_bytes + 1`` bytes, so a client that
        declares 10 MiB, or streams without a length, never gets more than that buffered.
        """
        if content_length is None:
            return None
        value = content_length.strip()
        if not (value.isascii() and value.isdigit()) or int(value) > self.policy.max_body_bytes:
            return error_reply(413, "body_too_large", "the request body is too large")
        return None

    def handle(
        self,
        body: bytes,
        client: str,
        secret: str,
        now_ms: int,
        tokens: TokenPolicy = DEFAULT_TOKEN_POLICY,
    ) -> HttpReply:
        """The reply to one ``POST /auth/guest`` from ``client`` (an address; may be empty).

        The token carries ``tokens``' audience and issuer and lives no longer than it allows.
        """
        wait_s = self._buckets.take(client, now_ms / 1000)
        if wait_s > 0:
            retry = max(1, round(wait_s + 0.5))
            reply = error_reply(429, "rate_limited", f"too many guest tokens; retry in {retry} s")
            headers = (*reply.headers, ("retry-after", str(retry)))
            return HttpReply(reply.status, reply.body, headers)
        if len(body) > self.policy.max_body_bytes:
            return error_reply(413, "body_too_large", "the request body is too large")
        try:
            request = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            request = None
        if not isinstance(request, dict):
            return error_reply(400, "bad_request", 'send a JSON object: {"name": "..."}')
        name = request.get("name")
        # Controls are refused before spaces are collapsed, so "a\nb" never becomes "a b".
        if isinstance(name, str) and FORBIDDEN_NAME_CHARS.search(name):
            return error_reply(
                400, "bad_name", "`name` may not contain control or direction characters"
            )
        if isinstance(name, str):
            name = " ".join(name.split())
        if not valid_text(name, MAX_NAME_CHARS):
            return error_reply(400, "bad_name", "`name` must be 1-64 characters")
        old = request.get("token")
        now_s = now_ms // 1000
        if old is None:
            user_id, since = self._random_user_id(), now_s
        elif isinstance(old, str):
            renewed = self._renewable(old, secret, now_s, tokens)
            if isinstance(renewed, HttpReply):
                return renewed
            user_id, since = renewed
        else:
            return error_reply(400, "bad_request", "`token` must be a string")
        exp = now_s + min(self.policy.ttl_s, tokens.max_lifetime_s)
        claims: dict[str, object] = {
            "sub": user_id,
            "name": name,
            "exp": exp,
            "guest": True,
            "guest_since": since,
            **tokens.bound_claims(),
        }
        token = jwt.encode(claims, secret, algorithm=ALGORITHM)
        answer = {"token": token, "user_id": user_id, "name": name, "expires_ms": exp * 1000}
        return HttpReply(200, json.dumps(answer).encode(), NO_STORE)

    def _renewable(
        self, token: str, secret: str, now_s: int, tokens: TokenPolicy
    ) -> tuple[str, int] | HttpReply:
        """The user id and first-issue time a renewal keeps, or why it is refused."""
        try:
            claims = jwt.decode(
                token,
                secret,
                algorithms=[ALGORITHM],
                audience=tokens.audience,
                issuer=tokens.issuer,
                options={"require": ["exp", "sub"], "verify_exp": False},
            )
        except jwt.InvalidTokenError:
            return error_reply(401, "token_invalid", "the token to renew is not valid")
        user_id, exp = claims.get("sub"), claims.get("exp")
        if (
            claims.get("guest") is not True
            or not isinstance(user_id, str)
            or not GUEST_USER_ID.fullmatch(user_id)
            or not isinstance(exp, int)
        ):
            return error_reply(401, "token_invalid", "only guest tokens can be renewed here")
        if exp + self.policy.renew_grace_s < now_s:
            return error_reply(401, "token_expired", "the token expired too long ago to renew")
        since = claims.get("guest_since")
        if not isinstance(since, int):  # issued before identities had an age
            since = exp - self.policy.ttl_s
        if now_s - since > self.policy.max_identity_s:
            return error_reply(401, "token_expired", "this guest identity is too old to renew")
        return user_id, since

"""Guest tokens: the route, the issuer, renewal and the per-client rate limit (no I/O)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from rooms.auth import AuthError, mint_token, verify_token
from rooms.front import GUEST_TOKEN_REQUEST, FrontConfig, HttpReply, route
from rooms.guest import GUEST_USER_ID, GuestIssuer, GuestPolicy, parse_switch

SECRET = "guest-test-secret-long-enough-for-hs256"
ON = FrontConfig(jwt_secret=SECRET, guest_tokens=True)


def body(value: Any) -> bytes:
    return json.dumps(value).encode()


def answer(reply: HttpReply) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(reply.body)
    return value


def error_code(reply: HttpReply) -> str:
    code: str = answer(reply)["error"]["code"]
    return code


def now_ms() -> int:
    return int(time.time() * 1000)


def test_route_is_off_by_default_and_answers_in_the_error_shape() -> None:
    """Without the switch the path is a JSON 404; deployments with their own tokens keep it so."""
    reply = route("POST", "/auth/guest", {}, {}, FrontConfig(jwt_secret=SECRET))
    assert isinstance(reply, HttpReply)
    assert reply.status == 404
    assert error_code(reply) == "guest_tokens_disabled"


def test_route_hands_a_post_to_the_issuer_and_refuses_other_methods() -> None:
    assert route("POST", "/auth/guest", {}, {}, ON) is GUEST_TOKEN_REQUEST
    reply = route("GET", "/auth/guest", {}, {}, ON)
    assert isinstance(reply, HttpReply)
    assert (reply.status, error_code(reply)) == (405, "method_not_allowed")


def test_route_applies_the_origin_allow_list() -> None:
    config = FrontConfig(SECRET, frozenset({"https://chat.example"}), guest_tokens=True)
    ok = route("POST", "/auth/guest", {}, {"origin": "https://chat.example"}, config)
    assert ok is GUEST_TOKEN_REQUEST
    refused = route("POST", "/auth/guest", {}, {"origin": "https://evil.example"}, config)
    assert isinstance(refused, HttpReply)
    assert (refused.status, error_code(refused)) == (403, "origin_not_allowed")


def test_issues_a_short_lived_token_the_front_accepts() -> None:
    """The token opens rooms as guest-<random> with the given (trimmed) name for ttl seconds."""
    issuer = GuestIssuer(GuestPolicy(ttl_s=600))
    now = now_ms()
    reply = issuer.handle(body({"name": "  Ada   Lovelace "}), "10.0.0.1", SECRET, now)
    assert reply.status == 200
    assert ("cache-control", "no-store") in reply.headers
    got = answer(reply)
    assert got["name"] == "Ada Lovelace"
    assert GUEST_USER_ID.fullmatch(got["user_id"])
    assert now + 599_000 <= got["expires_ms"] <= now + 600_000
    identity = verify_token(got["token"], SECRET)
    assert (identity.user_id, identity.name) == (got["user_id"], "Ada Lovelace")


def test_every_request_draws_a_new_user_id() -> None:
    drawn: list[str] = []

    def draw() -> str:
        drawn.append(f"guest-{len(drawn):016x}")
        return drawn[-1]

    issuer = GuestIssuer(random_user_id=draw)
    assert drawn == []  # nothing is drawn before a request
    ids = {answer(issuer.handle(body({"name": "x"}), "c", SECRET, now_ms()))["user_id"]
           for _ in range(3)}
    assert ids == set(drawn)
    assert len(ids) == 3
    real = GuestIssuer()
    a, b = (answer(real.handle(body({"name": "x"}), "c", SECRET, now_ms())) for _ in range(2))
    assert a["user_id"] != b["user_id"]


@pytest.mark.parametrize(
    ("raw", "status", "code"),
    [
        (b"not json", 400, "bad_request"),
        (b"\xff\xfe", 400, "bad_request"),
        (body(["name"]), 400, "bad_request"),
        (body({}), 400, "bad_name"),
        (body({"name": "   "}), 400, "bad_name"),
        (body({"name": 7}), 400, "bad_name"),
        (body({"name": "x" * 65}), 400, "bad_name"),
        (body({"name": "bell\x07"}), 400, "bad_name"),
        # Controls are refused before whitespace is collapsed, bidi overrides everywhere.
        *[(body({"name": f"a{char}b"}), 400, "bad_name")
          for char in ["\n", "\t", "\r", "\x1f", "\x85", "\u2028", "\u202e", "\u2066"]],
        (body({"name": "ok", "token": 5}), 400, "bad_request"),
        (body({"name": "x" * 5000}), 413, "body_too_large"),
    ],
)
def test_bad_requests_get_json_errors(raw: bytes, status: int, code: str) -> None:
    reply = GuestIssuer().handle(raw, "c", SECRET, now_ms())
    assert (reply.status, error_code(reply)) == (status, code)
    assert answer(reply)["error"]["message"]


def test_renewal_keeps_the_user_id_and_moves_the_expiry() -> None:
    """A page renews its guest token (even shortly after expiry) without changing who it is."""
    issuer = GuestIssuer(GuestPolicy(ttl_s=60, renew_grace_s=3600))
    now = now_ms()
    first = answer(issuer.handle(body({"name": "Ada"}), "c", SECRET, now))
    later = now + 30 * 60 * 1000  # expired 29 minutes ago: within the grace
    renewed = answer(
        issuer.handle(body({"name": "Ada L.", "token": first["token"]}), "c", SECRET, later)
    )
    assert renewed["user_id"] == first["user_id"]
    assert renewed["name"] == "Ada L."
    assert renewed["expires_ms"] == later // 1000 * 1000 + 60_000


def test_renewal_refuses_foreign_tampered_and_stale_tokens() -> None:
    issuer = GuestIssuer(GuestPolicy(ttl_s=60, renew_grace_s=60))
    now = now_ms()
    guest = answer(issuer.handle(body({"name": "Ada"}), "c", SECRET, now))["token"]
    cases = [
        (mint_token(SECRET, "alice"), now, "token_invalid"),  # not a guest token
        (mint_token(SECRET, "guest-0123456789abcdef"), now, "token_invalid"),  # no guest claim
        (guest[:-2] + ("AA" if not guest.endswith("AA") else "BB"), now, "token_invalid"),
        (answer(GuestIssuer().handle(body({"name": "x"}), "c", "other-secret-" * 4, now))["token"],
         now, "token_invalid"),
        (guest, now + 10 * 60 * 1000, "token_expired"),  # past expiry + grace
    ]
    for token, at, code in cases:
        reply = issuer.handle(body({"name": "Ada", "token": token}), "c", SECRET, at)
        assert (reply.status, error_code(reply)) == (401, code), token


def test_rate_limit_is_a_token_bucket_per_client() -> None:
    """burst requests pass, the next is 429 with Retry-After; others are unaffected; it refills."""
    issuer = GuestIssuer(GuestPolicy(burst=3, refill_s=10))
    now = now_ms()
    statuses = [issuer.handle(body({"name": "x"}), "1.2.3.4", SECRET, now).status
                for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    limited = issuer.handle(body({"name": "x"}), "1.2.3.4", SECRET, now)
    assert error_code(limited) == "rate_limited"
    assert ("retry-after", "10") in limited.headers
    assert issuer.handle(body({"name": "x"}), "5.6.7.8", SECRET, now).status == 200
    assert issuer.handle(body({"name": "x"}), "1.2.3.4", SECRET, now + 10_000).status == 200
    assert issuer.handle(body({"name": "x"}), "1.2.3.4", SECRET, now + 10_000).status == 429


def test_bad_requests_count_against_the_limit() -> None:
    issuer = GuestIssuer(GuestPolicy(burst=2, refill_s=60))
    now = now_ms()
    assert [issuer.handle(b"junk", "c", SECRET, now).status for _ in range(3)] == [400, 400, 429]


def test_buckets_stay_bounded() -> None:
    """Many addresses cannot grow memory past max_clients."""
    issuer = GuestIssuer(GuestPolicy(burst=2, refill_s=60, max_clients=50))
    now = now_ms()
    for i in range(500):
        issuer.handle(b"{}", f"10.0.{i // 256}.{i % 256}", SECRET, now)
    assert len(issuer._buckets) <= 50


@pytest.mark.parametrize(
    ("raw", "default", "expected"),
    [(None, True, True), (None, False, False), ("1", False, True), (" On ", False, True),
     ("true", False, True), ("0", True, False), ("no", True, False), ("", True, False)],
)
def test_parse_switch(raw: str | None, default: bool, expected: bool) -> None:
    assert parse_switch(raw, default) is expected


def test_parse_switch_refuses_anything_else() -> None:
    with pytest.raises(ValueError, match="maybe"):
        parse_switch("maybe", True)


def test_renewal_ends_when_the_identity_is_older_than_its_maximum_age() -> None:
    """Renewing forever would keep one guest id alive forever: renewals keep the first issue
    time (`guest_since`) and stop after `max_identity_s`, however fresh the last token is."""
    issuer = GuestIssuer(GuestPolicy(ttl_s=3600, renew_grace_s=3600, max_identity_s=3 * 3600))
    now = now_ms()
    token = answer(issuer.handle(body({"name": "Ada"}), "c", SECRET, now))["token"]
    user_id = verify_token(token, SECRET).user_id
    for hour in (1, 2, 3):  # renewed every hour, each time while valid
        at = now + hour * 3600 * 1000
        renewed = answer(issuer.handle(body({"name": "Ada", "token": token}), "c", SECRET, at))
        assert renewed["user_id"] == user_id
        token = renewed["token"]
    late = now + (3 * 3600 + 60) * 1000  # the last token is still valid, the identity too old
    reply = issuer.handle(body({"name": "Ada", "token": token}), "c", SECRET, late)
    assert (reply.status, error_code(reply)) == (401, "token_expired")


def test_a_token_name_with_control_or_direction_characters_is_refused() -> None:
    """One rule for names: what the guest endpoint refuses, a token may not carry either."""
    for char in ["\n", "\x85", "\u202e", "\u200f"]:
        with pytest.raises(AuthError) as refused:
            verify_token(mint_token(SECRET, "alice", name=f"a{char}b"), SECRET)
        assert refused.value.code == "token_claims"

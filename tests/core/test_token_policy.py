"""TOKEN_MAX_LIFETIME_S, TOKEN_AUDIENCE, TOKEN_ISSUER: what a deployment demands of a token."""

from __future__ import annotations

import json
import time

import jwt
import pytest

from rooms.auth import AuthError, TokenPolicy, mint_token, token_policy_from, verify_token
from rooms.guest import GuestIssuer

SECRET = "token-policy-test-secret-long-enough-for-hs256"
BOUND = TokenPolicy(max_lifetime_s=3600, audience="rooms.example", issuer="https://id.example")


def signed(**claims: object) -> str:
    return jwt.encode({"sub": "ann", "exp": int(time.time()) + 60, **claims}, SECRET, "HS256")


def refusal(token: str, policy: TokenPolicy) -> str:
    with pytest.raises(AuthError) as refused:
        verify_token(token, SECRET, policy)
    return refused.value.code


def test_a_token_living_past_the_maximum_lifetime_is_refused() -> None:
    assert refusal(signed(exp=4102444800), TokenPolicy()) == "token_claims"  # the year 2100
    hour = TokenPolicy(max_lifetime_s=3600)
    assert refusal(signed(exp=int(time.time()) + 3700), hour) == "token_claims"
    assert verify_token(signed(exp=int(time.time()) + 3500), SECRET, hour).user_id == "ann"


def test_audience_and_issuer_are_required_once_configured() -> None:
    good = signed(aud="rooms.example", iss="https://id.example")
    assert verify_token(good, SECRET, BOUND).user_id == "ann"
    for token in (
        signed(),  # neither
        signed(aud="rooms.example"),  # no iss
        signed(aud="other.example", iss="https://id.example"),
        signed(aud="rooms.example", iss="https://evil.example"),
    ):
        assert refusal(token, BOUND) == "token_claims"


def test_tokens_minted_here_pass_the_policy_they_were_minted_for() -> None:
    assert verify_token(mint_token(SECRET, "ann", policy=BOUND), SECRET, BOUND).user_id == "ann"
    issuer = GuestIssuer()
    now_ms = int(time.time() * 1000)
    reply = issuer.handle(b'{"name": "Ann"}', "c", SECRET, now_ms, BOUND)
    first = json.loads(reply.body)
    assert verify_token(first["token"], SECRET, BOUND).name == "Ann"
    renewal = json.dumps({"name": "Ann", "token": first["token"]}).encode()
    renewed = json.loads(issuer.handle(renewal, "c", SECRET, now_ms, BOUND).body)
    assert renewed["user_id"] == first["user_id"]


@pytest.mark.parametrize("raw", ["0", "59", "-5", "1e5", "x", str(367 * 24 * 3600)])
def test_a_bad_maximum_lifetime_is_a_configuration_error(raw: str) -> None:
    with pytest.raises(ValueError, match="TOKEN_MAX_LIFETIME_S"):
        token_policy_from(raw, None, None)

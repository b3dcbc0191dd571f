"""TOKEN_MAX_LIFETIME_S, TOKEN_AUDIENCE, TOKEN_ISSUER: what a deployment demands of a token."""

from __future__ import annotations

import json
import time

import jwt
import pytest
from jwt.algorithms import HMACAlgorithm

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


def test_the_secret_is_inspected_once_not_for_every_token(monkeypatch: pytest.MonkeyPatch) -> None:
    """PyJWT inspects an HMAC secret (PEM? SSH? DER? JWK?) in `prepare_key`; ours does it once
    per secret. A change of secret is inspected again, and a token signed with the old one
    is refused under the new one."""
    inspected: list[str | bytes] = []
    original = HMACAlgorithm.prepare_key

    def counting(self: HMACAlgorithm, key: str | bytes) -> bytes:
        inspected.append(key)
        return original(self, key)

    first, second = SECRET + "-first", SECRET + "-second"
    exp = int(time.time()) + 60
    tokens = {user: jwt.encode({"sub": user, "exp": exp}, first, "HS256") for user in "abc"}
    monkeypatch.setattr(HMACAlgorithm, "prepare_key", counting)
    for user, token in tokens.items():
        assert verify_token(token, first).user_id == user
    assert inspected == [first]
    with pytest.raises(AuthError) as refused:
        verify_token(tokens["a"], second)
    assert refused.value.code == "token_invalid"
    assert inspected == [first, second]


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")  # HS512's
def test_only_hs256_signed_with_the_secret_passes() -> None:
    """Algorithm confusion and forgeries fail with the prepared key as they did without."""
    claims = {"sub": "ann", "exp": int(time.time()) + 60}
    assert verify_token(jwt.encode(claims, SECRET, "HS256"), SECRET).user_id == "ann"
    unsigned = jwt.encode(claims, None, "none")
    other_alg = jwt.encode(claims, SECRET, "HS512")
    other_secret = jwt.encode(claims, SECRET + "x", "HS256")
    header, payload, signature = jwt.encode(claims, SECRET, "HS256").split(".")
    forged_claims = jwt.encode({**claims, "sub": "root"}, SECRET + "x", "HS256").split(".")[1]
    spliced = f"{header}.{forged_claims}.{signature}"
    stripped = f"{header}.{payload}."
    for token in (unsigned, other_alg, other_secret, spliced, stripped, "a.b.c", "x" * 100):
        assert refusal(token, TokenPolicy()) == "token_invalid", token

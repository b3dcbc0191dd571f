"""Who is connecting: HS256 JWT verification for every upgrade.

Claims: ``sub`` is the user id (required), ``exp`` is required, ``name`` is an optional display
name (default: ``sub``, cut to 64 characters). Only HS256 is accepted, so ``alg: none`` and
algorithm-confusion tokens fail.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import TypeGuard

import jwt
from jwt.algorithms import HMACAlgorithm

ALGORITHM = "HS256"
MAX_USER_ID_CHARS = 128
MAX_NAME_CHARS = 64
# No user id or display name may hold C0 or C1 controls, line or paragraph separators, or the
# bidirectional formatting controls that can make one name display as another.
FORBIDDEN_NAME_CHARS = re.compile(
    r"[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]"
)
_BAD_SUB = f"`sub` must be a non-empty string of at most {MAX_USER_ID_CHARS} chars"


# HS256 with a short secret can be brute-forced offline from any one token; the admin token is a
# bearer credential. Both runtimes refuse to run with less.
MIN_SECRET_BYTES = 32
MIN_ADMIN_TOKEN_CHARS = 32


def weak_jwt_secret(secret: str) -> str | None:
    """Why ``secret`` may not sign tokens, or None. Never quotes the secret."""
    if len(secret.encode()) < MIN_SECRET_BYTES:
        return f"JWT_SECRET must be at least {MIN_SECRET_BYTES} bytes"
    return None


def weak_admin_token(token: str) -> str | None:
    """Why ``token`` may not guard the admin API, or None. Never quotes the token."""
    if len(token) < MIN_ADMIN_TOKEN_CHARS:
        return f"ADMIN_TOKEN must be at least {MIN_ADMIN_TOKEN_CHARS} characters"
    return None


@dataclass(frozen=True, slots=True)
class TokenPolicy:
    """What a deployment demands of tokens beyond the signature (TOKEN_* settings)."""

    max_lifetime_s: int = 7 * 24 * 3600  # `exp` at most this far ahead: no token for 2100
    audience: str | None = None  # when set, `aud` must name it
    issuer: str | None = None  # when set, `iss` must be it

    def bound_claims(self) -> dict[str, str]:
        """The `aud`/`iss` claims tokens minted here carry, so that they pass this policy."""
        claims = {"aud": self.audience, "iss": self.issuer}
        return {name: value for name, value in claims.items() if value is not None}


DEFAULT_TOKEN_POLICY = TokenPolicy()


def token_policy_from(
    max_lifetime_s: str | None, audience: str | None, issuer: str | None
) -> TokenPolicy:
    """TOKEN_MAX_LIFETIME_S, TOKEN_AUDIENCE, TOKEN_ISSUER as set; ValueError names the bad one."""
    policy = TokenPolicy(audience=audience or None, issuer=issuer or None)
    if not max_lifetime_s:
        return policy
    value = max_lifetime_s.strip()
    if not (value.isascii() and value.isdigit()) or not 60 <= int(value) <= 366 * 24 * 3600:
        raise ValueError("TOKEN_MAX_LIFETIME_S must be a whole number of seconds, 60 to a year")
    return TokenPolicy(int(value), policy.audience, policy.issuer)


@dataclass(frozen=True, slots=True)
class Identity:
    user_id: str
    name: str
    guest: bool = False  # a guest token's (`"guest": true`): the room and pages can tell


class AuthError(Exception):
    """A token was refused; ``code`` goes to the client, the token itself never does."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class _PreparedHS256(HMACAlgorithm):
    """HS256 that checks and prepares a secret once, not on every token.

    PyJWT's `prepare_key` re-inspects the secret on each decode (is it a PEM, SSH or DER key,
    a JWK?): 40% of a token's check in a connect storm. The secret is the deployment's own,
    never a client's input, so remembering the last one prepared changes nothing a token can
    reach: the algorithm is still pinned, the signature still compared in constant time (by
    PyJWT), every claim still checked."""

    def __init__(self) -> None:
        super().__init__(HMACAlgorithm.SHA256)
        self._last: tuple[str | bytes, bytes] | None = None  # (secret, prepared): one pair

    def prepare_key(self, key: str | bytes) -> bytes:
        last = self._last
        if last is not None and type(last[0]) is type(key) and last[0] == key:
            return last[1]
        prepared = super().prepare_key(key)
        self._last = (key, prepared)
        return prepared


def _decoder() -> jwt.PyJWT:
    """A PyJWT of our own that knows HS256 only, through `_PreparedHS256`.

    PyJWT takes no algorithm set in its constructor, so its signature layer is replaced; the
    auth tests check that decoding goes through it (`tests/core/test_token_policy.py`)."""
    signatures = jwt.PyJWS(algorithms=[])
    signatures.register_algorithm(ALGORITHM, _PreparedHS256())
    decoder = jwt.PyJWT()
    decoder._jws = signatures
    return decoder


_DECODER = _decoder()


def verify_token(
    token: str, secret: str, policy: TokenPolicy = DEFAULT_TOKEN_POLICY, *, leeway_s: int = 5
) -> Identity:
    """Return the identity in ``token`` or raise `AuthError`."""
    if not token:
        raise AuthError("token_missing", "a token is required")
    required = ["exp", "sub", *policy.bound_claims()]
    try:
        claims = _DECODER.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            audience=policy.audience,
            issuer=policy.issuer,
            options={"require": required},
            leeway=leeway_s,
        )
    except jwt.ExpiredSignatureError:
        raise AuthError("token_expired", "the token has expired") from None
    except jwt.MissingRequiredClaimError as exc:
        raise AuthError("token_claims", f"the token lacks the {exc.claim!r} claim") from None
    except jwt.exceptions.InvalidSubjectError:  # a well-signed token whose `sub` is no string
        raise AuthError("token_claims", _BAD_SUB) from None
    except (jwt.InvalidAudienceError, jwt.InvalidIssuerError):
        raise AuthError("token_claims", "the token is not meant for this server") from None
    except jwt.InvalidTokenError:
        raise AuthError("token_invalid", "the token is not valid") from None
    if claims["exp"] - time.time() > policy.max_lifetime_s + leeway_s:
        raise AuthError(
            "token_claims", f"the token lives longer than the {policy.max_lifetime_s} s allowed"
        )
    user_id = claims.get("sub")
    if not valid_text(user_id, MAX_USER_ID_CHARS):
        raise AuthError("token_claims", _BAD_SUB)
    # Without `name`, the display name is the user id, cut to the longest name allowed.
    name = claims["name"] if "name" in claims else user_id[:MAX_NAME_CHARS]
    if not valid_text(name, MAX_NAME_CHARS):
        raise AuthError("token_claims", "`name` must be a non-empty string of at most 64 chars")
    return Identity(user_id=user_id, name=name, guest=claims.get("guest") is True)


def mint_token(
    secret: str,
    user_id: str,
    name: str | None = None,
    ttl_s: int = 3600,
    policy: TokenPolicy = DEFAULT_TOKEN_POLICY,
) -> str:
    """A token for development and tests (production tokens come from your identity provider)."""
    claims: dict[str, object] = {"sub": user_id, "exp": int(time.time()) + ttl_s}
    claims.update(policy.bound_claims())
    if name is not None:
        claims["name"] = name
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def valid_text(value: object, max_chars: int) -> TypeGuard[str]:
    """The one rule for user ids and display names, in tokens and from the guest endpoint."""
    return (
        isinstance(value, str)
        and 0 < len(value) <= max_chars
        and not FORBIDDEN_NAME_CHARS.search(value)
    )

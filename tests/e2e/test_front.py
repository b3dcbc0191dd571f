"""The front door over real HTTP, on every runtime: every refusal gets its JSON error before
any upgrade; tokens ride in the query or as a subprotocol; clients cannot claim an identity."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import jwt
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from tests.conftest import timeout
from tests.e2e.conftest import (
    GATED,
    ORIGIN,
    ServiceBase,
    expect_http_error,
    recv_until,
    use_profile,
)
from tests.workerd_service import SECRET

pytestmark = pytest.mark.integration


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def unsigned_token(claims: dict[str, Any]) -> str:
    return f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}."


def future() -> int:
    return int(time.time()) + 600


def bad_tokens() -> dict[str, tuple[str | None, str]]:
    """Made when a test runs, not when tests are collected: a long session (22 min on a loaded
    machine) outlived tokens that expired 10 minutes after collection."""
    return {
        "missing": (None, "token_missing"),
        "garbage": ("not-a-jwt", "token_invalid"),
        "wrong-signature": (
            jwt.encode({"sub": "a", "exp": future()}, "another-secret-at-least-32-bytes", "HS256"),
            "token_invalid",
        ),
        "alg-none": (unsigned_token({"sub": "a", "exp": future()}), "token_invalid"),
        "expired": (jwt.encode({"sub": "a", "exp": int(time.time()) - 60}, SECRET,
                               algorithm="HS256"), "token_expired"),
        "no-exp": (jwt.encode({"sub": "a"}, SECRET, algorithm="HS256"), "token_claims"),
        "no-sub": (jwt.encode({"exp": future()}, SECRET, algorithm="HS256"), "token_claims"),
        "sub-not-string": (jwt.encode({"sub": "", "exp": future()}, SECRET, algorithm="HS256"),
                           "token_claims"),
    }


@pytest.mark.parametrize("case", sorted(bad_tokens()))
async def test_bad_tokens_are_refused_with_401_and_a_code(service: ServiceBase, case: str) -> None:
    """Missing, malformed, forged, alg:none, expired and claim-less tokens never upgrade."""
    token, code = bad_tokens()[case]
    url = service.url(service.room("lobby"), **({"token": token} if token else {}))
    await expect_http_error(url, 401, code)


@pytest.mark.parametrize("name", ["a%2Fb", "x" * 65, "sp%20ace", "%C3%A9moji", "%2e%2e%2f", ""])
async def test_bad_room_names_get_400_before_any_upgrade(service: ServiceBase, name: str) -> None:
    """Room names outside [A-Za-z0-9._-]{1,64} are refused with bad_room_name (or 404)."""
    token = jwt.encode({"sub": "a", "exp": future()}, SECRET, algorithm="HS256")
    url = f"ws://{service.base}/rooms/{name}/ws?token={token}"
    with pytest.raises(InvalidStatus) as refused:
        await websockets.connect(url, open_timeout=timeout(15))
    assert refused.value.response.status_code in (400, 404)
    body = json.loads(refused.value.response.body)
    assert body["error"]["code"] in ("bad_room_name", "not_found")


async def test_bad_since_is_refused(service: ServiceBase) -> None:
    """`since` must be a whole number."""
    token = jwt.encode({"sub": "a", "exp": future()}, SECRET, algorithm="HS256")
    url = service.url(service.room("lobby"), token=token, since="-3")
    await expect_http_error(url, 400, "bad_since")


async def test_plain_http_to_a_room_url_gets_426(service: ServiceBase) -> None:
    """A room URL without an upgrade is refused with upgrade_required; a POST with 405."""
    token = jwt.encode({"sub": "a", "exp": future()}, SECRET, algorithm="HS256")
    path = f"/rooms/{service.room('lobby')}/ws?token={token}"
    plain = await service.http("GET", path)
    assert (plain.status, plain.json()["error"]["code"]) == (426, "upgrade_required")
    post = await service.http("POST", path)
    assert (post.status, post.json()["error"]["code"]) == (405, "method_not_allowed")
    other = await service.http("GET", "/rooms/lobby/other")
    assert (other.status, other.json()["error"]["code"]) == (404, "not_found")


async def test_token_as_subprotocol_is_accepted_and_only_ours_is_echoed(
    service: ServiceBase,
) -> None:
    """Browsers pass the token as a subprotocol; the server selects rooms.v1, never the token."""
    token = jwt.encode({"sub": "sub-user", "exp": future()}, SECRET, algorithm="HS256")
    async with websockets.connect(service.url(service.room("lobby"), since=0),
                                  subprotocols=["rooms.v1", token],  # type: ignore[list-item]
                                  open_timeout=timeout(15)) as ws:
        assert ws.subprotocol == "rooms.v1"
        assert (await recv_until(ws, "welcome"))["user_id"] == "sub-user"


async def test_client_identity_headers_are_ignored(service: ServiceBase) -> None:
    """An x-rooms-user-id header from the client cannot override the token's subject."""
    token = jwt.encode({"sub": "honest", "exp": future()}, SECRET, algorithm="HS256")
    async with websockets.connect(
        service.url(service.room("lobby"), since=0, token=token),
        additional_headers={"X-Rooms-User-Id": "admin", "X-Rooms-User-Name": "Admin"},
        open_timeout=timeout(15),
    ) as ws:
        welcome = await recv_until(ws, "welcome")
        assert welcome["user_id"] == "honest"
        assert welcome["presence"] == [{"user_id": "honest", "name": "honest"}]


@use_profile(GATED)
async def test_origin_allow_list_refuses_other_origins(service: ServiceBase) -> None:
    """With an allow-list configured, an unknown Origin gets 403 and a listed one connects."""
    token = jwt.encode({"sub": "a", "exp": future()}, SECRET, algorithm="HS256")
    url = service.url(service.room("lobby"), token=token, since=0)
    await expect_http_error(url, 403, "origin_not_allowed", origin="https://evil.example")
    async with websockets.connect(url, origin=ORIGIN,  # type: ignore[arg-type]
                                  open_timeout=timeout(15)) as ws:
        await recv_until(ws, "welcome")


@use_profile(GATED)
async def test_full_room_refuses_new_users_with_403(service: ServiceBase) -> None:
    """Past max_members (1) distinct users, a new user's upgrade is refused with room_full."""
    room = service.room("tiny")
    async with await service.connect(room, "first") as ws:
        await recv_until(ws, "welcome")
        token = jwt.encode({"sub": "second", "exp": future()}, SECRET, algorithm="HS256")
        await expect_http_error(service.url(room, token=token), 403, "room_full", origin=ORIGIN)
        async with await service.connect(room, "first") as again:  # same user: admitted
            await recv_until(again, "welcome")

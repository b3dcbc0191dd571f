"""The front door over real HTTP: every auth failure class gets its JSON error before upgrade."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import jwt
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from tests.local.conftest import SECRET, RunningServer, ServerFactory, recv_until

pytestmark = pytest.mark.integration


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def unsigned_token(claims: dict[str, Any]) -> str:
    return f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}."


def future() -> int:
    return int(time.time()) + 600


BAD_TOKENS = {
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


async def expect_http_error(url: str, status: int, code: str, **kwargs: Any) -> None:
    with pytest.raises(InvalidStatus) as refused:
        await websockets.connect(url, **kwargs)
    response = refused.value.response
    assert response.status_code == status
    assert response.headers["Content-Type"].startswith("application/json")
    body = json.loads(response.body)
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str)
    assert "Traceback" not in response.body.decode()


@pytest.mark.parametrize("case", sorted(BAD_TOKENS))
async def test_bad_tokens_are_refused_with_401_and_a_code(server: RunningServer, case: str) -> None:
    """Missing, malformed, forged, alg:none, expired and claim-less tokens never upgrade."""
    token, code = BAD_TOKENS[case]
    url = server.url("lobby", **({"token": token} if token else {}))
    await expect_http_error(url, 401, code)


@pytest.mark.parametrize("name", ["a%2Fb", "x" * 65, "sp%20ace", "%C3%A9moji", "%2e%2e%2f", ""])
async def test_bad_room_names_get_400_before_any_upgrade(server: RunningServer, name: str) -> None:
    """Room names outside [A-Za-z0-9._-]{1,64} are refused with bad_room_name (or 404)."""
    token = jwt.encode({"sub": "a", "exp": future()}, SECRET, algorithm="HS256")
    url = f"ws://{server.base}/rooms/{name}/ws?token={token}"
    with pytest.raises(InvalidStatus) as refused:
        await websockets.connect(url)
    assert refused.value.response.status_code in (400, 404)
    body = json.loads(refused.value.response.body)
    assert body["error"]["code"] in ("bad_room_name", "not_found")


async def test_bad_since_is_refused(server: RunningServer) -> None:
    """`since` must be a whole number."""
    token = jwt.encode({"sub": "a", "exp": future()}, SECRET, algorithm="HS256")
    await expect_http_error(server.url("lobby", token=token, since="-3"), 400, "bad_since")


async def test_token_as_subprotocol_is_accepted_and_only_ours_is_echoed(
    server: RunningServer,
) -> None:
    """Browsers pass the token as a subprotocol; the server selects rooms.v1, never the token."""
    token = jwt.encode({"sub": "sub-user", "exp": future()}, SECRET, algorithm="HS256")
    async with websockets.connect(server.url("lobby", since=0),
                                  subprotocols=["rooms.v1", token]) as ws:  # type: ignore[list-item]
        assert ws.subprotocol == "rooms.v1"
        assert (await recv_until(ws, "welcome"))["user_id"] == "sub-user"


async def test_client_identity_headers_are_ignored(server: RunningServer) -> None:
    """An x-rooms-user-id header from the client cannot override the token's subject."""
    token = jwt.encode({"sub": "honest", "exp": future()}, SECRET, algorithm="HS256")
    async with websockets.connect(
        server.url("lobby", since=0, token=token),
        additional_headers={"X-Rooms-User-Id": "admin", "X-Rooms-User-Name": "Admin"},
    ) as ws:
        welcome = await recv_until(ws, "welcome")
        assert welcome["user_id"] == "honest"
        assert welcome["presence"] == [{"user_id": "honest", "name": "honest"}]


async def test_origin_allow_list_refuses_other_origins(server_factory: ServerFactory) -> None:
    """With an allow-list configured, an unknown Origin gets 403 and a listed one connects."""
    server = await server_factory(allowed_origins=frozenset({"https://chat.example"}))
    token = jwt.encode({"sub": "a", "exp": future()}, SECRET, algorithm="HS256")
    url = server.url("lobby", token=token, since=0)
    await expect_http_error(url, 403, "origin_not_allowed", origin="https://evil.example")
    async with websockets.connect(url, origin="https://chat.example") as ws:  # type: ignore[arg-type]
        await recv_until(ws, "welcome")


async def test_full_room_refuses_new_users_with_403(server_factory: ServerFactory) -> None:
    """Past max_members distinct users, a new user's upgrade is refused with room_full."""
    from rooms.limits import Limits

    server = await server_factory(limits=Limits(max_members=1))
    async with await server.connect("tiny", "first") as ws:
        await recv_until(ws, "welcome")
        token = jwt.encode({"sub": "second", "exp": future()}, SECRET, algorithm="HS256")
        await expect_http_error(server.url("tiny", token=token), 403, "room_full")
        async with await server.connect("tiny", "first") as again:  # same user: admitted
            await recv_until(again, "welcome")

"""POST /auth/guest on every runtime: the chat page's way in, over real HTTP and WebSockets.

The rate limit is per client address: the peer address locally, ``cf-connecting-ip`` on
Cloudflare. wrangler dev sets ``cf-connecting-ip`` to the peer address too (when the client
sent none), so each test sends from a loopback address of its own (127.x.y.z): on workerd the
buckets live in the front's isolate for the whole session.
"""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
import websockets

from rooms.guest import GUEST_USER_ID, GuestPolicy
from tests.conftest import timeout
from tests.e2e.conftest import (
    ARCHIVING,
    GATED,
    ORIGIN,
    HttpReply,
    ServiceBase,
    recv_until,
    use_profile,
)

pytestmark = pytest.mark.integration


def client_address() -> str:
    """A loopback address no other test sends from."""
    return f"127.{random.randrange(1, 255)}.{random.randrange(256)}.{random.randrange(1, 255)}"


async def post(service: ServiceBase, payload: Any, source: str | None = None,
               **headers: str) -> HttpReply:
    body = payload if isinstance(payload, bytes) else json.dumps(payload)
    return await service.http("POST", "/auth/guest", headers, body,
                              source=source or client_address())


async def test_a_guest_token_opens_a_room_under_a_guest_identity(service: ServiceBase) -> None:
    reply = await post(service, {"name": "Ada"})
    assert reply.status == 200
    assert reply.headers["cache-control"] == "no-store"
    answer = reply.json()
    assert GUEST_USER_ID.fullmatch(answer["user_id"])
    room = service.room("lobby")
    url = f"ws://{service.base}/rooms/{room}/ws?since=0"
    async with websockets.connect(
        url, subprotocols=["rooms.v1", answer["token"]],  # type: ignore[list-item]
        open_timeout=timeout(15),
    ) as ws:
        welcome = await recv_until(ws, "welcome")
        assert welcome["user_id"] == answer["user_id"]
        # The guest claim reaches the room: members can tell guests apart.
        me = {"user_id": answer["user_id"], "name": "Ada", "guest": True}
        assert welcome["presence"] == [me]
        async with await service.connect(room, "bob") as bob:  # an ordinary token: no `guest`
            bob_welcome = await recv_until(bob, "welcome")
            assert bob_welcome["presence"] == [{"user_id": "bob", "name": "bob"}, me]  # by id
            joined = await recv_until(ws, "presence")
            assert joined["member"] == {"user_id": "bob", "name": "bob"}


async def test_a_guest_token_is_renewed_under_the_same_user_id(service: ServiceBase) -> None:
    """The page keeps its identity (so retransmits stay idempotent); only guest tokens renew."""
    first = (await post(service, {"name": "Ada"})).json()
    renewed = await post(service, {"name": "Ada L.", "token": first["token"]})
    assert renewed.status == 200
    assert (renewed.json()["user_id"], renewed.json()["name"]) == (first["user_id"], "Ada L.")
    room_token = service.token("alice")  # valid for rooms, but not a guest token
    refused = await post(service, {"name": "Ada", "token": room_token})
    assert (refused.status, refused.json()["error"]["code"]) == (401, "token_invalid")
    forged = await post(service, {"name": "Ada", "token": first["token"][:-4] + "AAAA"})
    assert (forged.status, forged.json()["error"]["code"]) == (401, "token_invalid")


async def test_guest_tokens_are_rate_limited_per_client(service: ServiceBase) -> None:
    burst = GuestPolicy().burst
    client = client_address()
    statuses = [(await post(service, {"name": "x"}, source=client)).status
                for _ in range(burst + 1)]
    assert statuses == [200] * burst + [429]
    reply = await post(service, {"name": "x"}, source=client)
    assert (reply.status, reply.json()["error"]["code"]) == (429, "rate_limited")
    assert int(reply.headers["retry-after"]) >= 1
    other = await post(service, {"name": "x"}, source=client_address())  # its own bucket
    assert other.status == 200


async def test_bad_requests_answer_in_the_error_shape(service: ServiceBase) -> None:
    cases: list[tuple[Any, int, str]] = [
        ({"name": ""}, 400, "bad_name"),
        ({"name": "x" * 65}, 400, "bad_name"),
        ({"name": "tab\there"}, 400, "bad_name"),  # controls are refused, not folded
        ({"name": "bell\x07"}, 400, "bad_name"),
        ({}, 400, "bad_name"),
        (["Ada"], 400, "bad_request"),
        (b"{not json", 400, "bad_request"),
        ({"name": "Ada", "token": 5}, 400, "bad_request"),
        ({"name": "A" * 10, "pad": "x" * 3000}, 413, "body_too_large"),
    ]
    for payload, status, code in cases:
        reply = await post(service, payload)
        assert reply.status == status, payload
        if code:
            assert reply.json()["error"]["code"] == code, payload
    wrong_method = await service.http("GET", "/auth/guest")
    assert (wrong_method.status, wrong_method.json()["error"]["code"]) == (
        405, "method_not_allowed")


@use_profile(GATED)
async def test_guest_tokens_obey_the_origin_allow_list(service: ServiceBase) -> None:
    refused = await post(service, {"name": "Ada"}, origin="https://evil.example")
    assert (refused.status, refused.json()["error"]["code"]) == (403, "origin_not_allowed")
    assert (await post(service, {"name": "Ada"}, origin=ORIGIN)).status == 200


@use_profile(ARCHIVING)
async def test_switched_off_guest_tokens_answer_404(service: ServiceBase) -> None:
    off = await post(service, {"name": "Ada"})
    assert (off.status, off.json()["error"]["code"]) == (404, "guest_tokens_disabled")

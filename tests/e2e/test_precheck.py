"""`GET /rooms/{room}/check` on every runtime: the HTTP error an upgrade would get, readable by a
page (browsers never see why an upgrade failed). docs/protocol.md#connecting."""

from __future__ import annotations

import time

import jwt
import pytest

from tests.e2e.conftest import GATED, ORIGIN, ServiceBase, recv_until, use_profile
from tests.workerd_service import ADMIN_TOKEN, SECRET

pytestmark = pytest.mark.integration


async def check(
    service: ServiceBase, room: str, token: str | None, origin: str | None = None
) -> tuple[int, dict[str, object]]:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    if origin is not None:
        headers["Origin"] = origin
    reply = await service.http("GET", f"/rooms/{room}/check", headers)
    assert reply.headers["content-type"].startswith("application/json")
    assert "Traceback" not in reply.text
    answer = reply.json()
    assert isinstance(answer, dict)
    return reply.status, answer


def code_of(answer: dict[str, object]) -> object:
    error = answer.get("error")
    return error.get("code") if isinstance(error, dict) else None


async def test_the_check_answers_what_the_upgrade_would_get_for_tokens(
    service: ServiceBase,
) -> None:
    room = service.room("check")
    assert await check(service, room, service.token("ada")) == (200, {"admitted": True})
    other = jwt.encode({"sub": "ada", "exp": int(time.time()) + 600},
                       "another-secret-that-is-32-bytes-long", algorithm="HS256")
    expired = jwt.encode({"sub": "ada", "exp": int(time.time()) - 60}, SECRET, algorithm="HS256")
    for token, code in [(None, "token_missing"), (other, "token_invalid"),
                        (expired, "token_expired"), ("x.y.z", "token_invalid")]:
        status, answer = await check(service, room, token)
        assert (status, code_of(answer)) == (401, code)
    status, answer = await check(service, "bad name!", service.token("ada"))
    assert (status, code_of(answer)) == (400, "bad_room_name")
    # The token only in the header: a query token is not read (it would land in logs).
    reply = await service.http("GET", f"/rooms/{room}/check?token={service.token('ada')}")
    assert (reply.status, code_of(reply.json())) == (401, "token_missing")
    reply = await service.http("POST", f"/rooms/{room}/check",
                               {"Authorization": f"Bearer {service.token('ada')}"})
    assert (reply.status, code_of(reply.json())) == (405, "method_not_allowed")


@use_profile(GATED)
async def test_the_check_says_a_room_is_full_and_whose_origin_is_refused(
    service: ServiceBase,
) -> None:
    """GATED rooms take one user: the second is told `room_full`; the member is admitted."""
    room = service.room("full")
    async with await service.connect(room, "ada") as ws:
        await recv_until(ws, "welcome")
        status, answer = await check(service, room, service.token("bob"), ORIGIN)
        assert (status, code_of(answer)) == (403, "room_full")
        assert await check(service, room, service.token("ada"), ORIGIN) == (
            200, {"admitted": True})
        status, answer = await check(service, room, service.token("bob"), "https://evil.example")
        assert (status, code_of(answer)) == (403, "origin_not_allowed")


async def test_the_check_says_a_user_is_banned(service: ServiceBase) -> None:
    room = service.room("banned")
    async with await service.connect(room, "mallory") as ws:
        await recv_until(ws, "welcome")
        reply = await service.http(
            "POST", f"/admin/rooms/{room}/ban?user_id=mallory&duration_s=600",
            {"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        assert reply.status == 200
    status, answer = await check(service, room, service.token("mallory"))
    assert (status, code_of(answer)) == (403, "banned")
    assert (await check(service, room, service.token("ada")))[0] == 200

"""What one user or one host can take from a room and from the service, on every runtime.

Issue items: rooms write nothing until their first message and new rooms are rate-limited per
user and per address; sockets per address in a room are capped; rate budgets are per user, not
per socket (docs/security.md, "Rooms" and "Connections").
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import pytest
import websockets

from tests.e2e.conftest import (
    ABUSE,
    AnyService,
    LocalService,
    ServiceBase,
    eventually,
    expect_http_error,
    fresh_address,
    publish,
    recv_json,
    recv_until,
    use_profile,
)

pytestmark = pytest.mark.integration


async def connect_from(
    service: ServiceBase, address: str, room: str, user: str, **kwargs: Any
) -> websockets.ClientConnection:
    return await service.connect(room, user, local_addr=(address, 0), **kwargs)


async def refused_from(
    service: ServiceBase, address: str, room: str, user: str, status: int, code: str
) -> None:
    await expect_http_error(
        service.url(room, token=service.token(user), since=0), status, code,
        local_addr=(address, 0),
    )


async def created_room(service: ServiceBase, prefix: str) -> str:
    """A room that holds a message, created from an address of its own."""
    room = service.room(prefix)
    # A founder of its own: on workerd one NEW_ROOMS budget per user lasts the whole session.
    founder = f"founder-{uuid.uuid4().hex[:8]}"
    async with await connect_from(service, fresh_address(), room, founder) as ws:
        await recv_until(ws, "welcome")
        await publish(ws, "first", "the room exists now")
    return room


async def test_a_room_nobody_wrote_to_leaves_nothing_behind(service: AnyService) -> None:
    """Joining, signalling and leaving store nothing: no file locally (the one made as the
    member joined is removed), no storage in the object (the admin API finds no room). The
    first message creates the room."""
    room = service.room("ghost")
    async with await service.connect(room, "visitor") as ws:
        welcome = await recv_until(ws, "welcome")
        assert welcome["head"] == 0
        await ws.send(json.dumps({"type": "signal", "kind": "typing", "data": True}))
        await ws.send(json.dumps({"type": "history", "before": 5}))
        assert (await recv_until(ws, "history"))["messages"] == []
        while_present = await service.admin("GET", f"/admin/rooms/{room}")
        assert while_present.status == 200  # inspectable while someone is in it
        assert while_present.json()["head_seq"] == 0
    gone = await eventually(
        lambda: service.admin("GET", f"/admin/rooms/{room}"), lambda r: r.status == 404
    )
    assert gone.json()["error"]["code"] == "room_not_found"
    file = (
        service.settings.data_dir / "rooms" / f"{room}.sqlite"
        if isinstance(service, LocalService) else None
    )
    if file is not None:
        # The file made for the room as its member joined goes off the event loop once the
        # room is empty (docs/architecture.md): shortly after the admin API stops finding it.
        async def present() -> bool:
            return file.exists()

        assert not await eventually(present, lambda exists: not exists, seconds=10)

    async with await service.connect(room, "visitor") as ws:
        await recv_until(ws, "welcome")
        assert (await publish(ws, "m1", "now it exists"))["seq"] == 1
    kept = await service.admin("GET", f"/admin/rooms/{room}")
    assert kept.status == 200
    assert kept.json()["head_seq"] == 1
    assert file is None or file.exists()


async def early_in_a_minute(service: ServiceBase, needed_s: float = 30.0) -> None:
    """Under `wrangler dev` the rate-limiting binding counts in windows aligned to the wall
    clock's minute (miniflare's implementation), so opens that straddle a minute's end get a
    fresh budget: start with ``needed_s`` of the minute left. The local runtime's buckets
    refill continuously and need no wait."""
    left = 60.0 - time.time() % 60.0
    if not isinstance(service, LocalService) and left < needed_s:
        await asyncio.sleep(left + 0.1)


@use_profile(ABUSE)  # 3 new rooms a minute per user and per address
async def test_opening_rooms_that_hold_nothing_is_rate_limited(service: ServiceBase) -> None:
    mallory, bystander = fresh_address(), fresh_address()
    await early_in_a_minute(service)  # every open below falls in one window of the binding
    for i in range(3):
        async with await connect_from(service, mallory, service.room(f"spam{i}"), "mallory") as ws:
            await recv_until(ws, "welcome")
    await refused_from(service, mallory, service.room("spam3"), "mallory", 429,
                       "too_many_new_rooms")
    # Another identity from the same address: that address's budget is spent too.
    await refused_from(service, mallory, service.room("spam4"), "mallory2", 429,
                       "too_many_new_rooms")
    # Rooms that exist stay open to them, and other users are not affected.
    existing = await created_room(service, "existing")
    async with await connect_from(service, mallory, existing, "mallory") as ws:
        assert (await recv_until(ws, "welcome"))["head"] == 1
    async with await connect_from(service, bystander, service.room("fresh"), "bystander") as ws:
        await recv_until(ws, "welcome")


@use_profile(ABUSE)  # max_sockets_per_address=3
async def test_one_address_holds_at_most_max_sockets_per_address_in_a_room(
    service: ServiceBase,
) -> None:
    room = await created_room(service, "crowd")
    host = fresh_address()
    held = [await connect_from(service, host, room, f"sybil{i}") for i in range(3)]
    try:
        for ws in held:
            await recv_until(ws, "welcome")
        await refused_from(service, host, room, "sybil3", 403, "too_many_from_address")
        async with await connect_from(service, fresh_address(), room, "neighbour") as ws:
            assert (await recv_until(ws, "welcome"))["user_id"] == "neighbour"
        await held[0].close()
        async with await eventually(  # its place is free again once its close is handled
            lambda: _try_connect(service, host, room, "sybil3"), lambda ws: ws is not None
        ) as again:
            await recv_until(again, "welcome")
    finally:
        for ws in held:
            await ws.close()


async def _try_connect(
    service: ServiceBase, address: str, room: str, user: str
) -> websockets.ClientConnection | None:
    try:
        return await connect_from(service, address, room, user)
    except websockets.InvalidStatus:
        return None


@use_profile(ABUSE)  # a burst of 3 frames per user, 0.2 more a second
async def test_rate_budgets_are_per_user_not_per_socket(service: ServiceBase) -> None:
    """Three sockets of one user share one budget; closing them all and reconnecting does not
    refill it either, while the room is awake. (A budget lives in its sockets' attachments and
    in the awake room: a room that hibernated with none of the user's sockets forgot it, which
    takes 10 s of quiet on Cloudflare, time enough to refill the default budget in full; the
    local-hibernating runtime forgets it after every event, so it skips that part.)"""
    room = await created_room(service, "budget")
    address = fresh_address()
    sockets = [await connect_from(service, address, room, "greedy") for _ in range(3)]
    try:
        for ws in sockets:
            await recv_until(ws, "welcome")
        for ws in sockets:
            for i in range(3):
                await send_publish(ws, f"{id(ws)}-{i}")
        answers = [await _answers(ws, 3) for ws in sockets]
        acks = sum(a["type"] == "ack" for socket_answers in answers for a in socket_answers)
        refused = [a["code"] for socket_answers in answers for a in socket_answers
                   if a["type"] == "error"]
        assert acks == 3  # the burst, once: not three bursts
        assert refused == ["rate_limited"] * 6
    finally:
        for ws in sockets:
            await ws.close()
    if service.runtime == "local-hibernating":
        return
    async with await connect_from(service, address, room, "greedy") as again:
        await recv_until(again, "welcome")
        await send_publish(again, "after-reconnect")
        error = await recv_until(again, "error")
        assert error["code"] == "rate_limited"


async def send_publish(ws: websockets.ClientConnection, id_: str) -> None:
    await ws.send(json.dumps({"type": "publish", "id": id_, "body": "hello"}))


async def _answers(ws: websockets.ClientConnection, count: int) -> list[dict[str, Any]]:
    """The next ``count`` acks and errors on ``ws`` (other frames skipped)."""
    answers: list[dict[str, Any]] = []
    while len(answers) < count:
        frame = await recv_json(ws)
        if frame["type"] in ("ack", "error"):
            answers.append(frame)
    return answers


@use_profile(ABUSE)  # 20 signals in a burst, then one every 100 s
async def test_signals_are_small_and_on_a_budget_of_their_own(service: ServiceBase) -> None:
    """A 64 KiB signal used to be relayed to every member, sharing the publish budget. Now a
    signal's data is at most `max_signal_bytes` (2 KiB), and 25 signals at once exhaust the
    signal bucket (20) without touching the sender's message budget."""
    room = await created_room(service, "signals")
    address = fresh_address()
    async with (
        await connect_from(service, address, room, "mallory") as ws,
        await connect_from(service, address, room, "bystander") as other,
    ):
        await recv_until(ws, "welcome")
        await recv_until(other, "welcome")
        await ws.send(json.dumps({"type": "signal", "kind": "k", "data": "x" * 4096}))
        assert (await recv_until(ws, "error"))["code"] == "signal_too_large"
        for i in range(25):
            await ws.send(json.dumps({"type": "signal", "kind": "typing", "data": i}))
        await send_publish(ws, "p")
        answers = []
        while not answers or answers[-1]["type"] != "ack":
            answers.append(await recv_json(ws))
        limited = [a for a in answers if a["type"] == "error" and a["code"] == "rate_limited"]
        assert len(limited) == 6  # 20 in the bucket, and the oversized signal took one
        relayed = [await recv_until(other, "signal") for _ in range(19)]
        assert [r["data"] for r in relayed] == list(range(19))  # never the 4 KiB one

"""A request id ties the front's log line for an upgrade to the room's lines for it."""

from __future__ import annotations

import json
import logging

import pytest

from tests.local.conftest import ServerFactory, recv_until


def records(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    lines = []
    for record in caplog.records:
        try:
            lines.append(json.loads(record.getMessage()))
        except ValueError:
            continue
    return lines


async def test_the_front_line_and_the_room_connect_line_share_a_request_id(
    server_factory: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="rooms")
    server = await server_factory()
    async with await server.connect("lobby", "alice") as a, \
            await server.connect("lobby", "bob") as b:
        await recv_until(a, "welcome")
        await recv_until(b, "welcome")
    lines = records(caplog)
    fronts = [r for r in lines if r["event"] == "upgrade"]
    connects = [r for r in lines if r["event"] == "connect"]
    assert [(r["status"], r["room"], r["user_id"]) for r in fronts] == [
        (101, "lobby", "alice"), (101, "lobby", "bob")]
    ids = [r["request_id"] for r in fronts]
    assert len(set(ids)) == 2
    assert all(len(str(i)) == 16 for i in ids)
    assert [(r["request_id"], r["user_id"]) for r in connects] == [
        (ids[0], "alice"), (ids[1], "bob")]
    # Each joined as it connected (it named `since`): its `connect` line says at which head,
    # and there is no `join` line besides (README.md, "Run it locally").
    assert [r["seq"] for r in connects] == [0, 0]
    assert not [r for r in lines if r["event"] == "join"]
    # ... and from there the room's later lines for each socket carry its conn_id.
    by_conn = {r["conn_id"]: r["request_id"] for r in connects}
    leaves = [r for r in lines if r["event"] == "disconnect"]
    assert {by_conn[str(r["conn_id"])] for r in leaves} == set(ids)


async def test_a_client_cannot_choose_the_request_id(
    server_factory: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="rooms")
    server = await server_factory()
    async with await server.connect(
        "lobby", "alice", additional_headers={"x-rooms-request-id": "0123456789abcdef"}
    ) as ws:
        await recv_until(ws, "welcome")
    (front,) = [r for r in records(caplog) if r["event"] == "upgrade"]
    assert front["request_id"] != "0123456789abcdef"

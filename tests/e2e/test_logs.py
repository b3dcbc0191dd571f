"""The log lines of a connection, on every runtime (README.md, "Run it locally").

One line when a socket connects and one when it leaves: the room's `connect` line (with the
front's request id, and the head it joined at when it named `since`) and its `disconnect` line.
A socket that joins later, with its `hello`, adds a `join` line. Locally these are always
written, and the front also writes an `upgrade` line for every upgrade; on Cloudflare the room
writes them only with LOG_CONNECTIONS=1, and the front writes its `request` line only for an
upgrade that was refused, by itself or by the room. Refusals are always logged; tokens never.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import websockets
from websockets.exceptions import InvalidStatus

from rooms.limits import Limits
from tests.conftest import timeout
from tests.e2e.conftest import AnyService, eventually, use_profile
from tests.frames import publish, recv_until
from tests.workerd_service import Profile

pytestmark = pytest.mark.integration

ROOM_PATH = "/rooms/{room}/ws"  # the local front's path label
ONE_SOCKET_LIMITS = Limits(max_sockets_per_user=1, messages_per_second=1000, burst=1000)
QUIET = Profile(limits=ONE_SOCKET_LIMITS, name="quiet")  # the default on Cloudflare
LOUD = Profile(limits=ONE_SOCKET_LIMITS, log_connections=True, name="loud")


def records(service: AnyService) -> list[dict[str, Any]]:
    """The service's JSON log lines (wrangler's own output and prefixes skipped)."""
    out = []
    for line in service.log_text().splitlines():
        start = line.find('{"event":')
        if start < 0:
            continue
        try:
            out.append(json.loads(line[start:]))
        except ValueError:
            continue
    return out


def front_lines(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The front's lines for upgrades: `request` on workerd; locally `upgrade`, or `http` for
    one refused before it reached a room."""
    fronts = ("request", "upgrade", "http")
    return [r for r in lines if r["event"] in fronts and r.get("path") in ("room", ROOM_PATH)]


async def visit(service: AnyService) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str]:
    """In a new room: alice joins as she connects and publishes, her second socket is refused
    by the room, bob joins with `hello` and leaves, alice leaves, and a bad token is refused by
    the front. The front's lines for upgrades written meanwhile, the room's lines naming a
    connection (read once the last refusal is in the log: wrangler relays the Worker's lines
    later) and the bad token."""
    room = service.room("logs")
    before = len(front_lines(records(service)))
    async with await service.connect(room, "alice") as alice:
        await recv_until(alice, "welcome")
        assert (await publish(alice, "m1", "hello"))["seq"] == 1
        with pytest.raises(InvalidStatus) as refused:  # the room's refusal: one socket per user
            async with await service.connect(room, "alice"):
                pass
        assert refused.value.response.status_code == 403
        async with await service.connect(room, "bob", since=None) as bob:  # joins on `hello`
            await bob.send(json.dumps({"type": "hello", "since": 1}))
            await recv_until(bob, "welcome")
        left = await recv_until(alice, "presence")
        while left["event"] != "leave":
            left = await recv_until(alice, "presence")
    bad_token = service.token("mallory")[:-2] + "xx"
    with pytest.raises(InvalidStatus) as unauthorized:  # the front's refusal, last
        async with websockets.connect(
            service.url(room, token=bad_token, since=0), open_timeout=timeout(15)
        ):
            pass
    assert unauthorized.value.response.status_code == 401

    async def read() -> list[dict[str, Any]]:
        return records(service)

    def settled(lines: list[dict[str, Any]]) -> bool:
        """The front's refusal is in, and every socket that connected has left: the room
        writes a `disconnect` line when it has handled the close, which may come after the
        front refused the bad token."""
        if not any(r.get("status") == 401 for r in front_lines(lines)[before:]):
            return False
        mine = [r for r in lines if r.get("room") == room and "conn_id" in r]
        opened = {r["conn_id"] for r in mine if r["event"] == "connect"}
        closed = {r["conn_id"] for r in mine if r["event"] == "disconnect"}
        return opened <= closed

    lines = await eventually(read, settled, seconds=30)
    assert settled(lines), "the refusal or a socket's disconnect never reached the log"
    connections = [r for r in lines if r.get("room") == room and "conn_id" in r]
    return front_lines(lines)[before:], connections, bad_token


@use_profile(LOUD)
async def test_a_connection_is_one_line_when_it_opens_and_one_when_it_closes(
    service: AnyService,
) -> None:
    fronts, mine, bad_token = await visit(service)
    alice_id, bob_id = (
        next(r["conn_id"] for r in mine if r["user_id"] == user) for user in ("alice", "bob")
    )
    events = {
        conn: [r["event"] for r in mine if r["conn_id"] == conn] for conn in (alice_id, bob_id)
    }
    assert events == {
        alice_id: ["connect", "disconnect"],  # joined as it connected: no `join` line
        bob_id: ["connect", "join", "disconnect"],
    }
    connects = [r for r in mine if r["event"] == "connect"]
    assert [r.get("seq") for r in connects] == [0, None]
    assert all(len(r["request_id"]) == 16 for r in connects)
    statuses = sorted(r["status"] for r in fronts)
    if service.runtime == "workerd":  # an accepted upgrade is the room's line alone
        assert statuses == [401, 403]
    else:
        assert statuses == [101, 101, 401, 403]
    assert bad_token.split(".")[1] not in service.log_text()  # the token's claims, anywhere


@pytest.mark.parametrize("service", ["workerd"], indirect=True)
@use_profile(QUIET)
async def test_on_cloudflare_connections_are_counted_not_logged_unless_asked(
    service: AnyService,
) -> None:
    """The default on Cloudflare: no line for an accepted connection, from the front or the
    room; the refusals (the room's 403, the front's 401) are logged all the same."""
    fronts, connections, bad_token = await visit(service)
    assert connections == []
    assert sorted(r["status"] for r in fronts) == [401, 403]
    assert bad_token.split(".")[1] not in service.log_text()

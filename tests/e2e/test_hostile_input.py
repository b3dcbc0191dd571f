"""Hostile input gets the documented refusal, never a 500 or an upgrade, on every runtime."""

from __future__ import annotations

import asyncio
import json
import time

import jwt
import pytest

from tests.conftest import timeout
from tests.e2e.conftest import (
    GATED,
    SECRET,
    ServiceBase,
    closed_by_server,
    expect_http_error,
    recv_json,
    recv_until,
    use_profile,
)

pytestmark = pytest.mark.integration


async def raw_request(service: ServiceBase, request: bytes) -> tuple[int, bytes]:
    """Send bytes no HTTP client library would, and return (status, body)."""
    host, port = service.base.split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request)
        await writer.drain()
        response = await asyncio.wait_for(reader.read(), timeout(30))
    finally:
        writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


async def test_an_authorization_header_that_is_not_utf8_is_a_401(service: ServiceBase) -> None:
    status, body = await raw_request(
        service,
        b"GET /admin/rooms HTTP/1.1\r\nHost: "
        + service.base.encode()
        + b"\r\nAuthorization: Bearer \xff\xfe\r\nConnection: close\r\n\r\n",
    )
    assert status == 401
    assert json.loads(body)["error"]["code"] == "unauthorized"


@pytest.mark.parametrize(
    "cursor", ["12345678901234567890123:lobby", "\u00b2:lobby", "12:", "x:y", "-1:lobby"]
)
async def test_a_cursor_this_api_never_returned_is_a_400(service: ServiceBase, cursor: str) -> None:
    reply = await service.admin("GET", f"/admin/rooms?cursor={cursor}")
    assert reply.status == 400
    assert reply.json()["error"]["code"] == "bad_request"


@pytest.mark.parametrize("name", [".", "..", "%2e", "%2E%2e"])
async def test_dot_room_names_are_never_opened(service: ServiceBase, name: str) -> None:
    """ "." and ".." name no file or storage key: refused before any room exists. Sent raw, as
    a hostile client would (HTTP clients remove dot segments); workerd's URL parser removes them
    too, so there the path is no room's at all."""
    token = service.token("alice")
    status, body = await raw_request(
        service,
        f"GET /rooms/{name}/ws?token={token}&since=0 HTTP/1.1\r\nHost: {service.base}\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nConnection: close\r\n\r\n".encode(),
    )
    assert status in (400, 404)
    if status == 400:
        assert json.loads(body)["error"]["code"] == "bad_room_name"


async def test_a_long_user_id_without_a_name_is_named_by_its_first_64_chars(
    service: ServiceBase,
) -> None:
    """`sub` may be 128 chars and `name` defaults to it: cut to the 64 a name may have."""
    user_id = "u" * 100 + "z" * 28
    async with await service.connect(service.room("long-sub"), user_id) as ws:
        welcome = await recv_until(ws, "welcome")
    assert welcome["user_id"] == user_id
    assert welcome["presence"] == [{"user_id": user_id, "name": "u" * 64}]


@pytest.mark.parametrize("sub", [5, ["a"], {"a": 1}])
async def test_a_signed_token_whose_sub_is_no_string_is_refused_for_its_claims(
    service: ServiceBase, sub: object
) -> None:
    token = jwt.encode({"sub": sub, "exp": int(time.time()) + 600}, SECRET, algorithm="HS256")
    await expect_http_error(service.url(service.room("sub"), token=token), 401, "token_claims")


@pytest.mark.parametrize("name", ["a\nb", "a\tb", "a\x85b", "a\u202eb"])
async def test_a_guest_name_with_control_or_direction_characters_is_refused(
    service: ServiceBase, name: str
) -> None:
    # A client address of its own (wrangler dev keeps a client-sent cf-connecting-ip), so the
    # session's other guest requests do not share this test's rate-limit bucket.
    reply = await service.http(
        "POST",
        "/auth/guest",
        {"Content-Type": "application/json", "cf-connecting-ip": f"192.0.2.{len(name)}"},
        json.dumps({"name": name}),
    )
    assert (reply.status, reply.json()["error"]["code"]) == (400, "bad_name")


async def test_a_text_frame_that_is_not_utf8(service: ServiceBase) -> None:
    """RFC 6455 says close with 1007, and the local runtime (aiohttp) does. workerd decodes the
    frame with U+FFFD for each bad byte before the room sees it, so there the frame is handled as
    that text: not JSON any more gets `bad_json`, and the connection stays (docs/protocol.md)."""
    room = service.room("utf8")
    async with await service.connect(room, "mallory") as ws:
        await recv_until(ws, "welcome")
        await ws.send(b'{"type": "ping"}\xff', text=True)
        if service.runtime == "workerd":
            assert (await recv_until(ws, "error"))["code"] == "bad_json"
            await ws.send(b'{"type": "publish", "id": "m1", "body": "caf\xe9"}', text=True)
            assert (await recv_until(ws, "message"))["body"] == "caf\ufffd"
        else:
            closed = await closed_by_server(ws)
            assert closed.rcvd is not None
            assert closed.rcvd.code == 1007


async def test_a_user_id_of_128_multibyte_characters_joins(service: ServiceBase) -> None:
    """128 "é" are a valid `sub` but 258 UTF-8 bytes as a socket tag, over Cloudflare's 256:
    such a user's tag is hashed instead of failing the upgrade (docs/cloudflare.md §3.2)."""
    user_id = "\u00e9" * 128
    async with await service.connect(service.room("wide"), user_id) as ws:
        welcome = await recv_until(ws, "welcome")
    assert welcome["user_id"] == user_id


@pytest.mark.parametrize(
    "frame",
    [
        "[" * 1000 + "]" * 1000,
        '{"type": "ping", "ignored": ' + "[" * 1000 + "]" * 1000 + "}",
        '{"type": "signal", "kind": "k", "data": ' + "[" * 1000 + "]" * 1000 + "}",
        '{"type": "signal", "kind": "k", "data": ' + '{"a":' * 1000 + "1" + "}" * 1000 + "}",
    ],
    ids=["top-level", "ignored-field", "signal-array", "signal-object"],
)
async def test_json_nested_a_thousand_deep_is_bad_input_not_a_crash(
    service: ServiceBase, frame: str
) -> None:
    """A 2 KB frame nested 1,000 deep is bad input, never a crash (no `internal`, no 1011), and
    the socket stays usable. Parsers differ in depth: CPython's msgspec refuses such a frame
    (`bad_json`), Pyodide's skips an ignored field and relays deep signal data, so either
    answer is right as long as nothing breaks."""
    room = service.room("nested")
    async with (
        await service.connect(room, "mallory") as ws,
        await service.connect(room, "bystander") as other,
    ):
        await recv_until(ws, "welcome")
        await recv_until(other, "welcome")
        await ws.send(frame)
        await ws.send(json.dumps({"type": "publish", "id": "after", "body": "still here"}))
        answers = []
        while not answers or answers[-1]["type"] != "ack":
            answers.append(await recv_json(ws))
        assert answers[-1]["seq"] == 1
        errors = [a["code"] for a in answers if a["type"] == "error"]
        assert set(errors) <= {"bad_json", "bad_frame"}, answers
        assert (await recv_until(other, "message"))["id"] == "after"


async def test_signal_data_deeper_than_16_levels_is_refused_and_never_relayed(
    service: ServiceBase,
) -> None:
    room = service.room("deep-signal")
    async with (
        await service.connect(room, "mallory") as ws,
        await service.connect(room, "bystander") as other,
    ):
        await recv_until(ws, "welcome")
        await recv_until(other, "welcome")
        ok = {"type": "signal", "kind": "k", "data": json.loads("[" * 16 + "]" * 16)}
        deep = {"type": "signal", "kind": "k", "data": json.loads("[" * 17 + "]" * 17)}
        await ws.send(json.dumps(deep))
        assert (await recv_until(ws, "error"))["code"] == "bad_frame"
        await ws.send(json.dumps(ok))
        relayed = await recv_until(other, "signal")
        assert relayed["data"] == ok["data"]


async def test_a_request_line_the_parser_refuses_gets_json_without_the_token(
    service: ServiceBase,
) -> None:
    token = service.token("alice")
    status, body = await raw_request(
        service,
        f"GET /rooms/lobby/ws?token={token}&x=\xe9 HTTP/1.1\r\nHost: {service.base}\r\n"
        "Connection: close\r\n\r\n".encode("latin-1"),
    )
    assert token.encode() not in body
    assert 400 <= status < 500
    if service.runtime != "workerd":  # workerd parses it: the front answers (426, JSON)
        assert json.loads(body)["error"]["code"] == "bad_request"


async def test_guest_bodies_are_bounded_before_they_are_read(service: ServiceBase) -> None:
    """A body declared over the limit is refused before it is read; one over the limit gets
    413 in our shape; one that never arrives is cut off (locally; workerd has its own limits)."""
    base = service.base.encode()
    head = b"POST /auth/guest HTTP/1.1\r\nHost: " + base + b"\r\ncf-connecting-ip: 192.0.2.77\r\n"
    declared = head + b"Content-Type: application/json\r\nContent-Length: 10485760\r\n\r\n"
    status, body = await raw_request(service, declared + b'{"name": "x"}')
    assert (status, json.loads(body)["error"]["code"]) == (413, "body_too_large")
    big = b'{"name": "' + b"x" * (1024 * 1024 + 10) + b'"}'
    status, body = await raw_request(
        service,
        head
        + b"Content-Type: application/json\r\nContent-Length: "
        + str(len(big)).encode()
        + b"\r\nConnection: close\r\n\r\n"
        + big,
    )
    assert (status, json.loads(body)["error"]["code"]) == (413, "body_too_large")


async def test_a_token_that_lives_until_2100_is_refused(service: ServiceBase) -> None:
    """TOKEN_MAX_LIFETIME_S (7 days unless set) caps `exp`, so a leaked token cannot live on."""
    forever = jwt.encode({"sub": "ann", "exp": 4102444800}, SECRET, algorithm="HS256")
    await expect_http_error(service.url(service.room("exp"), token=forever), 401, "token_claims")


@pytest.mark.parametrize("path", ["/%00", "/a%00b.html", "/" + "x" * 300])
async def test_static_paths_no_file_can_have_are_404(service: ServiceBase, path: str) -> None:
    """A NUL byte or an over-long name reached the file system as a 500 (found by the fuzz)."""
    reply = await service.http("GET", path)
    assert (reply.status, reply.json()["error"]["code"]) == (404, "not_found")


async def test_a_client_that_missed_megabytes_gets_its_welcome_and_catches_up(
    service: ServiceBase,
) -> None:
    """300 messages of 4,000 characters (1.2 MB) missed: the replay is bounded by bytes
    (`replay_limit`, the newest first), the socket is not cut as a slow consumer, and the rest
    comes back page by page with `history`."""
    room = service.room("backlog")
    body = "m" * 4000
    async with await service.connect(room, "writer") as writer:
        await recv_until(writer, "welcome")
        for i in range(300):
            await writer.send(json.dumps({"type": "publish", "id": f"w{i}", "body": body}))
        acked = 0
        while acked < 300:
            acked += (await recv_json(writer))["type"] == "ack"
    async with await service.connect(room, "reader", since=0) as reader:
        welcome = await recv_until(reader, "welcome")
        resume = welcome["resume"]
        assert (resume["complete"], resume["reason"]) == (False, "replay_limit")
        [[first, cut_to]] = resume["missing"]
        assert first == 1
        assert 1 < cut_to < 300
        replayed = [(await recv_until(reader, "message"))["seq"] for _ in range(300 - cut_to)]
        assert replayed == list(range(cut_to + 1, 301))
        seen = set(replayed)
        before = cut_to + 1
        while before is not None and before > 1:
            await reader.send(json.dumps({"type": "history", "before": before, "limit": 100}))
            page = await recv_until(reader, "history")
            seen.update(m["seq"] for m in page["messages"])
            before = page["next_before"]
        assert seen == set(range(1, 301))
        await reader.send(json.dumps({"type": "publish", "id": "r", "body": "caught up"}))
        assert (await recv_until(reader, "ack"))["seq"] == 301


@use_profile(GATED)  # max_members=1
async def test_sockets_that_never_join_cannot_lock_a_room(service: ServiceBase) -> None:
    """One attacker's silent sockets (no `hello`) used to fill `max_members`: everyone else got
    room_full. They hold no place now, and a user's sockets in a room are capped."""
    room = service.room("lockout")
    lurkers = [await service.connect(room, "lurker", since=None) for _ in range(3)]
    try:
        async with await service.connect(room, "alice") as alice:
            assert (await recv_until(alice, "welcome"))["user_id"] == "alice"
            await lurkers[0].send(json.dumps({"type": "hello"}))
            assert (await recv_until(lurkers[0], "error"))["code"] == "room_full"
    finally:
        for lurker in lurkers:
            await lurker.close()

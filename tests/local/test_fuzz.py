"""Bounded fuzzing through real sockets: whatever a client sends, the server answers as documented.

Frames of arbitrary JSON-ish text and HTTP requests with arbitrary paths, query strings and
headers go to one running local server. Nothing may get a 5xx, an `internal` error frame or a
1011 close; no traceback may reach the log; and the server must still serve afterwards.
"""

from __future__ import annotations

import json
import logging
from urllib.parse import quote

import aiohttp
import pytest
import websockets
from hypothesis import HealthCheck, given, settings, strategies as st

from tests.local.conftest import RunningServer, ServerFactory, recv_json, recv_until

pytestmark = pytest.mark.integration
# derandomize: the same examples every run, so CI is repeatable (a new seed is a deliberate
# change); they were chosen wide enough to find the NUL-byte path that once gave a 500.
FUZZ = settings(
    max_examples=120,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
frame_types = st.sampled_from(["publish", "hello", "history", "signal", "ping", "nope", ""])
frames = st.one_of(
    st.text(max_size=200),  # anything at all
    st.builds(  # a frame that looks right, with arbitrary fields
        lambda t, extra: json.dumps({"type": t, **extra}),
        frame_types,
        st.dictionaries(
            st.sampled_from(["id", "body", "since", "before", "limit", "kind", "data", "ref"]),
            json_values,
            max_size=4,
        ),
    ),
    st.integers(1, 1200).map(lambda n: "[" * n + "]" * n),
)


async def no_internal_answer(ws: websockets.ClientConnection, frame: str) -> None:
    await ws.send(frame)
    await ws.send('{"type": "ping"}')  # every frame is answered before this one's pong
    while True:
        answer = await recv_json(ws)
        assert not (answer["type"] == "error" and answer["code"] == "internal"), (frame, answer)
        if answer["type"] == "pong":
            return


async def test_arbitrary_frames_never_break_the_room(
    server_factory: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    from rooms.limits import Limits

    server = await server_factory(
        limits=Limits(messages_per_second=10_000, burst=10_000, max_strikes=1_000_000)
    )
    caplog.set_level(logging.INFO)
    async with await server.connect("fuzz", "fuzzer") as ws:
        await recv_until(ws, "welcome")

        # hypothesis drives a synchronous function: draw the examples, then send each one.
        examples: list[str] = []

        @FUZZ
        @given(frame=frames)
        def collect(frame: str) -> None:
            examples.append(frame)

        collect()
        for frame in examples:
            await no_internal_answer(ws, frame)
        assert ws.close_code is None
    await still_serves(server)
    assert "Traceback" not in caplog.text
    assert '"internal_error"' not in caplog.text


async def still_serves(server: RunningServer) -> None:
    async with await server.connect("fuzz-after", "someone") as ws:
        await recv_until(ws, "welcome")
        await ws.send(json.dumps({"type": "publish", "id": "x", "body": "fine"}))
        assert (await recv_until(ws, "ack"))["seq"] == 1


paths = st.just("/%00") | st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=40
).map(lambda p: "/" + quote(p, safe="/%?&=;:@!$'()*+,"))
header_values = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60)
header_names = st.sampled_from(
    ["Origin", "Authorization", "Upgrade", "Connection", "Content-Type", "X-Rooms-User-Id",
     "Sec-WebSocket-Protocol", "Cookie", "Host-ish", "Range"]
)


async def test_arbitrary_http_requests_get_no_5xx(
    server_factory: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    server = await server_factory(admin_token="fuzz-admin-token-0123456789abcdefghij")
    caplog.set_level(logging.INFO)
    requests: list[tuple[str, str, dict[str, str]]] = []

    @FUZZ
    @given(
        method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"]),
        prefix=st.sampled_from(["", "/rooms/lobby/ws", "/admin/rooms", "/auth/guest", "/health"]),
        path=paths,
        headers=st.dictionaries(header_names, header_values, max_size=4),
    )
    def collect(method: str, prefix: str, path: str, headers: dict[str, str]) -> None:
        requests.append((method, (prefix + path) if prefix else path, headers))

    collect()
    async with aiohttp.ClientSession() as http:
        for method, path, headers in requests:
            async with http.request(
                method, f"http://{server.base}{path}", headers=headers, allow_redirects=False
            ) as reply:
                body = await reply.read()
                assert reply.status < 500, (method, path, headers, reply.status, body[:200])
    await still_serves(server)
    assert "Traceback" not in caplog.text

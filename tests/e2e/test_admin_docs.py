"""docs/admin.md says exactly what the server does: every example request in it is sent, in the
document's order, to the real server on every runtime, and the answer must match the example.

The examples form one story: alice and bob join `lobby`, alice sends two messages and bob one
(the test does this first), then each example runs in turn. The room names of the document are
replaced by fresh ones (workerd keeps its state all session), and values that differ from run
to run (times, connection ids, sizes on disk) are compared by type only: `VOLATILE`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from rooms.telemetry import ROOM_POINT_DOUBLES
from tests.e2e.conftest import STRICT, ServiceBase, eventually, recv_until
from tests.workerd_service import ADMIN_TOKEN, Profile

pytestmark = pytest.mark.integration
DOC = Path(__file__).parents[2] / "docs" / "admin.md"
# A request block, then its response block: ```http fences both.
EXAMPLE = re.compile(r"```http\n(?P<request>[A-Z]+ .*?)```\s*```http\n(?P<response>HTTP/.*?)```",
                     re.S)
VOLATILE = {"conn_id", "storage_bytes", "wakes", "bytes", "id", "next_cursor", "until_ms"}
ROOMS = ("lobby", "nobody")  # the document's room names


@pytest.fixture
def profile() -> Profile:
    """Archive only on demand, 5 messages a segment, 2 rows kept (see STRICT)."""
    return STRICT


def examples() -> list[tuple[str, str, dict[str, str], int, Any]]:
    found = []
    for match in EXAMPLE.finditer(DOC.read_text()):
        request_line, *header_lines = match["request"].strip().splitlines()
        method, path, _ = request_line.split(" ")
        headers = dict(line.split(": ", 1) for line in header_lines if line)
        status_line, _, body = match["response"].partition("\n\n")
        status = int(status_line.split(" ")[1])
        found.append((method, path, headers, status, json.loads(body)))
    return found


def matches(example: Any, actual: Any, where: str = "") -> list[str]:
    """Where ``actual`` differs from ``example`` (VOLATILE keys and *_ms: same type only)."""
    if isinstance(example, dict) and isinstance(actual, dict):
        if set(example) != set(actual):
            return [f"{where}: keys {sorted(example)} != {sorted(actual)}"]
        problems = []
        for key, value in example.items():
            if key in VOLATILE or key.endswith("_ms"):
                if type(value) is not type(actual[key]):
                    problems.append(f"{where}.{key}: {value!r} vs {actual[key]!r}")
            elif key == "detail" and isinstance(value, str):
                problems += matches(json.loads(value), json.loads(actual[key]), f"{where}.detail")
            else:
                problems += matches(value, actual[key], f"{where}.{key}")
        return problems
    if isinstance(example, list) and isinstance(actual, list):
        if len(example) != len(actual):
            return [f"{where}: {len(example)} items, got {len(actual)}: {actual!r}"]
        return [p for i, (e, a) in enumerate(zip(example, actual, strict=True))
                for p in matches(e, a, f"{where}[{i}]")]
    return [] if example == actual else [f"{where}: {example!r} != {actual!r}"]


def test_the_analytics_engine_layout_in_the_document_is_the_code_s() -> None:
    documented = re.findall(r"^\| double(\d+) \| (\w+) \|$", DOC.read_text(), re.M)
    assert [(int(n), name) for n, name in documented] == [
        (i, name) for i, name in enumerate(ROOM_POINT_DOUBLES, start=1)]


def test_the_document_has_examples_of_every_route() -> None:
    routes = {(m, re.sub(r"\?.*", "", p)) for m, p, *_ in examples()}
    for route in [("GET", "/admin/rooms"), ("GET", "/admin/rooms/lobby"),
                  ("GET", "/admin/rooms/lobby/messages"), ("GET", "/admin/rooms/lobby/segments"),
                  ("POST", "/admin/rooms/lobby/archive"), ("POST", "/admin/rooms/lobby/close"),
                  ("POST", "/admin/rooms/lobby/open"), ("POST", "/admin/rooms/lobby/disconnect"),
                  ("POST", "/admin/rooms/lobby/ban"), ("POST", "/admin/rooms/lobby/delete"),
                  ("GET", "/admin/audit")]:
        assert route in routes, route


async def test_every_example_in_docs_admin_md_is_what_the_server_answers(
    service: ServiceBase,
) -> None:
    names = {name: service.room(name) for name in ROOMS}

    def real(text: str) -> str:
        for name, fresh in names.items():
            text = re.sub(rf"\b{name}\b", fresh, text)
        return text

    lobby = names["lobby"]
    async with await service.connect(lobby, "alice") as alice, \
            await service.connect(lobby, "bob") as bob:
        await recv_until(alice, "welcome")
        await recv_until(bob, "welcome")
        for ws, ref, body in [(alice, "m1", "hello"), (alice, "m2", "how are you?"),
                              (bob, "m3", "fine, thanks")]:
            await ws.send(json.dumps({"type": "publish", "id": ref, "body": body}))
            await recv_until(ws, "ack")

        async def directory() -> Any:
            reply = await service.http("GET", f"/admin/rooms?q={lobby}",
                                       {"Authorization": f"Bearer {ADMIN_TOKEN}"})
            return reply.json()["rooms"]

        await eventually(directory, bool)  # the first message's write is done
        checked = 0
        for method, path, headers, status, expected in examples():
            sent = {k: v.replace("<ADMIN_TOKEN>", ADMIN_TOKEN) for k, v in headers.items()}
            reply = await service.http(method, real(path), sent)
            actual = json.loads(json.dumps(reply.json()).replace(lobby, "lobby")
                                .replace(names["nobody"], "nobody"))
            assert reply.status == status, (method, path, reply.text)
            problems = matches(expected, actual)
            assert not problems, (method, path, problems, actual)
            checked += 1
    assert checked >= 12

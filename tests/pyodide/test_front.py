"""The front Worker (src/worker.py) in Pyodide: what it does with settings, headers and failures
that the end-to-end suite cannot set up on workerd, and what it forwards to the room's object.

tests/e2e/test_front.py, test_origins.py and test_guest.py cover the rest of the front through
real sockets on workerd (tokens, room names, subprotocols, the Origin allow-list, guest tokens).
"""

from __future__ import annotations

import base64
import itertools
import json
import time
from typing import Any

import pytest

from rooms.auth import verify_token
from tests.pyodide.conftest import SECRET, Expect, WorldFactory, log_records, take_output, token
from tests.pyodide.harness_client import ORIGIN, HttpResult, World

INTERNAL = {"error": {"code": "internal", "message": "internal error"}}
_addresses = itertools.count(1)


def client_address() -> str:
    """A client address no other test uses: guest-token buckets live as long as the isolate."""
    return f"203.0.113.{next(_addresses)}"


def error_of(result: HttpResult) -> tuple[str, str]:
    """The (code, message) of an error reply, checking its exact shape."""
    assert result.headers["content-type"] == "application/json"
    body = result.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message"}
    return body["error"]["code"], body["error"]["message"]


def unsigned_token(user: str) -> str:
    """A JWT with ``alg: none`` and no signature."""

    def part(value: dict[str, object]) -> str:
        raw = json.dumps(value, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    claims = {"sub": user, "exp": int(time.time()) + 60}
    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


def no_object_was_called(world: World) -> bool:
    return not set(world.stats()) - {"Default.fetch"}


@pytest.mark.parametrize(
    ("label", "make_token", "code"),
    [
        ("missing", lambda: None, "token_missing"),
        ("wrong secret", lambda: token("alice", secret="another-secret-of-sufficient-length!"),
         "token_invalid"),
        ("garbage", lambda: "not.a.token", "token_invalid"),
        ("expired", lambda: token("alice", ttl_s=-60), "token_expired"),
        ("no sub", lambda: token("", name="x"), "token_claims"),
        ("alg none", lambda: unsigned_token("mallory"), "token_invalid"),
    ],
)
def test_auth_failures_are_401_with_the_json_error_shape(
    world: World, label: str, make_token: Any, code: str
) -> None:
    """Refused before any room is touched."""
    result = world.upgrade("lobby", make_token())
    assert result.status == 401, label
    assert result.client is None
    assert error_of(result)[0] == code
    assert "token" not in result.body.lower() or code in result.body  # never echoes a token
    assert no_object_was_called(world)


VALID = f"token={token('alice')}"


@pytest.mark.parametrize(
    ("path", "headers", "status", "code"),
    [
        ("/rooms/bad!name/ws", {"upgrade": "websocket"}, 400, "bad_room_name"),
        (f"/rooms/bad%20name/ws?{VALID}", {"upgrade": "websocket"}, 400, "bad_room_name"),
        (f"/rooms/{'a' * 65}/ws?{VALID}", {"upgrade": "websocket"}, 400, "bad_room_name"),
        (f"/rooms/caf%C3%A9/ws?{VALID}", {"upgrade": "websocket"}, 400, "bad_room_name"),
        ("/rooms/lobby/ws", {}, 426, "upgrade_required"),
        ("/rooms/lobby/ws?since=-1", {"upgrade": "websocket"}, 400, "bad_since"),
        ("/rooms/lobby/other", {}, 404, "not_found"),
        ("/rooms/lobby", {}, 404, "not_found"),
    ],
    ids=["bad!name", "bad%20name", "65-chars", "caf%C3%A9", "no-upgrade", "bad-since",
         "other", "no-ws"],
)
def test_front_errors_have_the_json_error_shape(
    world: World, path: str, headers: dict[str, str], status: int, code: str
) -> None:
    result = world.fetch(path, headers=headers)
    assert (result.status, error_of(result)[0]) == (status, code)


def test_health_answers_without_waking_any_room_and_methods_are_checked(world: World) -> None:
    assert world.fetch("/health").json() == {"status": "ok"}
    assert no_object_was_called(world)
    result = world.fetch("/rooms/lobby/ws", method="POST", headers={"upgrade": "websocket"})
    assert (result.status, result.json()["error"]["code"]) == (405, "method_not_allowed")


def test_the_forwarded_upgrade_carries_the_verified_identity_and_no_credentials(
    world: World,
) -> None:
    """The room trusts what the front sends: every client-sent x-rooms-* header is dropped and
    the token's identity set; the token stays at the front (not in the URL, the subprotocol, or
    any other header), and so do other credentials."""
    client = world.connect(
        "lobby", token("alice", "Alice"), since=3,
        protocols=["rooms.v1", token("bob")],
        headers={"X-Rooms-User-Id": "mallory", "x-rooms-user-name": "Mallory",
                 "X-Rooms-Admin": "1", "Authorization": f"Bearer {token('carol')}",
                 "Cookie": "s=1"},
    )
    (welcome,) = client.frames("welcome")
    assert welcome["user_id"] == "alice"
    assert welcome["presence"] == [{"user_id": "alice", "name": "Alice"}]
    (forwarded,) = world.info("lobby")["requests"]
    assert forwarded["url"] == "https://rooms.example/rooms/lobby/ws?since=3"
    headers = dict(forwarded["headers"])
    assert headers["x-rooms-user-id"] == "alice"
    assert headers["x-rooms-user-name"] == "Alice"
    assert "x-rooms-admin" not in headers
    assert headers["sec-websocket-protocol"] == "rooms.v1"
    assert "authorization" not in headers
    assert "cookie" not in headers
    assert "eyJ" not in json.dumps(forwarded)


def test_missing_jwt_secret_gets_500_server_misconfigured(world_factory: WorldFactory) -> None:
    """Without the secret nothing is served, and the reply says no more than that."""
    world = world_factory(JWT_SECRET=None)
    result = world.upgrade("lobby", token("alice"))
    assert result.status == 500
    assert error_of(result) == ("server_misconfigured", "the server is misconfigured")


def test_weak_secrets_are_refused_and_named_in_the_log_never_quoted(
    world_factory: WorldFactory, expect: Expect
) -> None:
    """A JWT_SECRET under 32 bytes serves nothing; an ADMIN_TOKEN under 32 characters closes
    the admin API only. Each says which setting is wrong in one log line, never its value."""
    weak_secret = world_factory(JWT_SECRET="hunter2-too-short")
    result = weak_secret.upgrade("lobby", token("alice"))
    assert result.status == 500
    assert error_of(result)[0] == "server_misconfigured"
    output = take_output(weak_secret, expect)
    assert {"event": "config_error", "problem": "JWT_SECRET must be at least 32 bytes"} in (
        log_records(output)
    )
    assert "hunter2" not in "".join(output)
    weak_admin = world_factory(ADMIN_TOKEN="letmein-too-short")
    refused = weak_admin.fetch(
        "/admin/rooms", headers=[("authorization", "Bearer letmein-too-short")]
    )
    assert refused.status == 500
    assert error_of(refused)[0] == "server_misconfigured"
    assert weak_admin.upgrade("lobby", token("alice")).status == 101  # rooms still work
    output = take_output(weak_admin, expect)
    assert "letmein" not in "".join(output)
    assert any(r.get("event") == "config_error" for r in log_records(output))


def test_unknown_paths_are_404_json_without_assets(world_factory: WorldFactory) -> None:
    """Without an ASSETS binding, an unknown path is a JSON 404 (with one, tests/e2e)."""
    world = world_factory(ASSETS=None)
    result = world.fetch("/index.html")
    assert result.status == 404
    assert error_of(result)[0] == "not_found"


def test_an_origin_list_admits_exactly_those_origins(world_factory: WorldFactory) -> None:
    """With ALLOWED_ORIGINS set, other origins cannot open rooms, the Worker's own included."""
    world = world_factory(ALLOWED_ORIGINS="https://a.example, https://b.example")

    def upgrade(origin: str) -> HttpResult:
        return world.upgrade("lobby", token("alice"), headers={"Origin": origin})

    denied = upgrade("https://evil.example")
    assert denied.status == 403
    assert error_of(denied)[0] == "origin_not_allowed"
    assert upgrade("https://b.example").status == 101
    assert upgrade(ORIGIN).status == 403


@pytest.mark.parametrize("allowed_origins", [None, "", " , "], ids=["unset", "empty", "blank"])
def test_without_allowed_origins_browsers_connect_only_from_the_workers_own_origin(
    world_factory: WorldFactory, allowed_origins: str | None
) -> None:
    """The safe default on Cloudflare: the Origin must be the one the request came to (the
    chat page the Worker serves); a client that sends no Origin is not a browser and is let be."""
    world = world_factory(ALLOWED_ORIGINS=allowed_origins, GUEST_TOKENS="1")
    address = client_address()

    def upgrade(*origin: str) -> int:
        headers = {"Origin": origin[0]} if origin else {}
        return world.upgrade("lobby", token("alice"), headers=headers).status

    def guest(*origin: str) -> int:
        headers = [("cf-connecting-ip", address), *(("Origin", value) for value in origin)]
        return world.fetch("/auth/guest", method="POST", body='{"name": "Ann"}',
                           headers=headers).status

    assert ORIGIN == "https://rooms.example"  # the URL every request is sent to
    assert (upgrade(ORIGIN), guest(ORIGIN)) == (101, 200)
    assert (upgrade(), guest()) == (101, 200)
    for other in ("https://evil.example", "http://rooms.example", "https://rooms.example:8443",
                  "https://sub.rooms.example", "null"):
        assert (upgrade(other), guest(other)) == (403, 403), other


def test_a_star_in_allowed_origins_admits_any_origin_and_only_alone(
    world_factory: WorldFactory,
) -> None:
    """ALLOWED_ORIGINS="*" is the explicit "any page may connect"; beside origins it is an error
    (500 server_misconfigured), not a guess at which was meant."""
    anyone = world_factory(ALLOWED_ORIGINS=" * ")
    result = anyone.upgrade("lobby", token("alice"), headers={"Origin": "https://evil.example"})
    assert result.status == 101
    mixed = world_factory(ALLOWED_ORIGINS="*, https://a.example")
    result = mixed.upgrade("lobby", token("alice"), headers={"Origin": "https://a.example"})
    assert (result.status, error_of(result)[0]) == (500, "server_misconfigured")


def test_a_failing_room_gets_a_generic_500_and_one_log_line(world: World, expect: Expect) -> None:
    """The room fails during the upgrade (its storage is full): the client gets the generic 500,
    and the log one line naming the handler and the error's type, never its message."""
    world.fail_sql(
        "lobby", "FROM sqlite_master", message="secret detail /srv/app.py line 3"
    )
    result = world.upgrade("lobby", token("alice"))
    assert result.status == 500
    assert result.json() == INTERNAL
    expect.unexpected_errors = 1
    output = take_output(world, expect)
    assert "secret detail" not in "\n".join(output)
    (failure,) = [r for r in log_records(output) if r["event"] == "unexpected_error"]
    assert failure == {"event": "unexpected_error", "handler": "fetch", "error": "JsException",
                       "room": "lobby"}


def test_an_exception_in_the_front_gets_a_generic_500(
    world_factory: WorldFactory, expect: Expect
) -> None:
    """An exception inside Default.fetch (here ROOMS is no binding: ffi.raw_env_binding raises
    TypeError) becomes the generic 500 and a log line without its message."""
    world = world_factory(ROOMS="not a binding")
    result = world.upgrade("lobby", token("alice"))
    assert result.status == 500
    assert result.json() == INTERNAL
    expect.unexpected_errors = 1
    records = log_records(take_output(world, expect))
    assert records[0] == {"event": "unexpected_error", "handler": "fetch", "error": "TypeError",
                          "path": "room"}
    assert records[1]["status"] == 500


def test_each_request_logs_one_json_line_without_the_token(world: World, expect: Expect) -> None:
    """One line per request with status, path kind, room and user; never the token. An
    accepted upgrade gets none by default: its lines are the room's, with LOG_CONNECTIONS=1
    (next test; README.md, "Run it locally")."""
    secret_token = token("alice")
    world.fetch("/health")
    client = world.connect("lobby", secret_token)
    client.publish("m1", "hello")
    client.close()
    world.upgrade("lobby", "not-a-token")
    output = take_output(world, expect)
    assert secret_token not in "\n".join(output)
    records = log_records(output)
    assert [(r["event"], r["status"], r["path"]) for r in records] == [
        ("request", 200, "health"), ("request", 401, "room")]
    assert records[1]["code"] == "token_invalid"
    assert all(isinstance(r["duration_ms"], float) for r in records)
    assert "request_id" not in records[1]  # refused at the front: no upgrade to tie


def test_log_connections_gives_one_line_when_a_connection_opens_and_one_when_it_closes(
    world_factory: WorldFactory, expect: Expect
) -> None:
    """LOG_CONNECTIONS=1: the room's `connect` line, carrying the front's request id and the
    head the socket joined at (it named `since`, so no `join` line of its own), and its
    `disconnect` line; still no line of the front's for the accepted upgrade."""
    world = world_factory(LOG_CONNECTIONS="1")
    client = world.connect("lobby", token("alice"))
    client.close()
    records = log_records(take_output(world, expect))
    assert [r["event"] for r in records] == ["connect", "disconnect"]
    connect, disconnect = records
    assert (connect["room"], connect["user_id"], connect["seq"]) == ("lobby", "alice", 0)
    assert len(connect["request_id"]) == 16
    assert disconnect["conn_id"] == connect["conn_id"]


def test_a_log_connections_value_that_is_no_switch_fails_the_room_loudly(
    world_factory: WorldFactory,
) -> None:
    """As a bad ROOM_LIMITS: the object's construction fails (a 500, and the exception in the
    runtime's log), rather than a deployment running with a setting it did not ask for."""
    world = world_factory(LOG_CONNECTIONS="loud")
    assert world.upgrade("lobby", token("alice")).status == 500
    diag = world.harness.take_diagnostics(world)  # what the fixture would refuse, checked here
    (escaped,) = diag["errors"]
    assert escaped["where"] == "Room.fetch"
    assert "ValueError: expected 1 or 0" in escaped["message"]


def test_guest_tokens_are_off_unless_the_var_turns_them_on(world_factory: WorldFactory) -> None:
    """POST /auth/guest: 404 without the var (a deployment opts in; wrangler.jsonc does, see the
    next test); with GUEST_TOKENS=1 a usable token; a value that is no switch is a 500."""
    off = world_factory(GUEST_TOKENS=None)
    result = off.fetch("/auth/guest", method="POST", body='{"name": "Ann"}')
    assert (result.status, result.json()["error"]["code"]) == (404, "guest_tokens_disabled")
    on = world_factory(GUEST_TOKENS="1")
    result = on.fetch("/auth/guest", method="POST", body='{"name": "Ann"}',
                      headers=[("cf-connecting-ip", client_address())])
    assert result.status == 200
    identity = verify_token(result.json()["token"], SECRET)
    assert identity.name == "Ann"
    assert identity.user_id.startswith("guest-")
    bad = world_factory(GUEST_TOKENS="maybe")
    assert bad.fetch("/auth/guest", method="POST", body="{}").status == 500


def test_the_shipped_vars_let_the_chat_page_sign_in_and_only_from_this_origin(
    world_factory: WorldFactory,
) -> None:
    """With wrangler.jsonc's vars as deployed (plus the JWT_SECRET secret), the chat page served
    by the Worker gets a guest token and opens a room with it; another site's page gets neither."""
    world = world_factory(ADMIN_TOKEN=None, ROOM_LIMITS=None)  # wrangler.jsonc sets neither
    address = client_address()
    page = [("Origin", ORIGIN), ("cf-connecting-ip", address)]
    signed_in = world.fetch("/auth/guest", method="POST", body='{"name": "Ann"}', headers=page)
    assert signed_in.status == 200
    guest_token = signed_in.json()["token"]
    client = world.connect("lobby", None, protocols=["rooms.v1", guest_token],
                           headers={"Origin": ORIGIN})
    (welcome,) = client.frames("welcome")
    assert welcome["user_id"] == signed_in.json()["user_id"]
    elsewhere = [("Origin", "https://evil.example"), ("cf-connecting-ip", address)]
    refused = world.fetch("/auth/guest", method="POST", body='{"name": "Eve"}', headers=elsewhere)
    assert refused.status == 403
    assert world.upgrade("lobby", guest_token, headers={"Origin": "https://evil.example"}) \
        .status == 403

"""The front Worker (`worker.Default`): routing, authentication, forwarding, errors and logs."""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest

from tests.cloudflare.runtime import ORIGIN, SECRET, FakeClient, FakeCloudflare
from tests.cloudflare.support import check_clean, log_records, make_cloudflare, token


def error_of(body: dict[str, Any]) -> tuple[str, str]:
    """The (code, message) of an error body, checking its exact shape."""
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message"}
    return body["error"]["code"], body["error"]["message"]


def test_health_answers_ok_without_waking_any_room(cf: FakeCloudflare) -> None:
    """GET /health is answered by the front alone."""
    result = cf.fetch("/health")
    assert (result.status, result.json()) == (200, {"status": "ok"})
    assert cf.objects == {}


def test_authenticated_upgrade_reaches_the_room_and_returns_its_101(cf: FakeCloudflare) -> None:
    """A valid token opens the socket: the room's 101 carries the client end, then a welcome."""
    result = cf.upgrade("lobby", token("alice", "Alice"))
    assert result.status == 101
    assert result.web_socket is not None
    (welcome,) = FakeClient(cf, result.web_socket).frames("welcome")
    assert (welcome["room"], welcome["user_id"]) == ("lobby", "alice")
    assert cf.room("lobby").constructions == 1


def test_offered_subprotocol_is_echoed_and_a_token_there_is_accepted(cf: FakeCloudflare) -> None:
    """Browsers send the token as a subprotocol; only rooms.v1 comes back in the 101."""
    result = cf.upgrade("lobby", None, subprotocols=["rooms.v1", token("alice")])
    assert result.status == 101
    assert result.headers["sec-websocket-protocol"] == "rooms.v1"


@pytest.mark.parametrize(
    ("make_token", "code"),
    [
        (lambda: None, "token_missing"),
        (lambda: token("alice", ttl_s=-3600), "token_expired"),
        (lambda: mint(SECRET[::-1], {"sub": "alice"}), "token_invalid"),
        (lambda: mint(None, {"sub": "alice"}, algorithm="none"), "token_invalid"),
    ],
    ids=["missing", "expired", "bad-signature", "alg-none"],
)
def test_refused_tokens_get_401_with_a_json_error(cf: FakeCloudflare, make_token: Any,
                                                  code: str) -> None:
    """Missing, expired, forged and unsigned tokens are refused before any room is touched."""
    result = cf.upgrade("lobby", make_token())
    assert result.status == 401
    assert result.headers["content-type"] == "application/json"
    assert error_of(result.json())[0] == code
    assert result.web_socket is None
    assert cf.objects == {}


def mint(secret: str | None, claims: dict[str, Any], algorithm: str = "HS256") -> str:
    claims = {"exp": int(time.time()) + 3600, **claims}
    return jwt.encode(claims, secret, algorithm=algorithm)


@pytest.mark.parametrize("room", ["bad%20name", "a" * 65, "caf%C3%A9"])
def test_bad_room_name_gets_400(cf: FakeCloudflare, room: str) -> None:
    """Room names are 1-64 chars of [A-Za-z0-9._-]."""
    result = cf.upgrade(room, token("alice"))
    assert result.status == 400
    assert error_of(result.json())[0] == "bad_room_name"


def test_client_sent_identity_headers_are_ignored(cf: FakeCloudflare) -> None:
    """Identity comes from the token; x-rooms-* headers from the client never reach the room."""
    client = cf.connect("lobby", token("alice", "Alice"), headers=[
        ("X-Rooms-User-Id", "mallory"), ("x-rooms-user-name", "Mallory"), ("X-Rooms-Admin", "1"),
    ])
    (welcome,) = client.frames("welcome")
    assert welcome["user_id"] == "alice"
    (forwarded,) = cf.room("lobby").requests
    assert forwarded.headers.get("x-rooms-user-id") == "alice"
    assert forwarded.headers.get("x-rooms-user-name") == "Alice"
    assert not forwarded.headers.has("x-rooms-admin")


def test_forwarded_request_carries_no_token(cf: FakeCloudflare) -> None:
    """Credentials stay at the front: not in the forwarded URL, subprotocol or other headers."""
    secret_token = token("alice")
    cf.upgrade("lobby", secret_token, since=3, subprotocols=["rooms.v1", token("bob")],
               headers=[("Authorization", f"Bearer {token('carol')}"), ("Cookie", "s=1")])
    (forwarded,) = cf.room("lobby").requests
    assert forwarded.url == "https://rooms.example/rooms/lobby/ws?since=3"
    assert forwarded.headers.get("sec-websocket-protocol") == "rooms.v1"
    assert not forwarded.headers.has("authorization")
    assert not forwarded.headers.has("cookie")
    assert "eyJ" not in str([list(pair) for pair in forwarded.headers])


def test_missing_jwt_secret_gets_500_server_misconfigured() -> None:
    """Without the secret nothing is served, and the reply says no more than that."""
    cf = make_cloudflare(secret=None)
    result = cf.upgrade("lobby", token("alice"))
    assert result.status == 500
    assert error_of(result.json()) == ("server_misconfigured", "the server is misconfigured")
    check_clean(cf)


def test_unknown_paths_are_served_from_assets(cf: FakeCloudflare) -> None:
    """Paths the front does not own go to the ASSETS binding."""
    result = cf.fetch("/index.html")
    assert (result.status, result.body) == (200, "asset /index.html")
    assert cf.assets is not None
    assert len(cf.assets.requests) == 1


def test_unknown_paths_are_404_json_without_assets() -> None:
    """Without an ASSETS binding, an unknown path is a JSON 404."""
    cf = make_cloudflare(assets=False)
    result = cf.fetch("/index.html")
    assert result.status == 404
    assert error_of(result.json())[0] == "not_found"
    check_clean(cf)


def test_room_paths_other_than_ws_are_404(cf: FakeCloudflare) -> None:
    """/rooms/{room} without /ws is not a page."""
    result = cf.fetch("/rooms/lobby")
    assert result.status == 404
    assert error_of(result.json())[0] == "not_found"


def test_disallowed_origin_gets_403() -> None:
    """With ALLOWED_ORIGINS set, other origins cannot open rooms, the Worker's own included."""
    cf = make_cloudflare(allowed_origins="https://a.example, https://b.example")
    denied = cf.upgrade("lobby", token("alice"), headers=[("Origin", "https://evil.example")])
    allowed = cf.upgrade("lobby", token("alice"), headers=[("Origin", "https://b.example")])
    own = cf.upgrade("lobby", token("alice"), headers=[("Origin", ORIGIN)])
    assert denied.status == 403
    assert error_of(denied.json())[0] == "origin_not_allowed"
    assert allowed.status == 101
    assert own.status == 403
    check_clean(cf)


@pytest.mark.parametrize("allowed_origins", [None, "", " , "], ids=["unset", "empty", "blank"])
def test_without_allowed_origins_browsers_connect_only_from_the_workers_own_origin(
    allowed_origins: str | None,
) -> None:
    """The safe default on Cloudflare: the Origin must be the one the request came to (the
    chat page the Worker serves); a client that sends no Origin is not a browser and is let be."""
    cf = make_cloudflare(allowed_origins=allowed_origins, extra_vars={"GUEST_TOKENS": "1"})

    def upgrade(*origin: str) -> int:
        headers = [("Origin", value) for value in origin]
        return cf.upgrade("lobby", token("alice"), headers=headers).status

    def guest(*origin: str) -> int:
        headers = [("Origin", value) for value in origin]
        return cf.fetch("/auth/guest", method="POST", body='{"name": "Ann"}',
                        headers=[("cf-connecting-ip", "203.0.113.9"), *headers]).status

    assert ORIGIN == "https://rooms.example"  # the URL every fake request is sent to
    assert (upgrade(ORIGIN), guest(ORIGIN)) == (101, 200)
    assert (upgrade(), guest()) == (101, 200)
    for other in ("https://evil.example", "http://rooms.example", "https://rooms.example:8443",
                  "https://sub.rooms.example", "null"):
        assert (upgrade(other), guest(other)) == (403, 403), other
    check_clean(cf)


def test_a_star_in_allowed_origins_admits_any_origin_and_only_alone() -> None:
    """ALLOWED_ORIGINS="*" is the explicit "any page may connect"; beside origins it is an error
    (500 server_misconfigured), not a guess at which was meant."""
    anyone = make_cloudflare(allowed_origins=" * ")
    result = anyone.upgrade("lobby", token("alice"), headers=[("Origin", "https://evil.example")])
    assert result.status == 101
    mixed = make_cloudflare(allowed_origins="*, https://a.example")
    result = mixed.upgrade("lobby", token("alice"), headers=[("Origin", "https://a.example")])
    assert (result.status, error_of(result.json())[0]) == (500, "server_misconfigured")
    for deployment in (anyone, mixed):
        check_clean(deployment)


def test_plain_get_on_a_room_url_gets_426(cf: FakeCloudflare) -> None:
    """A room URL only takes WebSocket upgrades."""
    result = cf.fetch(f"/rooms/lobby/ws?token={token('alice')}")
    assert result.status == 426


def test_failing_room_gets_a_generic_500_and_one_log_line(
    cf: FakeCloudflare, capsys: pytest.CaptureFixture[str]
) -> None:
    """A JS error from the stub (its message holds a traceback) never reaches the client."""
    cf.room("lobby").state.fail_next_accept = RuntimeError("secret detail /srv/app.py line 3")
    result = cf.upgrade("lobby", token("alice"))
    assert result.status == 500
    assert result.json() == {"error": {"code": "internal", "message": "internal error"}}
    output = capsys.readouterr().out
    assert "secret detail" not in output
    (failure,) = [r for r in log_records(output) if r["event"] == "unexpected_error"]
    assert failure == {"event": "unexpected_error", "handler": "fetch", "error": "RuntimeError",
                       "room": "lobby"}


def test_exception_in_the_front_gets_a_generic_500(capsys: pytest.CaptureFixture[str]) -> None:
    """An exception inside Default.fetch becomes the generic 500 and a log line without it."""
    cf = make_cloudflare()
    cf.env.ROOMS = object()  # not a binding: ffi.raw_binding raises TypeError
    result = cf.upgrade("lobby", token("alice"))
    assert result.status == 500
    assert result.json() == {"error": {"code": "internal", "message": "internal error"}}
    records = log_records(capsys.readouterr().out)
    assert records[0] == {"event": "unexpected_error", "handler": "fetch",
                          "error": "TypeError", "path": "room"}
    assert records[1]["status"] == 500
    check_clean(cf)


def test_each_request_logs_one_json_line_without_the_token(
    cf: FakeCloudflare, capsys: pytest.CaptureFixture[str]
) -> None:
    """One line per request with status, path kind, room and user; never the token."""
    secret_token = token("alice")
    cf.fetch("/health")
    cf.upgrade("lobby", secret_token)
    cf.upgrade("lobby", "not-a-token")
    output = capsys.readouterr().out
    assert secret_token not in output
    requests = [r for r in log_records(output) if r["event"] == "request"]
    assert [(r["status"], r["path"]) for r in requests] == [
        (200, "health"), (101, "room"), (401, "room")]
    assert requests[1]["room"] == "lobby"
    assert requests[1]["user_id"] == "alice"
    assert requests[2]["code"] == "token_invalid"
    assert all(isinstance(r["duration_ms"], float) for r in requests)


def test_guest_tokens_are_off_unless_the_var_turns_them_on() -> None:
    """POST /auth/guest: 404 without the var (a deployment opts in; wrangler.jsonc does, see
    the next test); with GUEST_TOKENS=1 a usable token; a value that is no switch is a 500."""
    from rooms.auth import verify_token
    from tests.cloudflare.runtime import SECRET

    off = make_cloudflare()
    result = off.fetch("/auth/guest", method="POST", body='{"name": "Ann"}')
    assert (result.status, result.json()["error"]["code"]) == (404, "guest_tokens_disabled")
    on = make_cloudflare(extra_vars={"GUEST_TOKENS": "1"})
    result = on.fetch("/auth/guest", method="POST", body='{"name": "Ann"}',
                      headers=[("cf-connecting-ip", "203.0.113.9")])
    assert result.status == 200
    identity = verify_token(result.json()["token"], SECRET)
    assert identity.name == "Ann"
    assert identity.user_id.startswith("guest-")
    bad = make_cloudflare(extra_vars={"GUEST_TOKENS": "maybe"})
    assert bad.fetch("/auth/guest", method="POST", body="{}").status == 500
    for deployment in (off, on, bad):
        check_clean(deployment)


def test_the_shipped_vars_let_the_chat_page_sign_in_and_only_from_this_origin() -> None:
    """With wrangler.jsonc's vars as deployed (plus the JWT_SECRET secret), the chat page served
    by the Worker gets a guest token and opens a room with it; another site's page gets neither."""
    from workerd.wrangler import wrangler_config

    shipped = {name: str(value) for name, value in wrangler_config()["vars"].items()}
    cf = make_cloudflare(allowed_origins=None, extra_vars=shipped)
    page = [("Origin", ORIGIN), ("cf-connecting-ip", "203.0.113.9")]
    signed_in = cf.fetch("/auth/guest", method="POST", body='{"name": "Ann"}', headers=page)
    assert signed_in.status == 200
    guest_token = signed_in.json()["token"]
    opened = cf.upgrade("lobby", None, subprotocols=["rooms.v1", guest_token], headers=page[:1])
    assert opened.status == 101
    (welcome,) = FakeClient(cf, opened.web_socket).frames("welcome")
    assert welcome["user_id"] == signed_in.json()["user_id"]
    elsewhere = [("Origin", "https://evil.example"), ("cf-connecting-ip", "203.0.113.9")]
    refused = cf.fetch("/auth/guest", method="POST", body='{"name": "Eve"}', headers=elsewhere)
    assert refused.status == 403
    assert cf.upgrade("lobby", guest_token, headers=elsewhere[:1]).status == 403
    check_clean(cf)

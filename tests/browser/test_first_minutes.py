"""What a new user meets in the first minutes (issue: the chat page and the first ten minutes).

Two windows of one browser are two people; sending fast never gets the page disconnected; a
room that refuses the page says why, stops retrying, and disables what cannot work.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any

import aiohttp
import jwt
from playwright.async_api import Page, WebSocket, WebSocketRoute, expect

from rooms.auth import mint_token
from rooms.limits import Limits
from tests.browser.conftest import (
    BROWSER_TEST,
    ChatServer,
    Person,
    PersonFactory,
    Servers,
    artifact_path,
)
from tests.browser.test_chat import bodies, seqs
from tests.conftest import timeout
from tests.local.conftest import SECRET

pytestmark = BROWSER_TEST
ADMIN = "browser-tests-admin-token-0123456789abcdef"
OTHER_SECRET = "a-secret-this-server-never-saw-0123456789"


async def second_window(person: Person) -> Person:
    """Another window of the same browser profile: shared localStorage, its own tab storage."""
    page = await person.context.new_page()
    window = Person(person.context, page, person.errors)  # its errors fail the test too
    page.on("pageerror", lambda exc: person.errors.append(str(exc)))
    page.on("websocket", lambda ws: window.sockets.append(ws.url))
    return window


def count_frames(page: Page) -> dict[str, int]:
    """Frames the page sends, by type."""
    sent: dict[str, int] = {}

    def on_socket(ws: WebSocket) -> None:
        def on_frame(payload: str | bytes) -> None:
            kind = json.loads(payload).get("type", "?") if isinstance(payload, str) else "binary"
            sent[kind] = sent.get(kind, 0) + 1

        ws.on("framesent", on_frame)

    page.on("websocket", on_socket)
    return sent


async def test_a_second_window_is_a_second_person_and_a_reload_is_the_same(
    servers: Servers, people: PersonFactory
) -> None:
    """The README's "two browser windows: pick a name and chat" in one browser profile."""
    server = await servers.start()
    ada = await people(viewport={"width": 1000, "height": 640})
    await ada.join(server.base, "lobby", "Ada")
    bob = await second_window(ada)
    await bob.page.set_viewport_size({"width": 1000, "height": 640})
    await bob.page.goto(f"http://{server.base}/#room=lobby")
    # Not joined as Ada: the join form, the last name typed suggested.
    await expect(bob.page.locator("#join")).to_be_visible()
    await expect(bob.page.locator("#join-name")).to_have_value("Ada")
    await bob.page.fill("#join-name", "Bob")
    await bob.page.press("#join-name", "Enter")
    await bob.online()
    for person, you in ((ada, "Ada"), (bob, "Bob")):
        await expect(person.page.locator("#people-count")).to_have_text("2 here")
        await expect(person.page.locator("#people-list li.me")).to_have_text(f"{you} (you)")
    await ada.say("Hello from the first window")
    await bob.say("And hello from the second")
    for person in (ada, bob):
        await person.wait_for_count(2)
    assert await ada.page.locator("#log li.msg.mine .body").all_text_contents() == [
        "Hello from the first window"]
    assert await bob.page.locator("#log li.msg.mine .body").all_text_contents() == [
        "And hello from the second"]
    await bob.page.fill("#body", "typing…")
    await expect(ada.page.locator("#typing")).to_have_text("Bob is typing…")
    await bob.page.screenshot(path=str(artifact_path("two-windows.png")))

    bob_id = await bob.page.evaluate("JSON.parse(sessionStorage['rooms.identity']).user_id")
    ada_id = await ada.page.evaluate("JSON.parse(sessionStorage['rooms.identity']).user_id")
    assert bob_id != ada_id
    await bob.page.reload()  # a reload is the same person, straight back into the room
    await bob.online()
    assert await bob.page.locator("#join").is_hidden()
    assert await bob.page.evaluate(
        "JSON.parse(sessionStorage['rooms.identity']).user_id") == bob_id
    await expect(bob.page.locator("#people-list li.me")).to_have_text("Bob (you)")
    await expect(ada.page.locator("#people-count")).to_have_text("2 here")


async def test_sending_fast_never_gets_the_page_disconnected(
    servers: Servers, people: PersonFactory
) -> None:
    """60 messages in about 3 s under tight limits: the page paces itself and resends what the
    room refused for rate, so the room never closes it for refused frames (1008)."""
    limits = Limits(messages_per_second=5, burst=5, max_strikes=3, signals_per_second=1,
                    signal_burst=2)
    server = await servers.start(limits=limits)
    ada, bob = await people(), await people()
    sent = count_frames(ada.page)
    await ada.join(server.base, "fast", "Ada")
    await bob.join(server.base, "fast", "Bob")
    await ada.page.evaluate(
        """() => {
            window.outboxStates = new Set();
            new MutationObserver(() => {
                for (const li of document.querySelectorAll("#outbox li")) {
                    window.outboxStates.add(li.dataset.state);
                }
            }).observe(document.querySelector("#outbox"), {childList: true, subtree: true});
        }"""
    )
    started = time.monotonic()
    # Typed as a person would: every keystroke is an input event (typing signals).
    await ada.page.evaluate(
        """(n) => {
            window.sentCount = 0;
            const box = document.querySelector("#body");
            const timer = setInterval(() => {
                for (const ch of `fast ${window.sentCount}`) {
                    box.value += ch;
                    box.dispatchEvent(new Event("input", {bubbles: true}));
                }
                document.querySelector("#composer").requestSubmit();
                if (++window.sentCount >= n) clearInterval(timer);
            }, 50);
        }""",
        60,
    )
    retrying = ada.page.locator('#outbox li[data-state="retrying"]').first
    await expect(retrying).to_be_visible()
    await ada.page.evaluate(  # the outbox is redrawn often: find and scroll in one step
        "document.querySelector('#outbox li[data-state=retrying]')"
        "?.scrollIntoView({block: 'center'})")
    await ada.page.screenshot(path=str(artifact_path("rate-limited-resend.png")))
    await expect(retrying).to_contain_text("Slowing down")
    # At 5 a second the room takes about 12 s to store them all.
    await expect(ada.page.locator("#outbox li")).to_have_count(0, timeout=timeout(60) * 1000)
    elapsed = time.monotonic() - started
    expected = [f"fast {i}" for i in range(60)]
    for person in (ada, bob):
        log = await person.wait_for_count(60)
        assert bodies(log) == expected
        assert seqs(log) == list(range(1, 61))
    assert len(ada.sockets) == 1  # never disconnected
    assert await ada.page.locator("#notice").is_hidden()
    assert "retrying" in await ada.page.evaluate("[...window.outboxStates]")
    # Typing signals: at most one a second whatever the typing rate (plus one in flight).
    assert sent.get("signal", 0) <= elapsed + 2, (sent, elapsed)
    assert sent.get("signal", 0) >= 1


async def test_a_policy_close_says_so_and_the_notice_goes_after_the_reconnect(
    servers: Servers, people: PersonFactory
) -> None:
    server = await servers.start()
    ada = await people()
    routes: list[WebSocketRoute] = []

    def through(route: WebSocketRoute) -> None:
        route.connect_to_server()  # frames pass through untouched
        routes.append(route)

    await ada.page.route_web_socket("**/rooms/**", through)
    await ada.join(server.base, "policy", "Ada")
    await routes[0].close(code=1008, reason="too many bad frames")
    # The notice shows while the page is away; after the reconnect it is gone.
    await ada.page.wait_for_function("document.querySelector('#notice').dataset.code === 'policy'")
    await expect(ada.page.locator("#status")).to_have_attribute("data-state", "online")
    assert len(routes) == 2
    await expect(ada.page.locator("#notice")).to_be_hidden()


async def test_a_full_room_says_so_stops_retrying_and_disables_the_composer(
    servers: Servers, people: PersonFactory
) -> None:
    server = await servers.start(limits=Limits(max_members=1))
    ada = await people()
    await ada.join(server.base, "full", "Ada")
    bob = await people(viewport={"width": 1000, "height": 560})
    await bob.page.goto(f"http://{server.base}/#room=full")
    await bob.page.fill("#join-name", "Bob")
    await bob.page.press("#join-name", "Enter")
    await expect(bob.page.locator("#status")).to_have_attribute("data-state", "refused")
    notice = bob.page.locator("#notice")
    await expect(notice).to_contain_text("This room is full")
    await expect(notice).to_contain_text("(room_full)")
    await expect(bob.page.locator("#status-text")).to_have_text("Not admitted")
    await expect(bob.page.locator("#body")).to_be_disabled()
    await expect(bob.page.locator("#composer button[type=submit]")).to_be_disabled()
    await expect(bob.page.locator("#people-count")).to_have_text("Not connected")
    await expect(bob.page.locator("#people-list li")).to_have_count(0)
    await bob.page.screenshot(path=str(artifact_path("refused-room-full.png")))
    await asyncio.sleep(3)  # a retry would come within 0.5 s: none comes
    assert len(bob.sockets) == 1
    await ada.page.click("#leave")
    await bob.page.get_by_role("button", name="Try again").click()
    await bob.online()
    await expect(bob.page.locator("#notice")).to_be_hidden()
    await expect(bob.page.locator("#body")).to_be_enabled()
    await expect(bob.page.locator("#people-count")).to_have_text("1 here")


async def test_a_token_signed_with_another_secret_is_refused_with_the_reason(
    chat_server: ChatServer, people: PersonFactory
) -> None:
    """On the local runtime and in the real workerd (the pre-check through the Worker)."""
    eve = await people(viewport={"width": 1000, "height": 560})
    token = mint_token(OTHER_SECRET, "eve", "Eve")
    room = chat_server.room("signed")
    await eve.page.goto(f"http://{chat_server.base}/#room={room}&token={token}")
    await expect(eve.page.locator("#status")).to_have_attribute("data-state", "refused")
    await expect(eve.page.locator("#notice")).to_contain_text("not issued by this server")
    await expect(eve.page.locator("#notice")).to_contain_text("(token_invalid)")
    await expect(eve.page.locator("#body")).to_be_disabled()
    await eve.page.screenshot(path=str(chat_server.artifact("refused-token.png")))
    await asyncio.sleep(3)
    assert len(eve.sockets) <= 2  # the first try and one with a renewed token, then no more


async def test_an_expired_guest_token_is_renewed_by_itself_for_the_same_user(
    servers: Servers, people: PersonFactory
) -> None:
    """The page believes its token good, the server finds it expired: the pre-check says
    `token_expired`, the page renews it (same user id) and joins, with no word to the user."""
    server = await servers.start()
    ada = await people()
    now = int(time.time())
    user_id = "guest-0123456789abcdef"
    claims: dict[str, Any] = {"sub": user_id, "name": "Ada", "exp": now - 60, "guest": True,
                              "guest_since": now - 120}
    stale = {"token": jwt.encode(claims, SECRET, algorithm="HS256"), "user_id": user_id,
             "name": "Ada", "expires_ms": (now + 3600) * 1000, "source": "endpoint"}
    await ada.page.goto(f"http://{server.base}/")
    await ada.page.evaluate("i => sessionStorage.setItem('rooms.identity', JSON.stringify(i))",
                            stale)
    await ada.page.goto(f"http://{server.base}/#room=renew")
    await ada.page.reload()
    await ada.online()
    assert await ada.page.evaluate(
        "JSON.parse(sessionStorage['rooms.identity']).user_id") == user_id
    await expect(ada.page.locator("#people-list li.me")).to_have_text("Ada (you)")
    assert await ada.page.locator("#notice").is_hidden()
    assert len(ada.sockets) == 2


async def test_kicked_and_offline_pages_show_nobody_as_present(
    servers: Servers, people: PersonFactory
) -> None:
    server = await servers.start(admin_token=ADMIN)
    ada, bob = await people(viewport={"width": 1000, "height": 560}), await people()
    await ada.join(server.base, "kick", "Ada")
    await bob.join(server.base, "kick", "Bob")
    await expect(ada.page.locator("#people-count")).to_have_text("2 here")
    user_id = await ada.page.evaluate("JSON.parse(sessionStorage['rooms.identity']).user_id")
    async with aiohttp.ClientSession() as http, http.post(
        f"http://{server.base}/admin/rooms/kick/disconnect",
        params={"user_id": user_id},
        headers={"Authorization": f"Bearer {ADMIN}"},
    ) as resp:
        assert resp.status == 200
    await expect(ada.page.locator("#status")).to_have_attribute("data-state", "stopped")
    await expect(ada.page.locator("#people-count")).to_have_text("Not connected")
    await expect(ada.page.locator("#people-list li")).to_have_count(0)
    await expect(ada.page.locator("#body")).to_be_disabled()
    await ada.page.screenshot(path=str(artifact_path("kicked.png")))
    await ada.page.get_by_role("button", name="Reconnect").click()
    await ada.online()
    await expect(ada.page.locator("#people-count")).to_have_text("2 here")

    port = server.port  # the server goes away: offline, nobody shown as present
    await servers.stop(server)
    await expect(ada.page.locator("#status")).to_have_attribute("data-state", "waiting")
    await expect(ada.page.locator("#people-count")).to_have_text("Not connected")
    await expect(ada.page.locator("#people-list li")).to_have_count(0)
    await expect(ada.page.locator("#body")).to_be_enabled()  # typed messages wait in the outbox
    await servers.start(server.settings, port)
    await ada.online()
    await expect(ada.page.locator("#people-count")).to_have_text(re.compile(r"[12] here"))

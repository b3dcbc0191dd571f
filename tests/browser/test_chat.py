"""The chat page in a real browser against the local runtime: order, reload, reconnects, safety."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest_asyncio
from playwright.async_api import expect

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
from tests.browser.proxy import CuttableProxy
from tests.local.conftest import SECRET, RunningServer, recv_json, recv_until

pytestmark = BROWSER_TEST
ADMIN = "browser-tests-admin-token-0123456789abcdef"


async def seed(server: RunningServer, room: str, count: int, user: str = "seeder") -> None:
    """Publish ``count`` messages from a plain WebSocket client."""
    async with await server.connect(room, user) as ws:
        await recv_until(ws, "welcome")
        for i in range(count):
            await ws.send(json.dumps({"type": "publish", "id": f"s{i}", "body": f"seed {i}"}))
            await recv_until(ws, "ack")


async def stored(server: RunningServer, room: str) -> list[str]:
    """Every body the room holds, in seq order (a fresh socket replaying from 0)."""
    async with await server.connect(room, "auditor") as ws:
        welcome = await recv_until(ws, "welcome")
        bodies = []
        while len(bodies) < welcome["head"]:
            frame = await recv_json(ws)
            if frame["type"] == "message":
                assert frame["seq"] == len(bodies) + 1
                bodies.append(frame["body"])
        return bodies


async def start_flow(person: Person, count: int, every_ms: int = 40) -> None:
    """The page itself types and sends ``count`` messages, one every ``every_ms``."""
    await person.page.evaluate(
        """([n, every]) => {
            window.sentCount = 0;
            const timer = setInterval(() => {
                document.querySelector("#body").value = `flow ${window.sentCount}`;
                document.querySelector("#composer").requestSubmit();
                if (++window.sentCount >= n) clearInterval(timer);
            }, every);
        }""",
        [count, every_ms],
    )


async def flow_sent(person: Person, at_least: int) -> None:
    await person.page.wait_for_function("n => window.sentCount >= n", arg=at_least)


def seqs(log: list[tuple[int, str]]) -> list[int]:
    return [seq for seq, _ in log]


def bodies(log: list[tuple[int, str]]) -> list[str]:
    return [body for _, body in log]


async def test_two_people_see_each_others_messages_in_the_same_order(
    chat_server: ChatServer, people: PersonFactory
) -> None:
    """Two contexts, interleaved sends: one order, gapless seqs, own messages marked, typing.

    On the local runtime and in the real workerd."""
    room = chat_server.room("lobby")
    ada = await people(viewport={"width": 1100, "height": 720})
    bob = await people()
    await ada.join(chat_server.base, room, "Ada")
    await bob.join(chat_server.base, room, "Bob")
    await expect(ada.page.locator("#people-list li")).to_have_text(["Ada (you)", "Bob"])
    await expect(bob.page.locator("#people-count")).to_have_text("2 here")

    await bob.page.fill("#body", "Hi")  # typing is an ephemeral signal to the others
    await expect(ada.page.locator("#typing")).to_have_text("Bob is typing…")
    await expect(bob.page.locator("#typing")).to_have_text("")

    async def chat(person: Person, who: str) -> None:
        for i in range(5):
            await person.say(f"{who} {i}")

    await asyncio.gather(chat(ada, "ada"), chat(bob, "bob"))
    seen_by_ada = await ada.wait_for_count(10)
    seen_by_bob = await bob.wait_for_count(10)
    assert seen_by_ada == seen_by_bob
    assert seqs(seen_by_ada) == list(range(1, 11))
    assert sorted(bodies(seen_by_ada)) == sorted(
        [f"ada {i}" for i in range(5)] + [f"bob {i}" for i in range(5)]
    )
    assert [b for b in bodies(seen_by_ada) if b.startswith("ada")] == [f"ada {i}" for i in range(5)]
    mine = await ada.page.locator("#log li.msg.mine .body").all_text_contents()
    assert mine == [f"ada {i}" for i in range(5)]
    theirs = await bob.page.locator("#log li.msg.mine .body").all_text_contents()
    assert theirs == [f"bob {i}" for i in range(5)]
    await ada.outbox_empty()
    await expect(ada.page.locator("#typing")).to_have_text("")  # Bob's message ends his typing

    await bob.page.fill("#body", "Same order on both screens")
    await expect(ada.page.locator("#typing")).to_have_text("Bob is typing…")
    await ada.page.fill("#body", "Looks good")
    await ada.page.screenshot(path=str(chat_server.artifact("chat-desktop.png")))

    await bob.page.click("#leave")  # Bob's only socket goes: Ada's page applies the `leave`
    await expect(ada.page.locator("#people-list li")).to_have_text(["Ada (you)"])
    await expect(ada.page.locator("#people-count")).to_have_text("1 here")
    await expect(ada.page.locator("#typing")).to_have_text("")  # who leaves stops typing


async def test_reload_keeps_the_history_and_continues_at_the_right_seq(
    servers: Servers, people: PersonFactory
) -> None:
    """History pages back to seq 1; after a reload the same user resumes with no gap."""
    server = await servers.start()
    await seed(server, "hist", 75)
    ada = await people()
    await ada.join(server.base, "hist", "Ada")
    newest = await ada.wait_for_count(50)  # the first page: the newest 50
    assert seqs(newest) == list(range(26, 76))
    await ada.page.eval_on_selector("#scroller", "e => e.scrollTop = 0")  # scroll back
    everything = await ada.wait_for_count(75)
    assert everything == [(i, f"seed {i - 1}") for i in range(1, 76)]
    await expect(ada.page.locator("#older")).to_have_text("This is the beginning of #hist")
    await ada.say("before reload")
    await ada.wait_for_count(76)

    await ada.page.reload()
    await ada.online()
    assert await ada.page.locator("#join").is_hidden()  # the link and the identity were kept
    after = await ada.wait_for_count(50)
    assert seqs(after) == list(range(27, 77))
    assert await ada.page.locator('#log li[data-seq="76"]').get_attribute("class") == "msg mine"

    await seed(server, "hist", 1, user="bob")  # seq 77 arrives live
    await ada.say("after reload")  # seq 78
    await ada.wait_for_count(52)
    await ada.page.eval_on_selector("#scroller", "e => e.scrollTop = 0")
    log = await ada.wait_for_count(78)
    assert seqs(log) == list(range(1, 79))
    assert bodies(log)[-3:] == ["before reload", "seed 0", "after reload"]
    await ada.outbox_empty()


async def test_server_restart_while_messages_flow_loses_and_doubles_nothing(
    servers: Servers, people: PersonFactory
) -> None:
    """Stop the server mid-flow, send while it is down, restart it on the same port and data.

    The page shows the outage, keeps its unsent messages, reconnects with backoff, resumes from
    its last seq and retransmits under the same ids: every message exactly once, in order.
    """
    server = await servers.start()
    ada, bob = await people(), await people()
    await ada.join(server.base, "flow", "Ada")
    await bob.join(server.base, "flow", "Bob")
    total = 40
    await start_flow(ada, total)
    await flow_sent(ada, 10)
    port = server.port
    await servers.stop(server)  # sockets get 1001 "going away"
    await expect(ada.page.locator("#status")).to_have_attribute("data-state", "waiting")
    await expect(ada.page.locator("#status-text")).to_contain_text("retrying in")
    await expect(ada.page.locator('#outbox li[data-state="offline"]').first).to_be_visible()
    await flow_sent(ada, 25)  # still typing while the server is gone
    server = await servers.start(server.settings, port)
    await flow_sent(ada, total)
    await ada.outbox_empty()
    expected = [f"flow {i}" for i in range(total)]
    for person in (ada, bob):
        await person.online()
        log = await person.wait_for_count(total)
        assert bodies(log) == expected
        assert seqs(log) == list(range(1, total + 1))
        # Joined with a hello, then resumed from the last seq seen before the outage.
        first, *resumes = person.since_values()
        assert first is None
        assert resumes
        assert all(since is not None and 0 < since < total for since in resumes)
    assert await stored(server, "flow") == expected


async def test_lost_acks_and_a_cut_connection_deliver_pending_messages_once(
    servers: Servers, people: PersonFactory
) -> None:
    """The room stores messages whose acks never arrive, then the connection is reset.

    After the reconnect the page gets them back in the replay and its retransmits are answered
    as duplicates: nothing is stored or shown twice.
    """
    server = await servers.start()
    proxy = CuttableProxy(server.port)
    await proxy.start()
    try:
        ada, bob = await people(), await people()
        await ada.join(proxy.base, "cut", "Ada")
        await bob.join(server.base, "cut", "Bob")
        for i in range(3):
            await ada.say(f"before {i}")
        await ada.wait_for_count(3)

        proxy.hold_replies()  # from here the room hears Ada, but Ada hears nothing
        for i in range(4):
            await ada.say(f"unacked {i}")
        # The first is stored and broadcast but its ack is lost; the others wait behind it.
        assert bodies(await bob.wait_for_count(4))[-1] == "unacked 0"
        assert await ada.page.locator("#outbox li").count() == 4
        proxy.block_sockets()
        await expect(ada.page.locator("#status")).to_have_attribute("data-state", "waiting")
        await ada.say("while cut")
        await asyncio.sleep(0.5)
        proxy.restore()
        await ada.page.click("#retry")  # "Retry now" skips the rest of the backoff
        await ada.online()
        await ada.outbox_empty()
        expected = [f"before {i}" for i in range(3)] + [f"unacked {i}" for i in range(4)]
        expected.append("while cut")
        for person in (ada, bob):
            log = await person.wait_for_count(8)
            assert bodies(log) == expected
            assert seqs(log) == list(range(1, 9))
        assert await stored(server, "cut") == expected
        assert ada.since_values()[0] is None
        assert set(ada.since_values()[1:]) == {3}  # the last seq Ada had seen before the cut
    finally:
        await proxy.close()


async def test_unsent_messages_survive_a_reload_and_are_delivered_once(
    servers: Servers, people: PersonFactory
) -> None:
    """Typed while the socket is blocked (one already stored, its ack lost), then reloaded:
    the page still holds them and delivers each exactly once when the socket comes back."""
    server = await servers.start()
    proxy = CuttableProxy(server.port)
    await proxy.start()
    try:
        ada = await people()
        await ada.join(proxy.base, "outbox", "Ada")
        await ada.say("first")
        await ada.wait_for_count(1)
        proxy.hold_replies()
        await ada.say("stored, ack lost")
        await expect(ada.page.locator("#outbox li")).to_have_count(1)
        proxy.block_sockets()
        await ada.say("typed while blocked")
        await expect(ada.page.locator('#outbox li[data-state="offline"]')).to_have_count(2)
        await ada.page.reload()  # the page loads (plain HTTP passes), its socket cannot
        await expect(ada.page.locator('#outbox li[data-state="offline"]')).to_have_count(2)
        # The room would admit Ada (its pre-check says so): an outage, retried, not a refusal.
        await expect(ada.page.locator("#status-text")).to_contain_text("retrying in")
        assert await ada.page.locator("#notice").is_hidden()
        await ada.page.screenshot(path=str(artifact_path("chat-offline.png")))
        proxy.restore()
        # "Retry now" may already be hidden again if the backoff timer fired first: trigger
        # the same handler without racing its visibility.
        await ada.page.evaluate("document.querySelector('#retry').click()")
        await ada.online()
        await ada.outbox_empty()
        log = await ada.wait_for_count(3)
        assert bodies(log) == ["first", "stored, ack lost", "typed while blocked"]
        assert seqs(log) == [1, 2, 3]
        assert await stored(server, "outbox") == bodies(log)
    finally:
        await proxy.close()


async def test_a_room_younger_than_the_page_starts_the_view_over(
    servers: Servers, people: PersonFactory, tmp_path: Path
) -> None:
    """The server comes back with older storage (here: none): the page's `since` is ahead of
    the room's head. It starts over from the room's view instead of ignoring new seqs."""
    server = await servers.start()
    ada = await people()
    await ada.join(server.base, "reset", "Ada")
    for i in range(3):
        await ada.say(f"old {i}")
    await ada.wait_for_count(3)
    port = server.port
    await servers.stop(server)
    server = await servers.start(replace(server.settings, data_dir=tmp_path / "fresh"), port)
    await seed(server, "reset", 1, user="bob")
    await ada.online()
    assert await ada.wait_for_count(1) == [(1, "seed 0")]
    await ada.say("new")
    assert await ada.wait_for_count(2) == [(1, "seed 0"), (2, "new")]


async def test_backoff_grows_exponentially_with_jitter_and_a_cap(
    servers: Servers, people: PersonFactory
) -> None:
    server = await servers.start()
    ada = await people()
    await ada.page.goto(f"http://{server.base}/")
    delays = await ada.page.evaluate(
        """async () => {
            const { backoffDelay } = await import("/js/room.js");
            return [0, 1, 2, 3, 10, 30].map((n) => [0, 1].map((r) => backoffDelay(n, () => r)));
        }"""
    )
    assert delays == [[250, 500], [500, 1000], [1000, 2000], [2000, 4000], [15000, 30000],
                      [15000, 30000]]


async def test_message_bodies_and_names_are_text_never_html(
    servers: Servers, people: PersonFactory
) -> None:
    server = await servers.start()
    payload = (
        '<img src=x onerror="window.pwned=1"><script>window.pwned=2</script>'
        "<b>bold</b> &amp; \"quotes\""
    )
    eve, bob = await people(), await people()
    await eve.join(server.base, "safe", "<i>Eve</i>")
    await bob.join(server.base, "safe", "Bob")
    await eve.say(payload)
    for person in (eve, bob):
        body = person.page.locator("#log li.msg .body").last
        await expect(body).to_have_text(payload)
        assert await body.evaluate("e => e.children.length") == 0
        assert await person.page.locator("#log li.msg .who").last.text_content() in (
            "<i>Eve</i>", "<i>Eve</i> (you)")
        assert await person.page.evaluate("window.pwned") is None
    await expect(bob.page.locator("#people-list li:not(.me)")).to_have_text("<i>Eve</i>")


async def test_room_closed_is_a_visible_failure_that_can_be_retried(
    servers: Servers, people: PersonFactory
) -> None:
    server = await servers.start(admin_token=ADMIN)
    ada = await people()
    await ada.join(server.base, "shut", "Ada")

    async def admin(action: str) -> None:
        async with aiohttp.ClientSession() as http, http.post(
            f"http://{server.base}/admin/rooms/shut/{action}",
            headers={"Authorization": f"Bearer {ADMIN}"},
        ) as resp:
            assert resp.status == 200

    await admin("close")
    await ada.say("anyone?")
    failed = ada.page.locator('#outbox li[data-state="failed"]')
    await expect(failed).to_contain_text("Not sent: the room is closed to new messages.")
    await admin("open")
    await failed.get_by_role("button", name="Retry").click()
    await ada.outbox_empty()
    assert await ada.wait_for_count(1) == [(1, "anyone?")]


async def test_rate_limited_messages_are_retried_in_order(
    servers: Servers, people: PersonFactory
) -> None:
    server = await servers.start(limits=Limits(messages_per_second=4, burst=2))
    """Over the room's rate the page slows down and says so; nothing is lost or reordered."""
    ada = await people()
    await ada.join(server.base, "slow", "Ada")
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
    for i in range(8):
        await ada.say(f"quick {i}")
    await ada.outbox_empty()
    assert bodies(await ada.wait_for_count(8)) == [f"quick {i}" for i in range(8)]
    assert "retrying" in await ada.page.evaluate("[...window.outboxStates]")


async def test_an_operator_disconnect_stops_reconnecting_until_asked(
    servers: Servers, people: PersonFactory
) -> None:
    server = await servers.start(admin_token=ADMIN)
    ada = await people()
    await ada.join(server.base, "kick", "Ada")
    user_id = await ada.page.evaluate("JSON.parse(sessionStorage['rooms.identity']).user_id")
    async with aiohttp.ClientSession() as http, http.post(
        f"http://{server.base}/admin/rooms/kick/disconnect",
        params={"user_id": user_id},
        headers={"Authorization": f"Bearer {ADMIN}"},
    ) as resp:
        assert resp.status == 200
    await expect(ada.page.locator("#status")).to_have_attribute("data-state", "stopped")
    await expect(ada.page.locator("#notice")).to_contain_text("An operator disconnected you")
    await ada.page.get_by_role("button", name="Reconnect").click()
    await ada.online()


@pytest_asyncio.fixture(loop_scope="session")
async def no_guests(servers: Servers) -> AsyncIterator[RunningServer]:
    yield await servers.start(guest_tokens=False)


async def test_without_guest_tokens_the_page_says_so_and_a_link_token_works(
    no_guests: RunningServer, people: PersonFactory
) -> None:
    """Deployments that issue tokens themselves pass one in; the page never keeps it in the URL."""
    ada = await people()
    await ada.page.goto(f"http://{no_guests.base}/#room=private")
    await ada.page.fill("#join-name", "Ada")
    await ada.page.press("#join-name", "Enter")
    await expect(ada.page.locator("#notice")).to_contain_text("hands out no guest tokens")
    await expect(ada.page.locator("#status")).to_have_attribute("data-state", "stopped")

    token = mint_token(SECRET, "alice", "Alice")
    await ada.page.goto(f"http://{no_guests.base}/#room=private&token={token}")
    await ada.page.reload()  # a new hash alone does not reload the page
    await ada.online()
    await expect(ada.page.locator("#people-list li")).to_have_text(["Alice (you)"])
    assert "token" not in ada.page.url
    assert re.search(r"#room=private$", ada.page.url)


async def test_phone_layout(servers: Servers, people: PersonFactory) -> None:
    """Readable on a phone: one column, no sideways scrolling; screenshot saved."""
    server = await servers.start()
    await seed(server, "phone", 3, user="sam")
    pat = await people(viewport={"width": 390, "height": 760}, is_mobile=True, has_touch=True,
                       device_scale_factor=2)
    await pat.join(server.base, "phone", "Pat")
    await pat.wait_for_count(3)
    await pat.say("A longer message from a phone, to see how bubbles wrap on a narrow screen.")
    await pat.wait_for_count(4)
    await pat.page.fill("#body", "typing on a phone")
    width = await pat.page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390
    await pat.page.screenshot(path=str(artifact_path("chat-phone.png")))

"""The operator's console (public/console/) in Debian's chromium against the local runtime:
sign-in and its states, the live overview, the rooms table over 10,000 rooms, a room's page and
every action with its confirmation, text-only rendering. Screenshots go to artifacts/."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
import uuid

import websockets
from playwright.async_api import Page, expect

from rooms.auth import mint_token
from rooms.protocol import CloseCode
from tests.browser.conftest import BROWSER_TEST, PersonFactory, Servers, artifact_path
from tests.local.conftest import SECRET, RunningServer, recv_until
from tests.workerd_service import ADMIN_TOKEN, Profile, WorkerdPool

pytestmark = BROWSER_TEST
ADMIN = "console-tests-admin-token-0123456789abcdef"
HOSTILE = '<img src=x onerror="window.pwned=1">'


async def sign_in(page: Page, base: str, token: str = ADMIN) -> None:
    await page.goto(f"http://{base}/console/")
    await expect(page.locator("#signin")).to_be_visible()
    await page.fill("#token", token)
    await page.press("#token", "Enter")


async def publish(ws: websockets.ClientConnection, ref: str, body: str) -> None:
    await ws.send(json.dumps({"type": "publish", "id": ref, "body": body}))
    await recv_until(ws, "ack")


async def confirm(page: Page, button: str, *, accept: bool = True) -> None:
    await page.click(button)
    dialog = page.locator("#confirm")
    await expect(dialog).to_be_visible()
    await page.click("#confirm-ok" if accept else "#confirm button[value=cancel]")
    await expect(dialog).to_be_hidden()


async def test_sign_in_states_and_the_live_overview(
    servers: Servers, people: PersonFactory
) -> None:
    """A wrong token is refused and forgotten; the right one opens the console, for this tab
    only and never in the URL; an empty service says so; the overview follows live traffic."""
    server = await servers.start(admin_token=ADMIN)
    person = await people(viewport={"width": 1280, "height": 900})
    page = person.page
    await sign_in(page, server.base, "wrong-token")
    await expect(page.locator("#signin-error")).to_have_text(
        "That token was refused. Check ADMIN_TOKEN and sign in again.")
    assert await page.evaluate("sessionStorage.length") == 0
    await page.screenshot(path=str(artifact_path("console-signin-refused.png")))
    await sign_in(page, server.base)
    await expect(page.locator("#totals")).to_contain_text("Rooms listed")
    await page.click("#nav a[data-view=rooms]")
    await expect(page.locator("main[data-view=rooms] .empty")).to_have_text(
        "No rooms yet: a room is listed from its first message.")
    await page.screenshot(path=str(artifact_path("console-empty.png")))
    assert ADMIN not in page.url
    assert await page.evaluate("localStorage.length") == 0
    other_tab = await person.context.new_page()  # sessionStorage is per tab
    await other_tab.goto(f"http://{server.base}/console/")
    await expect(other_tab.locator("#signin")).to_be_visible()
    await other_tab.close()

    async with await server.connect("lobby", "alice") as alice, \
            await server.connect("lobby", "bob") as bob:
        await recv_until(alice, "welcome")
        await recv_until(bob, "welcome")
        await page.click("#nav a[data-view=overview]")
        for i in range(5):
            await publish(alice, f"m{i}", f"hello {i}")
        await bob.send("{not json")
        await recv_until(bob, "error")
        live = page.locator("#live")
        await expect(live.locator("[data-stat=Connections] .value")).to_have_text("2")
        await expect(live.locator("[data-stat='Messages/s'] .sub")).to_have_text("5 since start")
        await expect(page.locator("#totals [data-stat='Rooms listed'] .value")).to_have_text("1")
        await expect(page.locator("main")).to_contain_text("bad_json")
        await bob.close()
        await expect(page.locator("tr[data-code='1000']")).to_contain_text("closed by the client")
        # Rates come from two successive refreshes (every 2 s).
        await expect(live.locator("[data-stat='Messages/s'] .value")).not_to_have_text("…")
        await page.screenshot(path=str(artifact_path("console-overview.png")), full_page=True)
    await page.click("#signout")
    await expect(page.locator("#signin-error")).to_have_text("Signed out.")
    assert await page.evaluate("sessionStorage.length") == 0


def fill_directory(server: RunningServer, count: int) -> None:
    """``count`` rooms in the directory, as rooms write their rows (rooms.directory)."""
    now = int(time.time() * 1000)
    rows = [(f"room-{i:05d}", now - i * 60_000, now - i * 1000, i % 97, i % 97, i % 7, i % 7,
             min(i % 97, 50), now) for i in range(count)]
    with sqlite3.connect(server.settings.data_dir / "d1.sqlite") as db:
        db.executemany(
            "INSERT INTO rooms (name, created_ms, last_activity_ms, head_seq, archived_seq, "
            "member_count, socket_count, rows_retained, updated_ms) VALUES (?,?,?,?,?,?,?,?,?)",
            rows,
        )


async def test_the_rooms_table_sorts_filters_and_pages_ten_thousand_rooms(
    servers: Servers, people: PersonFactory
) -> None:
    server = await servers.start(admin_token=ADMIN)
    fill_directory(server, 10_000)
    page = (await people(viewport={"width": 1280, "height": 900})).page
    await sign_in(page, server.base)
    await page.click("#nav a[data-view=rooms]")
    count = page.locator("#room-count")
    await expect(count).to_have_text("1\N{EN DASH}50 of 10,000")
    rows = page.locator("tbody tr")
    await expect(rows).to_have_count(50)
    await expect(rows.first).to_have_attribute("data-room", "room-00000")  # newest message first
    await page.click("#next-page")
    await expect(count).to_have_text("51\N{EN DASH}100 of 10,000")
    await expect(rows.first).to_have_attribute("data-room", "room-00050")
    await page.click("#prev-page")
    await expect(count).to_have_text("1\N{EN DASH}50 of 10,000")
    await page.click("button[data-sort=head]")  # most messages first
    await expect(page.locator("th[aria-sort=descending]")).to_have_text("Messages")
    await expect(rows.first.locator("td").nth(3)).to_have_text("96")
    await page.click("button[data-sort=head]")  # and the other way round
    await expect(rows.first.locator("td").nth(3)).to_have_text("0")
    await page.click("button[data-sort=name]")
    await expect(rows.first).to_have_attribute("data-room", "room-09999")
    await page.fill("#room-filter", "room-0999")
    await expect(count).to_have_text("1\N{EN DASH}10 of 10")
    await expect(page.locator("#room-filter")).to_be_focused()
    await page.screenshot(path=str(artifact_path("console-rooms-filtered.png")))
    await page.fill("#room-filter", "")
    await expect(count).to_have_text("1\N{EN DASH}50 of 10,000")
    await page.screenshot(path=str(artifact_path("console-rooms.png")))
    await page.fill("#room-filter", "nothing-like-this")
    await expect(page.locator("main[data-view=rooms] .empty")).to_have_text(
        'No room name contains "nothing-like-this".')


async def test_a_room_page_shows_members_messages_segments_and_runs_every_action(
    servers: Servers, people: PersonFactory
) -> None:
    """Members and sockets, bodies only on a confirmed click (audited), text never HTML, and
    close/open, disconnect, ban and archive now, each asking first; the clients feel each."""
    server = await servers.start(admin_token=ADMIN)
    page = (await people(viewport={"width": 1280, "height": 1000})).page
    hostile_token = mint_token(SECRET, "mallory", name=HOSTILE)
    async with await server.connect("lobby", "alice") as alice, \
            await websockets.connect(server.url("lobby", token=hostile_token, since=0)) as mallory:
        await recv_until(alice, "welcome")
        await recv_until(mallory, "welcome")
        for i in range(3):
            await publish(alice, f"a{i}", f"note {i}")
        await publish(mallory, "x", HOSTILE)
        await sign_in(page, server.base)
        await page.goto(f"http://{server.base}/console/#/rooms/lobby")
        await expect(page.locator("#room-state")).to_have_text("open")
        await expect(page.locator("tr[data-user=alice]")).to_contain_text("alice (alice)")
        await expect(page.locator("tr[data-user=mallory]")).to_contain_text(HOSTILE)
        messages = page.locator("#messages tbody tr")
        await expect(messages).to_have_count(4)
        await expect(messages.first).to_contain_text(f"{len(HOSTILE)} characters")
        await expect(page.locator("#messages")).not_to_contain_text("note 0")
        await page.click("#show-bodies")  # cancelled: nothing read, nothing audited
        await page.click("#confirm button[value=cancel]")
        await expect(page.locator("#messages")).not_to_contain_text("note 0")
        await page.click("#show-bodies")
        await expect(page.locator("#confirm-text")).to_contain_text("recorded in the audit log")
        await page.screenshot(path=str(artifact_path("console-confirm-bodies.png")))
        await page.click("#confirm-ok")
        await expect(page.locator("#messages")).to_contain_text("note 0")
        await expect(messages.first).to_contain_text(HOSTILE)  # as text
        read = page.locator("#room-audit tr[data-action=read_messages]")
        await expect(read).to_contain_text("1-4")
        assert await page.locator("main img").count() == 0
        assert await page.evaluate("window.pwned === undefined")
        await page.screenshot(path=str(artifact_path("console-room.png")), full_page=True)

        await confirm(page, "button[data-action=close]", accept=False)
        await expect(page.locator("#room-state")).to_have_text("open")
        await confirm(page, "button[data-action=close]")
        await expect(page.locator("#room-state")).to_have_text("closed to messages")
        await alice.send(json.dumps({"type": "publish", "id": "late", "body": "hello?"}))
        assert (await recv_until(alice, "error"))["code"] == "room_closed"
        await confirm(page, "button[data-action=open]")
        await expect(page.locator("#room-state")).to_have_text("open")

        await confirm(page, "tr[data-user=mallory] button[data-action=disconnect]")
        await mallory.wait_closed()
        assert mallory.close_code == CloseCode.KICKED
        await expect(page.locator("tr[data-user=mallory]")).to_have_count(0)
    async with await server.connect("lobby", "bob") as bob:
        await recv_until(bob, "welcome")
        await page.reload()
        await page.click("tr[data-user=bob] button[data-action=ban]")
        await page.select_option("#ban-duration", "600")
        await page.screenshot(path=str(artifact_path("console-confirm-ban.png")))
        await page.click("#confirm-ok")
        await bob.wait_closed()
        assert bob.close_code == CloseCode.KICKED
    await expect(page.locator("main")).to_contain_text("Nobody is here.")
    await expect(page.locator("#bans tr[data-user=bob]")).to_be_visible()
    await confirm(page, "button[data-action=archive]")
    segments = page.locator("h2:text('Archive segments') + .table-wrap tbody tr")
    await expect(segments).to_have_count(1)
    await expect(segments.first).to_contain_text("1\N{EN DASH}4")
    actions = await page.locator("#room-audit tbody tr").evaluate_all(
        "rows => rows.map(r => r.dataset.action)")
    assert actions == ["archive", "ban", "disconnect", "open", "close", "read_messages"]
    await page.screenshot(path=str(artifact_path("console-room-after-actions.png")), full_page=True)
    await page.click("#nav a[data-view=audit]")
    await expect(page.locator("tbody tr")).to_have_count(6)
    await page.screenshot(path=str(artifact_path("console-audit.png")))


async def test_an_unreachable_server_is_shown_and_recovers(
    servers: Servers, people: PersonFactory
) -> None:
    server = await servers.start(admin_token=ADMIN)
    page = (await people(viewport={"width": 1280, "height": 700})).page
    await sign_in(page, server.base)
    await expect(page.locator("#totals")).to_be_visible()
    await servers.stop(server)
    banner = page.locator("#banner")
    await expect(banner).to_have_text("The server cannot be reached. Retrying every few seconds…")
    await page.screenshot(path=str(artifact_path("console-unreachable.png")))
    restarted = await servers.start(server.settings, server.port)
    await expect(banner).to_be_hidden()
    await expect(page.locator("#totals")).to_be_visible()
    assert restarted.port == server.port


async def test_phone_layout_of_a_room(servers: Servers, people: PersonFactory) -> None:
    server = await servers.start(admin_token=ADMIN)
    async with await server.connect("lobby", "alice") as alice:
        await recv_until(alice, "welcome")
        await publish(alice, "p", "from a phone")
        page = (await people(viewport={"width": 390, "height": 844}, is_mobile=True)).page
        await sign_in(page, server.base)
        await page.goto(f"http://{server.base}/console/#/rooms/lobby")
        await expect(page.locator("tr[data-user=alice]")).to_be_visible()
        width = await page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390  # tables scroll inside their box, the page never sideways
        await page.screenshot(path=str(artifact_path("console-phone.png")), full_page=True)


async def test_the_console_on_real_workerd(
    people: PersonFactory, workerd_pool: WorkerdPool
) -> None:
    """Served by the Worker's static assets; the overview says where live figures are; a room
    opened there is inspected through its Durable Object."""
    dev = await asyncio.to_thread(workerd_pool.get, Profile())
    base = f"127.0.0.1:{dev.port}"
    room = f"console-{uuid.uuid4().hex[:8]}"
    async with await websockets.connect(
        f"ws://{base}/rooms/{room}/ws?token={mint_token(SECRET, 'alice')}&since=0"
    ) as alice:
        await recv_until(alice, "welcome")
        await publish(alice, "w1", "hello from workerd")
        page = (await people(viewport={"width": 1280, "height": 900})).page
        await sign_in(page, base, ADMIN_TOKEN)
        await expect(page.locator("#live")).to_contain_text("Workers Analytics Engine")
        await page.screenshot(path=str(artifact_path("console-overview-workerd.png")))
        await page.goto(f"http://{base}/console/#/rooms/{room}")
        await expect(page.locator("tr[data-user=alice]")).to_contain_text("alice (alice)")
        await expect(page.locator("#messages tbody tr")).to_have_count(1)
        await page.screenshot(path=str(artifact_path("console-room-workerd.png")), full_page=True)


async def test_an_operator_deletes_a_message_from_the_room_page(
    servers: Servers, people: PersonFactory
) -> None:
    """Delete… on a message asks first, reaches the members as a delete event, shows the row as
    deleted (its edit too), counts the events and is in the audit log."""
    server = await servers.start(admin_token=ADMIN)
    page = (await people(viewport={"width": 1280, "height": 1000})).page
    async with await server.connect("lobby", "alice") as alice:
        await recv_until(alice, "welcome")
        await publish(alice, "a0", "keep this")
        await publish(alice, "a1", "a secret")
        await alice.send(json.dumps({"type": "edit", "id": "e1", "target": 2,
                                     "body": "a secret, fixed"}))
        await recv_until(alice, "ack")
        await sign_in(page, server.base)
        await page.goto(f"http://{server.base}/console/#/rooms/lobby")
        rows = page.locator("#messages tbody tr")
        await expect(rows).to_have_count(3)
        await expect(page.locator("#messages tr[data-seq='3']")).to_contain_text("edit of #2")
        await expect(page.locator("#messages tr[data-seq='3'] button")).to_have_count(0)
        await confirm(page, "#messages tr[data-seq='2'] button[data-action=delete]", accept=False)
        await expect(page.locator("#messages tr[data-seq='2']")).not_to_contain_text("deleted")
        await page.click("#messages tr[data-seq='2'] button[data-action=delete]")
        await expect(page.locator("#confirm-text")).to_contain_text("recorded in the audit log")
        await page.screenshot(path=str(artifact_path("console-confirm-delete.png")))
        await page.click("#confirm-ok")
        event = await recv_until(alice, "message")
        while event.get("kind") != "delete":
            event = await recv_until(alice, "message")
        assert (event["target"], event["user_id"], event["name"]) == (2, "", "operator")
        await expect(page.locator("#messages tr[data-seq='2']")).to_contain_text("deleted")
        await expect(page.locator("#messages tr[data-seq='3']")).to_contain_text("deleted")
        await expect(page.locator("#messages tr[data-seq='4']")).to_contain_text("delete of #2")
        await expect(page.locator("[data-stat='Edits · deletes'] .value")).to_have_text("1 · 1")
        await expect(page.locator("#room-audit tr[data-action=delete]")).to_contain_text("2")
        await page.click("#show-bodies")
        await page.click("#confirm-ok")
        await expect(page.locator("#messages")).to_contain_text("keep this")
        await expect(page.locator("#messages")).not_to_contain_text("secret")
        await page.screenshot(path=str(artifact_path("console-room-deleted.png")), full_page=True)

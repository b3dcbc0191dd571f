"""How text shows and who can read it: right-to-left text, links, day separators, the unread count,
the character counter, dark mode, and axe-core's accessibility rules over the main states."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

from playwright.async_api import Page, WebSocketRoute, expect

from rooms.limits import Limits
from tests.browser.conftest import BROWSER_TEST, PersonFactory, Servers, artifact_path
from tests.browser.proxy import CuttableProxy
from tests.browser.test_chat import seed

pytestmark = BROWSER_TEST
ROOT = Path(__file__).resolve().parents[2]
AXE = Path(__file__).resolve().parent / "node_modules" / "axe-core" / "axe.min.js"
DAY_MS = 24 * 3600 * 1000
# axe-core's rule sets for WCAG 2.0/2.1 A and AA, plus its best practices.
AXE_TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "best-practice"]


async def axe_violations(page: Page) -> list[str]:
    """axe-core's findings in the page as it is now, one readable line each."""
    assert AXE.exists(), "axe-core is missing: run `make browser` (scripts/setup-browser.sh)"
    if not await page.evaluate("typeof window.axe !== 'undefined'"):
        await page.add_script_tag(path=str(AXE))
    found: list[dict[str, Any]] = await page.evaluate(
        "tags => axe.run(document, {runOnly: {type: 'tag', values: tags}})"
        ".then(r => r.violations.map(v => ({id: v.id, help: v.help,"
        " nodes: v.nodes.map(n => n.target.join(' ') + ': ' + n.failureSummary)})))",
        AXE_TAGS,
    )
    return [f"{v['id']} ({v['help']}): {'; '.join(v['nodes'])}" for v in found]


def sent_ms_shifts(route: WebSocketRoute) -> None:
    """Pass frames through, moving a message's `sent_ms` back by the days its body starts with
    ("[-2d] ..."), as if it had been sent then: day separators need several days' messages."""
    server = route.connect_to_server()

    def to_page(message: str | bytes) -> None:
        if isinstance(message, str):
            frame = json.loads(message)
            items = frame.get("messages", []) if frame.get("type") == "history" else [frame]
            for item in items:
                days = re.match(r"\[-(\d+)d\]", str(item.get("body", "")))
                if days:
                    item["sent_ms"] -= int(days.group(1)) * DAY_MS
            message = json.dumps(frame)
        route.send(message)

    server.on_message(to_page)


async def test_right_to_left_text_reads_right_to_left(
    servers: Servers, people: PersonFactory
) -> None:
    server = await servers.start()
    dana = await people(viewport={"width": 900, "height": 520})
    ada = await people()
    await dana.join(server.base, "rtl", "דנה")
    await ada.join(server.base, "rtl", "Ada")
    await dana.say("שלום, מה שלומך?")
    await ada.say("مرحبا! كيف حالك؟")
    await ada.say("Hello, and a mixed one: שלום!")
    await dana.wait_for_count(3)
    directions = await dana.page.eval_on_selector_all(
        "#log li.msg .body", "els => els.map(e => [e.dir, getComputedStyle(e).direction])")
    assert directions == [["auto", "rtl"], ["auto", "rtl"], ["auto", "ltr"]]
    name = dana.page.locator("#people-list li.me bdi")
    await expect(name).to_have_text("דנה")
    assert await name.evaluate("e => [e.dir, getComputedStyle(e).direction]") == ["auto", "rtl"]
    await expect(dana.page.locator("#people-list li.me")).to_have_text("דנה (you)")
    await dana.page.screenshot(path=str(artifact_path("rtl-text.png")))


async def test_links_are_safe_anchors_and_the_rest_stays_text(
    servers: Servers, people: PersonFactory
) -> None:
    server = await servers.start()
    ada = await people(viewport={"width": 900, "height": 480})
    await ada.join(server.base, "links", "Ada")
    body = ("Docs: https://example.com/docs?a=1&b=2, the wiki https://en.wikipedia.org/wiki/"
            "Rust_(language). Not links: javascript:alert(1) ftp://x.test <b>http://</b> "
            "(see http://x.test/path).")
    await ada.say(body)
    await ada.wait_for_count(1)
    shown = ada.page.locator("#log li.msg .body")
    await expect(shown).to_have_text(body)  # the text unchanged around the anchors
    anchors = await shown.evaluate(
        "e => [...e.children].map(a => [a.tagName, a.getAttribute('href'), a.rel, a.target,"
        " a.textContent])")
    assert anchors == [
        ["A", "https://example.com/docs?a=1&b=2", "noopener noreferrer", "_blank",
         "https://example.com/docs?a=1&b=2"],
        ["A", "https://en.wikipedia.org/wiki/Rust_(language)", "noopener noreferrer", "_blank",
         "https://en.wikipedia.org/wiki/Rust_(language)"],
        ["A", "http://x.test/path", "noopener noreferrer", "_blank", "http://x.test/path"],
    ]
    await ada.page.screenshot(path=str(artifact_path("links.png")))


async def test_the_page_never_writes_html_from_strings() -> None:
    """Text from the network reaches the page as text nodes and attributes only."""
    for path in sorted((ROOT / "public" / "js").glob("*.js")):
        source = path.read_text()
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write",
                     "createContextualFragment", "srcdoc"):
            assert sink not in source, f"{path.name} uses {sink}"


async def test_day_separators_live_and_in_history(
    servers: Servers, people: PersonFactory
) -> None:
    server = await servers.start()
    for body in ("[-3d] three days ago", "[-3d] same day", "[-1d] yesterday"):
        await seed_one(server, "days", body)
    ada = await people(viewport={"width": 900, "height": 640})
    await ada.page.route_web_socket(re.compile(r".*/rooms/.*"), sent_ms_shifts)
    await ada.join(server.base, "days", "Ada")
    await ada.wait_for_count(3)  # history: separators placed over what was prepended
    await ada.say("today")
    await ada.wait_for_count(4)
    log = await ada.page.eval_on_selector_all(
        "#log > li", "els => els.map(e => e.classList.contains('day') ? 'day:' + e.textContent"
        " : e.querySelector('.body').textContent)")
    three_days = time.strftime("%Y-%m-%d", time.localtime(time.time() - 3 * 86400))
    assert log[0].startswith("day:")
    assert log[0] not in ("day:Today", "day:Yesterday")
    assert log[1:] == ["[-3d] three days ago", "[-3d] same day", "day:Yesterday",
                       "[-1d] yesterday", "day:Today", "today"]
    first_day = await ada.page.locator("#log li.day time").first.get_attribute("datetime")
    assert first_day == three_days  # the local date, as the label
    await ada.page.screenshot(path=str(artifact_path("day-separators.png")))


async def seed_one(server: Any, room: str, body: str) -> None:
    async with await server.connect(room, "sam") as ws:
        welcome = json.loads(await ws.recv())
        assert welcome["type"] == "welcome"
        await ws.send(json.dumps({"type": "publish", "id": body[:60], "body": body}))
        while json.loads(await ws.recv())["type"] != "ack":
            pass


async def test_the_tab_title_counts_unread_messages_while_hidden(
    servers: Servers, people: PersonFactory
) -> None:
    server = await servers.start()
    ada, bob = await people(), await people()
    await ada.join(server.base, "unread", "Ada")
    await bob.join(server.base, "unread", "Bob")
    await expect(ada.page).to_have_title("#unread · durable-rooms")
    await set_visibility(ada.page, "hidden")  # as when another tab is in front
    await bob.say("one")
    await bob.say("two")
    await ada.wait_for_count(2)
    await expect(ada.page).to_have_title("(2) #unread · durable-rooms")
    await ada.say("my own does not count")
    await ada.wait_for_count(3)
    await expect(ada.page).to_have_title("(2) #unread · durable-rooms")
    await set_visibility(ada.page, "visible")
    await expect(ada.page).to_have_title("#unread · durable-rooms")


async def set_visibility(page: Page, state: str) -> None:
    await page.evaluate(
        """state => {
            const read = (get) => ({configurable: true, get});
            Object.defineProperty(document, "visibilityState", read(() => state));
            Object.defineProperty(document, "hidden", read(() => state === "hidden"));
            document.dispatchEvent(new Event("visibilitychange"));
        }""",
        state,
    )


async def test_a_character_counter_near_the_limit_and_a_refusal_over_it(
    servers: Servers, people: PersonFactory
) -> None:
    """The limit is the room's (from its welcome), counted in code points as the room counts."""
    server = await servers.start(limits=Limits(max_body_chars=100))
    ada = await people(viewport={"width": 900, "height": 420})
    await ada.join(server.base, "count", "Ada")
    counter = ada.page.locator("#counter")
    await ada.page.fill("#body", "x" * 89)
    await expect(counter).to_be_hidden()
    await ada.page.fill("#body", "😀" * 95)  # 95 code points, 190 UTF-16 units
    await expect(counter).to_have_text("95 / 100")
    await ada.page.fill("#body", "y" * 105)
    await expect(counter).to_have_text("5 too many characters (at most 100)")
    await expect(ada.page.locator("#composer button[type=submit]")).to_be_disabled()
    assert await ada.page.input_value("#body") == "y" * 105  # nothing cut off
    await ada.page.press("#body", "Enter")
    await expect(ada.page.locator("#outbox li")).to_have_count(0)  # refused here, not sent
    # A long word wraps in the box: the page does not scroll sideways.
    assert await ada.page.evaluate("document.documentElement.scrollWidth") <= 900
    await ada.page.screenshot(path=str(artifact_path("char-counter.png")))
    await ada.page.fill("#body", "y" * 100)
    await expect(counter).to_have_text("100 / 100")
    await ada.page.press("#body", "Enter")
    assert (await ada.wait_for_count(1))[0][1] == "y" * 100
    await expect(counter).to_be_hidden()


def contrast(foreground: str, background: str) -> float:
    """WCAG contrast ratio of two CSS rgb() colours."""

    def luminance(css: str) -> float:
        r, g, b = (int(v) / 255 for v in re.findall(r"\d+", css)[:3])
        lin = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in (r, g, b)]
        return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]

    high, low = sorted((luminance(foreground), luminance(background)), reverse=True)
    return (high + 0.05) / (low + 0.05)


async def test_dark_mode_reads_well(servers: Servers, people: PersonFactory) -> None:
    server = await servers.start()
    ada = await people(color_scheme="dark", viewport={"width": 1000, "height": 600},
                       bypass_csp=True)
    bob = await people(color_scheme="dark")
    await ada.join(server.base, "dark", "Ada")
    await bob.join(server.base, "dark", "Bob")
    await ada.say("Dark mode: my own bubble, with a link https://example.com")
    await bob.say("And one from Bob 👋 🎉")
    await ada.wait_for_count(2)
    await bob.page.fill("#body", "typing in the dark")
    await expect(ada.page.locator("#typing")).to_have_text("Bob is typing…")
    colours = await ada.page.eval_on_selector(
        "#log li.msg.mine .body",
        "e => [getComputedStyle(e).color, getComputedStyle(e).backgroundColor]")
    assert contrast(*colours) >= 4.5, colours
    await ada.page.screenshot(path=str(artifact_path("chat-dark.png")))
    assert await axe_violations(ada.page) == []


async def test_axe_finds_nothing_in_the_main_states(
    servers: Servers, people: PersonFactory
) -> None:
    """The join form, people chatting (desktop and phone), the counter over the limit, an
    outbox while offline, and a refused room (dark mode: test_dark_mode_reads_well)."""
    server = await servers.start(limits=Limits(max_members=2, max_body_chars=50))
    proxy = CuttableProxy(server.port)
    await proxy.start()
    try:
        ada = await people(bypass_csp=True, viewport={"width": 1100, "height": 700})
        await ada.page.goto(f"http://{proxy.base}/#room=axe")
        assert await axe_violations(ada.page) == [], "join form"
        await ada.page.fill("#join-name", "Ada")
        await ada.page.press("#join-name", "Enter")
        await ada.online()
        await seed(server, "axe", 3, user="sam")
        await ada.say("Hello https://example.com")
        await ada.wait_for_count(4)
        assert await axe_violations(ada.page) == [], "chatting"

        pat = await people(bypass_csp=True, viewport={"width": 390, "height": 760},
                           is_mobile=True, has_touch=True)
        await pat.join(server.base, "axe", "Pat")
        assert await axe_violations(pat.page) == [], "phone"

        await ada.page.fill("#body", "z" * 60)
        await expect(ada.page.locator("#counter")).to_contain_text("too many")
        assert await axe_violations(ada.page) == [], "counter over the limit"
        await ada.page.fill("#body", "")

        proxy.block_sockets()
        await expect(ada.page.locator("#status")).to_have_attribute("data-state", "waiting")
        await ada.say("typed while offline")
        await expect(ada.page.locator('#outbox li[data-state="offline"]')).to_have_count(1)
        assert await axe_violations(ada.page) == [], "offline with an outbox"
        proxy.restore()

        zoe = await people(bypass_csp=True)
        await zoe.page.goto(f"http://{server.base}/#room=axe")
        await zoe.page.fill("#join-name", "Zoe")
        await zoe.page.press("#join-name", "Enter")
        await expect(zoe.page.locator("#status")).to_have_attribute("data-state", "refused")
        assert await axe_violations(zoe.page) == [], "refused"
    finally:
        await proxy.close()


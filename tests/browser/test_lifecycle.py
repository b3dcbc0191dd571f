"""Edit, delete, reactions and unread state on the chat page (docs/protocol.md, "Message
lifecycle"), in Chromium against the local runtime: keyboard-only editing and deleting of one's
own messages, reactions with counts, and an unread line and count that two tabs of one user
keep in step."""

from __future__ import annotations

from playwright.async_api import Dialog, expect

from rooms.auth import mint_token
from tests.browser.conftest import BROWSER_TEST, Person, PersonFactory, Servers, artifact_path
from tests.browser.test_text_and_access import set_visibility
from tests.local.conftest import SECRET

pytestmark = BROWSER_TEST
WIDE = {"viewport": {"width": 1000, "height": 640}}


def message(person: Person, text: str):  # type: ignore[no-untyped-def]
    return person.page.locator("#log li.msg", has_text=text)


async def accept(dialog: Dialog) -> None:
    await dialog.accept()


async def test_own_messages_are_edited_and_deleted_by_keyboard_and_reactions_count(
    servers: Servers, people: PersonFactory
) -> None:
    server = await servers.start()
    ada, bob = await people(**WIDE), await people(**WIDE)
    await ada.join(server.base, "lobby", "Ada")
    await bob.join(server.base, "lobby", "Bob")
    await ada.say("Helo everyone")
    await bob.wait_for_count(1)

    # Keyboard only: from the message list, Tab reaches the message's actions.
    await ada.page.focus("#scroller")
    await ada.page.keyboard.press("Tab")
    await expect(ada.page.locator(":focus")).to_have_text("React")
    await ada.page.keyboard.press("Tab")
    await expect(ada.page.locator(":focus")).to_have_text("Edit")
    await ada.page.keyboard.press("Enter")
    await expect(ada.page.locator(":focus")).to_have_attribute("aria-label", "Edit message")
    await ada.page.keyboard.press("Control+A")
    await ada.page.keyboard.type("Hello everyone")
    await ada.page.keyboard.press("Enter")
    for person in (ada, bob):
        await expect(message(person, "Hello everyone").locator(".edited")).to_have_text("edited")
    assert await bob.log() == [(1, "Hello everyone")]

    # Bob reacts from the palette; Ada adds hers by pressing the chip.
    await message(bob, "Hello everyone").get_by_role("button", name="React", exact=True).click()
    await bob.page.get_by_role("button", name="React with 👍").click()
    chip = message(ada, "Hello everyone").locator(".reactions .chip")
    await expect(chip).to_have_text("👍 1")
    await expect(chip).to_have_attribute("aria-pressed", "false")
    await chip.click()
    await expect(chip).to_have_text("👍 2")
    await expect(chip).to_have_attribute("aria-pressed", "true")
    await expect(message(bob, "Hello everyone").locator(".reactions .chip")).to_have_text("👍 2")

    await ada.say("Oops, wrong room")
    await bob.wait_for_count(2)
    ada.page.on("dialog", accept)
    delete = message(ada, "Oops, wrong room").get_by_role("button", name="Delete")
    await delete.focus()
    await ada.page.keyboard.press("Enter")
    for person in (ada, bob):
        await expect(person.page.locator("#log li.msg.deleted .body")).to_have_text(
            "This message was deleted.")
    await bob.page.hover("#log li.msg >> nth=0")
    await bob.page.screenshot(path=str(artifact_path("lifecycle-reactions-edit-delete.png")))
    await ada.page.screenshot(path=str(artifact_path("lifecycle-author.png")))

    # A reload pages history folded: the edit, the reactions and the deletion are all there,
    # and no event shows as a message of its own.
    await bob.page.reload()
    await bob.online()
    assert await bob.wait_for_count(2) == [(1, "Hello everyone"), (5, "This message was deleted.")]
    await expect(message(bob, "Hello everyone").locator(".reactions .chip")).to_have_text("👍 2")
    await expect(message(bob, "Hello everyone").locator(".edited")).to_have_text("edited")


async def test_unread_line_and_count_are_kept_in_step_across_two_tabs(
    servers: Servers, people: PersonFactory
) -> None:
    server = await servers.start()
    link = f"http://{server.base}/#room=lobby&token={mint_token(SECRET, 'bob', 'Bob')}"
    ada, tab1 = await people(**WIDE), await people(**WIDE)
    await ada.join(server.base, "lobby", "Ada")
    await ada.say("Before Bob came")
    await tab1.page.goto(link)
    await tab1.online()
    await tab1.wait_for_count(1)
    # Bob never read this room: Ada's message is unread, until Bob does something in the page.
    await expect(tab1.page.locator("#unread")).to_have_text("1 unread · mark read")
    await tab1.page.focus("#body")
    await tab1.page.keyboard.press("Shift")
    await expect(tab1.page.locator("#unread")).to_be_hidden()
    await expect(tab1.page.locator("#log .first-unread")).to_have_count(0)
    await set_visibility(tab1.page, "hidden")  # Bob's laptop tab goes to the background
    for text in ("First news", "Second news", "Third news"):
        await ada.say(text)
    await tab1.wait_for_count(4)
    await expect(tab1.page.locator("#unread")).to_have_text("3 unread · mark read")
    await expect(tab1.page).to_have_title("(3) #lobby · durable-rooms")
    await expect(tab1.page.locator("#log li.msg.first-unread .body")).to_have_text(
        "First news")
    # Bob's second tab: the room tells it the same count, and the line goes in the same place.
    tab2 = Person(tab1.context, await tab1.context.new_page(), tab1.errors)
    await tab2.page.set_viewport_size(WIDE["viewport"])
    await tab2.page.goto(link)
    await tab2.online()
    await tab2.wait_for_count(4)
    await expect(tab2.page.locator("#unread")).to_have_text("3 unread · mark read")
    await expect(tab2.page.locator("#log li.msg.first-unread .body")).to_have_text(
        "First news")
    await expect(tab2.page).to_have_title("(3) #lobby · durable-rooms")
    await tab2.page.screenshot(path=str(artifact_path("lifecycle-unread-tab2.png")))
    # Reading in one tab clears the badge and the line in the other.
    await tab2.page.click("#unread")
    for tab in (tab1, tab2):
        await expect(tab.page.locator("#unread")).to_be_hidden()
        await expect(tab.page.locator("#log .first-unread")).to_have_count(0)
        await expect(tab.page).to_have_title("#lobby · durable-rooms")
    # Both in the background: a new message is unread in both; coming back to one reads it.
    await set_visibility(tab2.page, "hidden")
    await ada.say("Fourth news")
    await expect(tab1.page.locator("#unread")).to_have_text("1 unread · mark read")
    await expect(tab2.page.locator("#unread")).to_have_text("1 unread · mark read")
    await tab1.page.screenshot(path=str(artifact_path("lifecycle-unread-tab1.png")))
    await set_visibility(tab1.page, "visible")
    for tab in (tab1, tab2):
        await expect(tab.page.locator("#unread")).to_be_hidden()

"""The chat page's sidebar search (issue #19) in a real Chromium against a real daphne: typing
lists the hits with highlighted, escaped snippets in place of the chat list; the keyboard moves
through them; choosing one opens that chat and scrolls to the message; Escape brings the chat
list back. No CSP violation or script error on the way."""

from __future__ import annotations

import pytest

from chat.services import message_append, session_create
from tests.browser.conftest import expect_, login, page_problems

pytestmark = [pytest.mark.browser]


def _chat_with_a_long_history(user):
    session = session_create(owner=user, title="Travel plans")
    for i in range(40):
        message_append(session=session, role="user", text=f"filler question number {i}")
        message_append(session=session, role="assistant", text=f"filler answer number {i}")
    target = message_append(
        session=session,
        role="assistant",
        text='Pack a <img src=x onerror="window.__xss=1"> raincoat for the monsoon season.',
    )
    for i in range(40):
        message_append(session=session, role="user", text=f"later filler {i}")
    return session, target


def test_sidebar_search_finds_highlights_and_opens_the_message(context, web_user):
    expect = expect_()
    other = session_create(owner=web_user, title="Monsoon reading list")
    session, target = _chat_with_a_long_history(web_user)
    page = context.new_page()
    problems = page_problems(page)
    login(page, web_user)

    box = page.get_by_role("searchbox", name="Search your chats")
    box.fill("monsoon")
    results = page.get_by_role("list", name="Search results")
    expect(results).to_be_visible()
    expect(page.locator("#session-nav")).to_be_hidden()
    links = results.locator("a.search-link")
    expect(links).to_have_count(2)
    # The title hit first, then the message with its snippet; the match is a <mark>, the markup
    # in the message is text.
    expect(links.nth(0)).to_have_attribute("href", f"/c/{other.pk}/")
    expect(links.nth(0).locator("mark")).to_have_text("Monsoon")
    hit = links.nth(1)
    expect(hit).to_have_attribute("href", f"/c/{session.pk}/#msg-{target.sequence}")
    expect(hit.locator("mark")).to_have_text("monsoon")
    expect(hit).to_contain_text('onerror="window.__xss=1">')  # where the snippet starts: per database
    assert hit.locator("img").count() == 0
    expect(page.locator("#search-status")).to_have_text("2 results")

    # Keyboard: ArrowDown into the hits, ArrowUp back to the box, Escape clears.
    box.press("ArrowDown")
    expect(links.nth(0)).to_be_focused()
    page.keyboard.press("ArrowDown")
    expect(hit).to_be_focused()
    page.keyboard.press("ArrowUp")
    page.keyboard.press("ArrowUp")
    expect(box).to_be_focused()
    box.press("Escape")
    expect(box).to_have_value("")
    expect(results).to_be_hidden()
    expect(page.locator("#session-nav")).to_be_visible()

    # Choosing a hit (Enter on it) opens the chat scrolled to the message.
    box.fill("raincoat")
    expect(links).to_have_count(1)
    box.press("ArrowDown")
    page.keyboard.press("Enter")
    page.wait_for_url(f"**/c/{session.pk}/#msg-{target.sequence}")
    page.wait_for_selector("body[data-ready=true]")
    message = page.locator(f'#messages [data-sequence="{target.sequence}"]')
    expect(message).to_be_in_viewport()
    expect(message).to_contain_text("raincoat")
    assert page.evaluate("() => window.__xss") is None

    # Nothing found: said so; words the database would parse as syntax are just words.
    box = page.get_by_role("searchbox", name="Search your chats")
    box.fill('" AND * NEAR(')
    expect(page.locator("#search-status")).to_have_text("No results.")
    assert problems == [], problems

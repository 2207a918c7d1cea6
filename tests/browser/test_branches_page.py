"""Branches on the chat page (docs/browser.md "Branches") in a real Chromium against a real
daphne and the scripted model: editing a user message makes a new branch (‹ 2/2 ›) and the old
one stays reachable with its old answer; Regenerate keeps the old reply as a sibling; the
switch survives a reload; switches and Edit are disabled while a reply streams. On both
backends (`api`, and `sdk` with the real Claude Code CLI against the scripted model)."""

from __future__ import annotations

import re

import pytest

from tests.browser.conftest import (
    FAST_RETRIES_ENV,
    expect_,
    last_assistant,
    login,
    page_problems,
    send,
    wait_idle,
    ws_open,
)

pytestmark = [pytest.mark.browser]


@pytest.fixture(scope="module", params=["api", "sdk"])
def live_app_env(request):
    """Both backends: the page behaves the same whichever one answers."""
    return {**FAST_RETRIES_ENV, "AGENT_BACKEND": request.param}


def _reload(page) -> None:
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    ws_open(page)


def test_edit_switch_regenerate_and_reload(context, web_user):
    expect = expect_()
    page = context.new_page()
    problems = page_problems(page)
    login(page, web_user)
    ws_open(page)

    send(page, "first question alpha")
    expect(last_assistant(page)).to_contain_text("alpha", timeout=20_000)
    wait_idle(page)
    user = page.locator(".msg.user")
    expect(user).to_have_count(1)
    expect(user.locator(".branch-nav")).to_have_count(0)  # one version: no switch

    # Edit: an inline editor; saving answers the new text on a new branch.
    user.get_by_role("button", name="Edit this message").click()
    editor = user.get_by_label("Edit your message")
    expect(editor).to_have_value("first question alpha")
    editor.fill("first question beta")
    user.get_by_role("button", name="Save and send").click()
    expect(last_assistant(page)).to_contain_text("beta", timeout=20_000)
    wait_idle(page)
    expect(page.locator(".msg.user")).to_have_count(1)
    expect(page.locator(".msg.assistant")).to_have_count(1)
    user = page.locator(".msg.user")
    expect(user.locator(".user-text")).to_have_text("first question beta")
    expect(user.locator(".branch-count")).to_have_text("2/2")
    expect(user.get_by_role("button", name="Next version of this message")).to_be_disabled()

    # Back to the old branch: the old question and its old answer.
    user.get_by_role("button", name="Previous version of this message").click()
    expect(user.locator(".branch-count")).to_have_text("1/2")
    expect(user.locator(".user-text")).to_have_text("first question alpha")
    expect(last_assistant(page)).to_contain_text("alpha")
    expect(last_assistant(page)).not_to_contain_text("beta")

    # The switch is stored: a reload shows the same branch.
    _reload(page)
    user = page.locator(".msg.user")
    expect(user.locator(".branch-count")).to_have_text("1/2")
    expect(user.locator(".user-text")).to_have_text("first question alpha")
    user.get_by_role("button", name="Next version of this message").click()
    expect(user.locator(".branch-count")).to_have_text("2/2")
    expect(last_assistant(page)).to_contain_text("beta")

    # Regenerate keeps the old reply: the new one is its sibling (‹ 2/2 › on the reply).
    send(page, "/stamp 2 0")
    expect(last_assistant(page)).to_contain_text("1:", timeout=20_000)
    wait_idle(page)
    old_reply = last_assistant(page).locator(".msg-body").inner_text()
    last_assistant(page).get_by_role("button", name="Regenerate the last answer").click()
    reply = last_assistant(page)
    expect(reply.locator(".branch-count")).to_have_text("2/2", timeout=20_000)
    wait_idle(page)
    new_reply = reply.locator(".msg-body").inner_text()
    assert new_reply != old_reply and re.search(r"1:\d+", new_reply)
    expect(page.locator(".msg.user")).to_have_count(2)
    reply.get_by_role("button", name="Previous version of this reply").click()
    expect(reply.locator(".branch-count")).to_have_text("1/2")
    expect(reply.locator(".msg-body")).to_have_text(old_reply)
    _reload(page)
    expect(last_assistant(page).locator(".branch-count")).to_have_text("1/2")
    expect(last_assistant(page).locator(".msg-body")).to_have_text(old_reply)
    expect(page.locator(".msg.user").first.locator(".branch-count")).to_have_text("2/2")

    # While a reply streams, no switching and no editing.
    send(page, "/slow 150 30")
    expect(page.get_by_role("button", name="Stop")).to_be_visible()
    expect(last_assistant(page)).to_contain_text("w1", timeout=20_000)
    first_user = page.locator(".msg.user").first
    expect(first_user.get_by_role("button", name="Previous version of this message")).to_be_disabled()
    expect(first_user.get_by_role("button", name="Edit this message")).to_be_disabled()
    page.get_by_role("button", name="Stop").click()
    wait_idle(page)
    expect(first_user.get_by_role("button", name="Previous version of this message")).to_be_enabled()
    assert problems == [], problems

"""The chat page under a concurrency cap (docs/security.md "Concurrency caps"): a send over the
user's cap is refused with too_many_turns; the page says why, gives the text back and stored
nothing — in a real Chromium against a real daphne whose per-user cap is one turn."""

from __future__ import annotations

import pytest

from chat.models import ChatMessage
from tests.browser.conftest import expect_, last_assistant, login, send, shot, ws_open

pytestmark = [pytest.mark.browser]


@pytest.fixture(scope="module")
def live_app_env():
    return {"AGENT_MAX_TURNS_PER_USER": "1"}


def test_a_send_over_the_cap_is_refused_and_the_text_given_back(context, web_user):
    expect = expect_()
    first = context.new_page()
    login(first, web_user)
    ws_open(first)
    send(first, "/slow 150 40")
    expect(last_assistant(first)).to_contain_text("w1", timeout=20_000)

    second = context.new_page()
    second.goto("/")
    second.wait_for_selector("body[data-ready=true]")
    ws_open(second)
    send(second, "a second chat at once")
    expect(second.locator("#notice")).to_contain_text("the most replies generated at once")
    expect(second.locator("#input")).to_have_value("a second chat at once")
    assert second.locator(".msg.user").count() == 0
    # Nothing of the refused send was stored (the page itself made the new, empty chat).
    assert ChatMessage.objects.filter(session__owner=web_user, role="user").count() == 1
    shot(second, "caps-refused")
    expect(last_assistant(first)).to_contain_text("w39", timeout=30_000)

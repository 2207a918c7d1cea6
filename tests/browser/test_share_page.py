"""The public share page (docs/browser.md "Share page") in a real Chromium against a real daphne:
the owner shares a chat, a fresh browser context without any login opens the link and reads
the conversation (styled, no script, no console errors); a revoked link is a 404 page."""

from __future__ import annotations

import pytest

from chat.conversations import share_create, share_revoke, share_token
from chat.models import ChatMessage
from chat.services import message_append, session_create
from tests.browser.conftest import expect_, shot

pytestmark = pytest.mark.django_db(transaction=True)


def test_share_link_opens_without_login_and_shows_the_conversation(browser, live_app, web_user):
    session = session_create(owner=web_user, title="Shared deploy notes")
    message_append(session=session, role=ChatMessage.Role.USER, text="How do I <b>deploy</b>?")
    message_append(
        session=session,
        role=ChatMessage.Role.ASSISTANT,
        text="Run make deploy.",
        parts=[
            {
                "type": "tool-Bash",
                "toolCallId": "c1",
                "state": "output-available",
                "input": {"command": "make"},
                "output": "ok",
            },
            {"type": "text", "text": "Run make deploy."},
        ],
    )
    share = share_create(session=session, include_tool_outputs=False, expires_in_days=7)
    token = share_token(share=share)

    ctx = browser.new_context(base_url=live_app)  # a fresh context: no cookie, no login
    try:
        page = ctx.new_page()
        errors: list[str] = []  # console errors (a CSP violation would be one) and failed loads
        page.on(
            "console",
            lambda msg: (
                errors.append(msg.text)
                if msg.type == "error" and not msg.text.startswith("Failed to load resource")
                else None
            ),
        )
        page.on(
            "response",
            lambda r: (
                errors.append(f"{r.status} {r.url}")
                if r.status >= 400 and not r.url.endswith("/favicon.ico")
                else None
            ),
        )
        response = page.goto(f"/s/{token}/")
        assert response is not None and response.status == 200
        expect = expect_()
        expect(page.get_by_role("heading", name="Shared deploy notes")).to_be_visible()
        expect(page.locator(".share-user .share-text")).to_have_text("How do I <b>deploy</b>?")  # escaped
        expect(page.locator(".share-assistant .share-text")).to_have_text("Run make deploy.")
        expect(page.locator(".share-tool summary")).to_contain_text("Bash")
        assert page.locator(".share-output").count() == 0  # tool outputs were not shared
        assert page.url.endswith(f"/s/{token}/")  # no redirect to the login page
        assert page.evaluate("getComputedStyle(document.querySelector('.share')).maxWidth") != "none"
        assert web_user.username not in page.content()
        shot(page, "share-page")
        assert not errors, errors

        share_revoke(share=share)
        errors.clear()
        gone = page.goto(f"/s/{token}/")
        assert gone is not None and gone.status == 404
        assert "How do I" not in page.content()
    finally:
        ctx.close()

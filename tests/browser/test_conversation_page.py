"""The chat page's Share dialog, Export menu and Import button (docs/browser.md "Share, export,
import") in a real Chromium against a real daphne: the owner creates a link, a fresh browser
context without any login opens it and reads the chat (read-only); revoking it in the dialog
makes the link a 404; Export downloads the Markdown and the JSON; importing that JSON opens a
new chat with the same messages."""

from __future__ import annotations

import json

import pytest

from chat.models import ChatMessage, ChatSession
from chat.services import message_append, session_create
from tests.browser.conftest import expect_, login, page_problems, shot

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def _chat(user):
    session = session_create(owner=user, title="Sorting notes")
    message_append(session=session, role=ChatMessage.Role.USER, text="How do I sort a list in <b>Python</b>?")
    message_append(
        session=session,
        role=ChatMessage.Role.ASSISTANT,
        text="Use sorted.",
        parts=[
            {
                "type": "tool-Bash",
                "toolCallId": "c1",
                "state": "output-available",
                "input": {"command": "python3 -c 'print(sorted([3, 1]))'"},
                "output": "[1, 3]",
            },
            {"type": "text", "text": "Use `sorted`:\n\n```python\nprint(sorted([3, 1]))\n```\n"},
        ],
    )
    return session


def test_share_dialog_creates_a_public_link_and_revokes_it(browser, live_app, context, web_user):
    expect = expect_()
    session = _chat(web_user)
    page = context.new_page()
    problems = page_problems(page)
    login(page, web_user)
    page.goto(f"/c/{session.pk}/")
    page.wait_for_selector("body[data-ready=true]")
    # The reply's code block is highlighted on the chat page.
    expect(page.locator(".msg.assistant .code-block code.hljs .hljs-built_in").first).to_have_text("print")
    shot(page, "chat-highlighted-code")

    page.get_by_role("button", name="Share").click()
    dialog = page.get_by_role("dialog", name="Share chat")
    expect(dialog).to_be_visible()
    expect(dialog.locator("#share-status")).to_have_text("No links yet.")
    dialog.get_by_label("Include tool outputs").check()
    dialog.get_by_label("Link expires").select_option("7")
    dialog.get_by_role("button", name="Create link").click()
    items = dialog.locator(".share-item")
    expect(items).to_have_count(1)
    expect(items.first).to_contain_text("with tool outputs")
    expect(items.first).to_contain_text("expires")
    url = items.first.get_by_label("Share link").input_value()
    shot(page, "share-dialog")
    assert "/s/" in url and url.startswith(live_app)

    # A fresh context (no cookie, no login) reads the chat, read-only.
    public = browser.new_context()
    try:
        reader = public.new_page()
        response = reader.goto(url)
        assert response is not None and response.status == 200
        expect(reader.get_by_role("heading", name="Sorting notes")).to_be_visible()
        expect(reader.locator(".share-user")).to_contain_text("How do I sort a list in <b>Python</b>?")
        expect(reader.locator(".share-assistant")).to_contain_text("sorted")
        expect(reader.locator(".share-output")).to_have_text("[1, 3]")  # tool outputs were included
        assert reader.locator("textarea, input, form, button").count() == 0  # nothing to write with
        assert web_user.username not in reader.content()

        # The dialog lists the link when opened again; Revoke makes it a 404.
        dialog.get_by_role("button", name="Close").click()
        expect(dialog).to_be_hidden()
        page.get_by_role("button", name="Share").click()
        expect(items).to_have_count(1)
        items.first.get_by_role("button", name="Revoke this link").click()
        expect(items).to_have_count(0)
        expect(dialog.locator("#share-status")).to_contain_text("revoked")
        gone = reader.goto(url)
        assert gone is not None and gone.status == 404
    finally:
        public.close()
    assert problems == [], problems


def test_export_downloads_and_import_opens_a_new_chat(context, web_user, tmp_path):
    expect = expect_()
    session = _chat(web_user)
    page = context.new_page()
    problems = page_problems(page)
    login(page, web_user)
    page.goto(f"/c/{session.pk}/")
    page.wait_for_selector("body[data-ready=true]")

    page.get_by_text("Export", exact=True).click()
    with page.expect_download() as md_info:
        page.get_by_role("link", name="Markdown (.md)").click()
    markdown = md_info.value
    assert markdown.suggested_filename == f"chat-{session.pk}.md"
    text = open(markdown.path(), encoding="utf-8").read()
    assert "Sorting notes" in text and "How do I sort a list" in text and "print(sorted([3, 1]))" in text

    page.get_by_text("Export", exact=True).click()
    with page.expect_download() as json_info:
        page.get_by_role("link", name="JSON (.json, can be imported)").click()
    exported = json_info.value
    assert exported.suggested_filename == f"chat-{session.pk}.json"
    messages = json.loads(open(exported.path(), encoding="utf-8").read())
    assert [m["role"] for m in messages] == ["user", "assistant"]
    path = tmp_path / "chat.json"
    path.write_text(json.dumps(messages), encoding="utf-8")

    with page.expect_file_chooser() as chooser:
        page.get_by_role("button", name="Import").click()
    chooser.value.set_files(str(path))
    page.wait_for_url(lambda url: "/c/" in url and str(session.pk) not in url)
    page.wait_for_selector("body[data-ready=true]")
    expect(page.locator(".msg.user .user-text")).to_have_text("How do I sort a list in <b>Python</b>?")
    expect(page.locator(".msg.assistant .code-block code")).to_have_text("print(sorted([3, 1]))")
    expect(page.locator(".msg.assistant .tool-card")).to_have_count(1)
    assert ChatSession.objects.filter(owner=web_user).count() == 2
    expect(page.locator("#session-list .session-item")).to_have_count(2)

    # A file that is not an export: said so, nothing created.
    bad = tmp_path / "bad.json"
    bad.write_text('{"messages": []}', encoding="utf-8")
    with page.expect_file_chooser() as chooser:
        page.get_by_role("button", name="Import").click()
    chooser.value.set_files(str(bad))
    expect(page.locator("#notice")).to_contain_text("Not imported")
    assert ChatSession.objects.filter(owner=web_user).count() == 2
    assert problems == [], problems

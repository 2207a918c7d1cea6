"""MCP servers on the chat page (issue #18) in a real Chromium against a real daphne: the Chat
settings dialog offers the operator's enabled servers as checkboxes (saved with the same PATCH as
the other settings), and a tool card labels an MCP tool with its server ("notes · add_note").
The notes server (``agents.mcp_notes``) runs over stdio in the jail; ``AGENT_TOOL_POLICY``
allows MCP tools here so no approval is asked."""

from __future__ import annotations

import pytest

from chat.models import ChatSession, McpServer
from tests.browser.conftest import (
    FAST_RETRIES_ENV,
    UUID_URL,
    expect_,
    last_assistant,
    login,
    open_settings,
    send,
    wait_idle,
    ws_open,
)

pytestmark = [pytest.mark.browser]


@pytest.fixture(scope="module")
def live_app_env():
    return {
        **FAST_RETRIES_ENV,
        "AGENT_BACKEND": "api",
        "AGENT_TOOL_POLICY": "mcp__*=allow",
    }


def test_enable_a_server_and_see_its_tool_on_the_card(context, web_user):
    expect = expect_()
    McpServer.objects.create(
        name="notes",
        transport="stdio",
        command=["python", "-m", "agents.mcp_notes"],
        description="Notes in the workspace",
    )
    McpServer.objects.create(name="hidden", transport="stdio", command=["true"], enabled=False)
    page = context.new_page()
    login(page, web_user)
    ws_open(page)

    dialog = open_settings(page)
    fieldset = dialog.get_by_role("group", name="MCP servers")
    expect(fieldset).to_be_visible()
    boxes = fieldset.get_by_role("checkbox")
    expect(boxes).to_have_count(1)  # the disabled server is not offered
    expect(fieldset).to_contain_text("Notes in the workspace")
    fieldset.get_by_label("notes").check()
    dialog.get_by_role("button", name="Save").click()
    expect(dialog).to_be_hidden()
    expect(page).to_have_url(UUID_URL)
    chat_id = page.url.rstrip("/").rsplit("/", 1)[-1]
    session = ChatSession.objects.get(pk=chat_id)
    assert [s.name for s in session.mcp_servers.all()] == ["notes"]

    dialog = open_settings(page)  # the saved choice is shown again
    expect(dialog.get_by_role("group", name="MCP servers").get_by_label("notes")).to_be_checked()
    dialog.get_by_role("button", name="Cancel").click()

    send(page, '/mcp notes__add_note {"title": "Browser note", "text": "from the page"}')
    wait_idle(page)
    card = last_assistant(page).locator(".tool-card").last
    expect(card.locator(".tool-name")).to_have_text("notes · add_note")
    expect(card.locator(".tool-output")).to_contain_text("notes/browser-note.md")
    expect(last_assistant(page)).to_contain_text("Tool result")

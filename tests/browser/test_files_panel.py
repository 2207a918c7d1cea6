"""The chat page's files panel (issue #18) in a real Chromium against a real daphne: a turn's Bash
writes a file (the offline scripted model's ``/tool bash``), the panel lists it, previews it as
text and downloads it; an upload shows its progress, appears in the list, and the agent's next
turn reads it; images preview through ``?inline=1``; the server's refusals show in the panel;
tool cards of Write/Edit calls link to the file; and the panel works from the keyboard.
"""

from __future__ import annotations

import io
import re
import zipfile

import pytest

from chat.models import ChatMessage, ChatSession
from chat.services import message_append
from tests.browser.conftest import (
    FAST_RETRIES_ENV,
    PNG,
    UUID_URL,
    expect_,
    last_assistant,
    login,
    send,
    shot,
    wait_idle,
    ws_open,
)

pytestmark = [pytest.mark.browser]


@pytest.fixture(scope="module")
def live_app_env():
    return {
        **FAST_RETRIES_ENV,
        "AGENT_UPLOAD_MAX_MB": "1",
    }


def open_files(page):
    expect = expect_()
    page.get_by_role("button", name="Files", exact=True).click()
    panel = page.locator("#files-panel")
    expect(panel).to_be_visible()
    expect(panel.locator("#files-status")).to_have_text("")
    return panel


def file_row(panel, path: str):
    return panel.locator(f'tr.file-row[data-path="{path}"]')


def test_a_file_the_agent_writes_is_listed_previewed_and_downloaded(context, web_user):
    expect = expect_()
    page = context.new_page()
    login(page, web_user)
    ws_open(page)

    # A new chat: nothing yet, and the panel says so (no request for a chat that does not exist).
    panel = open_files(page)
    expect(panel.locator("#files-empty")).to_be_visible()
    expect(panel.locator("#files-zip")).to_be_hidden()
    panel.get_by_role("button", name="Close files").click()
    expect(panel).to_be_hidden()

    send(page, "/tool bash echo hello > note.txt")
    expect(last_assistant(page).locator(".tool-card")).to_have_attribute("data-state", "output-available")
    wait_idle(page)
    expect(page).to_have_url(UUID_URL)

    panel = open_files(page)
    row = file_row(panel, "note.txt")
    expect(row).to_be_visible()
    expect(row.locator(".file-size")).to_have_text("6 B")
    expect(row.locator(".file-modified")).not_to_have_text("")
    row.get_by_role("button", name="note.txt").click()
    preview = panel.locator("#files-preview")
    expect(preview).to_be_visible()
    expect(preview.locator("#files-preview-title")).to_have_text("note.txt")
    expect(preview.locator("#files-preview-text")).to_have_text("hello\n")
    shot(page, "files-01-preview")

    with page.expect_download() as info:
        row.get_by_role("link", name="Download note.txt").click()
    download = info.value
    assert download.suggested_filename == "note.txt"
    assert open(download.path(), "rb").read() == b"hello\n"

    # The panel follows the chat: the next turn's file appears once it ends.
    send(page, "/tool bash mkdir -p out && echo second > out/two.txt")
    wait_idle(page)
    expect(file_row(panel, "out/two.txt")).to_be_visible()

    with page.expect_download() as info:
        panel.get_by_role("link", name="Download all (ZIP)").click()
    assert info.value.suggested_filename.endswith(".zip")
    names = zipfile.ZipFile(io.BytesIO(open(info.value.path(), "rb").read())).namelist()
    assert {"note.txt", "out/two.txt"} <= set(names)


def test_an_upload_appears_and_the_agent_reads_it_in_the_next_turn(context, web_user):
    expect = expect_()
    page = context.new_page()
    login(page, web_user)
    ws_open(page)

    # Uploading into a new chat creates the chat first.
    panel = open_files(page)
    panel.locator("#files-upload-input").set_input_files(
        files=[{"name": "uploaded.txt", "mimeType": "text/plain", "buffer": b"uploaded by the user\n"}]
    )
    expect(file_row(panel, "uploaded.txt")).to_be_visible()
    expect(panel.locator("#files-status")).to_have_text("Uploaded 1 file.")
    expect(page).to_have_url(UUID_URL)
    chat_id = page.url.rstrip("/").rsplit("/", 1)[-1]
    assert ChatSession.objects.filter(pk=chat_id, owner=web_user).exists()
    shot(page, "files-02-uploaded")

    send(page, "/tool bash cat uploaded.txt")
    expect(last_assistant(page).locator(".tool-output")).to_contain_text("uploaded by the user")
    wait_idle(page)

    # An image previews through ?inline=1 (allowed by the page's CSP, decoded as an image).
    panel.locator("#files-upload-input").set_input_files(
        files=[{"name": "dot.png", "mimeType": "image/png", "buffer": PNG}]
    )
    row = file_row(panel, "dot.png")
    expect(row).to_be_visible()
    row.get_by_role("button", name="dot.png").click()
    image = panel.locator("#files-preview-image")
    expect(image).to_be_visible()
    expect(image).to_have_attribute("src", re.compile(r"/files/dot\.png\?inline=1$"))
    page.wait_for_function(
        "() => document.getElementById('files-preview-image').naturalWidth > 0", timeout=10_000
    )

    # HTML is previewed as its source text, never rendered.
    panel.locator("#files-upload-input").set_input_files(
        files=[
            {
                "name": "page.html",
                "mimeType": "text/html",
                "buffer": b"<h1 id=pwn>hi</h1><script>x=1</script>",
            }
        ]
    )
    file_row(panel, "page.html").get_by_role("button", name="page.html").click()
    expect(panel.locator("#files-preview-text")).to_have_text("<h1 id=pwn>hi</h1><script>x=1</script>")
    assert page.locator("#pwn").count() == 0

    # The server's refusals are shown: over the upload limit (1 MB here), a name it refuses.
    panel.locator("#files-upload-input").set_input_files(
        files=[
            {"name": "big.bin", "mimeType": "application/octet-stream", "buffer": b"x" * (1024 * 1024 + 1)},
            {"name": "back\\slash.txt", "mimeType": "text/plain", "buffer": b"x"},
        ]
    )
    error = panel.locator("#files-error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("big.bin")
    expect(error).to_contain_text("upload limit")
    expect(error).to_contain_text("backslash")
    expect(file_row(panel, "big.bin")).to_have_count(0)


def test_tool_cards_of_file_edits_link_to_the_file(context, web_user):
    expect = expect_()
    page = context.new_page()
    login(page, web_user)
    ws_open(page)
    panel = open_files(page)
    panel.locator("#files-upload-input").set_input_files(
        files=[{"name": "edited.md", "mimeType": "text/markdown", "buffer": b"# Edited\n"}]
    )
    expect(file_row(panel, "edited.md")).to_be_visible()
    chat_id = page.url.rstrip("/").rsplit("/", 1)[-1]
    session = ChatSession.objects.get(pk=chat_id)
    # What the two backends' tool calls look like: Claude Code's file tools take absolute paths
    # inside the workspace (named after the chat's UUID), the api backend's also relative ones.
    parts = [
        {
            "type": "tool-Write",
            "toolCallId": "w1",
            "state": "output-available",
            "input": {
                "file_path": f"/srv/copilot/var/workspaces/{chat_id}/edited.md",
                "content": "# Edited\n",
            },
            "output": "ok",
        },
        {
            "type": "tool-Edit",
            "toolCallId": "e1",
            "state": "output-available",
            "input": {"file_path": "docs/../edited.md", "old_string": "a", "new_string": "b"},
            "output": "ok",
        },
        {
            "type": "tool-Write",
            "toolCallId": "w2",
            "state": "output-error",
            "input": {"file_path": "/etc/passwd", "content": "x"},
            "errorText": "denied",
        },
    ]
    message_append(
        session=session,
        role=ChatMessage.Role.USER,
        text="edit it",
        parts=[{"type": "text", "text": "edit it"}],
    )
    message_append(session=session, role=ChatMessage.Role.ASSISTANT, text="", parts=parts)
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    cards = page.locator(".msg.assistant .tool-card")
    expect(cards).to_have_count(3)
    for index in (0, 1):
        link = cards.nth(index).get_by_role("link", name="edited.md")
        expect(link).to_have_attribute("href", f"/api/v1/sessions/{chat_id}/files/edited.md")
    expect(cards.nth(2).locator(".tool-file")).to_have_count(0)  # outside the workspace: no link
    cards.nth(1).get_by_role("link", name="edited.md").click()
    panel = page.locator("#files-panel")
    expect(panel).to_be_visible()
    expect(panel.locator("#files-preview-title")).to_have_text("edited.md")
    expect(panel.locator("#files-preview-text")).to_have_text("# Edited\n")
    shot(page, "files-03-tool-card-link")


def test_the_panel_works_from_the_keyboard(context, web_user):
    expect = expect_()
    page = context.new_page()
    login(page, web_user)
    ws_open(page)
    opener = page.get_by_role("button", name="Files", exact=True)
    opener.focus()
    page.keyboard.press("Enter")
    panel = page.locator("#files-panel")
    expect(panel).to_be_visible()
    expect(opener).to_have_attribute("aria-expanded", "true")
    expect(panel).to_be_focused()
    page.keyboard.press("Tab")
    expect(panel.get_by_role("button", name="Refresh")).to_be_focused()
    page.keyboard.press("Escape")
    expect(panel).to_be_hidden()
    expect(opener).to_be_focused()
    expect(opener).to_have_attribute("aria-expanded", "false")


def test_workspace_relative_paths(context, web_user):
    page = context.new_page()
    login(page, web_user)
    cases = page.evaluate(
        """async () => {
          const f = await import('/static/chat/files.js');
          const id = '11111111-2222-3333-4444-555555555555';
          const paths = [
            `/var/ws/${id}/a.txt`, `/var/ws/${id}/dir/../b.txt`, `/var/ws/${id}/../other/x`,
            'rel/c.txt', './d.txt', '../e.txt', '~/notes.md', '/etc/passwd', '', `/var/ws/${id}/`,
          ];
          return paths.map((p) => f.workspaceRelative(p, [id]));
        }"""
    )
    assert cases == ["a.txt", "b.txt", None, "rel/c.txt", "d.txt", None, "home/notes.md", None, None, None]

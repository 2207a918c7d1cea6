"""The chat page in a real headless Chromium against a real daphne (see conftest.py)."""

from __future__ import annotations

import base64
import json
import re
import time

import pytest

from tests.browser.conftest import (
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


def assistant_words(page) -> list[str]:
    return last_assistant(page).locator(".msg-body").inner_text().split()


def test_login_send_stream_tool_and_reload(context, web_user, scripted_model):
    expect = expect_()
    page = context.new_page()
    login(page, web_user, screenshot="01-login")
    ws_open(page)
    # The offline model is discoverable.
    banner = page.locator("#offline-banner")
    expect(banner).to_be_visible()
    banner.locator("summary").click()
    expect(page.locator("#directive-list")).to_contain_text("/tool bash ls")
    shot(page, "02-empty-chat-offline-banner")

    # Shift+Enter adds a line (and the box grows); Enter sends.
    box = page.get_by_label("Message", exact=True)
    box.click()
    height = box.evaluate("(el) => el.offsetHeight")
    page.keyboard.type("line one")
    for _ in range(3):
        page.keyboard.press("Shift+Enter")
    page.keyboard.type("line two")
    expect(box).to_have_value("line one\n\n\nline two")
    assert box.evaluate("(el) => el.offsetHeight") > height
    assert page.locator(".msg").count() == 0
    box.fill("")

    send(page, "hello there")
    expect(page.locator(".msg.user").first).to_have_text(re.compile("hello there"))
    expect(last_assistant(page)).to_contain_text("Offline scripted model", timeout=20_000)
    wait_idle(page)
    expect(page).to_have_url(UUID_URL)
    chat_url = page.url
    # Usage of the turn in the footer; the session appears in the sidebar and gets a title.
    expect(last_assistant(page).locator(".usage")).to_contain_text(" in · ")
    current = page.locator("#session-list li.current .session-link")
    expect(current).to_have_count(1)
    expect(current).not_to_have_text("Untitled chat", timeout=10_000)
    expect(page.locator("#chat-title")).to_have_text(current.inner_text())

    # A tool call renders as a card with name, input and output.
    send(page, "/tool bash echo hi")
    card = last_assistant(page).locator(".tool-card")
    expect(card).to_have_count(1, timeout=20_000)
    expect(card.locator(".tool-name")).to_have_text("Bash")
    expect(card).to_have_attribute("data-state", "output-available", timeout=20_000)
    expect(card.locator(".tool-input")).to_contain_text("echo hi")
    expect(card.locator(".tool-output")).to_contain_text("hi")
    expect(last_assistant(page)).to_contain_text("Tool result", timeout=20_000)
    wait_idle(page)
    expect(last_assistant(page).get_by_role("button", name="Regenerate the last answer")).to_be_visible()
    shot(page, "03-tool-card")

    # Everything is persisted: a reload (and the shareable URL) shows the same conversation.
    page.goto(chat_url)
    page.wait_for_selector("body[data-ready=true]")
    expect(page.locator(".msg.user")).to_have_count(2)
    expect(page.locator(".tool-card .tool-output")).to_contain_text("hi")
    expect(page.locator(".msg.assistant").first).to_contain_text("Offline scripted model")

    # Phone width: the sidebar becomes a drawer behind a labelled toggle.
    page.set_viewport_size({"width": 390, "height": 800})
    toggle = page.get_by_role("button", name="Show chats")
    expect(toggle).to_be_visible()
    shot(page, "04-phone")
    toggle.click()
    expect(page.locator("#session-list .session-link").first).to_be_visible()
    page.wait_for_timeout(300)  # the drawer's slide-in transition
    shot(page, "05-phone-sidebar")


def test_regenerate_rename_and_delete(context, web_user, scripted_model):
    expect = expect_()
    page = context.new_page()
    login(page, web_user)
    ws_open(page)
    send(page, "first question")
    expect(last_assistant(page)).to_contain_text("first question", timeout=20_000)
    wait_idle(page)
    before = len(scripted_model.requests)
    last_assistant(page).get_by_role("button", name="Regenerate the last answer").click()
    # (The scripted reply can be over before a check of the Stop button: wait for the model call.)
    deadline = time.monotonic() + 20
    while len(scripted_model.requests) <= before and time.monotonic() < deadline:
        page.wait_for_timeout(50)
    assert len(scripted_model.requests) > before
    wait_idle(page)
    expect(last_assistant(page)).to_contain_text("first question")
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    # One reply on the chat's path; the old one is kept as its sibling (docs/browser.md "Branches").
    expect(page.locator(".msg.assistant")).to_have_count(1)
    expect(page.locator(".msg.user")).to_have_count(1)
    expect(last_assistant(page).locator(".branch-count")).to_have_text("2/2")

    item = page.locator("#session-list li.current")
    item.get_by_role("button", name=re.compile("^Rename chat")).click()
    title_box = page.get_by_label("New chat title")
    title_box.fill("Renamed <b>chat</b>")
    title_box.press("Enter")
    expect(page.locator("#session-list li.current .session-link")).to_have_text("Renamed <b>chat</b>")
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    expect(page.locator("#chat-title")).to_have_text("Renamed <b>chat</b>")

    page.locator("#session-list li.current").get_by_role("button", name=re.compile("^Delete chat")).click()
    dialog = page.locator("#confirm-dialog")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text("Renamed <b>chat</b>")
    shot(page, "05b-delete-confirm")
    dialog.get_by_role("button", name="Delete").click()
    page.wait_for_url(re.compile(r"/$"))
    page.wait_for_selector("body[data-ready=true]")
    expect(page.locator("#session-list li")).to_have_count(0)
    expect(page.locator("#session-empty")).to_be_visible()


def test_stop_a_slow_turn(context, web_user):
    expect = expect_()
    page = context.new_page()
    login(page, web_user)
    ws_open(page)
    expect(page.get_by_label("Message", exact=True)).to_be_focused()  # ready to type on load
    send(page, "/slow 200")
    expect(last_assistant(page)).to_contain_text("w2", timeout=20_000)
    stop = page.get_by_role("button", name="Stop")
    expect(stop).to_be_visible()
    shot(page, "06-streaming-stop-button")
    stop.click()
    expect(last_assistant(page).locator(".marker-stopped")).to_be_visible(timeout=10_000)
    wait_idle(page)
    words = assistant_words(page)
    time.sleep(0.6)  # three more /slow intervals: nothing else may arrive
    assert assistant_words(page) == words
    streamed = [w for w in words if re.fullmatch(r"w\d+", w)]
    assert 3 <= len(streamed) < 40, words
    shot(page, "07-stopped")
    # The stopped marker survives a refresh.
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    expect(page.locator(".marker-stopped")).to_have_count(1)


PARTIAL_SAVED = """async () => {
  const id = window.__chat.state.chatId;
  const r = await fetch(`/api/v1/sessions/${id}/messages/?limit=200&before=2147483647`);
  const data = await r.json();
  const last = data.results[data.results.length - 1];
  return Boolean(last && last.role === 'assistant' && last.text.includes('w'));
}"""


def test_refresh_mid_turn_shows_every_chunk_once(context, web_user):
    expect = expect_()
    page = context.new_page()
    login(page, web_user)
    ws_open(page)
    send(page, "/slow 80 50")
    expect(last_assistant(page)).to_contain_text("w3", timeout=20_000)
    # Refresh once the partial answer is also in the saved history (the server saves it every
    # few seconds): the page must not show it twice (history + replay).
    deadline = time.monotonic() + 10
    while not page.evaluate(PARTIAL_SAVED):
        assert time.monotonic() < deadline, "the partial answer was never saved"
        page.wait_for_timeout(200)
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    expect(page.get_by_role("button", name="Stop")).to_be_visible()  # it learned the turn is running
    expect(last_assistant(page)).to_contain_text("w49", timeout=20_000)
    wait_idle(page)
    assert page.locator(".msg.assistant").count() == 1
    words = [w for w in assistant_words(page) if re.fullmatch(r"w\d+", w)]
    assert words == [f"w{i}" for i in range(50)]
    shot(page, "08-after-refresh")


def test_dropped_connection_reconnects_and_resumes(context, web_user):
    expect = expect_()
    page = context.new_page()
    login(page, web_user)
    ws_open(page)
    send(page, "/slow 80 30")
    expect(last_assistant(page)).to_contain_text("w3", timeout=20_000)
    page.evaluate("window.__chat.socket.ws.close()")  # the network drops
    expect(last_assistant(page)).to_contain_text("w29", timeout=20_000)
    wait_idle(page)
    words = [w for w in assistant_words(page) if re.fullmatch(r"w\d+", w)]
    assert words == [f"w{i}" for i in range(30)]


def test_two_tabs_both_stream_and_second_send_is_refused_gently(context, web_user):
    expect = expect_()
    first = context.new_page()
    login(first, web_user)
    ws_open(first)
    send(first, "hello")
    wait_idle(first)
    expect(first).to_have_url(UUID_URL)
    second = context.new_page()
    second.goto(first.url)
    second.wait_for_selector("body[data-ready=true]")
    ws_open(second)

    send(first, "/slow 100 25")
    expect(last_assistant(first)).to_contain_text("w1", timeout=20_000)
    # The second tab did not know; its Send is refused by the server and it follows the turn.
    send(second, "me too")
    expect(second.locator("#notice")).to_contain_text("already being written")
    expect(last_assistant(second)).to_contain_text("w3", timeout=20_000)
    shot(second, "09-second-tab")
    for page in (first, second):
        expect(last_assistant(page)).to_contain_text("w24", timeout=20_000)
        wait_idle(page)
        words = [w for w in assistant_words(page) if re.fullmatch(r"w\d+", w)]
        assert words == [f"w{i}" for i in range(25)]
    # The refused text was given back, and nothing of it reached the server.
    expect(second.locator("#input")).to_have_value("me too")
    assert second.locator(".msg.user").count() == 2


def test_error_shows_retry_and_survives_refresh(context, web_user, scripted_model):
    expect = expect_()
    page = context.new_page()
    login(page, web_user)
    ws_open(page)
    send(page, "/error 500")
    error = page.locator(".marker-retryable_error, .marker-error").last
    expect(error).to_be_visible(timeout=20_000)
    wait_idle(page)
    shot(page, "10-error")
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    marker = page.locator(".marker-retryable_error")
    expect(marker).to_have_count(1)
    before = len(scripted_model.requests)
    marker.get_by_role("button", name="Retry").click()
    expect(page.locator(".marker-retryable_error, .marker-error")).to_have_count(1, timeout=20_000)
    wait_idle(page)
    assert len(scripted_model.requests) > before  # the retry ran a new model call
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    expect(page.locator(".marker-retryable_error")).to_have_count(1)  # stale markers were replaced
    expect(page.locator(".msg.user")).to_have_count(1)  # the retry did not duplicate the message


def test_hostile_content_is_rendered_inert(context, web_user):
    expect = expect_()
    page = context.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    login(page, web_user)
    ws_open(page)
    hostile = "<img src=x onerror=alert(1)> <script>alert(2)</script> [x](javascript:alert(3)) **b**"
    send(page, hostile)
    # The model's echo repeats the text: both copies must show literally.
    expect(last_assistant(page)).to_contain_text("<img src=x onerror=alert(1)>", timeout=20_000)
    wait_idle(page)
    expect(page.locator(".msg.user").last).to_contain_text(hostile)
    expect(last_assistant(page)).to_contain_text("<script>alert(2)</script>")
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    expect(last_assistant(page)).to_contain_text("<img src=x onerror=alert(1)>")
    assert page.locator("#messages img").count() == 0
    assert page.locator("#messages script").count() == 0
    hrefs = page.locator("#messages a").evaluate_all("as => as.map(a => a.getAttribute('href'))")
    assert not any(h and h.lower().startswith("javascript") for h in hrefs), hrefs
    page.wait_for_timeout(300)
    assert dialogs == []
    shot(page, "11-xss-inert")


def test_markdown_renders_safely_with_copy_buttons(context, web_user):
    """Markdown structure from the renderer itself (the offline model only echoes)."""
    expect = expect_()
    page = context.new_page()
    login(page, web_user)
    source = "# Title\n\nSome **bold** and `code` <b>x</b>\n\n```python\nprint('<hi>')\n```\n\n- one\n- [two](https://example.com)\n"
    result = page.evaluate(
        """async (src) => {
          const md = await import('/static/chat/markdown.js');
          const div = document.createElement('div');
          div.append(md.renderMarkdown(src));
          return {
            h: div.querySelector('h2')?.textContent,
            strong: div.querySelector('strong')?.textContent,
            code: div.querySelector('pre code')?.textContent,
            copy: div.querySelectorAll('.copy-btn').length,
            items: div.querySelectorAll('li').length,
            href: div.querySelector('a')?.getAttribute('href'),
            rel: div.querySelector('a')?.getAttribute('rel'),
            b: div.querySelectorAll('b').length,
            text: div.textContent,
          };
        }""",
        source,
    )
    assert result["h"] == "Title"
    assert result["strong"] == "bold"
    assert result["code"] == "print('<hi>')"
    assert result["copy"] == 1
    assert result["items"] == 2
    assert result["href"] == "https://example.com/"
    assert "noopener" in result["rel"]
    assert result["b"] == 0 and "<b>x</b>" in result["text"]
    expect(page.locator("body")).to_be_visible()


def test_image_attachment_reaches_the_server(context, web_user, scripted_model):
    expect = expect_()
    page = context.new_page()
    login(page, web_user)
    ws_open(page)
    page.locator("#file-input").set_input_files([{"name": "red.png", "mimeType": "image/png", "buffer": PNG}])
    expect(page.locator("#attachments img.pending-thumb")).to_have_count(1)
    # Limits are enforced client-side with an explanation.
    page.locator("#file-input").set_input_files(
        [{"name": "tool.exe", "mimeType": "application/x-msdownload", "buffer": b"MZ"}]
    )
    expect(page.locator("#notice")).to_contain_text("not allowed")
    expect(page.locator("#attachments li")).to_have_count(1)
    shot(page, "12-attachment-pending")
    mark = len(scripted_model.requests)
    send(page, "what is in this picture")
    expect(page.locator(".msg.user img")).to_have_count(1)
    expect(last_assistant(page)).to_contain_text("Offline scripted model", timeout=20_000)
    wait_idle(page)
    bodies = [json.dumps(r.get("body")) for r in list(scripted_model.requests)[mark:]]
    assert any('"type": "image"' in b and base64.b64encode(PNG).decode() in b for b in bodies)
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    expect(page.locator(".msg.user img")).to_have_count(1)
    shot(page, "13-attachment-sent")

    # Drag and drop attaches too (a real drop event carrying a File).
    page.evaluate(
        """(b64) => {
          const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
          const dt = new DataTransfer();
          dt.items.add(new File([bytes], 'dropped.png', { type: 'image/png' }));
          const target = document.getElementById('main');
          for (const type of ['dragenter', 'dragover', 'drop']) {
            target.dispatchEvent(new DragEvent(type, { dataTransfer: dt, bubbles: true, cancelable: true }));
          }
        }""",
        base64.b64encode(PNG).decode(),
    )
    expect(page.locator("#attachments img.pending-thumb")).to_have_count(1)
    expect(page.locator("#attachments")).to_contain_text("dropped.png")
    expect(page.locator("#drop-overlay")).to_be_hidden()


def test_auto_scroll_stops_when_the_user_scrolls_up(context, web_user):
    expect = expect_()
    page = context.new_page()
    page.set_viewport_size({"width": 900, "height": 520})
    login(page, web_user)
    ws_open(page)
    send(page, "/long 700")
    expect(last_assistant(page)).to_contain_text("w699", timeout=20_000)
    wait_idle(page)
    at_bottom = (
        "() => { const s = document.getElementById('scroller'); "
        "return s.scrollHeight - s.scrollTop - s.clientHeight < 60; }"
    )
    page.wait_for_function(at_bottom, timeout=3_000)  # followed the stream down
    send(page, "/slow 40 60")
    expect(last_assistant(page)).to_contain_text("w5", timeout=20_000)
    page.locator("#scroller").evaluate("(s) => { s.scrollTop = 0; }")
    expect(page.locator("#jump")).to_be_visible()
    expect(last_assistant(page)).to_contain_text("w59", timeout=20_000)
    assert page.locator("#scroller").evaluate("(s) => s.scrollTop") < 50  # left where the user is
    page.locator("#jump").click()
    page.wait_for_function(at_bottom, timeout=3_000)
    expect(page.locator("#jump")).to_be_hidden()
    wait_idle(page)
    page.reload()  # a long chat opens at its newest message
    page.wait_for_selector("body[data-ready=true]")
    page.wait_for_function(at_bottom, timeout=3_000)

"""The chat page's steering UI (issue #17) in a real Chromium against a real daphne: the per-chat
settings dialog (model, instructions, tool mode, max steps: GET /api/v1/models/, GET/PATCH
/api/v1/sessions/<id>/) and tool approval on the tool card (CONTRACT §6: tool-approval-request,
the answer sent the way the AI SDK's ``addToolApprovalResponse`` sends it, the same assistant
message continued), including a reload while an approval is pending and a second tab.

The offline scripted model's ``/tool bash <command>`` makes it call Bash; in a chat whose
tool_mode is ``ask`` the server asks before running it.
"""

from __future__ import annotations

import re

import pytest

from chat.models import ChatSession, ChatTurn
from tests.browser.conftest import (
    FAST_RETRIES_ENV,
    UUID_URL,
    expect_,
    last_assistant,
    login,
    open_settings,
    send,
    shot,
    wait_idle,
    ws_open,
)

pytestmark = [pytest.mark.browser]

INSTRUCTIONS_MAX = 200
OTHER_MODEL = "claude-haiku-steering-test"
OTHER_MODEL_NAME = "Haiku for the steering test"


@pytest.fixture(scope="module")
def live_app_env():
    return {
        **FAST_RETRIES_ENV,
        "AGENT_MODEL": "claude-sonnet-5-5",
        "AGENT_MODELS": f"claude-sonnet-5-5=Claude Sonnet 5.5,{OTHER_MODEL}={OTHER_MODEL_NAME}",
        "AGENT_INSTRUCTIONS_MAX_CHARS": str(INSTRUCTIONS_MAX),
    }


def ask_mode_chat(page) -> str:
    """A new chat switched to "Ask before running commands" through the dialog (which creates
    the session first); returns its id."""
    dialog = open_settings(page)
    dialog.get_by_label("Ask before running commands").check()
    dialog.get_by_role("button", name="Save").click()
    expect_()(dialog).to_be_hidden()
    expect_()(page).to_have_url(UUID_URL)
    chat_id = page.url.rstrip("/").rsplit("/", 1)[-1]
    assert ChatSession.objects.get(pk=chat_id).tool_mode == "ask"
    return chat_id


def approval_card(page):
    return last_assistant(page).locator(".tool-card").last


def test_settings_dialog_saves_and_shows_the_saved_values(context, web_user):
    expect = expect_()
    page = context.new_page()
    login(page, web_user)
    ws_open(page)

    # Keyboard: the button opens the dialog, Escape closes it and gives the focus back.
    opener = page.get_by_role("button", name="Chat settings")
    opener.focus()
    page.keyboard.press("Enter")
    dialog = page.get_by_role("dialog", name="Chat settings")
    expect(dialog).to_be_visible()
    expect(dialog.get_by_label("Model")).to_be_focused()
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    expect(opener).to_be_focused()
    expect(page).to_have_url(re.compile(r"/$"))  # nothing was created by looking

    dialog = open_settings(page)
    model = dialog.get_by_label("Model")
    expect(model.locator("option")).to_have_count(2)
    expect(model).to_have_value("claude-sonnet-5-5")  # the server default
    expect(dialog.get_by_label("Run freely")).to_be_checked()
    expect(dialog.get_by_label("Max steps")).to_have_value("0")
    # The limit (a server setting) is known up front: the count says what is left.
    expect(dialog.locator("#settings-instructions-count")).to_have_text(
        f"{INSTRUCTIONS_MAX} of {INSTRUCTIONS_MAX} characters left"
    )

    model.select_option(label=OTHER_MODEL_NAME)
    dialog.get_by_label("Instructions").fill("Answer in <b>short</b> sentences.")
    expect(dialog.locator("#settings-instructions-count")).to_contain_text(
        f"{INSTRUCTIONS_MAX - len('Answer in <b>short</b> sentences.')} of {INSTRUCTIONS_MAX}"
    )
    dialog.get_by_label("Ask before running commands").check()
    dialog.get_by_label("Max steps").fill("7")
    shot(page, "steering-01-settings")
    dialog.get_by_role("button", name="Save").click()
    expect(dialog).to_be_hidden()
    # A new chat: the dialog created the session first, then saved its settings.
    expect(page).to_have_url(UUID_URL)
    expect(page.locator("#notice")).to_contain_text("settings saved")
    chat_id = page.url.rstrip("/").rsplit("/", 1)[-1]
    session = ChatSession.objects.get(pk=chat_id)
    assert (session.owner_id, session.model, session.tool_mode, session.max_steps) == (
        web_user.pk,
        OTHER_MODEL,
        "ask",
        7,
    )
    assert session.instructions == "Answer in <b>short</b> sentences."

    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    dialog = open_settings(page)
    expect(dialog.get_by_label("Model")).to_have_value(OTHER_MODEL)
    expect(dialog.get_by_label("Instructions")).to_have_value("Answer in <b>short</b> sentences.")
    expect(dialog.get_by_label("Ask before running commands")).to_be_checked()
    expect(dialog.get_by_label("Max steps")).to_have_value("7")

    # Too long: the server refuses with its message; nothing changes; the dialog stays open.
    dialog.get_by_label("Instructions").fill("x" * (INSTRUCTIONS_MAX + 5))
    expect(dialog.locator("#settings-instructions-count")).to_contain_text("5 characters over")
    dialog.get_by_role("button", name="Save").click()
    error = dialog.locator("#settings-error")
    expect(error).to_be_visible()
    expect(error).to_contain_text(f"longer than {INSTRUCTIONS_MAX} characters")
    expect(dialog.get_by_label("Instructions")).to_have_attribute("aria-invalid", "true")
    expect(dialog.get_by_label("Instructions")).to_be_focused()
    shot(page, "steering-02-settings-error")
    session.refresh_from_db()
    assert session.instructions == "Answer in <b>short</b> sentences."
    dialog.get_by_role("button", name="Cancel").click()
    expect(dialog).to_be_hidden()

    # The chat's turns run on the chosen model.
    send(page, "hello model")
    expect(last_assistant(page)).to_contain_text("hello model", timeout=20_000)
    wait_idle(page)
    assert ChatTurn.objects.filter(session_id=chat_id).latest("started_at").model == OTHER_MODEL


def test_approve_runs_the_tool_in_the_same_message(context, web_user):
    expect = expect_()
    page = context.new_page()
    login(page, web_user)
    ws_open(page)
    ask_mode_chat(page)

    send(page, "/tool bash echo approved-run")
    card = approval_card(page)
    expect(card).to_have_attribute("data-state", "approval-requested", timeout=20_000)
    box = card.locator(".approval")
    expect(box).to_contain_text("Approval needed: Bash")
    expect(box.locator(".approval-command")).to_have_text("echo approved-run")
    expect(box).to_be_focused()  # the focus moved to the request
    expect(page.locator("body > .sr-only[aria-live]")).to_have_text("Approval needed: Bash")
    expect(page.get_by_role("button", name="Send")).to_be_visible()  # the request's stream ended
    expect(card.get_by_role("button", name="Regenerate the last answer")).to_have_count(0)
    shot(page, "steering-03-approval")

    page.keyboard.press("Tab")  # the reason field, then Approve
    expect(card.get_by_label("Reason for denying (optional)")).to_be_focused()
    page.keyboard.press("Tab")
    expect(card.get_by_role("button", name="Approve")).to_be_focused()
    page.keyboard.press("Enter")

    expect(card.locator(".tool-output")).to_contain_text("approved-run", timeout=20_000)
    expect(card).to_have_attribute("data-state", "output-available")
    expect(card.locator(".approval-result")).to_have_text("Approved.")
    expect(last_assistant(page)).to_contain_text("Tool result", timeout=20_000)
    wait_idle(page)
    # One assistant message: the answer continued it instead of starting another.
    expect(page.locator(".msg.assistant")).to_have_count(1)
    expect(page.locator(".msg.user")).to_have_count(1)
    shot(page, "steering-04-approved")

    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    expect(page.locator(".msg.assistant")).to_have_count(1)
    expect(page.locator(".tool-card .tool-output")).to_contain_text("approved-run")
    expect(last_assistant(page)).to_contain_text("Tool result")


def test_deny_with_a_reason(context, web_user):
    expect = expect_()
    page = context.new_page()
    login(page, web_user)
    ws_open(page)
    ask_mode_chat(page)

    send(page, "/tool bash echo denied-run")
    card = approval_card(page)
    expect(card).to_have_attribute("data-state", "approval-requested", timeout=20_000)
    reason = card.get_by_label("Reason for denying (optional)")
    reason.fill("not <b>today</b>")
    reason.press("Enter")  # Enter in the reason field denies

    expect(card).to_have_attribute("data-state", "output-denied", timeout=20_000)
    expect(card.locator(".approval-result")).to_contain_text("Denied")
    expect(card.locator(".approval-result")).to_contain_text("not <b>today</b>")
    expect(card.locator(".tool-status")).to_contain_text("denied")
    expect(last_assistant(page)).to_contain_text("Tool error:", timeout=20_000)
    expect(last_assistant(page)).to_contain_text("denied")
    wait_idle(page)
    expect(page.locator(".msg.assistant")).to_have_count(1)
    expect(card.locator(".tool-output")).to_be_hidden()  # it never ran
    shot(page, "steering-05-denied")

    # Denied is what a reload shows too (the saved tool part: output-denied with the reason).
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    card = approval_card(page)
    expect(card).to_have_attribute("data-state", "output-denied")
    expect(card.locator(".approval-result")).to_contain_text("Denied — not <b>today</b>")
    expect(card.get_by_role("button", name="Approve")).to_have_count(0)


def test_a_pending_approval_survives_a_reload(context, web_user):
    expect = expect_()
    page = context.new_page()
    login(page, web_user)
    ws_open(page)
    ask_mode_chat(page)

    send(page, "/tool bash echo after-reload")
    expect(approval_card(page)).to_have_attribute("data-state", "approval-requested", timeout=20_000)
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    ws_open(page)
    card = approval_card(page)
    expect(card).to_have_attribute("data-state", "approval-requested")
    expect(card.locator(".approval-command")).to_have_text("echo after-reload")
    expect(card.locator(".approval")).to_be_focused()
    expect(page.locator(".msg.assistant")).to_have_count(1)

    # A new message is not sent while the turn waits for the answer.
    send(page, "something else")
    expect(page.locator("#notice")).to_contain_text("Approve or Deny")
    expect(page.locator(".msg.user")).to_have_count(1)
    page.locator("#input").fill("")

    card.get_by_role("button", name="Approve").click()
    expect(card.locator(".tool-output")).to_contain_text("after-reload", timeout=20_000)
    expect(last_assistant(page)).to_contain_text("Tool result", timeout=20_000)
    wait_idle(page)
    expect(page.locator(".msg.assistant")).to_have_count(1)


def test_an_answer_in_another_tab_clears_the_card(context, web_user):
    expect = expect_()
    first = context.new_page()
    login(first, web_user)
    ws_open(first)
    ask_mode_chat(first)
    send(first, "/tool bash echo other-tab")
    expect(approval_card(first)).to_have_attribute("data-state", "approval-requested", timeout=20_000)

    second = context.new_page()
    second.goto(first.url)
    second.wait_for_selector("body[data-ready=true]")
    ws_open(second)
    card = approval_card(second)
    expect(card).to_have_attribute("data-state", "approval-requested")
    card.get_by_role("button", name="Approve").click()
    expect(card.locator(".tool-output")).to_contain_text("other-tab", timeout=20_000)

    # The first tab watched the waiting turn: the answer given elsewhere reaches it.
    first_card = approval_card(first)
    expect(first_card.get_by_role("button", name="Approve")).to_be_hidden(timeout=20_000)
    expect(first_card.locator(".tool-output")).to_contain_text("other-tab", timeout=20_000)
    for page in (first, second):
        expect(last_assistant(page)).to_contain_text("Tool result", timeout=20_000)
        wait_idle(page)
        expect(page.locator(".msg.assistant")).to_have_count(1)


def test_parallel_calls_are_answered_together(context, web_user):
    """Two tool calls of one step each ask; the answers go out once both have one (the AI SDK's
    lastAssistantMessageIsCompleteWithApprovalResponses), and both continue the same message."""
    expect = expect_()
    page = context.new_page()
    login(page, web_user)
    ws_open(page)
    ask_mode_chat(page)
    send(page, "/tools 2")
    waiting = page.locator('.tool-card[data-state="approval-requested"]')
    expect(waiting.first).to_be_visible(timeout=20_000)
    first = waiting.first
    first.get_by_role("button", name="Approve").click()
    second = page.locator('.tool-card[data-state="approval-requested"]')
    expect(second).to_have_count(1, timeout=20_000)
    reason = second.get_by_label("Reason for denying (optional)")
    reason.fill("only one")
    second.get_by_role("button", name="Deny").click()
    cards = last_assistant(page).locator(".tool-card")
    expect(cards).to_have_count(2)
    expect(cards.nth(0).locator(".tool-output")).to_contain_text("tool-0", timeout=20_000)
    expect(cards.nth(1)).to_have_attribute("data-state", "output-denied", timeout=20_000)
    wait_idle(page)
    expect(page.locator(".msg.assistant")).to_have_count(1)


CAPTURE_SENDS = """() => {
  const socket = window.__chat.socket;
  window.__captured = [];
  window.__realSend = socket.send.bind(socket);
  socket.send = (frame) => {
    if (frame.type === 'send') window.__captured.push(frame);
    else window.__realSend(frame);
  };
}"""

DISPATCH = """([requestId, frames]) => {
  const ws = window.__chat.socket.ws;
  for (const f of frames) {
    ws.dispatchEvent(new MessageEvent('message', {data: JSON.stringify({requestId, ...f})}));
  }
}"""

CANCEL = """async () => {
  const token = document.cookie.match(/csrftoken=([^;]+)/)[1];
  const id = window.__chat.state.chatId;
  await fetch(`/api/v1/sessions/${id}/cancel/`, {method: 'POST', headers: {'X-CSRFToken': token}});
}"""


def test_the_answer_frame_a_refused_answer_and_an_expired_request(context, web_user):
    """The answer is the AI SDK's: a submit-message whose last message is the assistant message
    with the tool part approval-responded. A refused answer is shown and the page re-reads the
    chat (the card comes back); an expired request shows as expired. The refusal and the expiry
    are fed to the page (the server's real ones take TOOL_APPROVAL_TIMEOUT_SECONDS)."""
    expect = expect_()
    page = context.new_page()
    login(page, web_user)
    ws_open(page)
    ask_mode_chat(page)
    send(page, "/tool bash echo refused-once")
    card = approval_card(page)
    expect(card).to_have_attribute("data-state", "approval-requested", timeout=20_000)
    approval_id = page.evaluate(
        "() => document.querySelector('.tool-card[data-state=approval-requested]')"
        ".closest('.msg')._view.pendingApprovals()[0].approval.id"
    )

    page.evaluate(CAPTURE_SENDS)
    card.get_by_role("button", name="Approve").click()
    frame = page.evaluate("() => window.__captured[0]")
    assert frame["type"] == "send" and frame["trigger"] == "submit-message"
    message = frame["messages"][-1]
    assert len(frame["messages"]) == 1 and message["role"] == "assistant"
    assert frame["messageId"] == message["id"] and message["id"].startswith("msg-")
    tools = [p for p in message["parts"] if p["type"] == "tool-Bash"]
    assert len(tools) == 1
    assert tools[0]["state"] == "approval-responded"
    assert tools[0]["approval"] == {"id": approval_id, "approved": True}
    assert tools[0]["input"]["command"] == "echo refused-once"
    assert any(p["type"] == "text" for p in message["parts"])

    # The server refuses it: the page says so and shows the chat as it is (still waiting).
    page.evaluate("() => { window.__chat.socket.send = window.__realSend; }")
    page.evaluate(
        DISPATCH,
        [
            frame["requestId"],
            [
                {
                    "type": "error",
                    "code": "invalid_request",
                    "errorText": "This approval request has expired or was already answered.",
                }
            ],
        ],
    )
    expect(page.locator("#notice")).to_contain_text("expired or was already answered")
    card = approval_card(page)
    expect(card).to_have_attribute("data-state", "approval-requested", timeout=20_000)
    expect(page.locator(".msg.assistant")).to_have_count(1)
    card.get_by_role("button", name="Approve").click()
    expect(card.locator(".tool-output")).to_contain_text("refused-once", timeout=20_000)
    wait_idle(page)

    # An expired request (tool-approval-response approved=false with the reason, then
    # tool-output-denied) shows as expired, without buttons.
    send(page, "/tool bash echo never-run")
    card = approval_card(page)
    expect(card).to_have_attribute("data-state", "approval-requested", timeout=20_000)
    watch = page.evaluate(
        "() => { const s = window.__chat.state.stream;"
        " return {watch: Boolean(s && s.watch), requestId: s && s.requestId, last: s && s.lastSequence,"
        " approvalId: s && s.view.pendingApprovals()[0].approval.id,"
        " toolCallId: s && s.view.pendingApprovals()[0].id}; }"
    )
    assert watch["watch"], "the tab watches the waiting turn"
    reason = "No answer within 10 minutes: the approval request expired."
    page.evaluate(
        DISPATCH,
        [
            watch["requestId"],
            [
                {
                    "type": "chunk",
                    "sequence": watch["last"] + 1,
                    "chunk": {
                        "type": "tool-approval-response",
                        "approvalId": watch["approvalId"],
                        "approved": False,
                        "reason": reason,
                    },
                },
                {
                    "type": "chunk",
                    "sequence": watch["last"] + 2,
                    "chunk": {"type": "tool-output-denied", "toolCallId": watch["toolCallId"]},
                },
            ],
        ],
    )
    expect(card).to_have_attribute("data-state", "output-denied")
    expect(card).to_have_attribute("data-approval", "expired")
    expect(card.locator(".approval-result")).to_have_text(f"Expired — {reason}")
    expect(card.get_by_role("button", name="Approve")).to_have_count(0)
    page.evaluate(CANCEL)  # the real request still waits on the server: stop that turn
    wait_idle(page)


PREVIEW = """async ([tool, input]) => {
  const steering = await import('/static/chat/steering.js');
  const div = document.createElement('div');
  div.id = 'preview-under-test';
  div.append(...steering.approvalPreview(tool, input));
  document.body.append(div);
  return div.textContent;
}"""


def test_approval_previews_of_edits_and_plans_are_inert(context, web_user):
    """Edit/MultiEdit show a line diff, Write the path and content, ExitPlanMode the plan as
    sanitised Markdown; untrusted text stays text (the scripted model calls only Bash, so the
    renderer is driven directly, on the page with its CSP)."""
    expect = expect_()
    page = context.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    login(page, web_user)
    preview = page.locator("#preview-under-test")

    page.evaluate(
        PREVIEW,
        [
            "Edit",
            {
                "file_path": "app/<script>alert(1)</script>.py",
                "old_string": "a = 1\nb = <img src=x onerror=alert(2)>\nc = 3",
                "new_string": "a = 1\nb = 2\nc = 3\nd = 4",
            },
        ],
    )
    expect(preview.locator(".approval-path")).to_have_text("app/<script>alert(1)</script>.py")
    assert preview.locator(".diff-del").all_inner_texts() == ["- b = <img src=x onerror=alert(2)>\n"]
    assert [t.strip() for t in preview.locator(".diff-add").all_inner_texts()] == ["+ b = 2", "+ d = 4"]
    assert [t.strip() for t in preview.locator(".diff-ctx").all_inner_texts()] == ["a = 1", "c = 3"]
    assert preview.locator("script, img").count() == 0
    page.evaluate("document.getElementById('preview-under-test').remove()")

    page.evaluate(
        PREVIEW,
        [
            "MultiEdit",
            {
                "file_path": "x.txt",
                "edits": [{"old_string": "one", "new_string": "two"}, {"old_string": "3"}],
            },
        ],
    )
    expect(preview).to_contain_text("Change 1 of 2")
    expect(preview).to_contain_text("Change 2 of 2")
    page.evaluate("document.getElementById('preview-under-test').remove()")

    page.evaluate(PREVIEW, ["Write", {"file_path": "notes.md", "content": "<b>hi</b>\nline 2"}])
    expect(preview.locator(".approval-content")).to_have_text("<b>hi</b>\nline 2")
    page.evaluate("document.getElementById('preview-under-test').remove()")

    plan = (
        "# The plan\n\n1. Read `setup.py`\n2. **Fix** the bug\n\n"
        "<img src=x onerror=alert(3)> [click](javascript:alert(4)) <script>alert(5)</script>"
    )
    page.evaluate(PREVIEW, ["ExitPlanMode", {"plan": plan}])
    expect(preview.locator(".approval-plan h2")).to_have_text("The plan")
    expect(preview.locator(".approval-plan ol li")).to_have_count(2)
    expect(preview.locator(".approval-plan strong")).to_have_text("Fix")
    expect(preview.locator(".approval-plan")).to_contain_text("<img src=x onerror=alert(3)>")
    assert preview.locator("script, img, a[href^=javascript]").count() == 0
    page.wait_for_timeout(200)
    assert dialogs == []

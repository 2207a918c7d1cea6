"""Live supervision in a real browser: a user's slow turn runs on a real daphne (started through the
API, whose client then goes away); an operator opens the session's admin page in Chromium, watches
the text arrive, presses Stop, and the turn ends stopped. A non-staff user is refused by the
supervision endpoint."""

from __future__ import annotations

import json
import time
import uuid

import httpx
import pytest

from audit.models import AuditEvent
from chat.apikeys import api_key_create
from chat.models import ChatSession, ChatTurn
from tests.api.conftest import chat_body
from tests.browser.conftest import PASSWORD, expect_, login, shot

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def operator(django_user_model, live_app):
    return django_user_model.objects.create_superuser(
        username="operator", password=PASSWORD, email="operator@example.com"
    )


def start_slow_turn(
    base_url: str, user, text: str, *, chat_id: str | None = None, until: str = "text-delta"
) -> ChatTurn:
    """POST /api/v1/chat/ as ``user``, read until a chunk of type ``until`` arrives, then hang up:
    the turn runs on in the server."""
    key = api_key_create(owner=user, name="supervised")[1]
    chat_id = chat_id or str(uuid.uuid4())
    with (
        httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client,
        client.stream("POST", "/api/v1/chat/", json=chat_body(chat_id, text)) as response,
    ):
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data:") and json.loads(line[5:]).get("type") == until:
                break
    return ChatTurn.objects.filter(session__owner=user).latest("started_at")


def wait_for_status(turn: ChatTurn, timeout: float = 20.0) -> ChatTurn:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        turn.refresh_from_db()
        if turn.status != ChatTurn.Status.RUNNING:
            return turn
        time.sleep(0.1)
    raise AssertionError(f"turn {turn.pk} still running after {timeout}s")


def admin_login(page, user) -> None:
    page.goto("/admin/login/")
    page.fill("#id_username", user.username)
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_url("**/admin/")


def test_operator_watches_a_running_turn_and_stops_it(context, live_app, web_user, operator):
    expect = expect_()
    turn = start_slow_turn(live_app, web_user, "/slow 200 100")  # 20 s unless stopped
    page = context.new_page()
    admin_login(page, operator)
    page.goto(f"/admin/chat/chatsession/{turn.session_id}/change/")
    panel = page.locator("#live-turn")
    expect(panel).to_have_attribute("data-state", "streaming")
    output = panel.locator(".live-output")
    expect(output).to_contain_text("w0 w1 w2 w3")  # replayed from the first chunk, then live
    seen = output.inner_text()
    expect(output).not_to_have_text(seen)  # still growing: live
    shot(page, "supervision-streaming")

    panel.get_by_role("button", name="Stop the turn").click()
    expect(panel.locator(".live-status")).to_have_text("The turn has ended (stopped).")
    expect(output).to_contain_text("Asked the running turn to stop.")
    shot(page, "supervision-stopped")
    assert wait_for_status(turn).status == ChatTurn.Status.STOPPED
    assert "w99" not in output.inner_text()
    event = AuditEvent.objects.get(action="chatsession.stop_turn")
    assert event.actor == operator and event.target_id == str(turn.session_id)

    # The page of a turn that is over offers nothing to watch.
    page.goto(f"/admin/chat/chatturn/{turn.pk}/change/")
    expect(page.locator("#live-turn .live-status")).to_have_text("No turn is running.")
    expect(page.get_by_role("button", name="Stop the turn")).to_be_disabled()


def test_operator_sees_a_tool_call_waiting_for_approval_and_stops_it(context, live_app, web_user, operator):
    """Tool calls are shown plainly; a turn waiting for its user's approval pauses the stream
    (the turn holds its place) and can still be stopped from the admin."""
    expect = expect_()
    chat_id = str(uuid.uuid4())
    ChatSession.objects.create(owner=web_user, client_id=chat_id, tool_mode="ask")
    turn = start_slow_turn(
        live_app, web_user, "/tool bash echo supervised", chat_id=chat_id, until="tool-approval-request"
    )
    page = context.new_page()
    admin_login(page, operator)
    page.goto(f"/admin/chat/chatturn/{turn.pk}/change/")
    panel = page.locator("#live-turn")
    expect(panel).to_have_attribute("data-state", "waiting")
    expect(panel.locator(".live-tool")).to_contain_text("⚙ Bash")
    expect(panel.locator(".live-tool")).to_contain_text("echo supervised")
    expect(panel.locator(".live-output")).to_contain_text("waiting for the user's approval")
    shot(page, "supervision-waiting")
    panel.get_by_role("button", name="Stop the turn").click()
    expect(panel.locator(".live-status")).to_have_text("The turn has ended (stopped).")
    assert wait_for_status(turn).status == ChatTurn.Status.STOPPED


def test_a_non_staff_user_is_refused(context, live_app, web_user):
    turn = start_slow_turn(live_app, web_user, "/slow 100 30")
    url = f"/admin/chat/chatsession/{turn.session_id}/live/stream/"
    page = context.new_page()
    login(page, web_user)  # the chat's own owner, signed in
    response = page.request.get(url)
    assert response.status == 403 and "for staff" in response.text()
    assert httpx.get(f"{live_app}{url}", timeout=10).status_code == 403  # anonymous
    wait_for_status(turn, timeout=30)

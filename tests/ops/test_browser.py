"""A real browser drives the admin: log in, find the failing session in the list, clear its
stale error markers with the action."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from chat.models import ChatMessage
from tests.ops.conftest import seed_session

os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"  # Playwright's sync API runs an event loop

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium (apt-get install chromium)"),
]
E, N = ChatMessage.Kind.ERROR, ChatMessage.Kind.NORMAL


@pytest.fixture
def browser_page():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM),
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
            ],
        )
        try:
            page = browser.new_page()
            page.set_default_timeout(15_000)
            yield page
        finally:
            browser.close()


@pytest.mark.django_db(transaction=True)
def test_operator_finds_failing_session_and_clears_markers(live_server, browser_page, staff, user):
    failing = seed_session(user, title="broken chat", kinds=[N, N, E, E])
    seed_session(user, title="healthy chat", kinds=[N, N])
    page = browser_page
    page.goto(f"{live_server.url}/admin/login/?next=/admin/chat/chatsession/")
    page.fill("#id_username", "operator")
    page.fill("#id_password", "operator-password-1")
    page.click("input[type=submit]")
    page.wait_for_url("**/admin/chat/chatsession/")
    assert page.locator("#result_list tbody tr").count() == 2

    page.click("text=Ends with an error marker")  # the filter sidebar
    page.wait_for_url("**error_marker=yes**")
    rows = page.locator("#result_list tbody tr")
    assert rows.count() == 1 and "broken chat" in rows.first.inner_text()

    rows.first.locator("input.action-select").check()
    page.select_option("select[name=action]", "clear_error_markers")
    page.click("button[name=index]")
    page.wait_for_selector(".messagelist")
    assert "Cleared 2 error marker(s)." in page.locator(".messagelist").inner_text()
    kinds = list(
        ChatMessage.objects.filter(session=failing).order_by("sequence").values_list("kind", flat=True)
    )
    assert kinds == [N, N]
    # The unfiltered list shows the session again, its marker flag now off.
    page.goto(f"{live_server.url}/admin/chat/chatsession/?q=broken")
    flag = page.locator("#result_list tbody tr td.field-error_marker img")
    assert flag.get_attribute("alt") == "False"

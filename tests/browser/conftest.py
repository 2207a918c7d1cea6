"""Browser tests: real headless Chromium (Debian's) driven by Playwright, against a real daphne
subprocess serving the app on the pytest test database, with the scripted model on loopback.

One daphne + one scripted model + one browser per module (start-up is the slow part); each
test gets a fresh browser context and its own user.
"""

from __future__ import annotations

import base64
import os
import re

import pytest

from tests.agents.conftest import scripted_model  # noqa: F401 - the suite's one scripted model
from tests.servers import RESULTS, DaphneServer, daphne_env

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
SCREENSHOTS = RESULTS / "screenshots"
PASSWORD = "browser-password-1"

# The live app's environment for tests that want a failing model call to fail fast.
FAST_RETRIES_ENV = {
    "AGENT_MAX_RETRIES": "1",
    "AGENT_RETRY_BASE_DELAY": "0.05",
    "AGENT_RETRY_MAX_DELAY": "0.2",
}


@pytest.fixture(scope="module")
def browser_env():
    """Playwright's sync API keeps an event loop registered in this thread; Django's ORM would
    then refuse to run (SynchronousOnlyOperation). The ORM calls here are plain sync calls."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium; scripts/test-prereqs.sh does it)")
    old = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    yield
    if old is None:
        os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    else:
        os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = old


@pytest.fixture(scope="module")
def live_app_env():
    """Settings of the module's daphne (a module overrides this fixture to test others)."""
    return dict(FAST_RETRIES_ENV)


@pytest.fixture(scope="module")
def live_app(browser_env, django_db_setup, django_db_blocker, scripted_model, tmp_path_factory, live_app_env):
    """A real daphne serving the app on the test database. Yields its base URL."""
    workdir = tmp_path_factory.mktemp("browser-app")
    env = daphne_env(
        workspaces=workdir / "workspaces",
        var_dir=workdir / "var",
        scripted_url=scripted_model.url,
        **live_app_env,
    )
    with DaphneServer(env, name="browser", ready_path="/healthz") as server:
        yield server.url


@pytest.fixture(scope="module")
def browser(browser_env):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        instance = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield instance
        instance.close()


@pytest.fixture
def web_user(transactional_db, django_user_model, live_app):
    return django_user_model.objects.create_user(username="webuser", password=PASSWORD)


@pytest.fixture
def context(browser, live_app):
    ctx = browser.new_context(base_url=live_app, viewport={"width": 1200, "height": 820})
    ctx.set_default_timeout(15_000)
    yield ctx
    ctx.close()


def shot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=False)


def login(page, user, *, screenshot: str | None = None) -> None:
    page.goto("/accounts/login/")
    page.get_by_label("Username").fill(user.username)
    page.get_by_label("Password").fill(PASSWORD)
    if screenshot:
        shot(page, screenshot)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/")
    page.wait_for_selector("body[data-ready=true]")


def ws_open(page) -> None:
    page.wait_for_function("() => Boolean(window.__chat && window.__chat.socket.isOpen)")


# ------------------------------------------------------------------------------------------------
# Page helpers shared by the browser test modules
# ------------------------------------------------------------------------------------------------

UUID_URL = re.compile(r"/c/[0-9a-f-]{36}/$")
# A 2x2 red PNG.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAIAAAD91JpzAAAAFklEQVR4nGP8z8DAwMDAxMDAwMDAAAANHQEDasKb6QAAAABJRU5ErkJggg=="
)


def expect_():
    from playwright.sync_api import expect

    return expect


def page_problems(page) -> list[str]:
    """What the page reports going wrong from now on: CSP refusals in the console and uncaught
    errors (the list fills as they happen)."""
    problems: list[str] = []
    page.on(
        "console",
        lambda m: (
            problems.append(m.text)
            if m.type == "error" and ("Content Security Policy" in m.text or "Refused" in m.text)
            else None
        ),
    )
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    return problems


def send(page, text: str) -> None:
    box = page.locator("#input")
    box.fill(text)
    box.press("Enter")


def last_assistant(page):
    return page.locator(".msg.assistant").last


def wait_idle(page) -> None:
    expect_()(page.get_by_role("button", name="Send")).to_be_visible(timeout=20_000)


def open_settings(page):
    expect = expect_()
    page.get_by_role("button", name="Chat settings").click()
    dialog = page.get_by_role("dialog", name="Chat settings")
    expect(dialog).to_be_visible()
    expect(dialog.get_by_label("Model")).to_be_enabled()
    expect(dialog.locator("#settings-status")).to_have_text("")
    return dialog

"""Browser tests: real headless Chromium (Debian's) driven by Playwright, against a real daphne
subprocess serving the app on the pytest test database, with the scripted model on loopback.

One daphne + one scripted model + one browser per module (start-up is the slow part); each
test gets a fresh browser context and its own user.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.error import URLError
from urllib.parse import quote
from urllib.request import urlopen

import pytest
from django.conf import settings
from django.db import connection

from agents.scripted_model import ScriptedModelServer

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--no-first-run"]
ROOT = Path(settings.BASE_DIR)
RESULTS = ROOT / "test-results"
SCREENSHOTS = RESULTS / "screenshots"
PASSWORD = "browser-password-1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _database_url() -> str:
    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{Path(db['NAME']).resolve()}"
    user = quote(db.get("USER") or "")
    password = quote(db.get("PASSWORD") or "")
    auth = f"{user}:{password}@" if password else (f"{user}@" if user else "")
    host = db.get("HOST") or "127.0.0.1"
    port = f":{db['PORT']}" if db.get("PORT") else ""
    return f"postgres://{auth}{host}{port}/{db['NAME']}"


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
def scripted_model():
    server = ScriptedModelServer(host="127.0.0.1", port=0).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def live_app(browser_env, django_db_setup, django_db_blocker, scripted_model, tmp_path_factory):
    """A real daphne serving the app on the test database. Yields its base URL."""
    port = _free_port()
    workdir = tmp_path_factory.mktemp("browser-app")
    RESULTS.mkdir(exist_ok=True)
    with django_db_blocker.unblock():
        database_url = _database_url()
    env = {
        **os.environ,
        "DEBUG": "true",
        "DATABASE_URL": database_url,
        "AGENT_BACKEND": "api",
        "ANTHROPIC_BASE_URL": scripted_model.url,
        "ANTHROPIC_API_KEY": "",
        "AGENT_WORKSPACE_ROOT": str(workdir / "workspaces"),
        "VAR_DIR": str(workdir / "var"),
        "AGENT_MAX_RETRIES": "1",
        "AGENT_RETRY_BASE_DELAY": "0.05",
        "AGENT_RETRY_MAX_DELAY": "0.2",
        "LOG_LEVEL": "WARNING",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    daphne = Path(sys.executable).parent / "daphne"
    log_path = RESULTS / "browser-daphne.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        [str(daphne), "-b", "127.0.0.1", "-p", str(port), "copilot_project.asgi:application"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            log.close()
            pytest.fail(f"daphne exited with {proc.returncode}: {log_path.read_text()[-2000:]}")
        try:
            with urlopen(f"{base}/healthz", timeout=2) as response:
                if response.status == 200:
                    break
        except (URLError, ConnectionError, OSError):
            pass
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"daphne did not come up: {log_path.read_text()[-2000:]}")
        time.sleep(0.1)
    yield base
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)
    log.close()


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

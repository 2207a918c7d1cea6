"""Fail closed (docs/security.md "The jail"): without a working bubblewrap, production refuses
every turn with a clear message and its system check reports an error; under DEBUG the check
warns and the chat page shows a "tools are not sandboxed" banner. AGENT_JAIL=off is refused by
the settings unless DEBUG is on."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest
from django.test import Client

from agents.checks import jail_check
from agents.jail import jail_problem
from tests.chat.conftest import chunks_of, send_frame

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def no_bwrap(monkeypatch, tmp_path):
    """A PATH on which bubblewrap does not exist (the probe is cached per PATH)."""
    monkeypatch.setenv("PATH", str(tmp_path))
    assert jail_problem() is not None


def test_production_check_is_an_error_without_bwrap(no_bwrap, settings):
    settings.DEBUG = False
    errors = jail_check()
    assert [e.id for e in errors] == ["agents.E001"] and "bwrap" in errors[0].msg


def test_debug_check_is_a_warning_and_the_page_has_a_banner(no_bwrap, settings, user):
    settings.DEBUG = True
    assert [w.id for w in jail_check()] == ["agents.W001"]
    client = Client()
    client.force_login(user)
    page = client.get("/").content.decode()
    assert 'id="unjailed-banner"' in page and "Tools are not sandboxed" in page


def test_no_banner_when_jailed(settings, user):
    settings.DEBUG = True
    assert jail_problem() is None
    client = Client()
    client.force_login(user)
    assert 'id="unjailed-banner"' not in client.get("/").content.decode()


async def test_a_turn_is_refused_without_the_jail_and_no_tool_runs(
    no_bwrap, settings, backend_api, connect, tmp_path
):
    settings.DEBUG = False
    ws = await connect()
    marker = tmp_path / f"ran-{uuid.uuid4().hex}"
    frame = send_frame(f"gate-{uuid.uuid4().hex[:6]}", f"/tool bash touch {marker}")
    await ws.send(frame)
    chunks = chunks_of(await ws.frames_until_done(frame["requestId"], timeout=30))
    errors = [c["errorText"] for c in chunks if c["type"] == "error"]
    assert errors and "sandbox is not available" in errors[0]
    assert not [c for c in chunks if c["type"].startswith("tool-")]
    assert not marker.exists()


async def test_debug_without_the_jail_runs_tools_unjailed(no_bwrap, settings, backend_api, connect):
    settings.DEBUG = True
    ws = await connect()
    frame = send_frame(f"gate-{uuid.uuid4().hex[:6]}", "/tool bash echo unjailed-ok")
    await ws.send(frame)
    chunks = chunks_of(await ws.frames_until_done(frame["requestId"], timeout=30))
    assert any("unjailed-ok" in str(c.get("output")) for c in chunks if c["type"] == "tool-output-available")


def test_jail_off_is_refused_in_production():
    env = {
        **os.environ,
        "DEBUG": "false",
        "AGENT_JAIL": "off",
        "SECRET_KEY": "k" * 60,
        "ALLOWED_HOSTS": "x",
        "ENV_FILE": "/dev/null",
    }
    code = (
        "import django, os; os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'copilot_project.settings'); "
        "django.setup()"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "AGENT_JAIL=off is accepted only with DEBUG=true" in proc.stderr

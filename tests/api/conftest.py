"""Fixtures for the HTTP API tests: API keys, clients, isolated throttle counters, and a real
daphne server (subprocess, on the test database) for the SSE and contract tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.conf import settings as django_settings
from rest_framework.test import APIClient

from chat.apikeys import api_key_create

BASE_DIR = Path(django_settings.BASE_DIR)


@pytest.fixture(autouse=True)
def isolated_cache(settings):
    """A fresh cache namespace per test, so throttle counters never leak between tests
    (Redis when configured: the same backend production uses, under a unique key prefix)."""
    tag = uuid.uuid4().hex[:10]
    if django_settings.REDIS_URL:
        settings.CACHES = {
            "default": {
                "BACKEND": "django.core.cache.backends.redis.RedisCache",
                "LOCATION": django_settings.REDIS_URL,
                "KEY_PREFIX": f"{django_settings.REDIS_KEY_PREFIX}:test-cache:{tag}",
            }
        }
    else:
        settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": tag}}


@pytest.fixture
def key_for():
    def make(user, name: str = "test key") -> str:
        return api_key_create(owner=user, name=name)[1]

    return make


@pytest.fixture
def api_key(user, key_for) -> str:
    return key_for(user)


def bearer_client(key: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    return client


@pytest.fixture
def client_for(key_for):
    """``client_for(user)`` -> an APIClient authenticated with a fresh API key of ``user``."""
    return lambda user: bearer_client(key_for(user))


@pytest.fixture
def api(user, api_key) -> APIClient:
    return bearer_client(api_key)


# --- a real daphne server ----------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _database_url() -> str:
    from django.db import connection

    sd = connection.settings_dict
    if sd["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{Path(sd['NAME']).resolve()}"
    auth = sd["USER"] + (f":{sd['PASSWORD']}" if sd.get("PASSWORD") else "")
    return f"postgres://{auth}@{sd['HOST'] or '127.0.0.1'}:{sd['PORT'] or 5432}/{sd['NAME']}"


class LiveServer:
    def __init__(self, url: str, proc: subprocess.Popen, log: Path) -> None:
        self.url = url
        self.proc = proc
        self.log = log

    def log_tail(self, n: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


@pytest.fixture(scope="session")
def live_daphne(django_db_setup, django_db_blocker):
    """daphne serving copilot_project.asgi on a free port, against the test database, with the
    offline scripted model (its own in-process instance), the ``api`` backend, a 1 s SSE
    heartbeat and generous throttles (tests of throttling override them in-process)."""
    port = _free_port()
    tmp = Path(tempfile.mkdtemp(prefix="api-daphne-"))
    log = tmp / "daphne.log"
    env = {k: v for k, v in os.environ.items() if k not in {"ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL"}}
    env.update(
        DEBUG="true",
        DATABASE_URL=_database_url(),
        AGENT_BACKEND="api",
        AGENT_WORKSPACE_ROOT=str(tmp / "workspaces"),
        API_SSE_HEARTBEAT_SECONDS="1",
        API_THROTTLE_CHAT="100000/min",
        API_THROTTLE_WRITES="100000/min",
        VAR_DIR=str(tmp / "var"),
        LOG_LEVEL="WARNING",
    )
    if django_settings.REDIS_URL:
        env["REDIS_URL"] = django_settings.REDIS_URL
        env["REDIS_KEY_PREFIX"] = django_settings.REDIS_KEY_PREFIX
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "copilot_project.asgi:application"],
            cwd=BASE_DIR, env=env, stdout=out, stderr=subprocess.STDOUT,
        )
    server = LiveServer(f"http://127.0.0.1:{port}", proc, log)
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"daphne exited:\n{server.log_tail()}")
        try:
            if httpx.get(f"{server.url}/healthz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"daphne did not start:\n{server.log_tail()}")
        time.sleep(0.2)
    try:
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def ui_message(text: str, **extra: Any) -> dict[str, Any]:
    return {"id": uuid.uuid4().hex, "role": "user", "parts": [{"type": "text", "text": text}], **extra}


def chat_body(chat_id: str, text: str, **extra: Any) -> dict[str, Any]:
    return {"id": chat_id, "messages": [ui_message(text)], "trigger": "submit-message", "messageId": None, **extra}

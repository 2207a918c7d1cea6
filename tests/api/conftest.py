"""Fixtures for the HTTP API tests: API keys, clients, isolated throttle counters, and a real
daphne server (subprocess, on the test database) for the SSE and contract tests."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from django.conf import settings as django_settings
from rest_framework.test import APIClient

from chat.apikeys import api_key_create
from tests.servers import DaphneServer, daphne_env


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
        settings.CACHES = {
            "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": tag}
        }


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


@pytest.fixture(scope="session")
def live_daphne(django_db_setup, django_db_blocker, tmp_path_factory):
    """daphne serving copilot_project.asgi on a free port, against the test database, with the
    offline scripted model (its own in-process instance), the ``api`` backend, a 1 s SSE
    heartbeat and generous throttles (tests of throttling override them in-process)."""
    tmp = tmp_path_factory.mktemp("api-daphne")
    env = daphne_env(
        workspaces=tmp / "workspaces",
        var_dir=tmp / "var",
        scripted_url=None,
        API_SSE_HEARTBEAT_SECONDS="1",
        API_THROTTLE_CHAT="100000/min",
        API_THROTTLE_WRITES="100000/min",
        # schemathesis' auth checks send bad keys to every operation: no lockout of the fuzzer.
        API_KEY_FAILURE_LIMIT="100000",
    )
    with DaphneServer(env, name="api", ready_path="/healthz", timeout=60) as server:
        yield server


def ui_message(text: str, **extra: Any) -> dict[str, Any]:
    return {"id": uuid.uuid4().hex, "role": "user", "parts": [{"type": "text", "text": text}], **extra}


def chat_body(chat_id: str, text: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": chat_id,
        "messages": [ui_message(text)],
        "trigger": "submit-message",
        "messageId": None,
        **extra,
    }

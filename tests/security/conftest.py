"""Fixtures for the security suite: the chat suite's websocket clients and scripted-model
backend, the API suite's keys and isolated cache (throttle and login counters per test)."""

from __future__ import annotations

from tests.api.conftest import isolated_cache, key_for  # noqa: F401 - fixture re-export (autouse)
from tests.chat.conftest import backend_api, backend_sdk, connect, requests_since, scripted_model  # noqa: F401

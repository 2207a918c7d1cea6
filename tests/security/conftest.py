"""Fixtures for the security suite: the chat suite's websocket clients and scripted-model
backend, the API suite's keys and isolated cache (throttle and login counters per test)."""

from __future__ import annotations

import pytest
from asgiref.sync import SyncToAsync
from django.db import connections

from tests.api.conftest import isolated_cache, key_for  # noqa: F401 - fixture re-export (autouse)
from tests.chat.conftest import backend_api, backend_sdk, connect, requests_since, scripted_model  # noqa: F401


def _close_all() -> None:
    for conn in connections.all(initialized_only=True):
        conn.close()


@pytest.fixture(autouse=True, scope="module")
def _close_worker_thread_connections():
    """ORM calls from async tests run in asgiref's shared worker thread, which keeps its own DB
    connection (CONN_MAX_AGE); close it after each module so the test database can be dropped."""
    yield
    SyncToAsync.single_thread_executor.submit(_close_all).result(timeout=30)

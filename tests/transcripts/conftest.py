from __future__ import annotations

import pytest
from asgiref.sync import SyncToAsync
from django.db import connections


def _close_all() -> None:
    for conn in connections.all(initialized_only=True):
        conn.close()


@pytest.fixture(autouse=True)
def _close_worker_thread_connections():
    """The store's ORM calls run in asgiref's shared worker thread, which keeps its own DB
    connection (CONN_MAX_AGE); close it after each test so the test database can be dropped."""
    yield
    SyncToAsync.single_thread_executor.submit(_close_all).result(timeout=30)

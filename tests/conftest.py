"""Shared fixtures. Tests use real parts: the database configured by DATABASE_URL (or SQLite),
the channel layer configured by REDIS_URL (or in-memory), and the scripted model on loopback."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

import pytest
from django.conf import settings
from django.db import connections

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def uses_postgres() -> bool:
    return settings.DATABASES["default"]["ENGINE"].endswith("postgresql")


def uses_redis() -> bool:
    return bool(settings.REDIS_URL)


def require_services(*, postgres: bool = False, redis: bool = False) -> None:
    """Skip (outside CI) or fail (in CI) when the configured stack lacks PostgreSQL/Redis."""
    missing = [name for name, wanted, have in (("PostgreSQL", postgres, uses_postgres()), ("Redis", redis, uses_redis())) if wanted and not have]
    if not missing:
        return
    reason = f"needs {' and '.join(missing)} (set DATABASE_URL / REDIS_URL; .ci/run does)"
    if IN_CI and os.environ.get("COPILOT_STACK") == "services":
        pytest.fail(reason)
    pytest.skip(reason)


def run_threads(target: Callable[[int], object], count: int, *, join_timeout: float = 120.0) -> list[BaseException]:
    """Run ``target(0)`` … ``target(count - 1)`` in real threads (each with its own database
    connection, closed when it ends) and wait for them; returns what they raised."""
    errors: list[BaseException] = []

    def run(n: int) -> None:
        try:
            target(n)
        except BaseException as exc:  # noqa: BLE001 - surfaced to the caller
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=(n,)) for n in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=join_timeout)
    return errors


@pytest.fixture
def user(django_user_model):
    return django_user_model.objects.create_user(username="alice", password="alice-password-1")


@pytest.fixture
def other_user(django_user_model):
    return django_user_model.objects.create_user(username="bob", password="bob-password-1")

"""Shared fixtures. Tests use real parts: the database configured by DATABASE_URL (or SQLite),
the channel layer configured by REDIS_URL (or in-memory), and the scripted model on loopback."""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable

import pytest
from django.conf import settings
from django.db import connections

from chat.config import chat_config

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def uses_postgres() -> bool:
    return settings.DATABASES["default"]["ENGINE"].endswith("postgresql")


def uses_redis() -> bool:
    return bool(settings.REDIS_URL)


def require_services(*, postgres: bool = False, redis: bool = False) -> None:
    """Skip (outside CI) or fail (in CI) when the configured stack lacks PostgreSQL/Redis."""
    missing = [
        name
        for name, wanted, have in (("PostgreSQL", postgres, uses_postgres()), ("Redis", redis, uses_redis()))
        if wanted and not have
    ]
    if not missing:
        return
    reason = f"needs {' and '.join(missing)} (set DATABASE_URL / REDIS_URL; .ci/run does)"
    if IN_CI and os.environ.get("COPILOT_STACK") == "services":
        pytest.fail(reason)
    pytest.skip(reason)


def run_threads(
    target: Callable[[int], object], count: int, *, join_timeout: float = 120.0
) -> list[BaseException]:
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


@pytest.fixture(autouse=True)
def _own_api_key_failure_counters(monkeypatch):
    """Failed API-key attempts are counted per client IP (chat.ratelimit) and every test client is
    127.0.0.1: each test counts in its own namespace, so one test's bad keys never throttle another.

    Set with monkeypatch, not pytest-django's ``settings``: an autouse ``settings`` override would
    wrap every test's settings, and the session-scoped scripted model's ANTHROPIC_BASE_URL (set
    on first use, inside some test) would vanish with that test's override."""
    monkeypatch.setattr(settings, "API_KEY_FAILURE_NAMESPACE", uuid.uuid4().hex, raising=False)
    chat_config.cache_clear()  # a direct setattr sends no setting_changed
    yield
    monkeypatch.undo()
    chat_config.cache_clear()


@pytest.fixture(autouse=True, scope="session")
def _hash_each_test_password_once():
    """Django's PBKDF2 (1,000,000+ iterations) takes ~0.5-1 s per password on the CI machines and
    most tests create two users: hash each distinct test password once per run. The hashes stay
    real PBKDF2 with the production settings, so logins (in-process or through a daphne
    subprocess) verify them exactly as in production; only creating them is memoised."""
    from django.contrib.auth import base_user, hashers
    from django.contrib.auth import models as auth_models

    real = hashers.make_password
    made: dict[str, str] = {}

    def make_password(password, salt=None, hasher="default"):
        if not isinstance(password, str) or salt is not None or hasher != "default":
            return real(password, salt, hasher)
        if password not in made:
            made[password] = real(password)
        return made[password]

    modules = (hashers, base_user, auth_models)  # each imported the function by name
    for module in modules:
        module.make_password = make_password
    yield
    for module in modules:
        module.make_password = real


@pytest.fixture
def user(django_user_model):
    return django_user_model.objects.create_user(username="alice", password="alice-password-1")


@pytest.fixture
def other_user(django_user_model):
    return django_user_model.objects.create_user(username="bob", password="bob-password-1")

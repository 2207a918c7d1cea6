"""Fixtures for the operator tests: staff logins, seeded sessions/turns/messages, lock helpers."""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid

import pytest
from django.db import transaction
from django.test import Client
from django.utils import timezone

from agents.errors import AgentError
from chat.models import ChatMessage, ChatSession, ChatTurn, TokenUsage
from chat.services import message_append, session_create
from chat.usage import budget_check
from tests.agents.conftest import scripted_model  # noqa: F401 - fixture re-export
from tests.chat.conftest import backend_api  # noqa: F401 - fixture re-export


@pytest.fixture
def staff(django_user_model):
    return django_user_model.objects.create_superuser(
        username="operator", password="operator-password-1", email="op@example.com"
    )


@pytest.fixture
def staff_client(staff) -> Client:
    client = Client()
    client.force_login(staff)
    return client


@pytest.fixture
def user_client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def seed_session(owner, *, title: str = "", kinds: list[str] = (), backend: str = "api") -> ChatSession:
    """A session with one message per kind in ``kinds`` (normal → alternating user/assistant)."""
    session = session_create(owner=owner, title=title, backend=backend, model="claude-test")
    for i, kind in enumerate(kinds):
        role = "user" if kind == ChatMessage.Kind.NORMAL and i % 2 == 0 else "assistant"
        message_append(
            session=session,
            role=role,
            text=f"{kind} {i}",
            kind=kind,
            metadata={"code": "server"} if kind != "normal" else {},
        )
    return session


def seed_turn(
    session,
    *,
    status: str = ChatTurn.Status.RUNNING,
    heartbeat_age: float | None = 0.0,
    worker: str = "elsewhere:1",
) -> ChatTurn:
    turn = ChatTurn.objects.create(
        session=session, status=status, backend="api", model="claude-test", worker=worker
    )
    if heartbeat_age is not None:
        ChatTurn.objects.filter(pk=turn.pk).update(
            heartbeat_at=timezone.now() - dt.timedelta(seconds=heartbeat_age)
        )
    else:
        ChatTurn.objects.filter(pk=turn.pk).update(started_at=timezone.now() - dt.timedelta(hours=1))
    turn.refresh_from_db()
    return turn


def budget_reserve(user, *, model: str = "claude-test") -> ChatTurn:
    """What a turn's start does (chat.runtime.start): ``budget_check`` and, when it passes, the new
    running turn's row holding the reservation (``reserved_tokens``), in one transaction; a
    refusal (and the refusal record ``budget_check`` wrote) commits and is raised."""
    reserved: list[int] = []
    refusal: AgentError | None = None
    with transaction.atomic():
        try:
            budget_check(user=user, model=model, reserve=reserved.append)
        except AgentError as exc:
            refusal = exc
        else:
            session = session_create(owner=user, backend="api", model=model)
            turn = ChatTurn.objects.create(
                session=session, backend="api", model=model, reserved_tokens=sum(reserved)
            )
    if refusal is not None:
        raise refusal
    return turn


def reservations_of(user) -> int:
    """How many turns of the user hold a reservation."""
    return ChatTurn.objects.filter(session__owner=user, reserved_tokens__gt=0).count()


def seed_usage(
    user, *, weighted: int, at: dt.datetime | None = None, model: str = "claude-test", cost: float = 0.01
) -> TokenUsage:
    row = TokenUsage.objects.create(
        user=user, model=model, backend="api", input_tokens=weighted, weighted_tokens=weighted, cost_usd=cost
    )
    if at is not None:
        TokenUsage.objects.filter(pk=row.pk).update(created_at=at)
        row.refresh_from_db()
    return row


def plant_lock(session_id, *, worker: str, ttl: float = 30.0, expired: bool = False) -> None:
    """Put a lock for the session into the configured lock backend, as if ``worker`` held it."""
    from chat.runtime import locks

    key = locks.session_key(session_id)
    now = time.time()
    if not locks.use_redis():
        with locks._local_lock:
            locks._local[key] = locks.LockInfo(
                key, uuid.uuid4().hex, worker, now, now - 1 if expired else now + ttl, {}
            )
        return
    if expired:
        return  # Redis drops an expired key itself: the lock is simply gone
    lock_key, info_key = locks._lock_keys(key)
    client = locks.sync_redis()
    client.set(lock_key, uuid.uuid4().hex, px=int(ttl * 1000))
    client.set(info_key, json.dumps({"worker": worker, "acquired_at": now, "meta": {}}), px=int(ttl * 1000))


@pytest.fixture
def locks_cleanup():
    planted: list[str] = []
    yield planted
    from chat.runtime import locks

    for session_id in planted:
        locks.lock_force_release(locks.session_key(session_id))


def dead_worker() -> str:
    """A worker id on this host whose pid does not exist."""
    import os
    import socket

    pid = 4_000_000
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return f"{socket.gethostname()}:{pid}"
        except PermissionError:
            pass
        pid += 1


def live_worker() -> str:
    import os
    import socket

    return f"{socket.gethostname()}:{os.getpid()}"

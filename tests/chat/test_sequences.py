"""message_append hands out unique, gap-free sequences even with concurrent writers."""

from __future__ import annotations

import threading

import pytest
from django.db import connection

from chat.models import ChatMessage
from chat.selectors import message_list
from chat.services import message_append, session_create
from tests.conftest import run_threads

WRITERS = 8
PER_WRITER = 15


@pytest.mark.django_db
def test_sequences_start_at_zero_and_increase(user):
    session = session_create(owner=user)
    seqs = [message_append(session=session, role="user", text=f"m{i}").sequence for i in range(3)]
    assert seqs == [0, 1, 2]
    assert [m.text for m in message_list(session=session)] == ["m0", "m1", "m2"]


@pytest.mark.django_db
def test_sequences_are_per_session(user):
    a, b = session_create(owner=user), session_create(owner=user)
    message_append(session=a, role="user", text="a0")
    assert message_append(session=b, role="user", text="b0").sequence == 0
    assert message_append(session=a, role="user", text="a1").sequence == 1


@pytest.mark.django_db
def test_next_sequence_follows_max_not_count(user):
    """After a deletion in the middle, the next number is MAX+1, never a reused one."""
    session = session_create(owner=user)
    for i in range(3):
        message_append(session=session, role="user", text=str(i))
    ChatMessage.objects.filter(session=session, sequence=1).delete()
    assert message_append(session=session, role="user", text="x").sequence == 3


@pytest.mark.django_db(transaction=True)
def test_concurrent_writers_get_unique_sequences(user):
    """Real threads with their own connections race on one session: no duplicate, nothing lost."""
    session = session_create(owner=user)
    barrier = threading.Barrier(WRITERS)

    def writer(n: int) -> None:
        barrier.wait()
        for i in range(PER_WRITER):
            message_append(session=session, role="user", text=f"w{n}-{i}")

    errors = run_threads(writer, WRITERS)

    assert not errors, errors
    rows = list(
        ChatMessage.objects.filter(session=session).order_by("sequence").values_list("sequence", "text")
    )
    assert [seq for seq, _ in rows] == list(range(WRITERS * PER_WRITER)), (
        "sequences must be 0..N-1 without gaps"
    )
    assert sorted(text for _, text in rows) == sorted(
        f"w{n}-{i}" for n in range(WRITERS) for i in range(PER_WRITER)
    )
    assert connection.vendor in {"sqlite", "postgresql"}

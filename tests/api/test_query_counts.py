"""N+1 guards for the history and list endpoints (benchmark 7, docs/performance.md): the number
of queries a page costs does not grow with the rows on it, nor with the size of the session."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from chat.models import ChatTurn, TokenUsage
from chat.services import message_append, session_create

pytestmark = pytest.mark.django_db


def _queries(client, url: str, params: dict | None = None) -> int:
    client.get(url, params or {})  # the first request of a key also records its use (one UPDATE)
    with CaptureQueriesContext(connection) as ctx:
        resp = client.get(url, params or {})
    assert resp.status_code == 200, resp.content[:300]
    return len(ctx.captured_queries)


def _chat(user, messages: int):
    session = session_create(owner=user, title="t")
    for i in range(messages):
        turn = ChatTurn.objects.create(session=session, backend="api", model="m") if i % 2 == 0 else None
        message_append(session=session, role="user" if i % 2 == 0 else "assistant", text=f"m{i}", turn=turn)
    return session


def test_messages_page_costs_the_same_for_5_and_150_messages(api, user):
    small, big = _chat(user, 5), _chat(user, 150)
    q_small = _queries(api, f"/api/v1/sessions/{small.pk}/messages/", {"limit": 100})
    q_big = _queries(api, f"/api/v1/sessions/{big.pk}/messages/", {"limit": 100})
    assert q_big == q_small, (q_small, q_big)
    assert q_big <= 8


def test_sessions_page_costs_the_same_for_3_and_60_sessions(api, user, other_user):
    for _ in range(3):
        s = _chat(user, 2)
        TokenUsage.objects.create(
            user=user, session=s, model="m", backend="api", input_tokens=1, output_tokens=1
        )
    q_few = _queries(api, "/api/v1/sessions/", {"page_size": 100})
    for _ in range(57):
        s = _chat(user, 2)
        TokenUsage.objects.create(
            user=user, session=s, model="m", backend="api", input_tokens=1, output_tokens=1
        )
    q_many = _queries(api, "/api/v1/sessions/", {"page_size": 100})
    assert q_many == q_few, (q_few, q_many)
    assert q_many <= 8


def test_search_costs_the_same_for_1_and_50_hits(api, user):
    _chat(user, 1)
    message_append(session=session_create(owner=user, title="s"), role="user", text="walnut")
    q_one = _queries(api, "/api/v1/search/", {"q": "walnut", "limit": 50})
    for i in range(6):
        session = session_create(owner=user, title=f"walnut {i}")
        for _ in range(10):
            message_append(session=session, role="assistant", text="walnut bread")
    q_many = _queries(api, "/api/v1/search/", {"q": "walnut", "limit": 50})
    assert q_many == q_one, (q_one, q_many)
    assert q_many <= 4  # the key, the titles, the messages

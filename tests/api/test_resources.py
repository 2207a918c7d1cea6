"""Sessions, messages, cancel and usage as resources; error bodies; throttling."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from chat.models import ApiKey, ChatSession, ChatTurn, TokenUsage, UserBudget
from chat.services import message_append, session_create
from tests.api.conftest import bearer_client

pytestmark = pytest.mark.django_db

NOT_FOUND = {"error": {"code": "not_found", "message": "Not found."}}


@pytest.fixture
def theirs(other_user):
    session = session_create(owner=other_user, client_id="shared-id", title="bob's secret")
    message_append(session=session, role="user", text="private")
    return session


def session_urls(chat_id: str) -> list[tuple[str, str, dict | None]]:
    return [
        ("get", f"/api/v1/sessions/{chat_id}/", None),
        ("patch", f"/api/v1/sessions/{chat_id}/", {"title": "x"}),
        ("delete", f"/api/v1/sessions/{chat_id}/", None),
        ("get", f"/api/v1/sessions/{chat_id}/messages/", None),
        ("post", f"/api/v1/sessions/{chat_id}/cancel/", None),
    ]


def test_list_paginates_searches_and_filters_archived(api, user, theirs):
    for i in range(25):
        session_create(owner=user, title=f"chat {i:02d}" + (" needle" if i % 5 == 0 else ""))
    archived = session_create(owner=user, title="old needle")
    archived.archived = True
    archived.save()
    page1 = api.get("/api/v1/sessions/").json()
    assert page1["count"] == 25 and len(page1["results"]) == 20 and page1["next"]
    page2 = api.get(page1["next"]).json()
    assert len(page2["results"]) == 5 and page2["next"] is None
    ids = {s["id"] for s in page1["results"] + page2["results"]}
    assert str(theirs.pk) not in ids and str(archived.pk) not in ids
    found = api.get("/api/v1/sessions/", {"search": "needle"}).json()
    assert found["count"] == 5 and all("needle" in s["title"] for s in found["results"])
    assert [s["id"] for s in api.get("/api/v1/sessions/", {"archived": "true"}).json()["results"]] == [
        str(archived.pk)
    ]
    assert api.get("/api/v1/sessions/", {"archived": "all", "search": "needle"}).json()["count"] == 6
    assert api.get("/api/v1/sessions/", {"page_size": 3}).json()["results"].__len__() == 3
    first = page1["results"][0]
    assert set(first) == {
        "id",
        "client_id",
        "title",
        "archived",
        "active",
        "created_at",
        "updated_at",
        "last_activity_at",
        "model",  # per-chat settings (tests/api/test_chat_settings.py)
        "instructions",
        "instructions_max_chars",
        "tool_mode",
        "max_steps",
        "mcp_servers",  # the chat's MCP servers (tests/api/test_mcp_servers.py)
        "active_leaf",  # branches (tests/api/test_branches_api.py)
    }


def test_list_validation_errors(api):
    for params in ({"archived": "maybe"}, {"page_size": 0}, {"page_size": 1000}, {"page": 0}):
        resp = api.get("/api/v1/sessions/", params)
        assert resp.status_code == 400, params
        assert resp.json()["error"]["code"] == "invalid_request"
        assert resp.json()["error"]["details"]
    resp = api.get("/api/v1/sessions/", {"page": 99})
    assert resp.status_code == 404 and resp.json() == NOT_FOUND


def test_create_retrieve_rename_archive_delete(api, user):
    resp = api.post("/api/v1/sessions/", {"title": "First"}, format="json")
    assert resp.status_code == 201, resp.content
    created = resp.json()
    assert (
        created["title"] == "First" and created["client_id"] == created["id"] and created["active"] is False
    )
    sid = created["id"]
    assert api.get(f"/api/v1/sessions/{sid}/").json()["title"] == "First"
    resp = api.patch(f"/api/v1/sessions/{sid}/", {"title": "Renamed"}, format="json")
    assert resp.status_code == 200 and resp.json()["title"] == "Renamed"
    resp = api.patch(f"/api/v1/sessions/{sid}/", {"archived": True}, format="json")
    assert resp.json()["archived"] is True
    assert ChatSession.objects.get(pk=sid).archived
    # Client-chosen ids work wherever a chat id does.
    mine = api.post("/api/v1/sessions/", {"client_id": "my-chat-1"}, format="json").json()
    assert api.get("/api/v1/sessions/my-chat-1/").json()["id"] == mine["id"]
    assert api.delete(f"/api/v1/sessions/{sid}/").status_code == 204
    assert api.get(f"/api/v1/sessions/{sid}/").json() == NOT_FOUND
    assert not ChatSession.objects.filter(pk=sid).exists()


def test_create_and_update_validation(api, user):
    resp = api.post("/api/v1/sessions/", {"title": "x" * 201}, format="json")
    assert resp.status_code == 400 and "title" in resp.json()["error"]["details"]
    api.post("/api/v1/sessions/", {"client_id": "dup"}, format="json")
    resp = api.post("/api/v1/sessions/", {"client_id": "dup"}, format="json")
    assert resp.status_code == 409 and resp.json()["error"]["code"] == "session_exists"
    sid = api.post("/api/v1/sessions/", {}, format="json").json()["id"]
    resp = api.patch(f"/api/v1/sessions/{sid}/", {"archived": "perhaps"}, format="json")
    assert resp.status_code == 400 and "archived" in resp.json()["error"]["details"]
    resp = api.post("/api/v1/sessions/", "not json", content_type="application/json")
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "parse_error"


def test_other_users_session_is_the_same_404_as_a_missing_one(api, theirs):
    for chat_id in (str(theirs.pk), theirs.client_id):
        for (method, url, data), (_, missing_url, _) in zip(
            session_urls(chat_id), session_urls(str(uuid.uuid4()))
        ):
            foreign = getattr(api, method)(url, data, format="json")
            missing = getattr(api, method)(missing_url, data, format="json")
            assert foreign.status_code == missing.status_code == 404, (method, url)
            assert foreign.content == missing.content
            assert foreign.json() == NOT_FOUND
    theirs.refresh_from_db()
    assert theirs.title == "bob's secret"


def test_unauthenticated_and_revoked_key_are_401(user, api_key):
    sid = str(session_create(owner=user).pk)
    urls = session_urls(sid) + [
        ("get", "/api/v1/sessions/", None),
        ("post", "/api/v1/sessions/", {}),
        ("get", "/api/v1/usage/", None),
        ("post", "/api/v1/chat/", {}),
        ("get", f"/api/v1/chat/{sid}/stream/", None),
    ]
    anonymous = APIClient()
    revoked = bearer_client(api_key)
    ApiKey.objects.update(revoked_at=timezone.now())
    for method, url, data in urls:
        resp = getattr(anonymous, method)(url, data, format="json")
        assert resp.status_code == 401, (method, url)
        assert resp.json()["error"]["code"] == "not_authenticated"
        resp = getattr(revoked, method)(url, data, format="json")
        assert resp.status_code == 401, (method, url)
        assert resp.json()["error"]["code"] == "authentication_failed"
    assert ChatSession.objects.filter(owner=user).count() == 1


def test_error_bodies_for_405_unknown_path_and_406(api, user):
    resp = api.put("/api/v1/usage/", {}, format="json")
    assert resp.status_code == 405
    assert resp.json()["error"]["code"] == "method_not_allowed"
    resp = api.get("/api/v1/no-such-thing/")
    assert resp.status_code == 404 and resp.json() == NOT_FOUND
    resp = api.post("/api/v1/sessions/", "title=x", content_type="application/x-www-form-urlencoded")
    assert resp.status_code == 415 and resp.json()["error"]["code"] == "unsupported_media_type"


def test_messages_paginate_by_sequence(api, user):
    session = session_create(owner=user)
    for i in range(7):
        message_append(
            session=session, role="user" if i % 2 == 0 else "assistant", text=f"m{i}", metadata={"i": i}
        )
    url = f"/api/v1/sessions/{session.pk}/messages/"
    page = api.get(url, {"limit": 3}).json()
    assert [m["sequence"] for m in page["results"]] == [0, 1, 2]
    assert page["prev"] is None and page["next"]
    m0 = page["results"][0]
    assert set(m0) == {
        "sequence",
        "role",
        "kind",
        "text",
        "parts",
        "metadata",
        "created_at",
        # branches (tests/api/test_branches_api.py)
        "id",
        "parent",
        "message_id",
        "siblings",
    }
    assert (
        m0["parts"] == [{"type": "text", "text": "m0"}]
        and m0["metadata"] == {"i": 0}
        and m0["kind"] == "normal"
    )
    page2 = api.get(page["next"]).json()
    assert [m["sequence"] for m in page2["results"]] == [3, 4, 5]
    page3 = api.get(page2["next"]).json()
    assert [m["sequence"] for m in page3["results"]] == [6] and page3["next"] is None
    back = api.get(page3["prev"]).json()
    assert [m["sequence"] for m in back["results"]] == [3, 4, 5]
    newest = api.get(url, {"before": 7, "limit": 2}).json()
    assert [m["sequence"] for m in newest["results"]] == [5, 6] and newest["prev"]
    window = api.get(url, {"after": 1, "before": 5}).json()
    assert [m["sequence"] for m in window["results"]] == [2, 3, 4]
    assert api.get(window["next"]).json()["results"][0]["sequence"] == 5
    assert api.get(window["prev"]).json()["results"][-1]["sequence"] == 1
    default = api.get(url).json()
    assert len(default["results"]) == 7
    assert api.get(url, {"after": 100}).json() == {"results": [], "next": None, "prev": None}


def test_messages_limit_default_and_bounds(api, user):
    session = session_create(owner=user)
    for i in range(60):
        message_append(session=session, role="user", text=str(i))
    url = f"/api/v1/sessions/{session.client_id}/messages/"
    assert len(api.get(url).json()["results"]) == 50
    assert len(api.get(url, {"limit": 200}).json()["results"]) == 60
    for params in ({"limit": 201}, {"limit": 0}, {"after": -2}, {"before": "x"}):
        resp = api.get(url, params)
        assert resp.status_code == 400, params
        assert resp.json()["error"]["code"] == "invalid_request"


def test_cancel_without_running_turn(api, user):
    session = session_create(owner=user)
    resp = api.post(f"/api/v1/sessions/{session.pk}/cancel/")
    assert resp.status_code == 200 and resp.json() == {"stopped": False}


def test_delete_refused_while_a_turn_runs(api, user):
    session = session_create(owner=user)
    ChatTurn.objects.create(session=session, backend="api", model="m")
    resp = api.delete(f"/api/v1/sessions/{session.pk}/")
    assert resp.status_code == 409 and resp.json()["error"]["code"] == "stream_already_active"
    assert api.get(f"/api/v1/sessions/{session.pk}/").json()["active"] is True


def test_usage_sums_today_and_this_week_with_remaining_budget(api, user, other_user):
    UserBudget.objects.create(user=user, daily_limit=10_000, weekly_limit=50_000)
    TokenUsage.objects.create(
        user=user,
        model="m",
        backend="api",
        input_tokens=100,
        output_tokens=50,
        weighted_tokens=1_000,
        cost_usd=Decimal("0.5"),
    )
    TokenUsage.objects.create(
        user=user,
        model="m",
        backend="api",
        input_tokens=10,
        output_tokens=5,
        cache_read_tokens=7,
        weighted_tokens=500,
        cost_usd=Decimal("0.25"),
    )
    TokenUsage.objects.create(
        user=other_user, model="m", backend="api", input_tokens=999, weighted_tokens=9_999
    )
    body = api.get("/api/v1/usage/").json()
    day, week = body["day"], body["week"]
    assert day["input_tokens"] == 110 and day["output_tokens"] == 55 and day["cache_read_tokens"] == 7
    assert day["weighted_tokens"] == 1_500 and day["cost_usd"] == pytest.approx(0.75)
    assert day["budget"] == 10_000 and day["remaining"] == 8_500
    assert week["budget"] == 50_000 and week["remaining"] == 48_500
    assert day["resets_at"] > day["start"] and week["start"] <= day["start"]


def test_write_endpoints_throttled_per_key_with_retry_after(user, client_for, settings):
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {"chat": "2/min", "writes": "3/min"},
    }
    first, second = client_for(user), client_for(user)
    for _ in range(3):
        assert first.post("/api/v1/sessions/", {}, format="json").status_code == 201
    resp = first.post("/api/v1/sessions/", {}, format="json")
    assert resp.status_code == 429 and resp.json()["error"]["code"] == "throttled"
    assert int(resp["Retry-After"]) >= 1
    assert first.get("/api/v1/sessions/").status_code == 200  # reads are not throttled
    assert second.post("/api/v1/sessions/", {}, format="json").status_code == 201  # counted per key
    # The chat endpoint has its own, tighter scope (counted before the body is even validated).
    for _ in range(2):
        assert second.post("/api/v1/chat/", {}, format="json").status_code == 400
    resp = second.post("/api/v1/chat/", {}, format="json")
    assert resp.status_code == 429 and "Retry-After" in resp


def test_chat_request_validation(api):
    cases = [
        {},
        {"id": "c", "messages": "nope"},
        {"id": "c", "messages": [], "trigger": "submit-message"},
        {"id": "c", "messages": [{"role": "user", "parts": [{"type": "text", "text": "  "}]}]},
        {
            "id": "c",
            "messages": [
                {
                    "role": "user",
                    "parts": [{"type": "file", "mediaType": "image/png", "url": "https://x/y.png"}],
                }
            ],
        },
        {
            "id": "c",
            "messages": [{"role": "user", "parts": [{"type": "text", "text": "hi"}]}],
            "trigger": "bogus",
        },
        {"id": "x" * 201, "messages": [{"role": "user", "parts": [{"type": "text", "text": "hi"}]}]},
    ]
    for body in cases:
        resp = api.post("/api/v1/chat/", body, format="json")
        assert resp.status_code == 400, (body, resp.content)
        assert resp.json()["error"]["code"] == "invalid_request"
    assert not ChatSession.objects.exists()


@pytest.mark.django_db(transaction=True)  # chat.runtime reads through channels' database_sync_to_async
def test_stream_resume_of_unknown_chat_is_404_and_bad_last_event_id_400(api, theirs):
    missing = api.get(f"/api/v1/chat/{uuid.uuid4()}/stream/")
    foreign = api.get(f"/api/v1/chat/{theirs.pk}/stream/")
    assert missing.status_code == foreign.status_code == 404
    assert missing.content == foreign.content
    resp = api.get(f"/api/v1/chat/{uuid.uuid4()}/stream/", HTTP_LAST_EVENT_ID="abc")
    assert resp.status_code == 400

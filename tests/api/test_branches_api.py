"""Branches as REST resources (docs/api.md "Branches"): the messages list is the active path
(``?path=all``: the whole tree) with each message's ``id``, ``parent``, ``message_id`` and
``siblings``; the session's ``active_leaf`` (GET, and PATCH to switch branch: 400 for an id
that is not a message of the chat, 409 while a turn runs); export and shares follow the active
path; an import is one linear branch; the migration back-fills linear chats."""

from __future__ import annotations

import importlib
import json

import pytest
from django.apps import apps

from chat.models import ChatMessage, ChatSession
from chat.runtime import locks
from chat.services import message_append, message_clear_trailing_error_markers, session_create

pytestmark = pytest.mark.django_db


def add(session: ChatSession, role: str, text: str, parent: ChatMessage | None, **extra) -> ChatMessage:
    return message_append(session=session, role=role, text=text, parent=parent, **extra)


@pytest.fixture
def tree(user):
    """u1 → a1 → u2 → a2 (the first branch); u2 edited: u2e → a2e, regenerated: a2r (active)."""
    session = session_create(owner=user, client_id="branchy", title="Branchy")
    m: dict[str, ChatMessage] = {}
    m["u1"] = add(
        session, "user", "alpha question", None, client_message_id="c-1", metadata={"messageId": "c-1"}
    )
    m["a1"] = add(session, "assistant", "alpha answer", m["u1"])
    m["u2"] = add(
        session, "user", "bravo question", m["a1"], client_message_id="c-2", metadata={"messageId": "c-2"}
    )
    m["a2"] = add(session, "assistant", "bravo answer", m["u2"])
    m["u2e"] = add(
        session,
        "user",
        "delta question",
        m["a1"],
        client_message_id="c-2~edit-x",
        metadata={"messageId": "c-2"},
    )
    m["a2e"] = add(session, "assistant", "delta answer", m["u2e"])
    m["a2r"] = add(session, "assistant", "delta answer again", m["u2e"])
    ChatSession.objects.filter(pk=session.pk).update(active_leaf=m["a2r"])
    session.refresh_from_db()
    return session, m


def ids(*messages: ChatMessage) -> list[str]:
    return [str(m.pk) for m in messages]


def test_messages_are_the_active_path_with_parent_and_siblings(api, tree):
    session, m = tree
    body = api.get(f"/api/v1/sessions/{session.pk}/messages/").json()
    results = body["results"]
    assert [r["id"] for r in results] == ids(m["u1"], m["a1"], m["u2e"], m["a2r"])
    assert [r["parent"] for r in results] == [None, *ids(m["u1"], m["a1"], m["u2e"])]
    assert [r["message_id"] for r in results][:3] == ["c-1", f"seq-{m['a1'].sequence}", "c-2"]
    assert results[2]["siblings"] == ids(m["u2"], m["u2e"])
    assert results[3]["siblings"] == ids(m["a2e"], m["a2r"])
    assert results[0]["siblings"] == ids(m["u1"]) and results[1]["siblings"] == ids(m["a1"])
    assert body["next"] is None and body["prev"] is None
    # Paging walks the path: by sequence, without the other branches' messages.
    page = api.get(f"/api/v1/sessions/{session.pk}/messages/", {"limit": 2}).json()
    assert [r["id"] for r in page["results"]] == ids(m["u1"], m["a1"]) and page["prev"] is None
    page2 = api.get(page["next"]).json()
    assert [r["id"] for r in page2["results"]] == ids(m["u2e"], m["a2r"]) and page2["next"] is None
    newest = api.get(f"/api/v1/sessions/{session.pk}/messages/", {"before": m["a2r"].sequence, "limit": 1})
    assert [r["id"] for r in newest.json()["results"]] == ids(m["u2e"])


def test_path_all_lists_the_whole_tree(api, tree):
    session, m = tree
    body = api.get(f"/api/v1/sessions/{session.pk}/messages/", {"path": "all", "limit": 5}).json()
    assert [r["sequence"] for r in body["results"]] == [0, 1, 2, 3, 4]
    assert "path=all" in body["next"]
    rest = api.get(body["next"]).json()["results"]
    assert [r["id"] for r in rest] == ids(m["a2e"], m["a2r"])
    assert body["results"][2]["siblings"] == ids(m["u2"], m["u2e"])
    bad = api.get(f"/api/v1/sessions/{session.pk}/messages/", {"path": "some"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_request"


def test_patch_active_leaf_switches_branch(api, tree):
    session, m = tree
    url = f"/api/v1/sessions/{session.pk}/"
    assert api.get(url).json()["active_leaf"] == str(m["a2r"].pk)
    resp = api.patch(url, {"active_leaf": str(m["u2"].pk)}, format="json")
    assert resp.status_code == 200, resp.content
    assert resp.json()["active_leaf"] == str(m["a2"].pk)  # down to the branch's leaf
    results = api.get(f"{url}messages/").json()["results"]
    assert [r["id"] for r in results] == ids(m["u1"], m["a1"], m["u2"], m["a2"])
    # From a message with branches below it: the newest child at each step.
    resp = api.patch(url, {"active_leaf": str(m["a1"].pk), "title": "renamed too"}, format="json")
    assert resp.json()["active_leaf"] == str(m["a2r"].pk) and resp.json()["title"] == "renamed too"
    resp = api.patch(url, {"active_leaf": str(m["a2e"].pk)}, format="json")
    assert resp.json()["active_leaf"] == str(m["a2e"].pk)
    assert api.get("/api/v1/sessions/").json()["results"][0]["active_leaf"] == str(m["a2e"].pk)


def test_patch_active_leaf_refuses_bad_ids_and_running_turns(api, tree, other_user):
    session, m = tree
    url = f"/api/v1/sessions/{session.pk}/"
    theirs = session_create(owner=other_user)
    foreign = add(theirs, "user", "not yours", None)
    for bad in ("abc", "", "99999999", str(foreign.pk), 12, None, "1" * 30, "²", "١٢"):
        resp = api.patch(url, {"active_leaf": bad, "title": "unchanged?"}, format="json")
        assert resp.status_code == 400, (bad, resp.content)
        assert resp.json()["error"]["code"] == "invalid_request"
    session.refresh_from_db()
    assert session.title == "Branchy" and session.active_leaf_id == m["a2r"].pk
    key = locks.session_key(session.pk)
    token = locks.lock_acquire_sync(key, ttl=30, meta={"turn_id": "t", "user_id": session.owner_id})
    try:
        resp = api.patch(url, {"active_leaf": str(m["u2"].pk)}, format="json")
        assert resp.status_code == 409 and resp.json()["error"]["code"] == "stream_already_active"
    finally:
        locks.lock_release_sync(key, token)
    session.refresh_from_db()
    assert session.active_leaf_id == m["a2r"].pk


def test_export_and_share_follow_the_active_path(api, tree):
    session, m = tree
    exported = json.loads(api.get(f"/api/v1/sessions/{session.pk}/export/").content)
    assert [x["parts"][0]["text"] for x in exported] == [
        "alpha question",
        "alpha answer",
        "delta question",
        "delta answer again",
    ]
    assert exported[2]["id"] == "c-2"  # the AI SDK id the client knows the edited message by
    markdown = api.get(f"/api/v1/sessions/{session.pk}/export/", {"format": "md"}).content.decode()
    assert "delta answer again" in markdown and "bravo" not in markdown and "delta answer\n" not in markdown
    share = api.post(f"/api/v1/sessions/{session.pk}/shares/", {}, format="json").json()
    page = api.get(share["url"]).content.decode()
    assert "delta answer again" in page and "bravo question" not in page


def test_import_builds_one_linear_branch(api, user):
    body = [
        {"id": "u-1", "role": "user", "parts": [{"type": "text", "text": "one"}]},
        {"id": "a-1", "role": "assistant", "parts": [{"type": "text", "text": "two"}]},
        {"id": "u-2", "role": "user", "parts": [{"type": "text", "text": "three"}]},
    ]
    resp = api.post("/api/v1/sessions/import/", body, format="json")
    assert resp.status_code == 201, resp.content
    session = ChatSession.objects.get(pk=resp.json()["id"])
    rows = list(ChatMessage.objects.filter(session=session).order_by("sequence"))
    assert [r.parent_id for r in rows] == [None, rows[0].pk, rows[1].pk]
    assert session.active_leaf_id == rows[-1].pk and resp.json()["active_leaf"] == str(rows[-1].pk)
    results = api.get(f"/api/v1/sessions/{session.pk}/messages/").json()["results"]
    assert [r["text"] for r in results] == ["one", "two", "three"]


def test_clearing_trailing_error_markers_keeps_the_path_linked(user):
    session = session_create(owner=user)
    u1 = add(session, "user", "q", None)
    a1 = add(session, "assistant", "a", u1)
    e1 = add(session, "assistant", "boom", a1, kind=ChatMessage.Kind.ERROR)
    stopped = add(session, "assistant", "Stopped.", e1, kind=ChatMessage.Kind.STOPPED)
    add(session, "assistant", "boom again", stopped, kind=ChatMessage.Kind.RETRYABLE_ERROR)
    assert message_clear_trailing_error_markers(session_id=session.pk) == 2
    stopped.refresh_from_db()
    session.refresh_from_db()
    assert stopped.parent_id == a1.pk and session.active_leaf_id == stopped.pk
    assert list(
        ChatMessage.objects.filter(session=session).values_list("pk", flat=True).order_by("sequence")
    ) == [
        u1.pk,
        a1.pk,
        stopped.pk,
    ]


def test_migration_backfills_linear_chats(user):
    backfill = importlib.import_module("chat.migrations.0009_message_branches").branches_backfill
    session = session_create(owner=user)
    rows = [add(session, role, role, None) for role in ("user", "assistant", "user", "assistant")]
    add(session, "assistant", "err", None, kind=ChatMessage.Kind.ERROR)
    ChatSession.objects.filter(pk=session.pk).update(agent_session_id="cli-1")
    empty = session_create(owner=user)
    backfill(apps, None)
    got = list(ChatMessage.objects.filter(session=session).order_by("sequence"))
    assert [m.parent_id for m in got] == [None, *[m.pk for m in got[:-1]]]
    session.refresh_from_db()
    assert session.active_leaf_id == got[-1].pk and session.agent_session_leaf_id == rows[-1].pk
    empty.refresh_from_db()
    assert empty.active_leaf_id is None and empty.agent_session_leaf_id is None

"""Export, import and share (docs/api.md "Export, import and share"): formats, validation (never
a 500), ownership, and the public share page (snapshot, tool outputs, revocation, expiry)."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from django.test import Client
from django.utils import timezone

from chat import conversations
from chat.models import ChatMessage, ChatSession, Share
from chat.services import message_append, session_create

pytestmark = pytest.mark.django_db

TOOL_PART = {
    "type": "tool-Bash",
    "toolCallId": "call-1",
    "state": "output-available",
    "input": {"command": "ls /tmp"},
    "output": "secret-tool-output-42",
}


@pytest.fixture
def chat(user):
    session = session_create(owner=user, client_id="conv-chat", title="Deploy notes")
    message_append(
        session=session,
        role=ChatMessage.Role.USER,
        text="How do I list files?",
        parts=[{"type": "text", "text": "How do I list files?"}],
        metadata={"messageId": "u-1"},
        client_message_id="u-1",
    )
    message_append(
        session=session,
        role=ChatMessage.Role.ASSISTANT,
        text="Use ls.",
        parts=[{"type": "step-start"}, TOOL_PART, {"type": "text", "text": "Use ls.\n\n```sh\nls\n```"}],
    )
    message_append(
        session=session, role=ChatMessage.Role.ASSISTANT, kind=ChatMessage.Kind.STOPPED, text="Stopped."
    )
    return session


def test_export_json_is_ui_messages_and_a_download(api, chat):
    response = api.get(f"/api/v1/sessions/{chat.pk}/export/?format=json")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert response["Content-Disposition"].startswith("attachment;")
    messages = json.loads(response.content)
    assert [(m["id"], m["role"]) for m in messages] == [("u-1", "user"), ("seq-1", "assistant")]  # no marker
    assert messages[1]["parts"][1] == TOOL_PART
    assert messages[0]["metadata"]["sequence"] == 0
    # The client id works as well as the UUID; json is the default.
    assert json.loads(api.get("/api/v1/sessions/conv-chat/export/").content) == messages


def test_export_markdown_is_a_readable_transcript(api, chat):
    response = api.get(f"/api/v1/sessions/{chat.pk}/export/?format=md")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/markdown")
    assert response["Content-Disposition"] == f'attachment; filename="chat-{chat.pk}.md"'
    text = response.content.decode()
    assert text.startswith("# Deploy notes\n")
    assert "## User\n\nHow do I list files?" in text
    assert "**Tool call: `Bash`**" in text and '"command": "ls /tmp"' in text
    assert "secret-tool-output-42" in text and "```sh\nls\n```" in text
    assert "*stopped: Stopped.*" in text


def test_export_bad_format_is_400_and_foreign_chat_404(api, chat, other_user, client_for):
    bad = api.get(f"/api/v1/sessions/{chat.pk}/export/?format=xml")
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_request"
    bob = client_for(other_user)
    for url in (f"/api/v1/sessions/{chat.pk}/export/?format=md", f"/api/v1/sessions/{chat.pk}/shares/"):
        assert bob.get(url).status_code == 404
    assert bob.post(f"/api/v1/sessions/{chat.pk}/shares/", {}, format="json").status_code == 404


def test_import_round_trip_creates_a_new_chat_of_the_caller(api, chat, user):
    exported = json.loads(api.get(f"/api/v1/sessions/{chat.pk}/export/?format=json").content)
    response = api.post("/api/v1/sessions/import/", exported, format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    new = ChatSession.objects.get(pk=body["id"])
    assert new.owner == user and new.pk != chat.pk and body["title"] == "How do I list files?"
    rows = list(ChatMessage.objects.filter(session=new).order_by("sequence"))
    assert [r.sequence for r in rows] == [0, 1]
    assert [r.parts for r in rows] == [m["parts"] for m in exported]
    assert rows[0].client_message_id == "u-1" and rows[0].text == "How do I list files?"
    again = json.loads(api.get(f"/api/v1/sessions/{new.pk}/export/?format=json").content)
    assert [(m["id"], m["parts"]) for m in again] == [(m["id"], m["parts"]) for m in exported]
    titled = api.post("/api/v1/sessions/import/", {"title": "Mine", "messages": exported}, format="json")
    assert titled.status_code == 201 and titled.json()["title"] == "Mine"


@pytest.mark.parametrize(
    "body",
    [
        {"not": "a list"},
        [],
        "text",
        [{"role": "robot", "parts": []}],
        [{"role": {}, "parts": []}],
        [{"role": ["user"], "parts": [{"type": {}}]}],
        [{"role": "user", "parts": [{"type": ["text"]}]}],
        [{"role": "user", "parts": [{"type": "nonsense"}]}],
        [{"role": "user", "parts": [{"type": "text"}]}],
        [{"role": "user", "parts": "text"}],
        [{"role": "user", "id": 5, "parts": []}],
        [{"role": "user", "parts": [{"type": "text", "text": "a\u0000b"}]}],
        [{"role": "user", "parts": [], "metadata": []}],
        [{"role": "user", "parts": [], "metadata": None}],
        [{"role": "user", "parts": [], "id": None}],
        {"title": None, "messages": [{"role": "user", "parts": []}]},
        {"title": "x" * 201, "messages": [{"role": "user", "parts": []}]},
    ],
)
def test_import_refuses_bad_input_with_400(api, body):
    before = ChatSession.objects.count()
    response = api.post("/api/v1/sessions/import/", body, format="json")
    assert response.status_code == 400, response.content
    assert response.json()["error"]["code"] == "invalid_request"
    assert ChatSession.objects.count() == before


def test_import_refuses_lone_surrogates_too_many_messages_and_too_large(api, monkeypatch):
    raw = '[{"role": "user", "parts": [{"type": "text", "text": "\\ud800"}]}]'
    response = api.generic("POST", "/api/v1/sessions/import/", raw, content_type="application/json")
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_request"
    monkeypatch.setattr(conversations, "IMPORT_MAX_MESSAGES", 2)
    many = [{"role": "user", "parts": [{"type": "text", "text": str(i)}]} for i in range(3)]
    response = api.post("/api/v1/sessions/import/", many, format="json")
    assert response.status_code == 400 and "At most 2" in response.json()["error"]["message"]
    big = [{"role": "user", "parts": [{"type": "text", "text": "x" * (11 * 1024 * 1024)}]}]
    response = api.post("/api/v1/sessions/import/", big, format="json")
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_request"


# --- shares ------------------------------------------------------------------------------------


def _share(api, chat, **body) -> dict:
    response = api.post(f"/api/v1/sessions/{chat.pk}/shares/", body, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def _page(url_or_token: str):
    path = url_or_token.split("://", 1)[-1]
    path = path[path.index("/") :] if "://" in url_or_token else f"/s/{url_or_token}/"
    return Client().get(path)  # no login


def test_share_page_shows_the_snapshot_and_nothing_else(api, chat, user, other_user):
    other = session_create(owner=user, title="Other chat")
    message_append(session=other, role=ChatMessage.Role.USER, text="other-chat-secret-text")
    bobs = session_create(owner=other_user, title="Bob chat")
    message_append(session=bobs, role=ChatMessage.Role.USER, text="bob-secret-text")
    share = _share(api, chat)
    assert set(share) >= {"id", "url", "token"}
    assert share["url"].endswith(f"/s/{share['token']}/")
    assert str(chat.pk) not in share["token"]  # signed, not the session id
    message_append(session=chat, role=ChatMessage.Role.USER, text="added-after-sharing")
    page = _page(share["url"])
    assert page.status_code == 200
    html = page.content.decode()
    assert "Deploy notes" in html and "How do I list files?" in html and "Use ls." in html
    assert "Bash" in html and "ls /tmp" in html
    assert "secret-tool-output-42" not in html  # the owner did not include tool outputs
    assert "added-after-sharing" not in html  # a snapshot
    for secret in ("other-chat-secret-text", "bob-secret-text", user.username, "/api/", str(chat.pk)):
        assert secret not in html, secret
    assert "script" not in html.lower()
    assert "default-src 'none'" in page["Content-Security-Policy"]
    assert page["Referrer-Policy"] == "no-referrer"
    with_outputs = _share(api, chat, include_tool_outputs=True, expires_in_days=3)
    assert "secret-tool-output-42" in _page(with_outputs["token"]).content.decode()
    listed = api.get(f"/api/v1/sessions/{chat.pk}/shares/").json()
    assert {s["id"] for s in listed} == {share["id"], with_outputs["id"]}


def test_revoked_expired_and_forged_tokens_are_404(api, chat, other_user, client_for):
    share = _share(api, chat)
    assert _page(share["token"]).status_code == 200
    bob = client_for(other_user)
    assert bob.delete(f"/api/v1/sessions/{chat.pk}/shares/{share['id']}/").status_code == 404
    assert _page(share["token"]).status_code == 200  # bob revoked nothing
    assert api.delete(f"/api/v1/sessions/{chat.pk}/shares/not-a-uuid/").status_code == 404
    assert api.delete(f"/api/v1/sessions/{chat.pk}/shares/{share['id']}/").status_code == 204
    revoked = _page(share["token"])
    assert revoked.status_code == 404 and b"How do I list files" not in revoked.content
    assert api.delete(f"/api/v1/sessions/{chat.pk}/shares/{share['id']}/").status_code == 404
    assert api.get(f"/api/v1/sessions/{chat.pk}/shares/").json() == []

    expiring = _share(api, chat, expires_in_days=1)
    Share.objects.filter(pk=expiring["id"]).update(expires_at=timezone.now() - dt.timedelta(seconds=1))
    assert _page(expiring["token"]).status_code == 404

    live = _share(api, chat)
    assert _page(live["token"][:-2] + "xx").status_code == 404  # forged signature
    assert _page(str(chat.pk)).status_code == 404
    assert _page("x" * 600).status_code == 404
    Share.objects.filter(pk=live["id"]).update(nonce="another")  # the row's nonce no longer matches
    assert _page(live["token"]).status_code == 404


def test_share_input_is_validated(api, chat):
    for body in ({"include_tool_outputs": "yes"}, {"expires_in_days": 0}, {"expires_in_days": 10_000}):
        response = api.post(f"/api/v1/sessions/{chat.pk}/shares/", body, format="json")
        assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_request"

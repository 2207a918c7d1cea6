"""The staff transcript viewer renders a tool-using transcript readably, escaped and scrubbed."""

from __future__ import annotations

import json

import pytest
from asgiref.sync import async_to_sync
from django.contrib.auth.models import Permission
from django.urls import reverse

from chat.models import ChatSession
from transcripts.store import DjangoSessionStore

pytestmark = pytest.mark.django_db

SID = "3f2b8c1e-5d6a-4b7c-9e8f-0a1b2c3d4e5f"
PROJECT = "-srv-var-workspaces-3f2b8c1e"
SECRET = "sk-ant-api03-THISISASECRETVALUE1234567890"


def _entries():
    base = {"sessionId": SID, "cwd": "/srv/var/workspaces/3f2b8c1e", "isSidechain": False}
    return [
        {
            "type": "queue-operation",
            "operation": "enqueue",
            "timestamp": "2025-06-01T10:00:00.000Z",
            "sessionId": SID,
        },
        {
            **base,
            "type": "user",
            "uuid": "u1",
            "parentUuid": None,
            "timestamp": "2025-06-01T10:00:00.100Z",
            "message": {"role": "user", "content": "list files & show <b>me</b>"},
        },
        {
            **base,
            "type": "attachment",
            "uuid": "a1",
            "timestamp": "2025-06-01T10:00:00.120Z",
            "attachment": {"type": "date", "date": "2025-06-01"},
        },
        {
            **base,
            "type": "assistant",
            "uuid": "t1",
            "timestamp": "2025-06-01T10:00:01.000Z",
            "message": {
                "id": "msg_1",
                "role": "assistant",
                "model": "claude-sonnet-4-5",
                "content": [{"type": "thinking", "thinking": "Plan: run ls <quietly>", "signature": "sig"}],
            },
        },
        {
            **base,
            "type": "assistant",
            "uuid": "t2",
            "timestamp": "2025-06-01T10:00:01.100Z",
            "message": {
                "id": "msg_1",
                "role": "assistant",
                "model": "claude-sonnet-4-5",
                "content": [{"type": "text", "text": "I'll run <ls> for you."}],
            },
        },
        {
            **base,
            "type": "assistant",
            "uuid": "t3",
            "timestamp": "2025-06-01T10:00:01.200Z",
            "message": {
                "id": "msg_1",
                "role": "assistant",
                "model": "claude-sonnet-4-5",
                "content": [
                    {
                        "type": "tool_use",
                        "id": "toolu_01",
                        "name": "Bash",
                        "input": {"command": "ls -la && echo '<script>alert(1)</script>'"},
                    }
                ],
            },
        },
        {
            **base,
            "type": "user",
            "uuid": "r1",
            "timestamp": "2025-06-01T10:00:02.000Z",
            "message": {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_01",
                        "content": f"README.md\n<img src=x onerror=alert(2)>\nANTHROPIC_API_KEY={SECRET}",
                        "is_error": False,
                    }
                ],
            },
            "toolUseResult": {"stdout": "README.md", "stderr": ""},
        },
        {
            **base,
            "type": "assistant",
            "uuid": "t4",
            "timestamp": "2025-06-01T10:00:03.000Z",
            "message": {
                "id": "msg_2",
                "role": "assistant",
                "model": "claude-sonnet-4-5",
                "content": [
                    {
                        "type": "tool_use",
                        "id": "toolu_02",
                        "name": "Agent",
                        "input": {"description": "dig", "prompt": "look deeper"},
                    }
                ],
            },
        },
        {
            **base,
            "type": "user",
            "uuid": "r2",
            "timestamp": "2025-06-01T10:00:05.000Z",
            "message": {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_02",
                        "content": [{"type": "text", "text": "sub-agent says hi"}],
                    }
                ],
            },
            "toolUseResult": {"agentId": "abc123", "status": "completed"},
        },
        {
            **base,
            "type": "assistant",
            "uuid": "t5",
            "timestamp": "2025-06-01T10:00:06.000Z",
            "message": {
                "id": "msg_3",
                "role": "assistant",
                "model": "claude-sonnet-4-5",
                "content": [
                    {
                        "type": "tool_use",
                        "id": "toolu_03",
                        "name": "Read",
                        "input": {"file_path": "/etc/shadow"},
                    }
                ],
            },
        },
        {
            **base,
            "type": "user",
            "uuid": "r3",
            "timestamp": "2025-06-01T10:00:06.500Z",
            "message": {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_03",
                        "content": "Permission denied by sandbox",
                        "is_error": True,
                    }
                ],
            },
        },
        {
            **base,
            "type": "system",
            "subtype": "compact_boundary",
            "uuid": "c1",
            "timestamp": "2025-06-01T10:05:00.000Z",
            "content": "Conversation compacted",
            "compactMetadata": {"trigger": "auto", "preTokens": 150123},
        },
        {
            **base,
            "type": "user",
            "uuid": "c2",
            "isCompactSummary": True,
            "timestamp": "2025-06-01T10:05:00.100Z",
            "message": {"role": "user", "content": "Summary of the earlier conversation: listed files."},
        },
        {
            **base,
            "type": "assistant",
            "uuid": "e1",
            "timestamp": "2025-06-01T10:06:00.000Z",
            "isApiErrorMessage": True,
            "error": "rate_limit",
            "message": {
                "id": "msg_e",
                "role": "assistant",
                "model": "<synthetic>",
                "content": [{"type": "text", "text": "API Error: 429 rate limited"}],
            },
        },
        {"type": "last-prompt", "lastPrompt": "list files", "sessionId": SID},
    ]


def _sub_entries():
    return [
        {
            "type": "user",
            "uuid": "s1",
            "isSidechain": True,
            "timestamp": "2025-06-01T10:00:03.500Z",
            "message": {"role": "user", "content": "look deeper"},
        },
        {
            "type": "assistant",
            "uuid": "s2",
            "isSidechain": True,
            "timestamp": "2025-06-01T10:00:04.500Z",
            "message": {"role": "assistant", "content": [{"type": "text", "text": "sub-agent says hi"}]},
        },
    ]


@pytest.fixture
def seeded(user):
    store = DjangoSessionStore()
    key = {"project_key": PROJECT, "session_id": SID}
    async_to_sync(store.append)(key, _entries())
    async_to_sync(store.append)({**key, "subpath": "subagents/agent-abc123"}, _sub_entries())
    chat = ChatSession.objects.create(owner=user, client_id="c-1", title="Files <chat>", agent_session_id=SID)
    return chat


@pytest.fixture
def staff_client(client, django_user_model):
    staff = django_user_model.objects.create_user(
        username="operator", password="pw-operator-1", is_staff=True
    )
    staff.user_permissions.add(Permission.objects.get(codename="view_transcript"))
    client.force_login(staff)
    return client


def test_viewer_renders_tool_using_transcript_escaped_and_scrubbed(seeded, staff_client):
    url = reverse("transcripts:viewer", args=[SID])
    assert url == f"/admin/transcripts/session/{SID}/"
    response = staff_client.get(url)
    assert response.status_code == 200
    html = response.content.decode()

    # user text, assistant text, thinking collapsed
    assert "list files &amp; show &lt;b&gt;me&lt;/b&gt;" in html
    assert "I&#x27;ll run &lt;ls&gt; for you." in html
    assert '<details class="tr-item tr-thinking">' in html and "Plan: run ls &lt;quietly&gt;" in html
    # tool call with name, input and output, escaped — no live markup from model/tool output
    assert '<strong class="tr-tool-name">Bash</strong>' in html
    assert "ls -la &amp;&amp; echo &#x27;&lt;script&gt;alert(1)&lt;/script&gt;&#x27;" in html
    assert "README.md\n&lt;img src=x onerror=alert(2)&gt;" in html
    assert "<script>alert(1)" not in html and "<img src=x" not in html and "<b>me</b>" not in html
    # secrets scrubbed
    assert SECRET not in html and "ANTHROPIC_API_KEY=[REDACTED]" in html
    # error tool output, API error, compaction boundary + summary, meta entries
    assert "tr-tool-error" in html and "Permission denied by sandbox" in html
    assert "API Error: 429 rate limited" in html and "tr-error" in html
    assert "Compaction boundary" in html and "150123 tokens before" in html
    assert "Summary of the earlier conversation" in html
    assert "attachment: date" in html and "last-prompt" in html
    # sub-agent transcript section, linked from the Agent call
    assert 'id="subagents/agent-abc123"' in html and 'href="#subagents/agent-abc123"' in html
    assert "Sub-agent transcript" in html and "look deeper" in html
    # timestamps, sizes, chat session + owner, download link
    assert "2025-06-01 10:00:02.000" in html
    assert "KiB" in html or " B" in html
    assert "Files &lt;chat&gt;" in html and "alice" in html
    assert reverse("transcripts:download", args=[SID]) in html
    # ordering: the tool output comes after its call and before the next assistant text
    assert html.index("toolu_01") < html.index("README.md") < html.index("Compaction boundary")


def test_download_is_scrubbed_jsonl_of_one_transcript(seeded, staff_client):
    url = reverse("transcripts:download", args=[SID])
    response = staff_client.get(url, {"project": PROJECT})
    assert response.status_code == 200
    assert response["Content-Disposition"] == f'attachment; filename="{SID}.jsonl"'
    body = b"".join(response.streaming_content).decode()
    lines = [json.loads(line) for line in body.splitlines()]
    assert len(lines) == len(_entries())
    assert [line.get("uuid") for line in lines] == [e.get("uuid") for e in _entries()]
    assert SECRET not in body
    sub = staff_client.get(url, {"project": PROJECT, "subpath": "subagents/agent-abc123"})
    assert [json.loads(x)["uuid"] for x in b"".join(sub.streaming_content).decode().splitlines()] == [
        "s1",
        "s2",
    ]
    assert staff_client.get(url, {"subpath": "subagents/nope"}).status_code == 404


def test_non_staff_and_anonymous_are_refused(seeded, client, user, django_user_model):
    url = reverse("transcripts:viewer", args=[SID])
    download = reverse("transcripts:download", args=[SID])
    for target in (url, download):
        anonymous = client.get(target)
        assert anonymous.status_code == 302 and "/admin/login/" in anonymous["Location"]
    client.force_login(user)  # authenticated but not staff
    for target in (url, download):
        response = client.get(target)
        assert response.status_code == 302 and "/admin/login/" in response["Location"]
        assert b"README" not in response.content
    staff_without_perm = django_user_model.objects.create_user(
        username="intern", password="pw-intern-1", is_staff=True
    )
    client.force_login(staff_without_perm)
    assert client.get(url).status_code == 403
    assert client.get(download).status_code == 403


def test_unknown_session_is_404(staff_client, db):
    assert staff_client.get(reverse("transcripts:viewer", args=["nope"])).status_code == 404


def test_admin_changelist_searchable_by_session_user_chat_and_date(seeded, staff_client, other_user):
    ChatSession.objects.create(
        owner=other_user, client_id="c-2", title="unrelated", agent_session_id="other-sid"
    )
    async_to_sync(DjangoSessionStore().append)(
        {"project_key": "-srv-other", "session_id": "other-sid"}, [{"type": "x", "uuid": "o"}]
    )
    changelist = reverse("admin:transcripts_transcript_changelist")

    def sessions(**params):
        response = staff_client.get(changelist, params)
        assert response.status_code == 200
        return {t.session_id for t in response.context["cl"].result_list}

    assert sessions() == {SID, "other-sid"}
    assert sessions(q=SID[:8]) == {SID}
    assert sessions(q="alice") == {SID}
    assert sessions(q="bob") == {"other-sid"}
    assert sessions(q=str(seeded.pk)) == {SID}
    assert sessions(kind="sub") == {SID}
    assert sessions(**{"updated_at__year": "2000"}) == set()
    html = staff_client.get(changelist).content.decode()
    assert reverse("transcripts:viewer", args=[SID]) in html
    # read-only
    assert staff_client.get(reverse("admin:transcripts_transcript_add")).status_code == 403

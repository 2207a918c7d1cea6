"""Per-chat settings in the admin: the session list filters by model and tool mode, a session's
page shows its settings, and users' tool rules (chat.ToolRule) are listed, filtered, searched and
edited there."""

from __future__ import annotations

import pytest

from chat.models import ChatSession, ToolRule
from tests.ops.conftest import seed_session

pytestmark = pytest.mark.django_db

SESSIONS = "/admin/chat/chatsession/"
RULES = "/admin/chat/toolrule/"


def listed(client, url: str, query: str) -> set:
    response = client.get(f"{url}?{query}")
    assert response.status_code == 200
    return {row.pk for row in response.context["cl"].result_list}


def test_session_list_filters_by_model_and_tool_mode(user, staff_client):
    opus = seed_session(user, title="opus chat")
    ChatSession.objects.filter(pk=opus.pk).update(model="claude-opus-5", tool_mode="plan")
    plain = seed_session(user, title="plain chat")
    html = staff_client.get(SESSIONS).content.decode()
    assert "By model" in html and "By tool mode" in html and "claude-opus-5" in html
    assert listed(staff_client, SESSIONS, "model=claude-opus-5") == {opus.pk}
    assert listed(staff_client, SESSIONS, "tool_mode__exact=plan") == {opus.pk}
    assert listed(staff_client, SESSIONS, "tool_mode__exact=auto") == {plain.pk}


def test_session_page_shows_the_settings(user, staff_client):
    session = seed_session(user, title="settings")
    ChatSession.objects.filter(pk=session.pk).update(
        instructions="Answer <b>briefly</b>.", tool_mode="ask", max_steps=7
    )
    html = staff_client.get(f"{SESSIONS}{session.pk}/change/").content.decode()
    for label in ("Model:", "Tool mode:", "Max steps:", "Instructions:"):
        assert label in html, label
    assert "Answer &lt;b&gt;briefly&lt;/b&gt;." in html and ">7<" in html


def test_tool_rules_are_listed_filtered_searched_and_edited(user, other_user, staff_client):
    bash = ToolRule.objects.create(user=user, tool="Bash", decision="ask")
    mcp = ToolRule.objects.create(user=other_user, tool="mcp__notes__*", decision="deny")
    response = staff_client.get(RULES)
    assert response.status_code == 200 and "mcp__notes__*" in response.content.decode()
    assert listed(staff_client, RULES, "decision__exact=deny") == {mcp.pk}
    assert listed(staff_client, RULES, "q=alice") == {bash.pk}
    assert listed(staff_client, RULES, "q=mcp__") == {mcp.pk}

    assert staff_client.get(f"{RULES}add/").status_code == 200
    created = staff_client.post(f"{RULES}add/", {"user": user.pk, "tool": "Write", "decision": "deny"})
    assert created.status_code == 302, created.content.decode()[:2000]
    assert ToolRule.objects.get(user=user, tool="Write").decision == "deny"
    # One rule per user and tool.
    again = staff_client.post(f"{RULES}add/", {"user": user.pk, "tool": "Bash", "decision": "allow"})
    assert again.status_code == 200 and "already exists" in again.content.decode()
    changed = staff_client.post(
        f"{RULES}{bash.pk}/change/", {"user": user.pk, "tool": "Bash", "decision": "allow"}
    )
    assert changed.status_code == 302
    bash.refresh_from_db()
    assert bash.decision == "allow"
    bad = staff_client.post(f"{RULES}add/", {"user": user.pk, "tool": "Read", "decision": "maybe"})
    assert bad.status_code == 200 and not ToolRule.objects.filter(tool="Read").exists()

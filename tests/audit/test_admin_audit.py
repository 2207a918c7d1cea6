"""Every operator action in the admin leaves an audit event (who, what, when), through the real admin
with the Django test client; the audit log itself is read-only in the admin."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from urllib.parse import urlencode

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import Permission
from django.test import Client
from django.utils import timezone

from audit.models import AuditEvent
from chat.apikeys import api_key_create
from chat.models import (
    ApiKey,
    ChatMessage,
    ChatSession,
    ChatTurn,
    McpServer,
    RateLimitRecord,
    ToolRule,
    UserBudget,
)
from tests.ops.conftest import dead_worker, plant_lock, seed_session, seed_turn
from transcripts.models import Transcript

E, N = ChatMessage.Kind.ERROR, ChatMessage.Kind.NORMAL
SESSIONS = "/admin/chat/chatsession/"
AUDIT = "/admin/audit/auditevent/"


def act(client: Client, url: str, action: str, pks, **extra) -> object:
    data = {"action": action, "_selected_action": [str(pk) for pk in pks], **extra}
    return client.post(url, data, follow=True)


def events(action: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action).order_by("id"))


def only(action: str) -> AuditEvent:
    found = events(action)
    assert len(found) == 1, (action, found, list(AuditEvent.objects.values_list("action", flat=True)))
    return found[0]


def assert_by_staff(event: AuditEvent, staff, target=None) -> None:
    assert event.actor == staff and event.actor_label == staff.username
    assert event.source == AuditEvent.Source.ADMIN
    assert timezone.now() - event.created_at < dt.timedelta(minutes=1)
    if target is not None:
        assert event.target_type == target._meta.label_lower and event.target_id == str(target.pk)


# --- admin actions -------------------------------------------------------------------------------


@pytest.mark.django_db
def test_clear_error_markers_is_audited_per_session(user, staff, staff_client):
    failing = seed_session(user, title="failing", kinds=[N, E, E])
    busy = seed_session(user, title="busy", kinds=[N, E])
    seed_turn(busy)
    act(staff_client, SESSIONS, "clear_error_markers", [failing.pk, busy.pk])
    by_target = {e.target_id: e for e in events("chatsession.clear_error_markers")}
    assert set(by_target) == {str(failing.pk), str(busy.pk)}
    assert by_target[str(failing.pk)].details == {"cleared": 2}
    assert by_target[str(busy.pk)].details == {"cleared": 0, "skipped": "active turn"}
    assert_by_staff(by_target[str(failing.pk)], staff, failing)
    assert by_target[str(failing.pk)].target_repr == str(failing)


@pytest.mark.django_db
def test_release_stuck_lock_is_audited(user, staff, staff_client, locks_cleanup):
    session = seed_session(user, title="dead worker", kinds=[N])
    seed_turn(session, heartbeat_age=5)
    plant_lock(session.pk, worker=dead_worker())
    locks_cleanup.append(str(session.pk))
    act(staff_client, SESSIONS, "release_stuck_lock", [session.pk])
    event = only("chatsession.release_lock")
    assert_by_staff(event, staff, session)
    assert event.details["released"] is True and event.details["detail"]


@pytest.mark.django_db
def test_archive_and_unarchive_are_audited(user, staff, staff_client):
    a, b = seed_session(user), seed_session(user)
    act(staff_client, SESSIONS, "archive_sessions", [a.pk, b.pk])
    act(staff_client, SESSIONS, "unarchive_sessions", [b.pk])
    assert {e.target_id for e in events("chatsession.archive")} == {str(a.pk), str(b.pk)}
    assert_by_staff(only("chatsession.unarchive"), staff, b)


@pytest.mark.django_db(transaction=True)
async def test_stopping_a_turn_is_audited(backend_api, user, staff, locks_cleanup):
    """A real turn (api backend, scripted model) stopped with the admin action."""
    from chat.runtime import turn_start, turn_wait_idle

    handle = await turn_start(user=user, chat_id=str(uuid.uuid4()), text="/slow 200 100")
    locks_cleanup.append(handle.session_id)

    def stop() -> None:
        from django.db import connections

        try:
            client = Client()
            client.force_login(staff)
            act(client, SESSIONS, "stop_active_turn", [handle.session_id])
        finally:
            connections.close_all()

    await sync_to_async(stop)()
    await turn_wait_idle(timeout=20)
    event = await sync_to_async(only)("chatsession.stop_turn")
    assert event.actor_id == staff.pk and event.target_id == handle.session_id
    assert event.details == {"stopped": True, "turn": handle.turn_id}
    turn = await sync_to_async(ChatTurn.objects.get)(pk=handle.turn_id)
    assert turn.status == ChatTurn.Status.STOPPED
    await asyncio.sleep(0)


@pytest.mark.django_db
def test_revoking_keys_is_audited(user, staff, staff_client):
    key, _ = api_key_create(owner=user, name="ci bot")
    already, _ = api_key_create(owner=user, name="old")
    act(staff_client, "/admin/chat/apikey/", "revoke_keys", [already.pk])
    act(staff_client, "/admin/chat/apikey/", "revoke_keys", [key.pk, already.pk])
    revoked = events("apikey.revoke")
    assert [e.target_id for e in revoked] == [str(already.pk), str(key.pk)]  # a revoked key: once
    assert_by_staff(revoked[1], staff, key)
    assert key.prefix in revoked[1].target_repr


@pytest.mark.django_db
def test_creating_a_key_in_the_admin_is_audited_without_the_key(user, staff, staff_client):
    response = staff_client.post("/admin/chat/apikey/add/", {"owner": user.pk, "name": "from admin"})
    raw_key = response.context["raw_key"]
    event = only("apikey.add")
    assert_by_staff(event, staff, ApiKey.objects.get(name="from admin"))
    assert event.details["changes"]["name"]["to"] == "from admin"
    assert event.details["changes"]["owner"]["to"] == user.pk
    assert raw_key not in str(event.details) and raw_key not in event.target_repr


# --- the admin's own add / change / delete -------------------------------------------------------


@pytest.mark.django_db
def test_budget_changes_are_audited_with_old_and_new_limits(user, staff, staff_client):
    staff_client.post(
        "/admin/chat/userbudget/add/", {"user": user.pk, "daily_limit": "5000", "weekly_limit": ""}
    )
    budget = UserBudget.objects.get(user=user)
    added = only("userbudget.add")
    assert_by_staff(added, staff, budget)
    assert added.details["changes"]["daily_limit"]["to"] == 5000

    staff_client.post(
        f"/admin/chat/userbudget/{budget.pk}/change/",
        {"user": user.pk, "daily_limit": "9000", "weekly_limit": "20000"},
    )
    changed = only("userbudget.change")
    assert_by_staff(changed, staff, budget)
    assert changed.details["changes"] == {
        "daily_limit": {"from": 5000, "to": 9000},
        "weekly_limit": {"from": None, "to": 20000},
    }
    assert changed.details["message"]  # Django's own change message rides along

    staff_client.post(f"/admin/chat/userbudget/{budget.pk}/delete/", {"post": "yes"})
    assert not UserBudget.objects.exists()
    deleted = only("userbudget.delete")
    assert deleted.target_id == str(budget.pk) and deleted.actor == staff


@pytest.mark.django_db
def test_tool_rule_changes_are_audited(user, staff, staff_client):
    staff_client.post("/admin/chat/toolrule/add/", {"user": user.pk, "tool": "Bash", "decision": "ask"})
    rule = ToolRule.objects.get(user=user, tool="Bash")
    staff_client.post(
        f"/admin/chat/toolrule/{rule.pk}/change/", {"user": user.pk, "tool": "Bash", "decision": "deny"}
    )
    act(staff_client, "/admin/chat/toolrule/", "delete_selected", [rule.pk], post="yes")
    assert not ToolRule.objects.exists()
    assert only("toolrule.add").target_id == str(rule.pk)
    assert only("toolrule.change").details["changes"] == {"decision": {"from": "ask", "to": "deny"}}
    assert_by_staff(only("toolrule.delete"), staff)


@pytest.mark.django_db
def test_mcp_server_changes_are_audited_with_headers_redacted(staff, staff_client):
    form = {
        "name": "tickets",
        "transport": "http",
        "command": "",
        "url": "https://tickets.example/mcp",
        "headers": '{"Authorization": "Bearer literal-secret"}',
        "enabled": "on",
        "timeout_seconds": "30",
        "description": "",
    }
    response = staff_client.post("/admin/chat/mcpserver/add/", form)
    assert response.status_code == 302, response.content.decode()[:2000]
    server = McpServer.objects.get(name="tickets")
    staff_client.post(f"/admin/chat/mcpserver/{server.pk}/change/", {**form, "enabled": ""})
    staff_client.post(f"/admin/chat/mcpserver/{server.pk}/delete/", {"post": "yes"})
    added, changed, deleted = only("mcpserver.add"), only("mcpserver.change"), only("mcpserver.delete")
    assert added.details["changes"]["headers"] == {"from": "(redacted)", "to": "(redacted)"}
    assert changed.details["changes"]["enabled"] == {"from": True, "to": False}
    assert changed.details["changes"].get("headers", {"from": "(redacted)"})["from"] == "(redacted)"
    assert deleted.target_repr == "tickets"
    for event in (added, changed, deleted):
        assert_by_staff(event, staff)
        assert "literal-secret" not in str(event.details)


@pytest.mark.django_db
def test_deleting_sessions_and_rate_limit_records_is_audited(user, staff, staff_client):
    session = seed_session(user, title="to delete", kinds=[N])
    records = [RateLimitRecord.objects.create(user=user, source="upstream", model="m") for _ in range(2)]
    act(staff_client, SESSIONS, "delete_selected", [session.pk], post="yes")
    act(staff_client, "/admin/chat/ratelimitrecord/", "delete_selected", [r.pk for r in records], post="yes")
    assert not ChatSession.objects.filter(pk=session.pk).exists() and not RateLimitRecord.objects.exists()
    event = only("chatsession.delete")
    assert_by_staff(event, staff)
    assert event.target_id == str(session.pk) and event.target_repr == str(session)
    assert {e.target_id for e in events("ratelimitrecord.delete")} == {str(r.pk) for r in records}


@pytest.mark.django_db
def test_user_changes_are_audited_and_passwords_never_logged(user, staff, staff_client):
    page = staff_client.get(f"/admin/auth/user/{user.pk}/change/")
    form = page.context["adminform"].form
    data = {name: value for name, value in form.initial.items() if value is not None}
    data.update(
        {
            "username": user.username,
            "is_active": "on",
            "is_staff": "on",
            "date_joined_0": f"{user.date_joined:%Y-%m-%d}",
            "date_joined_1": f"{user.date_joined:%H:%M:%S}",
            "last_login_0": "",
            "last_login_1": "",
            "groups": [],
            "user_permissions": [],
        }
    )
    data.pop("password", None)
    data.pop("is_superuser", None)
    response = staff_client.post(f"/admin/auth/user/{user.pk}/change/", data)
    assert response.status_code == 302, response.context["adminform"].form.errors
    user.refresh_from_db()
    assert user.is_staff
    assert only("user.change").details["changes"]["is_staff"] == {"from": False, "to": True}

    response = staff_client.post(
        f"/admin/auth/user/{user.pk}/password/",
        {"password1": "a-new-password-77", "password2": "a-new-password-77", "usable_password": "true"},
    )
    assert response.status_code == 302
    changes = events("user.change")
    assert len(changes) == 2 and changes[1].target_id == str(user.pk)
    assert "a-new-password-77" not in str(changes[1].details)


# --- the audit log in the admin ------------------------------------------------------------------


@pytest.mark.django_db
def test_audit_admin_lists_filters_and_searches(user, staff, staff_client):
    first, second = seed_session(user, title="alpha"), seed_session(user, title="beta")
    act(staff_client, SESSIONS, "archive_sessions", [first.pk])
    act(staff_client, SESSIONS, "clear_error_markers", [second.pk])
    response = staff_client.get(AUDIT)
    assert response.status_code == 200
    html = response.content.decode()
    assert "chatsession.archive" in html and "chatsession.clear_error_markers" in html
    assert staff.username in html

    def listed(query: str) -> set[str]:
        return {e.action for e in staff_client.get(f"{AUDIT}?{query}").context["cl"].result_list}

    assert listed("action__exact=chatsession.archive") == {"chatsession.archive"}
    assert listed(f"actor__id__exact={staff.pk}") == {
        "chatsession.archive",
        "chatsession.clear_error_markers",
    }
    assert listed("q=beta") == {"chatsession.clear_error_markers"}
    assert listed("source__exact=command") == set()
    midnight = timezone.now().replace(hour=0, minute=0, second=0, microsecond=0)
    assert len(listed(urlencode({"created_at__gte": midnight.isoformat()}))) == 2
    event = only("chatsession.archive")
    detail = staff_client.get(f"{AUDIT}{event.pk}/change/")
    assert detail.status_code == 200 and "alpha" in detail.content.decode()


@pytest.mark.django_db
def test_audit_admin_refuses_add_edit_and_delete(user, staff_client):
    session = seed_session(user)
    act(staff_client, SESSIONS, "archive_sessions", [session.pk])
    event = only("chatsession.archive")
    assert staff_client.get(f"{AUDIT}add/").status_code == 403
    response = staff_client.post(f"{AUDIT}{event.pk}/change/", {"action": "forged", "actor_label": "x"})
    assert response.status_code == 403
    assert staff_client.post(f"{AUDIT}{event.pk}/delete/", {"post": "yes"}).status_code == 403
    act(staff_client, AUDIT, "delete_selected", [event.pk], post="yes")
    event.refresh_from_db()
    assert event.action == "chatsession.archive" and event.actor_label == "operator"
    assert AuditEvent.objects.count() == 1
    page = staff_client.get(f"{AUDIT}{event.pk}/change/").content.decode()
    assert 'name="_save"' not in page and "deletelink" not in page


@pytest.mark.django_db
def test_audit_admin_is_for_staff_with_view_permission(user, user_client, django_user_model):
    assert user_client.get(AUDIT).status_code == 302  # not staff: to the login page
    clerk = django_user_model.objects.create_user(
        username="clerk", password="clerk-password-1", is_staff=True
    )
    client = Client()
    client.force_login(clerk)
    assert client.get(AUDIT).status_code == 403
    clerk.user_permissions.add(Permission.objects.get(codename="view_auditevent"))
    assert client.get(AUDIT).status_code == 200


@pytest.mark.django_db
def test_downloading_a_transcript_is_audited(staff, staff_client):
    transcript = Transcript.objects.create(project_key="-ws", session_id="cli-1", updated_at=timezone.now())
    response = staff_client.get("/admin/transcripts/session/cli-1/download.jsonl")
    assert response.status_code == 200
    b"".join(response.streaming_content)
    event = only("transcript.download")
    assert_by_staff(event, staff, transcript)
    assert event.details == {"session_id": "cli-1", "subpath": ""}

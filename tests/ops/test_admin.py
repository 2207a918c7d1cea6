"""The admin as a control room: lists, filters, read-only records, and every action (as staff;
refused for non-staff)."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid

import pytest
from asgiref.sync import sync_to_async
from django.test import Client
from django.utils import timezone

from chat.models import ApiKey, ChatMessage, ChatSession, ChatTurn, RateLimitRecord, TokenUsage, UserBudget
from chat.services import message_append
from tests.ops.conftest import dead_worker, live_worker, plant_lock, seed_session, seed_turn, seed_usage

E, R, N = ChatMessage.Kind.ERROR, ChatMessage.Kind.RETRYABLE_ERROR, ChatMessage.Kind.NORMAL
SESSIONS = "/admin/chat/chatsession/"


def act(client: Client, url: str, action: str, pks) -> object:
    return client.post(url, {"action": action, "_selected_action": [str(pk) for pk in pks]}, follow=True)


def kinds(session) -> list[str]:
    return list(
        ChatMessage.objects.filter(session=session).order_by("sequence").values_list("kind", flat=True)
    )


def texts(response) -> str:
    return " | ".join(str(m) for m in response.context["messages"]) if response.context else ""


# --- access --------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_non_staff_is_refused(user, user_client):
    session = seed_session(user, kinds=[N, E])
    for url in (
        SESSIONS,
        f"{SESSIONS}{session.pk}/change/",
        "/admin/chat/tokenusage/charts/",
        "/admin/chat/apikey/",
    ):
        response = user_client.get(url)
        assert response.status_code == 302 and "/admin/login/" in response["Location"], url
    response = user_client.post(
        SESSIONS, {"action": "clear_error_markers", "_selected_action": [str(session.pk)]}
    )
    assert response.status_code == 302 and "/admin/login/" in response["Location"]
    assert kinds(session) == [N, E]
    assert Client().get(SESSIONS).status_code == 302  # anonymous


@pytest.mark.django_db
def test_staff_without_change_permission_cannot_act(user, django_user_model):
    from django.contrib.auth.models import Permission

    viewer = django_user_model.objects.create_user(
        username="viewer", password="viewer-password-1", is_staff=True
    )
    viewer.user_permissions.add(Permission.objects.get(codename="view_chatsession"))
    client = Client()
    client.force_login(viewer)
    session = seed_session(user, kinds=[N, E])
    assert client.get(SESSIONS).status_code == 200
    client.post(SESSIONS, {"action": "clear_error_markers", "_selected_action": [str(session.pk)]})
    assert kinds(session) == [N, E]


# --- session list --------------------------------------------------------------------------------


@pytest.mark.django_db
def test_session_list_columns_filters_search(user, other_user, staff_client, django_assert_max_num_queries):
    failing = seed_session(user, title="failing chat", kinds=[N, N, E])
    busy = seed_session(other_user, title="busy chat", kinds=[N], backend="sdk")
    seed_turn(busy)
    calm = seed_session(user, title="calm chat", kinds=[N, N, N, N])
    for i in range(10):
        seed_session(other_user, title=f"filler {i}", kinds=[N])

    with django_assert_max_num_queries(12):  # annotated: no query per row
        response = staff_client.get(SESSIONS)
    assert response.status_code == 200
    rows = {s.pk: s for s in response.context["cl"].result_list}
    assert rows[failing.pk].message_count == 3 and rows[calm.pk].message_count == 4
    assert rows[busy.pk].has_active_turn and not rows[failing.pk].has_active_turn
    assert rows[failing.pk].last_kind == E and rows[calm.pk].last_kind == N

    def listed(query: str) -> set:
        return {s.pk for s in staff_client.get(f"{SESSIONS}?{query}").context["cl"].result_list}

    assert listed("active_turn=yes") == {busy.pk}
    assert listed("error_marker=yes") == {failing.pk}
    assert calm.pk in listed("error_marker=no") and failing.pk not in listed("error_marker=no")
    assert listed("active_turn=no") == set(
        ChatSession.objects.exclude(pk=busy.pk).values_list("pk", flat=True)
    )
    assert listed("backend=sdk") == {busy.pk}
    assert listed("q=calm") == {calm.pk}
    assert listed("q=bob") == {busy.pk} | {
        s.pk for s in ChatSession.objects.filter(title__startswith="filler")
    }
    assert listed(f"q={failing.pk}") == {failing.pk}


@pytest.mark.django_db
def test_session_change_page_renders_messages_readably(user, staff_client):
    session = seed_session(user, title="tools")
    session.agent_session_id = "cli-session-1"
    session.save()
    message_append(session=session, role="user", text="run ls please")
    message_append(
        session=session,
        role="assistant",
        text="done",
        parts=[
            {"type": "reasoning", "text": "thinking hard"},
            {
                "type": "tool-Bash",
                "toolCallId": "toolu_1",
                "state": "output-available",
                "input": {"command": "ls"},
                "output": "a.txt",
            },
            {"type": "text", "text": "<b>done</b>"},
        ],
    )
    message_append(
        session=session,
        role="assistant",
        text="The model is overloaded.",
        kind=R,
        metadata={"code": "overloaded"},
    )
    html = staff_client.get(f"{SESSIONS}{session.pk}/change/").content.decode()
    assert "run ls please" in html and "thinking hard" in html
    assert (
        "Bash" in html
        and "toolu_1" in html
        and "a.txt" in html
        and "&quot;command&quot;: &quot;ls&quot;" in html
    )
    assert "&lt;b&gt;done&lt;/b&gt;" in html, "content is escaped"
    assert "retryable_error" in html and "overloaded" in html
    from chat.admin import transcript_url

    url = transcript_url("cli-session-1")
    if url:  # the transcripts app provides the viewer
        assert url in html


@pytest.mark.django_db
def test_inline_shows_only_the_newest_200_messages(user, staff_client):
    session = seed_session(user)
    ChatMessage.objects.bulk_create(
        [ChatMessage(session=session, sequence=i, role="user", text=f"message-{i:03d}") for i in range(205)]
    )
    html = staff_client.get(f"{SESSIONS}{session.pk}/change/").content.decode()
    assert "message-204" in html and "message-005" in html
    assert "message-004" not in html and "message-000" not in html


# --- session actions -----------------------------------------------------------------------------


@pytest.mark.django_db
def test_action_clear_error_markers(user, staff_client):
    trailing = seed_session(user, kinds=[N, N, R, E])
    middle = seed_session(user, kinds=[N, E, N])
    busy = seed_session(user, kinds=[N, E])
    seed_turn(busy)
    response = act(staff_client, SESSIONS, "clear_error_markers", [trailing.pk, middle.pk, busy.pk])
    assert response.status_code == 200
    assert "Cleared 2 error marker(s); skipped 1 session(s) with an active turn." in texts(response)
    assert kinds(trailing) == [N, N] and kinds(middle) == [N, E, N] and kinds(busy) == [N, E]


@pytest.mark.django_db
def test_action_archive(user, staff_client):
    a, b, c = (seed_session(user) for _ in range(3))
    response = act(staff_client, SESSIONS, "archive_sessions", [a.pk, b.pk])
    assert "Archived 2 session(s)." in texts(response)
    assert set(ChatSession.objects.filter(archived=True).values_list("pk", flat=True)) == {a.pk, b.pk}
    act(staff_client, SESSIONS, "unarchive_sessions", [a.pk])
    assert set(ChatSession.objects.filter(archived=True).values_list("pk", flat=True)) == {b.pk}


@pytest.mark.django_db
def test_action_release_stuck_lock(user, staff_client, locks_cleanup):
    from chat.runtime import locks

    dead = seed_session(user, title="dead worker", kinds=[N])
    dead_turn = seed_turn(dead, heartbeat_age=5)
    live = seed_session(user, title="live worker", kinds=[N])
    live_turn = seed_turn(live, heartbeat_age=1, worker=live_worker())
    lockless = seed_session(user, title="lease expired", kinds=[N])
    lockless_turn = seed_turn(lockless, heartbeat_age=60)
    plant_lock(dead.pk, worker=dead_worker())
    plant_lock(live.pk, worker=live_worker())
    plant_lock(lockless.pk, worker=live_worker(), expired=True)
    locks_cleanup.extend([dead.pk, live.pk, lockless.pk])

    response = act(staff_client, SESSIONS, "release_stuck_lock", [dead.pk, live.pk, lockless.pk])
    messages = texts(response)
    assert "dead worker: lock released, 1 turn(s) marked interrupted." in messages
    assert "lease expired: no lock to release, 1 turn(s) marked interrupted." in messages
    assert "live worker: refused, not stuck: lock held by" in messages and "(live)" in messages

    assert locks.lock_holder(locks.session_key(dead.pk)) is None
    assert locks.lock_holder(locks.session_key(live.pk)) is not None
    for turn, session in ((dead_turn, dead), (lockless_turn, lockless)):
        turn.refresh_from_db()
        assert turn.status == ChatTurn.Status.INTERRUPTED
        marker = ChatMessage.objects.filter(session=session).order_by("-sequence").first()
        assert marker.kind == R and "stopped while answering" in marker.text
    assert ChatTurn.objects.get(pk=live_turn.pk).status == "running" and kinds(live) == [N]


@pytest.mark.django_db(transaction=True)
async def test_action_stop_active_turn(backend_api, user, staff, locks_cleanup):
    """A real turn (api backend, scripted model) is stopped from the admin: partial output kept,
    turn status stopped, the session free again."""
    from chat.runtime import turn_start, turn_wait_idle

    handle = await turn_start(user=user, chat_id=str(uuid.uuid4()), text="/slow 200 100")
    locks_cleanup.append(handle.session_id)
    idle = await sync_to_async(seed_session)(user, kinds=[N])

    def stop() -> str:
        from django.db import connections

        try:
            client = Client()
            client.force_login(staff)
            return texts(act(client, SESSIONS, "stop_active_turn", [handle.session_id, idle.pk]))
        finally:
            connections.close_all()

    loop = asyncio.get_running_loop()
    started = loop.time()
    message = await sync_to_async(stop)()
    assert "Asked 1 active turn(s) to stop; 1 session(s) had no active turn." in message
    await turn_wait_idle(timeout=20)
    assert loop.time() - started < 15, "the 20-second answer was cut short"
    turn = await sync_to_async(ChatTurn.objects.get)(pk=handle.turn_id)
    assert turn.status == ChatTurn.Status.STOPPED


# --- usage, rate limits, keys, budgets -----------------------------------------------------------


@pytest.mark.django_db
def test_token_usage_is_read_only_and_charted(user, other_user, staff_client):
    seed_usage(user, weighted=1234, model="claude-a", cost=0.5)
    seed_usage(other_user, weighted=99, model="claude-b", cost=0.25, at=timezone.now() - dt.timedelta(days=3))
    seed_usage(
        user, weighted=777, model="claude-a", at=timezone.now() - dt.timedelta(days=60)
    )  # outside the window
    listing = staff_client.get("/admin/chat/tokenusage/")
    assert listing.status_code == 200 and b"/admin/chat/tokenusage/charts/" in listing.content
    assert staff_client.get("/admin/chat/tokenusage/add/").status_code == 403
    row = TokenUsage.objects.first()
    page = staff_client.get(f"/admin/chat/tokenusage/{row.pk}/change/").content.decode()
    assert 'name="weighted_tokens"' not in page, "no editable inputs"

    charts = staff_client.get("/admin/chat/tokenusage/charts/")
    html = charts.content.decode()
    assert (
        charts.status_code == 200
        and html.count('<svg xmlns="http://www.w3.org/2000/svg" role="img" class="usage-chart"') == 5
        and "cdn" not in html.lower()
    )
    assert "claude-a" in html and "claude-b" in html and "alice" in html and "bob" in html
    assert (
        "<strong>1,333</strong> weighted" in html and "$0.7500" in html
    )  # 1234 + 99 in 30 days; the 777 is older
    assert "<title>alice: 1.2k" in html and "<title>bob: 99" in html
    assert staff_client.get("/admin/chat/usagechart/").url == "/admin/chat/tokenusage/charts/"
    assert b"usage charts" in staff_client.get("/admin/").content.lower()


@pytest.mark.django_db
def test_rate_limit_records_filter_active_and_past(user, staff_client):
    now = timezone.now()
    active = RateLimitRecord.objects.create(
        user=user,
        source="upstream",
        model="m",
        resets_at=now + dt.timedelta(hours=1),
        raw_message="HTTP 429: slow down",
    )
    past = RateLimitRecord.objects.create(user=user, source="budget", resets_at=now - dt.timedelta(hours=1))
    response = staff_client.get("/admin/chat/ratelimitrecord/?state=active")
    assert {r.pk for r in response.context["cl"].result_list} == {active.pk}
    assert b"HTTP 429: slow down" in response.content
    assert {
        r.pk for r in staff_client.get("/admin/chat/ratelimitrecord/?state=past").context["cl"].result_list
    } == {past.pk}
    assert staff_client.get("/admin/chat/ratelimitrecord/add/").status_code == 403


@pytest.mark.django_db
def test_api_keys_listed_without_hash_and_revoked(user, staff_client):
    from chat.apikeys import api_key_create

    key, raw = api_key_create(owner=user, name="ci bot")
    other, _ = api_key_create(owner=user, name="laptop")
    listing = staff_client.get("/admin/chat/apikey/").content.decode()
    page = staff_client.get(f"/admin/chat/apikey/{key.pk}/change/").content.decode()
    for html in (listing, page):
        assert "ci bot" in html and key.prefix in html
        assert key.hashed_key not in html and key.salt not in html and raw.split("_", 2)[2] not in html
    response = act(staff_client, "/admin/chat/apikey/", "revoke_keys", [key.pk])
    assert "Revoked 1 API key(s)." in texts(response)
    key.refresh_from_db()
    other.refresh_from_db()
    assert key.revoked_at is not None and other.revoked_at is None


@pytest.mark.django_db
def test_user_budget_is_editable(user, staff_client, settings):
    settings.USER_TOKEN_BUDGET_DAILY = 1000
    response = staff_client.post(
        "/admin/chat/userbudget/add/",
        {"user": user.pk, "daily_limit": "5000", "weekly_limit": ""},
        follow=True,
    )
    assert response.status_code == 200
    budget = UserBudget.objects.get(user=user)
    assert budget.daily_limit == 5000 and budget.weekly_limit is None
    seed_usage(user, weighted=2000)
    from chat.usage import budget_check

    budget_check(user=user, model="m", reserve=[].append)  # 2000 < 5000: the override applies
    page = staff_client.get(f"/admin/chat/userbudget/{budget.pk}/change/").content.decode()
    assert "2,000 used" in page


@pytest.mark.django_db
def test_messages_and_turns_are_read_only(user, staff_client):
    session = seed_session(user, kinds=[N])
    turn = seed_turn(session)
    message = ChatMessage.objects.get(session=session)
    assert (
        staff_client.post(
            f"/admin/chat/chatmessage/{message.pk}/change/", {"text": "rewritten", "sequence": 9}
        ).status_code
        == 403
    )
    assert (
        staff_client.post(f"/admin/chat/chatturn/{turn.pk}/change/", {"status": "finished"}).status_code
        == 403
    )
    assert staff_client.get(f"/admin/chat/chatturn/{turn.pk}/delete/").status_code == 403
    message.refresh_from_db()
    assert message.text == "normal 0" and message.sequence == 0


@pytest.mark.django_db
def test_api_key_created_from_the_admin_is_shown_once_and_works(user, staff_client, user_client):
    from chat.apikeys import api_key_authenticate

    assert staff_client.get("/admin/chat/apikey/add/").status_code == 200
    response = staff_client.post("/admin/chat/apikey/add/", {"owner": user.pk, "name": "from admin"})
    assert response.status_code == 200 and "no-store" in response["Cache-Control"]
    raw_key = response.context["raw_key"]
    assert raw_key and raw_key in response.content.decode()
    key = ApiKey.objects.get(name="from admin")
    assert key.owner == user and raw_key not in (key.hashed_key, key.salt)
    assert api_key_authenticate(raw_key=raw_key) == key
    # Listing and change pages never show it again.
    assert raw_key not in staff_client.get(f"/admin/chat/apikey/{key.pk}/change/").content.decode()
    # Not for non-staff users.
    assert user_client.post("/admin/chat/apikey/add/", {"owner": user.pk, "name": "x"}).status_code == 302
    assert ApiKey.objects.filter(name="x").count() == 0

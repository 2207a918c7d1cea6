"""Live supervision from the admin: staff watch a running turn through the staff-only SSE endpoint
(the resume machinery, read-only) and stop it; everyone else is refused, the chat's owner included.
Real turns on both backends against the scripted model."""

from __future__ import annotations

import json
import uuid

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import Permission
from django.test import AsyncClient, Client

from audit.models import AuditEvent
from chat.models import ChatTurn
from tests.ops.conftest import seed_session, seed_turn


def stream_url(session_id) -> str:
    return f"/admin/chat/chatsession/{session_id}/live/stream/"


def stop_url(session_id) -> str:
    return f"/admin/chat/chatsession/{session_id}/live/stop/"


def staff_member(django_user_model, name: str, *codenames: str):
    member = django_user_model.objects.create_user(
        username=name, password=f"{name}-password-1", is_staff=True
    )
    member.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    return member


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


async def read_sse(stream, *, until=None) -> tuple[list[tuple[int, dict]], bool]:
    """``([(sequence, chunk)], saw_done)`` from a streaming response's content; stops early once
    ``until(chunks)`` holds."""
    chunks: list[tuple[int, dict]] = []
    buffer = b""
    async for piece in stream:
        buffer += piece
        while b"\n\n" in buffer:
            block, buffer = buffer.split(b"\n\n", 1)
            fields = dict(
                line.split(": ", 1) for line in block.decode().splitlines() if not line.startswith(":")
            )
            if fields.get("data") == "[DONE]":
                return chunks, True
            if "data" in fields:
                chunks.append((int(fields.get("id", -1)), json.loads(fields["data"])))
        if until is not None and until(chunks):
            return chunks, False
    return chunks, False


def text_of(chunks) -> str:
    return "".join(c.get("delta", "") for _, c in chunks if c["type"] == "text-delta")


# --- who may watch and stop ----------------------------------------------------------------------


@pytest.mark.django_db
def test_only_staff_with_permission_may_watch(user, other_user, staff, django_user_model):
    session = seed_session(user, title="mine", kinds=["normal"])
    seed_turn(session)
    url = stream_url(session.pk)
    assert Client().get(url).status_code == 403  # anonymous
    assert logged_in(user).get(url).status_code == 403  # the owner, not staff: not this door
    assert logged_in(other_user).get(url).status_code == 403
    assert logged_in(staff_member(django_user_model, "nobody")).get(url).status_code == 403
    viewer = staff_member(django_user_model, "viewer", "view_chatsession")
    # Allowed: no turn is active in the runtime (the row above is a dead worker's), so 204.
    assert logged_in(viewer).get(url).status_code == 204
    assert logged_in(staff).get(url).status_code == 204


@pytest.mark.django_db
def test_stream_endpoint_bad_input(user, staff_client):
    session = seed_session(user)
    assert staff_client.get(stream_url(uuid.uuid4())).status_code == 404
    response = staff_client.get(stream_url(session.pk), HTTP_LAST_EVENT_ID="soon")
    assert response.status_code == 400
    assert staff_client.get(stream_url(session.pk), HTTP_LAST_EVENT_ID="-5").status_code == 400
    assert staff_client.post(stream_url(session.pk)).status_code == 405
    assert staff_client.get(f"/admin/chat/chatsession/{session.pk}/live/stream/x/").status_code in (302, 404)


@pytest.mark.django_db
def test_stop_needs_change_permission_and_csrf(user, django_user_model):
    session = seed_session(user)
    viewer = staff_member(django_user_model, "viewer", "view_chatsession")
    assert logged_in(viewer).post(stop_url(session.pk)).status_code == 403
    assert logged_in(user).post(stop_url(session.pk)).status_code == 302  # admin login
    operator = staff_member(django_user_model, "op", "view_chatsession", "change_chatsession")
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(operator)
    assert strict.post(stop_url(session.pk)).status_code == 403  # no CSRF token
    assert logged_in(operator).get(stop_url(session.pk)).status_code == 405
    assert not AuditEvent.objects.exists()
    response = logged_in(operator).post(stop_url(session.pk), HTTP_ACCEPT="application/json")
    assert response.json() == {"stopped": False, "detail": "No turn was running."}
    assert AuditEvent.objects.get().details["stopped"] is False


@pytest.mark.django_db
def test_change_pages_carry_the_live_panel(user, staff, staff_client, django_user_model):
    session = seed_session(user, kinds=["normal"])
    turn = seed_turn(session)
    for url in (f"/admin/chat/chatsession/{session.pk}/change/", f"/admin/chat/chatturn/{turn.pk}/change/"):
        html = staff_client.get(url).content.decode()
        assert 'id="live-turn"' in html and f'data-stream-url="{stream_url(session.pk)}"' in html, url
        assert 'data-running="true"' in html and stop_url(session.pk) in html
        assert 'type="module" src="/static/chat/supervise.js"' in html
    viewer = staff_member(django_user_model, "viewer", "view_chatsession", "view_chatturn")
    html = logged_in(viewer).get(f"/admin/chat/chatsession/{session.pk}/change/").content.decode()
    assert 'id="live-turn"' in html and stop_url(session.pk) not in html  # no Stop without change


# --- a real running turn -------------------------------------------------------------------------


@pytest.fixture(params=["api", pytest.param("sdk", marks=pytest.mark.cli)])
def backend(request):
    return request.getfixturevalue(f"backend_{request.param}")


@pytest.mark.django_db(transaction=True)
async def test_staff_watch_a_running_turn_and_stop_it(backend, user, staff, locks_cleanup):
    from chat.runtime import turn_start, turn_wait_idle

    handle = await turn_start(user=user, chat_id=str(uuid.uuid4()), text="/slow 150 100")
    locks_cleanup.append(handle.session_id)
    client = AsyncClient()
    await client.aforce_login(staff)
    response = await client.get(stream_url(handle.session_id))
    assert response.status_code == 200 and response["Content-Type"].startswith("text/event-stream")
    stream = response.streaming_content
    chunks, done = await read_sse(stream, until=lambda seen: "w2 " in text_of(seen))
    assert not done and text_of(chunks).startswith("w0 w1 w2")
    assert [seq for seq, _ in chunks] == list(range(len(chunks)))  # the turn's own sequences
    await stream.aclose()  # the watcher goes away; the turn runs on

    # A second watcher resumes after the last chunk seen (Last-Event-ID), like the owner's door.
    last = chunks[-1][0]
    again = await client.get(stream_url(handle.session_id), headers={"Last-Event-ID": str(last)})
    stop = await client.post(stop_url(handle.session_id), headers={"Accept": "application/json"})
    assert (await sync_to_async(stop.json)())["stopped"] is True
    rest, done = await read_sse(again.streaming_content)
    assert done and rest[0][0] == last + 1
    finish = [c for _, c in rest if c["type"] == "finish"]
    assert finish and finish[-1].get("messageMetadata", {}).get("stopped") is True
    await turn_wait_idle(timeout=30)
    turn = await ChatTurn.objects.aget(pk=handle.turn_id)
    assert turn.status == ChatTurn.Status.STOPPED
    event = await AuditEvent.objects.aget(action="chatsession.stop_turn")
    assert event.actor_id == staff.pk and event.target_id == handle.session_id
    assert event.details == {"stopped": True, "turn": handle.turn_id, "via": "live supervision"}
    # Watching a user's chat is audited once per watcher (the Last-Event-ID resume is not a new one).
    watched = [e async for e in AuditEvent.objects.filter(action="chatsession.watch")]
    assert len(watched) == 1 and watched[0].actor_id == staff.pk
    assert watched[0].target_id == handle.session_id


@pytest.mark.django_db(transaction=True)
async def test_the_owner_is_refused_even_while_the_turn_runs(backend_api, user, locks_cleanup):
    from chat.runtime import turn_start, turn_stop_session, turn_wait_idle

    handle = await turn_start(user=user, chat_id=str(uuid.uuid4()), text="/slow 100 50")
    locks_cleanup.append(handle.session_id)
    client = AsyncClient()
    await client.aforce_login(user)
    try:
        response = await client.get(stream_url(handle.session_id))
        assert response.status_code == 403
    finally:
        await turn_stop_session(session_id=handle.session_id)
        await turn_wait_idle(timeout=30)

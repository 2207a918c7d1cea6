"""Live supervision in the admin: a staff member watches a session's running turn stream, read-only,
and can stop it (docs/operations.md, "Live supervision").

- ``live_stream_view`` (GET ``/admin/chat/chatsession/<id>/live/stream/``): the active turn as
  server-sent events, exactly what ``GET /api/v1/chat/<id>/stream/`` sends its owner (replay from
  ``Last-Event-ID``, then live, ``data: [DONE]`` last; 204 when nothing runs), read through
  ``chat.runtime.turn_watch``. This is the one path that reads a chat its reader does not own, so
  it admits only active staff with the ``chat.view_chatsession`` permission (403 for everyone
  else, the chat's owner included); the owner check of the users' doors stays as it is.
- ``live_stop_view`` (POST ``…/live/stop/``, CSRF-protected, ``chat.change_chatsession``): stops the
  turn wherever it runs (``chat.runtime.turn_stop_session``) and writes an audit event.
- Watching is audited too (``chatsession.watch``, once per new watcher, not per reconnect): it is
  an operator reading a user's conversation.
- ``live_context``: what the change pages' "Live turn" panel (templates/admin/chat/live_panel.html,
  static/chat/supervise.js) needs.
"""

from __future__ import annotations

from typing import Any

from asgiref.sync import async_to_sync, sync_to_async
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import (
    HttpRequest,
    HttpResponse,
    HttpResponseBadRequest,
    HttpResponseForbidden,
    HttpResponseNotFound,
    HttpResponseRedirect,
    JsonResponse,
)
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_POST

from audit.models import AuditEvent
from audit.services import audit_record
from chat.api.sse import sse_response, sse_stream
from chat.models import ChatSession, ChatTurn
from chat.runtime import turn_active_id, turn_stop_session, turn_watch
from chat.selectors import turn_list_recent

WATCH_PERMISSION = "chat.view_chatsession"
STOP_PERMISSION = "chat.change_chatsession"
FORBIDDEN_TEXT = "Live supervision is for staff with permission to view chat sessions."


def stream_url(session_id: Any) -> str:
    return reverse("admin:chat_chatsession_live_stream", args=[session_id])


def stop_url(session_id: Any) -> str:
    return reverse("admin:chat_chatsession_live_stop", args=[session_id])


def live_context(*, request: HttpRequest, session_id: Any, turn: ChatTurn | None = None) -> dict[str, Any]:
    """The "Live turn" panel of a session's change page (its newest turn) or of a turn's."""
    if turn is None:
        recent = turn_list_recent(session_id=session_id, limit=1)
        turn = recent[0] if recent else None
    running = turn is not None and turn.status == ChatTurn.Status.RUNNING
    return {
        "live_stream_url": stream_url(session_id),
        "live_stop_url": stop_url(session_id) if request.user.has_perm(STOP_PERMISSION) else "",
        "live_running": running,
        "live_turn_id": str(turn.pk) if running else "",
    }


def parse_last_event_id(raw: str | None) -> int | None:
    """``Last-Event-ID`` as a sequence (-1 without it); None when malformed."""
    if raw is None:
        return -1
    try:
        value = int(raw)
    except ValueError:
        return None
    return value if value >= -1 else None


async def may_watch(user: Any) -> bool:
    return bool(user.is_active and user.is_staff and await user.ahas_perm(WATCH_PERMISSION))


@never_cache
@require_GET
async def live_stream_view(request: HttpRequest, session_id: Any) -> HttpResponse:
    user = await request.auser()
    if not await may_watch(user):
        return HttpResponseForbidden(FORBIDDEN_TEXT)
    after = parse_last_event_id(request.headers.get("Last-Event-ID"))
    if after is None:
        return HttpResponseBadRequest("Last-Event-ID must be an integer sequence >= -1.")
    if not await ChatSession.objects.filter(pk=session_id).aexists():
        return HttpResponseNotFound("No such session.")
    subscription = await turn_watch(session_id=str(session_id), after_sequence=after)
    if subscription is None:
        return HttpResponse(status=204)
    if after == -1:  # a new watcher (a reconnect carries Last-Event-ID): reading a user's chat is audited
        await record_watch(user=user, session_id=session_id)
    return sse_response(sse_stream(subscription))


@sync_to_async
def record_watch(*, user: Any, session_id: Any) -> None:
    audit_record(
        action="chatsession.watch",
        source=AuditEvent.Source.ADMIN,
        actor=user,
        target=ChatSession.objects.filter(pk=session_id).first(),
        details={"via": "live supervision"},
    )


@require_POST
def live_stop_view(request: HttpRequest, session_id: Any) -> HttpResponse:
    """Wrapped in ``admin_site.admin_view`` (staff, CSRF, never cached) by ChatSessionAdmin."""
    if not request.user.has_perm(STOP_PERMISSION):
        raise PermissionDenied
    session = ChatSession.objects.filter(pk=session_id).first()
    if session is None:
        return HttpResponseNotFound("No such session.")
    turn_id = async_to_sync(turn_active_id)(session_id=str(session.pk))
    stopped = async_to_sync(turn_stop_session)(session_id=str(session.pk))
    audit_record(
        action="chatsession.stop_turn",
        source=AuditEvent.Source.ADMIN,
        actor=request.user,
        target=session,
        details={"stopped": stopped, "turn": turn_id, "via": "live supervision"},
    )
    text = "Asked the running turn to stop." if stopped else "No turn was running."
    if request.headers.get("Accept", "").startswith("application/json"):
        return JsonResponse({"stopped": stopped, "detail": text})
    messages.add_message(request, messages.SUCCESS if stopped else messages.WARNING, text)
    return HttpResponseRedirect(reverse("admin:chat_chatsession_change", args=[session.pk]))

"""Reads. Keyword-only functions named ``<entity>_<action>``; every session read is per owner."""

from __future__ import annotations

import uuid
from typing import Any

from django.db.models import Max, QuerySet

from chat.models import ChatMessage, ChatSession


def session_get_for_user(*, user: Any, chat_id: str) -> ChatSession | None:
    """The caller's session for a chat id (the UUID or the client-chosen id), or None.

    Never reveals whether another user's session with that id exists.
    """
    if not getattr(user, "is_authenticated", False) or not chat_id:
        return None
    qs = ChatSession.objects.filter(owner=user)
    session = qs.filter(client_id=chat_id).first()
    if session is None:
        try:
            session = qs.filter(pk=uuid.UUID(str(chat_id))).first()
        except ValueError:
            return None
    return session


def session_list_for_user(*, user: Any, include_archived: bool = False, search: str = "") -> QuerySet[ChatSession]:
    qs = ChatSession.objects.filter(owner=user)
    if not include_archived:
        qs = qs.filter(archived=False)
    if search:
        qs = qs.filter(title__icontains=search)
    return qs.order_by("-last_activity_at", "-created_at")


def message_list(
    *, session: ChatSession, after: int | None = None, before: int | None = None, limit: int | None = None
) -> list[ChatMessage]:
    """Messages by sequence. With ``before`` (and no ``after``) the newest ``limit`` before it."""
    qs = ChatMessage.objects.filter(session=session)
    if after is not None:
        qs = qs.filter(sequence__gt=after)
    if before is not None:
        qs = qs.filter(sequence__lt=before)
    if before is not None and after is None and limit:
        return list(reversed(qs.order_by("-sequence")[:limit]))
    qs = qs.order_by("sequence")
    return list(qs[:limit] if limit else qs)


def message_last_sequence(*, session_id: Any) -> int:
    """The highest sequence in use, or -1 for an empty session."""
    top = ChatMessage.objects.filter(session_id=session_id).aggregate(m=Max("sequence"))["m"]
    return -1 if top is None else top

"""Writes used by the API (keyword-only, ``<entity>_<action>``)."""

from __future__ import annotations

from chat.models import ChatSession


def session_update(
    *, session: ChatSession, title: str | None = None, archived: bool | None = None
) -> ChatSession:
    fields = []
    if title is not None:
        session.title = title[:200]
        fields.append("title")
    if archived is not None:
        session.archived = archived
        fields.append("archived")
    if fields:
        session.save(update_fields=[*fields, "updated_at"])
    return session


def session_delete(*, session: ChatSession) -> None:
    session.delete()

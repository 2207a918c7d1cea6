"""Writes used by the API (keyword-only, ``<entity>_<action>``)."""

from __future__ import annotations

from chat.models import ChatSession, McpServer


def session_update(
    *,
    session: ChatSession,
    title: str | None = None,
    archived: bool | None = None,
    model: str | None = None,
    instructions: str | None = None,
    tool_mode: str | None = None,
    max_steps: int | None = None,
    mcp_servers: list[McpServer] | None = None,
) -> ChatSession:
    """Rename, (un)archive, or change the chat's settings. None leaves a field unchanged; a
    ``model`` of "" makes the chat follow the server default. The caller validated the values
    (the API's serializer, against chat.preferences)."""
    fields = []
    if title is not None:
        session.title = title[:200]
        fields.append("title")
    if archived is not None:
        session.archived = archived
        fields.append("archived")
    settings_given = {
        "model": model,
        "instructions": instructions,
        "tool_mode": tool_mode,
        "max_steps": max_steps,
    }
    for name, value in settings_given.items():
        if value is not None:
            setattr(session, name, value)
            fields.append(name)
    if mcp_servers is not None:  # the chat's MCP servers (the caller checked they are enabled)
        session.mcp_servers.set(mcp_servers)
        fields.append("updated_at")
    if fields:
        session.save(update_fields=list(dict.fromkeys([*fields, "updated_at"])))
    return session


def session_delete(*, session: ChatSession) -> None:
    session.delete()

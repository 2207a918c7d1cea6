"""Staff-only transcript viewer: a CLI session's transcript as a readable conversation, and JSONL export."""

from __future__ import annotations

import re

from django.contrib import admin
from django.contrib.admin.views.decorators import staff_member_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, StreamingHttpResponse
from django.shortcuts import render
from django.urls import NoReverseMatch, reverse
from django.views.decorators.http import require_GET

from audit.models import AuditEvent
from audit.services import audit_record
from transcripts import selectors
from transcripts.rendering import render_entries
from transcripts.scrub import Scrubber

VIEW_PERMISSION = "transcripts.view_transcript"


def _require_view_permission(request) -> None:
    if not request.user.has_perm(VIEW_PERMISSION):
        raise PermissionDenied("You may not view agent transcripts.")


def _admin_url(chat) -> str:
    try:
        return reverse("admin:chat_chatsession_change", args=[chat.pk])
    except NoReverseMatch:  # the chat admin is not registered
        return ""


@staff_member_required
@require_GET
def viewer(request, session_id: str):
    _require_view_permission(request)
    project_key = request.GET.get("project") or None
    rows = list(selectors.transcript_list_for_session(session_id=session_id, project_key=project_key))
    if not rows:
        raise Http404("No transcript stored for this session id.")

    scrubber = Scrubber()
    sections = []
    for row in rows:
        entries = list(selectors.transcript_entries_scrubbed(transcript=row, scrubber=scrubber))
        sections.append(
            {"transcript": row, "items": render_entries(entries), "anchor": row.subpath or "main"}
        )
    projects = sorted({row.project_key for row in rows})
    context = {
        **admin.site.each_context(request),
        "title": f"Transcript {session_id}",
        "session_id": session_id,
        "projects": projects,
        "sections": sections,
        "chat_sessions": [
            {"chat": chat, "admin_url": _admin_url(chat)}
            for chat in selectors.chat_sessions_for_agent_session(agent_session_id=session_id)
        ],
        "total_entries": sum(row.entry_count for row in rows),
        "total_bytes": sum(row.size_bytes for row in rows),
    }
    return render(request, "transcripts/viewer.html", context)


@staff_member_required
@require_GET
def download(request, session_id: str):
    _require_view_permission(request)
    project_key = request.GET.get("project") or None
    subpath = request.GET.get("subpath", "")
    rows = [
        row
        for row in selectors.transcript_list_for_session(session_id=session_id, project_key=project_key)
        if row.subpath == subpath
    ]
    if not rows:
        raise Http404("No such transcript.")
    row = rows[0]
    audit_record(
        action="transcript.download",
        source=AuditEvent.Source.ADMIN,
        actor=request.user,
        target=row,
        details={"session_id": session_id, "subpath": subpath},
    )
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{session_id}{'-' + subpath if subpath else ''}")
    response = StreamingHttpResponse(
        selectors.transcript_jsonl_lines(transcript=row), content_type="application/x-ndjson; charset=utf-8"
    )
    response["Content-Disposition"] = f'attachment; filename="{name}.jsonl"'
    response["X-Content-Type-Options"] = "nosniff"
    return response

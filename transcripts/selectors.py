"""Reads of stored transcripts (keyword-only, ``<entity>_<action>``)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from django.db.models import QuerySet

from transcripts.models import Transcript, TranscriptEntry
from transcripts.rendering import StoredEntry
from transcripts.scrub import Scrubber


def transcript_list_for_session(*, session_id: str, project_key: str | None = None) -> QuerySet[Transcript]:
    """Every stored transcript (main and sub-agents, all projects) of one CLI session id."""
    qs = Transcript.objects.filter(session_id=session_id)
    if project_key is not None:
        qs = qs.filter(project_key=project_key)
    return qs.order_by("project_key", "subpath")


def transcript_get(*, session_id: str, project_key: str, subpath: str = "") -> Transcript | None:
    return Transcript.objects.filter(session_id=session_id, project_key=project_key, subpath=subpath).first()


def transcript_entries(*, transcript: Transcript) -> Iterator[StoredEntry]:
    rows = (
        TranscriptEntry.objects.filter(transcript=transcript)
        .order_by("seq")
        .values_list("seq", "size_bytes", "data")
        .iterator(chunk_size=1000)
    )
    for seq, size, data in rows:
        try:
            parsed: Any = json.loads(data)
        except ValueError:
            parsed = {"type": "unparseable", "raw": data}
        if not isinstance(parsed, dict):
            parsed = {"type": "value", "value": parsed}
        yield StoredEntry(seq=seq, size=size, data=parsed)


def transcript_entries_scrubbed(
    *, transcript: Transcript, scrubber: Scrubber | None = None
) -> Iterator[StoredEntry]:
    scrubber = scrubber or Scrubber()
    for entry in transcript_entries(transcript=transcript):
        entry.data = scrubber.deep(entry.data)
        yield entry


def transcript_jsonl_lines(*, transcript: Transcript) -> Iterator[str]:
    """The transcript as JSONL (one entry per line, secrets scrubbed) for download."""
    for entry in transcript_entries_scrubbed(transcript=transcript):
        yield (
            json.dumps(entry.data, ensure_ascii=False, separators=(",", ":"))
            .encode("utf-8", "replace")
            .decode()
            + "\n"
        )


def chat_sessions_for_agent_session(*, agent_session_id: str) -> list[Any]:
    """The chat sessions mapped to a CLI session id (``ChatSession.agent_session_id``)."""
    from chat.models import ChatSession

    if not agent_session_id:
        return []
    return list(ChatSession.objects.filter(agent_session_id=agent_session_id).select_related("owner"))

"""Writes on stored transcripts: deletion and retention (keyword-only, ``<entity>_<action>``)."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.db.models import Max, Sum
from django.utils import timezone

from chat.models import ChatSession
from chat.runtime import turn_is_active
from transcripts.models import Transcript

logger = logging.getLogger(__name__)

# A transcript no chat session points at yet may belong to a turn still running (the chat learns
# the CLI session id during the turn): orphans are only pruned after this much idle time.
ORPHAN_GRACE = dt.timedelta(hours=1)


@dataclass
class PrunedSession:
    project_key: str
    session_id: str
    reason: str  # "orphaned" (its chat session is gone) | "idle"
    last_activity: dt.datetime
    transcripts: int
    entries: int
    size_bytes: int


def _turn_is_active(chat_session_id: str) -> bool:
    """``chat.runtime.turn_is_active``; an unknown state (the check failed) counts as active."""
    try:
        return turn_is_active(session_id=chat_session_id)
    except Exception:
        logger.warning("turn_is_active failed for %s; keeping its transcript", chat_session_id, exc_info=True)
        return True


def transcript_prune(
    *,
    older_than: dt.timedelta,
    dry_run: bool = False,
    now: dt.datetime | None = None,
    track: Callable[[Iterable[Any]], Iterable[Any]] | None = None,
) -> list[PrunedSession]:
    """Delete the transcripts (main + sub-agents) of deleted chat sessions and of idle sessions.

    - linked (some ``ChatSession.agent_session_id`` equals the CLI session id): deleted when
      neither the transcript nor any linked chat session was active within ``older_than`` and no
      turn is running;
    - orphaned (no chat session points at it — deleted, or never linked): deleted once idle for
      ``min(older_than, ORPHAN_GRACE)``.
    Returns what was (or, with ``dry_run``, would be) deleted.
    """
    if older_than <= dt.timedelta(0):
        raise ValueError("older_than must be positive")
    now = now or timezone.now()
    idle_cutoff = now - older_than
    orphan_cutoff = now - min(older_than, ORPHAN_GRACE)

    groups = (
        Transcript.objects.values("project_key", "session_id")
        .annotate(last=Max("updated_at"), entries=Sum("entry_count"), size=Sum("size_bytes"))
        .filter(last__lt=orphan_cutoff)
        .order_by("last")
    )
    groups = list(groups)
    session_ids = sorted({g["session_id"] for g in groups})
    linked: dict[str, list[tuple[str, dt.datetime]]] = {}
    for start in range(0, len(session_ids), 500):
        for agent_id, chat_id, activity in ChatSession.objects.filter(
            agent_session_id__in=session_ids[start : start + 500]
        ).values_list("agent_session_id", "id", "last_activity_at"):
            linked.setdefault(agent_id, []).append((str(chat_id), activity))

    pruned: list[PrunedSession] = []
    for group in track(groups) if track is not None else groups:
        chats = linked.get(group["session_id"], [])
        if chats:
            last = max([group["last"], *(activity for _, activity in chats)])
            if last >= idle_cutoff or any(_turn_is_active(chat_id) for chat_id, _ in chats):
                continue
            reason = "idle"
        else:
            last = group["last"]
            reason = "orphaned"
        qs = Transcript.objects.filter(project_key=group["project_key"], session_id=group["session_id"])
        count = qs.count()
        if not dry_run:
            with transaction.atomic():
                qs.delete()
        pruned.append(
            PrunedSession(
                project_key=group["project_key"],
                session_id=group["session_id"],
                reason=reason,
                last_activity=last,
                transcripts=count,
                entries=group["entries"] or 0,
                size_bytes=group["size"] or 0,
            )
        )
    return pruned


def transcript_delete_session(*, session_id: str, project_key: str | None = None) -> int:
    """Delete every transcript of a CLI session id (all projects unless one is given)."""
    qs = Transcript.objects.filter(session_id=session_id)
    if project_key is not None:
        qs = qs.filter(project_key=project_key)
    deleted, _ = qs.delete()
    return deleted

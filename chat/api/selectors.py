"""Reads used by the API (keyword-only, ``<entity>_<action>``)."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.db.models import QuerySet, Sum
from django.utils import timezone

from chat.models import ChatMessage, ChatSession, TokenUsage
from chat.selectors import (
    message_active_leaf_id,
    message_active_path_keys,
    message_list,
    message_siblings,
    session_list_for_user,
    turn_running_queryset,
)
from chat.usage import budget_status, day_window, week_window


@dataclass(frozen=True)
class MessagePage:
    messages: list[ChatMessage]
    has_prev: bool
    has_next: bool
    siblings: dict[int, list[int]] = field(default_factory=dict)  # pk -> its branch's siblings


def message_page(
    *,
    session: ChatSession,
    after: int | None,
    before: int | None,
    limit: int,
    path: str = "active",
) -> MessagePage:
    """Up to ``limit`` messages in sequence order: after ``after`` (oldest first) or, with only
    ``before``, the newest ones before it; plus whether the session has messages before the
    first and after the last one returned (the prev/next cursors), and each message's siblings.
    ``path``: ``active`` (the active path only, docs/api.md "Branches") or ``all`` (every message
    of the tree)."""
    if path == "all":
        page = _message_page_all(session=session, after=after, before=before, limit=limit)
    else:
        page = _message_page_active(session=session, after=after, before=before, limit=limit)
    return MessagePage(page.messages, page.has_prev, page.has_next, message_siblings(messages=page.messages))


def _message_page_all(
    *, session: ChatSession, after: int | None, before: int | None, limit: int
) -> MessagePage:
    messages = message_list(session=session, after=after, before=before, limit=limit)
    if not messages:
        return MessagePage([], False, False)
    qs = ChatMessage.objects.filter(session=session)
    return MessagePage(
        messages,
        has_prev=qs.filter(sequence__lt=messages[0].sequence).exists(),
        has_next=qs.filter(sequence__gt=messages[-1].sequence).exists(),
    )


def _message_page_active(
    *, session: ChatSession, after: int | None, before: int | None, limit: int
) -> MessagePage:
    """The page's window is cut from the path's (pk, sequence) list (one query), then its rows
    are read (a second)."""
    keys = message_active_path_keys(session=session)
    lo = 0 if after is None else bisect.bisect_right([seq for _pk, seq in keys], after)
    hi = len(keys) if before is None else bisect.bisect_left([seq for _pk, seq in keys], before)
    if before is not None and after is None:
        lo = max(lo, hi - limit)
    else:
        hi = min(hi, lo + limit)
    window = keys[lo:hi]
    if not window:
        return MessagePage([], False, False)
    rows = {m.pk: m for m in ChatMessage.objects.filter(session=session, pk__in=[pk for pk, _seq in window])}
    messages = [rows[pk] for pk, _seq in window if pk in rows]
    return MessagePage(messages, has_prev=lo > 0, has_next=hi < len(keys))


def usage_summary_for_user(*, user: Any) -> dict[str, Any]:
    """The caller's tokens and cost in the current UTC day and ISO week, with the budget from
    ``chat.usage.budget_status`` (limit, used, reserved, remaining, resets_at)."""
    status = budget_status(user=user)
    now = timezone.now()
    summary: dict[str, Any] = {"unit": status.get("unit", "weighted_tokens")}
    for name, (start, _end) in (("day", day_window(now)), ("week", week_window(now))):
        totals = TokenUsage.objects.filter(user=user, created_at__gte=start).aggregate(
            input_tokens=Sum("input_tokens"),
            output_tokens=Sum("output_tokens"),
            cache_read_tokens=Sum("cache_read_tokens"),
            cache_write_tokens=Sum("cache_write_tokens"),
            weighted_tokens=Sum("weighted_tokens"),
            cost_usd=Sum("cost_usd"),
        )
        budget = status[name]
        summary[name] = {
            "start": start,
            "resets_at": budget["resets_at"],
            **{k: (v or 0) for k, v in totals.items() if k != "cost_usd"},
            "cost_usd": totals["cost_usd"] or Decimal("0"),
            "budget": budget["limit"],
            "reserved": budget["reserved"],
            "remaining": budget["remaining"],
        }
    return summary


def session_leaf_ids(*, sessions: list[ChatSession], active: set[Any]) -> dict[Any, int | None]:
    """Each session's leaf (docs/api.md "Branches"): the stored one, except for a session whose
    turn is running (in ``active``): its turn's messages extend the stored leaf, so the leaf is
    read (one query each; only running sessions)."""
    return {
        s.pk: message_active_leaf_id(session_id=s.pk) if s.pk in active else s.active_leaf_id
        for s in sessions
    }


def session_active_ids(*, session_ids: list[Any]) -> set[Any]:
    """Which of these sessions have a running turn (one query)."""
    return set(
        turn_running_queryset().filter(session_id__in=session_ids).values_list("session_id", flat=True)
    )


def session_list_filtered(*, user: Any, archived: str = "false", search: str = "") -> QuerySet[ChatSession]:
    """The caller's sessions, newest activity first; ``archived`` is "false", "true" or "all"."""
    qs = session_list_for_user(user=user, include_archived=True, search=search).prefetch_related(
        "mcp_servers"
    )
    if archived == "true":
        qs = qs.filter(archived=True)
    elif archived == "false":
        qs = qs.filter(archived=False)
    return qs

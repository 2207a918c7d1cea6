"""Token usage, budgets and rate-limit records.

The turn runtime (``chat.runtime``) calls exactly these functions (sync: wrap them in
``sync_to_async`` from async code):

- ``budget_check(user=, model=, reserve=)`` before a turn starts: refuses (``AgentError``) while an
  upstream rate limit for the model is active, or when the user's daily/weekly budget is used up;
  otherwise hands ``reserve`` the ``TURN_RESERVE_TOKENS`` weighted tokens to set aside, which the
  runtime stores in the new turn's ``ChatTurn.reserved_tokens`` in the same transaction (counted
  while the turn runs, for at most ``TURN_RESERVE_TTL_SECONDS``; zeroed by the write that records
  the turn's end).
- ``budget_step_check(user=, model=, usage_so_far=)`` at each step boundary of a running turn: the
  turn ends once committed usage plus its own usage so far reaches a limit, so a long turn
  overshoots by at most one step.
- ``usage_records_create(...)`` when a turn ends (finished, stopped or failed): the TokenUsage rows
  of the turn and of its title; ``usage_record(...)`` for a single row.
- ``rate_limit_record_upstream(...)`` when the model said "rate limited".

Budget units are *weighted tokens*: every token class weighted by its price relative to fresh input
(settings ``USAGE_WEIGHT_*``). Windows: the UTC day and the ISO week (Monday 00:00 UTC).

Atomicity: the check-and-reserve runs in one transaction holding a row lock on the user
(``SELECT … FOR UPDATE`` on PostgreSQL; SQLite's IMMEDIATE transactions serialise writers), so two
concurrent turns of one user can never both pass when only one fits.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection, transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from agents.errors import AgentError, ErrorKind
from agents.turn import Usage
from chat.metrics import usage_counted
from chat.models import ChatSession, ChatTurn, RateLimitRecord, TokenUsage, UserBudget

logger = logging.getLogger(__name__)


# --- Windows and weights --------------------------------------------------------------------------


def _now() -> dt.datetime:
    return timezone.now()


def day_window(now: dt.datetime | None = None) -> tuple[dt.datetime, dt.datetime]:
    """(start, reset) of the UTC day containing ``now``."""
    now = (now or _now()).astimezone(dt.UTC)
    start = now.replace(hour=0, minute=0, second=0, microsecond=0)
    return start, start + dt.timedelta(days=1)


def week_window(now: dt.datetime | None = None) -> tuple[dt.datetime, dt.datetime]:
    """(start, reset) of the ISO week (Monday 00:00 UTC) containing ``now``."""
    day_start, _ = day_window(now)
    start = day_start - dt.timedelta(days=day_start.weekday())
    return start, start + dt.timedelta(days=7)


def weighted_tokens(usage: Usage) -> int:
    """Budget units of ``usage``: tokens weighted as providers price them (settings USAGE_WEIGHT_*)."""
    total = (
        usage.input_tokens * settings.USAGE_WEIGHT_INPUT
        + usage.output_tokens * settings.USAGE_WEIGHT_OUTPUT
        + usage.cache_read_tokens * settings.USAGE_WEIGHT_CACHE_READ
        + usage.cache_write_tokens * settings.USAGE_WEIGHT_CACHE_WRITE
    )
    return max(0, int(round(total)))


def _totals(
    *,
    user_id: Any,
    now: dt.datetime,
    day_start: dt.datetime,
    week_start: dt.datetime,
    reserved: bool = True,
    model: str | None = None,
) -> dict[str, Any]:
    """One statement for everything a check needs: the user's limit overrides, committed usage
    since the day's and the week's start, and (``reserved``) the live reservations — scalar
    subqueries of one SELECT, in plain SQL (the ORM spends longer compiling six subqueries than
    the database spends running them). Keys: daily_limit, weekly_limit (None: the settings
    default), used_day, used_week, reserved, and (with ``model``) upstream_resets_at: when the
    latest active upstream rate-limit record for ``model`` resets, else None."""
    ops = connection.ops
    budget, usage = UserBudget._meta.db_table, TokenUsage._meta.db_table
    turn, session = ChatTurn._meta.db_table, ChatSession._meta.db_table
    q = connection.ops.quote_name
    parts = [
        f"(SELECT {q('daily_limit')} FROM {q(budget)} WHERE {q('user_id')} = %s)",
        f"(SELECT {q('weekly_limit')} FROM {q(budget)} WHERE {q('user_id')} = %s)",
        f"(SELECT COALESCE(SUM({q('weighted_tokens')}), 0) FROM {q(usage)} "
        f"WHERE {q('user_id')} = %s AND {q('created_at')} >= %s)",
        f"(SELECT COALESCE(SUM({q('weighted_tokens')}), 0) FROM {q(usage)} "
        f"WHERE {q('user_id')} = %s AND {q('created_at')} >= %s)",
    ]
    params: list[Any] = [
        user_id,
        user_id,
        user_id,
        ops.adapt_datetimefield_value(day_start),
        user_id,
        ops.adapt_datetimefield_value(week_start),
    ]
    if reserved:
        parts.append(
            f"(SELECT COALESCE(SUM(t.{q('reserved_tokens')}), 0) FROM {q(turn)} t INNER JOIN {q(session)} s"
            f" ON t.{q('session_id')} = s.{q('id')} WHERE s.{q('owner_id')} = %s AND t.{q('status')} = %s"
            f" AND t.{q('reserved_tokens')} > 0 AND t.{q('started_at')} > %s)"
        )
        params += [
            user_id,
            ChatTurn.Status.RUNNING.value,
            ops.adapt_datetimefield_value(now - dt.timedelta(seconds=settings.TURN_RESERVE_TTL_SECONDS)),
        ]
    if model is not None:
        limits = RateLimitRecord._meta.db_table
        parts.append(
            f"(SELECT MAX({q('resets_at')}) FROM {q(limits)} WHERE {q('source')} = %s AND {q('model')} = %s"
            f" AND {q('resets_at')} > %s)"
        )
        params += [RateLimitRecord.Source.UPSTREAM.value, model, ops.adapt_datetimefield_value(now)]
    with connection.cursor() as cursor:
        cursor.execute("SELECT " + ", ".join(parts), params)
        row = cursor.fetchone()
    return {
        "daily_limit": None if row[0] is None else int(row[0]),
        "weekly_limit": None if row[1] is None else int(row[1]),
        "used_day": int(row[2] or 0),
        "used_week": int(row[3] or 0),
        "reserved": int(row[4] or 0) if reserved else 0,
        "upstream_resets_at": _datetime_from_db(row[-1]) if model is not None else None,
    }


def _datetime_from_db(value: Any) -> dt.datetime | None:
    """A DATETIME read by plain SQL: PostgreSQL gives an aware datetime, SQLite ISO text (UTC)."""
    if value is None or isinstance(value, dt.datetime):
        return value
    parsed = parse_datetime(str(value))
    if parsed is not None and timezone.is_naive(parsed):
        parsed = timezone.make_aware(parsed, dt.UTC)
    return parsed


def _limits_from(totals: dict[str, int | None]) -> tuple[int, int]:
    daily, weekly = totals["daily_limit"], totals["weekly_limit"]
    return (
        settings.USER_TOKEN_BUDGET_DAILY if daily is None else int(daily),
        settings.USER_TOKEN_BUDGET_WEEKLY if weekly is None else int(weekly),
    )


def _fmt(when: dt.datetime) -> str:
    return f"{when.astimezone(dt.UTC):%Y-%m-%d %H:%M} UTC"


# --- Records -------------------------------------------------------------------------------------


def usage_record(
    *,
    user: Any,
    session: ChatSession | None,
    turn: ChatTurn | None,
    model: str,
    backend: str,
    usage: Usage,
    purpose: str = "turn",
) -> TokenUsage:
    """One TokenUsage row (a chat title's, or a turn's: per turn, even when it failed or was
    stopped). Reservations are not touched: a turn's is released by the write that records its
    end (``ChatTurn.reserved_tokens``)."""
    row = _token_usage(
        user=user, session=session, turn=turn, purpose=purpose, model=model, backend=backend, usage=usage
    )
    row.save(force_insert=True)
    usage_counted([row])
    return row


def usage_records_create(
    *, user: Any, session: ChatSession | None, records: list[tuple[ChatTurn | None, str, str, str, Usage]]
) -> None:
    """Several TokenUsage rows in one INSERT (a turn's row and its chat title's), each
    ``(turn, purpose, model, backend, usage)``. Reservations are not touched (see ``usage_record``)."""
    rows = TokenUsage.objects.bulk_create(
        [
            _token_usage(
                user=user,
                session=session,
                turn=turn,
                purpose=purpose,
                model=model,
                backend=backend,
                usage=usage,
            )
            for turn, purpose, model, backend, usage in records
        ]
    )
    usage_counted(rows)


def _token_usage(
    *,
    user: Any,
    session: ChatSession | None,
    turn: ChatTurn | None,
    purpose: str,
    model: str,
    backend: str,
    usage: Usage,
) -> TokenUsage:
    """An unsaved TokenUsage row for ``usage`` (its weighted tokens and cost computed here)."""
    return TokenUsage(
        user=user,
        session=session,
        turn=turn,
        purpose=purpose,
        model=model,
        backend=backend,
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cache_read_tokens=usage.cache_read_tokens,
        cache_write_tokens=usage.cache_write_tokens,
        weighted_tokens=weighted_tokens(usage),
        cost_usd=round(usage.cost_usd, 6),
    )


def rate_limit_record_upstream(
    *, user: Any, session: ChatSession | None, model: str, error: AgentError
) -> RateLimitRecord:
    """Record an upstream rate limit; while its ``resets_at`` is in the future, ``budget_check``
    refuses new turns on ``model`` (for every user: the limit belongs to the server's account)."""
    resets_at = error.resets_at
    if resets_at is None and error.retry_after:
        resets_at = _now() + dt.timedelta(seconds=float(error.retry_after))
    return RateLimitRecord.objects.create(
        user=user if getattr(user, "pk", None) else None,
        session=session,
        source=RateLimitRecord.Source.UPSTREAM,
        model=model,
        resets_at=resets_at,
        raw_message=(error.detail or error.message)[:2000],
    )


def _record_budget_refusal(*, user: Any, model: str, error: AgentError) -> None:
    RateLimitRecord.objects.create(
        user=user,
        source=RateLimitRecord.Source.BUDGET,
        model=model,
        resets_at=error.resets_at,
        raw_message=error.message[:2000],
    )


# --- Checks --------------------------------------------------------------------------------------


def _over_limit(
    *, used_day: int, used_week: int, daily: int, weekly: int, now: dt.datetime
) -> AgentError | None:
    """The refusal when a window is used up (the one resetting last wins when both are)."""
    _, day_reset = day_window(now)
    _, week_reset = week_window(now)
    over = []
    if used_day >= daily:
        over.append(("daily", daily, used_day, day_reset))
    if used_week >= weekly:
        over.append(("weekly", weekly, used_week, week_reset))
    if not over:
        return None
    name, limit, used, resets_at = max(over, key=lambda o: o[3])
    return AgentError(
        ErrorKind.BUDGET,
        detail=f"{name} budget: {used} of {limit} weighted tokens used or reserved",
        message=f"You have used your {name} token budget ({limit:,} tokens). It resets at {_fmt(resets_at)}.",
        resets_at=resets_at,
    )


def budget_check(*, user: Any, model: str, reserve: Callable[[int], None]) -> None:
    """Raise AgentError (kind BUDGET or RATE_LIMITED, with resets_at) if the user may not start a
    turn on ``model`` now; records a budget refusal as a RateLimitRecord. When the turn may start,
    ``reserve(TURN_RESERVE_TOKENS)`` is called under the user's lock; the caller must then write
    the reservation (``ChatTurn.reserved_tokens`` of a running turn) *in the same transaction*,
    opened around this call (``chat.runtime.start`` does), so the check and the reservation stay
    atomic across processes."""
    now = _now()
    day_start, _ = day_window(now)
    week_start, _ = week_window(now)
    refusal: AgentError | None = None
    with transaction.atomic():
        # The per-user serialisation point: concurrent checks of one user queue here. (SQLite
        # has no row locks: its IMMEDIATE transactions already serialise every writer.) The lock
        # is its own statement so the totals read after it see what the previous holder
        # committed (READ COMMITTED takes a new snapshot per statement).
        if connection.features.has_select_for_update:
            get_user_model().objects.select_for_update().filter(pk=user.pk).values_list(
                "pk", flat=True
            ).first()
        totals = _totals(user_id=user.pk, now=now, day_start=day_start, week_start=week_start, model=model)
        upstream_resets_at = totals["upstream_resets_at"]
        if upstream_resets_at is not None:
            # An upstream limit is not the user's doing: refused without a budget refusal record.
            raise AgentError(
                ErrorKind.RATE_LIMITED,
                detail=f"upstream rate limit recorded for {model} until {upstream_resets_at.isoformat()}",
                message=f"The model is rate limited right now. It resets at {_fmt(upstream_resets_at)}.",
                resets_at=upstream_resets_at,
            )
        daily, weekly = _limits_from(totals)
        reserved = totals["reserved"]
        used_day = totals["used_day"] + reserved
        used_week = totals["used_week"] + reserved
        refusal = _over_limit(used_day=used_day, used_week=used_week, daily=daily, weekly=weekly, now=now)
        if refusal is None:
            reserve(max(0, settings.TURN_RESERVE_TOKENS))
    if refusal is not None:
        _record_budget_refusal(user=user, model=model, error=refusal)
        raise refusal


def budget_step_check(*, user: Any, model: str, usage_so_far: Usage) -> None:
    """Called at each step boundary of a running turn; raises like ``budget_check`` once committed
    usage plus this turn's usage so far reaches a limit. (Other turns' reservations are not counted:
    each running turn can overshoot by at most its current step.)"""
    now = _now()
    day_start, _ = day_window(now)
    week_start, _ = week_window(now)
    totals = _totals(user_id=user.pk, now=now, day_start=day_start, week_start=week_start, reserved=False)
    daily, weekly = _limits_from(totals)
    running = weighted_tokens(usage_so_far)
    refusal = _over_limit(
        used_day=totals["used_day"] + running,
        used_week=totals["used_week"] + running,
        daily=daily,
        weekly=weekly,
        now=now,
    )
    if refusal is not None:
        _record_budget_refusal(user=user, model=model, error=refusal)
        raise refusal


def budget_status(*, user: Any) -> dict[str, Any]:
    """The user's budget for the HTTP API and the admin:
    ``{"day": {"used", "reserved", "limit", "remaining", "resets_at"}, "week": {...}, "unit": ...}``
    (``used`` committed weighted tokens; ``remaining`` = limit - used - reserved, never negative;
    ``resets_at`` an aware UTC datetime)."""
    now = _now()
    (day_start, day_reset), (week_start, week_reset) = day_window(now), week_window(now)
    totals = _totals(user_id=user.pk, now=now, day_start=day_start, week_start=week_start)
    daily, weekly = _limits_from(totals)
    reserved = totals["reserved"]
    out: dict[str, Any] = {"unit": "weighted_tokens"}
    for name, used, reset, limit in (
        ("day", totals["used_day"], day_reset, daily),
        ("week", totals["used_week"], week_reset, weekly),
    ):
        out[name] = {
            "used": used,
            "reserved": reserved,
            "limit": limit,
            "remaining": max(0, limit - used - reserved),
            "resets_at": reset,
        }
    return out

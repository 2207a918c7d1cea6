"""Token usage, budgets and rate-limit records (the operators issue fills in budgets).

chat.turns calls exactly these functions; keep their signatures.
"""

from __future__ import annotations

from typing import Any

from agents.errors import AgentError
from agents.types import Usage
from chat.models import ChatSession, ChatTurn, RateLimitRecord, TokenUsage


def usage_record(
    *, user: Any, session: ChatSession | None, turn: ChatTurn | None, model: str, backend: str, usage: Usage, purpose: str = "turn"
) -> TokenUsage:
    """One TokenUsage row (per turn, even when it failed or was stopped)."""
    return TokenUsage.objects.create(
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
        weighted_tokens=usage.input_tokens + usage.output_tokens + usage.cache_read_tokens + usage.cache_write_tokens,
        cost_usd=round(usage.cost_usd, 6),
    )


def budget_check(*, user: Any, model: str) -> None:
    """Raise AgentError (kind BUDGET or RATE_LIMITED, with resets_at) if the user may not start a
    turn on ``model`` now; records the refusal as a RateLimitRecord."""
    return None


def budget_step_check(*, user: Any, model: str, usage_so_far: Usage) -> None:
    """Called at each step boundary of a running turn; raises like ``budget_check``."""
    return None


def rate_limit_record_upstream(*, user: Any, session: ChatSession | None, model: str, error: AgentError) -> RateLimitRecord:
    return RateLimitRecord.objects.create(
        user=user,
        session=session,
        source=RateLimitRecord.Source.UPSTREAM,
        model=model,
        resets_at=error.resets_at,
        raw_message=error.detail[:2000],
    )

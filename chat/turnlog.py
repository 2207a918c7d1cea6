"""Structured log lines for operators: one per turn (``log_turn``) and one per error (``log_error``).

Both go to the logger ``copilot.turns`` as ``key=value`` pairs (values with spaces are JSON-quoted),
and the same fields ride along as ``record.copilot`` (a dict) for JSON formatters. Example::

    turn session=3f0c… user=7 backend=sdk model=claude-sonnet-4-5 duration_s=4.210 input_tokens=812
    output_tokens=95 cache_read_tokens=0 cache_write_tokens=0 weighted_tokens=1287 cost_usd=0.003861
    finish_reason=stop error=-

No secrets (values are scrubbed of configured keys) and no message content unless
``settings.LOG_MESSAGE_CONTENT`` is true (then ``text=`` is added, truncated).
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from agents.errors import scrub
from agents.turn import Usage
from chat.config import chat_config
from chat.usage import weighted_tokens

logger = logging.getLogger("copilot.turns")

_BARE = re.compile(r"^[A-Za-z0-9_.:/@+\-]+$")
TEXT_LOG_LIMIT = 500


def _scrub(value: str) -> str:
    return scrub(value)


def _usage_fields(usage: Any) -> dict[str, Any]:
    if usage is None:
        return {}
    get = usage.get if isinstance(usage, dict) else (lambda name, default=0: getattr(usage, name, default))
    fields = {
        name: int(get(name, 0) or 0)
        for name in ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens")
    }
    try:
        fields["weighted_tokens"] = weighted_tokens(Usage(**fields))
    except Exception:  # noqa: BLE001 - logging must never fail a turn
        pass
    return fields


def format_fields(fields: dict[str, Any]) -> str:
    parts = []
    for key, value in fields.items():
        if value is None or value == "":
            text = "-"
        elif isinstance(value, float):
            text = f"{value:.6f}".rstrip("0").rstrip(".") if key == "cost_usd" else f"{value:.3f}"
        else:
            text = _scrub(str(value))
        if not _BARE.match(text):
            text = json.dumps(text, ensure_ascii=False)
        parts.append(f"{key}={text}")
    return " ".join(parts)


def _emit(level: int, event: str, fields: dict[str, Any]) -> None:
    try:
        logger.log(
            level, "%s %s", event, format_fields(fields), extra={"copilot": {"event": event, **fields}}
        )
    except Exception:
        logging.getLogger("chat.logging").debug("could not log %s", event, exc_info=True)


def _content(text: str | None) -> dict[str, Any]:
    if text is None or not chat_config().log_message_content:
        return {}
    return {"text": text[:TEXT_LOG_LIMIT]}


def log_turn(
    *,
    session_id: Any,
    user_id: Any,
    backend: str = "",
    model: str = "",
    duration_s: float | None = None,
    usage: Any = None,
    cost_usd: float | None = None,
    finish_reason: str = "",
    error_code: str = "",
    turn_id: Any = None,
    text: str | None = None,
    **extra: Any,
) -> None:
    """One line per finished turn (stopped and failed turns included)."""
    if cost_usd is None and usage is not None:
        cost_usd = usage.get("cost_usd") if isinstance(usage, dict) else getattr(usage, "cost_usd", None)
    fields: dict[str, Any] = {
        "session": session_id,
        "turn": turn_id,
        "user": user_id,
        "backend": backend,
        "model": model,
        "duration_s": float(duration_s) if duration_s is not None else None,
        **_usage_fields(usage),
        "cost_usd": float(cost_usd) if cost_usd is not None else None,
        "finish_reason": finish_reason,
        "error": error_code,
        **{k: v for k, v in extra.items() if k not in {"text", "content", "prompt"}},
        **_content(text),
    }
    if turn_id is None:
        fields.pop("turn")
    _emit(logging.WARNING if error_code else logging.INFO, "turn", fields)


def log_error(
    *,
    session_id: Any,
    user_id: Any,
    backend: str = "",
    model: str = "",
    error_code: str = "",
    detail: str = "",
    retryable: bool | None = None,
    turn_id: Any = None,
    duration_s: float | None = None,
    usage: Any = None,
    cost_usd: float | None = None,
    finish_reason: str = "",
    text: str | None = None,
    **extra: Any,
) -> None:
    """One line per error a turn (or a refusal) ended with. ``detail`` must already be free of
    message content (AgentError.detail is); it is scrubbed of secrets again here."""
    fields: dict[str, Any] = {
        "session": session_id,
        "turn": turn_id,
        "user": user_id,
        "backend": backend,
        "model": model,
        "error": error_code,
        "retryable": None if retryable is None else str(bool(retryable)).lower(),
        "duration_s": float(duration_s) if duration_s is not None else None,
        "detail": (detail or "")[:300],
        **{k: v for k, v in extra.items() if k not in {"text", "content", "prompt"}},
        **_content(text),
    }
    if turn_id is None:
        fields.pop("turn")
    _emit(logging.WARNING, "error", fields)

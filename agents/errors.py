"""Typed agent errors: every failure a turn can end with, classified once.

Each class carries a short user-facing message (no stack traces, no keys), whether the user
may retry, whether the backend may retry it automatically, and for rate limits the reset time.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import re
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from agents.secret_values import secrets_to_scrub


class ErrorKind(StrEnum):
    RATE_LIMITED = "rate_limited"
    AUTHENTICATION = "authentication"
    BILLING = "billing"
    INVALID_REQUEST = "invalid_request"
    PROMPT_TOO_LONG = "prompt_too_long"
    MAX_OUTPUT_TOKENS = "max_output_tokens"
    OVERLOADED = "overloaded"
    SERVER = "server"
    CONNECTION = "connection"  # dropped stream, transient network failure
    BUDGET = "budget_exceeded"  # our own token budget
    POLICY = "policy"  # sandbox / circuit breaker ended the turn
    UNKNOWN = "unknown"


# kind -> (user message, user may retry, backend may retry automatically)
_POLICY: dict[ErrorKind, tuple[str, bool, bool]] = {
    ErrorKind.RATE_LIMITED: ("The model is rate limited right now.", True, True),
    ErrorKind.AUTHENTICATION: (
        "The server's model credentials were rejected. Ask an operator to check the API key.",
        False,
        False,
    ),
    ErrorKind.BILLING: (
        "The model account has a billing problem. Ask an operator to check it.",
        False,
        False,
    ),
    ErrorKind.INVALID_REQUEST: ("The model rejected the request as invalid.", False, False),
    ErrorKind.PROMPT_TOO_LONG: (
        "This conversation is too long for the model. Start a new chat to continue.",
        False,
        False,
    ),
    ErrorKind.MAX_OUTPUT_TOKENS: ("The answer hit the model's output limit.", True, True),
    ErrorKind.OVERLOADED: ("The model is overloaded. Please try again in a moment.", True, True),
    ErrorKind.SERVER: ("The model service had an internal error. Please try again.", True, True),
    ErrorKind.CONNECTION: ("The connection to the model dropped. Please try again.", True, True),
    ErrorKind.BUDGET: ("You have used your token budget.", False, False),
    ErrorKind.POLICY: ("The agent was stopped by a safety rule.", True, False),
    ErrorKind.UNKNOWN: ("Something went wrong while generating the answer. Please try again.", True, False),
}


@dataclass(eq=False)
class AgentError(Exception):
    kind: ErrorKind
    detail: str = ""  # internal detail for logs (already scrubbed of secrets)
    message: str = ""  # user-facing; defaults from the kind
    resets_at: dt.datetime | None = None  # rate limits and budgets
    retry_after: float | None = None  # seconds, when the upstream said so
    status_code: int | None = None

    def __post_init__(self) -> None:
        if not self.message:
            self.message = _POLICY[self.kind][0]
            if self.resets_at is not None:
                self.message += f" It resets at {self.resets_at.astimezone(dt.UTC):%Y-%m-%d %H:%M} UTC."
        super().__init__(self.message)

    @property
    def user_may_retry(self) -> bool:
        return _POLICY[self.kind][1]

    @property
    def auto_retry(self) -> bool:
        return _POLICY[self.kind][2]

    @property
    def code(self) -> str:
        return self.kind.value

    def __str__(self) -> str:
        return self.message


# --------------------------------------------------------------------------------------------
# Classification: HTTP statuses, exceptions and CLI/result texts -> AgentError (DESIGN 5, 9).
# --------------------------------------------------------------------------------------------


_KEY_RE = re.compile(r"\b(?:sk-ant-[A-Za-z0-9_\-]{6,}|sk-[A-Za-z0-9]{20,})")


def scrub(text: str) -> str:
    """``text`` with every configured secret (and anything shaped like an API key) removed."""
    if not text:
        return ""
    text = str(text)
    try:
        secrets = secrets_to_scrub()
    except Exception:  # noqa: BLE001 - settings not configured (pure unit use)
        secrets = []
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "[redacted]")
    return _KEY_RE.sub("[redacted]", text)


def _header(headers: Mapping[str, Any] | None, name: str) -> str | None:
    if not headers:
        return None
    value = headers.get(name)
    if value is None:
        lowered = name.lower()
        for key, val in headers.items():
            if str(key).lower() == lowered:
                return str(val)
        return None
    return str(value)


def _parse_retry_after(headers: Mapping[str, Any] | None, now: dt.datetime) -> float | None:
    ms = _header(headers, "retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = _header(headers, "retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, (when - now).total_seconds())


def _parse_iso(value: str) -> dt.datetime | None:
    try:
        when = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def rate_limit_reset(
    headers: Mapping[str, Any] | None, *, now: dt.datetime | None = None
) -> tuple[dt.datetime | None, float | None]:
    """(resets_at, retry_after seconds) from ``retry-after`` and ``anthropic-ratelimit-*-reset``."""
    now = now or dt.datetime.now(dt.UTC)
    retry_after = _parse_retry_after(headers, now)
    candidates: list[dt.datetime] = []
    fallback: list[dt.datetime] = []
    for key, value in (headers or {}).items():
        key = str(key).lower()
        if key.startswith("anthropic-ratelimit-") and key.endswith("-reset"):
            when = _parse_iso(str(value))
            if when is None:
                continue
            remaining = _header(headers, key[: -len("-reset")] + "-remaining")
            (candidates if remaining == "0" else fallback).append(when)
    if retry_after is not None:
        candidates.append(now + dt.timedelta(seconds=retry_after))
    resets_at = max(candidates) if candidates else (min(fallback) if fallback else None)
    if retry_after is None and resets_at is not None:
        retry_after = max(0.0, (resets_at - now).total_seconds())
    return resets_at, retry_after


def classify_status(status: int, message: str = "", headers: Mapping[str, Any] | None = None) -> AgentError:
    """An upstream HTTP error status (plus its message and headers) as an ``AgentError``."""
    text = scrub(message or "")
    lowered = text.lower()
    detail = f"HTTP {status}: {text}"[:500]
    if status == 429:
        resets_at, retry_after = rate_limit_reset(headers)
        return AgentError(
            ErrorKind.RATE_LIMITED,
            detail=detail,
            resets_at=resets_at,
            retry_after=retry_after,
            status_code=status,
        )
    if status == 401:
        return AgentError(ErrorKind.AUTHENTICATION, detail=detail, status_code=status)
    if status in (402, 403) or "credit balance" in lowered or "billing" in lowered:
        return AgentError(ErrorKind.BILLING, detail=detail, status_code=status)
    if "prompt is too long" in lowered or status == 413:
        return AgentError(ErrorKind.PROMPT_TOO_LONG, detail=detail, status_code=status)
    if status == 529 or "overloaded" in lowered:
        retry_after = _parse_retry_after(headers, dt.datetime.now(dt.UTC))
        return AgentError(ErrorKind.OVERLOADED, detail=detail, status_code=status, retry_after=retry_after)
    if status in (408, 409) or status >= 500:
        retry_after = _parse_retry_after(headers, dt.datetime.now(dt.UTC))
        return AgentError(ErrorKind.SERVER, detail=detail, status_code=status, retry_after=retry_after)
    if 400 <= status < 500:
        return AgentError(ErrorKind.INVALID_REQUEST, detail=detail, status_code=status)
    return AgentError(ErrorKind.UNKNOWN, detail=detail, status_code=status)


_CONNECTION_CLASS_NAMES = frozenset(
    {
        "TransportError",
        "NetworkError",
        "ProtocolError",
        "RemoteProtocolError",
        "ReadError",
        "WriteError",
        "ConnectError",
        "CloseError",
        "TimeoutException",
        "ReadTimeout",
        "ConnectTimeout",
        "WriteTimeout",
        "PoolTimeout",
        "StreamError",
        "StreamClosed",
        "IncompleteRead",
        "ClientConnectionError",
        "ServerDisconnectedError",
    }
)


def _is_connection_error(exc: BaseException) -> bool:
    if isinstance(exc, (ConnectionError, TimeoutError, asyncio.IncompleteReadError, EOFError)):
        return True
    return any(
        cls.__name__ in _CONNECTION_CLASS_NAMES
        and cls.__module__.split(".")[0] in {"httpx", "httpx2", "httpcore", "h11", "aiohttp", "anyio"}
        for cls in type(exc).__mro__
    )


_ERROR_TYPE_STATUS = {
    "overloaded_error": 529,
    "rate_limit_error": 429,
    "api_error": 500,
    "authentication_error": 401,
    "permission_error": 403,
    "billing_error": 402,
    "invalid_request_error": 400,
    "request_too_large": 413,
    "not_found_error": 404,
}


def classify_exception(exc: BaseException) -> AgentError:
    """Any exception raised while talking to the model, as an ``AgentError``."""
    if isinstance(exc, AgentError):
        return exc
    try:
        import anthropic
    except ImportError:  # pragma: no cover - a hard dependency
        anthropic = None  # type: ignore[assignment]
    if anthropic is not None:
        if isinstance(exc, anthropic.APIStatusError):
            message = getattr(exc, "api_message", None) or getattr(exc, "message", "") or str(exc)
            headers = getattr(getattr(exc, "response", None), "headers", None)
            status = int(getattr(exc, "status_code", 0) or 0)
            error_type = str(getattr(exc, "type", "") or "")
            if error_type == "overloaded_error" and status != 429:
                status = 529
            elif status < 400:  # an error event inside a 200 stream
                status = _ERROR_TYPE_STATUS.get(error_type, 500)
            return classify_status(status, message, headers)
        if isinstance(exc, anthropic.APIConnectionError):
            return AgentError(ErrorKind.CONNECTION, detail=scrub(f"{type(exc).__name__}: {exc}")[:500])
        if isinstance(exc, anthropic.APIError):
            # An error event inside an otherwise successful stream: {"type": "error", "error": {...}}.
            body = getattr(exc, "body", None)
            error = body.get("error") if isinstance(body, dict) else None
            if isinstance(error, dict):
                kind = str(error.get("type", ""))
                message = str(error.get("message", ""))
                status = _ERROR_TYPE_STATUS.get(kind)
                if status:
                    return classify_status(status, message, None)
            found = classify_text(str(exc))
            if found is not None:
                return found
    if _is_connection_error(exc):
        return AgentError(ErrorKind.CONNECTION, detail=scrub(f"{type(exc).__name__}: {exc}")[:500])
    return AgentError(ErrorKind.UNKNOWN, detail=scrub(f"{type(exc).__name__}: {exc}")[:500])


_MONTHS = {
    m: i
    for i, m in enumerate(
        ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"], 1
    )
}
_RESETS_RE = re.compile(
    r"resets?\s+(?:at\s+)?(?:(?P<month>[A-Za-z]{3})[a-z]*\.?\s+(?P<day>\d{1,2}),?\s+(?:at\s+)?)?"
    r"(?P<hour>\d{1,2})(?::(?P<minute>\d{2}))?\s*(?P<ampm>am|pm)?"
    r"(?:\s*\((?P<tz>[A-Za-z_]+(?:/[A-Za-z_+\-0-9]+)*)\))?",
    re.IGNORECASE,
)
_API_ERROR_RE = re.compile(r"API Error:?\s*(?P<status>\d{3})")


def parse_reset_time(text: str, *, now: dt.datetime | None = None) -> dt.datetime | None:
    """The reset time in CLI texts like "resets 4pm (America/Los_Angeles)" (the next such time)."""
    match = _RESETS_RE.search(text or "")
    if not match:
        return None
    tz: dt.tzinfo = dt.UTC
    if match.group("tz"):
        try:
            tz = zoneinfo.ZoneInfo(match.group("tz"))
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            tz = dt.UTC
    hour = int(match.group("hour"))
    minute = int(match.group("minute") or 0)
    ampm = (match.group("ampm") or "").lower()
    if ampm == "pm" and hour != 12:
        hour += 12
    elif ampm == "am" and hour == 12:
        hour = 0
    if hour > 23 or minute > 59:
        return None
    local_now = (now or dt.datetime.now(dt.UTC)).astimezone(tz)
    month = _MONTHS.get((match.group("month") or "").lower()[:3])
    if month and match.group("day"):
        try:
            when = local_now.replace(
                month=month, day=int(match.group("day")), hour=hour, minute=minute, second=0, microsecond=0
            )
        except ValueError:
            return None
        if when < local_now - dt.timedelta(days=1):
            when = when.replace(year=when.year + 1)
        return when
    when = local_now.replace(hour=hour, minute=minute, second=0, microsecond=0)
    if when <= local_now:
        when += dt.timedelta(days=1)
    return when


def classify_text(text: str, *, now: dt.datetime | None = None) -> AgentError | None:
    """Errors that arrive as text (CLI output, result messages, AssistantMessage.error); ``None``
    when the text does not look like one."""
    if not text:
        return None
    clean = scrub(text)
    lowered = clean.lower()
    detail = clean[:500]
    if (
        "prompt is too long" in lowered
        or "prompt too long" in lowered
        or "context window" in lowered
        and ("exceed" in lowered or "limit" in lowered)
        or "model_context_window_exceeded" in lowered
    ):
        return AgentError(ErrorKind.PROMPT_TOO_LONG, detail=detail)
    if (
        "hit your limit" in lowered
        or "usage limit" in lowered
        or re.search(r"rate[ _-]?limit(?:ed|_error| error| exceeded| reached)", lowered)
    ):
        resets_at = parse_reset_time(clean, now=now)
        retry_after = None
        if resets_at is not None:
            retry_after = max(0.0, (resets_at - (now or dt.datetime.now(dt.UTC))).total_seconds())
        return AgentError(ErrorKind.RATE_LIMITED, detail=detail, resets_at=resets_at, retry_after=retry_after)
    if "credit balance" in lowered or "billing_error" in lowered or "billing error" in lowered:
        return AgentError(ErrorKind.BILLING, detail=detail)
    if (
        "invalid api key" in lowered
        or "invalid x-api-key" in lowered
        or "authentication_error" in lowered
        or "please run /login" in lowered
    ):
        return AgentError(ErrorKind.AUTHENTICATION, detail=detail)
    api = _API_ERROR_RE.search(clean)
    if api:
        return classify_status(int(api.group("status")), clean)
    if "overloaded" in lowered:
        return AgentError(ErrorKind.OVERLOADED, detail=detail)
    if "output token maximum" in lowered or "max_tokens" in lowered or "max output tokens" in lowered:
        return AgentError(ErrorKind.MAX_OUTPUT_TOKENS, detail=detail)
    if (
        "request timed out" in lowered
        or "connection error" in lowered
        or "econnreset" in lowered
        or "socket hang up" in lowered
    ):
        return AgentError(ErrorKind.CONNECTION, detail=detail)
    return None

"""Typed agent errors: every failure a turn can end with, classified once.

Each class carries a short user-facing message (no stack traces, no keys), whether the user
may retry, whether the backend may retry it automatically, and for rate limits the reset time.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import StrEnum


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
    ErrorKind.AUTHENTICATION: ("The server's model credentials were rejected. Ask an operator to check the API key.", False, False),
    ErrorKind.BILLING: ("The model account has a billing problem. Ask an operator to check it.", False, False),
    ErrorKind.INVALID_REQUEST: ("The model rejected the request as invalid.", False, False),
    ErrorKind.PROMPT_TOO_LONG: ("This conversation is too long for the model. Start a new chat to continue.", False, False),
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

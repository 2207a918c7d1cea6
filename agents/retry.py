"""The retry matrix (DESIGN lesson 9): which failures the runtime retries, and after how long.

- SERVER, OVERLOADED, CONNECTION, RATE_LIMITED: exponential backoff with full jitter
  (``AGENT_RETRY_BASE_DELAY * 2**attempt``), honouring the upstream ``retry-after``; every delay
  is capped by ``AGENT_RETRY_MAX_DELAY``. A rate limit whose reset is further away than the cap
  is not retried (the user sees it with its reset time instead).
- MAX_OUTPUT_TOKENS: retried once.
- AUTHENTICATION, BILLING, INVALID_REQUEST, PROMPT_TOO_LONG, BUDGET, POLICY, UNKNOWN: never.

``attempt`` counts the retries already made (0 for the first failure). At most
``AGENT_MAX_RETRIES`` retries. The runtime never retries once content reached the client.
"""

from __future__ import annotations

import random

from agents.config import agent_config
from agents.errors import AgentError, ErrorKind

BACKOFF_KINDS = frozenset(
    {ErrorKind.SERVER, ErrorKind.OVERLOADED, ErrorKind.CONNECTION, ErrorKind.RATE_LIMITED}
)


def retry_delay(error: AgentError, attempt: int) -> float | None:
    """Seconds to wait before retry number ``attempt + 1``, or ``None`` to give up."""
    config = agent_config()
    max_retries, base, cap = config.max_retries, config.retry_base_delay, config.retry_max_delay
    if attempt >= max_retries:
        return None
    if error.kind == ErrorKind.MAX_OUTPUT_TOKENS:
        return 0.0 if attempt == 0 else None
    if error.kind not in BACKOFF_KINDS:
        return None
    backoff = base * (2**attempt)
    delay = backoff * (0.5 + random.random() / 2)  # jitter in [backoff/2, backoff)
    if error.retry_after is not None:
        if error.kind == ErrorKind.RATE_LIMITED and error.retry_after > cap:
            return None
        delay = max(delay, error.retry_after)
    return max(0.0, min(delay, cap))

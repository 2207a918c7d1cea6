"""Rate limits that are not DRF throttles.

- ``TokenBucket``: the per-connection frame limiter of the websocket consumer (in memory, one
  bucket per socket: a flood on one connection never slows another).
- Login throttling (``login_*``): failed sign-ins counted per (username, client IP) in Django's
  cache (Redis when ``REDIS_URL`` is set, so every process shares the counters). After
  ``LOGIN_FAILURE_LIMIT`` failures inside ``LOGIN_FAILURE_WINDOW`` seconds the pair is locked
  until the window ends; a successful sign-in clears the counter. Enforced by
  ``chat.security.ThrottledModelBackend`` (so the admin login is covered too) and explained to
  the user by ``chat.security.ThrottledAuthenticationForm``.
- Failed API-key attempts (``api_key_failure_*``): every Bearer request or websocket handshake
  whose key is missing, malformed, unknown or revoked counts against its client IP, in the same
  cache. ``API_KEY_FAILURE_LIMIT`` failures inside a ``API_KEY_FAILURE_WINDOW``-second window
  (fixed windows, so the counter is one atomic ``incr``) block every Bearer attempt from that
  address — a valid key too, so a guess is never confirmed — until the window ends: REST answers
  429 with Retry-After (``chat.api.auth.BearerKeyAuthentication``), the handshake is refused
  (``chat.api.auth.BearerAuthMiddleware``). Cookie sessions are not affected.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any

from django.core.cache import cache

from chat.config import chat_config
from chat.proxies import request_client_ip


class TokenBucket:
    """``burst`` tokens, refilled at ``rate`` tokens per second; ``take()`` spends one."""

    __slots__ = ("rate", "burst", "tokens", "updated", "clock")

    def __init__(self, *, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = float(rate)
        self.burst = float(burst)
        self.tokens = float(burst)
        self.clock = clock
        self.updated = clock()

    def take(self, cost: float = 1.0) -> bool:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= cost:
            self.tokens -= cost
            return True
        return False


# --- login throttling ------------------------------------------------------------------------------


def login_failure_limit() -> int:
    return chat_config().login_failure_limit


def login_failure_window() -> int:
    return chat_config().login_failure_window


def client_ip(request: Any) -> str:
    """The client's address: the peer's, or behind a trusted proxy the one it forwards (chat.proxies)."""
    return request_client_ip(request)


def _login_key(*, username: str, ip: str) -> str:
    digest = hashlib.sha256(f"{(username or '').strip().lower()}\x00{ip}".encode()).hexdigest()[:32]
    return f"login-failures:{digest}"


def login_failures_count(*, username: str, ip: str) -> int:
    return int(cache.get(_login_key(username=username, ip=ip)) or 0)


def login_is_locked(*, username: str, ip: str) -> bool:
    return login_failures_count(username=username, ip=ip) >= login_failure_limit()


def login_failure_record(*, username: str, ip: str) -> int:
    """Count one failed sign-in; the window starts at the first failure. Returns the count."""
    key = _login_key(username=username, ip=ip)
    cache.add(key, 0, timeout=login_failure_window())
    try:
        return int(cache.incr(key))
    except ValueError:  # expired between add and incr
        cache.set(key, 1, timeout=login_failure_window())
        return 1


def login_failures_clear(*, username: str, ip: str) -> None:
    cache.delete(_login_key(username=username, ip=ip))


# --- failed API-key attempts ----------------------------------------------------------------------


def api_key_failure_limit() -> int:
    return chat_config().api_key_failure_limit


def api_key_failure_window() -> int:
    return chat_config().api_key_failure_window


def _api_key_failure_key(ip: str, now: float) -> tuple[str, float]:
    """The counter of ``ip``'s current window, and the seconds until that window ends."""
    window = api_key_failure_window()
    index, into = divmod(now, window)
    digest = hashlib.sha256(ip.encode()).hexdigest()[:32]
    # API_KEY_FAILURE_NAMESPACE: unset in production; the test suite gives each test its own, since
    # every test client is 127.0.0.1 and one test's bad keys must not throttle the next test.
    namespace = chat_config().api_key_failure_namespace
    return f"apikey-failures:{namespace}:{digest}:{int(index)}", window - into


def api_key_blocked_for(*, ip: str, now: float | None = None) -> float:
    """Seconds until ``ip`` may present API keys again; 0 when it is not blocked."""
    if api_key_failure_limit() <= 0:
        return 0.0
    key, remaining = _api_key_failure_key(ip, time.time() if now is None else now)
    return remaining if int(cache.get(key) or 0) >= api_key_failure_limit() else 0.0


def api_key_failure_record(*, ip: str, now: float | None = None) -> int:
    """Count one failed key attempt from ``ip``; returns the count in the current window."""
    key, remaining = _api_key_failure_key(ip, time.time() if now is None else now)
    timeout = int(remaining) + 2
    cache.add(key, 0, timeout=timeout)
    try:
        return int(cache.incr(key))
    except ValueError:  # expired between add and incr
        cache.set(key, 1, timeout=timeout)
        return 1

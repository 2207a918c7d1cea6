"""Rate limits that are not DRF throttles.

- ``TokenBucket``: the per-connection frame limiter of the websocket consumer (in memory, one
  bucket per socket: a flood on one connection never slows another).
- Login throttling (``login_*``): failed sign-ins counted per (username, client IP) in Django's
  cache (Redis when ``REDIS_URL`` is set, so every process shares the counters). After
  ``LOGIN_FAILURE_LIMIT`` failures inside ``LOGIN_FAILURE_WINDOW`` seconds the pair is locked
  until the window ends; a successful sign-in clears the counter. Enforced by
  ``chat.security.ThrottledModelBackend`` (so the admin login is covered too) and explained to
  the user by ``chat.security.ThrottledAuthenticationForm``.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.core.cache import cache

DEFAULT_LOGIN_FAILURE_LIMIT = 5
DEFAULT_LOGIN_FAILURE_WINDOW = 15 * 60  # seconds


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
    return int(getattr(settings, "LOGIN_FAILURE_LIMIT", DEFAULT_LOGIN_FAILURE_LIMIT))


def login_failure_window() -> int:
    return int(getattr(settings, "LOGIN_FAILURE_WINDOW", DEFAULT_LOGIN_FAILURE_WINDOW))


def client_ip(request: Any) -> str:
    """The peer address Django sees (behind a proxy: the proxy's, i.e. per username only)."""
    meta = getattr(request, "META", None) or {}
    return str(meta.get("REMOTE_ADDR") or "unknown")


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

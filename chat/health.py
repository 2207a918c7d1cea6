"""Readiness checks (docs/operations.md "Health checks"): ``GET /readyz`` asks ``readiness()``.

Ready means: this process is not draining (``chat.runtime.shutdown``: from the moment SIGTERM
arrives), the database answers, and with ``REDIS_URL`` Redis answers on both connections the
process uses — the pool of the locks, turn logs and control messages (``chat.runtime.locks``) and
the channel layer. Each check is bounded by ``CHECK_TIMEOUT`` seconds and runs beside the others;
the database one runs in a thread of its own, not behind the turns' database thread, so a busy
worker still answers quickly (on a connection opened and closed for it). A failed check names
the exception class only (the body is public); the details go to the log.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import connection

from chat.runtime import locks, shutdown

logger = logging.getLogger(__name__)

CHECK_TIMEOUT = 2.0  # seconds per check
HEALTH_GROUP = "copilot-health"  # the channel-layer group a readiness probe publishes to (nobody listens)


@dataclass
class CheckResult:
    name: str
    ok: bool
    ms: float = 0.0
    error: str = ""

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": "ok" if self.ok else "fail", "ms": round(self.ms, 1)}
        if self.error:
            out["error"] = self.error
        return out


@dataclass
class Readiness:
    checks: list[CheckResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": "ok" if self.ok else "fail",
            "checks": {check.name: check.as_dict() for check in self.checks},
        }


def database_ping() -> None:
    """``SELECT 1`` on a connection of its own, closed again: the probe also shows that the
    database still accepts connections, and leaves none open in the executor's threads."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    finally:
        connection.close()


async def database_check() -> None:
    await sync_to_async(database_ping, thread_sensitive=False)()


async def redis_check() -> None:
    await locks.async_redis().ping()


async def channel_layer_check() -> None:
    layer = get_channel_layer()
    await layer.group_send(HEALTH_GROUP, {"type": "health.ping"})


def channel_layer_uses_redis() -> bool:
    backend = settings.CHANNEL_LAYERS.get("default", {}).get("BACKEND", "")
    return "redis" in backend.lower()


async def timed(name: str, check: Callable[[], Awaitable[None]]) -> CheckResult:
    start = time.perf_counter()
    try:
        await asyncio.wait_for(check(), CHECK_TIMEOUT)
    except TimeoutError:
        logger.warning("readiness: %s did not answer within %.1fs", name, CHECK_TIMEOUT)
        return CheckResult(name, False, (time.perf_counter() - start) * 1000, "timeout")
    except Exception as exc:  # noqa: BLE001 - any failure means "not ready"; logged, named in the body
        logger.warning("readiness: %s failed: %s", name, exc)
        return CheckResult(name, False, (time.perf_counter() - start) * 1000, type(exc).__name__)
    return CheckResult(name, True, (time.perf_counter() - start) * 1000)


def draining_check() -> CheckResult:
    if shutdown.shutting_down():
        return CheckResult("draining", False, error="shutting down")
    return CheckResult("draining", True)


async def readiness() -> Readiness:
    """Every check (see the module docstring). Also registers this process's SIGTERM hook, so a
    worker that has not run a turn yet reports draining too."""
    shutdown.install()
    checks: list[tuple[str, Callable[[], Awaitable[None]]]] = [("database", database_check)]
    if locks.use_redis():
        checks.append(("redis", redis_check))
        if channel_layer_uses_redis():
            checks.append(("channel_layer", channel_layer_check))
    results = await asyncio.gather(*(timed(name, check) for name, check in checks))
    return Readiness(checks=[draining_check(), *results])

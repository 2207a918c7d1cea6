"""Waiting for a condition in the tests: one place, with a deadline and a message, instead of a
sleep that hopes the thing has happened by then. The polling interval is short; the deadline is
what a slow CI machine may need."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")


async def wait_until(
    predicate: Callable[[], Any | Awaitable[Any]],
    *,
    timeout: float = 15.0,
    message: str = "timed out",
    every: float = 0.02,
) -> Any:
    """Poll ``predicate`` (sync or async) until it returns something truthy; return that value.
    Fails the test with ``message`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        assert time.monotonic() < deadline, message
        await asyncio.sleep(every)


def wait_until_sync(
    predicate: Callable[[], T], *, timeout: float = 15.0, message: str = "timed out", every: float = 0.05
) -> T:
    """``wait_until`` for synchronous tests (browser tests, plain threads)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, message
        time.sleep(every)

"""Graceful shutdown: SIGTERM must not make running turns vanish (docs/reliability.md).

Daphne runs on Twisted's asyncio reactor and does not speak the ASGI lifespan protocol. On
SIGTERM (or SIGINT) Twisted calls ``reactor.stop()``, which fires the *before shutdown* system
event and waits for every Deferred its triggers return before it stops the loop. ``install()``
(called by ``chat.turns.turn_start`` the first time a turn starts in a process) registers such a
trigger; it runs ``turns_interrupt_all``:

1. new turns are refused (``TurnRefused("unavailable")``),
2. every turn running in this process is stopped through its stop event and marked as
   interrupted by a fault: the runtime closes its open parts, the partial output is persisted,
   a retryable ``server_shutdown`` marker is written, the turn row becomes ``interrupted``, the
   session lock is released, and listeners get an ``error`` chunk (they may retry at once: the
   other processes take the next turn),
3. turns still running after ``TURN_SHUTDOWN_GRACE_SECONDS`` are cancelled (their end is still
   recorded, shielded from the cancellation), then the reactor stops.

Outside daphne (a plain asyncio server, tests) ``install()`` does nothing; call
``turns_interrupt_all`` from the host's own shutdown hook.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import weakref

from django.conf import settings

logger = logging.getLogger(__name__)

DEFAULT_GRACE_SECONDS = 10.0
SHUTDOWN_REFUSED_TEXT = "The server is restarting. Please try again in a moment."
SHUTDOWN_ERROR_TEXT = "The server restarted while answering. Your partial answer was kept; please try again."

_shutting_down = False
_installed: "weakref.WeakSet[asyncio.AbstractEventLoop]" = weakref.WeakSet()


def shutting_down() -> bool:
    return _shutting_down


def grace_seconds() -> float:
    return float(getattr(settings, "TURN_SHUTDOWN_GRACE_SECONDS", DEFAULT_GRACE_SECONDS))


def install() -> bool:
    """Register the before-shutdown trigger once per event loop when running under daphne's
    Twisted reactor. Returns whether a hook is (now) installed."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return False
    if loop in _installed:
        return True
    reactor = sys.modules.get("twisted.internet.reactor")
    if reactor is None or getattr(reactor, "_asyncioEventloop", None) is not loop:
        return False
    from twisted.internet import defer

    def before_shutdown():
        logger.info("shutdown: interrupting running turns (grace %.1fs)", grace_seconds())
        future = asyncio.ensure_future(turns_interrupt_all(grace=grace_seconds()), loop=loop)
        deferred = defer.Deferred.fromFuture(future)
        deferred.addErrback(lambda failure: logger.error("shutdown hook failed: %s", failure.getErrorMessage()))
        return deferred

    reactor.addSystemEventTrigger("before", "shutdown", before_shutdown)
    _installed.add(loop)
    return True


async def turns_interrupt_all(*, grace: float = DEFAULT_GRACE_SECONDS, reason: str = "server_shutdown") -> int:
    """Interrupt every turn running in this process (see the module docstring); returns how many."""
    global _shutting_down
    from agents.errors import AgentError, ErrorKind
    from chat import turns
    from chat.models import ChatTurn

    _shutting_down = True
    loop = asyncio.get_running_loop()
    running = [rt for rt in list(turns._active.values()) if not rt.done.is_set()]
    for rt in running:
        rt.interrupt(
            AgentError(ErrorKind.CONNECTION, detail=reason, message=SHUTDOWN_ERROR_TEXT),
            code=reason,
            status=ChatTurn.Status.INTERRUPTED,
        )
    if running:
        waits = [asyncio.ensure_future(rt.done.wait()) for rt in running]
        _done, pending = await asyncio.wait(waits, timeout=grace)
        for waiter in pending:
            waiter.cancel()
        if pending:
            # Past the grace period: cancel the turns; ``_run`` still records their end.
            late = [t for t in list(turns._tasks) if t.get_loop() is loop and not t.done() and t.get_coro().__name__ == "_run"]
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late, timeout=5.0)
        # Let the connections' forwarding tasks write the final frames before the sockets close.
        for _ in range(5):
            await asyncio.sleep(0.02)
    logger.info("shutdown: %d running turn(s) interrupted", len(running))
    return len(running)


def shutdown_reset() -> None:
    """Accept turns again (tests that exercised ``turns_interrupt_all`` in-process)."""
    global _shutting_down
    _shutting_down = False

"""Graceful shutdown: SIGTERM must not make running turns vanish (docs/reliability.md).

Daphne runs on Twisted's asyncio reactor and does not speak the ASGI lifespan protocol. On
SIGTERM (or SIGINT) Twisted calls ``reactor.stop()``, which fires the *before shutdown* system
event and waits for every Deferred its triggers return before it stops the loop. ``install()``
(called by ``chat.runtime.turn_start`` the first time a turn starts in a process) registers such a
trigger; it runs ``turns_interrupt_all``:

1. new turns are refused (``TurnRefused("unavailable")``),
2. every turn running in this process is stopped through its stop event and marked as
   interrupted by a fault: the runtime closes its open parts, the partial output is persisted,
   a retryable ``server_shutdown`` marker is written, the turn row becomes ``interrupted``, the
   session lock is released, and listeners get an ``error`` chunk (they may retry at once: the
   other processes take the next turn),
3. turns still running after ``TURN_SHUTDOWN_GRACE_SECONDS`` are cancelled (their end is still
   recorded, shielded from the cancellation),
4. the Claude Code CLI processes this worker keeps between a session's turns are closed
   (``agents.backends.sdk.close_all_clients``): their owner tasks would otherwise stay pending
   when the loop stops, and anyio's non-daemon worker threads, which stop only when those tasks
   are done, would keep the interpreter waiting in ``threading._shutdown`` for ever,
5. then the reactor stops. A last-resort watchdog (a daemon thread started with the hook) ends
   the process with ``os._exit(1)`` if it is still alive ``grace + SHUTDOWN_EXIT_MARGIN`` seconds
   after the signal, logging the threads that held it: a worker must never linger after SIGTERM.

Outside daphne (a plain asyncio server, tests) ``install()`` does nothing; call
``turns_interrupt_all`` from the host's own shutdown hook.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import weakref

from twisted.internet import defer

from agents.backends.sdk import close_all_clients
from agents.errors import AgentError, ErrorKind
from chat.config import chat_config
from chat.models import ChatTurn
from chat.runtime.registry import registry

logger = logging.getLogger(__name__)

SHUTDOWN_EXIT_MARGIN = 8.0  # seconds past the grace period before the watchdog ends the process
SHUTDOWN_REFUSED_TEXT = "The server is restarting. Please try again in a moment."
SHUTDOWN_ERROR_TEXT = "The server restarted while answering. Your partial answer was kept; please try again."

_shutting_down = False
_installed: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()


def shutting_down() -> bool:
    return _shutting_down


def grace_seconds() -> float:
    return chat_config().shutdown_grace_seconds


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

    def before_shutdown():
        logger.info("shutdown: interrupting running turns (grace %.1fs)", grace_seconds())
        exit_watchdog(grace_seconds() + SHUTDOWN_EXIT_MARGIN)
        future = asyncio.ensure_future(turns_interrupt_all(grace=grace_seconds()), loop=loop)
        deferred = defer.Deferred.fromFuture(future)
        deferred.addErrback(
            lambda failure: logger.error("shutdown hook failed: %s", failure.getErrorMessage())
        )
        return deferred

    reactor.addSystemEventTrigger("before", "shutdown", before_shutdown)
    _installed.add(loop)
    return True


def exit_watchdog(seconds: float) -> threading.Thread:
    """A daemon thread that ends the process ``seconds`` from now unless it has exited by then
    (it dies with the interpreter). Logs the non-daemon threads still alive: those are what a
    normal exit would have waited for."""

    def run() -> None:
        if _watchdog_cancel.wait(seconds):
            return
        held = [t.name for t in threading.enumerate() if not t.daemon and t is not threading.main_thread()]
        logger.error(
            "shutdown: still running %.0fs after the signal (threads: %s); exiting now", seconds, held or "-"
        )
        for handler in logging.getLogger().handlers:
            try:
                handler.flush()
            except Exception:  # noqa: BLE001
                pass
        os._exit(1)

    _watchdog_cancel.clear()
    thread = threading.Thread(target=run, name="shutdown-watchdog", daemon=True)
    thread.start()
    return thread


_watchdog_cancel = threading.Event()


async def close_agent_clients(timeout: float = 5.0) -> int:
    """Close the CLI processes the sdk backend keeps between turns; returns how many owner tasks
    were still open."""
    try:
        return await close_all_clients(timeout=timeout)
    except Exception:
        logger.warning("shutdown: closing kept CLI clients failed", exc_info=True)
        return 0


async def turns_interrupt_all(*, grace: float | None = None, reason: str = "server_shutdown") -> int:
    """Interrupt every turn running in this process (see the module docstring); returns how many.
    ``grace``: how long running turns may take to stop (default TURN_SHUTDOWN_GRACE_SECONDS)."""
    global _shutting_down
    _shutting_down = True
    interrupted = await registry.interrupt_all(
        error=AgentError(ErrorKind.CONNECTION, detail=reason, message=SHUTDOWN_ERROR_TEXT),
        code=reason,
        status=ChatTurn.Status.INTERRUPTED,
        grace=grace_seconds() if grace is None else grace,
    )
    if interrupted:
        # Let the connections' forwarding tasks write the final frames before the sockets close.
        for _ in range(5):
            await asyncio.sleep(0.02)
    logger.info("shutdown: %d running turn(s) interrupted", interrupted)
    closed = await close_agent_clients()
    if closed:
        logger.info("shutdown: closed %d CLI client(s)", closed)
    return interrupted


def shutdown_reset() -> None:
    """Accept turns again (tests that exercised ``turns_interrupt_all`` in-process)."""
    global _shutting_down
    _shutting_down = False
    _watchdog_cancel.set()

"""What runs beside a turn while it runs: the lease heartbeat, the idle watchdog, the title.

- ``heartbeat``: refreshes the session lease every ``LOCK_TTL / 3`` (and the turn row's
  ``heartbeat_at``); a lost lease (expired or force-released by an operator) stops the turn.
- ``idle_watchdog``: a stalled upstream (no bytes, only our own heartbeats) ends the turn with a
  retryable error after ``AGENT_STREAM_IDLE_TIMEOUT`` seconds; time spent running tools or waiting
  for the user's approval does not count (docs/reliability.md).
- ``title_generate``: names a new chat from its first message.

All three are tasks of the turn (``chat.runtime.runner`` spawns and cancels them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from channels.db import database_sync_to_async
from django.utils import timezone

from agents import events
from agents.errors import AgentError, ErrorKind
from agents.runtime import generate_title
from chat import usage as chat_usage
from chat.config import chat_config
from chat.models import ChatSession, ChatTurn
from chat.runtime import locks, persistence
from chat.runtime.registry import RunningTurn

logger = logging.getLogger(__name__)

LOCK_TTL = 30.0  # seconds; refreshed every LOCK_TTL / 3 by the turn's heartbeat


def idle_timeout() -> float:
    return chat_config().stream_idle_timeout


async def heartbeat(rt: RunningTurn) -> None:
    """Refresh the lease (and the turn row's heartbeat). A lost lease (expired or force-released
    by an operator) stops the turn."""
    key = locks.session_key(rt.session_id)
    while True:
        await asyncio.sleep(LOCK_TTL / 3)
        try:
            if not await locks.lock_refresh(key, rt.lock_token, ttl=LOCK_TTL):
                # Redis restarted without its data: the lease is simply gone. Take it back unless
                # an operator force-released it or another turn holds the session now.
                meta = {"turn_id": rt.turn_id, "user_id": getattr(rt.user, "pk", None)}
                if await locks.lock_reclaim(key, rt.lock_token, ttl=LOCK_TTL, meta=meta):
                    logger.warning(
                        "turn %s: its session lock vanished (Redis restart?); re-took it", rt.turn_id
                    )
                    continue
                logger.warning("turn %s lost its session lock; stopping it", rt.turn_id)
                rt.inp.stop.set()
                return
            await database_sync_to_async(ChatTurn.objects.filter(pk=rt.turn.pk).update)(
                heartbeat_at=timezone.now()
            )
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("heartbeat of turn %s failed", rt.turn_id)


async def idle_watchdog(rt: RunningTurn) -> None:
    """A stalled upstream (no bytes, only our own heartbeats) ends the turn with a retryable
    error after ``AGENT_STREAM_IDLE_TIMEOUT`` seconds. Time spent running tools or waiting for an
    approval does not count."""
    timeout = idle_timeout()
    if timeout <= 0:
        return
    loop = asyncio.get_running_loop()
    while not rt.done.is_set():
        await asyncio.sleep(max(0.05, min(timeout / 4, rt.last_activity + timeout - loop.time())))
        if rt.inp.stop.is_set():
            return
        if rt.writer.folder.tools_running() or rt.approvals.waiting():
            rt.last_activity = loop.time()
            continue
        if loop.time() - rt.last_activity >= timeout:
            logger.warning("turn %s: no data from the model for %.0fs; ending it", rt.turn_id, timeout)
            rt.interrupt(
                AgentError(
                    ErrorKind.CONNECTION,
                    detail=f"upstream stalled for {timeout:g}s",
                    message=f"The model stopped responding (nothing for {timeout:g} seconds). "
                    "Please try again.",
                ),
                code="upstream_stalled",
                status=ChatTurn.Status.FAILED,
            )
            return


async def title_generate(rt: RunningTurn) -> None:
    """Name the chat from its first message; stored only if it still has no title."""
    try:
        title, usage = await generate_title(user_text=rt.user_text, model=rt.inp.model)
        if not title:
            return
        # Hand the title to the turn's end (written with it: no extra writes) unless the turn
        # runs on past the flush interval: then it is stored (and shown) now.
        rt.title_pending = (title, usage)
        remaining = rt.turn.started_at.timestamp() + persistence.FLUSH_INTERVAL - time.time()
        if remaining > 0 and not rt.finishing.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(rt.finishing.wait(), timeout=remaining)
        if rt.title_pending is None:
            return  # claimed by the turn's end
        rt.title_pending = None

        def store() -> bool:
            stored = bool(ChatSession.objects.filter(pk=rt.session.pk, title="").update(title=title[:200]))
            if usage.input_tokens or usage.output_tokens:
                chat_usage.usage_record(
                    user=rt.user,
                    session=rt.session,
                    turn=None,
                    model=rt.inp.model,
                    backend=rt.inp.backend,
                    usage=usage,
                    purpose="title",
                )
            return stored

        if await database_sync_to_async(store)() and not rt.stream.closed:
            rt.coalescer.flush()
            rt.stream.append(events.session_info({"id": rt.session_id, "title": title}))
    except asyncio.CancelledError:
        raise
    except Exception:
        logger.exception("title for session %s failed", rt.session_id)

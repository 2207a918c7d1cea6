"""Which turn is active in a session, and stopping it from any process.

The one definition of an *active turn*: the session's lease lock is held — by a turn running in
this process (``registry``) or, with Redis, by any process (its holder names the turn). The
database's ``status = running`` is what the operators' tools read, and may lag (a dead worker
leaves it until ``expire_stream_locks``); the lock is authoritative.

stop : ``inp.stop`` of the running turn is set — directly when it runs in this process, through
       a Redis pub/sub control channel when another process owns it. The runtime closes open
       parts and ends with ``finish`` ``{"stopped": true}``; a ``stopped`` marker is persisted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from channels.db import database_sync_to_async

from chat.runtime import locks
from chat.runtime.registry import registry
from chat.selectors import session_get_for_user

logger = logging.getLogger(__name__)

# The ownership read of a resume or a stop runs on a pool thread of its own, not on the one
# serialised database thread, where it would queue behind every turn start and end of this
# process (a burst of reconnects after a worker restart waited seconds there).
session_lookup = database_sync_to_async(session_get_for_user, thread_sensitive=False)


async def turn_active_id(*, session_id: Any) -> str | None:
    """The id of the session's active turn (in any process), or None."""
    rt = registry.get(session_id)
    if rt is not None:
        return rt.turn_id
    holder = await locks.lock_holder_async(locks.session_key(session_id))
    return None if holder is None else holder.meta.get("turn_id")


def turn_is_active(*, session_id: Any) -> bool:
    """``turn_active_id`` for sync callers (admin, transcripts): is a turn running in this
    session (in any process)?"""
    return (
        registry.get(session_id) is not None or locks.lock_holder(locks.session_key(session_id)) is not None
    )


def control_channel() -> str:
    return locks.redis_key("turnctl")


async def turn_stop(*, user: Any, chat_id: str) -> bool:
    """Stop the caller's running turn in this chat. False when none runs (or no such chat)."""
    session = await session_lookup(user=user, chat_id=chat_id)
    if session is None:
        return False
    return await turn_stop_session(session_id=session.pk)


async def turn_stop_session(*, session_id: Any) -> bool:
    """Stop the session's running turn wherever it runs. True when a turn was running."""
    session_id = str(session_id)
    rt = registry.get(session_id)
    if rt is not None:
        rt.inp.stop.set()
        return True
    if locks.use_redis():
        holder = await locks.lock_holder_async(locks.session_key(session_id))
        if holder is not None:
            await locks.async_redis().publish(
                control_channel(),
                json.dumps({"op": "stop", "session_id": session_id, "turn_id": holder.meta.get("turn_id")}),
            )
            return True
    return False


_control_listeners: dict[asyncio.AbstractEventLoop, asyncio.Future] = {}


async def control_listener_ready() -> None:
    """Start (once per event loop) the subscriber that delivers remote stop requests."""
    loop = asyncio.get_running_loop()
    ready = _control_listeners.get(loop)
    if ready is None or (ready.done() and ready.exception() is not None):
        for other in [lp for lp in _control_listeners if lp.is_closed()]:
            del _control_listeners[other]
        ready = loop.create_future()
        _control_listeners[loop] = ready
        registry.spawn(_control_listen(ready), background=True)
    await asyncio.shield(ready)


async def _control_listen(ready: asyncio.Future) -> None:
    pubsub = locks.async_redis_blocking().pubsub()  # parks a connection: not from the short pool
    try:
        await pubsub.subscribe(control_channel())
        if not ready.done():
            ready.set_result(None)
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=30.0)
            if message is None or message.get("type") != "message":
                continue
            try:
                data = json.loads(message["data"])
            except (TypeError, ValueError):
                continue
            if data.get("op") == "stop":
                rt = registry.get(str(data.get("session_id")))
                if rt is not None and (not data.get("turn_id") or data["turn_id"] == rt.turn_id):
                    rt.inp.stop.set()
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        logger.exception("turn control listener failed")
        if not ready.done():
            ready.set_exception(exc)
        else:
            _control_listeners.pop(asyncio.get_running_loop(), None)
    finally:
        with contextlib.suppress(Exception):
            await pubsub.aclose()

"""Which turn is active in a session, and stopping it from any process.

The one definition of an *active turn*: the session's lease lock is held — by a turn running in
this process (``registry``) or, with Redis, by any process (its holder names the turn). The
database's ``status = running`` is what the operators' tools read, and may lag (a dead worker
leaves it until ``expire_stream_locks``); the lock is authoritative.

stop : ``inp.stop`` of the running turn is set — directly when it runs in this process, through
       a Redis pub/sub control channel when another process owns it. The runtime closes open
       parts and ends with ``finish`` ``{"stopped": true}``; a ``stopped`` marker is persisted.
approve : the user's answer to a tool approval request (``turn_approval_answer``) reaches the
       waiting turn the same ways (``chat.runtime.approvals``); with Redis it is also stored,
       where the waiting turn reads it should the pub/sub message be lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Sequence
from typing import Any

from channels.db import database_sync_to_async

from chat.protocol import ApprovalReply
from chat.runtime import locks
from chat.runtime.approvals import approval_answer_store, approval_record
from chat.runtime.registry import NOT_FOUND_TEXT, TurnHandle, TurnRefused, registry
from chat.selectors import session_get_for_user

logger = logging.getLogger(__name__)

APPROVAL_GONE_TEXT = "This approval request has expired or was already answered."

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


async def turn_approval_answer(
    *, user: Any, chat_id: str, replies: Sequence[ApprovalReply]
) -> tuple[TurnHandle, int]:
    """Deliver the caller's answers to their chat's pending approval requests, wherever the turn
    runs. Returns the turn and the sequence of the latest request answered: the answering
    request listens from the chunk after it (the same turn, the same assistant message). An
    approval answered before (by another tab) is joined the same way. Raises TurnRefused:
    ``not_found`` (no such chat), ``invalid_request`` (no such approval waiting in it)."""
    session = await session_lookup(user=user, chat_id=chat_id)
    if session is None:
        raise TurnRefused("not_found", NOT_FOUND_TEXT)
    session_id = str(session.pk)
    found: tuple[str, int] | None = None  # (turn id, sequence of the latest request answered)
    rt = registry.get(session_id)
    for reply in replies:
        if rt is not None:
            ticket = rt.approvals.answer(reply.approval_id, approved=reply.approved, reason=reply.reason)
            if ticket is None:
                continue
            turn_id, sequence = rt.turn_id, ticket.sequence
        else:
            record = await approval_record(reply.approval_id)
            if record is None or record.get("session_id") != session_id:
                continue
            turn_id, sequence = str(record.get("turn_id")), int(record.get("sequence", -1))
            if await turn_active_id(session_id=session_id) != turn_id:
                continue  # that turn is over: nothing waits for this answer any more
            if record.get("state") == "pending":
                await approval_answer_store(reply.approval_id, approved=reply.approved, reason=reply.reason)
                await locks.async_redis().publish(
                    control_channel(),
                    json.dumps(
                        {
                            "op": "approve",
                            "session_id": session_id,
                            "turn_id": turn_id,
                            "approval_id": reply.approval_id,
                            "approved": reply.approved,
                            "reason": reply.reason,
                        }
                    ),
                )
        if found is None or sequence > found[1]:
            found = (turn_id, sequence)
    if found is None or found[1] < 0:
        raise TurnRefused("invalid_request", APPROVAL_GONE_TEXT)
    turn_id, sequence = found
    return TurnHandle(session_id=session_id, turn_id=turn_id, message_id=f"msg-{turn_id}"), sequence


async def approval_pending(*, session_id: str, turn_id: str, sequence: int, raw: str) -> bool:
    """Whether the ``tool-approval-request`` chunk ``raw`` (logged at ``sequence``) still waits
    for its answer: a listener relaying the turn ends its response after it."""
    rt = registry.get(session_id)
    if rt is not None and rt.turn_id == turn_id:
        return rt.approvals.pending_at(sequence)
    try:
        approval_id = json.loads(raw).get("approvalId")
        record = await approval_record(str(approval_id)) if approval_id else None
    except Exception:
        logger.warning("reading approval state for turn %s failed", turn_id, exc_info=True)
        return False
    return record is not None and record.get("state") == "pending"


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
            rt = registry.get(str(data.get("session_id")))
            if rt is None or (data.get("turn_id") and data["turn_id"] != rt.turn_id):
                continue
            if data.get("op") == "stop":
                rt.inp.stop.set()
            elif data.get("op") == "approve":
                rt.approvals.answer(
                    str(data.get("approval_id")),
                    approved=bool(data.get("approved")),
                    reason=str(data.get("reason") or ""),
                )
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

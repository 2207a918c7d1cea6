"""Tool approval inside a running turn (docs/protocol.md, "Tool approval").

A backend asks through ``TurnInput.approve``, which is ``TurnApprovals.ask`` of its turn:

1. wait until the call's ``tool-input-available`` is in the turn's log (the backend may run ahead
   of the log through the runtime's pump);
2. append ``tool-approval-request {approvalId, toolCallId}`` and record the pending approval: in
   this process, and with Redis under ``approval:<id>`` so that any worker can take the answer;
3. wait for the answer (``answer`` here, or a control message from another worker:
   ``chat.runtime.control``), the timeout (``TOOL_APPROVAL_TIMEOUT_SECONDS``: a denial) or stop;
4. append ``tool-approval-response {approvalId, approved, reason?}`` and return the answer.

While it waits the turn holds its lock (the heartbeat runs on) and the idle watchdog is paused.
A listener relaying the turn ends its response right after a ``tool-approval-request`` that is
still pending (a stock AI SDK ``Chat`` answers only once its stream has ended); the answering
request listens on from that chunk: the same turn, the same assistant message.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from agents import events
from agents.approval import ApprovalAnswer
from agents.config import agent_config
from agents.events import Chunk
from chat.runtime.locks import async_redis, redis_key, use_redis
from chat.runtime.streams import RETENTION_SECONDS

logger = logging.getLogger(__name__)

# The encoded form every ``tool-approval-request`` chunk starts with (the log encodes each chunk
# once, type first): listeners recognise one without decoding every chunk.
REQUEST_PREFIX = '{"type":"tool-approval-request"'
SHOWN_WAIT_SECONDS = 5.0  # at most this long for the call's tool-input-available to be logged
REMOTE_POLL_SECONDS = 2.0  # with Redis: how often a waiter also reads its stored answer


def approval_key(approval_id: str) -> str:
    return redis_key(f"approval:{approval_id}")


def answer_key(approval_id: str) -> str:
    return redis_key(f"approval:{approval_id}:answer")


def approval_timeout() -> float:
    return agent_config().tool_approval_timeout


def expired_reason(timeout: float) -> str:
    minutes = timeout / 60
    span = f"{minutes:g} minutes" if timeout >= 120 else f"{timeout:g} seconds"
    return f"No answer within {span}: the approval request expired."


@dataclass(eq=False)
class Ticket:
    """One approval request of the turn."""

    approval_id: str
    tool_call_id: str
    tool_name: str
    sequence: int = -1  # of its tool-approval-request chunk in the turn's log
    answer: asyncio.Future[ApprovalAnswer] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )

    @property
    def pending(self) -> bool:
        return not self.answer.done()


class TurnApprovals:
    """The approvals of one running turn (``RunningTurn.approvals``)."""

    def __init__(
        self,
        *,
        session_id: str,
        turn_id: str,
        send: Callable[[Chunk], int],
        persist: Callable[[], Awaitable[None]],
        stop: asyncio.Event,
        waiting: set[int],
    ) -> None:
        self.session_id = session_id
        self.turn_id = turn_id
        self._send = send  # appends a chunk to the turn's log (after the coalesced text)
        self._persist = persist  # writes the assistant message now (a reload shows the request)
        self._waiting = waiting  # the log's pending request sequences (``TurnStream.waiting``)
        self._stop = stop
        self._shown: set[str] = set()
        self._shown_waiters: dict[str, asyncio.Future[None]] = {}
        self.tickets: dict[str, Ticket] = {}  # approval id -> ticket, pending and answered

    # -- fed by the runner --------------------------------------------------------------------
    def tool_shown(self, tool_call_id: str) -> None:
        """The call's ``tool-input-available`` reached the log."""
        self._shown.add(tool_call_id)
        waiter = self._shown_waiters.pop(tool_call_id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- queries ------------------------------------------------------------------------------
    def waiting(self) -> bool:
        return any(t.pending for t in self.tickets.values())

    def pending_at(self, sequence: int) -> bool:
        """Whether the approval request logged at ``sequence`` still waits for its answer."""
        return sequence in self._waiting

    # -- asking (``TurnInput.approve``) -------------------------------------------------------
    async def ask(self, tool_call_id: str, tool_name: str, tool_input: dict[str, Any]) -> ApprovalAnswer:
        if self._stop.is_set():
            return ApprovalAnswer(approved=False, stopped=True)
        await self._shown_wait(tool_call_id)
        ticket = Ticket(
            approval_id=f"approval-{uuid.uuid4().hex}", tool_call_id=tool_call_id, tool_name=tool_name
        )
        self.tickets[ticket.approval_id] = ticket
        ticket.sequence = self._send(events.tool_approval_request(ticket.approval_id, tool_call_id))
        self._waiting.add(ticket.sequence)  # before any listener runs: no await in between
        timeout = approval_timeout()
        await self._record(ticket, "pending", ttl=timeout + RETENTION_SECONDS)
        try:
            await self._persist()
        except Exception:
            logger.warning("saving turn %s before its approval failed", self.turn_id, exc_info=True)
        try:
            answer = await self._wait(ticket, timeout)
        finally:
            self._waiting.discard(ticket.sequence)
        if not ticket.answer.done():
            ticket.answer.set_result(answer)
        answer = ticket.answer.result()
        if not answer.stopped:
            self._send(events.tool_approval_response(ticket.approval_id, answer.approved, answer.reason))
        await self._record(ticket, "answered", ttl=RETENTION_SECONDS)
        logger.info(
            "turn %s: %s call %s %s",
            self.turn_id,
            tool_name,
            tool_call_id,
            "approved" if answer.approved else ("stopped" if answer.stopped else "denied"),
        )
        return answer

    def answer(self, approval_id: str, *, approved: bool, reason: str = "") -> Ticket | None:
        """Deliver the user's answer; the ticket (pending or already answered), or None."""
        ticket = self.tickets.get(approval_id)
        if ticket is not None and ticket.pending:
            ticket.answer.set_result(ApprovalAnswer(approved=approved, reason=reason))
        return ticket

    # -- internals ----------------------------------------------------------------------------
    async def _shown_wait(self, tool_call_id: str) -> None:
        if tool_call_id in self._shown:
            return
        waiter = self._shown_waiters.setdefault(tool_call_id, asyncio.get_running_loop().create_future())
        try:
            await asyncio.wait_for(asyncio.shield(waiter), timeout=SHOWN_WAIT_SECONDS)
        except TimeoutError:
            logger.warning("turn %s: tool call %s was never shown; asking anyway", self.turn_id, tool_call_id)

    async def _wait(self, ticket: Ticket, timeout: float) -> ApprovalAnswer:
        """The answer, a denial once ``timeout`` passed, or a stopped answer."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            while not ticket.answer.done():
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return ApprovalAnswer(approved=False, reason=expired_reason(timeout), expired=True)
                wait = min(remaining, REMOTE_POLL_SECONDS) if use_redis() else remaining
                await asyncio.wait({ticket.answer, stop}, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
                if stop.done() and not ticket.answer.done():
                    return ApprovalAnswer(approved=False, stopped=True)
                if not ticket.answer.done() and use_redis():
                    stored = await self._stored_answer(ticket.approval_id)
                    if stored is not None:
                        return stored
            return ticket.answer.result()
        finally:
            stop.cancel()

    async def _stored_answer(self, approval_id: str) -> ApprovalAnswer | None:
        try:
            raw = await async_redis().get(answer_key(approval_id))
        except Exception:
            logger.warning("reading the answer of approval %s failed", approval_id, exc_info=True)
            return None
        if raw is None:
            return None
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            data = json.loads(raw)
            return ApprovalAnswer(approved=bool(data["approved"]), reason=str(data.get("reason") or ""))
        return None

    async def _record(self, ticket: Ticket, state: str, *, ttl: float) -> None:
        """With Redis: where the approval lives, so that another worker can take its answer."""
        if not use_redis():
            return
        record = {
            "session_id": self.session_id,
            "turn_id": self.turn_id,
            "sequence": ticket.sequence,
            "state": state,
        }
        try:
            await async_redis().set(approval_key(ticket.approval_id), json.dumps(record), ex=max(1, int(ttl)))
        except Exception:
            logger.warning("recording approval %s in Redis failed", ticket.approval_id, exc_info=True)


async def approval_record(approval_id: str) -> dict[str, Any] | None:
    """The Redis record of an approval (any worker's), or None."""
    if not use_redis():
        return None
    raw = await async_redis().get(approval_key(approval_id))
    if raw is None:
        return None
    try:
        record = json.loads(raw)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


async def approval_answer_store(approval_id: str, *, approved: bool, reason: str) -> None:
    """With Redis: the answer for the worker that waits on it (read on its next poll)."""
    await async_redis().set(
        answer_key(approval_id),
        json.dumps({"approved": approved, "reason": reason}),
        ex=int(approval_timeout() + RETENTION_SECONDS),
    )

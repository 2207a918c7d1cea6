"""The running turn: from the model's first chunk to the recorded end.

Chunk path (hot path, all synchronous): ``agents.runtime.run_turn`` → ``Coalescer`` (merges text
deltas arriving within one event-loop pass; the first delta after a quiet period goes out at
once) → ``MessageFolder`` (in memory; the ``MessageWriter`` task persists at boundaries and every
2 s) → ``TurnStream.append`` (encodes the chunk once, wakes local listeners, queues the Redis
mirror).

The terminal chunk is held back until the final state is persisted and the lock released, so a
client that sees ``finish`` can reload the history or send the next message immediately.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from channels.db import database_sync_to_async
from django.db.models import Case, F, Value, When
from django.utils import timezone

from agents import events
from agents.errors import AgentError, ErrorKind
from agents.events import Chunk
from agents.runtime import run_turn
from agents.turn import TurnResult, Usage
from chat import metrics
from chat import usage as chat_usage
from chat.logcontext import log_context_bind
from chat.models import ChatMessage, ChatSession, ChatTurn
from chat.runtime import locks, supervision
from chat.runtime.persistence import db_connection_reset_if_broken
from chat.runtime.registry import RunningTurn, registry
from chat.runtime.streams import TERMINAL_TYPES
from chat.services import message_append
from chat.turnlog import log_error, log_turn

logger = logging.getLogger(__name__)

FINAL_SAVE_DEADLINE = 15.0  # seconds the end-of-turn writes are retried (database briefly unavailable)
FINAL_SAVE_BACKOFF = 0.25  # seconds, doubled per attempt, at most 1 s
# The model's first output, for the time-to-first-token metric (chat.metrics).
FIRST_TOKEN_TYPES = frozenset(
    {"text-delta", "reasoning-delta", "tool-input-start", "tool-input-delta", "tool-input-available"}
)


async def turn_run(rt: RunningTurn) -> None:
    """Run the turn (``agents.runtime.run_turn``) to its end: chunks go through the coalescer to
    the folder and the log; the end is recorded by ``_finish`` (shielded from cancellation)."""
    result = TurnResult()
    terminal: Chunk | None = None
    cancelled = False
    log_context_bind(session_id=rt.session_id, turn_id=rt.turn_id)  # on every log line of the turn
    metrics.turn_started(rt.inp.backend)
    started_at = rt.turn.started_at.timestamp()
    first_token_pending = True
    writer_task = registry.spawn(rt.writer.run())
    heartbeat_task = registry.spawn(supervision.heartbeat(rt))
    # The title call starts once the model has answered the turn's own request: started beside
    # it, it competes with the first tokens (of this turn and of the turns starting with it).
    title_task: asyncio.Task | None = None
    loop = asyncio.get_running_loop()
    rt.last_activity = loop.time()
    watchdog_task = registry.spawn(supervision.idle_watchdog(rt))
    try:
        async for chunk in run_turn(rt.inp, result):
            if rt.needs_title and title_task is None:
                title_task = registry.spawn(supervision.title_generate(rt))
            if terminal is not None:
                continue  # nothing may follow the terminal chunk
            if chunk["type"] != "data-heartbeat":
                rt.last_activity = loop.time()
                if first_token_pending and chunk["type"] in FIRST_TOKEN_TYPES:
                    first_token_pending = False
                    metrics.turn_first_token(rt.inp.backend, time.time() - started_at)
            if chunk["type"] in TERMINAL_TYPES:
                terminal = chunk
                continue
            rt.coalescer.push(chunk)
            if chunk["type"] == "tool-input-available":
                rt.approvals.tool_shown(chunk["toolCallId"])
    except asyncio.CancelledError:
        cancelled = True
    except Exception as exc:
        logger.exception("turn %s failed outside the runtime", rt.turn_id)
        result.error = AgentError(ErrorKind.UNKNOWN, detail=f"{type(exc).__name__}: {exc}")
    finally:
        heartbeat_task.cancel()
        watchdog_task.cancel()
        if rt.needs_title and title_task is None:  # the model never answered: name the chat anyway
            title_task = registry.spawn(supervision.title_generate(rt))
        fin = asyncio.get_running_loop().create_task(
            _finish(rt, result, terminal, cancelled, writer_task, title_task)
        )
        while not fin.done():
            try:
                await asyncio.shield(fin)
            except asyncio.CancelledError:
                cancelled = True
        if cancelled:
            raise asyncio.CancelledError


async def _finish(
    rt: RunningTurn,
    result: TurnResult,
    terminal: Chunk | None,
    cancelled: bool,
    writer_task: asyncio.Task,
    title_task: asyncio.Task | None,
) -> None:
    """Flush, persist the final state, record usage, release the lock, then publish the
    terminal chunk and close the stream. Every step runs even if an earlier one failed."""
    rt.coalescer.close()
    if rt.fault is not None and (terminal is None or result.stopped):
        # Stopped by us because of a fault: the client gets an error, the turn a retryable marker.
        result.stopped = False
        result.error = rt.fault
        result.finish_reason = "error"
        terminal = events.error(rt.fault.message)
    if terminal is None:
        if result.error is None and not result.stopped:
            result.error = AgentError(
                ErrorKind.UNKNOWN,
                detail="interrupted" if cancelled else "stream ended without a terminal chunk",
            )
        terminal = (
            events.finish("stop", {"stopped": True}) if result.stopped else events.error(result.error.message)
        )
    elif terminal["type"] == "error" and result.error is None:
        result.error = AgentError(ErrorKind.UNKNOWN, message=terminal.get("errorText") or "")
    rt.writer.feed(terminal)
    rt.writer.folder.close_open_parts()
    rt.writer.stop()
    with contextlib.suppress(Exception):
        await writer_task
    if result.stopped:
        status = ChatTurn.Status.STOPPED
    elif rt.fault is not None and result.error is rt.fault:
        status = rt.fault_status
    elif terminal["type"] == "error":
        status = ChatTurn.Status.INTERRUPTED if cancelled else ChatTurn.Status.FAILED
    else:
        status = ChatTurn.Status.FINISHED
    # The final writes are retried for a few seconds (a database restart, a locked SQLite file,
    # a terminated PostgreSQL connection): the output produced so far must not be lost.
    title = rt.title_pending
    rt.title_pending = None
    rt.finishing.set()
    done_steps: set[str] = set()
    saved = False
    loop = asyncio.get_running_loop()
    give_up_at = loop.time() + FINAL_SAVE_DEADLINE
    attempt = 0
    while True:
        if attempt:
            if loop.time() >= give_up_at:
                logger.error("turn %s: final save gave up after %d attempts", rt.turn_id, attempt)
                break
            await asyncio.sleep(min(1.0, FINAL_SAVE_BACKOFF * 2 ** (attempt - 1)))
        attempt += 1
        try:
            # One database hop: the assistant row's final write, then the end records.
            def end_writes(saved: bool = saved) -> list[str]:
                if not saved:
                    rt.writer.flush_final_sync()
                return _record_end(
                    rt=rt,
                    result=result,
                    status=status,
                    chunk_count=rt.stream.next_sequence + (2 if title else 1),
                    skip=done_steps,
                    title=title,
                )

            failed = await database_sync_to_async(end_writes)()
            saved = True
        except Exception:
            logger.warning(
                "final save of turn %s failed (attempt %d)", rt.turn_id, attempt, exc_info=attempt == 1
            )
            continue
        if not failed:
            break
    # A title still being generated lands in the database; its chunk is sent only while the
    # stream is open (title_task is not awaited: the turn's end never waits for it).
    # With Redis: the log is complete in the mirror (all but the terminal) before the lock goes,
    # so a resume through another process never finds "no turn" and a log that lags behind.
    await rt.stream.mirror_flush()
    try:
        await locks.lock_release(locks.session_key(rt.session_id), rt.lock_token)
    except Exception:
        logger.exception("releasing the lock of turn %s failed", rt.turn_id)
    registry.discard(rt)
    registry.slot_free(rt.slot)
    if title is not None and "session" in done_steps:
        rt.stream.append(events.session_info({"id": rt.session_id, "title": title[0]}))
    rt.stream.append(terminal)
    await rt.stream.aclose()
    _metrics_end(rt=rt, result=result, status=status)
    rt.done.set()


def _metrics_end(*, rt: RunningTurn, result: TurnResult, status: str) -> None:
    """The turn's end in the metrics (chat.metrics): once, after the terminal chunk."""
    error = None if result.stopped else result.error
    try:
        metrics.turn_ended(
            backend=rt.inp.backend,
            status=status,
            duration_s=time.time() - rt.turn.started_at.timestamp(),
            chunks=rt.stream.next_sequence,
            nbytes=metrics.chunks_nbytes(rt.stream.encoded, rt.stream.next_sequence),
            error_kind=(rt.fault_code if error is rt.fault else error.code) if error is not None else "",
        )
    except Exception:
        logger.exception("turn %s: recording its metrics failed", rt.turn_id)


def _record_end(
    *,
    rt: RunningTurn,
    result: TurnResult,
    status: str,
    chunk_count: int,
    skip: set[str] | None = None,
    title: tuple[str, Usage] | None = None,
) -> list[str]:
    """Record the end of a turn; returns the steps that failed (``skip`` collects those done, so
    a retry redoes only the failed ones). One write per step: the turn row (status and the
    release of its budget reservation), the usage rows (the turn's and its title's, one INSERT),
    the session row (activity, agent session id, title)."""
    session, turn, error = rt.session, rt.turn, result.error
    model = result.model or rt.inp.model
    usages = [(turn, "turn", model, rt.inp.backend, result.usage)]
    if title is not None and (title[1].input_tokens or title[1].output_tokens):
        usages.append((None, "title", rt.inp.model, rt.inp.backend, title[1]))
    steps = [
        ("marker", lambda: _persist_marker(rt=rt, result=result)),
        (
            "turn",
            lambda: ChatTurn.objects.filter(pk=turn.pk).update(
                status=status,
                finish_reason=result.finish_reason or ("error" if error else ""),
                error_code=(rt.fault_code if error is rt.fault else error.code)
                if error is not None and not result.stopped
                else "",
                chunk_count=chunk_count,
                ended_at=timezone.now(),
                reserved_tokens=0,
            ),
        ),
        ("usage", lambda: chat_usage.usage_records_create(user=rt.user, session=session, records=usages)),
        (
            "session",
            lambda: _session_after_turn(
                session=session,
                agent_session_id=result.agent_session_id,
                title=title[0] if title else None,
                leaf_id=rt.marker_pk or rt.writer.message_pk or rt.user_message_pk,
                agent_leaf_id=rt.writer.message_pk or rt.user_message_pk,
            ),
        ),
    ]
    if error is not None and error.kind == ErrorKind.RATE_LIMITED and not result.stopped:
        steps.append(
            (
                "rate limit",
                lambda: chat_usage.rate_limit_record_upstream(
                    user=rt.user,
                    session=session,
                    model=result.model or rt.inp.model,
                    error=error,
                ),
            )
        )
    steps.append(("log", lambda: _log_end(rt=rt, result=result)))
    skip = set() if skip is None else skip
    db_connection_reset_if_broken()
    failed: list[str] = []
    for name, step in steps:
        if name in skip:
            continue
        try:
            step()
        except Exception:
            logger.exception("turn %s: recording %s failed", turn.pk, name)
            failed.append(name)
            if name != "log":
                db_connection_reset_if_broken()
        else:
            skip.add(name)
    return failed


def _log_end(*, rt: RunningTurn, result: TurnResult) -> None:
    """The structured per-turn line (and one per error) for operators (chat.turnlog)."""
    error = None if result.stopped else result.error
    common = {
        "session_id": rt.session_id,
        "turn_id": rt.turn_id,
        "user_id": rt.user.pk,
        "backend": rt.inp.backend,
        "model": result.model or rt.inp.model,
        "duration_s": (timezone.now() - rt.turn.started_at).total_seconds(),
    }
    finish_reason = "stopped" if result.stopped else (result.finish_reason or ("error" if error else ""))
    log_turn(
        **common, usage=result.usage, finish_reason=finish_reason, error_code=error.code if error else ""
    )
    if error is not None:
        log_error(**common, error_code=error.code, detail=error.detail, retryable=error.user_may_retry)


def _persist_marker(*, rt: RunningTurn, result: TurnResult) -> None:
    """The stopped or error marker of the turn, after its reply (or its user message when there
    is no reply); ``rt.marker_pk`` keeps it (the chat's new leaf)."""
    parent = rt.writer.message_pk if rt.writer.message_pk is not None else rt.user_message_pk
    marker = None
    if result.stopped:
        marker = message_append(
            session=rt.session,
            role=ChatMessage.Role.ASSISTANT,
            kind=ChatMessage.Kind.STOPPED,
            text="Stopped.",
            parts=[],
            metadata={"stopped": True},
            turn=rt.turn,
            parent=parent,
        )
    elif result.error is not None:
        error = result.error
        marker = message_append(
            session=rt.session,
            role=ChatMessage.Role.ASSISTANT,
            kind=ChatMessage.Kind.RETRYABLE_ERROR if error.user_may_retry else ChatMessage.Kind.ERROR,
            text=error.message,
            parts=[],
            metadata={
                "code": rt.fault_code if error is rt.fault else error.code,
                "retryable": error.user_may_retry,
                "resets_at": error.resets_at.isoformat() if error.resets_at else None,
            },
            turn=rt.turn,
            parent=parent,
        )
    if marker is not None:
        rt.marker_pk = marker.pk


def _session_after_turn(
    *,
    session: ChatSession,
    agent_session_id: str | None,
    title: str | None = None,
    leaf_id: int | None = None,
    agent_leaf_id: int | None = None,
) -> None:
    """The session row's one write of a turn: activity, the chat's leaf (the turn's last
    message: docs/api.md "Branches"), the CLI session and the message its transcript ends at
    (docs/transcripts.md "Branches"), the title."""
    now = timezone.now()
    updates: dict[str, Any] = {"last_activity_at": now, "updated_at": now}
    if leaf_id is not None:
        updates["active_leaf_id"] = leaf_id
    if agent_session_id:
        updates["agent_session_id"] = agent_session_id
        updates["agent_session_leaf_id"] = agent_leaf_id
    if title:  # only where the chat still has no title (a rename meanwhile wins)
        updates["title"] = Case(When(title="", then=Value(title[:200])), default=F("title"))
    ChatSession.objects.filter(pk=session.pk).update(**updates)

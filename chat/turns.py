"""The only place a turn starts, is listened to, or stops (both doors and the admin call this).

start  : ONE database hop (``_start_sync``): the caller's session (a new chat id creates it) →
         session lease lock (``chat.locks``; refreshed by the turn's heartbeat, released by its
         token on every exit path) → budget check + the ``ChatTurn`` row holding the reservation
         (one short transaction under the user's lock) → clear trailing error markers → the user
         message (with its turn id) → history; then ``agents.runtime.run_turn`` runs as a task
         that outlives the caller. The session row is written once, at the end.
listen : ``turn_listen(handle)`` / ``turn_subscribe(user, chat_id, after_sequence)`` — replay from
         the per-turn log (``chat.streams``) then live until the terminal chunk.
stop   : ``inp.stop`` of the running turn is set — directly when it runs in this process, through
         a Redis pub/sub control channel when another process owns it. The runtime closes open
         parts and ends with ``finish`` ``{"stopped": true}``; a ``stopped`` marker is persisted.

Chunk path of a running turn (hot path, all synchronous): run_turn → ``_Coalescer`` (merges text
deltas arriving within one event-loop pass; the first delta after a quiet period goes out at
once) → ``MessageFolder`` (in memory; the ``MessageWriter`` task persists at boundaries and every
2 s) → ``TurnStream.append`` (wakes local listeners, queues the Redis mirror).

The terminal chunk is held back until the final state is persisted and the lock released, so a
client that sees ``finish`` can reload the history or send the next message immediately.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import json
import logging
import threading
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from agents import events
from agents.errors import AgentError, ErrorKind
from agents.events import DELTA_TYPES, Chunk
from agents.turn import Attachment, HistoryMessage, TurnInput, TurnResult, Usage
from chat import locks, streams
from chat.models import ChatMessage, ChatSession, ChatTurn
from chat.persistence import MessageFolder, MessageWriter
from chat.services import message_append, session_get_or_create_for_user
from chat.selectors import session_get_for_user

logger = logging.getLogger(__name__)

LOCK_TTL = 30.0  # seconds; refreshed every LOCK_TTL / 3 by the turn's heartbeat
DEFAULT_IDLE_TIMEOUT = 90.0  # seconds without a model chunk (tools running excepted); AGENT_STREAM_IDLE_TIMEOUT
FINAL_SAVE_DEADLINE = 15.0  # seconds the end-of-turn writes are retried (database briefly unavailable)
FINAL_SAVE_BACKOFF = 0.25  # seconds, doubled per attempt, at most 1 s
# seconds; 0: merge what arrives within one event-loop pass (``call_soon``, no timer per window).
# Measured against the former 3 ms timer window: less daphne CPU per paced delta and lower p50 at
# 100 streams (docs/performance.md, "Chat side").
COALESCE_WINDOW = 0.0
TERMINAL_TYPES = streams.TERMINAL_TYPES

ALREADY_ACTIVE_TEXT = "A response is already being generated in this chat (stream_already_active). Wait for it to finish or stop it first."
NOT_FOUND_TEXT = "Chat not found."
# Concurrency caps (docs/security.md, "Concurrency caps"). The texts avoid the word "already":
# clients match it for stream_already_active.
DEFAULT_MAX_TURNS_PER_USER = 3
DEFAULT_MAX_TURNS_PER_WORKER = 16
TOO_MANY_TURNS_RETRY_AFTER = 5  # seconds (REST Retry-After)
TOO_MANY_USER_TEXT = (
    "You have reached the most replies generated at once ({n}) (too_many_turns). "
    "Wait for one to finish or stop one, then send again."
)
TOO_MANY_WORKER_TEXT = "The server is generating too many replies right now (too_many_turns). Please try again in a few seconds."


def max_turns_per_user() -> int:
    """AGENT_MAX_TURNS_PER_USER: running turns one user may have, over every process (0: no cap)."""
    return int(getattr(settings, "AGENT_MAX_TURNS_PER_USER", DEFAULT_MAX_TURNS_PER_USER) or 0)


def max_turns_per_worker() -> int:
    """AGENT_MAX_TURNS_PER_WORKER: turns starting or running in this process (0: no cap)."""
    return int(getattr(settings, "AGENT_MAX_TURNS_PER_WORKER", DEFAULT_MAX_TURNS_PER_WORKER) or 0)


class TurnRefused(Exception):
    """A turn could not start (or a chat could not be listened to)."""

    def __init__(self, code: str, message: str = "", *, resets_at: dt.datetime | None = None) -> None:
        self.code = code
        self.message = message or code
        self.resets_at = resets_at
        super().__init__(self.message)


@dataclass(frozen=True)
class TurnHandle:
    session_id: str
    turn_id: str
    message_id: str  # the assistant message id (``start.messageId``)


@dataclass
class _Running:
    """A turn running in this process."""

    turn_id: str
    session_id: str
    user: Any
    session: ChatSession
    turn: ChatTurn
    inp: TurnInput
    stream: streams.TurnStream
    lock_token: str
    user_text: str
    needs_title: bool
    writer: MessageWriter = field(init=False)
    coalescer: "_Coalescer" = field(init=False)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    # A fault this process detected around the turn (stalled upstream, server shutdown): the turn
    # is stopped through ``inp.stop`` and then ends with this error instead of a stopped finish.
    fault: AgentError | None = None
    fault_code: str = ""
    fault_status: str = ChatTurn.Status.FAILED
    last_activity: float = 0.0  # loop time of the last chunk that was not a heartbeat
    # The chat's title once generated, until someone claims it: ``_finish`` (written with the
    # turn's end: no writes of its own) or ``_title`` itself when the turn runs on for longer.
    title_pending: tuple[str, Usage] | None = None
    finishing: asyncio.Event = field(default_factory=asyncio.Event)
    slot: "_Slot | None" = None  # this worker's admission slot, freed with the lock

    def __post_init__(self) -> None:
        self.writer = MessageWriter(session=self.session, turn=self.turn, folder=MessageFolder(message_id=self.inp.message_id))
        self.coalescer = _Coalescer(self.emit)

    def emit(self, chunk: Chunk) -> None:
        self.writer.feed(chunk)
        self.stream.append(chunk)

    def interrupt(self, error: AgentError, *, code: str, status: str) -> None:
        """End the turn because of a fault: stop it, then let ``_finish`` report ``error``."""
        if self.fault is None and not self.done.is_set():
            self.fault, self.fault_code, self.fault_status = error, code, status
            self.inp.stop.set()


# Per process: session id -> running turn, plus strong references to every background task.
_active: dict[str, _Running] = {}
_tasks: set[asyncio.Task] = set()


def _spawn(coro) -> asyncio.Task:
    task = asyncio.get_running_loop().create_task(coro)
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)
    return task


# ---------------------------------------------------------------------------------------------
# Admission: the per-worker caps (in process) and the per-user cap (in the database)
# ---------------------------------------------------------------------------------------------


@dataclass(eq=False)
class _Slot:
    """One turn starting or running in this process (from before its database hop until its
    lock is released)."""

    user_id: Any
    sdk: bool = False


_slots: set[_Slot] = set()
# Taken on the event loop, marked sdk in the database thread, freed on the loop: a thread lock.
_slots_lock = threading.Lock()


def _too_many_user() -> TurnRefused:
    return TurnRefused("too_many_turns", TOO_MANY_USER_TEXT.format(n=max_turns_per_user()))


def _slot_take(user: Any) -> _Slot:
    """Admit one more turn in this process or raise TurnRefused("too_many_turns"): the worker cap
    (AGENT_MAX_TURNS_PER_WORKER) and, as a fast lower bound that needs no query, the user's turns
    in this process against AGENT_MAX_TURNS_PER_USER (the database check is the one that holds
    across processes)."""
    per_worker, per_user = max_turns_per_worker(), max_turns_per_user()
    with _slots_lock:
        if per_worker and len(_slots) >= per_worker:
            raise TurnRefused("too_many_turns", TOO_MANY_WORKER_TEXT)
        if per_user and sum(1 for s in _slots if s.user_id == user.pk) >= per_user:
            raise _too_many_user()
        slot = _Slot(user_id=user.pk)
        _slots.add(slot)
        return slot


def _slot_backend(slot: _Slot | None, backend: str) -> None:
    """An sdk turn needs a CLI process: refuse it once AGENT_SDK_MAX_CLI_PROCESSES sdk turns run
    here (idle kept CLIs do not count: the backend closes them to make room)."""
    if slot is None or backend != "sdk":
        return
    from agents.backends.sdk import max_cli_processes

    limit = max_cli_processes()
    with _slots_lock:
        if limit and sum(1 for s in _slots if s.sdk) >= limit:
            raise TurnRefused("too_many_turns", TOO_MANY_WORKER_TEXT)
        slot.sdk = True


def _slot_free(slot: _Slot | None) -> None:
    if slot is not None:
        with _slots_lock:
            _slots.discard(slot)


def _user_cap_check(user: Any) -> None:
    """The per-user cap across processes: the user's live running turns (``ChatTurn`` rows,
    chat.selectors.turn_live_count_for_user). Called under the user's lock, in the transaction
    that creates the new turn's row, so two starts of one user (any processes) cannot both pass."""
    from chat.selectors import turn_live_count_for_user

    per_user = max_turns_per_user()
    if per_user and turn_live_count_for_user(user_id=user.pk, lease_seconds=LOCK_TTL) >= per_user:
        raise _too_many_user()


def turns_running_here() -> dict[str, int]:
    """This process's admitted turns (tests, diagnostics): ``{"turns": n, "sdk": n}``."""
    with _slots_lock:
        return {"turns": len(_slots), "sdk": sum(1 for s in _slots if s.sdk)}


# ---------------------------------------------------------------------------------------------
# Delta coalescing
# ---------------------------------------------------------------------------------------------


class _Coalescer:
    """Leading-edge coalescing: a delta after a quiet period is emitted at once and opens a
    window; deltas arriving inside the window are merged (``agents.events.coalesce``) and
    emitted when it closes. Any other chunk flushes first, so order is kept.

    With ``window == 0`` (the default) the window is the rest of the current event-loop pass
    (``call_soon``, no timer): the runtime hands over everything its reader has buffered in one
    pass, so a burst is merged — however large the backlog under load — and a paced delta goes
    out at once with no added latency."""

    __slots__ = ("emit", "pending", "handle", "window")

    def __init__(self, emit, window: float = COALESCE_WINDOW) -> None:
        self.emit = emit
        self.pending: list[Chunk] = []
        self.handle: asyncio.Handle | None = None
        self.window = window

    def push(self, chunk: Chunk) -> None:
        if chunk["type"] in DELTA_TYPES:
            if self.handle is None:
                self.emit(chunk)
                loop = asyncio.get_running_loop()
                self.handle = loop.call_soon(self._tick) if self.window <= 0 else loop.call_later(self.window, self._tick)
            else:
                self.pending.append(chunk)
            return
        self.flush()
        self.emit(chunk)

    def _tick(self) -> None:
        self.handle = None
        if self.pending:
            self.flush()
            if self.window > 0:
                self.handle = asyncio.get_running_loop().call_later(self.window, self._tick)

    def flush(self) -> None:
        if self.pending:
            pending, self.pending = self.pending, []
            for chunk in events.coalesce(pending):
                self.emit(chunk)

    def close(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None
        self.flush()


# ---------------------------------------------------------------------------------------------
# Preparation (one DB thread hop)
# ---------------------------------------------------------------------------------------------


def _clear_stale_markers(session: ChatSession) -> int:
    """Delete the error markers at the end of the session (lesson 6); stopped markers stay."""
    stale: list[int] = []
    for msg in ChatMessage.objects.filter(session=session).order_by("-sequence").only("pk", "kind")[:50]:
        if msg.kind not in ChatMessage.MARKER_KINDS:
            break
        if msg.kind in ChatMessage.ERROR_KINDS:
            stale.append(msg.pk)
    if stale:
        ChatMessage.objects.filter(pk__in=stale).delete()
    return len(stale)


def _interrupt_dead_turns(session: ChatSession, *, exclude: Any = None) -> int:
    """Turns of this session still marked running belong to a dead worker: the caller holds the
    session lock, so no live turn can exist. Mark them interrupted (their marker would be cleared
    by this new turn anyway, lesson 6), so a session never shows two running turns. (Called only
    when ``_session_leftovers`` found one, so the common start issues no write here.)"""
    return ChatTurn.objects.filter(session=session, status=ChatTurn.Status.RUNNING).exclude(pk=exclude).update(
        status=ChatTurn.Status.INTERRUPTED, error_code="interrupted", finish_reason="error", ended_at=timezone.now(),
        reserved_tokens=0,
    )


def _session_leftovers(session: ChatSession, *, exclude: Any) -> tuple[int, str | None]:
    """What a new turn may have to clean up, in one plain-SQL read (the common answer is
    "nothing", and two ORM queries cost more to compile than to run): how many other turns of
    the session are still marked running, and the kind of the session's last message."""
    q = connection.ops.quote_name
    turn_t, msg_t = ChatTurn._meta.db_table, ChatMessage._meta.db_table
    sql = (
        f"SELECT (SELECT COUNT(*) FROM {q(turn_t)} WHERE {q('session_id')} = %s AND {q('status')} = %s"
        f" AND {q('id')} <> %s),"
        f" (SELECT {q('kind')} FROM {q(msg_t)} WHERE {q('session_id')} = %s ORDER BY {q('sequence')} DESC LIMIT 1)"
    )
    turn_pk = ChatTurn._meta.pk.get_db_prep_value(exclude, connection)
    session_pk = ChatSession._meta.pk.get_db_prep_value(session.pk, connection)
    with connection.cursor() as cursor:
        cursor.execute(sql, [session_pk, ChatTurn.Status.RUNNING.value, turn_pk, session_pk])
        dead, kind = cursor.fetchone()
    return int(dead or 0), kind


def _attachment_from_part(part: dict[str, Any]) -> Attachment | None:
    from chat.protocol import ProtocolError, attachment_from_file_part

    try:
        return attachment_from_file_part(part)[0]
    except ProtocolError:
        return None


def _file_part(attachment: Attachment) -> dict[str, Any]:
    return {
        "type": "file",
        "mediaType": attachment.media_type,
        "filename": attachment.name,
        "url": f"data:{attachment.media_type};base64,{base64.b64encode(attachment.data).decode('ascii')}",
    }


def history_for_turn(*, session: ChatSession, before_sequence: int) -> list[HistoryMessage]:
    """The conversation before a turn, as the model should see it: normal user/assistant
    messages only (markers excluded), consecutive messages of one role merged (lesson 4)."""
    history: list[HistoryMessage] = []
    rows = (
        ChatMessage.objects.filter(
            session=session,
            sequence__lt=before_sequence,
            kind=ChatMessage.Kind.NORMAL,
            role__in=(ChatMessage.Role.USER, ChatMessage.Role.ASSISTANT),
        )
        .order_by("sequence")
        .values_list("role", "parts")
    )
    for role, parts in rows:
        parts = list(parts or [])
        if not parts:
            continue
        if history and history[-1].role == role:
            history[-1] = HistoryMessage(role=role, parts=history[-1].parts + parts)
        else:
            history.append(HistoryMessage(role=role, parts=parts))
    return history


TRANSCRIPT_PROJECT_KEY = "copilot"


def turn_input_build(
    *,
    session: ChatSession,
    user: Any,
    text: str,
    attachments: list[Attachment],
    history: list[HistoryMessage],
    message_id: str,
) -> TurnInput:
    """The TurnInput of a turn (runs in the DB thread). The hook for whatever else a turn needs
    (e.g. the transcripts app's ``session_store``)."""
    from agents.sandbox import workspace_for
    from transcripts.store import DjangoSessionStore

    return TurnInput(
        session_id=str(session.pk),
        user_text=text,
        workspace=workspace_for(str(session.pk)),
        backend=session.backend or settings.AGENT_BACKEND,
        model=session.model or settings.AGENT_MODEL,
        system_prompt=settings.AGENT_SYSTEM_PROMPT,
        attachments=list(attachments),
        history=history,
        agent_session_id=session.agent_session_id or None,
        # The CLI's transcripts live in the database, so any worker can resume the session; the
        # project is pinned so that resume works even where AGENT_WORKSPACE_ROOT differs.
        session_store=DjangoSessionStore(project_key=TRANSCRIPT_PROJECT_KEY),
        message_id=message_id,
    )


@dataclass
class _Prepared:
    session: ChatSession
    turn: ChatTurn
    inp: TurnInput
    user_text: str
    needs_title: bool
    lock_token: str


def _start_sync(
    *,
    user: Any,
    chat_id: str,
    turn_id: str,
    text: str,
    attachments: list[Attachment],
    trigger: str,
    client_message_id: str | None,
    slot: _Slot | None = None,
    alive: Callable[[], bool] | None = None,
) -> _Prepared:
    """Everything a turn needs before its model call, in ONE database hop (docs/performance.md, A
    and E): the caller's session (created when new) → the session lease lock → in one
    transaction: budget check + per-user cap + reservation (held by the ``ChatTurn`` row) → stale
    markers → turn row → user message (with its turn id) → history. The lock is released again
    when anything after it fails; a chat created by this hop is dropped again when the turn is
    refused for too many turns. ``alive()`` false (the caller's socket closed while this waited
    for the database thread): nothing is written."""
    if alive is not None and not alive():
        raise TurnRefused("connection_closed", "The connection closed before the turn started.")
    _slot_backend(slot, settings.AGENT_BACKEND)
    session, created = session_get_or_create_for_user(
        user=user, chat_id=chat_id, backend=settings.AGENT_BACKEND, model=settings.AGENT_MODEL
    )
    backend = session.backend or settings.AGENT_BACKEND
    if slot is not None and slot.sdk != (backend == "sdk"):
        slot.sdk = False
        _slot_backend(slot, backend)
    session_id = str(session.pk)
    key = locks.session_key(session_id)
    if session_id in _active:
        raise TurnRefused("stream_already_active", ALREADY_ACTIVE_TEXT)
    token = locks.lock_acquire_sync(key, ttl=LOCK_TTL, meta={"turn_id": turn_id, "user_id": user.pk})
    if token is None:
        raise TurnRefused("stream_already_active", ALREADY_ACTIVE_TEXT)
    try:
        prepared = _prepare(
            session=session, user=user, turn_id=turn_id, text=text, attachments=attachments,
            trigger=trigger, client_message_id=client_message_id, new_session=created,
        )
    except BaseException as exc:
        try:
            locks.lock_release_sync(key, token)
        except Exception:  # noqa: BLE001 - the TTL frees it anyway
            logger.exception("releasing the lock of a refused turn failed")
        if created and isinstance(exc, TurnRefused) and exc.code == "too_many_turns":
            # Nothing refers to the chat this hop created (no turn, no message): drop it, so a
            # refused flood of new chat ids leaves no empty chats behind.
            try:
                ChatSession.objects.filter(pk=session.pk).exclude(turns__isnull=False).delete()
            except Exception:  # noqa: BLE001
                logger.exception("dropping the empty chat of a refused turn failed")
        raise
    prepared.lock_token = token
    return prepared


def _prepare(
    *,
    session: ChatSession,
    user: Any,
    turn_id: str,
    text: str,
    attachments: list[Attachment],
    trigger: str,
    client_message_id: str | None,
    new_session: bool = False,
) -> _Prepared:
    from chat import usage as chat_usage

    backend = session.backend or settings.AGENT_BACKEND
    model = session.model or settings.AGENT_MODEL
    refusal: AgentError | None = None
    reserved: list[int] = []
    with transaction.atomic():
        # Check and reserve under the user's lock; the reservation is the turn row's
        # ``reserved_tokens``, written in this same transaction (atomic across processes). Only
        # that: the user's lock serialises all of a user's turn starts (in every process), so
        # it is held for as short as possible.
        try:
            chat_usage.budget_check(user=user, model=model, reserve=reserved.append)
        except AgentError as exc:
            refusal = exc  # the refusal record budget_check wrote commits with this block
        if refusal is None:
            _user_cap_check(user)  # under the user's lock budget_check took; raising rolls back
            turn = ChatTurn.objects.create(
                id=turn_id, session=session, trigger=trigger, backend=backend, model=model,
                worker=locks.WORKER_ID, heartbeat_at=timezone.now(), reserved_tokens=sum(reserved),
            )
    if refusal is not None:
        code = "rate_limited" if refusal.kind == ErrorKind.RATE_LIMITED else "budget_exceeded"
        raise TurnRefused(code, refusal.message, resets_at=refusal.resets_at)
    try:
        with transaction.atomic():
            return _prepare_in_transaction(
                session=session, user=user, turn=turn, text=text, attachments=attachments, trigger=trigger,
                client_message_id=client_message_id, new_session=new_session,
            )
    except BaseException:
        # Nothing refers to the turn row yet (that transaction rolled back): drop it, and with
        # it the reservation.
        try:
            ChatTurn.objects.filter(pk=turn.pk).delete()
        except Exception:  # noqa: BLE001 - the reservation expires anyway
            logger.exception("dropping turn %s after a failed start failed", turn.pk)
        raise


def _prepare_in_transaction(
    *, session: ChatSession, user: Any, turn: ChatTurn, text: str, attachments: list[Attachment], trigger: str,
    client_message_id: str | None, new_session: bool = False,
) -> _Prepared:
    turn_id = str(turn.pk)
    if not new_session:  # a session created in this hop has no turns nor messages yet
        dead_turns, last_kind = _session_leftovers(session, exclude=turn.pk)
        if dead_turns:
            _interrupt_dead_turns(session, exclude=turn.pk)
        if last_kind in ChatMessage.MARKER_KINDS:
            _clear_stale_markers(session)
    if trigger == "regenerate-message":
        last_user = (
            ChatMessage.objects.filter(session=session, role=ChatMessage.Role.USER, kind=ChatMessage.Kind.NORMAL)
            .order_by("-sequence")
            .first()
        )
        if last_user is None:
            raise TurnRefused("invalid_request", "There is no message to regenerate.")
        ChatMessage.objects.filter(session=session, sequence__gt=last_user.sequence).delete()
        user_msg = last_user
        text = "\n\n".join(p.get("text", "") for p in user_msg.parts if p.get("type") == "text") or user_msg.text
        attachments = [a for a in (_attachment_from_part(p) for p in user_msg.parts if p.get("type") == "file") if a]
        if user_msg.turn_id is None:
            ChatMessage.objects.filter(pk=user_msg.pk).update(turn=turn)
    else:
        parts: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
        parts += [_file_part(a) for a in attachments]
        user_msg = message_append(
            session=session,
            role=ChatMessage.Role.USER,
            text=text,
            parts=parts,
            metadata={"messageId": client_message_id} if client_message_id else {},
            turn=turn,  # inserted with its turn: no second write (docs/performance.md, E)
        )
    history = history_for_turn(session=session, before_sequence=user_msg.sequence)
    needs_title = not session.title and not any(m.role == "user" for m in history)
    # The session row is touched once, when the turn ends (``_session_after_turn``).
    inp = turn_input_build(
        session=session, user=user, text=text, attachments=attachments, history=history, message_id=f"msg-{turn_id}"
    )
    return _Prepared(session=session, turn=turn, inp=inp, user_text=text, needs_title=needs_title, lock_token="")


# ---------------------------------------------------------------------------------------------
# Start
# ---------------------------------------------------------------------------------------------


async def turn_start(
    *,
    user: Any,
    chat_id: str,
    text: str,
    attachments: list[Attachment] | None = None,
    trigger: str = "submit-message",
    client_message_id: str | None = None,
    alive: Callable[[], bool] | None = None,
) -> TurnHandle:
    """Start a turn in the caller's chat (created when the id is new to them). Raises TurnRefused
    (``too_many_turns`` over a concurrency cap: nothing is written). ``alive``: the caller's
    connection is still open (checked before anything is written; false: TurnRefused
    ``connection_closed``)."""
    attachments = list(attachments or [])
    if not getattr(user, "is_authenticated", False):
        raise TurnRefused("not_found", NOT_FOUND_TEXT)
    if trigger not in ("submit-message", "regenerate-message"):
        raise TurnRefused("invalid_request", f"Unknown trigger {trigger!r}.")
    if trigger == "submit-message" and not (text or "").strip() and not attachments:
        raise TurnRefused("invalid_request", "The message is empty.")
    if not chat_id or len(chat_id) > 200:
        raise TurnRefused("invalid_request", "Invalid chat id.")
    from chat import shutdown

    if shutdown.shutting_down():
        raise TurnRefused("unavailable", shutdown.SHUTDOWN_REFUSED_TEXT)
    shutdown.install()

    if alive is not None and not alive():
        raise TurnRefused("connection_closed", "The connection closed before the turn started.")
    slot = _slot_take(user)
    try:
        return await _turn_start_admitted(
            user=user, chat_id=chat_id, text=text, attachments=attachments, trigger=trigger,
            client_message_id=client_message_id, alive=alive, slot=slot,
        )
    except BaseException:
        _slot_free(slot)  # not started (once started, _finish frees it)
        raise


async def _turn_start_admitted(
    *, user: Any, chat_id: str, text: str, attachments: list[Attachment], trigger: str,
    client_message_id: str | None, alive: Callable[[], bool] | None, slot: _Slot,
) -> TurnHandle:
    from chat import usage as chat_usage

    if locks.use_redis():
        await _control_listener_ready()
    turn_id = str(uuid.uuid4())
    # One database hop for the whole start (session, lock, budget, caps, rows, history): the
    # model call starts right after it (docs/performance.md, A/E).
    prepared = await database_sync_to_async(_start_sync)(
        user=user, chat_id=chat_id, turn_id=turn_id, text=text, attachments=attachments,
        trigger=trigger, client_message_id=client_message_id, slot=slot, alive=alive,
    )
    session = prepared.session
    session_id = str(session.pk)
    key = locks.session_key(session_id)
    token = prepared.lock_token
    if session_id in _active:  # a same-process start raced us between the hop and here
        await asyncio.shield(locks.lock_release(key, token))
        raise TurnRefused("stream_already_active", ALREADY_ACTIVE_TEXT)
    try:
        inp = prepared.inp

        async def step_check(usage_so_far: Usage) -> None:
            await database_sync_to_async(chat_usage.budget_step_check)(user=user, model=inp.model, usage_so_far=usage_so_far)

        inp.step_check = step_check
        running = _Running(
            turn_id=turn_id, session_id=session_id, user=user, session=session, turn=prepared.turn, inp=inp,
            stream=streams.stream_open(turn_id=turn_id, session_id=session_id), lock_token=token,
            user_text=prepared.user_text, needs_title=prepared.needs_title, slot=slot,
        )
    except BaseException:
        await asyncio.shield(locks.lock_release(key, token))
        await asyncio.shield(_turn_abandon(prepared.turn))
        raise
    _active[session_id] = running
    _spawn(_run(running))
    return TurnHandle(session_id=session_id, turn_id=turn_id, message_id=inp.message_id)


async def _turn_abandon(turn: ChatTurn) -> None:
    """A turn whose rows were written but that could not be started: mark it failed and give
    back its budget reservation (it would expire anyway)."""

    def abandon() -> None:
        ChatTurn.objects.filter(pk=turn.pk, status=ChatTurn.Status.RUNNING).update(
            status=ChatTurn.Status.FAILED, error_code="not_started", finish_reason="error",
            ended_at=timezone.now(), reserved_tokens=0,
        )

    try:
        await database_sync_to_async(abandon)()
    except Exception:  # noqa: BLE001 - reservations expire anyway
        logger.exception("abandoning turn %s failed", turn.pk)


# ---------------------------------------------------------------------------------------------
# The running turn
# ---------------------------------------------------------------------------------------------


async def _run(rt: _Running) -> None:
    result = TurnResult()
    terminal: Chunk | None = None
    cancelled = False
    writer_task = _spawn(rt.writer.run())
    heartbeat_task = _spawn(_heartbeat(rt))
    title_task = _spawn(_title(rt)) if rt.needs_title else None
    loop = asyncio.get_running_loop()
    rt.last_activity = loop.time()
    watchdog_task = _spawn(_idle_watchdog(rt))
    try:
        from agents.runtime import run_turn

        async for chunk in run_turn(rt.inp, result):
            if terminal is not None:
                continue  # nothing may follow the terminal chunk
            if chunk["type"] != "data-heartbeat":
                rt.last_activity = loop.time()
            if chunk["type"] in TERMINAL_TYPES:
                terminal = chunk
                continue
            rt.coalescer.push(chunk)
    except asyncio.CancelledError:
        cancelled = True
    except Exception as exc:  # noqa: BLE001 - run_turn should never raise; end the turn cleanly anyway
        logger.exception("turn %s failed outside the runtime", rt.turn_id)
        result.error = AgentError(ErrorKind.UNKNOWN, detail=f"{type(exc).__name__}: {exc}")
    finally:
        heartbeat_task.cancel()
        watchdog_task.cancel()
        fin = asyncio.get_running_loop().create_task(_finish(rt, result, terminal, cancelled, writer_task, title_task))
        while not fin.done():
            try:
                await asyncio.shield(fin)
            except asyncio.CancelledError:
                cancelled = True
        if cancelled:
            raise asyncio.CancelledError


async def _finish(
    rt: _Running, result: TurnResult, terminal: Chunk | None, cancelled: bool,
    writer_task: asyncio.Task, title_task: asyncio.Task | None,
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
                ErrorKind.UNKNOWN, detail="interrupted" if cancelled else "stream ended without a terminal chunk"
            )
        terminal = events.finish("stop", {"stopped": True}) if result.stopped else events.error(result.error.message)
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
                    rt=rt, result=result, status=status, chunk_count=rt.stream.next_sequence + (2 if title else 1),
                    skip=done_steps, title=title,
                )

            failed = await database_sync_to_async(end_writes)()
            saved = True
        except Exception:  # noqa: BLE001
            logger.warning("final save of turn %s failed (attempt %d)", rt.turn_id, attempt, exc_info=attempt == 1)
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
    except Exception:  # noqa: BLE001 - the TTL frees it anyway
        logger.exception("releasing the lock of turn %s failed", rt.turn_id)
    if _active.get(rt.session_id) is rt:
        del _active[rt.session_id]
    _slot_free(rt.slot)
    if title is not None and "session" in done_steps:
        rt.stream.append(events.session_info({"id": rt.session_id, "title": title[0]}))
    rt.stream.append(terminal)
    await rt.stream.aclose()
    rt.done.set()


def _record_end(
    *, rt: _Running, result: TurnResult, status: str, chunk_count: int, skip: set[str] | None = None,
    title: tuple[str, Usage] | None = None,
) -> list[str]:
    """Record the end of a turn; returns the steps that failed (``skip`` collects those done, so
    a retry redoes only the failed ones). One write per step: the turn row (status and the
    release of its budget reservation), the usage rows (the turn's and its title's, one INSERT),
    the session row (activity, agent session id, title)."""
    from chat import usage as chat_usage

    session, turn, error = rt.session, rt.turn, result.error
    model = result.model or rt.inp.model
    usages = [(turn, "turn", model, rt.inp.backend, result.usage)]
    if title is not None and (title[1].input_tokens or title[1].output_tokens):
        usages.append((None, "title", rt.inp.model, rt.inp.backend, title[1]))
    steps = [
        ("marker", lambda: _persist_marker(rt=rt, result=result)),
        ("turn", lambda: ChatTurn.objects.filter(pk=turn.pk).update(
            status=status, finish_reason=result.finish_reason or ("error" if error else ""),
            error_code=(rt.fault_code if error is rt.fault else error.code) if error is not None and not result.stopped else "",
            chunk_count=chunk_count, ended_at=timezone.now(), reserved_tokens=0,
        )),
        ("usage", lambda: chat_usage.usage_records_create(user=rt.user, session=session, records=usages)),
        ("session", lambda: _session_after_turn(
            session=session, agent_session_id=result.agent_session_id, title=title[0] if title else None,
        )),
    ]
    if error is not None and error.kind == ErrorKind.RATE_LIMITED and not result.stopped:
        steps.append(("rate limit", lambda: chat_usage.rate_limit_record_upstream(
            user=rt.user, session=session, model=result.model or rt.inp.model, error=error,
        )))
    steps.append(("log", lambda: _log_end(rt=rt, result=result)))
    skip = set() if skip is None else skip
    _reset_connection_if_broken()
    failed: list[str] = []
    for name, step in steps:
        if name in skip:
            continue
        try:
            step()
        except Exception:  # noqa: BLE001 - one failed record must not skip the others
            logger.exception("turn %s: recording %s failed", turn.pk, name)
            failed.append(name)
            if name != "log":
                _reset_connection_if_broken()
        else:
            skip.add(name)
    return failed


def _reset_connection_if_broken() -> None:
    from chat.persistence import db_connection_reset_if_broken

    db_connection_reset_if_broken()


def _log_end(*, rt: _Running, result: TurnResult) -> None:
    """The structured per-turn line (and one per error) for operators (chat.logging)."""
    from chat.logging import log_error, log_turn

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
    log_turn(**common, usage=result.usage, finish_reason=finish_reason, error_code=error.code if error else "")
    if error is not None:
        log_error(**common, error_code=error.code, detail=error.detail, retryable=error.user_may_retry)


def _persist_marker(*, rt: _Running, result: TurnResult) -> None:
    if result.stopped:
        message_append(
            session=rt.session, role=ChatMessage.Role.ASSISTANT, kind=ChatMessage.Kind.STOPPED,
            text="Stopped.", parts=[], metadata={"stopped": True}, turn=rt.turn,
        )
    elif result.error is not None:
        error = result.error
        message_append(
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
        )


def _session_after_turn(*, session: ChatSession, agent_session_id: str | None, title: str | None = None) -> None:
    from django.db.models import Case, F, Value, When

    now = timezone.now()
    updates: dict[str, Any] = {"last_activity_at": now, "updated_at": now}
    if agent_session_id:
        updates["agent_session_id"] = agent_session_id
    if title:  # only where the chat still has no title (a rename meanwhile wins)
        updates["title"] = Case(When(title="", then=Value(title[:200])), default=F("title"))
    ChatSession.objects.filter(pk=session.pk).update(**updates)


async def _heartbeat(rt: _Running) -> None:
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
                    logger.warning("turn %s: its session lock vanished (Redis restart?); re-took it", rt.turn_id)
                    continue
                logger.warning("turn %s lost its session lock; stopping it", rt.turn_id)
                rt.inp.stop.set()
                return
            await database_sync_to_async(ChatTurn.objects.filter(pk=rt.turn.pk).update)(heartbeat_at=timezone.now())
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001
            logger.exception("heartbeat of turn %s failed", rt.turn_id)


def idle_timeout() -> float:
    return float(getattr(settings, "AGENT_STREAM_IDLE_TIMEOUT", DEFAULT_IDLE_TIMEOUT) or 0.0)


async def _idle_watchdog(rt: _Running) -> None:
    """A stalled upstream (no bytes, only our own heartbeats) ends the turn with a retryable
    error after ``AGENT_STREAM_IDLE_TIMEOUT`` seconds. Time spent running tools does not count."""
    from agents.errors import AgentError, ErrorKind

    timeout = idle_timeout()
    if timeout <= 0:
        return
    loop = asyncio.get_running_loop()
    while not rt.done.is_set():
        await asyncio.sleep(max(0.05, min(timeout / 4, rt.last_activity + timeout - loop.time())))
        if rt.inp.stop.is_set():
            return
        if rt.writer.folder.tools_running():
            rt.last_activity = loop.time()
            continue
        if loop.time() - rt.last_activity >= timeout:
            logger.warning("turn %s: no data from the model for %.0fs; ending it", rt.turn_id, timeout)
            rt.interrupt(
                AgentError(
                    ErrorKind.CONNECTION,
                    detail=f"upstream stalled for {timeout:g}s",
                    message=f"The model stopped responding (nothing for {timeout:g} seconds). Please try again.",
                ),
                code="upstream_stalled",
                status=ChatTurn.Status.FAILED,
            )
            return


async def _title(rt: _Running) -> None:
    """Name the chat from its first message; stored only if it still has no title."""
    from agents.runtime import generate_title
    from chat import usage as chat_usage

    try:
        title, usage = await generate_title(user_text=rt.user_text, model=rt.inp.model)
        if not title:
            return
        # Hand the title to the turn's end (written with it: no extra writes) unless the turn
        # runs on past the flush interval: then it is stored (and shown) now.
        rt.title_pending = (title, usage)
        from chat.persistence import FLUSH_INTERVAL

        remaining = rt.turn.started_at.timestamp() + FLUSH_INTERVAL - time.time()
        if remaining > 0 and not rt.finishing.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(rt.finishing.wait(), timeout=remaining)
        if rt.title_pending is None:
            return  # claimed by _finish
        rt.title_pending = None

        def store() -> bool:
            stored = bool(ChatSession.objects.filter(pk=rt.session.pk, title="").update(title=title[:200]))
            if usage.input_tokens or usage.output_tokens:
                chat_usage.usage_record(
                    user=rt.user, session=rt.session, turn=None, model=rt.inp.model, backend=rt.inp.backend,
                    usage=usage, purpose="title",
                )
            return stored

        if await database_sync_to_async(store)() and not rt.stream.closed:
            rt.coalescer.flush()
            rt.stream.append(events.session_info({"id": rt.session_id, "title": title}))
    except asyncio.CancelledError:
        raise
    except Exception:  # noqa: BLE001 - a title is never worth failing a turn
        logger.exception("title for session %s failed", rt.session_id)


# ---------------------------------------------------------------------------------------------
# Listening
# ---------------------------------------------------------------------------------------------


async def _active_turn_id(session_id: str) -> str | None:
    rt = _active.get(session_id)
    if rt is not None:
        return rt.turn_id
    if locks.use_redis():
        holder = await locks.lock_holder_async(locks.session_key(session_id))
        if holder is not None:
            return holder.meta.get("turn_id")
    return None


def _alive_check(session_id: str, turn_id: str):
    async def is_alive() -> bool:
        if await _active_turn_id(session_id) == turn_id:
            return True
        return bool(await streams.stream_is_finished(turn_id=turn_id))  # finished: let the reader drain

    return is_alive


def turn_listen(*, handle: TurnHandle, after_sequence: int = -1) -> AsyncIterator[tuple[int, Chunk]]:
    """The chunks of a turn the caller just started (from ``after_sequence + 1``)."""
    return streams.stream_read(
        turn_id=handle.turn_id, after_sequence=after_sequence, is_alive=_alive_check(handle.session_id, handle.turn_id)
    )


def turn_listen_raw(*, handle: TurnHandle, after_sequence: int = -1) -> AsyncIterator[tuple[int, str, bool]]:
    """``turn_listen`` as ``(sequence, chunk JSON, is_terminal)`` (``streams.stream_read_raw``)."""
    return streams.stream_read_raw(
        turn_id=handle.turn_id, after_sequence=after_sequence, is_alive=_alive_check(handle.session_id, handle.turn_id)
    )


async def turn_subscribe_raw(
    *, user: Any, chat_id: str, after_sequence: int = -1
) -> AsyncIterator[tuple[int, str, bool]] | None:
    """``turn_subscribe`` as ``(sequence, chunk JSON, is_terminal)``."""
    found = await _subscribe_target(user=user, chat_id=chat_id, after_sequence=after_sequence)
    if found is None:
        return None
    session_id, turn_id = found
    return streams.stream_read_raw(turn_id=turn_id, after_sequence=after_sequence, is_alive=_alive_check(session_id, turn_id))


# The ownership read of a resume or a stop runs on a pool thread of its own, not on the one
# serialised database thread, where it would queue behind every turn start and end of this
# process (a burst of reconnects after a worker restart waited seconds there).
_session_lookup = database_sync_to_async(session_get_for_user, thread_sensitive=False)


async def _subscribe_target(*, user: Any, chat_id: str, after_sequence: int) -> tuple[str, str] | None:
    session = await _session_lookup(user=user, chat_id=chat_id)
    if session is None:
        raise TurnRefused("not_found", NOT_FOUND_TEXT)
    session_id = str(session.pk)
    turn_id = await _active_turn_id(session_id)
    if turn_id is None and after_sequence >= 0:
        latest = await streams.stream_latest_turn(session_id=session_id)
        if latest is not None and (
            await streams.stream_last_sequence(turn_id=latest) > after_sequence
            # Ended moments ago, its terminal chunk not yet mirrored: read on, it arrives.
            or await streams.stream_is_finished(turn_id=latest) is False
        ):
            turn_id = latest
    return None if turn_id is None else (session_id, turn_id)


async def turn_subscribe(
    *, user: Any, chat_id: str, after_sequence: int = -1
) -> AsyncIterator[tuple[int, Chunk]] | None:
    """Replay the chat's active turn from ``after_sequence + 1``, then follow it live until its
    terminal chunk. None when nothing is active. With ``after_sequence >= 0`` a turn that ended
    moments ago still delivers the tail the caller missed (its log is retained a while).
    Raises TurnRefused("not_found") for an unknown or foreign chat."""
    found = await _subscribe_target(user=user, chat_id=chat_id, after_sequence=after_sequence)
    if found is None:
        return None
    session_id, turn_id = found
    return streams.stream_read(turn_id=turn_id, after_sequence=after_sequence, is_alive=_alive_check(session_id, turn_id))


# ---------------------------------------------------------------------------------------------
# Stopping (from any process)
# ---------------------------------------------------------------------------------------------


def _control_channel() -> str:
    return locks.redis_key("turnctl")


async def turn_stop(*, user: Any, chat_id: str) -> bool:
    """Stop the caller's running turn in this chat. False when none runs (or no such chat)."""
    session = await _session_lookup(user=user, chat_id=chat_id)
    if session is None:
        return False
    return await turn_stop_session(session_id=session.pk)


async def turn_stop_session(*, session_id: Any) -> bool:
    """Stop the session's running turn wherever it runs. True when a turn was running."""
    session_id = str(session_id)
    rt = _active.get(session_id)
    if rt is not None:
        rt.inp.stop.set()
        return True
    if locks.use_redis():
        holder = await locks.lock_holder_async(locks.session_key(session_id))
        if holder is not None:
            await locks.async_redis().publish(
                _control_channel(), json.dumps({"op": "stop", "session_id": session_id, "turn_id": holder.meta.get("turn_id")})
            )
            return True
    return False


def turn_is_active(*, session_id: Any) -> bool:
    """Sync selector (admin): is a turn running in this session (in any process)?"""
    return str(session_id) in _active or locks.lock_holder(locks.session_key(session_id)) is not None


_control_listeners: dict[asyncio.AbstractEventLoop, asyncio.Future] = {}
_control_tasks: "weakref.WeakSet[asyncio.Task]" = weakref.WeakSet()


async def _control_listener_ready() -> None:
    """Start (once per event loop) the subscriber that delivers remote stop requests."""
    loop = asyncio.get_running_loop()
    ready = _control_listeners.get(loop)
    if ready is None or (ready.done() and ready.exception() is not None):
        for other in [lp for lp in _control_listeners if lp.is_closed()]:
            del _control_listeners[other]
        ready = loop.create_future()
        _control_listeners[loop] = ready
        _control_tasks.add(_spawn(_control_listener(ready)))
    await asyncio.shield(ready)


async def _control_listener(ready: asyncio.Future) -> None:
    pubsub = locks.async_redis_blocking().pubsub()  # parks a connection: not from the short pool
    try:
        await pubsub.subscribe(_control_channel())
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
                rt = _active.get(str(data.get("session_id")))
                if rt is not None and (not data.get("turn_id") or data["turn_id"] == rt.turn_id):
                    rt.inp.stop.set()
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - restarted by the next turn_start
        logger.exception("turn control listener failed")
        if not ready.done():
            ready.set_exception(exc)
        else:
            _control_listeners.pop(asyncio.get_running_loop(), None)
    finally:
        with contextlib.suppress(Exception):
            await pubsub.aclose()


async def turn_wait_idle(timeout: float = 30.0) -> None:
    """Wait until this process runs no turn nor background work of one (tests, shutdown)."""
    loop = asyncio.get_running_loop()
    pending = [t for t in _tasks if t.get_loop() is loop and not t.done() and t not in _control_tasks]
    if pending:
        await asyncio.wait(pending, timeout=timeout)

"""Starting a turn: the only way one begins (both doors and the tests call ``turn_start``).

One path, three steps:

1. ``turn_start`` checks the request, refuses while this worker shuts down, and takes this
   worker's admission slot (``registry.slot_take``: the per-worker caps);
2. ONE database hop, ``_turn_prepare`` (docs/performance.md, A and E): the caller's session (a
   new chat id creates it) → the session lease lock (``chat.runtime.locks``; refreshed by the
   turn's heartbeat, released by its token on every exit path) → one short transaction under
   the user's lock: budget check + per-user cap + the ``ChatTurn`` row holding the reservation →
   one transaction: dead turns and trailing error markers cleared, the user message (with its
   turn id), the history, the ``TurnInput``. The session row is written once, at the end (and
   in that transaction only when the request's ``body.model`` changes the chat's model);
3. ``registry.spawn`` runs the turn (``chat.runtime.runner.turn_run``) as a task that outlives
   the caller.

Idempotent sends (docs/protocol.md): the user message's client id (``client_message_id``, the AI
SDK message id) is unique per session. A retried send is recognised inside the same hop: while
its turn runs, the lock is taken and one lookup finds the message's turn; once it finished, the
unique constraint refuses the second user message and the same lookup follows. The caller then
gets a handle on that turn (``turn_listen`` replays it from its first chunk, then live); a turn
whose log is no longer retained is refused with ``already_answered``.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from agents.approval import ToolRules
from agents.errors import AgentError, ErrorKind
from agents.sandbox import workspace_for
from agents.turn import Attachment, HistoryMessage, TurnInput, Usage
from chat import usage as chat_usage
from chat.metrics import refusals_counted
from chat.models import ChatMessage, ChatSession, ChatTurn
from chat.preferences import model_problem, session_instructions, session_max_steps, session_model
from chat.protocol import ProtocolError, attachment_from_file_part
from chat.runtime import locks, shutdown, streams, supervision
from chat.runtime.control import control_listener_ready
from chat.runtime.registry import (
    ALREADY_ACTIVE_TEXT,
    NOT_FOUND_TEXT,
    RunningTurn,
    Slot,
    TurnHandle,
    TurnRefused,
    max_turns_per_user,
    registry,
    too_many_for_user,
)
from chat.runtime.runner import turn_run
from chat.selectors import (
    message_active_leaf_id,
    message_find_for_branch,
    message_path_queryset,
    session_mcp_configs,
    session_turn_leftovers,
    tool_rules_for_user,
    turn_live_count_for_user,
)
from chat.services import (
    message_append,
    message_clear_trailing_error_markers,
    session_active_leaf_set,
    session_get_or_create_for_user,
    session_model_set,
)
from transcripts.store import DjangoSessionStore

logger = logging.getLogger(__name__)

TRANSCRIPT_PROJECT_KEY = "copilot"
CLOSED_TEXT = "The connection closed before the turn started."
ALREADY_ANSWERED_TEXT = (
    "This message was already answered (a retried send); reload the chat's messages to see the answer."
)
EDIT_KEY_MARK = "~edit-"  # an edit's client message id: <edited id, cut>~edit-<digest>
EDIT_KEY_PREFIX_CHARS = 150
JOIN_WAIT_SECONDS = 5.0  # a retry that raced its turn's start waits this long for the turn's log


@refusals_counted(TurnRefused)  # copilot_turn_refusals_total{code} (chat.metrics)
async def turn_start(
    *,
    user: Any,
    chat_id: str,
    text: str,
    attachments: list[Attachment] | None = None,
    trigger: str = "submit-message",
    client_message_id: str | None = None,
    alive: Callable[[], bool] | None = None,
    model: str | None = None,
    message_ref: str | None = None,
) -> TurnHandle:
    """Start a turn in the caller's chat (created when the id is new to them). Raises TurnRefused
    (``too_many_turns`` over a concurrency cap: nothing is written). ``alive``: the caller's
    connection is still open (checked before anything is written; false: TurnRefused
    ``connection_closed``). ``model``: the request's ``body.model`` (one of AGENT_MODELS, else
    TurnRefused ``invalid_request``): it becomes the chat's model, for this turn and the next ones
    (written with the turn's user message). ``message_ref``: the request's ``messageId`` (docs/api.md
    "Branches"): with ``submit-message``, naming a user message of the chat makes this an EDIT
    (the new message becomes that one's sibling); with ``regenerate-message``, the reply (or user
    message) to answer again (none, or unknown: the active path's last one)."""
    attachments = list(attachments or [])
    if not getattr(user, "is_authenticated", False):
        raise TurnRefused("not_found", NOT_FOUND_TEXT)
    if trigger not in ("submit-message", "regenerate-message"):
        raise TurnRefused("invalid_request", f"Unknown trigger {trigger!r}.")
    if trigger == "submit-message" and not (text or "").strip() and not attachments:
        raise TurnRefused("invalid_request", "The message is empty.")
    if not chat_id or len(chat_id) > 200:
        raise TurnRefused("invalid_request", "Invalid chat id.")
    problem = None if model is None else model_problem(model)
    if problem is not None:
        raise TurnRefused("invalid_request", problem)
    if shutdown.shutting_down():
        raise TurnRefused("unavailable", shutdown.SHUTDOWN_REFUSED_TEXT)
    shutdown.install()
    if alive is not None and not alive():
        raise TurnRefused("connection_closed", CLOSED_TEXT)

    slot = registry.slot_take(user)
    try:
        if locks.use_redis():
            await control_listener_ready()
        turn_id = str(uuid.uuid4())
        # The one database hop of the start: the model call starts right after it.
        prepared = await database_sync_to_async(_turn_prepare)(
            user=user,
            chat_id=chat_id,
            turn_id=turn_id,
            text=text,
            attachments=attachments,
            trigger=trigger,
            client_message_id=client_message_id,
            slot=slot,
            alive=alive,
            model=model,
            message_ref=message_ref,
        )
        running = await _turn_running(prepared=prepared, user=user, slot=slot)
    except _TurnDuplicate as duplicate:
        registry.slot_free(slot)  # nothing started: the retry joins the turn its message started
        return await _turn_join(duplicate)
    except BaseException:
        registry.slot_free(slot)  # not started (once started, the runner frees it)
        raise
    registry.spawn(turn_run(running), turn=running)
    return TurnHandle(session_id=running.session_id, turn_id=turn_id, message_id=running.inp.message_id)


# ---------------------------------------------------------------------------------------------
# The database hop (runs in the database thread)
# ---------------------------------------------------------------------------------------------


class _TurnDuplicate(Exception):
    """The request's user message is already stored (a retried send): the turn it started."""

    def __init__(self, *, session_id: str, turn_id: str | None, running: bool) -> None:
        super().__init__(turn_id)
        self.session_id = session_id
        self.turn_id = turn_id
        self.running = running


async def _turn_join(duplicate: _TurnDuplicate) -> TurnHandle:
    """A handle on the turn a retried send already started: its log replays from the first
    chunk (then live). A turn that is still starting elsewhere gets a moment to open its log;
    a finished turn whose log is gone: TurnRefused ``already_answered``."""
    turn_id = duplicate.turn_id
    if turn_id is None:
        raise TurnRefused("already_answered", ALREADY_ANSWERED_TEXT)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + (JOIN_WAIT_SECONDS if duplicate.running else 0.0)
    while await streams.stream_is_finished(turn_id=turn_id) is None:
        if loop.time() >= deadline:
            raise TurnRefused("already_answered", ALREADY_ANSWERED_TEXT)
        await asyncio.sleep(0.05)
    return TurnHandle(session_id=duplicate.session_id, turn_id=turn_id, message_id=f"msg-{turn_id}")


def edit_message_key(*, message_ref: str, text: str, attachments: list[Attachment]) -> str:
    """The client message id an EDIT is stored under (docs/api.md "Branches"): the stock AI SDK
    client keeps the id of the message it edits, and that id is taken (unique per session), so
    the edit's own key is derived from the edited message's id and the new content. A retried
    edit (same message, same content) derives the same key and joins its turn like any retried
    send; an edit with other content is another branch."""
    digest = hashlib.sha256(message_ref.encode("utf-8", "surrogatepass"))
    digest.update(b"\0" + text.encode("utf-8", "surrogatepass"))
    for attachment in attachments:
        digest.update(f"\0{attachment.media_type}\0{attachment.name}\0".encode("utf-8", "surrogatepass"))
        digest.update(hashlib.sha256(attachment.data).digest())
    return f"{message_ref[:EDIT_KEY_PREFIX_CHARS]}{EDIT_KEY_MARK}{digest.hexdigest()[:32]}"


def _message_duplicate(
    *,
    session: ChatSession,
    client_message_id: str | None,
    trigger: str,
    edit_key: str | None = None,
    text: str | None = None,
) -> _TurnDuplicate | None:
    """The turn of the session's user message stored under this request's key, if there is one
    (one indexed lookup; only on a refusal path: the lock is taken, or the insert hit the unique
    constraint). An edit's key first (a retried edit), then the message's own id (a retried
    send) — for an edit, the message under its own id is the one it edits: a retry only when
    the text is the same."""
    if trigger != "submit-message":
        return None
    keys = [key for key in (edit_key, client_message_id) if key]
    if not keys:
        return None
    rows = ChatMessage.objects.filter(session=session, client_message_id__in=keys).values_list(
        "client_message_id", "turn_id", "turn__status", "text"
    )
    found = {key: rest for key, *rest in rows}
    for key in keys:
        if key not in found:
            continue
        turn_id, status, stored_text = found[key]
        if key != edit_key and edit_key is not None and stored_text != text:
            continue  # the message this edit names, not a retry of it
        return _TurnDuplicate(
            session_id=str(session.pk),
            turn_id=None if turn_id is None else str(turn_id),
            running=status == ChatTurn.Status.RUNNING,
        )
    return None


@dataclass
class _Prepared:
    session: ChatSession
    turn: ChatTurn
    inp: TurnInput
    user_text: str
    needs_title: bool
    lock_token: str
    user_message_pk: int | None = None


def _turn_prepare(
    *,
    user: Any,
    chat_id: str,
    turn_id: str,
    text: str,
    attachments: list[Attachment],
    trigger: str,
    client_message_id: str | None,
    slot: Slot | None = None,
    alive: Callable[[], bool] | None = None,
    model: str | None = None,
    message_ref: str | None = None,
) -> _Prepared:
    """Everything a turn needs before its model call (see the module docstring). The lock is
    released again when anything after it fails; a chat created by this hop is dropped again
    when the turn is refused for too many turns. ``alive()`` false (the caller's socket closed
    while this waited for the database thread): nothing is written."""
    if alive is not None and not alive():
        raise TurnRefused("connection_closed", CLOSED_TEXT)
    edit_key = (
        edit_message_key(message_ref=message_ref, text=text, attachments=attachments)
        if message_ref and trigger == "submit-message"
        else None
    )
    registry.slot_backend(slot, settings.AGENT_BACKEND)
    session, created = session_get_or_create_for_user(
        user=user, chat_id=chat_id, backend=settings.AGENT_BACKEND, model=model or ""
    )
    registry.slot_backend(slot, session.backend or settings.AGENT_BACKEND)
    key = locks.session_key(session.pk)
    token = None
    if registry.get(session.pk) is None:
        token = locks.lock_acquire_sync(
            key, ttl=supervision.LOCK_TTL, meta={"turn_id": turn_id, "user_id": user.pk}
        )
    # The turn this request may repeat (a retried send or edit), looked up only on a refusal path.
    stored_duplicate = functools.partial(
        _message_duplicate,
        session=session,
        client_message_id=client_message_id,
        trigger=trigger,
        edit_key=edit_key,
        text=text,
    )
    if token is None:  # a turn runs: this request's own (a retried send), else a refusal
        duplicate = None if created else stored_duplicate()
        if duplicate is not None:
            raise duplicate
        raise TurnRefused("stream_already_active", ALREADY_ACTIVE_TEXT)
    try:
        turn = _turn_admit(session=session, user=user, turn_id=turn_id, trigger=trigger, model=model)
        try:
            with transaction.atomic():
                if model and session.model != model:  # body.model: the chat's model from now on
                    session_model_set(session=session, model=model)
                return _turn_messages(
                    session=session,
                    user=user,
                    turn=turn,
                    text=text,
                    attachments=attachments,
                    trigger=trigger,
                    client_message_id=client_message_id,
                    message_ref=message_ref,
                    edit_key=edit_key,
                    new_session=created,
                    lock_token=token,
                )
        except BaseException:
            # Nothing refers to the turn row yet (that transaction rolled back): drop it, and
            # with it the reservation.
            try:
                ChatTurn.objects.filter(pk=turn.pk).delete()
            except Exception:
                logger.exception("dropping turn %s after a failed start failed", turn.pk)
            raise
    except BaseException as exc:
        try:
            locks.lock_release_sync(key, token)
        except Exception:
            logger.exception("releasing the lock of a refused turn failed")
        if isinstance(exc, IntegrityError) and not created:
            # The unique (session, client_message_id) constraint: a retried send whose turn ended.
            duplicate = stored_duplicate()
            if duplicate is not None:
                raise duplicate from None
        if created and isinstance(exc, TurnRefused) and exc.code == "too_many_turns":
            # Nothing refers to the chat this hop created (no turn, no message): drop it, so a
            # refused flood of new chat ids leaves no empty chats behind.
            try:
                ChatSession.objects.filter(pk=session.pk).exclude(turns__isnull=False).delete()
            except Exception:
                logger.exception("dropping the empty chat of a refused turn failed")
        raise


def _turn_admit(
    *, session: ChatSession, user: Any, turn_id: str, trigger: str, model: str | None = None
) -> ChatTurn:
    """Check and reserve under the user's lock, in one short transaction: the budget
    (``chat.usage.budget_check``), the per-user cap across processes, and the ``ChatTurn`` row
    whose ``reserved_tokens`` is the reservation (atomic across processes). Only that: the
    user's lock serialises all of a user's turn starts (in every process), so it is held for as
    short as possible. ``model``: the request's own choice (body.model), else the chat's."""
    backend = session.backend or settings.AGENT_BACKEND
    model = model or session_model(session)  # the effective model: its budget, its rate limit
    refusal: AgentError | None = None
    reserved: list[int] = []
    with transaction.atomic():
        try:
            chat_usage.budget_check(user=user, model=model, reserve=reserved.append)
        except AgentError as exc:
            refusal = exc  # the refusal record budget_check wrote commits with this block
        if refusal is None:
            # The user's live running turns (any process), under the user's lock budget_check
            # took: two starts of one user cannot both pass. Raising rolls back.
            per_user = max_turns_per_user()
            if (
                per_user
                and turn_live_count_for_user(user_id=user.pk, lease_seconds=supervision.LOCK_TTL) >= per_user
            ):
                raise too_many_for_user()
            turn = ChatTurn.objects.create(
                id=turn_id,
                session=session,
                trigger=trigger,
                backend=backend,
                model=model,
                worker=locks.WORKER_ID,
                heartbeat_at=timezone.now(),
                reserved_tokens=sum(reserved),
            )
    if refusal is not None:
        code = "rate_limited" if refusal.kind == ErrorKind.RATE_LIMITED else "budget_exceeded"
        raise TurnRefused(code, refusal.message, resets_at=refusal.resets_at)
    return turn


def _turn_messages(
    *,
    session: ChatSession,
    user: Any,
    turn: ChatTurn,
    text: str,
    attachments: list[Attachment],
    trigger: str,
    client_message_id: str | None,
    new_session: bool,
    lock_token: str,
    message_ref: str | None = None,
    edit_key: str | None = None,
) -> _Prepared:
    """Inside one transaction: clear what a dead worker left, store the user message (or pick
    the one to regenerate), read the history, build the TurnInput.

    Branches (docs/api.md): a new message follows the chat's leaf; an edit follows the parent
    of the message it edits; a regenerate answers its user message again. The history is the
    path up from that parent only. An edit or a regenerate stores the chat's new leaf; a plain
    send writes nothing for it (its message hangs below the leaf, where the active path finds
    it; the turn's end stores the leaf in the session write it makes anyway)."""
    turn_id = str(turn.pk)
    leaf_id: int | None = None
    if not new_session:  # a session created in this hop has no turns nor messages yet
        dead_turns, leaf_id, leaf_kind = session_turn_leftovers(
            session_id=session.pk, exclude_turn_id=turn.pk
        )
        if dead_turns:
            _interrupt_dead_turns(session, exclude=turn.pk)
        if leaf_kind in ChatMessage.MARKER_KINDS:
            if message_clear_trailing_error_markers(session_id=session.pk, allow_active=True):  # lesson 6
                leaf_id = message_active_leaf_id(session_id=session.pk)
    if trigger == "regenerate-message":
        user_msg = _regenerate_target(session=session, message_ref=message_ref, leaf_id=leaf_id)
        text = (
            "\n\n".join(p.get("text", "") for p in user_msg.parts if p.get("type") == "text") or user_msg.text
        )
        attachments = [
            a for a in (_attachment_from_part(p) for p in user_msg.parts if p.get("type") == "file") if a
        ]
        if user_msg.turn_id is None:
            ChatMessage.objects.filter(pk=user_msg.pk).update(turn=turn)
        session_active_leaf_set(session=session, leaf_id=user_msg.pk)  # the new reply hangs below it
        parent_id = user_msg.parent_id
    else:
        edited = (
            _edit_target(session=session, message_ref=message_ref, text=text, leaf_id=leaf_id)
            if message_ref
            else None
        )
        parent_id = edited.parent_id if edited is not None else leaf_id
        parts: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
        parts += [_file_part(a) for a in attachments]
        user_msg = message_append(
            session=session,
            role=ChatMessage.Role.USER,
            text=text,
            parts=parts,
            metadata={"messageId": client_message_id} if client_message_id else {},
            turn=turn,  # inserted with its turn: no second write (docs/performance.md, E)
            # Unique per session: a retried send (or edit) is refused, and joins its turn.
            client_message_id=(edit_key if edited is not None else client_message_id) or None,
            parent=parent_id,
        )
        if edited is not None:
            session_active_leaf_set(session=session, leaf_id=user_msg.pk)
    history, path_ids = history_path_for_turn(session=session, parent_id=parent_id)
    needs_title = not session.title and not any(m.role == "user" for m in history)
    # The session row is touched once, when the turn ends (chat.runtime.runner).
    inp = turn_input_build(
        session=session,
        user=user,
        text=text,
        attachments=attachments,
        history=history,
        message_id=f"msg-{turn_id}",
        path_ids=path_ids,
    )
    return _Prepared(
        session=session,
        turn=turn,
        inp=inp,
        user_text=text,
        needs_title=needs_title,
        lock_token=lock_token,
        user_message_pk=user_msg.pk,
    )


def _regenerate_target(*, session: ChatSession, message_ref: str | None, leaf_id: int | None) -> ChatMessage:
    """The user message a regenerate answers again: the one ``message_ref`` names, or the one
    the reply it names answers; without a (known) reference, the active path's last one."""
    named = message_find_for_branch(session=session, ref=message_ref) if message_ref else None
    start = named.pk if named is not None else leaf_id
    user_msg = (
        None
        if start is None
        else message_path_queryset(session=session, message_id=start)
        .filter(role=ChatMessage.Role.USER, kind=ChatMessage.Kind.NORMAL)
        .order_by("-sequence")
        .first()
    )
    if user_msg is None:
        raise TurnRefused("invalid_request", "There is no message to regenerate.")
    return user_msg


def _edit_target(
    *, session: ChatSession, message_ref: str, text: str, leaf_id: int | None
) -> ChatMessage | None:
    """The user message an edit replaces (its new version becomes a sibling), or None: the
    reference names no user message of the chat, or it names the active path's last user
    message with the same text (the stock client's resubmission of that message: a retried
    send, not an edit)."""
    named = message_find_for_branch(session=session, ref=message_ref, role=ChatMessage.Role.USER)
    if named is None or named.kind != ChatMessage.Kind.NORMAL:
        return None
    if named.text == text and leaf_id is not None:
        last_user = (
            message_path_queryset(session=session, message_id=leaf_id)
            .filter(role=ChatMessage.Role.USER, kind=ChatMessage.Kind.NORMAL)
            .order_by("-sequence")
            .values_list("pk", flat=True)
            .first()
        )
        if last_user == named.pk:
            return None
    return named


def _interrupt_dead_turns(session: ChatSession, *, exclude: Any = None) -> int:
    """Turns of this session still marked running belong to a dead worker: the caller holds the
    session lock, so no live turn can exist. Mark them interrupted (their marker would be cleared
    by this new turn anyway, lesson 6), so a session never shows two running turns. (Called only
    when ``_session_leftovers`` found one, so the common start issues no write here.)"""
    return (
        ChatTurn.objects.filter(session=session, status=ChatTurn.Status.RUNNING)
        .exclude(pk=exclude)
        .update(
            status=ChatTurn.Status.INTERRUPTED,
            error_code="interrupted",
            finish_reason="error",
            ended_at=timezone.now(),
            reserved_tokens=0,
        )
    )


def _attachment_from_part(part: dict[str, Any]) -> Attachment | None:
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


def history_path_for_turn(
    *, session: ChatSession, parent_id: int | None
) -> tuple[list[HistoryMessage], set[int]]:
    """The conversation before a turn, as the model should see it: the path up from
    ``parent_id`` (the message the turn's user message follows; None: nothing before it),
    normal user/assistant messages only (markers excluded, other branches never), consecutive
    messages of one role merged (lesson 4); and the pks of those messages (whether the CLI
    session's transcript is on this path: ``turn_input_build``)."""
    history: list[HistoryMessage] = []
    if parent_id is None:
        return history, set()
    rows = (
        message_path_queryset(session=session, message_id=parent_id)
        .filter(
            kind=ChatMessage.Kind.NORMAL,
            role__in=(ChatMessage.Role.USER, ChatMessage.Role.ASSISTANT),
        )
        .values_list("pk", "role", "parts")
    )
    path_ids: set[int] = set()
    for pk, role, parts in rows:
        path_ids.add(pk)
        parts = list(parts or [])
        if not parts:
            continue
        if history and history[-1].role == role:
            history[-1] = HistoryMessage(role=role, parts=history[-1].parts + parts)
        else:
            history.append(HistoryMessage(role=role, parts=parts))
    return history, path_ids


def turn_input_build(
    *,
    session: ChatSession,
    user: Any,
    text: str,
    attachments: list[Attachment],
    history: list[HistoryMessage],
    message_id: str,
    path_ids: set[int] | None = None,
) -> TurnInput:
    """The TurnInput of a turn (runs in the DB thread). The hook for whatever else a turn needs
    (e.g. the transcripts app's ``session_store``). ``path_ids``: the pks of the history's
    messages; the chat's CLI session is resumed only when the message its transcript ends at
    is one of them (docs/transcripts.md "Branches"): after an edit, a regenerate or a branch
    switch the transcript holds another branch, and the sdk backend starts a fresh CLI session
    with this history as its context instead."""
    return TurnInput(
        session_id=str(session.pk),
        user_text=text,
        workspace=workspace_for(str(session.pk)),
        backend=session.backend or settings.AGENT_BACKEND,
        # Per-chat settings (chat.preferences): the chat's model while AGENT_MODELS offers it,
        # its instructions and step limit.
        model=session_model(session),
        system_prompt=settings.AGENT_SYSTEM_PROMPT,
        instructions=session_instructions(session),
        max_steps=session_max_steps(session),
        attachments=list(attachments),
        history=history,
        agent_session_id=(session.agent_session_id or None)
        if session.agent_session_leaf_id is not None and session.agent_session_leaf_id in (path_ids or ())
        else None,
        # The CLI's transcripts live in the database, so any worker can resume the session; the
        # project is pinned so that resume works even where AGENT_WORKSPACE_ROOT differs.
        session_store=DjangoSessionStore(project_key=TRANSCRIPT_PROJECT_KEY),
        message_id=message_id,
        tools=ToolRules(mode=session.tool_mode, rules=tool_rules_for_user(user_id=user.pk)),
        # The chat's enabled MCP servers (docs/agents.md "MCP servers").
        mcp_servers=session_mcp_configs(session=session),
    )


# ---------------------------------------------------------------------------------------------
# Back on the event loop
# ---------------------------------------------------------------------------------------------


async def _turn_running(*, prepared: _Prepared, user: Any, slot: Slot) -> RunningTurn:
    """The prepared turn as a ``RunningTurn`` with its log open. A same-process start that raced
    this one between the hop and here wins; on any failure the lock is released and the turn
    row marked failed."""
    session_id = str(prepared.session.pk)
    key = locks.session_key(session_id)
    if registry.get(session_id) is not None:
        await asyncio.shield(locks.lock_release(key, prepared.lock_token))
        raise TurnRefused("stream_already_active", ALREADY_ACTIVE_TEXT)
    try:
        inp = prepared.inp

        async def step_check(usage_so_far: Usage) -> None:
            await database_sync_to_async(chat_usage.budget_step_check)(
                user=user, model=inp.model, usage_so_far=usage_so_far
            )

        inp.step_check = step_check
        rt = RunningTurn(
            turn_id=str(prepared.turn.pk),
            session_id=session_id,
            user=user,
            session=prepared.session,
            turn=prepared.turn,
            inp=inp,
            stream=streams.stream_open(turn_id=str(prepared.turn.pk), session_id=session_id),
            lock_token=prepared.lock_token,
            user_text=prepared.user_text,
            needs_title=prepared.needs_title,
            user_message_pk=prepared.user_message_pk,
            slot=slot,
        )
        inp.approve = rt.approvals.ask  # the backends ask the user through the turn's log
        return rt
    except BaseException:
        await asyncio.shield(locks.lock_release(key, prepared.lock_token))
        await asyncio.shield(_turn_abandon(prepared.turn))
        raise


async def _turn_abandon(turn: ChatTurn) -> None:
    """A turn whose rows were written but that could not be started: mark it failed and give
    back its budget reservation (it would expire anyway)."""

    def abandon() -> None:
        ChatTurn.objects.filter(pk=turn.pk, status=ChatTurn.Status.RUNNING).update(
            status=ChatTurn.Status.FAILED,
            error_code="not_started",
            finish_reason="error",
            ended_at=timezone.now(),
            reserved_tokens=0,
        )

    try:
        await database_sync_to_async(abandon)()
    except Exception:
        logger.exception("abandoning turn %s failed", turn.pk)

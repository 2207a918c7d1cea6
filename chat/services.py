"""Writes. Keyword-only functions named ``<entity>_<action>``; views, consumers, admin actions
and commands call these, never the models directly."""

from __future__ import annotations

import logging
import time
from typing import Any

from django.db import IntegrityError, connection, transaction
from django.db.models import Q
from django.utils import timezone

from chat.models import ChatMessage, ChatSession
from chat.selectors import (
    message_active_leaf_id,
    message_descend_leaf,
    message_last_sequence,
    message_trailing_error_markers,
    session_get_for_user,
    session_has_running_turn_row,
)

logger = logging.getLogger(__name__)

SEQUENCE_RETRIES = 20
# ``message_append(parent=ACTIVE_LEAF)``: the new message follows the chat's leaf (the end of its
# active path, ``chat.selectors.message_active_leaf_id``; docs/api.md "Branches").
ACTIVE_LEAF = object()


def session_create(
    *, owner: Any, client_id: str | None = None, title: str = "", backend: str = "", model: str = ""
) -> ChatSession:
    session = ChatSession(owner=owner, title=title[:200], backend=backend, model=model)
    session.client_id = client_id or str(session.id)
    session.save()
    return session


def session_get_or_create_for_user(
    *, user: Any, chat_id: str, backend: str = "", model: str = ""
) -> tuple[ChatSession, bool]:
    """The caller's session for ``chat_id``, creating it when the caller has none (CONTRACT §5).

    A chat id that names another user's session simply creates a new session for the caller:
    client ids are scoped per owner, so nothing about the other session is revealed.
    """
    session = session_get_for_user(user=user, chat_id=chat_id)
    if session is not None:
        return session, False
    try:
        with transaction.atomic():
            return session_create(owner=user, client_id=chat_id, backend=backend, model=model), True
    except IntegrityError:  # a concurrent request created it first
        session = session_get_for_user(user=user, chat_id=chat_id)
        if session is None:
            raise
        return session, False


def session_model_set(*, session: ChatSession, model: str) -> None:
    """Make ``model`` the chat's model (a turn's ``body.model``; the caller checked it against
    AGENT_MODELS). One UPDATE of that column, so nothing else of the row is overwritten."""
    session.model = model
    session.updated_at = timezone.now()
    ChatSession.objects.filter(pk=session.pk).update(model=model, updated_at=session.updated_at)


def message_append(
    *,
    session: ChatSession,
    role: str,
    text: str = "",
    parts: list[dict[str, Any]] | None = None,
    kind: str = ChatMessage.Kind.NORMAL,
    metadata: dict[str, Any] | None = None,
    turn: Any = None,
    client_message_id: str | None = None,
    parent: Any = ACTIVE_LEAF,
) -> ChatMessage:
    """Append a message at ``MAX(sequence)+1``. ``client_message_id``: the client's message id
    (unique per session: a duplicate raises IntegrityError, no retry). ``parent``: the message
    (or pk, or None for a root) it follows; by default the chat's leaf, read under the same
    lock (the turns pass theirs: they know it without a query). The session's stored
    ``active_leaf`` is not written: the active path descends to a new child of the leaf by
    itself (``chat.selectors``, "Branches"), and whoever branches elsewhere stores the leaf.

    Writers of one session are serialised inside the transaction that reads the maximum: a row
    lock on the session on PostgreSQL, the write lock SQLite's IMMEDIATE transactions take at
    BEGIN. The unique (session, sequence) constraint stays the safety net: a writer that still
    collides (e.g. a row inserted outside this function) retries at the new maximum (DESIGN
    lesson 7). Each attempt runs in its own savepoint so a caller's transaction stays usable.
    """
    for attempt in range(SEQUENCE_RETRIES):
        try:
            with transaction.atomic():
                if connection.features.has_select_for_update:  # SQLite: BEGIN IMMEDIATE already serialises
                    ChatSession.objects.select_for_update().filter(pk=session.pk).values_list(
                        "pk", flat=True
                    ).first()
                sequence = message_last_sequence(session_id=session.pk) + 1
                parent_id = (
                    message_active_leaf_id(session_id=session.pk)
                    if parent is ACTIVE_LEAF
                    else getattr(parent, "pk", parent)
                )
                message = ChatMessage.objects.create(
                    parent_id=parent_id,
                    session=session,
                    sequence=sequence,
                    role=role,
                    text=text,
                    parts=parts if parts is not None else ([{"type": "text", "text": text}] if text else []),
                    kind=kind,
                    metadata=metadata or {},
                    turn=turn,
                    client_message_id=client_message_id,
                )
        except IntegrityError as exc:
            if "sequence" not in str(exc) or "client_message" in str(exc):
                raise
            logger.debug("a message sequence of session %s was taken, retrying", session.pk)
            time.sleep(0.001 * (attempt + 1))
            continue
        return message
    raise RuntimeError(f"could not allocate a message sequence for session {session.pk}")


# --- Operators (admin actions, management commands) ----------------------------------------------
# Appended by the operators issue.

import datetime as _dt  # noqa: E402

from chat.models import ChatTurn, RateLimitRecord  # noqa: E402

INTERRUPTED_TEXT = "The server stopped while answering. Please send your message again."


def message_clear_trailing_error_markers(*, session_id: Any, allow_active: bool = False) -> int:
    """Delete the error markers at the end of a session (DESIGN lesson 6; the rule:
    ``chat.selectors.message_trailing_error_markers``); returns how many. A turn's start calls it
    (with ``allow_active``: it holds the session's lock).

    Never touches a marker followed by another message, and (unless ``allow_active``) does nothing
    while the session has a running turn (its markers are not stale: the turn may still write)."""
    with transaction.atomic():
        if not allow_active and session_has_running_turn_row(session_id=session_id):
            return 0
        markers = message_trailing_error_markers(session_id=session_id)
        if not markers:
            return 0
        _markers_unlink(session_id=session_id, markers=markers)
        return ChatMessage.objects.filter(pk__in=[m.pk for m in markers]).delete()[0]


def _markers_unlink(*, session_id: Any, markers: list[ChatMessage]) -> None:
    """Before the trailing error markers go: what followed one (a stopped marker) follows the
    nearest message that stays, and the chat's stored leaf becomes the nearest message that stays
    on its active path (docs/api.md "Branches"). Called by the clear, in its transaction."""
    gone = {m.pk: m.parent_id for m in markers}

    def kept(pk: Any) -> Any:
        while pk in gone:
            pk = gone[pk]
        return pk

    for message in ChatMessage.objects.filter(parent_id__in=list(gone)).exclude(pk__in=list(gone)):
        ChatMessage.objects.filter(pk=message.pk).update(parent_id=kept(message.parent_id))
    leaf = message_active_leaf_id(session_id=session_id)
    ChatSession.objects.filter(pk=session_id).update(active_leaf_id=kept(leaf))


def session_active_leaf_set(*, session: ChatSession, leaf_id: Any) -> None:
    """Store the chat's leaf (one UPDATE of that column): an edit, a regenerate or a turn's end."""
    session.active_leaf_id = leaf_id
    ChatSession.objects.filter(pk=session.pk).update(active_leaf_id=leaf_id)


def session_branch_switch(*, session: ChatSession, message: ChatMessage) -> int:
    """Show and continue the branch through ``message``: from it down to a leaf, taking the
    newest child at each step; that leaf is stored and returned. The caller checked that the
    message is the session's and that no turn of the session runs."""
    leaf_id = message_descend_leaf(message_id=message.pk)
    session_active_leaf_set(session=session, leaf_id=leaf_id)
    return leaf_id


def session_archive(*, session_ids: list[Any], archived: bool = True) -> int:
    return ChatSession.objects.filter(pk__in=session_ids).update(archived=archived, updated_at=timezone.now())


def turn_mark_interrupted(*, turn_id: Any, reason: str = "interrupted", text: str = INTERRUPTED_TEXT) -> bool:
    """A running turn whose worker is gone: status ``interrupted`` and a persisted retryable error
    marker, so the session shows what happened and is free again. False when the turn was no
    longer running (it finished meanwhile: nothing is written)."""
    now = timezone.now()
    with transaction.atomic():
        updated = ChatTurn.objects.filter(pk=turn_id, status=ChatTurn.Status.RUNNING).update(
            status=ChatTurn.Status.INTERRUPTED, ended_at=now, error_code=reason[:40], finish_reason="error"
        )
        if not updated:
            return False
        turn = ChatTurn.objects.select_related("session").get(pk=turn_id)
        message_append(
            session=turn.session,
            role=ChatMessage.Role.ASSISTANT,
            text=text,
            parts=[],
            kind=ChatMessage.Kind.RETRYABLE_ERROR,
            metadata={"code": reason, "retryable": True, "resets_at": None},
            turn=turn,
        )
    return True


def session_purge(*, session_ids: list[Any]) -> int:
    """Delete sessions (messages and turns cascade; usage rows keep their numbers, unlinked)."""
    if not session_ids:
        return 0
    deleted = ChatSession.objects.filter(pk__in=session_ids).delete()[1]
    return int(deleted.get("chat.ChatSession", 0))


def rate_limit_record_purge(*, created_before: _dt.datetime, now: _dt.datetime | None = None) -> int:
    """Delete rate-limit records created before ``created_before`` that are no longer active."""

    now = now or timezone.now()
    qs = RateLimitRecord.objects.filter(created_at__lt=created_before).filter(
        Q(resets_at__isnull=True) | Q(resets_at__lte=now)
    )
    return qs.delete()[0]

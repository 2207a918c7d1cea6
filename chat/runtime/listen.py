"""Listening to a turn: replay from its log (``chat.runtime.streams``), then live until the
terminal chunk — or until a ``tool-approval-request`` that still waits for its answer: a stock
AI SDK ``Chat`` answers only once its stream has ended, so the response ends there while the turn
waits (the answering request continues it: ``control.turn_approval_answer``). Both doors forward
what they read verbatim: every item is ``(sequence, chunk JSON, is_terminal)``, the chunk encoded
once when the runtime appended it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from chat.runtime import streams
from chat.runtime.approvals import REQUEST_PREFIX
from chat.runtime.control import approval_pending, session_lookup, turn_active_id
from chat.runtime.registry import NOT_FOUND_TEXT, TurnHandle, TurnRefused


def _alive_check(session_id: str, turn_id: str) -> Callable[[], Awaitable[bool]]:
    async def is_alive() -> bool:
        if await turn_active_id(session_id=session_id) == turn_id:
            return True
        return bool(await streams.stream_is_finished(turn_id=turn_id))  # finished: let the reader drain

    return is_alive


async def _until_waiting(
    items: AsyncIterator[tuple[int, str, bool]], *, session_id: str, turn_id: str
) -> AsyncIterator[tuple[int, str, bool]]:
    """``items`` up to and including a ``tool-approval-request`` that is still pending."""
    try:
        async for item in items:
            yield item
            sequence, raw, _terminal = item
            if raw.startswith(REQUEST_PREFIX) and await approval_pending(
                session_id=session_id, turn_id=turn_id, sequence=sequence, raw=raw
            ):
                return
    finally:
        await items.aclose()


def _read(*, session_id: str, turn_id: str, after_sequence: int) -> AsyncIterator[tuple[int, str, bool]]:
    reader = streams.stream_read(
        turn_id=turn_id, after_sequence=after_sequence, is_alive=_alive_check(session_id, turn_id)
    )
    if streams.stream_get_local(turn_id) is not None:
        return reader  # the local log stops after a waiting request itself (TurnStream.waiting)
    return _until_waiting(reader, session_id=session_id, turn_id=turn_id)


def turn_listen(*, handle: TurnHandle, after_sequence: int = -1) -> AsyncIterator[tuple[int, str, bool]]:
    """The chunks of a turn the caller just started (from ``after_sequence + 1``)."""
    return _read(session_id=handle.session_id, turn_id=handle.turn_id, after_sequence=after_sequence)


async def _subscribe_target(*, user: Any, chat_id: str, after_sequence: int) -> tuple[str, str] | None:
    session = await session_lookup(user=user, chat_id=chat_id)
    if session is None:
        raise TurnRefused("not_found", NOT_FOUND_TEXT)
    return await _session_target(session_id=str(session.pk), after_sequence=after_sequence)


async def _session_target(*, session_id: str, after_sequence: int) -> tuple[str, str] | None:
    turn_id = await turn_active_id(session_id=session_id)
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
) -> AsyncIterator[tuple[int, str, bool]] | None:
    """Replay the chat's active turn from ``after_sequence + 1``, then follow it live until its
    terminal chunk. None when nothing is active. With ``after_sequence >= 0`` a turn that ended
    moments ago still delivers the tail the caller missed (its log is retained a while).
    Raises TurnRefused("not_found") for an unknown or foreign chat."""
    found = await _subscribe_target(user=user, chat_id=chat_id, after_sequence=after_sequence)
    if found is None:
        return None
    session_id, turn_id = found
    return _read(session_id=session_id, turn_id=turn_id, after_sequence=after_sequence)


async def turn_watch(
    *, session_id: str, after_sequence: int = -1
) -> AsyncIterator[tuple[int, str, bool]] | None:
    """``turn_subscribe`` for a session the caller has already authorised *without* the owner
    check: the staff-only live supervision in the admin (chat.live_admin), which checks staff
    status and permissions itself. Read-only: it reads the turn's log, never writes to the turn.
    None when nothing is active."""
    found = await _session_target(session_id=str(session_id), after_sequence=after_sequence)
    if found is None:
        return None
    session_id, turn_id = found
    return _read(session_id=session_id, turn_id=turn_id, after_sequence=after_sequence)

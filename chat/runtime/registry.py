"""The turns of this process: what runs here, its background tasks, and the admission slots.

``registry`` (the one ``TurnRegistry`` of the process) is the only place that knows which turns
run in this process. Starting (``chat.runtime.start``) admits a turn (``slot_take``) and spawns
it (``spawn``); the runner discards it when it has ended; control, listening and the admin ask
``get``; shutdown calls ``interrupt_all``; tests and shutdown wait with ``wait_idle``.

Admission (docs/security.md, "Concurrency caps"): the per-worker caps are counted here (a slot
is taken before the turn's database hop and freed with its lock); the per-user cap across
processes is checked in the database (``chat.runtime.start``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from agents.backends.sdk import max_cli_processes
from agents.errors import AgentError
from agents.events import Chunk
from agents.turn import TurnInput, Usage
from chat.config import chat_config
from chat.models import ChatSession, ChatTurn
from chat.runtime.approvals import TurnApprovals
from chat.runtime.persistence import MessageFolder, MessageWriter
from chat.runtime.streams import Coalescer, TurnStream

ALREADY_ACTIVE_TEXT = (
    "A response is already being generated in this chat (stream_already_active). "
    "Wait for it to finish or stop it first."
)
NOT_FOUND_TEXT = "Chat not found."
# Concurrency caps (docs/security.md, "Concurrency caps"). The texts avoid the word "already":
# clients match it for stream_already_active.
TOO_MANY_TURNS_RETRY_AFTER = 5  # seconds (REST Retry-After)
TOO_MANY_USER_TEXT = (
    "You have reached the most replies generated at once ({n}) (too_many_turns). "
    "Wait for one to finish or stop one, then send again."
)
TOO_MANY_WORKER_TEXT = (
    "The server is generating too many replies right now (too_many_turns). Please try again in a few seconds."
)


def max_turns_per_user() -> int:
    """AGENT_MAX_TURNS_PER_USER: running turns one user may have, over every process (0: no cap)."""
    return chat_config().max_turns_per_user


def max_turns_per_worker() -> int:
    """AGENT_MAX_TURNS_PER_WORKER: turns starting or running in this process (0: no cap)."""
    return chat_config().max_turns_per_worker


class TurnRefused(Exception):
    """A turn could not start (or a chat could not be listened to)."""

    def __init__(self, code: str, message: str = "", *, resets_at: dt.datetime | None = None) -> None:
        self.code = code
        self.message = message or code
        self.resets_at = resets_at
        super().__init__(self.message)


def too_many_for_user() -> TurnRefused:
    return TurnRefused("too_many_turns", TOO_MANY_USER_TEXT.format(n=max_turns_per_user()))


@dataclass(frozen=True)
class TurnHandle:
    session_id: str
    turn_id: str
    message_id: str  # the assistant message id (``start.messageId``)


@dataclass(eq=False)
class Slot:
    """One turn starting or running in this process (from before its database hop until its
    lock is released)."""

    user_id: Any
    sdk: bool = False


@dataclass
class RunningTurn:
    """A turn running in this process."""

    turn_id: str
    session_id: str
    user: Any
    session: ChatSession
    turn: ChatTurn
    inp: TurnInput
    stream: TurnStream
    lock_token: str
    user_text: str
    needs_title: bool
    # The turn's user message (new, or the one a regenerate answers again): the parent of its
    # reply (docs/api.md "Branches"). ``marker_pk``: the stopped/error marker the end wrote.
    user_message_pk: int | None = None
    marker_pk: int | None = None
    writer: MessageWriter = field(init=False)
    coalescer: Coalescer = field(init=False)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    # A fault this process detected around the turn (stalled upstream, server shutdown): the turn
    # is stopped through ``inp.stop`` and then ends with this error instead of a stopped finish.
    fault: AgentError | None = None
    fault_code: str = ""
    fault_status: str = ChatTurn.Status.FAILED
    last_activity: float = 0.0  # loop time of the last chunk that was not a heartbeat
    # The chat's title once generated, until someone claims it: the runner's end of turn (written
    # with it: no writes of its own) or the title task itself when the turn runs on for longer.
    title_pending: tuple[str, Usage] | None = None
    finishing: asyncio.Event = field(default_factory=asyncio.Event)
    slot: Slot | None = None  # this worker's admission slot, freed with the lock
    task: asyncio.Task | None = None  # the task running the turn (``TurnRegistry.spawn``)
    approvals: TurnApprovals = field(init=False)

    def __post_init__(self) -> None:
        self.writer = MessageWriter(
            session=self.session,
            turn=self.turn,
            folder=MessageFolder(message_id=self.inp.message_id),
            parent_pk=self.user_message_pk,
        )
        self.coalescer = Coalescer(self.emit)
        self.approvals = TurnApprovals(
            session_id=self.session_id,
            turn_id=self.turn_id,
            send=self.chunk_send,
            persist=self.writer.flush,
            stop=self.inp.stop,
            waiting=self.stream.waiting,
        )

    def emit(self, chunk: Chunk) -> None:
        self.writer.feed(chunk)
        self.stream.append(chunk)

    def chunk_send(self, chunk: Chunk) -> int:
        """Append a chunk of the runtime's own after the text coalesced so far; its sequence."""
        self.coalescer.flush()
        self.writer.feed(chunk)
        return self.stream.append(chunk)

    def interrupt(self, error: AgentError, *, code: str, status: str) -> None:
        """End the turn because of a fault: stop it, then let the runner report ``error``."""
        if self.fault is None and not self.done.is_set():
            self.fault, self.fault_code, self.fault_status = error, code, status
            self.inp.stop.set()


class TurnRegistry:
    """Per process: session id -> running turn, strong references to every background task, and
    the admission slots."""

    def __init__(self) -> None:
        self._running: dict[str, RunningTurn] = {}
        self._tasks: set[asyncio.Task] = set()
        self._background: set[asyncio.Task] = set()  # long-lived helpers wait_idle does not wait for
        self._slots: set[Slot] = set()
        # Taken on the event loop, marked sdk in the database thread, freed on the loop.
        self._slots_lock = threading.Lock()

    # -- running turns ------------------------------------------------------------------------
    def get(self, session_id: Any) -> RunningTurn | None:
        """The turn running in this process for the session, or None."""
        return self._running.get(str(session_id))

    def spawn(
        self, coro: Coroutine, *, turn: RunningTurn | None = None, background: bool = False
    ) -> asyncio.Task:
        """Run ``coro`` as a task this registry keeps a reference to. With ``turn``: the task runs
        that turn, which is registered under its session until ``discard``. ``background``: a
        long-lived helper (the control listener) that ``wait_idle`` does not wait for."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if background:
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        if turn is not None:
            turn.task = task
            self._running[turn.session_id] = turn
        return task

    def discard(self, turn: RunningTurn) -> None:
        """The turn has ended (its lock is released): it no longer runs here."""
        if self._running.get(turn.session_id) is turn:
            del self._running[turn.session_id]

    async def wait_idle(self, timeout: float = 30.0) -> None:
        """Wait until this process runs no turn nor background work of one (tests, shutdown)."""
        loop = asyncio.get_running_loop()
        pending = [
            t for t in self._tasks if t.get_loop() is loop and not t.done() and t not in self._background
        ]
        if pending:
            await asyncio.wait(pending, timeout=timeout)

    async def interrupt_all(self, *, error: AgentError, code: str, status: str, grace: float) -> int:
        """Interrupt every turn running in this process with ``error`` (``RunningTurn.interrupt``),
        wait up to ``grace`` seconds for them to end, then cancel the ones still running (the
        runner still records their end). Returns how many were interrupted."""
        loop = asyncio.get_running_loop()
        running = [rt for rt in list(self._running.values()) if not rt.done.is_set()]
        for rt in running:
            rt.interrupt(error, code=code, status=status)
        if not running:
            return 0
        waits = [asyncio.ensure_future(rt.done.wait()) for rt in running]
        _done, pending = await asyncio.wait(waits, timeout=grace)
        for waiter in pending:
            waiter.cancel()
        if pending:
            late = [
                rt.task
                for rt in running
                if rt.task is not None and rt.task.get_loop() is loop and not rt.task.done()
            ]
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late, timeout=5.0)
        return len(running)

    # -- admission slots ----------------------------------------------------------------------
    def slot_take(self, user: Any) -> Slot:
        """Admit one more turn in this process or raise TurnRefused("too_many_turns"): the worker
        cap (AGENT_MAX_TURNS_PER_WORKER) and, as a fast lower bound that needs no query, the
        user's turns in this process against AGENT_MAX_TURNS_PER_USER (the database check is the
        one that holds across processes)."""
        per_worker, per_user = max_turns_per_worker(), max_turns_per_user()
        with self._slots_lock:
            if per_worker and len(self._slots) >= per_worker:
                raise TurnRefused("too_many_turns", TOO_MANY_WORKER_TEXT)
            if per_user and sum(1 for s in self._slots if s.user_id == user.pk) >= per_user:
                raise too_many_for_user()
            slot = Slot(user_id=user.pk)
            self._slots.add(slot)
            return slot

    def slot_backend(self, slot: Slot | None, backend: str) -> None:
        """The slot's turn runs on ``backend``. An sdk turn needs a CLI process: refuse it once
        AGENT_SDK_MAX_CLI_PROCESSES sdk turns run here (idle kept CLIs do not count: the backend
        closes them to make room)."""
        if slot is None:
            return
        if backend != "sdk":
            slot.sdk = False
            return
        if slot.sdk:
            return
        limit = max_cli_processes()
        with self._slots_lock:
            if limit and sum(1 for s in self._slots if s.sdk) >= limit:
                raise TurnRefused("too_many_turns", TOO_MANY_WORKER_TEXT)
            slot.sdk = True

    def slot_free(self, slot: Slot | None) -> None:
        if slot is not None:
            with self._slots_lock:
                self._slots.discard(slot)

    def slot_counts(self) -> dict[str, int]:
        """This process's admitted turns (tests, diagnostics): ``{"turns": n, "sdk": n}``."""
        with self._slots_lock:
            return {"turns": len(self._slots), "sdk": sum(1 for s in self._slots if s.sdk)}


registry = TurnRegistry()

"""Fold a turn's chunks into its assistant ``ChatMessage`` (AI SDK UIMessage parts).

One turn = one assistant message (never split: DESIGN lesson 4). Its ``parts`` keep the order
the model produced them — ``step-start``, ``reasoning``, ``text``, ``tool-<name>`` (with
``toolCallId``, ``state``, ``input``, ``output`` | ``errorText``) — which is the order a backend
needs to rebuild tool_use / tool_result pairs from history.

``MessageFolder.feed`` is synchronous and in-memory (called for every chunk). ``MessageWriter``
writes snapshots of the folder to the same row: at boundaries (a tool call finished, a step
finished) and on a timer while text streams (``FLUSH_INTERVAL``), never per delta (lesson 11).
The row is first inserted by the timer or at the end of the turn (not at a boundary), so a turn
shorter than ``FLUSH_INTERVAL`` writes its assistant message once.
The final write happens in ``chat.runtime.runner`` (shielded from cancellation).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from channels.db import database_sync_to_async
from django.db import connection

from agents.events import Chunk
from chat.models import ChatMessage, ChatSession, ChatTurn
from chat.services import ACTIVE_LEAF, message_append

logger = logging.getLogger(__name__)

FLUSH_INTERVAL = 2.0  # seconds between snapshot writes while text streams

# Chunks after which the row is written promptly.
BOUNDARY_TYPES = frozenset(
    {
        "tool-input-available",
        "tool-output-available",
        "tool-output-error",
        "tool-output-denied",
        "tool-approval-request",
        "tool-approval-response",
        "finish-step",
    }
)


class MessageFolder:
    """Builds the assistant message's UI parts from chunks."""

    def __init__(self, *, message_id: str = "") -> None:
        self.parts: list[dict[str, Any]] = []
        self.metadata: dict[str, Any] = {"messageId": message_id} if message_id else {}
        self.version = 0  # bumped on every change
        self._open: dict[tuple[str, str], dict[str, Any]] = {}  # (kind, id) -> streaming part
        self._tools: dict[str, dict[str, Any]] = {}  # toolCallId -> part
        self._approvals: dict[str, dict[str, Any]] = {}  # approvalId -> tool part

    @property
    def has_content(self) -> bool:
        return any(p["type"] != "step-start" for p in self.parts)

    def feed(self, chunk: Chunk) -> bool:
        """Fold one chunk; returns True when it is a persistence boundary."""
        kind = chunk["type"]
        if kind == "text-delta" or kind == "reasoning-delta":
            part = self._open.get((kind[:-6], chunk["id"]))
            if part is None:  # a delta without its start: open the part implicitly
                part = self._start_part(kind[:-6], chunk["id"])
            part["text"] += chunk["delta"]
        elif kind == "text-start" or kind == "reasoning-start":
            self._start_part(kind[:-6], chunk["id"])
        elif kind == "text-end" or kind == "reasoning-end":
            part = self._open.pop((kind[:-4], chunk["id"]), None)
            if part is not None:
                part["state"] = "done"
        elif kind == "start-step":
            self.parts.append({"type": "step-start"})
        elif kind == "tool-input-start":
            self._tool(chunk["toolCallId"], chunk.get("toolName", "unknown"))
        elif kind == "tool-input-delta":
            part = self._tool(chunk["toolCallId"], None)
            part["_inputText"] = part.get("_inputText", "") + chunk["inputTextDelta"]
        elif kind == "tool-input-available":
            part = self._tool(chunk["toolCallId"], chunk.get("toolName"))
            part.pop("_inputText", None)
            part["state"] = "input-available"
            part["input"] = chunk.get("input")
        elif kind == "tool-output-available":
            part = self._tool(chunk["toolCallId"], None)
            part["state"] = "output-available"
            part["output"] = chunk.get("output")
        elif kind == "tool-output-error":
            part = self._tool(chunk["toolCallId"], None)
            part["state"] = "output-error"
            part["errorText"] = chunk.get("errorText", "")
        elif kind == "tool-output-denied":
            self._tool(chunk["toolCallId"], None)["state"] = "output-denied"
        elif kind == "tool-approval-request":
            part = self._tool(chunk["toolCallId"], None)
            self._approvals[chunk["approvalId"]] = part
            part["state"] = "approval-requested"
            part["approval"] = {"id": chunk["approvalId"]}
        elif kind == "tool-approval-response":
            part = self._approvals.get(chunk["approvalId"])
            if part is None:
                return False
            part["state"] = "approval-responded"
            part["approval"] = {"id": chunk["approvalId"], "approved": bool(chunk.get("approved"))}
            if chunk.get("reason"):
                part["approval"]["reason"] = chunk["reason"]
        elif kind == "start":
            if chunk.get("messageMetadata"):
                self.metadata.update(chunk["messageMetadata"])
            if chunk.get("messageId"):
                self.metadata["messageId"] = chunk["messageId"]
            return False
        elif kind == "finish":
            self.metadata["finishReason"] = chunk.get("finishReason", "")
            if chunk.get("messageMetadata"):
                self.metadata.update(chunk["messageMetadata"])
        elif kind == "data-usage":
            self.metadata["usage"] = chunk.get("data")
        elif kind.startswith("data-"):
            if chunk.get("transient"):
                return False
            part = {"type": kind, "data": chunk.get("data")}
            if "id" in chunk:
                part["id"] = chunk["id"]
            self.parts.append(part)
        else:  # finish-step, error, abort, message-metadata…
            if kind == "message-metadata" and chunk.get("messageMetadata"):
                self.metadata.update(chunk["messageMetadata"])
            elif kind != "finish-step":
                return False
        self.version += 1
        return kind in BOUNDARY_TYPES

    def _start_part(self, kind: str, part_id: str) -> dict[str, Any]:
        part = {"type": kind, "text": "", "state": "streaming"}
        self.parts.append(part)
        self._open[(kind, part_id)] = part
        return part

    def _tool(self, call_id: str, name: str | None) -> dict[str, Any]:
        part = self._tools.get(call_id)
        if part is None:
            part = {
                "type": f"tool-{name or 'unknown'}",
                "toolCallId": call_id,
                "state": "input-streaming",
                "input": None,
            }
            self._tools[call_id] = part
            self.parts.append(part)
        return part

    def tools_running(self) -> bool:
        """Whether a tool call has its input but not yet its output (the model is not expected
        to speak meanwhile)."""
        return any(part["state"] == "input-available" for part in self._tools.values())

    def close_open_parts(self) -> None:
        """End of turn: no part may stay streaming, no tool call may stay without a result."""
        for part in self._open.values():
            part["state"] = "done"
        self._open.clear()
        for part in self._tools.values():
            if part["state"] in (
                "input-streaming",
                "input-available",
                "approval-requested",
                "approval-responded",
            ):
                part.pop("_inputText", None)
                part["state"] = "output-error"
                part["errorText"] = "The turn ended before this tool call finished."
        self.version += 1

    def snapshot(self) -> tuple[list[dict[str, Any]], str, dict[str, Any]]:
        parts = [{k: v for k, v in p.items() if k != "_inputText"} for p in self.parts]
        text = "\n\n".join(p["text"] for p in self.parts if p["type"] == "text" and p["text"])
        return parts, text, dict(self.metadata)


def db_connection_reset_if_broken() -> None:
    """Drop this thread's database connection when it is known to be dead (a restarted or
    terminated PostgreSQL backend), so the next query reconnects instead of failing with "the
    connection is closed" until the connection's max age. Never inside a transaction."""
    try:
        if connection.in_atomic_block:
            return
        raw = connection.connection
        if raw is not None and getattr(raw, "closed", False):
            connection.close()
        elif connection.errors_occurred:
            connection.close_if_unusable_or_obsolete()
    except Exception:
        logger.debug("resetting the database connection failed", exc_info=True)


def assistant_message_save(
    *,
    session: ChatSession,
    turn: ChatTurn,
    message_pk: int | None,
    parts: list,
    text: str,
    metadata: dict,
    lookup: bool = True,
    parent_pk: int | None = None,
) -> int:
    """Create (first call) or update the turn's assistant row; returns its pk. ``parent_pk``: the
    turn's user message, which the row follows (docs/api.md "Branches").

    Idempotent: a first write whose commit succeeded but whose answer was lost (connection cut)
    is found again by its turn instead of being inserted twice (``lookup``; a caller that knows
    it never tried before passes False and saves that query)."""
    db_connection_reset_if_broken()
    if message_pk is None and lookup:
        message_pk = (
            ChatMessage.objects.filter(
                turn=turn, role=ChatMessage.Role.ASSISTANT, kind=ChatMessage.Kind.NORMAL
            )
            .values_list("pk", flat=True)
            .first()
        )
    if message_pk is None:
        return message_append(
            session=session,
            role=ChatMessage.Role.ASSISTANT,
            text=text,
            parts=parts,
            metadata=metadata,
            turn=turn,
            parent=ACTIVE_LEAF if parent_pk is None else parent_pk,
        ).pk
    ChatMessage.objects.filter(pk=message_pk).update(parts=parts, text=text, metadata=metadata)
    return message_pk


class MessageWriter:
    """Writes the folder's snapshots to one assistant row: at boundaries and every few seconds."""

    def __init__(
        self,
        *,
        session: ChatSession,
        turn: ChatTurn,
        folder: MessageFolder,
        interval: float | None = None,
        parent_pk: int | None = None,
    ):
        self.session = session
        self.parent_pk = parent_pk
        self.turn = turn
        self.folder = folder
        self.interval = FLUSH_INTERVAL if interval is None else interval
        self.message_pk: int | None = None
        self._written_version = 0
        self._dirty = asyncio.Event()
        self._boundary = asyncio.Event()
        self._lock = asyncio.Lock()
        self._closing = False
        self._attempted = False  # a write was tried (it may have committed without us knowing)

    def feed(self, chunk: Chunk) -> None:
        if self.folder.feed(chunk):
            self._boundary.set()
        self._dirty.set()

    async def run(self) -> None:
        """Background loop; ended by ``stop()`` (never cancelled mid-write: a write cancelled
        while its thread still runs would leave the row's pk unknown and duplicate the row)."""
        loop = asyncio.get_running_loop()
        while True:
            await self._dirty.wait()
            if self._closing:
                return
            deadline = loop.time() + self.interval
            # A boundary writes at once, but only once the row exists: the row's first write
            # (its INSERT) waits for the timer or the end of the turn, so a turn shorter than the
            # interval writes its assistant message exactly once (docs/performance.md, E).
            while not self._closing:
                if self._boundary.is_set():
                    if self.message_pk is not None:
                        break
                    self._boundary.clear()
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    await asyncio.wait_for(self._boundary.wait(), timeout=remaining)
                except TimeoutError:
                    break
            if self._closing:
                return
            self._dirty.clear()
            self._boundary.clear()
            try:
                await self.flush()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("intermediate save of turn %s failed", self.turn.pk)

    def stop(self) -> None:
        self._closing = True
        self._dirty.set()
        self._boundary.set()

    async def flush(self, *, final: bool = False) -> None:
        async with self._lock:
            if self.folder.version == self._written_version and not final:
                return
            if not self.folder.has_content and self.message_pk is None:
                return
            version, fields = self._save_fields()
            self.message_pk = await database_sync_to_async(assistant_message_save)(**fields)
            self._written_version = version

    def flush_final_sync(self) -> None:
        """The final write, from the database thread, as part of the turn's end-of-turn hop
        (``chat.runtime.runner``). Only after ``run()`` has ended: nothing else writes or folds by then."""
        if not self.folder.has_content and self.message_pk is None:
            return
        version, fields = self._save_fields()
        self.message_pk = assistant_message_save(**fields)
        self._written_version = version

    def _save_fields(self) -> tuple[int, dict[str, Any]]:
        """(the folded version, ``assistant_message_save``'s arguments) for one write."""
        version = self.folder.version
        parts, text, metadata = self.folder.snapshot()
        lookup, self._attempted = self._attempted, True
        fields = {
            "session": self.session,
            "turn": self.turn,
            "message_pk": self.message_pk,
            "parts": parts,
            "text": text,
            "metadata": metadata,
            "lookup": lookup,
            "parent_pk": self.parent_pk,
        }
        return version, fields

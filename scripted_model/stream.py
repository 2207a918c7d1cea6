"""Rendering a :class:`~scripted_model.planner.Plan`: Anthropic SSE events in the real API's
stream grammar (docs/scripted_model.md, "Stream grammar") or one non-streaming Message."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from scripted_model.directives import JSON_SEPARATORS
from scripted_model.planner import Plan, PlannedBlock
from scripted_model.usage import Usage

#: SSE bytes buffered before a chunk is written (batching for ``/long``).
FLUSH_BYTES = 64 * 1024


def sse_event(name: str, payload: dict[str, Any]) -> bytes:
    data = json.dumps(payload, separators=JSON_SEPARATORS, ensure_ascii=False)
    return f"event: {name}\ndata: {data}\n\n".encode()


def _delta_prefix(index: int, kind: str, key: str) -> bytes:
    return (
        f'event: content_block_delta\ndata: {{"type":"content_block_delta","index":{index},'
        f'"delta":{{"type":"{kind}","{key}":'
    ).encode()


_DELTA_KEYS = {
    "text": ("text_delta", "text"),
    "thinking": ("thinking_delta", "thinking"),
    "future_block_type": ("future_delta", "payload"),  # ``/future``: a delta type newer than the client
}
_TOOL_BLOCKS = ("tool_use", "server_tool_use")


def _block_start(block: PlannedBlock) -> dict[str, Any]:
    if block.type in _TOOL_BLOCKS:
        return {"type": block.type, "id": block.tool_id, "name": block.tool_name, "input": {}}
    if block.raw is not None:
        return dict(block.raw)
    if block.type == "thinking":
        return {"type": "thinking", "thinking": "", "signature": ""}
    if block.citations:
        return {"type": "text", "text": "", "citations": []}
    return {"type": "text", "text": ""}


def _block_final(block: PlannedBlock, pieces: list[str]) -> dict[str, Any]:
    if block.type in _TOOL_BLOCKS:
        return {
            "type": block.type,
            "id": block.tool_id,
            "name": block.tool_name,
            "input": block.tool_input,
        }
    if block.raw is not None:
        return dict(block.raw)
    if block.type == "thinking":
        return {"type": "thinking", "thinking": "".join(pieces), "signature": block.signature}
    if block.citations:
        return {"type": "text", "text": "".join(pieces), "citations": list(block.citations.values())}
    return {"type": "text", "text": "".join(pieces)}


class StampCounter:
    """Generates ``/stamp`` deltas: ``<i>:<time.time_ns() at send> ``."""

    def __init__(self) -> None:
        self._next = 0

    def __call__(self) -> str:
        text = f"{self._next}:{time.time_ns()} "
        self._next += 1
        return text


def message_shell(message_id: str, model: str, usage: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": usage,
    }


class DroppedConnection(Exception):
    """The plan asked to cut the connection (``/drop``)."""


class SSEWriter:
    """Writes SSE events as HTTP/1.1 chunks, batching small events."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._buffer: list[bytes] = []
        self._size = 0

    def add(self, data: bytes) -> None:
        self._buffer.append(data)
        self._size += len(data)

    async def event(self, name: str, payload: dict[str, Any]) -> None:
        self.add(sse_event(name, payload))
        await self.maybe_flush()

    async def maybe_flush(self) -> None:
        if self._size >= FLUSH_BYTES:
            await self.flush()

    async def flush(self) -> None:
        if not self._size:
            return
        if self._writer.is_closing():
            raise ConnectionResetError("client went away")
        data = b"".join(self._buffer)
        self._buffer.clear()
        self._size = 0
        self._writer.writelines((b"%x\r\n" % len(data), data, b"\r\n"))
        await self._writer.drain()

    async def finish(self) -> None:
        await self.flush()
        self._writer.write(b"0\r\n\r\n")
        await self._writer.drain()


class _StreamEnded(Exception):
    """The plan ended the stream early on purpose (``event: error`` mid-stream)."""


def final_usage(plan: Plan, usage: Usage) -> dict[str, Any]:
    """The cumulative usage of ``message_delta`` (and of a non-streaming reply)."""
    return {**usage.as_dict(max(1, plan.delta_count)), **plan.usage_extra}


async def stream_plan(plan: Plan, out: SSEWriter, *, message_id: str, model: str, usage: Usage) -> None:
    """Stream ``plan`` as Anthropic SSE events into ``out``, in the real API's grammar: ``ping``
    right after ``message_start`` and between content blocks, cumulative usage in
    ``message_delta`` (replacing ``message_start``'s), ``signature_delta`` closing thinking,
    ``citations_delta`` inside text, and whatever the plan adds (unknown events, an error)."""
    await out.event(
        "message_start",
        {
            "type": "message_start",
            "message": message_shell(message_id, model, usage.as_dict(1)),
        },
    )
    await out.event("ping", {"type": "ping"})
    for name, payload in plan.unknown_events:
        await out.event(name, payload)
    stamp = StampCounter() if plan.stamp else None
    loop = asyncio.get_running_loop()
    next_at = loop.time()
    sent = 0

    async def wait_turn() -> None:
        """Before a delta: keep the ``interval`` schedule (no wait before the first)."""
        nonlocal next_at
        if plan.interval > 0 and sent:
            next_at += plan.interval
            delay = next_at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)

    async def delta_added() -> None:
        """After a delta: send it now when paced, cut the stream for ``/drop``."""
        nonlocal sent
        sent += 1
        if plan.drop_after is not None and sent >= plan.drop_after:
            await out.flush()
            raise DroppedConnection()
        if plan.error_after is not None and plan.stream_error is not None and sent >= plan.error_after:
            err = plan.stream_error
            await out.event("error", {"type": "error", "error": {"type": err.type, "message": err.message}})
            await out.finish()
            raise _StreamEnded()
        if plan.stall_after is not None and sent == plan.stall_after:
            await out.flush()
            await asyncio.sleep(plan.stall_seconds)
        if plan.interval > 0:
            await out.flush()
        else:
            await out.maybe_flush()

    try:
        for index, block in enumerate(plan.blocks):
            if index:
                await out.event("ping", {"type": "ping"})
            await out.event(
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": index,
                    "content_block": _block_start(block),
                },
            )
            if block.type in _TOOL_BLOCKS:
                for piece in block.pieces:
                    await wait_turn()
                    delta = {"type": "input_json_delta", "partial_json": piece}
                    payload = {"type": "content_block_delta", "index": index, "delta": delta}
                    out.add(sse_event("content_block_delta", payload))
                    await delta_added()
            elif block.type in _DELTA_KEYS:
                kind, key = _DELTA_KEYS[block.type]
                prefix = _delta_prefix(index, kind, key)
                for number, piece in enumerate(block.pieces):
                    if number in block.citations:
                        delta = {"type": "citations_delta", "citation": block.citations[number]}
                        out.add(
                            sse_event(
                                "content_block_delta",
                                {"type": "content_block_delta", "index": index, "delta": delta},
                            )
                        )
                    await wait_turn()
                    text = stamp() if stamp is not None and block.type == "text" else piece
                    out.add(prefix + json.dumps(text, ensure_ascii=False).encode() + b"}}\n\n")
                    await delta_added()
                if block.type == "thinking":
                    await out.event(
                        "content_block_delta",
                        {
                            "type": "content_block_delta",
                            "index": index,
                            "delta": {"type": "signature_delta", "signature": block.signature},
                        },
                    )
            await out.event("content_block_stop", {"type": "content_block_stop", "index": index})
    except _StreamEnded:
        return
    await out.event(
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": plan.stop_reason, "stop_sequence": None},
            "usage": final_usage(plan, usage),
        },
    )
    await out.event("message_stop", {"type": "message_stop"})
    await out.finish()


async def render_message(plan: Plan, *, message_id: str, model: str, usage: Usage) -> dict[str, Any]:
    """The non-streaming Message for ``plan`` (delays are honoured)."""
    stamp = StampCounter() if plan.stamp else None
    content: list[dict[str, Any]] = []
    for block in plan.blocks:
        pieces: list[str] = []
        for piece in block.pieces:
            if plan.interval > 0 and (pieces or content):
                await asyncio.sleep(plan.interval)
            pieces.append(stamp() if stamp is not None and block.type == "text" else piece)
        content.append(_block_final(block, pieces))
    message = message_shell(message_id, model, final_usage(plan, usage))
    message.update(content=content, stop_reason=plan.stop_reason)
    return message


def error_body(kind: str, message: str, request_id: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}, "request_id": request_id}

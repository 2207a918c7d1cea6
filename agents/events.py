"""The one chunk vocabulary: Vercel AI SDK UI-message-stream parts (package ``ai``, major 7).

Every producer (both backends, chat.runtime) builds chunks only through these functions and
both doors (websocket, SSE) send them unchanged. A chunk is a plain JSON-safe ``dict``.
Non-standard information travels as ``data-*`` parts (CONTRACT §4).
"""

from __future__ import annotations

from typing import Any, Literal

Chunk = dict[str, Any]

FinishReason = Literal["stop", "length", "content-filter", "tool-calls", "error", "other"]

# Parts that carry streamed text and may be merged when consecutive (delta coalescing).
DELTA_TYPES = frozenset({"text-delta", "reasoning-delta", "tool-input-delta"})


def start(message_id: str, metadata: dict[str, Any] | None = None) -> Chunk:
    chunk: Chunk = {"type": "start", "messageId": message_id}
    if metadata:
        chunk["messageMetadata"] = metadata
    return chunk


def start_step() -> Chunk:
    return {"type": "start-step"}


def finish_step() -> Chunk:
    return {"type": "finish-step"}


def finish(finish_reason: FinishReason = "stop", metadata: dict[str, Any] | None = None) -> Chunk:
    chunk: Chunk = {"type": "finish", "finishReason": finish_reason}
    if metadata:
        chunk["messageMetadata"] = metadata
    return chunk


def text_start(part_id: str) -> Chunk:
    return {"type": "text-start", "id": part_id}


def text_delta(part_id: str, delta: str) -> Chunk:
    return {"type": "text-delta", "id": part_id, "delta": delta}


def text_end(part_id: str) -> Chunk:
    return {"type": "text-end", "id": part_id}


def reasoning_start(part_id: str) -> Chunk:
    return {"type": "reasoning-start", "id": part_id}


def reasoning_delta(part_id: str, delta: str) -> Chunk:
    return {"type": "reasoning-delta", "id": part_id, "delta": delta}


def reasoning_end(part_id: str) -> Chunk:
    return {"type": "reasoning-end", "id": part_id}


def tool_input_start(tool_call_id: str, tool_name: str, *, provider_executed: bool = False) -> Chunk:
    chunk: Chunk = {"type": "tool-input-start", "toolCallId": tool_call_id, "toolName": tool_name}
    if provider_executed:  # a server tool (web search…): the model provider ran it, not us
        chunk["providerExecuted"] = True
    return chunk


def tool_input_delta(tool_call_id: str, delta: str) -> Chunk:
    return {"type": "tool-input-delta", "toolCallId": tool_call_id, "inputTextDelta": delta}


def tool_input_available(
    tool_call_id: str, tool_name: str, tool_input: Any, *, provider_executed: bool = False
) -> Chunk:
    chunk: Chunk = {
        "type": "tool-input-available",
        "toolCallId": tool_call_id,
        "toolName": tool_name,
        "input": tool_input,
    }
    if provider_executed:
        chunk["providerExecuted"] = True
    return chunk


def tool_output_available(tool_call_id: str, output: Any, *, provider_executed: bool = False) -> Chunk:
    chunk: Chunk = {"type": "tool-output-available", "toolCallId": tool_call_id, "output": output}
    if provider_executed:
        chunk["providerExecuted"] = True
    return chunk


def source_url(source_id: str, url: str, title: str | None = None) -> Chunk:
    """A cited web page (the AI SDK ``source-url`` part; from a ``citations_delta``)."""
    chunk: Chunk = {"type": "source-url", "sourceId": source_id, "url": url}
    if title:
        chunk["title"] = title
    return chunk


def source_document(source_id: str, title: str, media_type: str = "text/plain") -> Chunk:
    """A cited document (the AI SDK ``source-document`` part; from a ``citations_delta``)."""
    return {"type": "source-document", "sourceId": source_id, "mediaType": media_type, "title": title}


def tool_output_error(tool_call_id: str, error_text: str) -> Chunk:
    return {"type": "tool-output-error", "toolCallId": tool_call_id, "errorText": error_text}


def tool_output_denied(tool_call_id: str) -> Chunk:
    """The user (or an expired approval request) denied the call: it never ran."""
    return {"type": "tool-output-denied", "toolCallId": tool_call_id}


def tool_approval_request(approval_id: str, tool_call_id: str) -> Chunk:
    return {"type": "tool-approval-request", "approvalId": approval_id, "toolCallId": tool_call_id}


def tool_approval_response(approval_id: str, approved: bool, reason: str = "") -> Chunk:
    chunk: Chunk = {"type": "tool-approval-response", "approvalId": approval_id, "approved": approved}
    if reason:
        chunk["reason"] = reason
    return chunk


def error(error_text: str) -> Chunk:
    return {"type": "error", "errorText": error_text}


def abort() -> Chunk:
    return {"type": "abort"}


def data(name: str, payload: Any, *, transient: bool = False, part_id: str | None = None) -> Chunk:
    """A ``data-<name>`` part. Transient parts are delivered but not added to the message."""
    chunk: Chunk = {"type": f"data-{name}", "data": payload}
    if part_id is not None:
        chunk["id"] = part_id
    if transient:
        chunk["transient"] = True
    return chunk


def usage(
    *,
    input_tokens: int,
    output_tokens: int,
    cache_read_tokens: int,
    cache_write_tokens: int,
    cost_usd: float,
    model: str,
) -> Chunk:
    return data(
        "usage",
        {
            "inputTokens": input_tokens,
            "outputTokens": output_tokens,
            "cacheReadTokens": cache_read_tokens,
            "cacheWriteTokens": cache_write_tokens,
            "costUsd": round(cost_usd, 6),
            "model": model,
        },
    )


def heartbeat(ts: float) -> Chunk:
    return data("heartbeat", {"ts": ts}, transient=True)


def status(code: str, message: str) -> Chunk:
    """A user-facing progress note (retrying, compacting context, ...)."""
    return data("status", {"code": code, "message": message}, transient=True)


def session_info(payload: dict[str, Any]) -> Chunk:
    return data("session", payload, transient=True)


def coalesce(chunks: list[Chunk]) -> list[Chunk]:
    """Merge runs of consecutive deltas of the same part into one chunk each (order kept)."""
    out: list[Chunk] = []
    for chunk in chunks:
        kind = chunk["type"]
        if out and kind in DELTA_TYPES and out[-1]["type"] == kind:
            prev = out[-1]
            if kind == "tool-input-delta":
                if prev["toolCallId"] == chunk["toolCallId"]:
                    out[-1] = {**prev, "inputTextDelta": prev["inputTextDelta"] + chunk["inputTextDelta"]}
                    continue
            elif prev["id"] == chunk["id"]:
                out[-1] = {**prev, "delta": prev["delta"] + chunk["delta"]}
                continue
        out.append(chunk)
    return out

"""Context-size recovery (DESIGN lesson 5): what a turn retries with after "prompt is too long".

The runtime (``agents.runtime.run_turn``) owns the ladder; this module builds its rungs. A turn
that fails with ``PROMPT_TOO_LONG`` *before any content chunk reached the client* is retried:

1. **full** — what the backend sends by default (sdk: the resumed CLI transcript; api: every
   message of ``inp.history``);
2. **compacted** — the older history summarised through the model (``summarise``: the shared
   anthropic client (agents.model_client) against ``agents.config.model_endpoint()``, a
   "summarise this conversation for continuation" prompt, input bounded to
   ``AGENT_COMPACT_SUMMARY_INPUT_CHARS``), followed by the
   newest messages within ``AGENT_COMPACT_KEEP_CHARS``; when summarising fails, the truncation
   alone (newest messages within the budget). The sdk backend starts a *fresh* CLI session with it;
3. **history** — the newest messages of ``inp.history`` (the ChatMessage rows) only, within
   ``AGENT_RECOVERY_HISTORY_CHARS``, no summary; fresh CLI session on the sdk backend.

Each rung is announced with a ``data-status`` chunk; a rung that cannot change the request (no
history, nothing to resume) is skipped. When nothing fits, the turn ends with one ``error`` whose
text suggests a new chat (``final_error``). Never after content was streamed: the runtime checks.

Both backends read the rung from the ``TurnInput`` the runtime hands them (``dataclasses.replace``
of the original: another ``history``, ``agent_session_id=None``), so there is no backend-specific
recovery code.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from typing import Any

from agents.config import agent_config
from agents.errors import AgentError, ErrorKind, scrub
from agents.model_client import model_client
from agents.turn import HistoryMessage, TurnInput, Usage

log = logging.getLogger(__name__)

SUMMARY_MARKER = "[Summary of the earlier conversation]"
DROPPED_MARKER = "[Earlier messages of this conversation were left out to fit the model's context.]"
SUMMARY_SYSTEM_PROMPT = (
    "Summarise this conversation for continuation. Another assistant will continue it from your "
    "summary alone, so keep every fact, decision, name, number, file path, command and open task "
    "it needs; leave out pleasantries. Write plain prose or terse bullet points, at most 400 words."
)
CLIP_NOTE = "…[truncated]"
TOOL_OUTPUT_CLIP = 2_000  # characters of one tool input/output kept when truncating


@dataclass(frozen=True)
class Rung:
    name: str  # "compacted" | "history"
    status_code: str  # data-status code
    message: str  # data-status text for the user


COMPACTED = Rung(
    "compacted",
    "compacting-context",
    "This conversation is too long for the model. Compacting it and trying again…",
)
HISTORY = Rung(
    "history",
    "history-only",
    "Still too long. Trying again with only the most recent messages…",
)
LADDER: tuple[Rung, ...] = (COMPACTED, HISTORY)


def final_error(failure: AgentError, *, tried: list[str]) -> AgentError:
    """The error a turn ends with when no rung fits."""
    if tried:
        message = (
            "This conversation is too long for the model, even after shortening it. "
            "Start a new chat to continue."
        )
    else:
        message = "Your message is too long for the model. Shorten it, or start a new chat."
    detail = f"{failure.detail} (recovery tried: {', '.join(tried) or 'nothing'})"[:500]
    return AgentError(
        ErrorKind.PROMPT_TOO_LONG, detail=detail, message=message, status_code=failure.status_code
    )


# ------------------------------------------------------------------------------------------------
# Sizes and truncation
# ------------------------------------------------------------------------------------------------


def message_chars(message: HistoryMessage) -> int:
    """A message's size as the model would see it (roughly: its parts as JSON)."""
    return len(json.dumps(message.parts, ensure_ascii=False, default=str))


def _clip(value: Any, limit: int) -> Any:
    if isinstance(value, str) and len(value) > limit:
        return value[:limit] + CLIP_NOTE
    if isinstance(value, (dict, list)):
        text = json.dumps(value, ensure_ascii=False, default=str)
        if len(text) > limit:
            return text[:limit] + CLIP_NOTE
    return value


def clip_message(message: HistoryMessage, *, max_chars: int) -> HistoryMessage:
    """The message with long texts cut to ``max_chars`` and tool inputs/outputs to
    ``TOOL_OUTPUT_CLIP`` (tool calls stay, so tool_use/tool_result pairs stay valid)."""
    parts: list[dict[str, Any]] = []
    for part in message.parts:
        part = dict(part)
        if part.get("type") in ("text", "reasoning") and isinstance(part.get("text"), str):
            part["text"] = _clip(part["text"], max_chars)
        for key in ("input", "output", "errorText"):
            if key in part and part[key] is not None:
                clipped = _clip(part[key], min(max_chars, TOOL_OUTPUT_CLIP))
                if key == "input" and not isinstance(clipped, dict):
                    clipped = {"_truncated": clipped}
                part[key] = clipped
        parts.append(part)
    return dataclasses.replace(message, parts=parts)


def normal_messages(history: list[HistoryMessage]) -> list[HistoryMessage]:
    """History without markers (error / stopped notes are not turns of the conversation)."""
    return [m for m in history if (m.kind or "normal") == "normal" and m.parts]


def truncate_history(history: list[HistoryMessage], *, max_chars: int) -> list[HistoryMessage]:
    """The newest messages whose (clipped) size fits ``max_chars``, oldest first, starting with a
    user message. At least the newest message is kept (clipped to the budget)."""
    kept: list[HistoryMessage] = []
    total = 0
    for message in reversed(normal_messages(history)):
        clipped = clip_message(message, max_chars=max_chars)
        size = message_chars(clipped)
        if kept and total + size > max_chars:
            break
        kept.append(clipped)
        total += size
    kept.reverse()
    while len(kept) > 1 and kept[0].role != "user":
        kept.pop(0)
    return kept


def render_transcript(history: list[HistoryMessage], *, max_chars: int) -> str:
    """History as plain text for the summariser: the newest ``max_chars`` of it."""
    lines: list[str] = []
    for message in normal_messages(history):
        bits: list[str] = []
        for part in message.parts:
            kind = str(part.get("type", ""))
            if kind == "text" and part.get("text"):
                bits.append(str(part["text"]))
            elif kind == "file":
                bits.append(f"[attached file {part.get('filename') or 'file'}]")
            elif kind == "dynamic-tool" or (kind.startswith("tool-") and part.get("toolCallId")):
                name = part.get("toolName") if kind == "dynamic-tool" else kind[5:]
                tool_input = _clip(part.get("input"), 500)
                result = (
                    part.get("output") if part.get("state") == "output-available" else part.get("errorText")
                )
                bits.append(
                    f"[tool {name} {json.dumps(tool_input, ensure_ascii=False, default=str)} "
                    f"→ {_clip(result, 1000)}]"
                )
        if bits:
            lines.append(f"{message.role.capitalize()}: " + "\n".join(bits))
    text = "\n\n".join(lines)
    if len(text) > max_chars:
        text = "…" + text[-max_chars:]
    return text


# ------------------------------------------------------------------------------------------------
# Summarising
# ------------------------------------------------------------------------------------------------


async def summarise(history: list[HistoryMessage], *, model: str) -> tuple[str, Usage]:
    """A summary of ``history`` written by the model; raises on any failure or an empty answer."""
    transcript = render_transcript(history, max_chars=agent_config().compact_summary_input_chars)
    if not transcript.strip():
        raise ValueError("nothing to summarise")
    message = (
        await model_client()
        .with_options(timeout=120.0)
        .messages.create(
            model=model,
            max_tokens=agent_config().compact_summary_max_tokens,
            system=SUMMARY_SYSTEM_PROMPT,
            messages=[
                {
                    "role": "user",
                    "content": f"<conversation>\n{transcript}\n</conversation>\n\n"
                    "Summarise this conversation for continuation.",
                }
            ],
        )
    )
    usage = Usage.from_api(message.usage)
    text = "".join(getattr(block, "text", "") for block in message.content).strip()
    if not text:
        raise ValueError("the model returned an empty summary")
    return text, usage


async def compact_history(
    history: list[HistoryMessage], *, model: str, usage: Usage
) -> tuple[list[HistoryMessage], bool]:
    """(compacted history, whether a model summary is in it). The newest messages within
    ``AGENT_COMPACT_KEEP_CHARS``, preceded by a summary of the older ones — or by a note that they
    were left out when summarising failed. ``usage`` gets the summary call's tokens."""
    recent = truncate_history(history, max_chars=agent_config().compact_keep_chars)
    normal = normal_messages(history)
    older = normal[: max(0, len(normal) - len(recent))]
    if not older:
        return recent, False
    try:
        summary, used = await summarise(older, model=model)
    except Exception as exc:  # noqa: BLE001 - the truncation fallback
        log.info(
            "compaction summary failed, truncating instead: %s", scrub(f"{type(exc).__name__}: {exc}")[:300]
        )
        head = HistoryMessage(role="user", parts=[{"type": "text", "text": DROPPED_MARKER}])
        return [head, *recent], False
    usage.add(used)
    head = HistoryMessage(role="user", parts=[{"type": "text", "text": f"{SUMMARY_MARKER}\n{summary}"}])
    return [head, *recent], True


def applies(rung: Rung, inp: TurnInput) -> bool:
    """Whether retrying with ``rung`` can change the request at all."""
    if normal_messages(inp.history):
        return True
    return inp.backend == "sdk" and bool(inp.agent_session_id)


async def rung_input(rung: Rung, inp: TurnInput, *, usage: Usage) -> TurnInput:
    """The TurnInput for ``rung`` (derived from the turn's original input)."""
    if rung is COMPACTED:
        history, summarised = await compact_history(inp.history, model=inp.model, usage=usage)
        log.info(
            "context recovery: compacted %d messages to %d (summary: %s)",
            len(inp.history),
            len(history),
            summarised,
        )
    else:
        history = truncate_history(inp.history, max_chars=agent_config().recovery_history_chars)
        log.info("context recovery: %d newest of %d messages", len(history), len(inp.history))
    return dataclasses.replace(inp, history=history, agent_session_id=None)

"""claude-agent-sdk messages → UI-message-stream chunks (content chunks only).

``SdkTranslator.feed(message)`` returns the chunks for one SDK message; ``finish()`` returns what
closes the stream; ``error()`` the classified failure the CLI reported (if any).

With ``include_partial_messages=True`` the CLI streams every model call as raw Messages API
events (``StreamEvent``) *and* sends an ``AssistantMessage`` per finished content block. The raw
events become chunks in ``agents.translate.StreamTranslator``, the translator the api backend uses
too; what is SDK-specific stays here. So:

- text and thinking stream from ``content_block_*`` events; ``AssistantMessage`` text of a
  message that was streamed is ignored (it would duplicate); text of a message that was *not*
  streamed (a non-streaming fallback) is emitted whole. Synthetic error messages (model
  ``<synthetic>``, ``error`` set) are never shown as text: they become the turn's error.
- tool calls: ``content_block_start`` (tool_use) → ``tool-input-start``, ``input_json_delta`` →
  ``tool-input-delta``, the ``AssistantMessage`` ToolUseBlock (or ``content_block_stop`` with the
  accumulated JSON, whichever comes first) → ``tool-input-available``, exactly once per id.
- tool results: ``UserMessage`` ToolResultBlocks → ``tool-output-available`` /
  ``tool-output-error``. They arrive after the model call that asked for them ended, and
  hooks are fire-and-forget (DESIGN lesson 2), so a step whose model call stopped with
  ``tool_use`` is finished only when all its tool results are in (or the next model call starts,
  or the stream ends): ``start-step, text…, tool-input-*, tool-output-*, finish-step`` — the
  order the AI SDK itself produces. A message made only of tool_use blocks is a parallel
  continuation: nothing is closed then.
- steps: ``message_start`` → ``start-step``; ``message_stop`` → ``finish-step`` (deferred as
  above).
- messages of sub-agents (``parent_tool_use_id`` set) are not shown as the turn's own parts.
- the CLI's own compaction (PreCompact hook, ``status: compacting`` system message,
  ``compact_boundary``) becomes transient ``data-status`` chunks ("Compacting conversation…",
  "Conversation compacted.") and nothing else: its summary request and the summary user message
  never produce text chunks, so they stay out of the persisted/replayed answer.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from typing import Any

from claude_agent_sdk import (
    AssistantMessage,
    RateLimitEvent,
    ResultMessage,
    SystemMessage,
    TextBlock,
    ThinkingBlock,
    ToolResultBlock,
    ToolUseBlock,
    UserMessage,
)
from claude_agent_sdk.types import StreamEvent

from agents import events
from agents.errors import AgentError, ErrorKind, classify_status, classify_text, scrub
from agents.events import Chunk
from agents.translate import StreamTranslator
from agents.turn import Usage

log = logging.getLogger(__name__)

TOOL_NOT_FINISHED = "Tool call did not finish."
SYNTHETIC_MODEL = "<synthetic>"

# AssistantMessage.error values of the CLI → kinds (used when no HTTP status is known).
ASSISTANT_ERROR_KINDS: dict[str, ErrorKind] = {
    "authentication_failed": ErrorKind.AUTHENTICATION,
    "billing_error": ErrorKind.BILLING,
    "rate_limit": ErrorKind.RATE_LIMITED,
    "invalid_request": ErrorKind.INVALID_REQUEST,
    "server_error": ErrorKind.SERVER,
    "max_output_tokens": ErrorKind.MAX_OUTPUT_TOKENS,
    "unknown": ErrorKind.UNKNOWN,
}

# Messages API stop_reason → AI SDK finishReason.
FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool-calls",
    "refusal": "content-filter",
}

# A "successful" CLI result whose text is really an error (DESIGN lessons 5 and 9) starts so.
_CLI_ERROR_PREFIXES = (
    "prompt is too long",
    "you've hit your limit",
    "you have hit your limit",
    "claude ai usage limit reached",
    "api error:",
    "invalid api key",
    "credit balance is too low",
)


# The CLI prefixes a PreToolUse denial reason with "PreToolUse:<Tool> hook error: ".
_HOOK_PREFIX_RE = re.compile(r"^\s*PreToolUse:[\w.-]+ hook error:\s*")


def looks_like_cli_error(text: str | None) -> bool:
    head = (text or "").strip().lower()
    return head.startswith(_CLI_ERROR_PREFIXES)


def tool_result_text(content: Any) -> str:
    """A tool_result's content (str or content blocks) as plain text."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for block in content:
            if isinstance(block, dict):
                if block.get("type") == "text":
                    parts.append(str(block.get("text", "")))
                elif block.get("type") == "image":
                    parts.append("[image]")
            else:
                parts.append(str(block))
        return "\n".join(parts)
    return str(content)


def error_from_rate_limit(event: RateLimitEvent) -> AgentError | None:
    info = event.rate_limit_info
    if info.status != "rejected":
        return None
    resets_at = None
    retry_after = None
    if info.resets_at:
        resets_at = dt.datetime.fromtimestamp(int(info.resets_at), tz=dt.UTC)
        retry_after = max(0.0, (resets_at - dt.datetime.now(dt.UTC)).total_seconds())
    return AgentError(
        ErrorKind.RATE_LIMITED,
        detail=f"rate_limit_event rejected ({info.rate_limit_type or 'unknown window'})",
        resets_at=resets_at,
        retry_after=retry_after,
    )


class SdkTranslator:
    """Per-turn state of the SDK-message → chunk translation (see the module docstring)."""

    def __init__(self, *, breaker: Any = None, on_tool_finished: Any = None, user_denied: Any = None) -> None:
        self.breaker = breaker  # agents.sandbox.EmptyInputBreaker (record(name, input) may raise)
        self.on_tool_finished = on_tool_finished  # callable(tool_use_id) (sub-agent slots)
        # callable(tool_use_id) -> bool: the user denied that call (tool approval): its error
        # result is shown as ``tool-output-denied``
        self.user_denied = user_denied
        self.session_id: str | None = None
        # the model calls' stream events (shared with the api backend): text, reasoning, tool
        # inputs, server tools, citations, usage, stop_reason; one per turn, so each tool call's
        # chunks go out once whichever of stream event / whole message shows it first
        self.stream = StreamTranslator(show_unparsed_input=True)
        self.result: ResultMessage | None = None
        self.step_boundaries = 0  # model calls finished so far (the backend runs step checks)
        self._step_open = False
        self._finish_pending = False  # the step's model call ended with tool_use; awaiting results
        self._streamed: set[str] = set()  # ids of the messages that streamed (their whole copy is skipped)
        self._tool_names: dict[str, str] = {}
        self._step_tools: set[str] = set()  # tool calls of the current step without a result yet
        self._assistant_error: tuple[str, str] | None = None  # (error code, text)
        self._rate_limit_error: AgentError | None = None
        self.refused = False  # a model call of this turn ended with stop_reason "refusal"
        self.context_exceeded = False  # … with "model_context_window_exceeded"
        self._compacting = False  # a CLI compaction was announced and has not ended yet
        self.compactions = 0  # compact boundaries seen (CLI-side compaction)

    @property
    def usage(self) -> Usage:
        """Summed per finished model call (final totals come with the result)."""
        return self.stream.usage

    @property
    def stop_reason(self) -> str | None:
        """The latest model call's stop_reason."""
        return self.stream.stop_reason

    # -- public ------------------------------------------------------------------------------
    def feed(self, message: Any) -> list[Chunk]:
        if isinstance(message, StreamEvent):
            self.session_id = self.session_id or message.session_id
            if message.parent_tool_use_id:
                return []
            return self._stream_event(message.event)
        if isinstance(message, AssistantMessage):
            self.session_id = self.session_id or message.session_id
            if message.parent_tool_use_id:
                return []
            return self._assistant(message)
        if isinstance(message, UserMessage):
            if message.parent_tool_use_id:
                return []
            return self._user(message)
        if isinstance(message, ResultMessage):
            self.result = message
            self.session_id = message.session_id or self.session_id
            return []
        if isinstance(message, RateLimitEvent):
            self.session_id = self.session_id or message.session_id
            error = error_from_rate_limit(message)
            if error is not None:
                self._rate_limit_error = error
            return []
        if isinstance(message, SystemMessage):
            if message.subtype == "init":
                self.session_id = message.data.get("session_id") or self.session_id
            elif message.subtype == "status" and message.data.get("status") == "compacting":
                return self.compaction_started()
            elif message.subtype == "status" and message.data.get("compact_result"):
                self._compacting = False  # finished (a failed compaction has no boundary)
            elif message.subtype == "compact_boundary":
                self._compacting = False
                self.compactions += 1
                return [events.status("compacted", "Conversation compacted. Continuing…")]
            return []
        return []

    def compaction_started(self) -> list[Chunk]:
        """The CLI started compacting its context (PreCompact hook or a ``compacting`` status):
        one ``data-status`` per compaction, never text (nothing of it is part of the answer)."""
        if self._compacting:
            return []
        self._compacting = True
        return [events.status("compacting", "Compacting conversation…")]

    def finish(self) -> list[Chunk]:
        """Close what is still open at the end of the stream (every open tool call included)."""
        out = self._close_blocks()
        self.stream.flush_usage()  # a model call cut short (stop, drop): count what it reported
        tools = self.stream
        for tid in list(tools.tool_started | tools.tool_available):
            if tid not in tools.tool_done:
                if tid not in tools.tool_available:
                    out += self._tool_available_chunk(tid, tools.tool_input(tid))
                tools.tool_done.add(tid)
                out.append(events.tool_output_error(tid, TOOL_NOT_FINISHED))
        self._step_tools.clear()
        out += self._finish_step()
        return out

    @property
    def finish_reason(self) -> str:
        if self.refused:  # the CLI answers a refusal by asking the model to go on: still a refusal
            return "content-filter"
        return FINISH_REASONS.get(self.stop_reason or "end_turn", "other")

    def _completed_despite_diagnostic(self, result: ResultMessage) -> bool:
        """The CLI's ``error_during_execution`` with only ``[ede_diagnostic]`` notes although the
        model call completed (``terminal_reason: completed``, ``end_turn``/``pause_turn``): it
        reports so when the last content block is of a type it does not know (a newer server
        block, ``web_search_tool_result`` after a pause). The answer stands."""
        errors = getattr(result, "errors", None) or []
        return (
            result.subtype == "error_during_execution"
            and getattr(result, "terminal_reason", None) == "completed"
            and not getattr(result, "api_error_status", None)
            and (result.stop_reason or self.stop_reason) in ("end_turn", "pause_turn", "stop_sequence")
            and self._assistant_error is None
            and all(str(e).startswith("[ede_diagnostic]") for e in errors)
        )

    def error(self) -> AgentError | None:
        """The failure the CLI reported for this turn, classified; ``None`` when it succeeded."""
        result = self.result
        text = ""
        if self._assistant_error is not None:
            text = self._assistant_error[1]
        if result is not None and result.result:
            text = result.result
        if (
            self.context_exceeded
            and self._assistant_error is not None
            or (result is not None and result.stop_reason == "model_context_window_exceeded")
        ):
            return AgentError(
                ErrorKind.PROMPT_TOO_LONG,
                detail=scrub(text or "stop_reason model_context_window_exceeded")[:500],
            )
        if result is not None and result.is_error and self._completed_despite_diagnostic(result):
            log.info("CLI result error_during_execution after a completed answer ignored: %s", result.errors)
            return None
        if result is not None and result.is_error:
            return self._classify(result, text)
        if (
            result is not None
            and looks_like_cli_error(result.result)
            and not self._produced_text_matching(result.result)
        ):
            # A "successful" result whose text is an error (lessons 5 and 9).
            found = classify_text(result.result or "")
            if found is not None:
                return found
        if self._rate_limit_error is not None and (result is None or result.is_error):
            return self._rate_limit_error
        if self._assistant_error is not None:
            return self._classify(result, text)
        return None

    # -- classification ----------------------------------------------------------------------
    def _classify(self, result: ResultMessage | None, text: str) -> AgentError:
        text = scrub(text or "")
        status = getattr(result, "api_error_status", None) if result is not None else None
        reason = getattr(result, "terminal_reason", None) if result is not None else None
        if reason == "prompt_too_long":
            return AgentError(ErrorKind.PROMPT_TOO_LONG, detail=text[:500], status_code=status)
        if self._rate_limit_error is not None:
            return self._rate_limit_error
        by_text = classify_text(text)
        if (
            by_text is not None
            and by_text.kind in (ErrorKind.PROMPT_TOO_LONG, ErrorKind.RATE_LIMITED)
            and by_text.resets_at
        ):
            return by_text
        if status:
            error = classify_status(int(status), text)
            if error.kind == ErrorKind.RATE_LIMITED and by_text is not None and by_text.resets_at:
                return by_text
            return error
        if by_text is not None:
            return by_text
        if self._assistant_error is not None:
            kind = ASSISTANT_ERROR_KINDS.get(self._assistant_error[0], ErrorKind.UNKNOWN)
            return AgentError(kind, detail=text[:500])
        subtype = getattr(result, "subtype", "") if result is not None else ""
        if subtype == "error_max_turns":
            return AgentError(
                ErrorKind.UNKNOWN,
                detail="the CLI reached its max turns",
                message="The agent used its maximum number of steps for one turn. Ask it to continue.",
            )
        return AgentError(ErrorKind.UNKNOWN, detail=(text or f"CLI result {subtype or 'error'}")[:500])

    def _produced_text_matching(self, text: str | None) -> bool:
        """True when the model itself streamed this text (then it is an answer, not an error)."""
        return bool(text) and text.strip() == self.stream.message_text().strip()

    # -- stream events -----------------------------------------------------------------------
    def _stream_event(self, event: dict[str, Any]) -> list[Chunk]:
        """A raw Messages API event: translated by ``StreamTranslator``; what is SDK-specific
        here is the step bookkeeping (a step waits for its tool results) and the policy checks."""
        kind = event.get("type")
        out: list[Chunk] = []
        if kind == "message_start":
            out = self._finish_step()
            self._step_open = True
        elif kind == "content_block_start":
            out = self._ensure_step()
        out += self._seen(self.stream.feed(event))
        if kind == "message_start":
            self._streamed.add(self.stream.message_id)
        elif kind == "message_delta" and self.stream.stop_reason:
            self.refused = self.refused or self.stream.stop_reason == "refusal"
            self.context_exceeded = (
                self.context_exceeded or self.stream.stop_reason == "model_context_window_exceeded"
            )
        elif kind == "message_stop":
            self.step_boundaries += 1
            if self._step_tools:
                self._finish_pending = True  # finish-step once the tool results are in
            else:
                out += self._finish_step()
        return out

    def _seen(self, chunks: list[Chunk]) -> list[Chunk]:
        """Notes the tool calls the translator showed: a step's open calls, their names, and the
        empty-input breaker for each complete client tool call (may raise AgentError(POLICY))."""
        for chunk in chunks:
            kind = chunk["type"]
            if kind == "tool-input-start":
                self._tool_names[chunk["toolCallId"]] = chunk["toolName"]
                if not chunk.get("providerExecuted"):
                    self._step_tools.add(chunk["toolCallId"])
            elif (
                kind == "tool-input-available"
                and not chunk.get("providerExecuted")
                and self.breaker is not None
            ):
                self.breaker.record(chunk["toolName"], chunk["input"])
        return chunks

    def _close_blocks(self) -> list[Chunk]:
        return self._seen(self.stream.close_open_blocks())

    # -- steps -------------------------------------------------------------------------------
    def _ensure_step(self) -> list[Chunk]:
        if self._step_open:
            return []
        self._step_open = True
        return [events.start_step()]

    def _finish_step(self) -> list[Chunk]:
        if not self._step_open:
            self._finish_pending = False
            return []
        out = self._close_blocks()
        self._step_open = False
        self._finish_pending = False
        self._step_tools.clear()
        return out + [events.finish_step()]

    # -- tools -------------------------------------------------------------------------------
    def _tool_start(self, tid: str) -> list[Chunk]:
        if tid in self.stream.tool_started:
            return []
        self.stream.tool_started.add(tid)
        self._step_tools.add(tid)
        return [events.tool_input_start(tid, self._tool_names.get(tid, ""))]

    def _tool_available_chunk(self, tid: str, tool_input: Any) -> list[Chunk]:
        if tid in self.stream.tool_available:
            return []
        out = self._ensure_step() + self._tool_start(tid)
        self.stream.tool_available.add(tid)
        name = self._tool_names.get(tid, "")
        out.append(events.tool_input_available(tid, name, tool_input))
        if self.breaker is not None:
            self.breaker.record(name, tool_input)  # may raise AgentError(POLICY)
        return out

    # -- whole messages ----------------------------------------------------------------------
    def _assistant(self, message: AssistantMessage) -> list[Chunk]:
        if message.error or message.model == SYNTHETIC_MODEL:
            text = " ".join(b.text for b in message.content if isinstance(b, TextBlock))
            if message.error:
                self._assistant_error = (str(message.error), text)
            elif looks_like_cli_error(text):
                self._assistant_error = ("unknown", text)
            return []
        streamed = message.message_id is not None and message.message_id in self._streamed
        out: list[Chunk] = []
        for index, block in enumerate(message.content):
            if isinstance(block, ToolUseBlock):
                self._tool_names.setdefault(block.id, block.name)
                if not self._tool_names[block.id]:
                    self._tool_names[block.id] = block.name
                out += self._tool_available_chunk(block.id, block.input)
            elif streamed:
                continue
            elif isinstance(block, TextBlock) and block.text:
                pid = f"text-{message.message_id or message.uuid}-{index}"
                out += self._ensure_step() + [
                    events.text_start(pid),
                    events.text_delta(pid, block.text),
                    events.text_end(pid),
                ]
            elif isinstance(block, ThinkingBlock) and block.thinking:
                pid = f"reasoning-{message.message_id or message.uuid}-{index}"
                out += self._ensure_step() + [
                    events.reasoning_start(pid),
                    events.reasoning_delta(pid, block.thinking),
                    events.reasoning_end(pid),
                ]
        return out

    def _user(self, message: UserMessage) -> list[Chunk]:
        if not isinstance(message.content, list):
            return []
        out: list[Chunk] = []
        for block in message.content:
            if not isinstance(block, ToolResultBlock):
                continue
            tid = block.tool_use_id
            tools = self.stream
            if tid in tools.tool_done or tid not in (tools.tool_started | tools.tool_available):
                continue
            if tid not in tools.tool_available:
                out += self._tool_available_chunk(tid, tools.tool_input(tid))
            tools.tool_done.add(tid)
            self._step_tools.discard(tid)
            text = scrub(tool_result_text(block.content))
            if block.is_error:
                text = _HOOK_PREFIX_RE.sub("", text)
            if block.is_error and self.user_denied is not None and self.user_denied(tid):
                out.append(events.tool_output_denied(tid))
            elif block.is_error:
                out.append(events.tool_output_error(tid, text or "The tool failed."))
            else:
                out.append(events.tool_output_available(tid, text))
            if self.on_tool_finished is not None:
                self.on_tool_finished(tid)
        if self._finish_pending and not self._step_tools:
            out += self._finish_step()
        return out

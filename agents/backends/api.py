"""The ``api`` backend: the anthropic async client streaming the Messages API, with the tool loop
run in-process (agents.tools, confined by agents.sandbox).

``ApiBackend().stream(inp, result)`` yields content chunks only (start-step, text-*,
reasoning-*, tool-input-*, tool-output-*, finish-step) and raises ``AgentError`` (or the client's
exceptions, classified by the runtime) on failure. Retries, heartbeats, usage and the terminal
chunk belong to ``agents.runtime.run_turn``.

- History (UI parts) → Messages API messages: one assistant UI message becomes alternating
  assistant/user(tool_result) messages per step, consecutive same-role messages are merged and
  every tool_result is kept right after its own tool_use (DESIGN lesson 4).
- Prompt caching: ``cache_control`` on the last tool, the system prompt and the newest message.
- Parallel tool_use blocks run concurrently; their results go back in one user message.
- Usage is summed over every model call of the turn into ``result.usage``.
- ``inp.stop`` is raced against every stream event (``_StopGuard``) and against running tools.
- One shared ``AsyncAnthropic`` per event loop and endpoint (``agents.model_client``); the
  stream's raw server-sent events are parsed with ``json.loads`` (no typed model per delta).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import anthropic

from agents import events
from agents.adapter import CUT_TOOL_CALL
from agents.approval import PLAN_APPROVED_TEXT, PLAN_MODE_PROMPT, PLAN_TOOL, PLAN_TOOL_SCHEMA, ApprovalAnswer
from agents.attachments import prepare_attachments
from agents.config import agent_config, system_prompt_compose
from agents.errors import AgentError, ErrorKind
from agents.events import Chunk
from agents.mcp_client import McpHub
from agents.model_client import model_client
from agents.sandbox import EmptyInputBreaker, SubagentLimiter
from agents.tools import TOOL_SCHEMAS, ToolOutcome, run_tool
from agents.translate import StreamTranslator
from agents.turn import HistoryMessage, TurnInput, TurnResult

log = logging.getLogger(__name__)

CACHE = {"type": "ephemeral"}
UNFINISHED_TOOL = "Tool call did not finish."


class _Stopped(Exception):
    """inp.stop was set while waiting."""


# ------------------------------------------------------------------------------------------------
# History
# ------------------------------------------------------------------------------------------------


def _tool_name(part: dict[str, Any]) -> str | None:
    kind = str(part.get("type", ""))
    if kind == "dynamic-tool":
        return str(part.get("toolName") or "tool")
    if kind.startswith("tool-") and part.get("toolCallId"):
        return kind[len("tool-") :]
    return None


def _output_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def _user_content(parts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    content: list[dict[str, Any]] = []
    for part in parts:
        kind = part.get("type")
        if kind == "text" and str(part.get("text", "")).strip():
            content.append({"type": "text", "text": str(part["text"])})
        elif kind == "file":
            name = part.get("filename") or "file"
            content.append(
                {"type": "text", "text": f"[attached earlier: {name} ({part.get('mediaType', '')})]"}
            )
    return content


def _assistant_messages(parts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One assistant UI message → assistant / user(tool_result) messages, one pair per step."""
    out: list[dict[str, Any]] = []
    content: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []

    def flush() -> None:
        nonlocal content, results
        if content:
            out.append({"role": "assistant", "content": content})
        if results:
            out.append({"role": "user", "content": results})
        content, results = [], []

    for part in parts:
        kind = part.get("type")
        name = _tool_name(part)
        if name is not None and (
            part.get("providerExecuted") or str(part.get("toolCallId", "")).startswith("srvtoolu_")
        ):
            continue  # a server tool (web search) the API ran itself: not a tool_use of ours
        if name is not None:
            tool_id = str(part["toolCallId"])
            tool_input = part.get("input")
            content.append(
                {
                    "type": "tool_use",
                    "id": tool_id,
                    "name": name,
                    "input": tool_input if isinstance(tool_input, dict) else {},
                }
            )
            state = part.get("state")
            if state == "output-available":
                results.append(
                    {
                        "type": "tool_result",
                        "tool_use_id": tool_id,
                        "content": _output_text(part.get("output")),
                    }
                )
            else:
                if state == "output-error":
                    error = part.get("errorText")
                elif state == "output-denied":  # the user said no (agents/approval.py)
                    approval = part.get("approval") if isinstance(part.get("approval"), dict) else {}
                    error = ApprovalAnswer(
                        approved=False, reason=str(approval.get("reason") or "")
                    ).denial_text(name)
                else:
                    error = UNFINISHED_TOOL
                results.append(
                    {
                        "type": "tool_result",
                        "tool_use_id": tool_id,
                        "content": str(error or UNFINISHED_TOOL),
                        "is_error": True,
                    }
                )
        elif kind == "text" and str(part.get("text", "")).strip():
            if results:  # text after tool results: the next step
                flush()
            content.append({"type": "text", "text": str(part["text"])})
        elif kind == "step-start" and results:
            flush()
    flush()
    return out


def _merge(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    merged: list[dict[str, Any]] = []
    for message in messages:
        if not message["content"]:
            continue
        if merged and merged[-1]["role"] == message["role"]:
            merged[-1] = {"role": message["role"], "content": merged[-1]["content"] + message["content"]}
        else:
            merged.append({"role": message["role"], "content": list(message["content"])})
    # tool_result blocks must come first in a user message
    for message in merged:
        if message["role"] == "user":
            message["content"].sort(key=lambda b: 0 if b.get("type") == "tool_result" else 1)
    return merged


def _repair_pairs(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every tool_use answered in the next user message; no tool_result without its tool_use."""
    out: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        if message["role"] == "user":
            previous = out[-1] if out and out[-1]["role"] == "assistant" else None
            wanted = (
                {b["id"] for b in previous["content"] if b.get("type") == "tool_use"} if previous else set()
            )
            content = [
                b
                for b in message["content"]
                if b.get("type") != "tool_result" or b.get("tool_use_id") in wanted
            ]
            if content:
                out.append({"role": "user", "content": content})
            continue
        out.append(message)
        uses = [b["id"] for b in message["content"] if b.get("type") == "tool_use"]
        if uses:
            following = (
                messages[index + 1]
                if index + 1 < len(messages) and messages[index + 1]["role"] == "user"
                else None
            )
            answered = {b.get("tool_use_id") for b in following["content"]} if following else set()
            missing = [
                {"type": "tool_result", "tool_use_id": tid, "content": UNFINISHED_TOOL, "is_error": True}
                for tid in uses
                if tid not in answered
            ]
            if missing:
                if following is None:
                    messages.insert(index + 1, {"role": "user", "content": missing})
                else:
                    following["content"][:0] = missing
    return _merge(out)


def history_to_messages(history: list[HistoryMessage]) -> list[dict[str, Any]]:
    """Persisted UI messages → valid Messages API messages (DESIGN lesson 4)."""
    messages: list[dict[str, Any]] = []
    for item in history:
        if (item.kind or "normal") != "normal":
            continue  # error / stopped markers are notes for the user, not turns for the model
        if item.role == "user":
            messages.append({"role": "user", "content": _user_content(item.parts)})
        elif item.role == "assistant":
            messages.extend(_assistant_messages(item.parts))
    messages = _repair_pairs(_merge(messages))
    if messages and messages[0]["role"] != "user":
        messages.insert(
            0, {"role": "user", "content": [{"type": "text", "text": "(conversation continues)"}]}
        )
    return messages


def _text_of(item: HistoryMessage) -> str:
    return "".join(str(p.get("text", "")) for p in item.parts if p.get("type") == "text")


# ------------------------------------------------------------------------------------------------
# Backend
# ------------------------------------------------------------------------------------------------


class ApiBackend:
    def __init__(self) -> None:
        self._prepared: tuple[list[dict[str, Any]], str] | None = None
        self._sources: set[str] = set()
        self._mcp: McpHub | None = None  # this turn's MCP sessions, while it streams

    def _new_user_message(self, inp: TurnInput) -> dict[str, Any]:
        if self._prepared is None:  # once per turn, not once per retry
            self._prepared = prepare_attachments(inp.workspace, list(inp.attachments))
        blocks, note = self._prepared
        text = inp.user_text or ""
        if note:
            text = f"{text}\n\n{note}" if text else note
        content = list(blocks)
        if text.strip():
            content.append({"type": "text", "text": text})
        if not content:
            raise AgentError(
                ErrorKind.INVALID_REQUEST, detail="empty user message", message="The message is empty."
            )
        return {"role": "user", "content": content}

    def build_messages(self, inp: TurnInput) -> list[dict[str, Any]]:
        history = list(inp.history)
        if (
            history
            and history[-1].role == "user"
            and _text_of(history[-1]).strip() == (inp.user_text or "").strip()
        ):
            history = history[:-1]  # the new message was already persisted into the history
        return _merge(history_to_messages(history) + [self._new_user_message(inp)])

    @staticmethod
    def request_params(
        inp: TurnInput, messages: list[dict[str, Any]], mcp: McpHub | None = None
    ) -> dict[str, Any]:
        config = agent_config()
        # The server's prompt plus the chat's own instructions (per-chat settings, docs/api.md).
        system_prompt = system_prompt_compose(inp.system_prompt or config.system_prompt, inp.instructions)
        tools = copy.deepcopy(TOOL_SCHEMAS)
        if mcp is not None:  # the chat's MCP servers' tools (mcp__<server>__<tool>)
            tools += copy.deepcopy(mcp.tool_schemas())
            if mcp.problems_note():
                system_prompt = f"{system_prompt}\n\n{mcp.problems_note()}".strip()
        if inp.tools.planning:  # plan mode: the plan is proposed through ExitPlanMode
            tools.append(copy.deepcopy(PLAN_TOOL_SCHEMA))
            system_prompt = f"{system_prompt}\n\n{PLAN_MODE_PROMPT}".strip()
        tools[-1]["cache_control"] = CACHE
        request_messages = list(messages)
        # the newest user message (a pause_turn continuation ends with the assistant's turn)
        at = max(
            (i for i, m in enumerate(request_messages) if m["role"] == "user"),
            default=len(request_messages) - 1,
        )
        last = dict(request_messages[at])
        last["content"] = [dict(b) for b in last["content"]]
        last["content"][-1]["cache_control"] = CACHE
        request_messages[at] = last
        params: dict[str, Any] = {
            "model": inp.model,
            "max_tokens": config.max_output_tokens,
            "tools": tools,
            "messages": request_messages,
        }
        if system_prompt:
            params["system"] = [{"type": "text", "text": system_prompt, "cache_control": CACHE}]
        budget = config.thinking_budget
        if budget > 0:
            params["thinking"] = {"type": "enabled", "budget_tokens": budget}
            params["max_tokens"] = max(params["max_tokens"], budget + 1024)
        return params

    async def stream(self, inp: TurnInput, result: TurnResult) -> AsyncIterator[Chunk]:
        messages = self.build_messages(inp)
        max_steps = inp.max_steps or agent_config().max_turns  # the chat's step limit, else the server's
        breaker = EmptyInputBreaker()
        limiter = SubagentLimiter()
        result.model = inp.model
        stop_task = asyncio.ensure_future(inp.stop.wait())
        client = model_client()  # shared per loop + endpoint (agents.model_client)
        self._mcp = McpHub(list(inp.mcp_servers), inp.workspace) if inp.mcp_servers else None
        try:
            if self._mcp is not None:
                # The chat's MCP servers, for this turn (agents/mcp_client.py); one that cannot
                # start is left out, and the user and the model are told why.
                await self._mcp.start()
                if self._mcp.problems_note():
                    yield events.status("mcp-unavailable", self._mcp.problems_note())
            for step in range(max_steps):
                if step > 0 and inp.step_check is not None:
                    await inp.step_check(result.usage)
                if inp.stop.is_set():
                    result.stopped = True
                    return
                content: list[dict[str, Any]] = []
                state: dict[str, Any] = {}
                async for chunk in self._one_call(client, inp, result, messages, content, state, stop_task):
                    yield chunk
                if state.get("stopped"):
                    result.stopped = True
                    return
                stop_reason = state.get("stop_reason")
                tool_uses = [b for b in content if b["type"] == "tool_use"]
                if stop_reason == "max_tokens":
                    for block in tool_uses:  # a call cut by the output limit never runs
                        yield events.tool_output_error(block["id"], CUT_TOOL_CALL)
                    yield events.finish_step()
                    raise AgentError(ErrorKind.MAX_OUTPUT_TOKENS, detail="stop_reason max_tokens")
                if stop_reason == "model_context_window_exceeded":
                    # the context filled up while answering: the runtime's recovery ladder shortens
                    # the history when nothing reached the user yet (docs/agents.md)
                    yield events.finish_step()
                    raise AgentError(
                        ErrorKind.PROMPT_TOO_LONG,
                        detail="stop_reason model_context_window_exceeded",
                        message="The conversation filled the model's context window.",
                    )
                if stop_reason == "pause_turn":
                    # A long server-tool turn paused: send it back as is and the API continues it.
                    yield events.finish_step()
                    messages.append({"role": "assistant", "content": content})
                    continue
                if stop_reason != "tool_use" or not tool_uses:
                    yield events.finish_step()
                    result.finish_reason = (
                        "stop"
                        if stop_reason in ("end_turn", "stop_sequence", None)
                        else ("content-filter" if stop_reason == "refusal" else "stop")
                    )
                    return
                for block in tool_uses:
                    if block["id"] in state.get("cut", ()):  # invalid JSON: shown now, run with {}
                        yield events.tool_input_available(block["id"], block["name"], block["input"])
                    breaker.record(block["name"], block["input"])
                # Tool approval (agents/approval.py): each call is allowed, refused, or waits
                # for the user's answer, one at a time; then the allowed ones run concurrently.
                gated: list[ToolOutcome | None] = []
                for block in tool_uses:
                    gated.append(await self._gate(inp, block))
                    if inp.stop.is_set():
                        result.stopped = True
                        return
                ran = await self._run_tools(
                    inp, [b for b, g in zip(tool_uses, gated) if g is None], limiter, stop_task
                )
                if ran is None:
                    result.stopped = True
                    return
                ran_outcomes = iter(ran)
                outcomes = [g if g is not None else next(ran_outcomes) for g in gated]
                for block, outcome in zip(tool_uses, outcomes, strict=True):
                    if outcome.denied:
                        yield events.tool_output_denied(block["id"])
                    elif outcome.is_error:
                        yield events.tool_output_error(block["id"], outcome.output)
                    else:
                        yield events.tool_output_available(block["id"], outcome.output)
                yield events.finish_step()  # a step = one model call plus its tool executions
                over = next((o for o in outcomes if o.over_quota), None)
                if over is not None:  # the workspace quota (agents/jail.py) ends the turn
                    raise AgentError(
                        ErrorKind.POLICY,
                        detail="workspace quota exceeded",
                        message=over.output.rsplit("\n\n", 1)[-1],
                    )
                messages.append({"role": "assistant", "content": content})
                messages.append(
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "tool_result",
                                "tool_use_id": b["id"],
                                "content": o.output or "(no output)",
                                **({"is_error": True} if o.is_error else {}),
                            }
                            for b, o in zip(tool_uses, outcomes, strict=True)
                        ],
                    }
                )
            raise AgentError(
                ErrorKind.POLICY,
                detail=f"{'max_steps' if inp.max_steps else 'AGENT_MAX_TURNS'}={max_steps} reached",
                message=f"The agent stopped after {max_steps} steps without finishing. "
                "Ask it to continue if needed.",
            )
        finally:
            stop_task.cancel()
            if self._mcp is not None:
                await self._mcp.close()
                self._mcp = None

    @staticmethod
    async def _gate(inp: TurnInput, block: dict[str, Any]) -> ToolOutcome | None:
        """None when the call may run; else its outcome without running it (refused by the rules,
        denied by the user, or ``ExitPlanMode`` answered)."""
        name = block["name"]
        decision = inp.tools.decide(name)
        if decision == "allow":
            return None
        if decision == "deny":
            return ToolOutcome(inp.tools.denial_text(name), is_error=True)
        if inp.approve is None:
            return ToolOutcome(
                f"{name} needs the user's approval, and nobody can answer here.", is_error=True
            )
        tool_input = block["input"] if isinstance(block["input"], dict) else {}
        answer = await inp.approve(block["id"], name, tool_input)
        if not answer.approved:
            return ToolOutcome(answer.denial_text(name), is_error=True, denied=not answer.stopped)
        if name == PLAN_TOOL:
            inp.tools.plan_approved()
            return ToolOutcome(PLAN_APPROVED_TEXT)
        return None

    async def _run_tools(
        self,
        inp: TurnInput,
        tool_uses: list[dict[str, Any]],
        limiter: SubagentLimiter,
        stop_task: asyncio.Future[Any],
    ) -> list[ToolOutcome] | None:
        """Run the tool calls concurrently; None when stopped meanwhile (tools are cancelled)."""
        if inp.stop.is_set():
            return None
        if not tool_uses:
            return []
        gathered = asyncio.ensure_future(
            asyncio.gather(*(self._tool_run(inp, b["name"], b["input"], limiter) for b in tool_uses))
        )
        done, _ = await asyncio.wait({gathered, stop_task}, return_when=asyncio.FIRST_COMPLETED)
        if gathered in done:
            return list(gathered.result())
        gathered.cancel()
        with contextlib.suppress(BaseException):
            await gathered
        return None

    async def _tool_run(
        self, inp: TurnInput, name: str, tool_input: Any, limiter: SubagentLimiter
    ) -> ToolOutcome:
        """One tool call: an MCP tool on its server's session, any other in ``agents.tools``."""
        if self._mcp is not None and self._mcp.owns(name):
            outcome = await self._mcp.call(name, tool_input)
            return ToolOutcome(outcome.output, is_error=outcome.is_error)
        return await run_tool(inp.workspace, name, tool_input, limiter=limiter)

    async def _one_call(
        self,
        client: anthropic.AsyncAnthropic,
        inp: TurnInput,
        result: TurnResult,
        messages: list[dict[str, Any]],
        content: list[dict[str, Any]],
        state: dict[str, Any],
        stop_task: asyncio.Future[Any],
    ) -> AsyncIterator[Chunk]:
        """One streamed model call: yields its chunks, fills ``content`` (the assistant blocks)
        and ``state`` (stop_reason, cut, stopped), adds its usage to ``result.usage``. The
        events become chunks in ``agents.translate.StreamTranslator`` (shared with the sdk backend).

        The hot path reads the raw server-sent events (``json.loads`` of each ``data:``) instead
        of the SDK's typed events, which built pydantic models per delta (a quarter of the relay's
        CPU, docs/performance.md cause C); error events raise exactly as the SDK's iterator does.
        Stop is raced without a task per event: ``_StopGuard`` cancels the read in flight."""
        create = asyncio.ensure_future(
            client.messages.create(stream=True, **self.request_params(inp, messages, self._mcp))
        )
        done, _ = await asyncio.wait({create, stop_task}, return_when=asyncio.FIRST_COMPLETED)
        if create not in done:
            create.cancel()
            with contextlib.suppress(BaseException):
                stream = await create
                await stream.close()
            state["stopped"] = True
            return
        stream = create.result()
        translator = StreamTranslator(sources=self._sources)  # cited sources: once per turn
        feed = translator.feed
        sse_events = _raw_events(stream)
        guard = _StopGuard(stop_task)
        stop_is_set = inp.stop.is_set
        loads = json.loads
        try:
            while True:
                if stop_is_set():  # stop wins even over an event that is already there
                    state["stopped"] = True
                    return
                guard.armed = True
                try:
                    sse = await sse_events.__anext__()
                except StopAsyncIteration:
                    break
                except asyncio.CancelledError:
                    if guard.fired and guard.task is not None and guard.task.uncancel() == 0:
                        state["stopped"] = True
                        return
                    raise
                finally:
                    guard.armed = False
                kind = sse.event
                if kind is None or kind == "ping" or not sse.data:
                    continue
                if kind == "error":
                    _raise_error_event(stream, sse)
                event = loads(sse.data)
                if "type" not in event:
                    event["type"] = kind
                for chunk in feed(event):
                    yield chunk
            if not translator.finished:
                raise AgentError(ErrorKind.CONNECTION, detail="the model stream ended before message_stop")
        finally:
            guard.close()
            result.usage.add(translator.flush_usage())
            content.extend(translator.content())
            state["stop_reason"] = translator.stop_reason
            state["cut"] = translator.cut
            with contextlib.suppress(BaseException):
                await sse_events.aclose()
            with contextlib.suppress(Exception):
                await stream.close()


class _StopGuard:
    """Cancels the current task's read in flight when ``stop_task`` completes while ``armed``
    (the ``asyncio.timeout`` pattern: the reader tells its own cancel apart with ``uncancel()``).
    One callback per model call instead of a task + ``asyncio.wait`` per stream event."""

    __slots__ = ("task", "stop_task", "armed", "fired")

    def __init__(self, stop_task: asyncio.Future[Any]) -> None:
        self.task = asyncio.current_task()
        self.stop_task = stop_task
        self.armed = False
        self.fired = False
        stop_task.add_done_callback(self._fire)

    def _fire(self, _: Any) -> None:
        if self.armed and not self.fired and self.task is not None and not self.task.done():
            self.fired = True
            self.task.cancel()

    def close(self) -> None:
        self.stop_task.remove_done_callback(self._fire)


def _raw_events(stream: Any) -> AsyncIterator[Any]:
    """The stream's server-sent events before the SDK parses them into typed models."""
    iter_events = getattr(stream, "_iter_events", None)
    if iter_events is not None:
        return iter_events()
    return anthropic.AsyncStream.raw_events(stream.response)


def _raise_error_event(stream: Any, sse: Any) -> None:
    """An ``event: error`` mid-stream raises the same APIStatusError the SDK's iterator would."""
    body: Any = sse.data
    try:
        body = sse.json()
        err_msg = f"{body}"
    except Exception:  # noqa: BLE001 - as the SDK does
        err_msg = sse.data or f"Error code: {stream.response.status_code}"
    raise stream._client._make_status_error(err_msg, body=body, response=stream.response)

"""The ``sdk`` backend: one turn through ``ClaudeSDKClient`` and the Claude Code CLI bundled in
the claude-agent-sdk wheel.

``SdkBackend().stream(inp, result)`` yields content chunks only (the runtime adds start, usage,
finish/error, heartbeats and retries), raises ``AgentError`` on failure and honours ``inp.stop``
(``client.interrupt()``, drain, ``result.stopped = True``).

Structure:

- A *driver task* owns the ``ClaudeSDKClient`` for the whole turn: it connects, sends the prompt,
  reads messages, interrupts on stop and disconnects — all in that one task, because the SDK
  keeps an anyio task group open from ``connect()`` to ``disconnect()`` and tearing it down from
  another task raises "cancel scope in a different task" (DESIGN lesson 10). ``stream()`` only
  reads a queue the driver fills, so whoever iterates it (the runtime wraps each ``__anext__`` in
  a task for heartbeats, lesson 1) can do so from any task, and the driver never has its own
  ``__anext__`` cancelled: it waits on it as a task with ``asyncio.wait``.
- ``agents.backends.sdk_adapter.SdkTranslator`` turns SDK messages into chunks and classifies the
  CLI's failures; ``agents.hooks.ToolPolicy`` is the PreToolUse hook / ``can_use_tool``.
- The CLI runs with ``cwd`` = the session workspace and ``HOME``, ``CLAUDE_CONFIG_DIR``,
  ``CLAUDE_CODE_TMPDIR``, ``TMPDIR`` and the XDG dirs inside it (lesson 3), secrets of this
  process blanked in its environment, non-essential traffic off, and its own API retries off
  (``CLAUDE_CODE_MAX_RETRIES=0`` by default): the runtime's retry matrix is the one place that
  retries, with backoff, status chunks for the user and never after content was sent.
- Keeping a session's CLI alive between turns (the performance follow-up) fits here: the driver
  would park its connected client in a pool keyed by session id with an idle expiry and accept the
  next turn's prompt instead of disconnecting. Today every turn starts one CLI process (~0.3-1 s)
  and resumes the session from its transcript (``resume=inp.agent_session_id``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import warnings
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from claude_agent_sdk import ClaudeAgentOptions, ClaudeSDKClient, HookMatcher, ResultMessage
from claude_agent_sdk._errors import CLIConnectionError, CLIJSONDecodeError, CLINotFoundError, ClaudeSDKError, ProcessError
from django.conf import settings

from agents.attachments import prepare_attachments
from agents.backends.sdk_adapter import SdkTranslator
from agents.config import model_endpoint
from agents.errors import AgentError, ErrorKind, classify_text, scrub
from agents.events import Chunk
from agents.hooks import ToolPolicy
from agents.sandbox import EmptyInputBreaker, SubagentLimiter, workspace_for
from agents.types import HistoryMessage, TurnInput, TurnResult

log = logging.getLogger(__name__)

# The bundled CLI's version is known; skip the SDK's extra `claude -v` process per connect.
os.environ.setdefault("CLAUDE_AGENT_SDK_SKIP_VERSION_CHECK", "1")

try:
    from claude_agent_sdk.types import CanUseToolShadowedWarning
except ImportError:  # older SDKs do not warn
    CanUseToolShadowedWarning = UserWarning  # type: ignore[assignment,misc]

# The CLI's base tool set (everything else, e.g. WebFetch/WebSearch/worktrees/cron, does not exist
# for the model), the ones pre-approved (each still passes the PreToolUse hook) and the ones never
# allowed. Task/Agent (sub-agents) are available but not pre-approved: can_use_tool decides,
# with the SubagentLimiter.
SDK_TOOLS = ["Bash", "Read", "Write", "Edit", "MultiEdit", "Glob", "Grep", "LS", "NotebookEdit", "TodoWrite", "Task", "Agent"]
SDK_ALLOWED_TOOLS = ["Bash", "Read", "Write", "Edit", "MultiEdit", "Glob", "Grep", "LS", "NotebookEdit", "TodoWrite"]
SDK_DISALLOWED_TOOLS = [
    "WebFetch", "WebSearch", "AskUserQuestion", "EnterPlanMode", "ExitPlanMode", "EnterWorktree", "ExitWorktree",
    "CronCreate", "CronDelete", "CronList", "ScheduleWakeup", "Monitor", "Workflow", "Skill", "SendMessage",
    "KillShell", "BashOutput",
]

DEFAULT_MAX_BUFFER_SIZE = 16 * 1024 * 1024  # one stdout JSON line (a big tool result) may be large
INTERRUPT_TIMEOUT_SECONDS = 5.0
STOP_DRAIN_SECONDS = 5.0
HISTORY_MAX_MESSAGES = 30
HISTORY_MAX_CHARS = 24_000

# Environment variables of this process that must not reach the CLI (and so its Bash tool).
_SECRET_ENV_RE = re.compile(
    r"SECRET|PASSWORD|PASSWD|TOKEN|API_KEY|ACCESS_KEY|PRIVATE_KEY|CREDENTIAL|DATABASE_URL|REDIS_URL|_DSN$|^AWS_|^GITHUB_|^GH_",
    re.IGNORECASE,
)
_TEARDOWN_NOISE = ("cancel scope", "different task", "contextvar", "token", "was created in a different context", "event loop is closed")


def cli_env(workspace: Path) -> dict[str, str]:
    """The CLI's environment overrides (merged by the SDK over this process's environment)."""
    endpoint = model_endpoint()
    home = workspace / "home"
    tmp = workspace / "tmp"
    for path in (home, tmp, home / ".claude"):
        path.mkdir(parents=True, exist_ok=True)
    env = {key: "" for key in os.environ if _SECRET_ENV_RE.search(key)}
    env.update(
        {
            "ANTHROPIC_BASE_URL": endpoint.base_url,
            "ANTHROPIC_API_KEY": endpoint.api_key,
            "ANTHROPIC_AUTH_TOKEN": "",
            "CLAUDE_CODE_OAUTH_TOKEN": "",
            "HOME": str(home),
            "CLAUDE_CONFIG_DIR": str(home / ".claude"),
            "CLAUDE_CODE_TMPDIR": str(tmp),
            "TMPDIR": str(tmp),
            "XDG_CONFIG_HOME": str(home / ".config"),
            "XDG_CACHE_HOME": str(home / ".cache"),
            "XDG_DATA_HOME": str(home / ".local" / "share"),
            "XDG_STATE_HOME": str(home / ".local" / "state"),
            # Offline, fast start: no telemetry, updates, error reports or other side traffic.
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "DISABLE_TELEMETRY": "1",
            "DISABLE_AUTOUPDATER": "1",
            "DISABLE_ERROR_REPORTING": "1",
            "DISABLE_BUG_COMMAND": "1",
            "DISABLE_FEEDBACK_SURVEY": "1",
            # The runtime owns retries (agents.retry); the CLI's own would multiply them (by default
            # 10 retries, ~3 minutes, on 429/5xx/529) and a non-streaming re-request after a broken
            # stream could repeat text the user already saw.
            "CLAUDE_CODE_MAX_RETRIES": str(int(getattr(settings, "AGENT_SDK_CLI_MAX_RETRIES", 0))),
            "CLAUDE_CODE_DISABLE_NONSTREAMING_FALLBACK": "1",
        }
    )
    # Operator/test knobs for the CLI (e.g. {"DISABLE_COMPACT": "1"} or
    # {"CLAUDE_CODE_AUTO_COMPACT_WINDOW": "100000"}); secrets never belong here.
    env.update({str(k): str(v) for k, v in (getattr(settings, "AGENT_SDK_EXTRA_ENV", None) or {}).items()})
    return env


def history_context(history: list[HistoryMessage]) -> str:
    """Earlier messages as a compact text for the system prompt, used when there is no CLI
    session to resume (first sdk turn after api turns, or a lost transcript)."""
    lines: list[str] = []
    for message in history[-HISTORY_MAX_MESSAGES:]:
        texts = []
        for part in message.parts:
            if part.get("type") == "text" and part.get("text"):
                texts.append(str(part["text"]))
            elif str(part.get("type", "")).startswith("tool-") and part.get("state") in ("output-available", "output-error"):
                name = str(part.get("type", ""))[5:]
                texts.append(f"[used tool {name}]")
        if texts:
            lines.append(f"{message.role.capitalize()}: {' '.join(texts)}")
    text = "\n".join(lines)
    if len(text) > HISTORY_MAX_CHARS:
        text = "…" + text[-HISTORY_MAX_CHARS:]
    return text


CONTEXT_TAG = "conversation_context"
FRESH_NOTE = "Earlier messages of this conversation (for context; answer the message that follows):"
GAP_NOTE = (
    "Messages of this conversation that happened after the last one you remember (they were "
    "handled elsewhere); take them into account and answer the message that follows:"
)


def context_block(history: list[HistoryMessage], note: str) -> str:
    """Earlier messages as a ``<conversation_context>`` text block for the prompt ("" if none).

    It goes into the user message (not the system prompt) so it is part of the CLI transcript and
    survives the next turn's resume."""
    earlier = history_context(history)
    if not earlier:
        return ""
    return f"<{CONTEXT_TAG}>\n{note}\n\n{earlier}\n</{CONTEXT_TAG}>"


def _without_new_message(inp: TurnInput) -> list[HistoryMessage]:
    """inp.history without markers and without the new user message (if it was included)."""
    history = [m for m in inp.history if (m.kind or "normal") == "normal" and m.parts]
    if history and history[-1].role == "user" and _text(history[-1]) == (inp.user_text or "").strip():
        history = history[:-1]
    return history


def _text(message: HistoryMessage) -> str:
    return "".join(str(p.get("text", "")) for p in message.parts if p.get("type") == "text").strip()


def transcript_gap(history: list[HistoryMessage], transcript_user_texts: list[str]) -> list[HistoryMessage]:
    """The DB messages the resumed transcript does not cover (the gap rule, docs/agents.md).

    The transcript covers the DB history up to the newest DB user message whose text is one of the
    transcript's user text blocks (exactly, or followed by the attachment note) and that message's
    answer. Everything after it is missing — turns that ran on the api backend, or a transcript
    mirror that lost a batch. No DB user message found at all: the whole history is missing."""
    blocks = [t.strip() for t in transcript_user_texts if t and t.strip()]
    last = -1
    for index, message in enumerate(history):
        text = _text(message)
        if message.role == "user" and text and any(b == text or b.startswith(text + "\n\n") for b in blocks):
            last = index
    if last < 0:
        return list(history)
    rest = history[last + 1 :]
    if rest and rest[0].role == "assistant":
        rest = rest[1:]
    return rest


def _entry_user_texts(entries: list[dict[str, Any]]) -> list[str]:
    texts: list[str] = []
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("type") != "user" or entry.get("isMeta") or entry.get("isCompactSummary"):
            continue
        content = (entry.get("message") or {}).get("content")
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            texts += [str(b.get("text", "")) for b in content if isinstance(b, dict) and b.get("type") == "text"]
    return texts


async def transcript_user_texts(inp: TurnInput, workspace: Path) -> list[str] | None:
    """The user texts of the CLI session ``inp.agent_session_id`` (from the session store when
    there is one, else the local JSONL under the workspace); None when it cannot be read."""
    from claude_agent_sdk import project_key_for_directory

    session_id = inp.agent_session_id
    if not session_id:
        return None
    project_key = project_key_for_directory(workspace)
    entries: list[dict[str, Any]] | None = None
    if inp.session_store is not None:
        try:
            entries = await inp.session_store.load({"project_key": project_key, "session_id": session_id})
        except Exception as exc:  # noqa: BLE001 - a gap check must never fail the turn
            log.info("cannot read transcript %s from the store: %s", session_id, scrub(str(exc))[:200])
    if not entries:
        path = workspace / "home" / ".claude" / "projects" / project_key / f"{session_id}.jsonl"
        try:
            lines = await asyncio.to_thread(path.read_text, encoding="utf-8")
        except OSError:
            return None
        entries = []
        for line in lines.splitlines():
            with contextlib.suppress(ValueError):
                entries.append(json.loads(line))
    return _entry_user_texts(entries or [])


def build_options(
    inp: TurnInput, workspace: Path, policy: ToolPolicy, *, resume: str | None, on_compact: Any = None
) -> ClaudeAgentOptions:
    system_prompt = inp.system_prompt or getattr(settings, "AGENT_SYSTEM_PROMPT", "")
    hooks = policy.hooks()
    if on_compact is not None:
        hooks["PreCompact"] = [HookMatcher(matcher=None, hooks=[on_compact])]
    return ClaudeAgentOptions(
        model=inp.model or settings.AGENT_MODEL,
        system_prompt=system_prompt,
        cwd=str(workspace),
        env=cli_env(workspace),
        tools=list(SDK_TOOLS),
        allowed_tools=list(SDK_ALLOWED_TOOLS),
        disallowed_tools=list(SDK_DISALLOWED_TOOLS),
        hooks=hooks,
        can_use_tool=policy.can_use_tool,
        include_partial_messages=True,
        max_buffer_size=int(getattr(settings, "AGENT_SDK_MAX_BUFFER_SIZE", DEFAULT_MAX_BUFFER_SIZE)),
        setting_sources=[],  # no user/project settings, hooks or CLAUDE.md from disk
        strict_mcp_config=True,
        verbatim_prompts=True,  # the user's "/tool …" is text, not a CLI slash command; no @file expansion
        max_turns=int(getattr(settings, "AGENT_MAX_TURNS", 40)) or None,
        resume=resume or None,
        session_store=inp.session_store,
        stderr=_log_stderr,
    )


def _log_stderr(line: str) -> None:
    log.debug("claude cli: %s", scrub(line.rstrip()))


def classify_sdk_exception(exc: BaseException) -> AgentError:
    """ProcessError / CLIConnectionError & co. as an AgentError."""
    if isinstance(exc, AgentError):
        return exc
    text = scrub(f"{exc} {getattr(exc, 'stderr', '') or ''}").strip()
    if isinstance(exc, CLINotFoundError):
        return AgentError(ErrorKind.UNKNOWN, detail=text[:500], message="The agent runtime is not installed correctly. Ask an operator.")
    found = classify_text(text)
    if found is not None:
        return found
    if isinstance(exc, CLIConnectionError):
        return AgentError(ErrorKind.CONNECTION, detail=text[:500])
    if isinstance(exc, (ProcessError, CLIJSONDecodeError, ClaudeSDKError)):
        return AgentError(ErrorKind.UNKNOWN, detail=f"{type(exc).__name__}: {text}"[:500])
    from agents.errors import classify_exception

    return classify_exception(exc)


async def _prompt_messages(text: str, blocks: list[dict[str, Any]], context: str = "") -> AsyncIterator[dict[str, Any]]:
    content: list[dict[str, Any]] = [{"type": "text", "text": context}] if context else []
    content += [{"type": "text", "text": text or " "}, *blocks]
    yield {"type": "user", "message": {"role": "user", "content": content}, "parent_tool_use_id": None}


class SdkBackend:
    async def stream(self, inp: TurnInput, result: TurnResult) -> AsyncIterator[Chunk]:
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        driver = asyncio.create_task(_drive(inp, result, queue), name=f"sdk-turn-{inp.session_id}")
        try:
            while True:
                kind, payload = await queue.get()
                if kind == "chunk":
                    yield payload
                elif kind == "error":
                    raise payload
                else:
                    return
        finally:
            if not driver.done():
                driver.cancel()
            # The driver disconnects the CLI in its own finally; give it a moment, never hang.
            with contextlib.suppress(BaseException):
                await asyncio.wait({driver}, timeout=10)


async def _drive(inp: TurnInput, result: TurnResult, queue: asyncio.Queue[tuple[str, Any]]) -> None:
    try:
        await _run_turn(inp, result, lambda chunk: queue.put_nowait(("chunk", chunk)))
    except asyncio.CancelledError:
        raise
    except BaseException as exc:  # noqa: BLE001 - handed to stream(), which raises it
        queue.put_nowait(("error", exc if isinstance(exc, AgentError) else classify_sdk_exception(exc)))
    else:
        queue.put_nowait(("done", None))


async def _open(options: ClaudeAgentOptions) -> ClaudeSDKClient:
    client = ClaudeSDKClient(options)
    with warnings.catch_warnings():
        # allowed_tools pre-approves the everyday tools on purpose (the PreToolUse hook still
        # gates every call), which the SDK warns about.
        warnings.simplefilter("ignore", CanUseToolShadowedWarning)
        await client.connect()
    return client


async def _connect(inp: TurnInput, workspace: Path, policy: ToolPolicy, on_compact: Any = None) -> tuple[ClaudeSDKClient, bool]:
    """(connected client, whether it resumed ``inp.agent_session_id``)."""
    resume = inp.agent_session_id or None
    try:
        return await _open(build_options(inp, workspace, policy, resume=resume, on_compact=on_compact)), bool(resume)
    except Exception as exc:
        if not resume:
            raise
        # The transcript to resume is gone (workspace wiped, other host): start afresh with the
        # history from the database as context in the prompt instead.
        log.info("cannot resume CLI session %s (%s); starting a new one", resume, scrub(str(exc))[:200])
    return await _open(build_options(inp, workspace, policy, resume=None, on_compact=on_compact)), False


async def _prompt_context(inp: TurnInput, workspace: Path, resumed: bool) -> str:
    """The ``<conversation_context>`` block this turn's prompt starts with ("" for none): the DB
    history for a fresh CLI session, the missing turns (gap) for a resumed one."""
    history = _without_new_message(inp)
    if not history:
        return ""
    if not resumed:
        return context_block(history, FRESH_NOTE)
    texts = await transcript_user_texts(inp, workspace)
    if texts is None:
        return ""
    gap = transcript_gap(history, texts)
    if gap:
        log.info("CLI session %s misses %d of %d messages; adding them as context", inp.agent_session_id, len(gap), len(history))
    return context_block(gap, GAP_NOTE)


async def _disconnect(client: ClaudeSDKClient) -> None:
    try:
        await client.disconnect()
    except BaseException as exc:  # noqa: BLE001 - teardown noise must never surface (lesson 10)
        if isinstance(exc, asyncio.CancelledError):
            log.debug("CLI disconnect cancelled")
            return
        text = str(exc).lower()
        level = logging.DEBUG if any(n in text for n in _TEARDOWN_NOISE) else logging.INFO
        log.log(level, "CLI teardown error ignored: %s: %s", type(exc).__name__, scrub(str(exc))[:300])


async def _run_turn(inp: TurnInput, result: TurnResult, emit: Any) -> None:
    workspace = Path(inp.workspace) if inp.workspace else workspace_for(inp.session_id)
    workspace.mkdir(parents=True, exist_ok=True)
    blocks, note = prepare_attachments(workspace, list(inp.attachments)) if inp.attachments else ([], "")
    text = inp.user_text if not note else f"{inp.user_text}\n\n{note}"
    policy = ToolPolicy(workspace, limiter=SubagentLimiter())
    translator = SdkTranslator(breaker=EmptyInputBreaker(), on_tool_finished=policy.finished)
    if inp.stop.is_set():
        result.stopped = True
        return

    async def on_compact(input_data: dict[str, Any], tool_use_id: str | None, context: Any) -> dict[str, Any]:
        # The CLI compacts its own context (PreCompact hook): tell the user, nothing else.
        for chunk in translator.compaction_started():
            emit(chunk)
        return {}

    client, resumed = await _connect(inp, workspace, policy, on_compact)
    loop = asyncio.get_running_loop()
    stop_wait = asyncio.ensure_future(inp.stop.wait())
    pending: asyncio.Future[Any] | None = None
    interrupted = False
    drain_deadline: float | None = None
    got_result = False
    checked_steps = 0
    try:
        context = await _prompt_context(inp, workspace, resumed)
        if blocks or context:
            await client.query(_prompt_messages(text, blocks, context))
        else:
            await client.query(text)
        messages = client.receive_messages().__aiter__()
        while True:
            if pending is None:
                pending = asyncio.ensure_future(messages.__anext__())
            waiting: set[asyncio.Future[Any]] = {pending} if interrupted else {pending, stop_wait}
            timeout = None if drain_deadline is None else max(0.0, drain_deadline - loop.time())
            done, _ = await asyncio.wait(waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if pending in done:
                task, pending = pending, None
                try:
                    message = task.result()
                except StopAsyncIteration:
                    break
                except Exception:
                    if interrupted:
                        log.debug("CLI stream error after stop ignored", exc_info=True)
                        break
                    raise
                for chunk in translator.feed(message):
                    emit(chunk)
                if translator.session_id:
                    result.agent_session_id = translator.session_id
                if isinstance(message, ResultMessage):
                    got_result = True
                    break
                if translator.step_boundaries > checked_steps and not interrupted:
                    checked_steps = translator.step_boundaries
                    result.usage = _copy_usage(translator.usage)
                    if inp.step_check is not None:
                        await inp.step_check(_copy_usage(translator.usage))  # AgentError ends the turn
                continue
            if not interrupted and stop_wait.done():
                interrupted = True
                result.stopped = True
                drain_deadline = loop.time() + STOP_DRAIN_SECONDS
                try:
                    await asyncio.wait_for(client.interrupt(), timeout=INTERRUPT_TIMEOUT_SECONDS)
                except Exception as exc:  # noqa: BLE001 - the disconnect below ends it anyway
                    log.debug("CLI interrupt failed: %s", exc)
                    break
                continue
            if drain_deadline is not None and loop.time() >= drain_deadline:
                log.info("CLI did not finish %.0fs after interrupt; disconnecting", STOP_DRAIN_SECONDS)
                break
    finally:
        stop_wait.cancel()
        if pending is not None and not pending.done():
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending
        await _disconnect(client)

    for chunk in translator.finish():
        emit(chunk)
    _fill_result(result, translator)
    if interrupted or inp.stop.is_set():
        result.stopped = True
        return
    error = translator.error()
    if error is not None:
        raise error
    if translator.stop_reason == "max_tokens":
        # Same as the api backend: the answer hit the output limit (never retried after content).
        raise AgentError(ErrorKind.MAX_OUTPUT_TOKENS, detail="stop_reason max_tokens")
    if not got_result:
        raise AgentError(ErrorKind.CONNECTION, detail="the Claude Code CLI ended without a result")


def _copy_usage(usage: Any) -> Any:
    from agents.types import Usage

    return Usage(usage.input_tokens, usage.output_tokens, usage.cache_read_tokens, usage.cache_write_tokens, usage.cost_usd)


def _fill_result(result: TurnResult, translator: SdkTranslator) -> None:
    from agents.backends.sdk_adapter import usage_from

    final = translator.result
    reported = usage_from(final.usage, final.total_cost_usd) if final is not None and final.usage else None
    if reported is not None and (reported.input_tokens or reported.output_tokens or reported.cache_read_tokens or reported.cache_write_tokens):
        result.usage = reported
    else:
        result.usage = _copy_usage(translator.usage)
        if final is not None and final.total_cost_usd:
            result.usage.cost_usd = float(final.total_cost_usd)
    if translator.session_id:
        result.agent_session_id = translator.session_id
    result.finish_reason = translator.finish_reason

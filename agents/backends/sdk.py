"""The ``sdk`` backend: one turn through ``ClaudeSDKClient`` and the Claude Code CLI bundled in
the claude-agent-sdk wheel.

``SdkBackend().stream(inp, result)`` yields content chunks only (the runtime adds start, usage,
finish/error, heartbeats and retries), raises ``AgentError`` on failure and honours ``inp.stop``
(``client.interrupt()``, drain, ``result.stopped = True``).

Structure:

- An *owner task* owns the ``ClaudeSDKClient`` from connect to disconnect: it connects, sends the
  prompt(s), reads messages, interrupts on stop and disconnects — all in that one task, because the SDK
  keeps an anyio task group open from ``connect()`` to ``disconnect()`` and tearing it down from
  another task raises "cancel scope in a different task" (DESIGN lesson 10). ``stream()`` only
  reads a queue the owner fills, so whoever iterates it (the runtime wraps each ``__anext__`` in
  a task for heartbeats, lesson 1) can do so from any task, and the owner never has its own
  ``__anext__`` cancelled: it waits on it as a task with ``asyncio.wait``.
- ``agents.backends.sdk_adapter.SdkTranslator`` turns SDK messages into chunks and classifies the
  CLI's failures; ``agents.hooks.ToolPolicy`` is the PreToolUse hook / ``can_use_tool``.
- The CLI runs with ``cwd`` = the session workspace and ``HOME``, ``CLAUDE_CONFIG_DIR``,
  ``CLAUDE_CODE_TMPDIR``, ``TMPDIR`` and the XDG dirs inside it (lesson 3), secrets of this
  process blanked in its environment, the model reached through the loopback credential proxy
  with a per-CLI grant token instead of the real key (``cli_credential``, agents/credentials.py:
  suspended while parked, revoked when the CLI closes), non-essential traffic off, and its own API retries off
  (``CLAUDE_CODE_MAX_RETRIES=0`` by default): the runtime's retry matrix is the one place that
  retries, with backoff, status chunks for the user and never after content was sent.
- A session's CLI is kept alive between its turns (docs/agents.md): after a clean turn the owner
  task *parks* its connected client in a per-event-loop LRU pool (``AGENT_SDK_MAX_IDLE_CLIENTS``,
  default 8) for ``AGENT_SDK_IDLE_SECONDS`` (default 300; 0 disables). The session's next turn on
  this worker hands its prompt to that same task (``client.query()`` on the same process: no CLI
  start-up, no ``resume``, no transcript read) if the session id, workspace, model, options and
  CLI session id all match; otherwise (another worker, evicted, expired) a new CLI resumes the
  session from its transcript (``resume=inp.agent_session_id``, the session store) as before.
  A client serves one turn at a time (it leaves the pool while busy); a stopped or failed turn,
  a dead CLI, eviction, idle expiry and loop shutdown (its tasks are cancelled) close it; the
  SDK's atexit hook terminates any CLI left at process exit.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import re
import time
import warnings
import weakref
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from claude_agent_sdk import (
    ClaudeAgentOptions,
    ClaudeSDKClient,
    HookMatcher,
    PermissionMode,
    ResultMessage,
    project_key_for_directory,
)
from claude_agent_sdk._errors import (
    ClaudeSDKError,
    CLIConnectionError,
    CLIJSONDecodeError,
    CLINotFoundError,
    ProcessError,
)

from agents import events
from agents.attachments import prepare_attachments
from agents.backends.sdk_adapter import SdkTranslator
from agents.config import agent_config, model_endpoint, system_prompt_compose
from agents.credentials import TOKEN_PREFIX, Credential, credential_proxy, key_fingerprint
from agents.errors import AgentError, ErrorKind, classify_exception, classify_text, scrub
from agents.events import Chunk
from agents.hooks import ToolPolicy, pre_tool_use_timeout
from agents.jail import cli_launch, cli_model_url, jail_active, jail_members, jail_members_exited, jail_sweep
from agents.mcp_client import McpHub, proxy_server_build
from agents.sandbox import SUBAGENT_TOOLS, EmptyInputBreaker, SubagentLimiter, workspace_for
from agents.turn import HistoryMessage, TurnInput, TurnResult, Usage

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
SDK_TOOLS = [
    "Bash",
    "Read",
    "Write",
    "Edit",
    "MultiEdit",
    "Glob",
    "Grep",
    "LS",
    "NotebookEdit",
    "TodoWrite",
    "Task",
    "Agent",
    "ExitPlanMode",  # plan mode (agents/approval.py): the plan goes to the user for approval
]
SDK_ALLOWED_TOOLS = [tool for tool in SDK_TOOLS if tool not in SUBAGENT_TOOLS]
SDK_DISALLOWED_TOOLS = [
    "WebFetch",
    "WebSearch",
    "AskUserQuestion",
    "EnterPlanMode",  # plan mode is the chat's setting; ExitPlanMode is decided by agents/approval.py
    "EnterWorktree",
    "ExitWorktree",
    "CronCreate",
    "CronDelete",
    "CronList",
    "ScheduleWakeup",
    "Monitor",
    "Workflow",
    "Skill",
    "SendMessage",
    "KillShell",
    "BashOutput",
]

INTERRUPT_TIMEOUT_SECONDS = 5.0
FAILED_INTERRUPT_SECONDS = 2.0  # a failed turn's CLI: interrupted before its disconnect
STOP_DRAIN_SECONDS = 5.0
HISTORY_MAX_MESSAGES = 30
HISTORY_MAX_CHARS = 24_000

# Environment variables of this process that must not reach the CLI (and so its Bash tool).
_SECRET_ENV_RE = re.compile(
    r"SECRET|PASSWORD|PASSWD|TOKEN|API_KEY|ACCESS_KEY|PRIVATE_KEY|CREDENTIAL|DATABASE_URL|REDIS_URL|_DSN$|^AWS_|^GITHUB_|^GH_",
    re.IGNORECASE,
)
_LAUNCHER_KEEP = frozenset({"PATH", "LANG", "LC_ALL"})  # what a jailed CLI's launcher inherits
_TEARDOWN_NOISE = (
    "cancel scope",
    "different task",
    "contextvar",
    "token",
    "was created in a different context",
    "event loop is closed",
)


def use_credential_proxy() -> bool:
    """Whether CLIs get a grant token of the credential proxy instead of the real key: always for
    a jailed CLI (the proxy's unix socket is its only way out), else with a real key unless
    ``AGENT_SDK_CREDENTIAL_PROXY`` is off (docs/security.md)."""
    if jail_active():
        return True
    return not model_endpoint().offline and agent_config().sdk_credential_proxy


def cli_credential() -> Credential:
    """The model endpoint and key a new CLI process gets: a fresh credential-proxy grant (revoke it
    when the CLI closes) when ``use_credential_proxy()``, else the endpoint itself (the offline
    scripted model's placeholder key, or the real key when the proxy is switched off)."""
    endpoint = model_endpoint()
    if use_credential_proxy():
        return credential_proxy().grant(upstream=endpoint.base_url, api_key=endpoint.api_key)
    return Credential(base_url=endpoint.base_url, api_key=endpoint.api_key)


def cli_env(workspace: Path, credential: Credential | None = None) -> dict[str, str]:
    """The CLI's environment overrides (merged by the SDK over this process's environment).

    ``credential``: what ``cli_credential()`` returned for this CLI; without it, the endpoint's
    own (only right offline or with the proxy switched off)."""
    if credential is None:
        endpoint = model_endpoint()
        credential = Credential(base_url=endpoint.base_url, api_key=endpoint.api_key)
    home = workspace / "home"
    tmp = workspace / "tmp"
    for path in (home, tmp, home / ".claude"):
        path.mkdir(parents=True, exist_ok=True)
    env = {key: "" for key in os.environ if _SECRET_ENV_RE.search(key)}
    env.update(
        {
            "ANTHROPIC_BASE_URL": credential.base_url,
            "ANTHROPIC_API_KEY": credential.api_key,
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
            "CLAUDE_CODE_MAX_RETRIES": str(agent_config().sdk_cli_max_retries),
            "CLAUDE_CODE_DISABLE_NONSTREAMING_FALLBACK": "1",
        }
    )
    # Operator/test knobs for the CLI (e.g. {"DISABLE_COMPACT": "1"} or
    # {"CLAUDE_CODE_AUTO_COMPACT_WINDOW": "100000"}); secrets never belong here.
    env.update({str(k): str(v) for k, v in agent_config().sdk_extra_env.items()})
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
            elif str(part.get("type", "")).startswith("tool-") and part.get("state") in (
                "output-available",
                "output-error",
            ):
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
        if (
            not isinstance(entry, dict)
            or entry.get("type") != "user"
            or entry.get("isMeta")
            or entry.get("isCompactSummary")
        ):
            continue
        content = (entry.get("message") or {}).get("content")
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            texts += [
                str(b.get("text", "")) for b in content if isinstance(b, dict) and b.get("type") == "text"
            ]
    return texts


async def transcript_user_texts(inp: TurnInput, workspace: Path) -> list[str] | None:
    """The user texts of the CLI session ``inp.agent_session_id`` (from the session store when
    there is one, else the local JSONL under the workspace); None when it cannot be read."""
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
    inp: TurnInput,
    workspace: Path,
    policy: ToolPolicy,
    *,
    resume: str | None,
    on_compact: Any = None,
    credential: Credential | None = None,
    mcp_servers: dict[str, Any] | None = None,
) -> ClaudeAgentOptions:
    """The CLI's options. ``mcp_servers``: the chat's MCP servers as in-process ``sdk`` servers
    (``mcp_options``), the only ones the CLI sees (``strict_mcp_config``)."""
    config = agent_config()
    # The server's prompt plus the chat's own instructions (per-chat settings, docs/api.md).
    system_prompt = system_prompt_compose(inp.system_prompt or config.system_prompt, inp.instructions)
    hooks = policy.hooks()
    if on_compact is not None:
        hooks["PreCompact"] = [HookMatcher(matcher=None, hooks=[on_compact])]
    env = cli_env(workspace, credential)
    cli_path = None
    if jail_active():
        # The CLI itself runs in the jail (agents/jail.py): its environment is built there from
        # scratch, the model is reached through the proxy socket bridged to a loopback port.
        inside = {k: v for k, v in env.items() if v}
        inside["ANTHROPIC_BASE_URL"] = cli_model_url()
        tool_ms = str(int(config.tool_timeout_seconds * 1000))
        inside.update({"BASH_DEFAULT_TIMEOUT_MS": tool_ms, "BASH_MAX_TIMEOUT_MS": tool_ms})
        proxy_socket = credential_proxy().socket_path
        assert proxy_socket is not None
        cli_path, launcher_env = cli_launch(workspace, env=inside, proxy_socket=proxy_socket)
        # The SDK merges this process's environment under ``env``: blank all of it for the
        # launcher (bwrap clears it for the jail anyway, but nothing secret should reach even the
        # jail's outer process).
        env = {**{key: "" for key in os.environ if key not in _LAUNCHER_KEEP}, **launcher_env}
    return ClaudeAgentOptions(
        model=inp.model or config.model,
        # Not snapshotted: a resumed CLI session keeps the prompt it recorded on its first request
        # otherwise, and changed instructions would reach the model only in a new session.
        system_prompt={"type": "custom", "prompt": system_prompt, "snapshot": False},
        cwd=str(workspace),
        cli_path=cli_path,
        env=env,
        tools=list(SDK_TOOLS),
        allowed_tools=list(SDK_ALLOWED_TOOLS),
        disallowed_tools=list(SDK_DISALLOWED_TOOLS),
        hooks=hooks,
        can_use_tool=policy.can_use_tool,
        include_partial_messages=True,
        max_buffer_size=config.sdk_max_buffer_size,  # one stdout JSON line (a big tool result) may be large
        setting_sources=[],  # no user/project settings, hooks or CLAUDE.md from disk
        mcp_servers=dict(mcp_servers or {}),
        strict_mcp_config=True,  # no MCP server but the chat's own (no .mcp.json, no user config)
        verbatim_prompts=True,  # the user's "/tool …" is text, not a CLI slash command; no @file expansion
        permission_mode=cli_permission_mode(inp),
        max_turns=(inp.max_steps or config.max_turns) or None,  # the chat's step limit, else the server's
        resume=resume or None,
        session_store=inp.session_store,
        stderr=_log_stderr,
    )


def cli_permission_mode(inp: TurnInput) -> PermissionMode:
    """Plan mode (the chat's ``tool_mode`` ``plan`` until the plan is approved) is the CLI's own."""
    return "plan" if inp.tools.planning else "default"


def _log_stderr(line: str) -> None:
    log.debug("claude cli: %s", scrub(line.rstrip()))


def classify_sdk_exception(exc: BaseException) -> AgentError:
    """ProcessError / CLIConnectionError & co. as an AgentError."""
    if isinstance(exc, AgentError):
        return exc
    text = scrub(f"{exc} {getattr(exc, 'stderr', '') or ''}").strip()
    if isinstance(exc, CLINotFoundError):
        return AgentError(
            ErrorKind.UNKNOWN,
            detail=text[:500],
            message="The agent runtime is not installed correctly. Ask an operator.",
        )
    found = classify_text(text)
    if found is not None:
        return found
    if isinstance(exc, CLIConnectionError):
        return AgentError(ErrorKind.CONNECTION, detail=text[:500])
    if isinstance(exc, (ProcessError, CLIJSONDecodeError, ClaudeSDKError)):
        return AgentError(ErrorKind.UNKNOWN, detail=f"{type(exc).__name__}: {text}"[:500])
    return classify_exception(exc)


async def _prompt_messages(
    text: str, blocks: list[dict[str, Any]], context: str = ""
) -> AsyncIterator[dict[str, Any]]:
    content: list[dict[str, Any]] = [{"type": "text", "text": context}] if context else []
    content += [{"type": "text", "text": text or " "}, *blocks]
    yield {"type": "user", "message": {"role": "user", "content": content}, "parent_tool_use_id": None}


async def _open(options: ClaudeAgentOptions) -> ClaudeSDKClient:
    client = ClaudeSDKClient(options)
    try:
        with warnings.catch_warnings():
            # allowed_tools pre-approves the everyday tools on purpose (the PreToolUse hook still
            # gates every call), which the SDK warns about.
            warnings.simplefilter("ignore", CanUseToolShadowedWarning)
            await client.connect()
    finally:
        # A jailed CLI's bwrap options (they hold its grant token) were read at its start.
        args_file = options.env.get("COPILOT_JAIL_ARGS")
        if args_file:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(args_file)
    return client


# ------------------------------------------------------------------------------------------------
# Kept-alive CLI clients (docs/agents.md "Keeping the CLI alive between turns")
# ------------------------------------------------------------------------------------------------


def idle_seconds() -> float:
    """AGENT_SDK_IDLE_SECONDS: how long a kept-alive CLI client waits for its next turn (0: none kept)."""
    return agent_config().sdk_idle_seconds


def max_idle_clients() -> int:
    """AGENT_SDK_MAX_IDLE_CLIENTS: kept-alive CLI clients per worker (0: none kept)."""
    return agent_config().sdk_max_idle_clients


# CLI processes of one worker (event loop), busy plus kept idle (AGENT_SDK_MAX_CLI_PROCESSES, 0: no
# bound; each costs ~200 MB). chat.runtime refuses an sdk turn (too_many_turns) once this many sdk
# turns run; here a new CLI first closes idle kept ones (least recently used first) and waits for
# closing ones to exit; still all busy after CLI_ROOM_WAIT_SECONDS: an overloaded error (backstop).
CLI_ROOM_WAIT_SECONDS = 10.0


def max_cli_processes() -> int:
    return agent_config().sdk_max_cli_processes


async def _cli_room(pool: _Pool) -> None:
    """Return once one more CLI may start in this worker (see ``max_cli_processes``). No await
    between the return and the caller registering its owner task: the check holds."""
    limit = max_cli_processes()
    if limit <= 0:
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + CLI_ROOM_WAIT_SECONDS
    while True:
        live = {task for task in pool.owners if not task.done()}
        excess = len(live) - limit + 1
        if excess <= 0:
            return
        for kept in list(pool.idle.values())[:excess]:
            pool.evict(kept)  # its owner disconnects the CLI and ends
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise AgentError(
                ErrorKind.OVERLOADED,
                detail=f"{len(live)} CLI processes busy (AGENT_SDK_MAX_CLI_PROCESSES={limit})",
                message="The server is running as many agents as it may (too_many_turns). "
                "Please try again in a moment.",
            )
        await asyncio.wait(live, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)


class _Router:
    """The callbacks a CLI client was connected with (hooks, ``can_use_tool``, PreCompact),
    routed to the turn the client serves now: each turn gets its own ``ToolPolicy`` (and
    sub-agent limiter) and its own translator, while the CLI process stays the same."""

    def __init__(self, workspace: Path) -> None:
        self.policy = ToolPolicy(workspace, limiter=SubagentLimiter())
        self.compaction_sink: Any = None  # () -> None, the current turn's "compaction started"
        self.mcp: McpHub | None = None  # the current turn's MCP sessions (``mcp_options``)

    async def pre_tool_use(
        self, input_data: dict[str, Any], tool_use_id: str | None, context: Any
    ) -> dict[str, Any]:
        return await self.policy.pre_tool_use(input_data, tool_use_id, context)

    async def post_tool_use(
        self, input_data: dict[str, Any], tool_use_id: str | None, context: Any
    ) -> dict[str, Any]:
        return await self.policy.post_tool_use(input_data, tool_use_id, context)

    async def can_use_tool(self, tool_name: str, tool_input: dict[str, Any], context: Any) -> Any:
        return await self.policy.can_use_tool(tool_name, tool_input, context)

    async def on_compact(
        self, input_data: dict[str, Any], tool_use_id: str | None, context: Any
    ) -> dict[str, Any]:
        # The CLI compacts its own context (PreCompact hook): tell the user, nothing else.
        sink = self.compaction_sink
        if sink is not None:
            sink()
        return {}

    def hooks(self) -> dict[str, list[HookMatcher]]:
        return {
            "PreToolUse": [
                HookMatcher(matcher=None, hooks=[self.pre_tool_use], timeout=pre_tool_use_timeout())
            ],
            "PostToolUse": [HookMatcher(matcher=None, hooks=[self.post_tool_use])],
            "PostToolUseFailure": [HookMatcher(matcher=None, hooks=[self.post_tool_use])],
        }


class _Job:
    """One turn handed to a client's owner task."""

    __slots__ = ("inp", "result", "queue", "finished")

    def __init__(self, inp: TurnInput, result: TurnResult) -> None:
        self.inp = inp
        self.result = result
        self.queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.finished = False


class _Kept:
    """One CLI client and the task that owns it from ``connect()`` to ``disconnect()``."""

    def __init__(self, key: tuple[Any, ...] | None, workspace: Path, session_id: str) -> None:
        self.key = key
        self.session_id = session_id
        self.router = _Router(workspace)
        self.client: ClaudeSDKClient | None = None
        self.messages: Any = None  # the client's one receive_messages() iterator
        self.cli_session_id: str | None = None
        self.user_texts: list[str] = []  # user texts the CLI session has seen (the gap rule)
        self.next_job: asyncio.Future[_Job | None] | None = None  # set while parked
        self.owner: asyncio.Task[None] | None = None
        self.pid: int | None = None
        self.turns = 0
        self.idle_since = 0.0
        self.credential: Credential | None = None  # the CLI's credential-proxy grant (or the endpoint's)
        self.permission_mode: PermissionMode = "default"  # the CLI's, as last set
        # The last turn ended in an error: the CLI may still be working on it (sleeping between
        # its own API retries, when it ignores the end of its input until the SDK's 5 s grace
        # runs out), so its owner interrupts it before disconnecting.
        self.failed = False

    def set_credential(self, credential: Credential | None) -> None:
        """Replace the CLI's credential, revoking the previous grant token."""
        old, self.credential = self.credential, credential
        if old is not None and old.api_key.startswith(TOKEN_PREFIX):
            credential_proxy().revoke(old.api_key)

    def grant_active(self, active: bool) -> None:
        """Suspend the grant while parked (no turn runs, nothing may use it), resume it for a turn."""
        cred = self.credential
        if cred is not None and cred.api_key.startswith(TOKEN_PREFIX):
            (credential_proxy().resume if active else credential_proxy().suspend)(cred.api_key)

    def alive(self) -> bool:
        process = getattr(getattr(self.client, "_transport", None), "_process", None)
        return self.client is not None and process is not None and process.returncode is None


class _Pool:
    """The idle (parked) clients of one event loop, least recently used first."""

    def __init__(self) -> None:
        self.idle: collections.OrderedDict[tuple[Any, ...], _Kept] = collections.OrderedDict()
        self.owners: set[asyncio.Task[None]] = set()

    def take(self, key: tuple[Any, ...], agent_session_id: str | None) -> _Kept | None:
        kept = self.idle.get(key)
        if kept is None:
            # A client of this session parked with other options (the chat's model, instructions
            # or step limit changed): it can never serve the session again, close it now.
            for stale in [k for k in self.idle.values() if k.session_id == key[0]]:
                self.evict(stale)
            return None
        if not agent_session_id or kept.cli_session_id != agent_session_id or not kept.alive():
            # Another CLI session (a recovery rung starting afresh, a chat moved on elsewhere) or
            # a dead process: never reuse it.
            self.evict(kept)
            return None
        del self.idle[key]
        return kept

    def park(self, kept: _Kept) -> bool:
        if kept.key is None or idle_seconds() <= 0 or max_idle_clients() <= 0 or not kept.alive():
            return False
        other = self.idle.pop(kept.key, None)
        if other is not None and other is not kept:
            self.evict(other)
        kept.next_job = asyncio.get_running_loop().create_future()
        kept.idle_since = time.monotonic()
        self.idle[kept.key] = kept
        while len(self.idle) > max_idle_clients():
            self.evict(next(iter(self.idle.values())))
        return True

    def evict(self, kept: _Kept) -> None:
        """Tell a parked client's owner to close it (no-op for a busy one)."""
        if kept.key is not None and self.idle.get(kept.key) is kept:
            del self.idle[kept.key]
        if kept.next_job is not None and not kept.next_job.done():
            kept.next_job.set_result(None)


_pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Pool] = weakref.WeakKeyDictionary()

# Who is told when this process's CLI processes change (chat.metrics): each observer is called with
# +1 when a client's owner task starts (it connects a CLI) and -1 when it ends (the CLI is gone).
_cli_observers: list[Callable[[int], None]] = []


def cli_observer_add(observer: Callable[[int], None]) -> None:
    if observer not in _cli_observers:
        _cli_observers.append(observer)


def _cli_count(delta: int) -> None:
    for observer in _cli_observers:
        try:
            observer(delta)
        except Exception:
            log.debug("a CLI observer failed", exc_info=True)


def _pool() -> _Pool:
    loop = asyncio.get_running_loop()
    pool = _pools.get(loop)
    if pool is None:
        pool = _pools[loop] = _Pool()
    return pool


def kept_clients() -> list[dict[str, Any]]:
    """The running loop's parked CLI clients (tests, benchmarks, diagnostics)."""
    pool = _pools.get(asyncio.get_running_loop())
    if pool is None:
        return []
    return [
        {
            "session_id": k.session_id,
            "pid": k.pid,
            "cli_session_id": k.cli_session_id,
            "turns": k.turns,
            "idle_since": k.idle_since,
        }
        for k in pool.idle.values()
    ]


async def close_idle_clients(timeout: float = 20.0) -> int:
    """Close every parked CLI client of the running loop (shutdown hooks, tests that simulate
    another worker). Returns how many were closed."""
    pool = _pools.get(asyncio.get_running_loop())
    if pool is None:
        return 0
    parked = list(pool.idle.values())
    for kept in parked:
        pool.evict(kept)
    owners = {k.owner for k in parked if k.owner is not None and not k.owner.done()}
    if owners:
        await asyncio.wait(owners, timeout=timeout)
    return len(parked)


async def close_all_clients(timeout: float = 5.0) -> int:
    """Process shutdown: close every CLI client of the running loop — the parked ones and any
    owner task still busy — and wait up to ``timeout`` (then cancel what is left, 2 s more).

    Needed because a parked client's owner task never ends by itself before the idle expiry, and
    anyio's (non-daemon) worker threads stop only when that task is done: a worker stopping with
    its loop would otherwise keep the process in ``threading._shutdown`` for good
    (chat.runtime.shutdown). Returns how many owner tasks were still open."""
    pool = _pools.get(asyncio.get_running_loop())
    if pool is None:
        return 0
    for kept in list(pool.idle.values()):
        pool.evict(kept)
    owners = {task for task in pool.owners if not task.done()}
    if owners:
        _done, pending = await asyncio.wait(owners, timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=2.0)
    return len(owners)


def client_key(inp: TurnInput, workspace: Path) -> tuple[Any, ...]:
    """What a kept client must match to serve a turn: the session, its workspace, the model and
    every option the CLI was started with (system prompt with the chat's instructions,
    environment, transcript store, limits with the chat's step limit): a chat whose settings
    changed since its CLI was connected gets a new one (``build_options``)."""
    store = inp.session_store
    store_id = (
        None
        if store is None
        else (type(store).__module__, type(store).__qualname__, getattr(store, "project_key", None))
    )
    config = agent_config()
    return (
        inp.session_id,
        str(workspace),
        inp.model or config.model,
        system_prompt_compose(inp.system_prompt or config.system_prompt, inp.instructions),
        # The environment without the credential, plus the real endpoint (a rotated key or another
        # upstream needs a new CLI); the key only as a fingerprint.
        tuple(sorted((k, v) for k, v in cli_env(workspace).items() if k != "ANTHROPIC_API_KEY")),
        key_fingerprint(model_endpoint().api_key),
        use_credential_proxy(),
        jail_active(),
        store_id,
        inp.max_steps or config.max_turns,
        config.sdk_max_buffer_size,
        # The chat's MCP servers: a CLI knows the tools it was started with.
        tuple(server.fingerprint() for server in inp.mcp_servers),
    )


def mcp_options(router: _Router) -> dict[str, Any]:
    """The CLI's ``mcp_servers``: one in-process ``sdk`` server per live MCP session of the turn's
    hub, proxying each call to that session (docs/agents.md "MCP servers": the stdio servers run
    in their own jail, the http ones are reached from this process, so the CLI's jail needs no
    command, secret or network for them). The CLI names their tools ``mcp__<server>__<tool>``
    and asks the PreToolUse hook about every call, as for its own tools."""
    hub = router.mcp
    if hub is None:
        return {}
    servers: dict[str, Any] = {}
    for name, connection in hub.connections.items():
        if connection.session is None or not connection.tools:
            continue
        instance = proxy_server_build(name, connection.tools, lambda: router.mcp)
        servers[name] = {"type": "sdk", "name": name, "instance": instance}
    return servers


class SdkBackend:
    async def stream(self, inp: TurnInput, result: TurnResult) -> AsyncIterator[Chunk]:
        workspace = Path(inp.workspace) if inp.workspace else workspace_for(inp.session_id)
        workspace.mkdir(parents=True, exist_ok=True)
        pool = _pool()
        keep = idle_seconds() > 0 and max_idle_clients() > 0
        key = client_key(inp, workspace) if keep else None
        job = _Job(inp, result)
        kept = pool.take(key, inp.agent_session_id) if key is not None else None
        if kept is not None and kept.next_job is not None and not kept.next_job.done():
            kept.next_job.set_result(job)  # its owner task serves this turn on the same CLI
        else:
            await _cli_room(pool)
            kept = _Kept(key, workspace, inp.session_id)
            kept.owner = asyncio.create_task(_own(kept, job, pool), name=f"sdk-cli-{inp.session_id}")
            pool.owners.add(kept.owner)
            kept.owner.add_done_callback(pool.owners.discard)
            _cli_count(1)
            kept.owner.add_done_callback(lambda _task: _cli_count(-1))
        owner = kept.owner
        assert owner is not None
        try:
            while True:
                kind, payload = await job.queue.get()
                if kind == "chunk":
                    yield payload
                elif kind == "error":
                    raise payload
                else:
                    return
        finally:
            if not job.finished and not owner.done():
                # Left before the turn ended (stopped past the grace period, cancelled): the
                # owner disconnects the CLI in its own finally; give it a moment, never hang.
                owner.cancel()
                with contextlib.suppress(BaseException):
                    await asyncio.wait({owner}, timeout=10)


async def _own(kept: _Kept, job: _Job | None, pool: _Pool) -> None:
    """The owner task of one CLI client: serves turns (this one, then the ones handed to it while
    parked) and disconnects — all in this one task (DESIGN lesson 10)."""
    try:
        while job is not None:
            kept.grant_active(True)
            reusable = await _serve(kept, job)
            kept.grant_active(False)
            if not reusable or not pool.park(kept):
                break
            waiting = kept.next_job
            assert waiting is not None
            await asyncio.wait({waiting}, timeout=idle_seconds())
            if not waiting.done():  # idle expiry
                log.debug("closing CLI of session %s after %.0fs idle", kept.session_id, idle_seconds())
                pool.evict(kept)
            job = waiting.result()
            kept.next_job = None
    finally:
        pool.evict(kept)
        try:
            if kept.client is not None:
                client, kept.client = kept.client, None
                # A jailed CLI is more than the SDK's process (bwrap's init, the CLI, its bridges):
                # the owner ends, and frees its place under AGENT_SDK_MAX_CLI_PROCESSES, only once
                # all of them are gone.
                members = jail_members(kept.pid) if kept.pid is not None and jail_active() else []
                if kept.failed:
                    await _interrupt_quietly(client)
                await _disconnect(client)
                await jail_members_exited(members)
        finally:
            kept.set_credential(None)  # the grant token dies with its CLI


async def _serve(kept: _Kept, job: _Job) -> bool:
    """Run one turn, report its end to the job's reader; True when the client may be kept."""

    def emit(chunk: Chunk) -> None:
        job.queue.put_nowait(("chunk", chunk))

    try:
        if job.inp.mcp_servers:
            # The chat's MCP servers for this turn (agents/mcp_client.py), opened before the CLI
            # so that a new CLI starts with their tools; one that cannot start is left out.
            kept.router.mcp = McpHub(list(job.inp.mcp_servers), Path(job.inp.workspace))
            await kept.router.mcp.start()
            if kept.router.mcp.problems_note():
                emit(events.status("mcp-unavailable", kept.router.mcp.problems_note()))
        reusable = await _run_turn(kept, job.inp, job.result, emit)
        if kept.router.mcp is not None and kept.router.mcp.problems:
            reusable = False  # the next turn gets a CLI started with whatever works then
    except asyncio.CancelledError:
        raise
    except BaseException as exc:  # noqa: BLE001 - handed to stream(), which raises it
        job.finished = True
        kept.failed = True
        job.queue.put_nowait(("error", exc if isinstance(exc, AgentError) else classify_sdk_exception(exc)))
        return False
    finally:
        hub, kept.router.mcp = kept.router.mcp, None
        if hub is not None:
            await hub.close()
    if reusable and kept.pid is not None and jail_active():
        # Nothing the agent started outlives its turn: before the turn ends, the kept CLI's jail
        # is left with only the CLI and its model bridge.
        swept = await asyncio.to_thread(jail_sweep, kept.pid)
        if swept:
            log.info("killed %d process(es) left in the jail of session %s", swept, kept.session_id)
    job.finished = True
    job.queue.put_nowait(("done", None))
    kept.turns += 1
    return reusable


async def _connect(
    inp: TurnInput,
    workspace: Path,
    policy: Any,
    on_compact: Any = None,
    credential: Credential | None = None,
    mcp_servers: dict[str, Any] | None = None,
) -> tuple[ClaudeSDKClient, bool]:
    """(connected client, whether it resumed ``inp.agent_session_id``)."""
    resume = inp.agent_session_id or None
    try:
        options = build_options(
            inp,
            workspace,
            policy,
            resume=resume,
            on_compact=on_compact,
            credential=credential,
            mcp_servers=mcp_servers,
        )
        return await _open(options), bool(resume)
    except Exception as exc:
        if not resume:
            raise
        # The transcript to resume is gone (workspace wiped, other host): start afresh with the
        # history from the database as context in the prompt instead.
        log.info("cannot resume CLI session %s (%s); starting a new one", resume, scrub(str(exc))[:200])
    return await _open(
        build_options(
            inp,
            workspace,
            policy,
            resume=None,
            on_compact=on_compact,
            credential=credential,
            mcp_servers=mcp_servers,
        )
    ), False


async def _context_and_texts(inp: TurnInput, workspace: Path, resumed: bool) -> tuple[str, list[str]]:
    """(the ``<conversation_context>`` block this turn's prompt starts with, "" for none; the user
    texts the CLI session already holds). The DB history for a fresh CLI session, the missing
    turns (gap) for a resumed one."""
    history = _without_new_message(inp)
    if not resumed:
        return (context_block(history, FRESH_NOTE) if history else ""), []
    texts = await transcript_user_texts(inp, workspace)
    if texts is None or not history:
        return "", texts or []
    return _gap_context(inp, history, texts), texts


def _gap_context(inp: TurnInput, history: list[HistoryMessage], texts: list[str]) -> str:
    gap = transcript_gap(history, texts)
    if gap:
        log.info(
            "CLI session %s misses %d of %d messages; adding them as context",
            inp.agent_session_id,
            len(gap),
            len(history),
        )
    return context_block(gap, GAP_NOTE)


async def _interrupt_quietly(client: ClaudeSDKClient) -> None:
    """Interrupt what the CLI is still doing (a failed turn's retries), never raising."""
    try:
        await asyncio.wait_for(client.interrupt(), timeout=FAILED_INTERRUPT_SECONDS)
    except Exception as exc:  # noqa: BLE001 - the disconnect that follows ends it anyway
        log.debug("CLI interrupt before disconnect failed: %s", type(exc).__name__)


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


def _pid(client: ClaudeSDKClient) -> int | None:
    process = getattr(getattr(client, "_transport", None), "_process", None)
    return getattr(process, "pid", None)


async def _send(client: ClaudeSDKClient, text: str, blocks: list[dict[str, Any]], context: str) -> None:
    if blocks or context:
        await client.query(_prompt_messages(text, blocks, context))
    else:
        await client.query(text)


async def _run_turn(kept: _Kept, inp: TurnInput, result: TurnResult, emit: Any) -> bool:
    """One turn on ``kept``'s CLI (connecting it first when it has none). Returns whether the
    client may serve the session's next turn: only after a clean, complete turn."""
    workspace = Path(inp.workspace) if inp.workspace else workspace_for(inp.session_id)
    workspace.mkdir(parents=True, exist_ok=True)
    blocks, note = prepare_attachments(workspace, list(inp.attachments)) if inp.attachments else ([], "")
    text = inp.user_text if not note else f"{inp.user_text}\n\n{note}"
    policy = ToolPolicy(workspace, limiter=SubagentLimiter(), tools=inp.tools, approve=inp.approve)
    translator = SdkTranslator(
        breaker=EmptyInputBreaker(),
        on_tool_finished=policy.finished,
        user_denied=policy.user_denied.__contains__,
    )
    if inp.stop.is_set():
        result.stopped = True
        return kept.client is not None

    def compaction_started() -> None:
        for chunk in translator.compaction_started():
            emit(chunk)

    kept.router.policy = policy
    kept.router.compaction_sink = compaction_started
    client = kept.client
    if client is not None:
        # A follow-up on the same CLI process and session: no resume, no transcript read; the
        # gap (turns handled elsewhere meanwhile) comes from what this client has seen.
        history = _without_new_message(inp)
        context = _gap_context(inp, history, kept.user_texts) if history else ""
        try:
            if kept.permission_mode != cli_permission_mode(inp):
                kept.permission_mode = cli_permission_mode(inp)
                await client.set_permission_mode(kept.permission_mode)
            await _send(client, text, blocks, context)
        except Exception as exc:  # noqa: BLE001 - the CLI died while parked: start a new one
            log.info(
                "kept CLI of session %s unusable (%s); reconnecting", inp.session_id, scrub(str(exc))[:200]
            )
            kept.client = None
            await _disconnect(client)
            client = None
    if client is None:
        kept.set_credential(cli_credential())  # a new CLI process gets a new grant token
        client, resumed = await _connect(
            inp, workspace, kept.router, kept.router.on_compact, kept.credential, mcp_options(kept.router)
        )
        kept.client = client
        kept.permission_mode = cli_permission_mode(inp)
        kept.messages = client.receive_messages().__aiter__()
        kept.pid = _pid(client)
        context, kept.user_texts = await _context_and_texts(inp, workspace, resumed)
        await _send(client, text, blocks, context)
    kept.user_texts.append(text or " ")

    async def plan_approved() -> None:  # the user approved the plan: tools for the rest of the turn
        kept.permission_mode = "default"
        await client.set_permission_mode("default")

    policy.on_plan_approved = plan_approved
    messages = kept.messages
    loop = asyncio.get_running_loop()
    stop_wait = asyncio.ensure_future(inp.stop.wait())
    pending: asyncio.Future[Any] | None = None
    interrupted = False
    drain_deadline: float | None = None
    got_result = False
    checked_steps = 0
    try:
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
                except Exception as exc:  # noqa: BLE001 - the disconnect ends it anyway
                    log.debug("CLI interrupt failed: %s", exc)
                    break
                continue
            if drain_deadline is not None and loop.time() >= drain_deadline:
                log.info("CLI did not finish %.0fs after interrupt; disconnecting", STOP_DRAIN_SECONDS)
                break
    finally:
        stop_wait.cancel()
        if pending is not None and not pending.done():
            # Only on the way out of a turn whose client is then closed (an exception, a stop
            # that did not drain): a clean turn ends right after its ResultMessage.
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending
        kept.router.compaction_sink = None

    for chunk in translator.finish():
        emit(chunk)
    _fill_result(result, translator)
    kept.cli_session_id = result.agent_session_id or kept.cli_session_id
    if interrupted or inp.stop.is_set():
        # A stopped turn closes its CLI (the interrupt's leftovers must not reach the next turn);
        # the next turn resumes the session from its transcript.
        result.stopped = True
        return False
    if policy.over_quota:
        raise AgentError(ErrorKind.POLICY, detail="workspace quota exceeded", message=policy.over_quota)
    error = translator.error()
    if error is not None:
        raise error
    if translator.stop_reason == "max_tokens":
        # Same as the api backend: the answer hit the output limit (never retried after content).
        raise AgentError(ErrorKind.MAX_OUTPUT_TOKENS, detail="stop_reason max_tokens")
    if not got_result:
        raise AgentError(ErrorKind.CONNECTION, detail="the Claude Code CLI ended without a result")
    return kept.alive()


def _copy_usage(usage: Any) -> Usage:
    return Usage(
        usage.input_tokens,
        usage.output_tokens,
        usage.cache_read_tokens,
        usage.cache_write_tokens,
        usage.cost_usd,
    )


def _fill_result(result: TurnResult, translator: SdkTranslator) -> None:

    final = translator.result
    reported = (
        Usage.from_api(final.usage, cost_usd=final.total_cost_usd)
        if final is not None and final.usage
        else None
    )
    if reported is not None and (
        reported.input_tokens
        or reported.output_tokens
        or reported.cache_read_tokens
        or reported.cache_write_tokens
    ):
        result.usage = reported
    else:
        result.usage = _copy_usage(translator.usage)
        if final is not None and final.total_cost_usd:
            result.usage.cost_usd = float(final.total_cost_usd)
    if translator.session_id:
        result.agent_session_id = translator.session_id
    result.finish_reason = translator.finish_reason

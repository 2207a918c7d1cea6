"""Plain inputs and outputs of one agent turn. No Django request, no Channels, no chat models."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from agents.approval import ApprovalAsk, ToolRules
from agents.errors import AgentError
from agents.mcp_config import McpServerConfig

Backend = Literal["sdk", "api"]


@dataclass(frozen=True)
class Attachment:
    name: str
    media_type: str
    data: bytes


@dataclass(frozen=True)
class HistoryMessage:
    """A message of the session's history, as persisted: role plus AI SDK UI parts."""

    role: Literal["user", "assistant"]
    parts: list[dict[str, Any]]
    # ChatMessage.kind: "normal", or a marker ("error", "retryable_error", "stopped", "system")
    # that the backends never send to the model as a turn of its own.
    kind: str = "normal"


@dataclass
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cost_usd: float = 0.0

    @classmethod
    def from_api(cls, usage: Any, *, cost_usd: float | None = None) -> Usage:
        """From a Messages API ``usage`` (the SDK's object or a plain dict; the Claude Code CLI
        reports the same field names)."""
        if usage is None:
            data: dict[str, Any] = {}
        elif isinstance(usage, dict):
            data = usage
        else:
            data = usage.model_dump() if hasattr(usage, "model_dump") else vars(usage)
        return cls(
            input_tokens=int(data.get("input_tokens") or 0),
            output_tokens=int(data.get("output_tokens") or 0),
            cache_read_tokens=int(data.get("cache_read_input_tokens") or 0),
            cache_write_tokens=int(data.get("cache_creation_input_tokens") or 0),
            cost_usd=float(cost_usd or 0.0),
        )

    def add(self, other: Usage) -> None:
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.cache_read_tokens += other.cache_read_tokens
        self.cache_write_tokens += other.cache_write_tokens
        self.cost_usd += other.cost_usd


# Called at each step boundary with the usage so far; raising AgentError ends the turn (budgets).
StepCheck = Callable[[Usage], Awaitable[None]]


@dataclass
class TurnInput:
    session_id: str  # chat session UUID (also names the workspace)
    user_text: str
    workspace: Path
    backend: Backend
    model: str
    system_prompt: str = ""
    attachments: list[Attachment] = field(default_factory=list)
    history: list[HistoryMessage] = field(default_factory=list)  # earlier messages, oldest first
    agent_session_id: str | None = None  # the CLI's session id to resume (sdk backend)
    session_store: Any = None  # claude_agent_sdk SessionStore (transcripts app)
    stop: asyncio.Event = field(default_factory=asyncio.Event)  # set to stop the turn
    step_check: StepCheck | None = None
    message_id: str = ""
    # Per-chat settings (chat.ChatSession; docs/api.md, "Per-chat settings").
    instructions: str = ""  # the user's addition to the system prompt
    max_steps: int = 0  # the most model calls of this reply; 0: AGENT_MAX_TURNS
    # Tool approval (agents/approval.py): the decisions, and how to ask the user. Without an
    # ``approve`` callback a call that needs asking is denied.
    tools: ToolRules = field(default_factory=ToolRules)
    approve: ApprovalAsk | None = None
    # The chat's enabled MCP servers (agents/mcp_config.py; docs/agents.md "MCP servers"): their
    # tools are ``mcp__<server>__<tool>`` for this turn.
    mcp_servers: list[McpServerConfig] = field(default_factory=list)


@dataclass
class TurnResult:
    """Filled in by the backend while it streams; read by chat.runtime when the stream ends."""

    usage: Usage = field(default_factory=Usage)
    finish_reason: str = ""
    error: AgentError | None = None
    stopped: bool = False
    agent_session_id: str | None = None
    model: str = ""

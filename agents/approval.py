"""Which tool calls run, which are refused and which wait for the user's answer.

``ToolRules`` decides per call: ``allow``, ``ask`` or ``deny``, from

- the operator's rules (``AGENT_TOOL_POLICY``) with the user's own overrides on top (the admin's
  ``chat.ToolRule``), each ``tool name`` or ``prefix*`` -> decision;
- the chat's ``tool_mode``: ``auto`` (run freely: only the rules ask), ``ask`` (ask before every
  tool that can change something) or ``plan`` (read-only tools until the user approves a plan).

Read-only tools are never asked about (a rule may still deny them). MCP tools (``mcp__…``) ask
unless a rule says otherwise. ``deny`` always wins.

The backends ask through ``TurnInput.approve`` (``ApprovalAsk``): the chat runtime sends the
``tool-approval-request`` chunk, waits for the answer (or the timeout, or stop) and returns an
``ApprovalAnswer``. Plan mode: the model proposes its plan with the ``ExitPlanMode`` tool (the
Claude Code CLI's own, reproduced by the api backend); approving it lifts the restriction for the
rest of the turn.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Decision = Literal["allow", "ask", "deny"]
ToolMode = Literal["auto", "ask", "plan"]
DECISIONS: tuple[str, ...] = ("allow", "ask", "deny")
TOOL_MODES: tuple[str, ...] = ("auto", "ask", "plan")

# Tools that only look (the CLI's names; the api backend uses the same ones).
READ_ONLY_TOOLS = frozenset({"Read", "Glob", "Grep", "LS", "TodoWrite", "WebSearch", "NotebookRead"})
PLAN_TOOL = "ExitPlanMode"
MCP_PREFIX = "mcp__"

PLAN_TOOL_SCHEMA: dict[str, Any] = {
    "name": PLAN_TOOL,
    "description": "Plan mode: once you have researched with the read-only tools, present your plan "
    "(markdown) for the user's approval. Nothing that changes files or runs commands is allowed before "
    "the user approves it.",
    "input_schema": {
        "type": "object",
        "properties": {"plan": {"type": "string", "description": "The plan, in markdown."}},
        "required": ["plan"],
    },
}
PLAN_MODE_PROMPT = (
    "Plan mode is on: research with the read-only tools (Read, Glob, Grep, LS) only, then call "
    "ExitPlanMode with your plan. Once the user approves it, carry it out; if they reject it, revise "
    "the plan following their reason and propose it again."
)
PLAN_APPROVED_TEXT = "The user approved the plan. Carry it out now; the tools are enabled."
PLAN_MODE_DENIAL = (
    "{tool} is not available in plan mode: research with the read-only tools, then propose a plan "
    "with ExitPlanMode for the user to approve."
)


@dataclass(frozen=True)
class ApprovalAnswer:
    approved: bool
    reason: str = ""
    expired: bool = False  # nobody answered within TOOL_APPROVAL_TIMEOUT_SECONDS
    stopped: bool = False  # the turn was stopped while it waited

    def denial_text(self, tool_name: str) -> str:
        """What the model reads when the call was not approved."""
        if self.expired:
            return f"The user did not answer the request to run {tool_name} in time; it was not run."
        if self.stopped:
            return f"The turn was stopped before {tool_name} was approved; it was not run."
        text = f"The user denied this {tool_name} call"
        return f"{text}: {self.reason}" if self.reason else f"{text}."


# (tool call id, tool name, tool input) -> the user's answer
ApprovalAsk = Callable[[str, str, dict[str, Any]], Awaitable[ApprovalAnswer]]


def rules_parse(raw: Mapping[str, Any]) -> dict[str, Decision]:
    """``{"Bash": "ask", "mcp__*": "allow"}`` with the decisions checked (unknown ones dropped)."""
    out: dict[str, Decision] = {}
    for tool, decision in (raw or {}).items():
        value = str(decision).strip().lower()
        if str(tool).strip() and value in DECISIONS:
            out[str(tool).strip()] = value  # type: ignore[assignment]
    return out


def _rule_for(rules: Mapping[str, Decision], tool_name: str) -> Decision | None:
    if tool_name in rules:
        return rules[tool_name]
    best: tuple[int, Decision] | None = None
    for pattern, decision in rules.items():
        if pattern.endswith("*") and tool_name.startswith(pattern[:-1]):
            if best is None or len(pattern) > best[0]:
                best = (len(pattern), decision)
    return None if best is None else best[1]


@dataclass
class ToolRules:
    """One turn's tool decisions (mutable only by ``plan_approved``)."""

    mode: ToolMode = "auto"
    rules: dict[str, Decision] = field(default_factory=dict)  # operator's, then the user's on top
    planning: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        self.planning = self.mode == "plan"

    def decide(self, tool_name: str) -> Decision:
        rule = _rule_for(self.rules, tool_name)
        if rule == "deny":
            return "deny"
        if tool_name == PLAN_TOOL:
            return "ask" if self.planning else "deny"
        if tool_name in READ_ONLY_TOOLS:
            return "allow"
        if self.planning:
            return "deny"
        if rule is not None:
            return rule
        if tool_name.startswith(MCP_PREFIX):
            return "ask"
        return "ask" if self.mode == "ask" else "allow"

    def denial_text(self, tool_name: str) -> str:
        """What the model reads for a call ``decide`` refused."""
        if self.planning:
            return PLAN_MODE_DENIAL.format(tool=tool_name)
        if tool_name == PLAN_TOOL:
            return "There is no plan to approve: this chat is not in plan mode."
        return f"{tool_name} is not allowed on this server."

    def plan_approved(self) -> None:
        """The user approved the plan: the rest of the turn runs as in ``auto`` mode."""
        self.planning = False
        if self.mode == "plan":
            self.mode = "auto"

"""The sdk backend's tool policy: a PreToolUse hook and a ``can_use_tool`` callback for the
Claude Code CLI, both enforcing ``agents.sandbox.check_tool_input`` (the same policy the api
backend's tool loop applies).

We run as root, so the CLI refuses ``bypassPermissions``: tools are pre-approved with
``allowed_tools`` and every call still passes the PreToolUse hook, which denies what the sandbox
rejects (the CLI then reports the reason to the model as an error tool_result, and the tool never
runs). Tools that are not pre-approved (the sub-agent tools ``Task``/``Agent``) reach
``can_use_tool``, which applies the same decision.

One ``ToolPolicy`` per turn. A decision is made once per tool_use id (the hook and the callback
can both see the same call), so a sub-agent slot of the ``SubagentLimiter`` is taken once and
released when the call's PostToolUse / PostToolUseFailure hook fires or its result is seen.

Tool approval (``agents.approval``): after the sandbox check, the turn's ``ToolRules`` allow,
deny, or ask the user (``TurnInput.approve``) — inside the PreToolUse hook (its timeout covers
``TOOL_APPROVAL_TIMEOUT_SECONDS``) or ``can_use_tool``, whichever sees the call first. Approving
``ExitPlanMode`` (plan mode, the CLI's ``permission_mode="plan"``) switches the CLI back to its
default mode (``on_plan_approved``) for the rest of the turn.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from claude_agent_sdk import HookMatcher, PermissionResultAllow, PermissionResultDeny

from agents.approval import PLAN_TOOL, ApprovalAsk, ToolRules
from agents.config import agent_config
from agents.jail import jail_active, quota_exceeded, tool_limits_prefix
from agents.sandbox import SUBAGENT_TOOLS, SubagentLimiter, check_tool_input

log = logging.getLogger(__name__)


def pre_tool_use_timeout() -> float:
    """The PreToolUse hook may wait for the user's answer: its timeout covers the approval's."""
    return agent_config().tool_approval_timeout + 60.0


# The CLI's tools that can grow the workspace: the quota is checked after each of their calls.
QUOTA_TOOLS = frozenset({"Bash", "Write", "Edit", "MultiEdit", "NotebookEdit", "Task", "Agent"})


class ToolPolicy:
    def __init__(
        self,
        workspace: Path,
        *,
        limiter: SubagentLimiter | None = None,
        tools: ToolRules | None = None,
        approve: ApprovalAsk | None = None,
    ) -> None:
        self.workspace = Path(workspace)
        self.limiter = limiter or SubagentLimiter()
        self.tools = tools or ToolRules()
        self.approve = approve
        self.on_plan_approved: Callable[[], Awaitable[None]] | None = None  # set by the backend
        self.user_denied: set[str] = set()  # tool_use ids the user denied (``tool-output-denied``)
        self._answers: dict[str, asyncio.Future[str | None]] = {}  # tool_use_id -> deny reason or None
        self._decisions: dict[str, str | None] = {}  # tool_use_id -> deny reason or None
        self._slots: set[str] = set()  # tool_use ids holding a sub-agent slot
        self._lock = threading.Lock()
        self.denied: dict[str, str] = {}  # tool_use_id -> reason (for logs and tests)
        self.over_quota: str | None = None  # the quota message, once a tool call exceeded it

    # -- the decision -------------------------------------------------------------------------
    def decide(self, tool_name: str, tool_input: Any, tool_use_id: str | None) -> str | None:
        """``None`` to allow, else the deny reason. Cached per tool_use id."""
        if tool_use_id is not None:
            with self._lock:
                if tool_use_id in self._decisions:
                    return self._decisions[tool_use_id]
        limiter = self.limiter if tool_name in SUBAGENT_TOOLS else None
        try:
            reason = check_tool_input(
                self.workspace, tool_name, tool_input if isinstance(tool_input, dict) else {}, limiter=limiter
            )
        except Exception as exc:
            log.exception("tool policy failed for %s", tool_name)
            reason = f"{tool_name} denied: the policy check failed ({type(exc).__name__})."
        if tool_use_id is not None:
            with self._lock:
                self._decisions[tool_use_id] = reason
                if reason is None and limiter is not None:
                    self._slots.add(tool_use_id)
                if reason is not None:
                    self.denied[tool_use_id] = reason
        elif reason is None and limiter is not None:
            # No id to release it by later: give the slot back at once rather than leak it.
            limiter.release()
        if reason is not None:
            log.info("denied %s call %s: %s", tool_name, tool_use_id, reason)
        return reason

    def finished(self, tool_use_id: str | None) -> None:
        """A tool call ended (result seen or PostToolUse fired): release its sub-agent slot."""
        if tool_use_id is None:
            return
        with self._lock:
            holding = tool_use_id in self._slots
            self._slots.discard(tool_use_id)
        if holding:
            self.limiter.release()

    async def permit(self, tool_name: str, tool_input: Any, tool_use_id: str | None) -> str | None:
        """The whole decision: the sandbox (``decide``), then the turn's rules, asking the user
        when they say so. ``None`` to allow, else the deny reason. Once per tool_use id: the hook
        and ``can_use_tool`` share the answer (the user is asked once)."""
        if tool_use_id is not None and tool_use_id in self._answers:
            return await asyncio.shield(self._answers[tool_use_id])
        answer: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        if tool_use_id is not None:
            self._answers[tool_use_id] = answer
        try:
            reason = self.decide(tool_name, tool_input, tool_use_id)
            if reason is None:
                reason = await self._approval(tool_name, tool_input, tool_use_id)
        except BaseException as exc:
            answer.set_exception(exc)
            answer.exception()  # retrieved: a later caller re-raises it, nobody logs it twice
            raise
        answer.set_result(reason)
        return reason

    async def _approval(self, tool_name: str, tool_input: Any, tool_use_id: str | None) -> str | None:
        decision = self.tools.decide(tool_name)
        if decision == "allow":
            return None
        if decision == "deny":
            return self.tools.denial_text(tool_name)
        if self.approve is None or tool_use_id is None:
            return f"{tool_name} needs the user's approval, and nobody can answer here."
        answer = await self.approve(
            tool_use_id, tool_name, tool_input if isinstance(tool_input, dict) else {}
        )
        if not answer.approved:
            if not answer.stopped:
                self.user_denied.add(tool_use_id)
            return answer.denial_text(tool_name)
        if tool_name == PLAN_TOOL:
            self.tools.plan_approved()
            if self.on_plan_approved is not None:
                await self.on_plan_approved()
        return None

    # -- the CLI callbacks --------------------------------------------------------------------
    async def pre_tool_use(
        self, input_data: dict[str, Any], tool_use_id: str | None, context: Any
    ) -> dict[str, Any]:
        tool_name = str(input_data.get("tool_name", ""))
        tool_use_id = tool_use_id or input_data.get("tool_use_id")
        tool_input = input_data.get("tool_input") or {}
        reason = await self.permit(tool_name, tool_input, tool_use_id)
        if reason is None:
            if tool_name == "Bash" and jail_active() and isinstance(tool_input.get("command"), str):
                # The command runs under the tool call's CPU and memory bounds (agents/jail.py).
                limited = {**tool_input, "command": tool_limits_prefix() + tool_input["command"]}
                return {
                    "hookSpecificOutput": {
                        "hookEventName": "PreToolUse",
                        "permissionDecision": "allow",
                        "updatedInput": limited,
                    }
                }
            if self.tools.decide(tool_name) == "ask" or tool_name == PLAN_TOOL:
                # Approved by the user: no second question from the CLI.
                return {"hookSpecificOutput": {"hookEventName": "PreToolUse", "permissionDecision": "allow"}}
            return {}  # no opinion: allowed_tools / can_use_tool decide as usual
        return {
            "hookSpecificOutput": {
                "hookEventName": "PreToolUse",
                "permissionDecision": "deny",
                "permissionDecisionReason": reason,
            }
        }

    async def post_tool_use(
        self, input_data: dict[str, Any], tool_use_id: str | None, context: Any
    ) -> dict[str, Any]:
        self.finished(tool_use_id or input_data.get("tool_use_id"))
        if str(input_data.get("tool_name", "")) in QUOTA_TOOLS:
            over = await asyncio.to_thread(quota_exceeded, self.workspace)
            if over:  # the CLI stops here; the turn then ends with this error (agents/backends/sdk.py)
                self.over_quota = over
                return {"continue_": False, "stopReason": over}
        return {}

    async def can_use_tool(
        self, tool_name: str, tool_input: dict[str, Any], context: Any
    ) -> PermissionResultAllow | PermissionResultDeny:
        tool_use_id = getattr(context, "tool_use_id", None)
        reason = await self.permit(tool_name, tool_input, tool_use_id)
        if reason is None:
            return PermissionResultAllow()
        return PermissionResultDeny(message=reason)

    def hooks(self) -> dict[str, list[HookMatcher]]:
        """The ``hooks`` option for ClaudeAgentOptions."""
        return {
            "PreToolUse": [
                HookMatcher(matcher=None, hooks=[self.pre_tool_use], timeout=pre_tool_use_timeout())
            ],
            "PostToolUse": [HookMatcher(matcher=None, hooks=[self.post_tool_use])],
            "PostToolUseFailure": [HookMatcher(matcher=None, hooks=[self.post_tool_use])],
        }

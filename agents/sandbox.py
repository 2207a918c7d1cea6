"""The per-session workspace and the one tool policy both backends enforce.

- ``workspace_for(session_id)``: the session's working directory under AGENT_WORKSPACE_ROOT
  (with ``home/`` and ``tmp/`` inside, where the CLI's HOME and CLAUDE_CODE_TMPDIR point);
  ``workspace_locate(session_id)``: the same path, without creating it.
- ``resolve_in_workspace(workspace, path)``: a path resolved (symlinks included) that must stay
  inside the workspace, else ``SandboxViolation``.
- ``check_tool_input(workspace, tool_name, tool_input)``: ``None`` to allow a tool call, or a
  short human reason to deny it. Used by the api backend's tool loop and by the sdk backend's
  PreToolUse hook / ``can_use_tool``.
- ``SubagentLimiter``: at most N concurrent sub-agents (tool names ``Task`` and ``Agent``).
- ``EmptyInputBreaker``: ends a turn after K consecutive tool calls with empty input.

The Bash check is *lexical and best effort*: it tokenizes the command with ``shlex``, follows
``cd`` lexically, and denies tokens that resolve outside the workspace (``..`` escapes, absolute
paths, ``~`` paths, symlinks that exist and point outside) and the usual ways of dumping the
environment. It cannot see through variables (``$X/..``), ``eval``, scripts written to disk and
then run, interpreters (``python -c "open('/etc/passwd')"`` with the path inside a string is
caught only when the path is its own shell word) or globbing. It is one layer, not a jail: the
subprocess also runs with a scrubbed environment (no secrets) and cwd/HOME/TMPDIR in the workspace.
"""

from __future__ import annotations

import hashlib
import re
import shlex
import threading
import uuid
from pathlib import Path
from typing import Any

from agents.approval import MCP_PREFIX
from agents.config import agent_config, workspace_root
from agents.errors import AgentError, ErrorKind
from agents.jail import jail_active, prepare_workspace

FILE_TOOLS = frozenset({"Read", "Write", "Edit", "MultiEdit", "NotebookEdit", "Glob", "Grep", "LS"})
PATH_KEYS = ("file_path", "path", "notebook_path")
SUBAGENT_TOOLS = frozenset({"Task", "Agent"})
# Tools that legitimately take no input (not counted by the empty-input breaker).
NO_INPUT_TOOLS = frozenset({"TodoRead", "ExitPlanMode", "BashOutput", "KillShell", "ListMcpResourcesTool"})

# Absolute paths a shell command may name although they are outside the workspace.
_ALLOWED_ABSOLUTE = frozenset(
    {
        "/dev/null",
        "/dev/stdin",
        "/dev/stdout",
        "/dev/stderr",
        "/dev/zero",
        "/dev/random",
        "/dev/urandom",
        "/dev/tty",
    }
)
_ALLOWED_ABSOLUTE_PREFIXES = ("/bin/", "/usr/bin/", "/usr/local/bin/", "/usr/sbin/", "/sbin/", "/dev/fd/")

_ENV_DUMP_RE = re.compile(
    r"""(?:^|[\s;&|()`]|\$\()(?:env|printenv|export\s+-p|declare\s+-[a-zA-Z]*[px]|compgen\s+-[ev])(?=$|[\s;&|()`])"""
    r"""|(?:^|[;&|(]\s*)set\s*(?=$|[;&|)])"""
    r"""|/proc/[^\s/]+/environ"""
    r"""|\$\{?(?:ANTHROPIC_[A-Z_]*|[A-Z_]*(?:API_KEY|AUTH_TOKEN|SECRET[A-Z_]*|PASSWORD))\b"""
)
_URL_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
_SHELL_OPERATORS = frozenset({";", "&&", "||", "|", "&", "(", ")", ";;", "|&", "\n"})
_GLOB_CHARS = re.compile(r"[*?\[{]")


class SandboxViolation(Exception):
    """A path that leaves the session workspace."""


def _workspace_name(session_id: str) -> str:
    try:
        return str(uuid.UUID(str(session_id)))
    except ValueError:
        slug = re.sub(r"[^A-Za-z0-9_-]+", "-", str(session_id)).strip("-")[:40] or "session"
        digest = hashlib.sha256(str(session_id).encode()).hexdigest()[:12]
        return f"{slug}-{digest}"


def workspace_for(session_id: str) -> Path:
    """The session's working directory (created with ``home/``, ``tmp/`` inside), under the root."""
    root = workspace_root()
    workspace = (root / _workspace_name(session_id)).resolve()
    if workspace.parent != root:
        raise SandboxViolation(f"workspace for {session_id!r} would leave the workspace root")
    for sub in ("", "home", "tmp"):
        (workspace / sub).mkdir(parents=True, exist_ok=True)
    prepare_workspace(workspace)
    return workspace


def workspace_locate(session_id: str) -> Path:
    """Where the session's working directory is (or will be), under the root. Unlike
    ``workspace_for`` nothing is created: a chat whose agent never ran has no workspace yet."""
    return agent_config().workspace_root / _workspace_name(session_id)


def _is_within(path: Path, workspace: Path) -> bool:
    return path == workspace or workspace in path.parents


def resolve_in_workspace(workspace: Path, path: str, *, cwd: Path | None = None) -> Path:
    """Resolve ``path`` (relative to ``cwd`` or the workspace; ``~`` is the workspace's home) and
    follow every existing symlink; raise ``SandboxViolation`` unless the result is inside."""
    ws = Path(workspace).resolve()
    text = str(path)
    if "\x00" in text:
        raise SandboxViolation("path contains a NUL byte")
    if text == "~" or text.startswith("~/"):
        text = str(ws / "home") + text[1:]
    elif text.startswith("~"):
        raise SandboxViolation(f"{path} is outside the workspace")
    candidate = Path(text)
    if not candidate.is_absolute():
        candidate = (cwd or ws) / candidate
    try:
        resolved = candidate.resolve(strict=False)
    except (OSError, RuntimeError) as exc:  # symlink loops
        raise SandboxViolation(f"{path} cannot be resolved ({exc.__class__.__name__})") from None
    if not _is_within(resolved, ws):
        raise SandboxViolation(f"{path} is outside the workspace")
    return resolved


def glob_base(pattern: str) -> str:
    """The non-glob directory prefix of a glob pattern."""
    parts = []
    for part in pattern.split("/"):
        if _GLOB_CHARS.search(part):
            break
        parts.append(part)
    base = "/".join(parts)
    if pattern.startswith("/") and not base:
        return "/"
    return base or "."


def _check_paths(workspace: Path, tool_name: str, tool_input: dict[str, Any]) -> str | None:
    for key in PATH_KEYS:
        value = tool_input.get(key)
        if isinstance(value, str) and value:
            try:
                resolve_in_workspace(workspace, value)
            except SandboxViolation as exc:
                return f"{tool_name} denied: {exc}."
    if tool_name == "Glob":
        pattern = tool_input.get("pattern")
        if isinstance(pattern, str) and pattern:
            base_dir = tool_input.get("path") or "."
            try:
                base = resolve_in_workspace(workspace, base_dir)
                resolve_in_workspace(workspace, glob_base(pattern), cwd=base)
                if ".." in Path(pattern).parts:
                    raise SandboxViolation(f"{pattern} climbs out of the workspace")
            except SandboxViolation as exc:
                return f"Glob denied: {exc}."
    if tool_name == "Grep":
        glob = tool_input.get("glob")
        if isinstance(glob, str) and (glob.startswith("/") or ".." in Path(glob).parts):
            return "Grep denied: the glob filter must stay inside the workspace."
    return None


def _split_command(command: str) -> list[str]:
    lexer = shlex.shlex(command, posix=True, punctuation_chars=";&|()<>")
    lexer.whitespace_split = True
    lexer.commenters = ""
    try:
        return list(lexer)
    except ValueError:  # unbalanced quotes: fall back to a plain split
        return re.split(r"[\s;&|()<>]+", command)


def _path_candidates(token: str) -> list[str]:
    if not token or _URL_RE.match(token) or "$" in token or "`" in token:
        return []
    out = [token]
    if token.startswith("-") and "=" in token:  # --output=/etc/x
        out = [token.split("=", 1)[1]]
    elif "=" in token and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", token):  # VAR=/path
        out = [token.split("=", 1)[1]]
    elif token.startswith("-"):  # -C/etc, -o../x
        match = re.search(r"[/~]|\.\.", token)
        if not match:
            return []
        out = [token[match.start() :]]
    return [c for c in out if c]


def check_bash(workspace: Path, command: str) -> str | None:
    """Best-effort lexical check of a shell command (see the module docstring for its limits)."""
    if not isinstance(command, str) or not command.strip():
        return "Bash denied: the command is empty."
    if _ENV_DUMP_RE.search(command):
        return "Bash denied: reading the environment or secrets is not allowed."
    ws = Path(workspace).resolve()
    cwd = ws
    tokens = _split_command(command)
    expect_cd_target = False
    for index, token in enumerate(tokens):
        if token in _SHELL_OPERATORS or set(token) <= set("<>&|;()"):
            expect_cd_target = False
            continue
        at_command_start = index == 0 or tokens[index - 1] in _SHELL_OPERATORS
        if at_command_start and token in {"cd", "pushd", "chdir"}:
            expect_cd_target = True
            continue
        if expect_cd_target:
            expect_cd_target = False
            if token == "-":
                return "Bash denied: `cd -` may leave the workspace."
            if "$" in token or "`" in token:
                return f"Bash denied: cd to {token} cannot be checked; use a plain path inside the workspace."
            try:
                cwd = resolve_in_workspace(ws, token, cwd=cwd)
            except SandboxViolation:
                return f"Bash denied: cd {token} leaves the workspace."
            continue
        for candidate in _path_candidates(token):
            if candidate in _ALLOWED_ABSOLUTE or candidate.startswith(_ALLOWED_ABSOLUTE_PREFIXES):
                continue
            if candidate.startswith("/proc") and "environ" in candidate:
                return "Bash denied: reading the environment or secrets is not allowed."
            try:
                resolve_in_workspace(ws, candidate, cwd=cwd)
            except SandboxViolation:
                return f"Bash denied: {candidate} is outside the workspace."
    return None


class SubagentLimiter:
    """At most ``limit`` concurrent sub-agents per turn (tools ``Task`` and ``Agent``)."""

    def __init__(self, limit: int | None = None) -> None:
        self.limit = int(limit if limit is not None else agent_config().max_subagents)
        self.active = 0
        self._lock = threading.Lock()

    def acquire(self) -> bool:
        with self._lock:
            if self.active >= self.limit:
                return False
            self.active += 1
            return True

    def release(self) -> None:
        with self._lock:
            self.active = max(0, self.active - 1)


def check_tool_input(
    workspace: Path,
    tool_name: str,
    tool_input: dict[str, Any],
    *,
    limiter: SubagentLimiter | None = None,
) -> str | None:
    """The tool policy: ``None`` to allow, or a short human reason to deny.

    With a ``limiter``, an allowed ``Task``/``Agent`` call takes a slot; the caller releases it
    (``limiter.release()``) when that sub-agent's tool call finishes.
    """
    tool_input = tool_input if isinstance(tool_input, dict) else {}
    if tool_name in FILE_TOOLS:
        return _check_paths(workspace, tool_name, tool_input)
    if tool_name == "Bash":
        command = tool_input.get("command", "")
        if jail_active():
            # The jail is the boundary (agents/jail.py): a command sees only the workspace, so
            # no lexical guess about it is needed.
            return (
                None if isinstance(command, str) and command.strip() else "Bash denied: the command is empty."
            )
        return check_bash(workspace, command)
    if tool_name in SUBAGENT_TOOLS:
        if limiter is not None and not limiter.acquire():
            return f"{tool_name} denied: at most {limiter.limit} sub-agents may run at once."
        return None
    # Other tools (MCP, web, todo...) carry no paths we police; but a generic path key still must
    # stay inside.
    return _check_paths(workspace, tool_name, tool_input)


def _is_empty(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    if isinstance(value, dict):
        return all(_is_empty(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return len(value) == 0
    return False


class EmptyInputBreaker:
    """Ends a turn after ``limit`` consecutive tool calls with empty input (a looping model)."""

    def __init__(self, limit: int | None = None) -> None:
        self.limit = int(limit if limit is not None else agent_config().empty_tool_input_limit)
        self.consecutive = 0

    def record(self, tool_name: str, tool_input: Any) -> None:
        """Count one tool call; raise ``AgentError(POLICY)`` when the limit is reached."""
        if tool_name in NO_INPUT_TOOLS or tool_name.startswith(MCP_PREFIX):
            return  # neither counts nor breaks a run (an MCP tool may take no input: list_notes)
        if not _is_empty(tool_input):
            self.consecutive = 0
            return
        self.consecutive += 1
        if self.consecutive >= self.limit:
            raise AgentError(
                ErrorKind.POLICY,
                detail=f"{self.consecutive} consecutive {tool_name} calls with empty input",
                message=(
                    f"The agent was stopped: it made {self.consecutive} tool calls in a row "
                    "with empty input. "
                    "Please rephrase the request and try again."
                ),
            )

"""The api backend's in-process tools, all confined to the session workspace.

``TOOL_SCHEMAS`` is the Messages API ``tools`` parameter (names and inputs follow Claude Code's
tools so both backends look alike to the model and in the UI). ``run_tool`` applies the sandbox
policy first (a denied call is never executed) and returns a ``ToolOutcome``; failures and
denials come back as ``is_error`` results (``tool-output-error`` chunks), never as exceptions.

Bash runs ``/bin/bash -c`` with cwd = the workspace, HOME/TMPDIR inside it, a minimal
environment (PATH, LANG, HOME, TMPDIR, PWD — no ANTHROPIC_* or other secrets), a timeout that
kills the whole process group, and output capped at AGENT_TOOL_OUTPUT_LIMIT characters.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import os
import re
import signal
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agents.config import agent_config
from agents.errors import scrub
from agents.jail import (
    drops_privileges,
    hand_over_tree,
    jail_active,
    jail_spawn_argv,
    prepare_workspace,
    quota_exceeded,
    spawn_env,
)
from agents.sandbox import SandboxViolation, check_tool_input, glob_base, resolve_in_workspace

MAX_READ_BYTES = 2 * 1024 * 1024
MAX_GLOB_RESULTS = 500
MAX_GREP_MATCHES = 300
SKIP_DIRS = frozenset({".git", "node_modules", "__pycache__", ".venv"})


@dataclass
class ToolOutcome:
    output: str
    is_error: bool = False
    over_quota: bool = False  # the workspace quota was exceeded by this call (the turn ends)
    denied: bool = False  # not run: the user denied it (``tool-output-denied``; agents/approval.py)


# Tools that can grow the workspace (the quota is checked after each of their calls).
WRITING_TOOLS = frozenset({"Bash", "Write", "Edit"})


TOOL_SCHEMAS: list[dict[str, Any]] = [
    {
        "name": "Bash",
        "description": "Run a shell command in the session's working directory and return its output. "
        "Commands must stay inside the working directory.",
        "input_schema": {
            "type": "object",
            "properties": {
                "command": {"type": "string", "description": "The command to run."},
                "description": {"type": "string", "description": "What the command does, in a few words."},
                "timeout": {"type": "number", "description": "Timeout in milliseconds (optional)."},
            },
            "required": ["command"],
        },
    },
    {
        "name": "Read",
        "description": "Read a text file from the working directory. Lines are numbered.",
        "input_schema": {
            "type": "object",
            "properties": {
                "file_path": {
                    "type": "string",
                    "description": "Path of the file (relative or absolute inside the working directory).",
                },
                "offset": {"type": "integer", "description": "Line number to start at (1-based)."},
                "limit": {"type": "integer", "description": "Number of lines to read."},
            },
            "required": ["file_path"],
        },
    },
    {
        "name": "Write",
        "description": "Create or overwrite a file in the working directory.",
        "input_schema": {
            "type": "object",
            "properties": {
                "file_path": {"type": "string"},
                "content": {"type": "string"},
            },
            "required": ["file_path", "content"],
        },
    },
    {
        "name": "Edit",
        "description": "Replace an exact string in a file. "
        "old_string must be unique unless replace_all is true.",
        "input_schema": {
            "type": "object",
            "properties": {
                "file_path": {"type": "string"},
                "old_string": {"type": "string"},
                "new_string": {"type": "string"},
                "replace_all": {"type": "boolean", "default": False},
            },
            "required": ["file_path", "old_string", "new_string"],
        },
    },
    {
        "name": "Glob",
        "description": "List files matching a glob pattern (e.g. **/*.py) in the working directory.",
        "input_schema": {
            "type": "object",
            "properties": {
                "pattern": {"type": "string"},
                "path": {
                    "type": "string",
                    "description": "Directory to search in (default: the working directory).",
                },
            },
            "required": ["pattern"],
        },
    },
    {
        "name": "Grep",
        "description": "Search file contents with a regular expression; returns path:line:text matches.",
        "input_schema": {
            "type": "object",
            "properties": {
                "pattern": {"type": "string", "description": "Python regular expression."},
                "path": {
                    "type": "string",
                    "description": "File or directory to search (default: the working directory).",
                },
                "glob": {
                    "type": "string",
                    "description": "Only files whose name matches this glob (e.g. *.py).",
                },
                "case_insensitive": {"type": "boolean", "default": False},
            },
            "required": ["pattern"],
        },
    },
]

TOOL_NAMES = frozenset(schema["name"] for schema in TOOL_SCHEMAS)


def _limit() -> int:
    return agent_config().tool_output_limit


def cap_output(text: str, limit: int | None = None) -> str:
    limit = limit or _limit()
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n… [output truncated: {len(text) - limit} more characters]"


def tool_env(workspace: Path) -> dict[str, str]:
    """The minimal environment of tool subprocesses: nothing secret is inherited."""
    ws = Path(workspace).resolve()
    (ws / "home").mkdir(exist_ok=True)
    (ws / "tmp").mkdir(exist_ok=True)
    return {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "LANG": os.environ.get("LANG", "C.UTF-8"),
        "HOME": str(ws / "home"),
        "TMPDIR": str(ws / "tmp"),
        "PWD": str(ws),
        "TERM": "dumb",
    }


def _display(workspace: Path, path: Path) -> str:
    try:
        return str(path.relative_to(Path(workspace).resolve())) or "."
    except ValueError:
        return str(path)


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    """Kill the command and everything it started (it leads its own session/process group)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


async def _bash(workspace: Path, tool_input: dict[str, Any]) -> ToolOutcome:
    command = str(tool_input.get("command", ""))
    timeout = agent_config().tool_timeout_seconds
    if isinstance(tool_input.get("timeout"), (int, float)) and tool_input["timeout"] > 0:
        timeout = min(timeout, float(tool_input["timeout"]) / 1000)
    ws = Path(workspace).resolve()
    if jail_active():
        # A fresh jail per call (agents/jail.py); its whole process tree dies with it.
        prepare_workspace(ws)
        argv, env = jail_spawn_argv(ws, ["/bin/bash", "-c", command]), spawn_env()
    else:  # AGENT_JAIL=off (DEBUG only): a plain subprocess with a clean environment
        argv, env = ["/bin/bash", "-c", command], tool_env(ws)
    spawn = asyncio.ensure_future(
        asyncio.create_subprocess_exec(
            *argv,
            cwd=str(ws),
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
    )
    try:
        # shielded: a cancel during the spawn must still give us the process to kill
        proc = await asyncio.shield(spawn)
    except asyncio.CancelledError:
        with contextlib.suppress(BaseException):
            _kill_group(await spawn)
        raise
    try:
        stdout, _ = await asyncio.wait_for(proc.communicate(), timeout=timeout)
    except (TimeoutError, asyncio.CancelledError) as exc:
        _kill_group(proc)
        with contextlib.suppress(BaseException):  # a daemonised grandchild may keep the pipe open
            await asyncio.wait_for(asyncio.shield(proc.wait()), timeout=2.0)
        if isinstance(exc, asyncio.CancelledError):
            raise
        return ToolOutcome(f"Command timed out after {timeout:g}s and was killed.", is_error=True)
    text = cap_output(stdout.decode("utf-8", errors="replace").rstrip("\n"))
    if proc.returncode:
        return ToolOutcome(f"Exit code {proc.returncode}\n{text}".rstrip(), is_error=True)
    return ToolOutcome(text)


def _read(workspace: Path, tool_input: dict[str, Any]) -> ToolOutcome:
    path = resolve_in_workspace(workspace, str(tool_input.get("file_path", "")))
    if not path.is_file():
        return ToolOutcome(f"File not found: {_display(workspace, path)}", is_error=True)
    if path.stat().st_size > MAX_READ_BYTES:
        return ToolOutcome(
            f"File too large to read ({path.stat().st_size} bytes); use offset/limit via Bash head/tail.",
            is_error=True,
        )
    data = path.read_bytes()
    if b"\x00" in data[:8192]:
        return ToolOutcome(f"{_display(workspace, path)} is a binary file.", is_error=True)
    lines = data.decode("utf-8", errors="replace").splitlines()
    offset = max(1, int(tool_input.get("offset") or 1))
    limit = int(tool_input.get("limit") or 2000)
    chosen = lines[offset - 1 : offset - 1 + limit]
    if not chosen:
        return ToolOutcome(
            "(empty file)" if not lines else f"(no lines at offset {offset}; the file has {len(lines)})"
        )
    return ToolOutcome(cap_output("\n".join(f"{n:6}\t{line}" for n, line in enumerate(chosen, offset))))


def _write(workspace: Path, tool_input: dict[str, Any]) -> ToolOutcome:
    path = resolve_in_workspace(workspace, str(tool_input.get("file_path", "")))
    content = tool_input.get("content")
    if not isinstance(content, str):
        return ToolOutcome("Write needs a string 'content'.", is_error=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content, encoding="utf-8")
    return ToolOutcome(f"Wrote {len(content.encode())} bytes to {_display(workspace, path)}.")


def _edit(workspace: Path, tool_input: dict[str, Any]) -> ToolOutcome:
    path = resolve_in_workspace(workspace, str(tool_input.get("file_path", "")))
    old, new = tool_input.get("old_string"), tool_input.get("new_string")
    if not isinstance(old, str) or not isinstance(new, str) or not old:
        return ToolOutcome("Edit needs non-empty 'old_string' and a 'new_string'.", is_error=True)
    if not path.is_file():
        return ToolOutcome(f"File not found: {_display(workspace, path)}", is_error=True)
    text = path.read_text(encoding="utf-8", errors="replace")
    count = text.count(old)
    if count == 0:
        return ToolOutcome("old_string was not found in the file.", is_error=True)
    if count > 1 and not tool_input.get("replace_all"):
        return ToolOutcome(
            f"old_string occurs {count} times; make it unique or set replace_all.", is_error=True
        )
    path.write_text(
        text.replace(old, new) if tool_input.get("replace_all") else text.replace(old, new, 1),
        encoding="utf-8",
    )
    return ToolOutcome(
        f"Edited {_display(workspace, path)} "
        f"({count if tool_input.get('replace_all') else 1} replacement(s))."
    )


def _inside(workspace: Path, path: Path) -> bool:
    try:
        resolve_in_workspace(workspace, str(path))
        return True
    except SandboxViolation:
        return False


def _glob(workspace: Path, tool_input: dict[str, Any]) -> ToolOutcome:
    base = resolve_in_workspace(workspace, str(tool_input.get("path") or "."))
    pattern = str(tool_input.get("pattern", ""))
    if not pattern:
        return ToolOutcome("Glob needs a 'pattern'.", is_error=True)
    if pattern.startswith("/"):  # absolute pattern inside the workspace: split off its base
        prefix = glob_base(pattern)
        base = resolve_in_workspace(workspace, prefix)
        pattern = pattern[len(prefix) :].lstrip("/") or "*"
    matches = []
    for match in sorted(base.glob(pattern)):
        if any(part in SKIP_DIRS for part in match.parts) or not _inside(workspace, match):
            continue
        matches.append(_display(workspace, match))
        if len(matches) >= MAX_GLOB_RESULTS:
            break
    return ToolOutcome("\n".join(matches) if matches else "No files found.")


def _iter_files(workspace: Path, base: Path) -> Any:
    if base.is_file():
        yield base
        return
    for root, dirs, files in os.walk(base, followlinks=False):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
        for name in sorted(files):
            path = Path(root) / name
            if _inside(workspace, path):
                yield path


def _grep(workspace: Path, tool_input: dict[str, Any]) -> ToolOutcome:
    base = resolve_in_workspace(workspace, str(tool_input.get("path") or "."))
    try:
        regex = re.compile(
            str(tool_input.get("pattern", "")), re.IGNORECASE if tool_input.get("case_insensitive") else 0
        )
    except re.error as exc:
        return ToolOutcome(f"Invalid regular expression: {exc}", is_error=True)
    name_glob = tool_input.get("glob")
    matches: list[str] = []
    for path in _iter_files(workspace, base):
        if name_glob and not fnmatch.fnmatch(path.name, str(name_glob)):
            continue
        try:
            if path.stat().st_size > MAX_READ_BYTES:
                continue
            data = path.read_bytes()
        except OSError:
            continue
        if b"\x00" in data[:8192]:
            continue
        for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
            if regex.search(line):
                matches.append(f"{_display(workspace, path)}:{number}:{line[:500]}")
                if len(matches) >= MAX_GREP_MATCHES:
                    return ToolOutcome(cap_output("\n".join(matches) + "\n… [more matches omitted]"))
    return ToolOutcome(cap_output("\n".join(matches)) if matches else "No matches found.")


class _WorkspaceGate:
    """Jailed commands and the in-process file tools of one workspace never run at the same time
    (parallel tool calls of one message): a command cannot swap a symlink between a file tool's
    path check and its open. Calls of the same kind run together."""

    def __init__(self) -> None:
        self.kind: str | None = None
        self.running = 0
        self.changed = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def enter(self, kind: str) -> Any:
        async with self.changed:
            await self.changed.wait_for(lambda: self.running == 0 or self.kind == kind)
            self.kind = kind
            self.running += 1
        try:
            yield
        finally:
            async with self.changed:
                self.running -= 1
                self.changed.notify_all()


_gates: weakref.WeakValueDictionary[tuple[int, str], _WorkspaceGate] = weakref.WeakValueDictionary()


def _gate(workspace: Path) -> _WorkspaceGate:
    key = (id(asyncio.get_running_loop()), str(workspace))
    gate = _gates.get(key)
    if gate is None:
        gate = _gates[key] = _WorkspaceGate()
    return gate


_SYNC_TOOLS = {"Read": _read, "Write": _write, "Edit": _edit, "Glob": _glob, "Grep": _grep}


async def run_tool(workspace: Path, tool_name: str, tool_input: Any, *, limiter: Any = None) -> ToolOutcome:
    """Check the call against the sandbox policy, then run it. Never raises (except cancel)."""
    if not isinstance(tool_input, dict):
        return ToolOutcome(f"{tool_name} needs an object as input.", is_error=True)
    reason = check_tool_input(workspace, tool_name, tool_input, limiter=limiter)
    if reason:
        return ToolOutcome(f"Permission denied: {reason}", is_error=True)
    try:
        gate = _gate(workspace)
        if tool_name == "Bash":
            async with gate.enter("bash"):
                outcome = await _bash(workspace, tool_input)
        else:
            fn = _SYNC_TOOLS.get(tool_name)
            if fn is None:
                return ToolOutcome(
                    f"Unknown tool {tool_name!r}. Available: {', '.join(sorted(TOOL_NAMES))}.", is_error=True
                )
            async with gate.enter("files"):
                outcome = await asyncio.to_thread(fn, workspace, tool_input)
                if tool_name in ("Write", "Edit") and drops_privileges():
                    hand_over_tree(
                        Path(workspace), resolve_in_workspace(workspace, str(tool_input.get("file_path", "")))
                    )
        if tool_name in WRITING_TOOLS:
            over = await asyncio.to_thread(quota_exceeded, Path(workspace))
            if over:
                return ToolOutcome(f"{outcome.output}\n\n{over}".strip(), is_error=True, over_quota=True)
        return outcome
    except SandboxViolation as exc:
        return ToolOutcome(f"Permission denied: {exc}.", is_error=True)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - a tool failure is a result for the model
        return ToolOutcome(scrub(f"{tool_name} failed: {type(exc).__name__}: {exc}"), is_error=True)

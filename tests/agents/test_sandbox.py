"""The workspace sandbox: escapes are denied, reported as tool errors and never executed."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from agents.errors import AgentError, ErrorKind
from agents.sandbox import (
    EmptyInputBreaker,
    SandboxViolation,
    SubagentLimiter,
    check_tool_input,
    resolve_in_workspace,
    workspace_for,
)
from agents.tools import run_tool


@pytest.fixture
def lexical_layer(settings):
    """The lexical Bash check: the policy only when the jail is off (AGENT_JAIL=off, DEBUG only;
    tests/security/test_jail.py covers the jail)."""
    settings.AGENT_JAIL = "off"


def test_workspace_for_is_safe_and_prepared(workspace_root):
    sid = str(uuid.uuid4())
    ws = workspace_for(sid)
    assert ws.parent == workspace_root.resolve() and ws.name == sid
    assert (ws / "home").is_dir() and (ws / "tmp").is_dir()
    hostile = workspace_for("../../etc/passwd")
    assert hostile.parent == workspace_root.resolve()
    assert ".." not in hostile.name and "/" not in hostile.name
    assert workspace_for("../../etc/passwd") == hostile  # stable
    assert workspace_for("a/b") != workspace_for("a_b")  # distinct ids stay distinct


def test_resolve_in_workspace(workspace, tmp_path):
    assert resolve_in_workspace(workspace, "a/b.txt") == workspace / "a" / "b.txt"
    assert resolve_in_workspace(workspace, str(workspace / "x")) == workspace / "x"
    assert resolve_in_workspace(workspace, "~/notes") == workspace / "home" / "notes"
    for bad in ("../x", "a/../../x", "/etc/passwd", str(tmp_path / "outside"), "~root/x"):
        with pytest.raises(SandboxViolation):
            resolve_in_workspace(workspace, bad)
    outside = tmp_path / "outside-dir"
    outside.mkdir()
    (workspace / "link").symlink_to(outside)
    with pytest.raises(SandboxViolation):
        resolve_in_workspace(workspace, "link/file.txt")


@pytest.mark.parametrize(
    ("tool", "tool_input"),
    [
        ("Read", {"file_path": "/etc/passwd"}),
        ("Read", {"file_path": "../../etc/passwd"}),
        ("Write", {"file_path": "sub/../../escape.txt", "content": "x"}),
        ("Edit", {"file_path": "/etc/hosts", "old_string": "a", "new_string": "b"}),
        ("MultiEdit", {"file_path": "/etc/hosts", "edits": []}),
        ("NotebookEdit", {"notebook_path": "/tmp/x.ipynb", "new_source": ""}),
        ("Glob", {"pattern": "../**/*"}),
        ("Glob", {"pattern": "/etc/*"}),
        ("Grep", {"pattern": "root", "path": "/etc"}),
        ("LS", {"path": "/"}),
        ("Bash", {"command": "cat /etc/passwd"}),
        ("Bash", {"command": "cd .. && ls"}),
        ("Bash", {"command": "cd /tmp"}),
        ("Bash", {"command": "ls ../"}),
        ("Bash", {"command": "echo x > /tmp/escape"}),
        ("Bash", {"command": "tar -C/etc -cf a.tar ."}),
        ("Bash", {"command": "printenv"}),
        ("Bash", {"command": "env | grep KEY"}),
        ("Bash", {"command": "echo $ANTHROPIC_API_KEY"}),
        ("Bash", {"command": "echo ${ANTHROPIC_AUTH_TOKEN}"}),
        ("Bash", {"command": "cat /proc/self/environ"}),
        ("Bash", {"command": "cat /proc/1/environ"}),
        ("Bash", {"command": "set"}),
    ],
)
@pytest.mark.usefixtures("lexical_layer")
def test_policy_denies_escapes(workspace, tool, tool_input):
    reason = check_tool_input(workspace, tool, tool_input)
    assert reason and tool in reason


@pytest.mark.parametrize(
    ("tool", "tool_input"),
    [
        ("Read", {"file_path": "notes.txt"}),
        ("Write", {"file_path": "sub/dir/new.txt", "content": "x"}),
        ("Glob", {"pattern": "**/*.py"}),
        ("Grep", {"pattern": "TODO", "path": ".", "glob": "*.py"}),
        ("Bash", {"command": "echo hi"}),
        ("Bash", {"command": "set -e; ls -la 2>/dev/null | head -n 3"}),
        ("Bash", {"command": "mkdir -p sub && cd sub && cat ../notes.txt"}),
        ("Bash", {"command": "/usr/bin/python3 -c 'print(1)'"}),
        ("Bash", {"command": "curl -s https://example.com/a/b"}),
        ("Bash", {"command": "cp notes.txt ~/backup.txt"}),
        ("WebSearch", {"query": "django"}),
    ],
)
def test_policy_allows_work_inside(workspace, tool, tool_input):
    assert check_tool_input(workspace, tool, tool_input) is None


@pytest.mark.usefixtures("lexical_layer")
def test_symlink_escape_is_denied_for_file_tools_and_bash(workspace, tmp_path):
    outside = tmp_path / "secret-dir"
    outside.mkdir()
    (outside / "secret.txt").write_text("top secret")
    (workspace / "door").symlink_to(outside)
    assert check_tool_input(workspace, "Read", {"file_path": "door/secret.txt"})
    assert check_tool_input(workspace, "Write", {"file_path": "door/new.txt", "content": "x"})
    assert check_tool_input(workspace, "Bash", {"command": "cat door/secret.txt"})


@pytest.mark.usefixtures("lexical_layer")
async def test_denied_calls_are_tool_errors_and_never_run(workspace, tmp_path):
    outside = tmp_path / "target"
    outside.mkdir()
    (workspace / "door").symlink_to(outside)

    write = await run_tool(
        workspace, "Write", {"file_path": str(outside / "written.txt"), "content": "pwned"}
    )
    assert write.is_error and "Permission denied" in write.output
    via_link = await run_tool(workspace, "Write", {"file_path": "door/linked.txt", "content": "pwned"})
    assert via_link.is_error
    dotdot = await run_tool(workspace, "Write", {"file_path": "../dotdot.txt", "content": "pwned"})
    assert dotdot.is_error
    bash = await run_tool(workspace, "Bash", {"command": f"touch {outside}/bash.txt"})
    assert bash.is_error and "Permission denied" in bash.output
    cd = await run_tool(workspace, "Bash", {"command": "cd .. && touch cd-escape.txt"})
    assert cd.is_error
    read = await run_tool(workspace, "Read", {"file_path": "/etc/hostname"})
    assert read.is_error and "Permission denied" in read.output

    assert not any(outside.iterdir()), "a denied call was executed"
    assert not (workspace.parent / "dotdot.txt").exists()
    assert not (workspace.parent / "cd-escape.txt").exists()


async def test_bash_env_is_scrubbed_and_confined(workspace, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-should-never-leak-123")
    monkeypatch.setenv("DATABASE_PASSWORD_X", "hunter2")
    probe = (
        "import os; print(os.getcwd()); print(os.environ.get('ANTHROPIC_API_KEY')); "
        "print(os.environ['HOME']); print(os.environ['TMPDIR']); "
        "print(len([k for k in os.environ if 'PASSWORD' in k]))"
    )
    outcome = await run_tool(workspace, "Bash", {"command": f'python3 -c "{probe}"'})
    assert not outcome.is_error, outcome.output
    cwd, key, home, tmp, passwords = outcome.output.splitlines()
    assert Path(cwd) == workspace
    assert key == "None"
    assert Path(home) == workspace / "home" and Path(tmp) == workspace / "tmp"
    assert passwords == "0"


async def test_file_tools_work_inside(workspace):
    assert not (
        await run_tool(workspace, "Write", {"file_path": "src/a.py", "content": "x = 1\n# TODO later\n"})
    ).is_error
    edit = await run_tool(
        workspace, "Edit", {"file_path": "src/a.py", "old_string": "x = 1", "new_string": "x = 2"}
    )
    assert not edit.is_error
    read = await run_tool(workspace, "Read", {"file_path": "src/a.py"})
    assert "x = 2" in read.output and "1\t" in read.output
    assert (await run_tool(workspace, "Glob", {"pattern": "**/*.py"})).output == "src/a.py"
    assert (await run_tool(workspace, "Grep", {"pattern": "TODO"})).output == "src/a.py:2:# TODO later"
    failing = await run_tool(workspace, "Bash", {"command": "exit 3"})
    assert failing.is_error and "Exit code 3" in failing.output


async def test_bash_timeout_kills_the_command(workspace, settings):
    settings.AGENT_TOOL_TIMEOUT_SECONDS = 0.3
    outcome = await run_tool(workspace, "Bash", {"command": "sleep 5; touch late.txt"})
    assert outcome.is_error and "timed out" in outcome.output
    assert not (workspace / "late.txt").exists()


def test_subagent_limiter_covers_task_and_agent(workspace):
    limiter = SubagentLimiter(limit=2)
    assert check_tool_input(workspace, "Task", {"prompt": "a"}, limiter=limiter) is None
    assert check_tool_input(workspace, "Agent", {"prompt": "b"}, limiter=limiter) is None
    denied = check_tool_input(workspace, "Agent", {"prompt": "c"}, limiter=limiter)
    assert denied and "at most 2" in denied
    limiter.release()
    assert check_tool_input(workspace, "Task", {"prompt": "d"}, limiter=limiter) is None


def test_empty_input_breaker():
    breaker = EmptyInputBreaker(limit=3)
    breaker.record("Bash", {})
    breaker.record("Bash", {"command": ""})
    breaker.record("Read", {"file_path": "a"})  # resets the run
    breaker.record("Bash", {})
    breaker.record("TodoRead", {})  # a no-input tool does not count
    breaker.record("Bash", None)
    with pytest.raises(AgentError) as caught:
        breaker.record("Bash", {"command": "  "})
    assert caught.value.kind == ErrorKind.POLICY
    assert "empty input" in caught.value.message
    assert os.sep not in caught.value.message

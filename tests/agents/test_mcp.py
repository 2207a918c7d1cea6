"""MCP servers (docs/agents.md "MCP servers"): real MCP sessions with the project's notes server
(``agents.mcp_notes``) over stdio (started inside the jail, cwd = the workspace) and over
streamable HTTP (a server process on a free port), through both backends with the scripted
model's ``/mcp <server>__<tool> <json args>`` directive. No mocks."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agents.approval import ApprovalAnswer, ToolRules
from agents.jail import jail_active, jail_spawn_argv, python_runtime_binds, python_runtime_env, spawn_env
from agents.mcp_config import McpConfigError, McpServerConfig, headers_expand, server_name_problem
from tests.agents.conftest import run_turn_chunks, text_of, turn_input

PROJECT = Path(__file__).resolve().parents[2]
NOTES = ("python", "-m", "agents.mcp_notes")
ALLOW = ToolRules(mode="auto", rules={"mcp__*": "allow"})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def notes_http_start(directory: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agents.mcp_notes",
            "--http",
            "--port",
            str(port),
            "--dir",
            str(directory),
            *extra,
        ],
        cwd=PROJECT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return proc, f"http://127.0.0.1:{port}/mcp"
        if proc.poll() is not None:
            raise RuntimeError("the notes server did not start")
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("the notes server did not listen in time")


@pytest.fixture(scope="module")
def notes_http(tmp_path_factory):
    """The notes server over streamable HTTP: (url, its notes directory)."""
    directory = tmp_path_factory.mktemp("notes-http")
    proc, url = notes_http_start(directory)
    yield url, directory
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def notes_http_slow(tmp_path_factory):
    """A notes server whose ``slow_note`` takes 5 s."""
    directory = tmp_path_factory.mktemp("notes-slow")
    proc, url = notes_http_start(directory, "--slow-tool", "5")
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture(params=["api", pytest.param("sdk", marks=pytest.mark.cli)])
def backend(request):
    return request.param


def stdio_notes(name: str = "notes", **kw) -> McpServerConfig:
    return McpServerConfig(name, "stdio", command=NOTES, **kw)


def tool_outputs(chunks: list[dict]) -> list[dict]:
    return [c for c in chunks if c["type"] in ("tool-output-available", "tool-output-error")]


def output_text(chunk: dict) -> str:
    return str(chunk.get("output") if chunk["type"] == "tool-output-available" else chunk.get("errorText"))


# ------------------------------------------------------------------------------------------------
# The configuration helpers
# ------------------------------------------------------------------------------------------------


def test_headers_expand_from_the_environment_and_name_an_unset_variable():
    env = {"NOTES_TOKEN": "s3cret"}
    assert headers_expand({"Authorization": "Bearer ${NOTES_TOKEN}", "X": "plain"}, env) == {
        "Authorization": "Bearer s3cret",
        "X": "plain",
    }
    with pytest.raises(McpConfigError, match="MISSING_VAR is not set"):
        headers_expand({"Authorization": "Bearer ${MISSING_VAR}"}, env)


@pytest.mark.parametrize("name", ["notes", "my-notes", "a_b", "n1"])
def test_good_server_names(name):
    assert server_name_problem(name) is None


@pytest.mark.parametrize("name", ["", "Notes", "a__b", "-x", "a b", "x" * 41, "a.b"])
def test_bad_server_names(name):
    assert server_name_problem(name)


# ------------------------------------------------------------------------------------------------
# Both backends, both transports
# ------------------------------------------------------------------------------------------------


async def test_stdio_notes_server_runs_in_the_workspace(backend, scripted_model, workspace):
    inp = turn_input(
        workspace,
        '/mcp notes__add_note {"title": "Shopping list", "text": "milk"}',
        backend=backend,
        tools=ToolRules(mode="auto", rules={"mcp__*": "allow"}),
        mcp_servers=[stdio_notes()],
    )
    chunks, result = await run_turn_chunks(inp, timeout=90)
    assert result.error is None, result.error
    shown = next(c for c in chunks if c["type"] == "tool-input-available")
    assert shown["toolName"] == "mcp__notes__add_note"
    assert shown["input"] == {"title": "Shopping list", "text": "milk"}
    [output] = tool_outputs(chunks)
    assert output["type"] == "tool-output-available", output
    assert "notes/shopping-list.md" in output_text(output)
    assert chunks[-1]["type"] == "finish"
    assert "Tool result" in text_of(chunks)
    assert (workspace / "notes" / "shopping-list.md").read_text().startswith("# Shopping list")


async def test_http_notes_server(backend, scripted_model, workspace, notes_http):
    url, directory = notes_http
    server = McpServerConfig("web-notes", "http", url=url, headers=(("X-Copilot", "test"),))
    inp = turn_input(
        workspace,
        f'/mcp web-notes__add_note {{"title": "From {backend}", "text": "over http"}}',
        backend=backend,
        tools=ToolRules(mode="auto", rules={"mcp__*": "allow"}),
        mcp_servers=[server],
    )
    chunks, result = await run_turn_chunks(inp, timeout=90)
    assert result.error is None, result.error
    [output] = tool_outputs(chunks)
    assert output["type"] == "tool-output-available", output
    assert (directory / "notes" / f"from-{backend}.md").is_file()
    assert chunks[-1]["type"] == "finish"


async def test_an_mcp_call_asks_by_default_and_runs_once_approved(backend, scripted_model, workspace):
    asked: list[tuple[str, dict]] = []

    async def approve(tool_call_id: str, name: str, tool_input: dict) -> ApprovalAnswer:
        asked.append((name, tool_input))
        return ApprovalAnswer(approved=True)

    inp = turn_input(
        workspace,
        '/mcp notes__add_note {"title": "approved", "text": "yes"}',
        backend=backend,
        tools=ToolRules(mode="auto"),  # no rule: MCP tools ask
        approve=approve,
        mcp_servers=[stdio_notes()],
    )
    chunks, result = await run_turn_chunks(inp, timeout=90)
    assert result.error is None, result.error
    assert asked == [("mcp__notes__add_note", {"title": "approved", "text": "yes"})]
    [output] = tool_outputs(chunks)
    assert output["type"] == "tool-output-available", output
    assert (workspace / "notes" / "approved.md").is_file()


async def test_a_denied_mcp_call_never_runs(backend, scripted_model, workspace):
    async def approve(tool_call_id: str, name: str, tool_input: dict) -> ApprovalAnswer:
        return ApprovalAnswer(approved=False, reason="not now")

    inp = turn_input(
        workspace,
        '/mcp notes__add_note {"title": "denied", "text": "no"}',
        backend=backend,
        approve=approve,
        mcp_servers=[stdio_notes()],
    )
    chunks, result = await run_turn_chunks(inp, timeout=90)
    assert result.error is None, result.error
    assert chunks[-1]["type"] == "finish"
    assert not (workspace / "notes" / "denied.md").exists()
    assert "not now" in text_of(chunks)


# ------------------------------------------------------------------------------------------------
# Failures: a tool-output-error or a note, never a failed turn
# ------------------------------------------------------------------------------------------------


async def test_a_server_whose_command_does_not_exist(backend, scripted_model, workspace):
    broken = McpServerConfig("broken", "stdio", command=("/nonexistent/mcp-server",), timeout_seconds=10)
    inp = turn_input(
        workspace,
        '/mcp broken__anything {"x": 1}',
        backend=backend,
        tools=ALLOW,
        mcp_servers=[broken, stdio_notes()],
    )
    chunks, result = await run_turn_chunks(inp, timeout=90)
    assert result.error is None, result.error
    [output] = tool_outputs(chunks)
    assert output["type"] == "tool-output-error", output
    assert chunks[-1]["type"] == "finish"
    if backend == "api":
        status = [c for c in chunks if c["type"] == "data-status" and c["data"]["code"] == "mcp-unavailable"]
        assert status and "broken" in status[0]["data"]["message"]
        assert "/nonexistent/mcp-server" in status[0]["data"]["message"]


async def test_a_tool_that_raises_is_a_tool_error(backend, scripted_model, workspace):
    inp = turn_input(
        workspace,
        '/mcp notes__read_note {"title": "never written"}',
        backend=backend,
        tools=ALLOW,
        mcp_servers=[stdio_notes()],
    )
    chunks, result = await run_turn_chunks(inp, timeout=90)
    assert result.error is None, result.error
    [output] = tool_outputs(chunks)
    assert output["type"] == "tool-output-error", output
    assert "There is no note titled 'never written'" in output_text(output)
    assert chunks[-1]["type"] == "finish"
    assert "Tool error" in text_of(chunks)


async def test_a_tool_that_times_out_is_a_tool_error(backend, scripted_model, workspace, notes_http_slow):
    slow = McpServerConfig("slow", "http", url=notes_http_slow, timeout_seconds=1.5)
    inp = turn_input(
        workspace, '/mcp slow__slow_note {"title": "t"}', backend=backend, tools=ALLOW, mcp_servers=[slow]
    )
    started = asyncio.get_running_loop().time()
    chunks, result = await run_turn_chunks(inp, timeout=90)
    assert result.error is None, result.error
    [output] = tool_outputs(chunks)
    assert output["type"] == "tool-output-error", output
    assert "1.5s" in output_text(output)
    assert chunks[-1]["type"] == "finish"
    assert asyncio.get_running_loop().time() - started < 30


async def test_a_server_that_does_not_start_in_time(scripted_model, workspace):
    late = McpServerConfig("late", "stdio", command=(*NOTES, "--start-delay", "10"), timeout_seconds=1.5)
    inp = turn_input(workspace, "/mcp late__list_notes {}", tools=ALLOW, mcp_servers=[late])
    chunks, result = await run_turn_chunks(inp, timeout=60)
    assert result.error is None, result.error
    status = [c for c in chunks if c["type"] == "data-status" and c["data"]["code"] == "mcp-unavailable"]
    assert "did not start within 1.5s" in status[0]["data"]["message"]
    [output] = tool_outputs(chunks)
    assert output["type"] == "tool-output-error"
    assert chunks[-1]["type"] == "finish"


async def test_an_unset_header_variable_is_a_clear_note(scripted_model, workspace, notes_http):
    url, _ = notes_http
    server = McpServerConfig("web", "http", url=url, headers=(("Authorization", "Bearer ${NO_SUCH_TOKEN}"),))
    inp = turn_input(workspace, "/mcp web__list_notes {}", tools=ALLOW, mcp_servers=[server])
    chunks, result = await run_turn_chunks(inp, timeout=60)
    assert result.error is None
    status = [c for c in chunks if c["type"] == "data-status" and c["data"]["code"] == "mcp-unavailable"]
    assert "NO_SUCH_TOKEN is not set" in status[0]["data"]["message"]
    assert chunks[-1]["type"] == "finish"


# ------------------------------------------------------------------------------------------------
# The jail of a stdio server
# ------------------------------------------------------------------------------------------------


def test_a_stdio_servers_jail_sees_the_runtime_read_only_and_no_other_project_file(workspace):
    if not jail_active():
        pytest.skip("the jail is not available here")
    script = (
        "import json, os, agents.mcp_notes; "
        f"print(json.dumps(sorted(os.listdir({str(PROJECT)!r})))); print(os.getcwd()); "
        f"open({str(PROJECT / 'agents' / 'x.py')!r}, 'w')"
    )
    argv = jail_spawn_argv(
        workspace,
        ["python", "-c", script],
        extra_binds=python_runtime_binds(),
        extra_env=python_runtime_env(),
    )
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=spawn_env(), cwd=workspace)
    lines = proc.stdout.splitlines()
    visible = set(json.loads(lines[0]))
    assert "agents" in visible
    assert not visible & {"copilot_project", "chat", "manage.py", ".env", "var", "db.sqlite3"}, visible
    assert lines[1] == str(workspace)
    assert "Read-only file system" in proc.stderr  # the project code cannot be changed from inside

"""MCP servers a chat has enabled: their configuration (plain data, built by the chat app) and the
client sessions a turn opens to them (docs/agents.md "MCP servers").

- ``McpServerConfig``: one server as the operator registered it (``chat.McpServer``), resolved
  for a turn. ``headers`` keep their ``${NAME}`` references: they are expanded from this
  process's environment when the session opens (``headers_expand``), so no secret is stored in
  the database, the turn input or a kept CLI's key.
- ``McpHub``: one turn's sessions. ``await hub.start()`` opens every server at once, each in a
  task of its own that owns its transport and ``ClientSession`` from open to close (anyio's
  task groups must be left by the task that entered them), lists its tools and waits;
  ``await hub.close()`` ends them. A server that fails to start (missing command, timeout,
  refused connection, bad header variable) is left out: its tools are absent and
  ``hub.problems`` says why. ``await hub.call(name, input)`` runs ``mcp__<server>__<tool>``
  and never raises: a timeout, a dead server or an error result is an ``McpOutcome`` with
  ``is_error``.
- stdio servers run inside the jail (``agents.jail.jail_spawn_argv`` with the Python runtime
  bound read-only, cwd = the workspace), exactly where the api backend's Bash runs; http servers
  are reached from this process (streamable HTTP) with the expanded headers.

The api backend adds ``hub.tool_schemas()`` to the model's tools; the sdk backend hands the CLI
one in-process proxy server per live session (``agents.backends.sdk``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.lowlevel import Server
from mcp.types import CallToolResult, ListToolsResult, TextContent, Tool

from agents.errors import scrub
from agents.jail import (
    jail_active,
    jail_spawn_argv,
    prepare_workspace,
    python_runtime_binds,
    python_runtime_env,
    spawn_env,
)
from agents.mcp_config import (
    TOOL_NAME_RE,
    McpConfigError,
    McpServerConfig,
    headers_expand,
    tool_name_qualify,
    tool_name_split,
)

log = logging.getLogger(__name__)

OUTPUT_LIMIT = 30_000


@dataclass(frozen=True)
class McpTool:
    server: str
    name: str  # the server's own tool name
    description: str
    input_schema: dict[str, Any]

    @property
    def qualified(self) -> str:
        return tool_name_qualify(self.server, self.name)


@dataclass
class McpOutcome:
    output: str
    is_error: bool = False


def stdio_parameters(config: McpServerConfig, workspace: Path) -> StdioServerParameters:
    """How to start a stdio server: in a fresh jail over the workspace (the api backend's Bash
    jail, plus the Python runtime read-only), or — only when tools run unjailed (DEBUG with
    ``AGENT_JAIL=off``) — as a plain process with a clean environment. cwd = the workspace."""
    if not config.command:
        raise McpConfigError("no command")
    ws = Path(workspace).resolve()
    for sub in ("home", "tmp"):
        (ws / sub).mkdir(parents=True, exist_ok=True)
    if jail_active():
        prepare_workspace(ws)
        argv = jail_spawn_argv(
            ws,
            list(config.command),
            extra_binds=python_runtime_binds(),
            extra_env=python_runtime_env(),
        )
        return StdioServerParameters(command=argv[0], args=argv[1:], env=spawn_env(), cwd=str(ws))
    env = {
        "LANG": "C.UTF-8",
        "HOME": str(ws / "home"),
        "TMPDIR": str(ws / "tmp"),
        "PWD": str(ws),
        **python_runtime_env(),
    }
    return StdioServerParameters(
        command=config.command[0], args=list(config.command[1:]), env=env, cwd=str(ws)
    )


def _error_text(exc: BaseException) -> str:
    """One line for an exception, ExceptionGroups unwrapped (task groups wrap the real cause)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = str(exc).strip() or type(exc).__name__
    return scrub(f"{type(exc).__name__}: {text}" if type(exc).__name__ not in text else text)[:300]


def result_text(result: Any) -> str:
    """A ``CallToolResult`` as the text the model reads: its text items; other items named."""
    pieces: list[str] = []
    for item in getattr(result, "content", None) or []:
        kind = getattr(item, "type", "")
        if kind == "text":
            pieces.append(str(getattr(item, "text", "")))
        elif kind in ("image", "audio"):
            pieces.append(f"[{kind}: {getattr(item, 'mime_type', '') or 'binary'}]")
        elif kind == "resource_link":
            pieces.append(f"[resource: {getattr(item, 'uri', '')}]")
        else:
            pieces.append(f"[{kind or 'content'}]")
    structured = getattr(result, "structured_content", None)
    if not pieces and structured is not None:
        pieces.append(json.dumps(structured, ensure_ascii=False))
    text = "\n".join(pieces)
    if len(text) > OUTPUT_LIMIT:
        text = text[:OUTPUT_LIMIT] + f"\n… [output truncated: {len(text) - OUTPUT_LIMIT} more characters]"
    return text


class _Connection:
    """One server's session, owned by one task from open to close."""

    def __init__(self, config: McpServerConfig, workspace: Path) -> None:
        self.config = config
        self.workspace = workspace
        self.session: ClientSession | None = None
        self.tools: list[McpTool] = []
        self.problem: str | None = None
        self.ready = asyncio.Event()
        self.closing = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.errlog: Any = None  # a stdio server's stderr (its last line explains a failed start)

    def transport(self) -> Any:
        config = self.config
        if config.transport == "stdio":
            self.errlog = tempfile.TemporaryFile(mode="w+", encoding="utf-8", errors="replace")
            return stdio_client(stdio_parameters(config, self.workspace), errlog=self.errlog)
        if config.transport == "http":
            if not config.url:
                raise McpConfigError("no url")
            client = httpx2.AsyncClient(
                headers=headers_expand(config.headers),
                timeout=httpx2.Timeout(config.timeout_seconds, read=max(config.timeout_seconds, 300.0)),
            )
            return _http_transport(config.url, client)
        raise McpConfigError(f"unknown transport {config.transport!r}")

    async def run(self) -> None:
        config = self.config
        try:
            async with contextlib.AsyncExitStack() as stack:
                try:
                    async with asyncio.timeout(config.timeout_seconds):
                        read, write = await stack.enter_async_context(self.transport())
                        session = await stack.enter_async_context(
                            ClientSession(read, write, read_timeout_seconds=config.timeout_seconds)
                        )
                        await session.initialize()
                        listed = await session.list_tools()
                except asyncio.CancelledError:
                    raise
                except BaseException as exc:  # noqa: BLE001 - a server that cannot start is a note
                    self.problem = _error_text(exc)
                    if isinstance(exc, TimeoutError):
                        self.problem = f"did not start within {config.timeout_seconds:g}s"
                    elif self.errlog is not None:
                        said = self.stderr_tail()
                        if said:
                            self.problem = f"the server process ended while starting: {said}"
                    log.info("MCP server %s unavailable: %s", config.name, self.problem)
                    return
                self.session = session
                self.tools = _tools_of(config.name, listed.tools)
                self.ready.set()
                await self.closing.wait()
                self.session = None
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - teardown noise of a server that went away
            log.debug("MCP server %s teardown: %s", config.name, _error_text(exc))
        finally:
            self.session = None
            self.ready.set()
            if self.errlog is not None:
                self.errlog.close()

    def stderr_tail(self) -> str:
        """The last line a stdio server wrote to its stderr ("" if none)."""
        try:
            self.errlog.seek(0)
            lines = [line.strip() for line in self.errlog.read()[-4000:].splitlines() if line.strip()]
        except (OSError, ValueError):
            return ""
        return scrub(lines[-1])[:300] if lines else ""


@contextlib.asynccontextmanager
async def _http_transport(url: str, client: httpx2.AsyncClient) -> Any:
    async with client, streamable_http_client(url, http_client=client) as streams:
        yield streams


def _tools_of(server: str, tools: list[Any]) -> list[McpTool]:
    out: list[McpTool] = []
    for tool in tools:
        schema = getattr(tool, "input_schema", None) or {"type": "object", "properties": {}}
        item = McpTool(server, str(tool.name), str(getattr(tool, "description", "") or ""), dict(schema))
        if not TOOL_NAME_RE.match(item.qualified):
            log.info("MCP tool %s of %s skipped: not a valid tool name", tool.name, server)
            continue
        out.append(item)
    return out


@dataclass
class McpHub:
    """The MCP sessions of one turn (see the module docstring)."""

    servers: list[McpServerConfig]
    workspace: Path
    connections: dict[str, _Connection] = field(default_factory=dict)

    async def start(self) -> None:
        for config in self.servers:
            connection = _Connection(config, Path(self.workspace))
            connection.task = asyncio.create_task(connection.run(), name=f"mcp-{config.name}")
            self.connections[config.name] = connection
        if self.connections:
            await asyncio.gather(*(c.ready.wait() for c in self.connections.values()))

    async def close(self) -> None:
        tasks = []
        for connection in self.connections.values():
            connection.closing.set()
            if connection.task is not None and not connection.task.done():
                tasks.append(connection.task)
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=10)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5)

    @property
    def tools(self) -> list[McpTool]:
        return [tool for c in self.connections.values() if c.session is not None for tool in c.tools]

    @property
    def problems(self) -> dict[str, str]:
        """Server name → why it is not available this turn."""
        return {name: c.problem for name, c in self.connections.items() if c.problem}

    def problems_note(self) -> str:
        """What the model (and the user, as a status note) reads about servers that failed."""
        if not self.problems:
            return ""
        lines = [f"- {name}: {problem}" for name, problem in self.problems.items()]
        return "These MCP servers are unavailable in this turn (their tools are absent):\n" + "\n".join(lines)

    def tool_schemas(self) -> list[dict[str, Any]]:
        """The Messages API ``tools`` entries of every live server's tools."""
        return [
            {
                "name": tool.qualified,
                "description": (tool.description or f"{tool.name} (MCP server {tool.server})")[:1024],
                "input_schema": tool.input_schema,
            }
            for tool in self.tools
        ]

    def owns(self, name: str) -> bool:
        parts = tool_name_split(name)
        return parts is not None and parts[0] in self.connections

    async def call(self, name: str, tool_input: Any) -> McpOutcome:
        """Run ``mcp__<server>__<tool>``; never raises (but cancel)."""
        parts = tool_name_split(name)
        connection = self.connections.get(parts[0]) if parts else None
        if parts is None or connection is None:
            return McpOutcome(f"Unknown MCP tool {name!r}.", is_error=True)
        return await self.call_server(parts[0], parts[1], tool_input)

    async def call_server(self, server: str, tool: str, tool_input: Any) -> McpOutcome:
        connection = self.connections.get(server)
        session = connection.session if connection is not None else None
        if connection is None or session is None:
            why = connection.problem if connection is not None and connection.problem else "not connected"
            return McpOutcome(f"The MCP server {server} is unavailable: {why}.", is_error=True)
        if not isinstance(tool_input, dict):
            return McpOutcome(f"{tool} needs an object as input.", is_error=True)
        timeout = connection.config.timeout_seconds
        try:
            async with asyncio.timeout(timeout + 1):
                result = await session.call_tool(tool, tool_input, read_timeout_seconds=timeout)
        except asyncio.CancelledError:
            raise
        except TimeoutError:
            return McpOutcome(
                f"The MCP server {server} did not answer {tool} within {timeout:g}s.", is_error=True
            )
        except Exception as exc:  # noqa: BLE001 - a failed call is an error result for the model
            text = _error_text(exc)
            if "timed out" in text.lower() or "timeout" in text.lower():
                return McpOutcome(
                    f"The MCP server {server} did not answer {tool} within {timeout:g}s.", is_error=True
                )
            return McpOutcome(f"The MCP server {server} failed to run {tool}: {text}", is_error=True)
        text = result_text(result)
        if getattr(result, "is_error", False):
            return McpOutcome(text or f"{tool} failed.", is_error=True)
        return McpOutcome(text or "(no output)")


def proxy_server_build(server: str, tools: list[McpTool], hub_of: Callable[[], McpHub | None]) -> Server:
    """An in-process MCP server (the sdk backend hands it to the Claude Code CLI as a ``sdk``
    server) that lists ``server``'s ``tools`` and runs each call on the session of
    ``hub_of()`` — the hub of the turn the CLI serves now (a kept CLI serves many turns). The CLI
    then needs neither the server's command, nor its secrets, nor network access."""
    wire = [
        Tool.model_validate(
            {"name": t.name, "description": t.description or t.name, "inputSchema": t.input_schema}
        )
        for t in tools
    ]

    async def on_list_tools(ctx: Any, params: Any) -> ListToolsResult:
        return ListToolsResult(tools=wire)

    async def on_call_tool(ctx: Any, params: Any) -> CallToolResult:
        hub = hub_of()
        if hub is None:
            outcome = McpOutcome(f"The MCP server {server} is not open outside a turn.", is_error=True)
        else:
            outcome = await hub.call_server(server, str(params.name), params.arguments or {})
        return CallToolResult(
            content=[TextContent(type="text", text=outcome.output)], is_error=outcome.is_error
        )

    return Server(server, version="1", on_list_tools=on_list_tools, on_call_tool=on_call_tool)

"""MCP servers as plain data: what the chat app hands a turn (``TurnInput.mcp_servers``) and the
helpers both the chat app (validation) and the agents (use) need. No ``mcp`` package import here:
the client sessions are ``agents.mcp_client``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Literal

from agents.approval import MCP_PREFIX

McpTransport = Literal["stdio", "http"]
MCP_TRANSPORTS: tuple[str, ...] = ("stdio", "http")
SERVER_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")
TOOL_NAME_RE = re.compile(r"^[a-zA-Z0-9_-]{1,128}$")  # the Messages API's tool names
_VARIABLE_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class McpConfigError(ValueError):
    """A server configuration that cannot be used (e.g. a header naming an unset variable)."""


@dataclass(frozen=True)
class McpServerConfig:
    """One MCP server enabled for a chat (plain data; ``chat.McpServer`` is the stored form)."""

    name: str  # a slug: the tools are ``mcp__<name>__<tool>``
    transport: McpTransport
    command: tuple[str, ...] = ()  # stdio: the argv
    url: str = ""  # http: the streamable-HTTP endpoint
    headers: tuple[tuple[str, str], ...] = ()  # http: values may hold ``${NAME}``
    timeout_seconds: float = 30.0
    description: str = ""

    def fingerprint(self) -> tuple[Any, ...]:
        """What a kept CLI must match (the header templates, never their expanded values)."""
        return (self.name, self.transport, self.command, self.url, self.headers, self.timeout_seconds)


def server_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name an MCP server (it becomes part of tool names), or None."""
    if not SERVER_NAME_RE.match(name or "") or "__" in name:
        return (
            "Use 1-40 lower-case letters, digits, '-' or '_' (starting with a letter or digit, "
            "no '__'): the tools are named mcp__<name>__<tool>."
        )
    return None


def variables_in(text: str) -> list[str]:
    """The ``${NAME}`` references of a header value."""
    return _VARIABLE_RE.findall(text)


def headers_expand(
    headers: tuple[tuple[str, str], ...] | dict[str, str], environ: dict[str, str] | None = None
) -> dict[str, str]:
    """The headers with every ``${NAME}`` replaced from ``environ`` (this process's environment);
    an unset variable is an ``McpConfigError`` naming it (never its would-be value)."""
    source = os.environ if environ is None else environ
    items = headers.items() if isinstance(headers, dict) else headers
    out: dict[str, str] = {}
    for key, value in items:

        def replace(match: re.Match[str], key: str = key) -> str:
            name = match.group(1)
            if name not in source:
                raise McpConfigError(f"header {key}: the environment variable {name} is not set")
            return source[name]

        out[key] = _VARIABLE_RE.sub(replace, value)
    return out


def tool_name_qualify(server: str, tool: str) -> str:
    return f"{MCP_PREFIX}{server}__{tool}"


def tool_name_split(name: str) -> tuple[str, str] | None:
    """``mcp__<server>__<tool>`` → (server, tool); None for any other name."""
    if not name.startswith(MCP_PREFIX):
        return None
    server, sep, tool = name[len(MCP_PREFIX) :].partition("__")
    return (server, tool) if sep and server and tool else None

"""The agent's view of the settings, resolved in one place (including the offline scripted model)."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver

from agents.errors import AgentError, ErrorKind

OFFLINE_API_KEY = "sk-ant-offline-scripted-model"
NO_MODEL_MESSAGE = (
    "No model is configured on this server: set ANTHROPIC_API_KEY, or ANTHROPIC_BASE_URL to a model "
    "server. (The offline scripted model starts by itself only with DEBUG=true.)"
)


@dataclass(frozen=True)
class ModelEndpoint:
    base_url: str
    api_key: str
    offline: bool  # True when the scripted model answers


def model_endpoint() -> ModelEndpoint:
    """Where the model lives. With ANTHROPIC_API_KEY: that key, at ANTHROPIC_BASE_URL or
    Anthropic's. Without a key, ANTHROPIC_BASE_URL is a scripted model (or another keyless model
    server). Without either, only under DEBUG=true, the scripted model is started in-process;
    under DEBUG=false that is an operator's mistake and raises an ``AgentError``
    (``manage.py check`` reports it too: ``agents.E002``)."""
    key = settings.ANTHROPIC_API_KEY
    base_url = settings.ANTHROPIC_BASE_URL
    if key:
        return ModelEndpoint(base_url=base_url or "https://api.anthropic.com", api_key=key, offline=False)
    if not base_url:
        if not settings.DEBUG:
            raise AgentError(ErrorKind.AUTHENTICATION, detail=NO_MODEL_MESSAGE, message=NO_MODEL_MESSAGE)
        # Development only (DEBUG=true): the offline demo. This is the one production module that
        # imports the scripted_model package, and only on this branch.
        from scripted_model.server import ensure_scripted_model

        base_url = ensure_scripted_model()
    return ModelEndpoint(base_url=base_url, api_key=OFFLINE_API_KEY, offline=True)


def workspace_root() -> Path:
    root = agent_config().workspace_root
    root.mkdir(parents=True, exist_ok=True)
    return root


# ------------------------------------------------------------------------------------------------
# The agent settings, typed (copilot_project/settings.py defines every one and its default)
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AgentConfig:
    """The ``AGENT_*`` settings the agents app reads, typed. Built from ``django.conf.settings``
    by ``agent_config()`` once per process (cleared when a setting changes)."""

    model: str  # AGENT_MODEL
    system_prompt: str  # AGENT_SYSTEM_PROMPT
    workspace_root: Path  # AGENT_WORKSPACE_ROOT (resolved)
    max_turns: int  # AGENT_MAX_TURNS: model calls per turn
    max_output_tokens: int  # AGENT_MAX_OUTPUT_TOKENS
    thinking_budget: int  # AGENT_THINKING_BUDGET (api backend; 0: off)
    heartbeat_seconds: float  # AGENT_HEARTBEAT_SECONDS
    max_retries: int  # AGENT_MAX_RETRIES
    retry_base_delay: float  # AGENT_RETRY_BASE_DELAY
    retry_max_delay: float  # AGENT_RETRY_MAX_DELAY
    prices: Mapping[str, Any]  # AGENT_PRICES: {"family": [input, output, cache read, cache write]}
    compact_summary_input_chars: int  # AGENT_COMPACT_SUMMARY_INPUT_CHARS
    compact_summary_max_tokens: int  # AGENT_COMPACT_SUMMARY_MAX_TOKENS
    compact_keep_chars: int  # AGENT_COMPACT_KEEP_CHARS
    recovery_history_chars: int  # AGENT_RECOVERY_HISTORY_CHARS
    max_subagents: int  # AGENT_MAX_SUBAGENTS
    empty_tool_input_limit: int  # AGENT_EMPTY_TOOL_INPUT_LIMIT
    tool_timeout_seconds: float  # AGENT_TOOL_TIMEOUT_SECONDS
    tool_output_limit: int  # AGENT_TOOL_OUTPUT_LIMIT
    network_allow: tuple[str, ...]  # AGENT_NETWORK_ALLOW
    sdk_credential_proxy: bool  # AGENT_SDK_CREDENTIAL_PROXY
    sdk_cli_max_retries: int  # AGENT_SDK_CLI_MAX_RETRIES
    sdk_extra_env: Mapping[str, Any]  # AGENT_SDK_EXTRA_ENV
    sdk_max_buffer_size: int  # AGENT_SDK_MAX_BUFFER_SIZE
    sdk_idle_seconds: float  # AGENT_SDK_IDLE_SECONDS (0: CLIs are not kept)
    sdk_max_idle_clients: int  # AGENT_SDK_MAX_IDLE_CLIENTS
    sdk_max_cli_processes: int  # AGENT_SDK_MAX_CLI_PROCESSES (0: no cap)


@functools.cache
def agent_config() -> AgentConfig:
    """The agent settings (see ``AgentConfig``), read once per process; ``override_settings`` and
    pytest-django's ``settings`` fixture send ``setting_changed``, which clears the cache."""
    s = settings
    return AgentConfig(
        model=str(s.AGENT_MODEL),
        system_prompt=str(s.AGENT_SYSTEM_PROMPT or ""),
        workspace_root=Path(s.AGENT_WORKSPACE_ROOT).resolve(),
        max_turns=int(s.AGENT_MAX_TURNS),
        max_output_tokens=int(s.AGENT_MAX_OUTPUT_TOKENS),
        thinking_budget=int(s.AGENT_THINKING_BUDGET),
        heartbeat_seconds=float(s.AGENT_HEARTBEAT_SECONDS),
        max_retries=int(s.AGENT_MAX_RETRIES),
        retry_base_delay=float(s.AGENT_RETRY_BASE_DELAY),
        retry_max_delay=float(s.AGENT_RETRY_MAX_DELAY),
        prices=dict(s.AGENT_PRICES or {}),
        compact_summary_input_chars=int(s.AGENT_COMPACT_SUMMARY_INPUT_CHARS),
        compact_summary_max_tokens=int(s.AGENT_COMPACT_SUMMARY_MAX_TOKENS),
        compact_keep_chars=int(s.AGENT_COMPACT_KEEP_CHARS),
        recovery_history_chars=int(s.AGENT_RECOVERY_HISTORY_CHARS),
        max_subagents=int(s.AGENT_MAX_SUBAGENTS),
        empty_tool_input_limit=int(s.AGENT_EMPTY_TOOL_INPUT_LIMIT),
        tool_timeout_seconds=float(s.AGENT_TOOL_TIMEOUT_SECONDS),
        tool_output_limit=int(s.AGENT_TOOL_OUTPUT_LIMIT),
        network_allow=tuple(str(h) for h in (s.AGENT_NETWORK_ALLOW or ())),
        sdk_credential_proxy=bool(s.AGENT_SDK_CREDENTIAL_PROXY),
        sdk_cli_max_retries=int(s.AGENT_SDK_CLI_MAX_RETRIES),
        sdk_extra_env=dict(s.AGENT_SDK_EXTRA_ENV or {}),
        sdk_max_buffer_size=int(s.AGENT_SDK_MAX_BUFFER_SIZE),
        sdk_idle_seconds=float(s.AGENT_SDK_IDLE_SECONDS or 0),
        sdk_max_idle_clients=int(s.AGENT_SDK_MAX_IDLE_CLIENTS or 0),
        sdk_max_cli_processes=int(s.AGENT_SDK_MAX_CLI_PROCESSES or 0),
    )


@receiver(setting_changed)
def agent_config_reset(**_kwargs: Any) -> None:
    agent_config.cache_clear()

"""The agent's view of the settings, resolved in one place (including the offline scripted model)."""

from __future__ import annotations

import functools
import json
import re
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
# The models a chat may choose (AGENT_MODELS) and the user's instructions
# ------------------------------------------------------------------------------------------------

Prices = tuple[float, float, float, float]  # USD per million tokens: input, output, cache read, write

MODEL_ID_MAX_CHARS = 100  # chat.ChatSession.model, chat.TokenUsage.model
MODEL_NAME_MAX_CHARS = 200
PRICE_KEYS = ("input", "output", "cache_read", "cache_write")
_MODEL_KEYS = frozenset({"id", "name", "prices"})
_MODEL_ID = re.compile(r"^[\w.:@/+-]+$", re.ASCII)
INSTRUCTIONS_HEADING = "Instructions from the user for this chat:"


@dataclass(frozen=True)
class ModelChoice:
    """One model of the allow-list (``AGENT_MODELS``): its API id, the name people see, and its
    prices when the operator gave them (they win over ``AGENT_PRICES``)."""

    id: str
    name: str
    prices: Prices | None = None


def prices_parse(raw: Any) -> Prices:
    """``[input, output, cache_read?, cache_write?]`` or ``{"input", "output", "cache_read"?,
    "cache_write"?}`` (USD per million tokens, non-negative) -> the four prices; a missing cache
    price is derived from the input price as Anthropic prices them (reads 0.1x, writes 1.25x).
    Raises ValueError."""
    if isinstance(raw, Mapping):
        unknown = set(raw) - set(PRICE_KEYS)
        if unknown:
            raise ValueError(f"unknown price key(s) {', '.join(sorted(map(str, unknown)))}")
        if "input" not in raw or "output" not in raw:
            raise ValueError("prices need at least 'input' and 'output'")
        values = [raw[k] for k in PRICE_KEYS if k in raw]
        if "cache_read" not in raw and "cache_write" in raw:
            values = [raw["input"], raw["output"], None, raw["cache_write"]]
    elif isinstance(raw, (list, tuple)):
        values = list(raw)
    else:
        raise ValueError("prices must be a list [input, output, cache read, cache write] or an object")
    if not 2 <= len(values) <= 4:
        raise ValueError("prices need 2 to 4 numbers: input, output, cache read, cache write")
    numbers: list[float | None] = []
    for value in values:
        if value is None:
            numbers.append(None)
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise ValueError(f"a price must be a non-negative number, not {value!r}")
        numbers.append(float(value))
    numbers += [None] * (4 - len(numbers))
    p_in, p_out, p_read, p_write = numbers
    assert p_in is not None and p_out is not None
    return (
        p_in,
        p_out,
        round(p_in * 0.1, 6) if p_read is None else p_read,
        round(p_in * 1.25, 6) if p_write is None else p_write,
    )


def _model_entry(item: Any) -> ModelChoice:
    """One allow-list entry (``"id"``, ``"id=Display name"`` or ``{"id", "name"?, "prices"?}``).
    Raises ValueError."""
    prices = None
    if isinstance(item, str):
        model_id, _, name = item.partition("=")
    elif isinstance(item, Mapping):
        unknown = set(item) - _MODEL_KEYS
        if unknown:
            raise ValueError(f"unknown key(s) {', '.join(sorted(map(str, unknown)))}")
        model_id, name = item.get("id"), item.get("name")
        if item.get("prices") is not None:
            prices = prices_parse(item["prices"])
    else:
        raise ValueError(f"an entry must be a string or an object, not {type(item).__name__}")
    if not isinstance(model_id, str) or not _MODEL_ID.match(model_id.strip()):
        raise ValueError(f"invalid model id {model_id!r}")
    model_id = model_id.strip()
    if len(model_id) > MODEL_ID_MAX_CHARS:
        raise ValueError(f"model id {model_id[:40]!r}… is longer than {MODEL_ID_MAX_CHARS} characters")
    if name is not None and not isinstance(name, str):
        raise ValueError(f"the name of {model_id!r} must be a string")
    name = (name or "").strip() or model_id
    if len(name) > MODEL_NAME_MAX_CHARS or "\x00" in name:
        raise ValueError(f"the name of {model_id!r} must be at most {MODEL_NAME_MAX_CHARS} characters")
    return ModelChoice(id=model_id, name=name, prices=prices)


def models_parse(raw: Any, default: str) -> tuple[tuple[ModelChoice, ...], list[str]]:
    """The allow-list from ``AGENT_MODELS`` (a JSON list, a comma list, or already a Python list)
    and its problems. Bad entries are left out (``manage.py check`` reports them: agents.E003);
    the first of two entries with one id wins; ``default`` (AGENT_MODEL) is always in the list
    (first when it was not listed)."""
    problems: list[str] = []
    items: list[Any] = []
    if isinstance(raw, str):
        text = raw.strip()
        if text.startswith("["):
            try:
                loaded = json.loads(text)
            except ValueError as exc:
                problems.append(f"not valid JSON ({exc})")
            else:
                items = list(loaded)
        elif text:
            items = [part.strip() for part in text.split(",") if part.strip()]
    elif isinstance(raw, (list, tuple)):
        items = list(raw)
    elif raw is not None:
        problems.append(f"must be a JSON list or a comma list, not {type(raw).__name__}")
    models: list[ModelChoice] = []
    seen: set[str] = set()
    for n, item in enumerate(items, 1):
        try:
            entry = _model_entry(item)
        except ValueError as exc:
            problems.append(f"entry {n}: {exc}")
            continue
        if entry.id in seen:
            problems.append(f"entry {n}: model {entry.id!r} is listed twice")
            continue
        seen.add(entry.id)
        models.append(entry)
    if default and default not in seen:
        models.insert(0, ModelChoice(id=default, name=default))
    return tuple(models), problems


def system_prompt_compose(system_prompt: str, instructions: str) -> str:
    """The system prompt of a turn: the server's, then the chat's own instructions (when set),
    clearly set apart under ``INSTRUCTIONS_HEADING``."""
    extra = (instructions or "").strip()
    if not extra:
        return system_prompt
    block = f"{INSTRUCTIONS_HEADING}\n{extra}"
    return f"{system_prompt}\n\n{block}" if system_prompt else block


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
    tool_approval_timeout: float  # TOOL_APPROVAL_TIMEOUT_SECONDS: a tool call waits this long for the user
    network_allow: tuple[str, ...]  # AGENT_NETWORK_ALLOW
    sdk_credential_proxy: bool  # AGENT_SDK_CREDENTIAL_PROXY
    sdk_cli_max_retries: int  # AGENT_SDK_CLI_MAX_RETRIES
    sdk_extra_env: Mapping[str, Any]  # AGENT_SDK_EXTRA_ENV
    sdk_max_buffer_size: int  # AGENT_SDK_MAX_BUFFER_SIZE
    sdk_idle_seconds: float  # AGENT_SDK_IDLE_SECONDS (0: CLIs are not kept)
    sdk_max_idle_clients: int  # AGENT_SDK_MAX_IDLE_CLIENTS
    sdk_max_cli_processes: int  # AGENT_SDK_MAX_CLI_PROCESSES (0: no cap)
    # AGENT_MODELS: the allow-list of models a chat may choose (always holds AGENT_MODEL)
    models: tuple[ModelChoice, ...]
    instructions_max_chars: int  # AGENT_INSTRUCTIONS_MAX_CHARS

    def model_find(self, model_id: str) -> ModelChoice | None:
        """The allow-list entry of ``model_id``, or None."""
        return next((m for m in self.models if m.id == model_id), None)

    def model_effective(self, model_id: str) -> str:
        """``model_id`` while the allow-list offers it, else the default (AGENT_MODEL): a chat
        whose model was taken off the list goes on with the default."""
        return model_id if model_id and self.model_find(model_id) is not None else self.model


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
        tool_approval_timeout=float(s.TOOL_APPROVAL_TIMEOUT_SECONDS),
        network_allow=tuple(str(h) for h in (s.AGENT_NETWORK_ALLOW or ())),
        sdk_credential_proxy=bool(s.AGENT_SDK_CREDENTIAL_PROXY),
        sdk_cli_max_retries=int(s.AGENT_SDK_CLI_MAX_RETRIES),
        sdk_extra_env=dict(s.AGENT_SDK_EXTRA_ENV or {}),
        sdk_max_buffer_size=int(s.AGENT_SDK_MAX_BUFFER_SIZE),
        sdk_idle_seconds=float(s.AGENT_SDK_IDLE_SECONDS or 0),
        sdk_max_idle_clients=int(s.AGENT_SDK_MAX_IDLE_CLIENTS or 0),
        sdk_max_cli_processes=int(s.AGENT_SDK_MAX_CLI_PROCESSES or 0),
        models=models_parse(s.AGENT_MODELS, str(s.AGENT_MODEL))[0],
        instructions_max_chars=int(s.AGENT_INSTRUCTIONS_MAX_CHARS),
    )


@receiver(setting_changed)
def agent_config_reset(**_kwargs: Any) -> None:
    agent_config.cache_clear()

"""Per-chat settings (CONTRACT §6, docs/api.md "Per-chat settings"): the checks the REST API and
both chat doors apply, and the values a turn runs with.

- ``model``: one of the allow-list (``AGENT_MODELS``, ``agents.config.AgentConfig.models``); a
  chat whose model is blank or was taken off the list runs on the default (``AGENT_MODEL``);
- ``instructions``: at most ``AGENT_INSTRUCTIONS_MAX_CHARS`` characters, added to the system
  prompt (``agents.config.system_prompt_compose``);
- ``tool_mode``: ``auto``, ``ask`` or ``plan`` (``agents.approval``);
- ``max_steps``: model calls per reply, 0 (the server's ``AGENT_MAX_TURNS``) up to
  ``AGENT_MAX_TURNS``.

Pure reads of the settings: no database access here.
"""

from __future__ import annotations

from typing import Any

from agents.approval import TOOL_MODES
from agents.config import ModelChoice, agent_config
from chat.models import ChatSession

MODELS_PATH = "/api/v1/models/"
UNKNOWN_MODEL_TEXT = "Unknown model {model}: choose one of GET " + MODELS_PATH + "."
BAD_MODEL_TEXT = "The model must be a model id (a string): choose one of GET " + MODELS_PATH + "."
INSTRUCTIONS_TOO_LONG_TEXT = "The instructions are longer than {limit} characters."
UNKNOWN_TOOL_MODE_TEXT = "Unknown tool_mode {mode}: choose one of " + ", ".join(TOOL_MODES) + "."
MAX_STEPS_TEXT = "max_steps must be an integer from 0 (the server default) to {limit}."


def model_problem(model: Any) -> str | None:
    """Why ``model`` (from a request) is not a model a chat may use, or None."""
    if not isinstance(model, str) or not model:
        return BAD_MODEL_TEXT
    if agent_config().model_find(model) is None:
        return UNKNOWN_MODEL_TEXT.format(model=repr(model[:100]))
    return None


def model_list() -> list[dict[str, Any]]:
    """The allow-list as ``GET /api/v1/models/`` shows it: ``{id, name, default, prices}``
    (``prices``: ``{input, output, cache_read, cache_write}`` in USD per million tokens, or None
    when the operator gave none for the model)."""
    config = agent_config()
    return [_model_row(m, default=m.id == config.model) for m in config.models]


def _model_row(choice: ModelChoice, *, default: bool) -> dict[str, Any]:
    prices = None
    if choice.prices is not None:
        p_in, p_out, p_read, p_write = choice.prices
        prices = {"input": p_in, "output": p_out, "cache_read": p_read, "cache_write": p_write}
    return {"id": choice.id, "name": choice.name, "default": default, "prices": prices}


def instructions_limit() -> int:
    return agent_config().instructions_max_chars


def max_steps_limit() -> int:
    return agent_config().max_turns


def session_model(session: ChatSession) -> str:
    """The model the chat's next turn runs on: its own while the allow-list offers it, else the
    default."""
    return agent_config().model_effective(session.model)


def session_instructions(session: ChatSession) -> str:
    """The chat's instructions for its next turn (cut to the current limit, should it have been
    lowered since they were saved)."""
    return (session.instructions or "")[: instructions_limit()]


def session_max_steps(session: ChatSession) -> int:
    """The chat's step limit for its next turn: 0 (the server's AGENT_MAX_TURNS) or at most
    AGENT_MAX_TURNS."""
    steps = int(session.max_steps or 0)
    limit = max_steps_limit()
    return min(steps, limit) if steps > 0 and limit > 0 else steps

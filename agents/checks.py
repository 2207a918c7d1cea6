"""Django system checks of the agent runtime (``manage.py check``; daphne and runserver run them
at start): the jail must work before a production server takes a turn (docs/security.md), and a
production server must name its model (the scripted model never starts by itself there), and the
models offered per chat (AGENT_MODELS) must parse."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core import checks

from agents.config import NO_MODEL_MESSAGE, models_parse
from agents.jail import jail_problem


@checks.register(checks.Tags.security)
def jail_check(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    problem = jail_problem()
    if problem is None:
        return []
    if not settings.DEBUG:
        return [
            checks.Error(
                f"The agent jail is unavailable: {problem}.",
                hint="Install bubblewrap, util-linux and socat (Debian: "
                "apt-get install bubblewrap util-linux socat); "
                "no turn runs until the jail works.",
                id="agents.E001",
            )
        ]
    return [
        checks.Warning(
            f"Agent tools are NOT sandboxed: {problem}.",
            hint="Fine for local development only; install bubblewrap, util-linux and socat to jail them.",
            id="agents.W001",
        )
    ]


@checks.register()
def model_check(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """DEBUG=false needs ANTHROPIC_API_KEY or ANTHROPIC_BASE_URL: without them every turn would
    fail (``agents.config.model_endpoint``). Under DEBUG the offline scripted model serves."""
    if settings.DEBUG or settings.ANTHROPIC_API_KEY or settings.ANTHROPIC_BASE_URL:
        return []
    return [
        checks.Error(
            NO_MODEL_MESSAGE,
            hint="ANTHROPIC_API_KEY=<your key> for Claude; "
            "or ANTHROPIC_BASE_URL=http://host:port for a model server "
            "(e.g. `python manage.py scripted_model --port N` for an offline demo).",
            id="agents.E002",
        )
    ]


@checks.register()
def models_check(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """AGENT_MODELS must parse: a bad entry would silently be missing from the chats' choices
    (``agents.config.models_parse`` leaves it out at run time)."""
    _models, problems = models_parse(settings.AGENT_MODELS, str(settings.AGENT_MODEL))
    return [
        checks.Error(
            f"AGENT_MODELS: {problem}.",
            hint='A JSON list [{"id": "claude-sonnet-5-5", "name": "Claude Sonnet 5.5", '
            '"prices": [3, 15, 0.3, 3.75]}, ...] or a comma list "id=Display name,id2" '
            "(docs/operations.md).",
            id="agents.E003",
        )
        for problem in problems
    ]

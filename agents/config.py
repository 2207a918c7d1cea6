"""The agent's view of the settings, resolved in one place (including the offline scripted model)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

OFFLINE_API_KEY = "sk-ant-offline-scripted-model"


@dataclass(frozen=True)
class ModelEndpoint:
    base_url: str
    api_key: str
    offline: bool  # True when the scripted model answers


def model_endpoint() -> ModelEndpoint:
    """Where the model lives. Without ANTHROPIC_API_KEY the scripted model serves (started lazily
    in-process unless ANTHROPIC_BASE_URL already points at one)."""
    key = settings.ANTHROPIC_API_KEY
    base_url = settings.ANTHROPIC_BASE_URL
    if key:
        return ModelEndpoint(base_url=base_url or "https://api.anthropic.com", api_key=key, offline=False)
    if not base_url:
        from agents.scripted_model import ensure_scripted_model

        base_url = ensure_scripted_model()
    return ModelEndpoint(base_url=base_url, api_key=OFFLINE_API_KEY, offline=True)


def workspace_root() -> Path:
    root = Path(settings.AGENT_WORKSPACE_ROOT).resolve()
    root.mkdir(parents=True, exist_ok=True)
    return root


def secrets_to_scrub() -> list[str]:
    """Values that must never appear in chunks, logs or error texts."""
    values = [settings.ANTHROPIC_API_KEY, settings.SECRET_KEY, os.environ.get("ANTHROPIC_AUTH_TOKEN", "")]
    return [v for v in values if v and len(v) >= 8]

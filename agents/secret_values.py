"""The secret values of this deployment that must never appear in chunks, logs or error texts
(read from the settings and the environment; no other import, so every scrubber can use it)."""

from __future__ import annotations

import os

from django.conf import settings


def secrets_to_scrub() -> list[str]:
    """Values that must never appear in chunks, logs or error texts."""
    values = [settings.ANTHROPIC_API_KEY, settings.SECRET_KEY, os.environ.get("ANTHROPIC_AUTH_TOKEN", "")]
    return [v for v in values if v and len(v) >= 8]

"""Secret scrubbing for everything the transcript viewer shows or exports.

Transcripts hold model output and tool output verbatim: an env dump, a pasted key, a config
file. ``agents.errors.scrub`` (owned by the agent runtime) is the project-wide scrubber; a local
pass (known secret values + key-shaped patterns) always runs after it as a second line of
defence.
"""

from __future__ import annotations

import re
from typing import Any

from agents.errors import scrub as project_scrub
from agents.secret_values import secrets_to_scrub

REDACTED = "[REDACTED]"

_PATTERNS = [
    re.compile(r"sk-ant-[A-Za-z0-9_\-]{8,}"),
    re.compile(r"(?i)(authorization\s*[:=]\s*[\"']?\s*bearer\s+)[A-Za-z0-9._~+/=\-]{8,}"),
    re.compile(r"(?i)(x-api-key\s*[\"']?\s*[:=]\s*[\"']?)[A-Za-z0-9._~+/=\-]{8,}"),
    re.compile(
        r"(?i)((?:ANTHROPIC_API_KEY|ANTHROPIC_AUTH_TOKEN|SECRET_KEY|CLAUDE_CODE_OAUTH_TOKEN)[\"']?\s*[:=]\s*[\"']?)[^\s\"']{8,}"
    ),
]


def _known_secrets() -> list[str]:
    return sorted(secrets_to_scrub(), key=len, reverse=True)


class Scrubber:
    """Resolve the scrubbers once per page/export, then apply them to many strings."""

    def __init__(self) -> None:
        self._secrets = _known_secrets()

    def text(self, value: str) -> str:
        if not value:
            return value
        value = project_scrub(value)
        for secret in self._secrets:
            if secret in value:
                value = value.replace(secret, REDACTED)
        for pattern in _PATTERNS:
            if pattern.groups:
                value = pattern.sub(lambda m: m.group(1) + REDACTED, value)
            else:
                value = pattern.sub(REDACTED, value)
        return value

    def deep(self, value: Any) -> Any:
        """A copy of a JSON value with every string (keys included) scrubbed."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, list):
            return [self.deep(v) for v in value]
        if isinstance(value, dict):
            return {self.text(k) if isinstance(k, str) else k: self.deep(v) for k, v in value.items()}
        return value


def scrub_text(value: str) -> str:
    return Scrubber().text(value)

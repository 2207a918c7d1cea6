"""Shared plumbing of the chat operator commands: ``audit.commands.OperatorCommand`` (``--dry-run``,
progress on a terminal, a one-line summary, the audit event) plus durations, and a non-zero exit
(CommandError) on failure."""

from __future__ import annotations

import datetime as dt

from django.core.management.base import CommandError

from audit.commands import OperatorCommand
from chat.ops import parse_duration


class OpsCommand(OperatorCommand):
    def duration(self, text: str, option: str = "--older-than") -> dt.timedelta:
        try:
            return parse_duration(text)
        except ValueError as exc:
            raise CommandError(f"{option}: {exc}") from exc

"""Shared plumbing of the operator commands: ``--dry-run``, durations, a summary line, and a
non-zero exit (CommandError) on failure."""

from __future__ import annotations

import datetime as dt

from django.core.management.base import BaseCommand, CommandError

from chat.ops import parse_duration


class OpsCommand(BaseCommand):
    def add_arguments(self, parser):
        parser.add_argument(
            "--dry-run", action="store_true", help="Report what would be done; change nothing."
        )

    def duration(self, text: str, option: str = "--older-than") -> dt.timedelta:
        try:
            return parse_duration(text)
        except ValueError as exc:
            raise CommandError(f"{option}: {exc}") from exc

    def summary(self, text: str, *, dry_run: bool, ok: bool = True) -> None:
        line = f"{self.name_for_summary()}: {text}" + (" (dry run: nothing changed)" if dry_run else "")
        self.stdout.write(self.style.SUCCESS(line) if ok else self.style.WARNING(line))

    def name_for_summary(self) -> str:
        return self.__module__.rsplit(".", 1)[-1]

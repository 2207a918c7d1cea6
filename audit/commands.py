"""The shared base of the operator commands (chat/management/commands/, transcripts/…):
``--dry-run``, a progress bar on a terminal, a one-line summary, and an audit event per run that
changed something.

- Progress: ``self.progress(items, description)`` wraps an iterable; with stderr on a terminal it
  draws a ``rich`` progress bar there (stdout keeps the summary, for pipes and cron mail), otherwise
  it returns the items untouched.
- Summary: ``self.summary(text, dry_run=…)`` prints ``<command>: <text>`` as one line on stdout
  (``… (dry run: nothing changed)`` with ``--dry-run``).
- Audit: ``self.audit(details, dry_run=…, changed=…)`` records ``command.<name>`` with the actor
  label ``command:<name> by os user <user>``; a dry run, or a run that changed nothing, records
  nothing.
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Callable, Iterable, Iterator, Sized
from typing import Any, TypeVar

from django.core.management.base import BaseCommand
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from audit.models import AuditEvent
from audit.services import audit_record

T = TypeVar("T")
Track = Callable[[Iterable[T]], Iterable[T]]


def os_user() -> str:
    """The login behind this process (``sudo``'s caller first), or its uid when it has no name."""
    for name in ("SUDO_USER", "LOGNAME", "USER"):
        if os.environ.get(name):
            return os.environ[name]
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


def command_actor_label(name: str) -> str:
    return f"command:{name} by os user {os_user()}"


class RawWriter:
    """A command's ``OutputWrapper`` as a plain text stream for ``rich``: no added line endings,
    no error colouring (``rich`` draws the bar in place with carriage returns)."""

    def __init__(self, out: Any) -> None:
        self.out = out

    def write(self, text: str) -> int:
        self.out.write(text, style_func=str, ending="")
        return len(text)

    def flush(self) -> None:
        self.out.flush()

    def isatty(self) -> bool:
        return True


def terminal_progress(items: Iterable[T], *, description: str, stream: Any) -> Iterator[T]:
    """``items`` with a progress bar drawn on ``stream`` (a command's stderr, a terminal)."""
    console = Console(file=RawWriter(stream), force_terminal=True)
    total = len(items) if isinstance(items, Sized) else None
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        yield from progress.track(items, total=total, description=description)


class OperatorCommand(BaseCommand):
    """Subclasses call ``super().add_arguments(parser)`` to get ``--dry-run``."""

    def add_arguments(self, parser):
        parser.add_argument(
            "--dry-run", action="store_true", help="Report what would be done; change nothing."
        )

    def command_name(self) -> str:
        return self.__module__.rsplit(".", 1)[-1]

    def on_terminal(self) -> bool:
        isatty = getattr(self.stderr, "isatty", None)
        return bool(isatty and isatty())

    def progress(self, items: Iterable[T], description: str) -> Iterable[T]:
        if not self.on_terminal():
            return items
        return terminal_progress(items, description=description, stream=self.stderr)

    def tracker(self, description: str) -> Track:
        """A ``progress`` bound to a description, for services that take a ``track`` callable."""
        return lambda items: self.progress(items, description)

    def summary(self, text: str, *, dry_run: bool, ok: bool = True) -> None:
        line = f"{self.command_name()}: {text}" + (" (dry run: nothing changed)" if dry_run else "")
        self.stdout.write(self.style.SUCCESS(line) if ok else self.style.WARNING(line))

    def audit(
        self, details: dict[str, Any], *, dry_run: bool = False, changed: bool = True
    ) -> AuditEvent | None:
        """Record this run, unless it was a dry run or changed nothing (``changed=False``: a cron
        job that found nothing to do leaves no trace)."""
        if dry_run or not changed:
            return None
        return audit_record(
            action=f"command.{self.command_name()}",
            source=AuditEvent.Source.COMMAND,
            actor_label=command_actor_label(self.command_name()),
            details=details,
        )

"""Clear trailing error markers of sessions without an active turn."""

from __future__ import annotations

import uuid

from django.core.management.base import CommandError
from django.utils import timezone

from chat.management.commands._base import OpsCommand
from chat.models import ChatSession
from chat.selectors import (
    message_trailing_error_markers,
    session_has_running_turn_row,
    session_ids_with_trailing_error_marker,
)
from chat.services import message_clear_trailing_error_markers


class Command(OpsCommand):
    help = (
        "Delete the error markers at the end of a session (--session ID) or of every session that "
        "ends with one (--all-stale). Sessions with an active turn and markers followed by other "
        "messages are never touched."
    )

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument("--session", dest="session_id", help="The session's id (UUID).")
        parser.add_argument(
            "--all-stale", action="store_true", help="Every session that ends with error markers."
        )
        parser.add_argument(
            "--older-than",
            default=None,
            help="With --all-stale: only markers older than this (e.g. 1h). Default: any age.",
        )

    def handle(
        self,
        *args,
        session_id: str | None,
        all_stale: bool,
        older_than: str | None,
        dry_run: bool,
        verbosity: int,
        **options,
    ):
        if bool(session_id) == bool(all_stale):
            raise CommandError("give exactly one of --session ID or --all-stale")
        cutoff = timezone.now() - self.duration(older_than) if older_than else None
        if session_id:
            try:
                pk = uuid.UUID(session_id)
            except ValueError as exc:
                raise CommandError(f"--session: {session_id!r} is not a session id (UUID)") from exc
            if not ChatSession.objects.filter(pk=pk).exists():
                raise CommandError(f"no session {session_id}")
            session_ids = [pk]
        else:
            session_ids = session_ids_with_trailing_error_marker()
        cleared = sessions = active = 0
        touched: list[str] = []
        for pk in self.progress(session_ids, "sessions"):
            if session_has_running_turn_row(session_id=pk):
                active += 1
                continue
            markers = message_trailing_error_markers(session_id=pk)
            if cutoff is not None and any(m.created_at >= cutoff for m in markers):
                continue
            if not markers:
                continue
            count = len(markers) if dry_run else message_clear_trailing_error_markers(session_id=pk)
            cleared += count
            sessions += bool(count)
            if count:
                touched.append(str(pk))
                if verbosity >= 2:
                    self.stdout.write(f"{'would clear' if dry_run else 'cleared'} {count} marker(s) in {pk}")
        self.audit(
            {"cleared": cleared, "sessions": touched, "skipped_active": active, "older_than": older_than},
            dry_run=dry_run,
            changed=bool(cleared),
        )
        self.summary(
            f"{'would clear' if dry_run else 'cleared'} {cleared} error marker(s) in {sessions} session(s); "
            f"skipped {active} session(s) with an active turn",
            dry_run=dry_run,
        )

"""Delete old sessions (their messages and turns cascade; usage rows stay, unlinked)."""

from __future__ import annotations

from django.core.management.base import CommandError
from django.utils import timezone

from chat.management.commands._base import OpsCommand
from chat.models import ChatSession
from chat.ops import workspace_remove_for_session
from chat.selectors import turn_running_queryset
from chat.services import session_purge

BATCH = 500
AUDITED_IDS = 1000  # the audit event lists at most this many session ids


class Command(OpsCommand):
    help = (
        "Delete sessions whose last activity is older than --older-than (e.g. 90d), with their "
        "messages, turns and workspace. --archived-only limits it to archived sessions. Sessions "
        "with an active turn are never deleted. Token usage rows are kept (unlinked)."
    )

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument("--older-than", required=True, help="Inactivity, like 90d.")
        parser.add_argument("--archived-only", action="store_true", help="Only archived sessions.")

    def handle(self, *args, older_than: str, archived_only: bool, dry_run: bool, verbosity: int, **options):
        cutoff = timezone.now() - self.duration(older_than)
        qs = ChatSession.objects.filter(last_activity_at__lt=cutoff).exclude(
            pk__in=turn_running_queryset().values("session_id")
        )
        if archived_only:
            qs = qs.filter(archived=True)
        ids = list(qs.order_by("last_activity_at").values_list("pk", flat=True))
        deleted = workspaces = 0
        if not dry_run:
            try:
                for start in self.progress(range(0, len(ids), BATCH), f"batches of {BATCH} sessions"):
                    batch = ids[start : start + BATCH]
                    deleted += session_purge(session_ids=batch)
                    workspaces += sum(workspace_remove_for_session(session_id=pk) for pk in batch)
            except Exception as exc:
                self.audit(
                    self.audit_details(ids, deleted, workspaces, older_than, archived_only)
                    | {"error": str(exc)}
                )
                raise CommandError(f"purge_sessions failed after {deleted} session(s): {exc}") from exc
        self.audit(
            self.audit_details(ids, deleted, workspaces, older_than, archived_only),
            dry_run=dry_run,
            changed=bool(deleted or workspaces),
        )
        if verbosity >= 2:
            for pk in ids:
                self.stdout.write(f"{'would delete' if dry_run else 'deleted'} session {pk}")
        self.summary(
            f"{'would delete' if dry_run else 'deleted'} {len(ids) if dry_run else deleted} "
            f"{'archived ' if archived_only else ''}session(s) inactive > {older_than}"
            + ("" if dry_run else f" and {workspaces} workspace(s)"),
            dry_run=dry_run,
        )

    @staticmethod
    def audit_details(ids: list, deleted: int, workspaces: int, older_than: str, archived_only: bool) -> dict:
        return {
            "deleted": deleted,
            "workspaces": workspaces,
            "older_than": older_than,
            "archived_only": archived_only,
            "sessions": [str(pk) for pk in ids[:AUDITED_IDS]],
            "sessions_not_listed": max(0, len(ids) - AUDITED_IDS),
        }

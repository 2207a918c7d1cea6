"""Delete old rate-limit records (never one still active)."""

from __future__ import annotations

from django.utils import timezone

from chat.management.commands._base import OpsCommand
from chat.models import RateLimitRecord
from chat.services import rate_limit_record_purge


class Command(OpsCommand):
    help = (
        "Delete rate-limit records created more than --older-than ago (e.g. 30d) whose reset time has passed."
    )

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument("--older-than", default="30d", help="Age, like 30d (default 30d).")

    def handle(self, *args, older_than: str, dry_run: bool, **options):
        now = timezone.now()
        cutoff = now - self.duration(older_than)
        if dry_run:
            from django.db.models import Q

            count = (
                RateLimitRecord.objects.filter(created_at__lt=cutoff)
                .filter(Q(resets_at__isnull=True) | Q(resets_at__lte=now))
                .count()
            )
        else:
            count = rate_limit_record_purge(created_before=cutoff, now=now)
        self.audit({"deleted": count, "older_than": older_than}, dry_run=dry_run, changed=bool(count))
        self.summary(
            f"{'would delete' if dry_run else 'deleted'} {count} rate-limit record(s) "
            f"older than {older_than}",
            dry_run=dry_run,
        )

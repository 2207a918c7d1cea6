"""Mark turns whose worker died as interrupted (with a marker) and free their locks."""

from __future__ import annotations

from django.core.management.base import CommandError

from chat.management.commands._base import OpsCommand
from chat.ops import lease_seconds, locks_shared, turns_expire_stale


class Command(OpsCommand):
    help = (
        "Find running turns whose heartbeat is older than the lease (TURN_LEASE_SECONDS, default 30) "
        "or, with Redis, whose session lock is gone; mark them interrupted with a persisted "
        "'The server stopped while answering' marker and release their lock, so no session stays stuck."
    )

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument(
            "--lease",
            type=float,
            default=None,
            help="Seconds without a heartbeat before a turn counts as dead.",
        )

    def handle(self, *args, lease: float | None, dry_run: bool, verbosity: int, **options):
        lease = lease_seconds() if lease is None else lease
        if lease <= 0:
            raise CommandError("--lease must be positive")
        try:
            result = turns_expire_stale(lease=lease, dry_run=dry_run, track=self.tracker("running turns"))
        except Exception as exc:
            raise CommandError(f"expire_stream_locks failed: {type(exc).__name__}: {exc}") from exc
        if verbosity >= 2:
            for turn_id in result.interrupted:
                self.stdout.write(f"{'would interrupt' if dry_run else 'interrupted'} turn {turn_id}")
        self.audit(
            {
                "lease_seconds": lease,
                "interrupted": result.interrupted,
                "locks_released": result.locks_released,
                "skipped_live_lock": result.skipped_live_lock,
            },
            dry_run=dry_run,
            changed=bool(result.interrupted or result.locks_released),
        )
        self.summary(
            f"{'would mark' if dry_run else 'marked'} {len(result.interrupted)} dead turn(s) interrupted, "
            f"released {result.locks_released} lock(s), "
            f"left {len(result.skipped_live_lock)} with a live lock "
            f"(lease {lease:g}s, {'shared Redis locks' if locks_shared() else 'heartbeats only'})",
            dry_run=dry_run,
        )

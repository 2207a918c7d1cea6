"""Remove idle session workspaces under AGENT_WORKSPACE_ROOT."""

from __future__ import annotations

from django.core.management.base import CommandError

from chat.management.commands._base import OpsCommand
from chat.ops import workspace_root_path, workspaces_cleanup


class Command(OpsCommand):
    help = (
        "Remove session workspaces idle for longer than --older-than (e.g. 12h). Never one whose "
        "session has an active turn or recent activity, never a symlink or anything outside "
        "AGENT_WORKSPACE_ROOT, never a directory that is not named after a session id."
    )

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument("--older-than", default="12h", help="Idle time, like 90m, 12h, 7d (default 12h).")

    def handle(self, *args, older_than: str, dry_run: bool, verbosity: int, **options):
        age = self.duration(older_than)
        try:
            result = workspaces_cleanup(older_than=age, dry_run=dry_run, track=self.tracker("workspaces"))
        except (OSError, ValueError) as exc:
            raise CommandError(f"cleanup_workspaces failed: {exc}") from exc
        if verbosity >= 2:
            for path in result.removed:
                self.stdout.write(f"{'would remove' if dry_run else 'removed'} {path}")
            for reason, paths in result.skipped.items():
                for path in paths:
                    self.stdout.write(f"kept {path} ({reason})")
        for path, error in result.failed:
            self.stderr.write(f"could not remove {path}: {error}")
        skipped = (
            ", ".join(f"{len(paths)} {reason}" for reason, paths in sorted(result.skipped.items())) or "none"
        )
        self.audit(
            {
                "older_than": older_than,
                "removed": [path.name for path in result.removed],
                "failed": [path.name for path, _error in result.failed],
            },
            dry_run=dry_run,
            changed=bool(result.removed or result.failed),
        )
        self.summary(
            f"{'would remove' if dry_run else 'removed'} {len(result.removed)} workspace(s) "
            f"idle > {older_than} "
            f"under {workspace_root_path()}; kept: {skipped}; failed: {len(result.failed)}",
            dry_run=dry_run,
            ok=not result.failed,
        )
        if result.failed:
            raise CommandError(f"{len(result.failed)} workspace(s) could not be removed")

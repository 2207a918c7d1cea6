"""manage.py prune_transcripts --older-than 30d [--dry-run]"""

from __future__ import annotations

import datetime as dt
import re

from django.core.management.base import CommandError

from audit.commands import OperatorCommand
from transcripts.services import ORPHAN_GRACE, transcript_prune

_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_age(value: str) -> dt.timedelta:
    match = re.fullmatch(r"\s*(\d+)\s*([smhdw])\s*", value or "")
    if not match or int(match.group(1)) <= 0:
        raise CommandError(
            f"--older-than must look like 30d, 12h, 90m, 2w or 3600s (positive), not {value!r}"
        )
    return dt.timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


class Command(OperatorCommand):
    help = (
        "Delete agent transcripts of deleted chat sessions and of sessions idle longer than the given age "
        f"(orphaned transcripts: after min(age, {ORPHAN_GRACE}))."
    )

    def add_arguments(self, parser):
        super().add_arguments(parser)  # --dry-run
        parser.add_argument("--older-than", required=True, help="idle age, e.g. 30d, 12h, 90m, 2w")

    def handle(self, *args, **options):
        older_than = parse_age(options["older_than"])
        dry_run = options["dry_run"]
        pruned = transcript_prune(older_than=older_than, dry_run=dry_run, track=self.tracker("transcripts"))
        verb = "would delete" if dry_run else "deleted"
        for item in pruned:
            self.stdout.write(
                f"{verb} {item.session_id} project={item.project_key} reason={item.reason} "
                f"last_activity={item.last_activity:%Y-%m-%d %H:%M:%S} transcripts={item.transcripts} "
                f"entries={item.entries} size={_size(item.size_bytes)}"
            )
        entries = sum(item.entries for item in pruned)
        size = sum(item.size_bytes for item in pruned)
        summary = (
            f"{'Dry run: would delete' if dry_run else 'Deleted'} {len(pruned)} session transcript(s), "
            f"{entries} entries, {_size(size)} (older than {options['older_than']})."
        )
        self.audit(
            {
                "older_than": options["older_than"],
                "sessions": [item.session_id for item in pruned],
                "entries": entries,
                "size_bytes": size,
            },
            dry_run=dry_run,
            changed=bool(pruned),
        )
        self.stdout.write(self.style.SUCCESS(summary) if not dry_run else summary)

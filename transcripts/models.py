"""Agent transcripts: the Claude Code CLI's JSONL session files, mirrored into the database.

One :class:`Transcript` row per SessionStore key ``(project_key, session_id, subpath)`` — the
main transcript has ``subpath == ""``, sub-agent transcripts carry e.g. ``subagents/agent-1`` —
and one :class:`TranscriptEntry` row per JSONL line, ordered by a per-transcript ``seq``.

The key row is the lock that serialises concurrent appends (``SELECT … FOR UPDATE`` on
PostgreSQL, the IMMEDIATE write transaction on SQLite), holds the next ``seq``, the protocol's
``mtime`` (epoch ms, strictly increasing per key) and, for main transcripts, the SDK's opaque
summary sidecar (``fold_session_summary`` output).

The chat session ↔ CLI session mapping lives in ``chat.ChatSession.agent_session_id``; it is
deliberately not a foreign key here (the CLI writes transcripts before the chat learns the id,
and transcripts may outlive or predate chat rows).
"""

from __future__ import annotations

from django.db import models
from django.db.models import Q


class Transcript(models.Model):
    project_key = models.CharField(max_length=255)
    session_id = models.CharField(max_length=255)
    # "" for the main transcript; "subagents/agent-<id>" (opaque) for sub-agent transcripts.
    subpath = models.CharField(max_length=500, blank=True, default="")
    next_seq = models.PositiveBigIntegerField(default=0)
    entry_count = models.PositiveIntegerField(default=0)
    size_bytes = models.PositiveBigIntegerField(default=0)
    # SessionStore mtime: storage write time in Unix epoch milliseconds, strictly increasing.
    mtime = models.BigIntegerField(default=0)
    # SDK-owned summary sidecar data (main transcripts only) as JSON text; persisted verbatim, never
    # interpreted. Text, not JSONB: it quotes user prompts, which may hold NULs JSONB rejects.
    summary = models.TextField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(db_index=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["project_key", "session_id", "subpath"], name="transcript_unique_key"
            ),
        ]
        indexes = [
            # list_subkeys / delete-cascade / viewer lookups by CLI session id.
            models.Index(fields=["session_id", "project_key"], name="transcript_session"),
        ]

    def __str__(self) -> str:
        suffix = f" / {self.subpath}" if self.subpath else ""
        return f"{self.session_id}{suffix}"

    @property
    def is_main(self) -> bool:
        return not self.subpath


class TranscriptEntry(models.Model):
    transcript = models.ForeignKey(Transcript, on_delete=models.CASCADE, related_name="entries")
    seq = models.PositiveBigIntegerField()
    # The entry's own uuid (idempotency key); null for entries without one (titles, tags, …).
    uuid = models.CharField(max_length=255, null=True, blank=True)
    type = models.CharField(max_length=50, blank=True, default="")
    # The JSONL line as text: survives values JSONB rejects (NUL escapes), keeps key order.
    data = models.TextField()
    size_bytes = models.PositiveIntegerField(default=0)
    # mtime (epoch ms) of the append that stored this entry.
    stored_ms = models.BigIntegerField(default=0)

    class Meta:
        ordering = ["transcript", "seq"]
        constraints = [
            models.UniqueConstraint(fields=["transcript", "seq"], name="transcript_entry_unique_seq"),
            models.UniqueConstraint(
                fields=["transcript", "uuid"],
                condition=Q(uuid__isnull=False),
                name="transcript_entry_unique_uuid",
            ),
        ]

    def __str__(self) -> str:
        return f"#{self.seq} {self.type}"

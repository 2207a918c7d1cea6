"""One row per operator action (docs/operations.md, "Audit log")."""

from __future__ import annotations

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models
from django.utils import timezone


class AuditEvent(models.Model):
    """Who (``actor``, or ``actor_label`` alone for a command run from a shell), what (``action``
    on ``target_*``, with ``details``) and when (``created_at``). Rows are only ever added."""

    class Source(models.TextChoices):
        ADMIN = "admin", "admin"
        COMMAND = "command", "management command"

    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="audit_events",
        help_text="The signed-in operator; empty for commands (see the actor label).",
    )
    actor_label = models.CharField(
        max_length=200,
        help_text="The username at the time, or 'command:<name> by os user <user>'.",
    )
    source = models.CharField(max_length=16, choices=Source.choices)
    action = models.CharField(max_length=80, db_index=True, help_text="<model>.<verb> or command.<name>")
    target_type = models.CharField(max_length=100, blank=True, help_text="app_label.model_name")
    target_id = models.CharField(max_length=64, blank=True)
    target_repr = models.CharField(max_length=200, blank=True)
    details = models.JSONField(default=dict, blank=True, encoder=DjangoJSONEncoder)

    class Meta:
        ordering = ("-created_at", "-id")
        indexes = [models.Index(fields=("target_type", "target_id"), name="audit_target_idx")]

    def __str__(self) -> str:
        target = f" {self.target_type} {self.target_repr or self.target_id}" if self.target_type else ""
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.actor_label}: {self.action}{target}"

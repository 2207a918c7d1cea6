"""The admin's own add/change/delete, audited: a mixin for ModelAdmins.

Django writes a ``LogEntry`` for these (the admin's "Recent actions"), but it names the changed
fields only and covers no admin action. The mixin adds an ``AuditEvent`` next to each LogEntry:
``<model>.add`` / ``<model>.change`` (with the changed fields' old and new values, secrets
redacted) and ``<model>.delete`` (one per object, also for the bulk "delete selected" action).
It hooks ``log_addition``, ``log_change`` and ``log_deletions``, which every admin path calls
(change form, delete view, bulk delete, custom add views, the password form), so nothing the admin
writes escapes it; ``save_model`` only notes the form's changes for ``log_change``. The audit row is
written in the admin view's transaction, so it commits (or not) with the change itself.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import Model, QuerySet
from django.http import HttpRequest

from audit.models import AuditEvent
from audit.services import audit_record, plain

REDACTED = "(redacted)"
# The request attribute that carries the form's changes from save_model to log_change/log_addition.
CHANGES_ATTRIBUTE = "audit_changes"
ALWAYS_REDACTED = frozenset({"password", "password1", "password2", "hashed_key", "salt"})


def form_changes(form: Any, *, redacted: frozenset[str] | set[str]) -> dict[str, dict[str, Any]]:
    """``{field: {"from": old, "to": new}}`` for the fields the form changed."""
    changes: dict[str, dict[str, Any]] = {}
    for name in getattr(form, "changed_data", ()):
        if name in redacted or name in ALWAYS_REDACTED:
            changes[name] = {"from": REDACTED, "to": REDACTED}
            continue
        changes[name] = {
            "from": plain(form.initial.get(name)),
            "to": plain(form.cleaned_data.get(name)),
        }
    return changes


def note_form_changes(request: HttpRequest, form: Any, *, redacted: tuple[str, ...] = ()) -> None:
    """Keep the form's changes on the request for the next ``log_addition``/``log_change``
    (custom admin views that save through a service call this before logging)."""
    setattr(request, CHANGES_ATTRIBUTE, form_changes(form, redacted=set(redacted)))


def admin_action_name(model_admin: admin.ModelAdmin, verb: str) -> str:
    return f"{model_admin.opts.model_name}.{verb}"


class AuditedAdminMixin:
    """Put before ``admin.ModelAdmin`` in the bases. ``audit_redacted_fields``: form fields whose
    values never enter the log (it still says they changed)."""

    audit_redacted_fields: tuple[str, ...] = ()

    def audit_action(
        self, request: HttpRequest, verb: str, obj: Model | None = None, **details: Any
    ) -> AuditEvent:
        """Record an operator action on ``obj`` as ``<model>.<verb>`` (admin actions call this)."""
        return audit_record(
            action=admin_action_name(self, verb),
            source=AuditEvent.Source.ADMIN,
            actor=request.user,
            target=obj,
            details=details,
        )

    def save_model(self, request: HttpRequest, obj: Model, form: Any, change: bool) -> None:
        note_form_changes(request, form, redacted=self.audit_redacted_fields)
        super().save_model(request, obj, form, change)

    def log_addition(self, request: HttpRequest, obj: Model, message: Any) -> Any:
        entry = super().log_addition(request, obj, message)
        self.audit_action(request, "add", obj, changes=getattr(request, CHANGES_ATTRIBUTE, {}))
        return entry

    def log_change(self, request: HttpRequest, obj: Model, message: Any) -> Any:
        entry = super().log_change(request, obj, message)
        self.audit_action(
            request, "change", obj, message=message, changes=getattr(request, CHANGES_ATTRIBUTE, {})
        )
        return entry

    def log_deletions(self, request: HttpRequest, queryset: QuerySet) -> Any:
        for obj in queryset:
            self.audit_action(request, "delete", obj)
        return super().log_deletions(request, queryset)

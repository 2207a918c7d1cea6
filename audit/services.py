"""Writing the audit log. Callers: the admin (chat/admin.py, audit/adminlog.py, chat/live_admin.py)
and the operator commands (audit/commands.py)."""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from typing import Any

from django.db import models

from audit.models import AuditEvent

REPR_LIMIT = 200


def plain(value: Any) -> Any:
    """``value`` as something JSON holds as is: model instances become their primary key,
    dates and UUIDs text, containers are converted item by item."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, models.Model):
        return plain(value.pk)
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [plain(v) for v in value]
    if isinstance(value, models.QuerySet):
        return [plain(v) for v in value]
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, uuid.UUID | decimal.Decimal | dt.timedelta):
        return str(value)
    return str(value)


def target_fields(target: models.Model | None) -> dict[str, str]:
    if target is None:
        return {}
    return {
        "target_type": target._meta.label_lower,
        "target_id": str(target.pk),
        "target_repr": str(target)[:REPR_LIMIT],
    }


def audit_record(
    *,
    action: str,
    source: str,
    actor: Any = None,
    actor_label: str = "",
    target: models.Model | None = None,
    target_type: str = "",
    target_id: str = "",
    target_repr: str = "",
    details: dict[str, Any] | None = None,
) -> AuditEvent:
    """Write one audit event. ``actor`` is a signed-in user (its username becomes the label unless
    one is given); commands pass ``actor_label`` alone. ``target`` (a model instance) fills the
    target fields; a target that no longer exists may be named with ``target_type/_id/_repr``."""
    user = actor if actor is not None and getattr(actor, "is_authenticated", False) else None
    label = actor_label or (user.get_username() if user is not None else "anonymous")
    fields = target_fields(target) or {
        "target_type": target_type,
        "target_id": str(target_id),
        "target_repr": str(target_repr)[:REPR_LIMIT],
    }
    return AuditEvent.objects.create(
        actor=user,
        actor_label=label[:200],
        source=source,
        action=action,
        details=plain(details or {}),
        **fields,
    )

"""The audit log in the admin, read-only; Django's user and group admins, audited."""

from __future__ import annotations

import json

from django.contrib import admin
from django.contrib.admin import DateFieldListFilter, RelatedOnlyFieldListFilter
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import GroupAdmin, UserAdmin
from django.contrib.auth.models import Group
from django.utils.html import format_html

from audit.adminlog import AuditedAdminMixin
from audit.models import AuditEvent


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    """Nobody adds, edits or deletes audit events here, superusers included."""

    list_display = ("created_at", "actor_label", "source", "action", "target_type", "target_repr")
    list_filter = (
        "source",
        "action",
        ("actor", RelatedOnlyFieldListFilter),
        ("created_at", DateFieldListFilter),
    )
    search_fields = ("actor_label", "action", "target_repr", "target_id")
    date_hierarchy = "created_at"
    ordering = ("-created_at", "-id")
    list_per_page = 100
    fields = (
        "created_at",
        "actor",
        "actor_label",
        "source",
        "action",
        "target_type",
        "target_id",
        "target_repr",
        "details_pretty",
    )
    readonly_fields = fields
    actions = None

    @admin.display(description="details")
    def details_pretty(self, obj: AuditEvent) -> str:
        return format_html(
            '<pre style="white-space:pre-wrap">{}</pre>',
            json.dumps(obj.details, indent=2, ensure_ascii=False),
        )

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class AuditedUserAdmin(AuditedAdminMixin, UserAdmin):
    """Django's user admin; creating users, changing staff flags, permissions or passwords is audited
    (passwords redacted)."""


class AuditedGroupAdmin(AuditedAdminMixin, GroupAdmin):
    pass


User = get_user_model()
if admin.site.is_registered(User):
    admin.site.unregister(User)
admin.site.register(User, AuditedUserAdmin)
if admin.site.is_registered(Group):
    admin.site.unregister(Group)
admin.site.register(Group, AuditedGroupAdmin)

"""Read-only admin for agent transcripts: a changelist searchable by CLI session id, chat session,
user and date, linking to the conversation viewer (transcripts.views)."""

from __future__ import annotations

import uuid
from urllib.parse import urlencode

from django.contrib import admin
from django.db.models import OuterRef, Q, Subquery
from django.urls import reverse
from django.utils.html import format_html

from transcripts.models import Transcript


class KindFilter(admin.SimpleListFilter):
    title = "kind"
    parameter_name = "kind"

    def lookups(self, request, model_admin):
        return [("main", "main transcripts"), ("sub", "sub-agent transcripts")]

    def queryset(self, request, queryset):
        if self.value() == "main":
            return queryset.filter(subpath="")
        if self.value() == "sub":
            return queryset.exclude(subpath="")
        return queryset


@admin.register(Transcript)
class TranscriptAdmin(admin.ModelAdmin):
    list_display = (
        "session_link",
        "subpath",
        "owner",
        "chat",
        "entry_count",
        "size",
        "updated_at",
        "project_key",
    )
    list_display_links = None
    list_filter = (KindFilter, "updated_at")
    date_hierarchy = "updated_at"
    search_fields = ("session_id", "project_key", "subpath")
    search_help_text = "CLI session id, chat session id or title, owner username or email, project key"
    ordering = ("-updated_at",)
    list_per_page = 50
    show_full_result_count = False

    def get_queryset(self, request):
        from chat.models import ChatSession

        chats = ChatSession.objects.filter(agent_session_id=OuterRef("session_id")).order_by(
            "-last_activity_at"
        )
        return (
            super()
            .get_queryset(request)
            .defer("summary")
            .annotate(
                chat_owner=Subquery(chats.values("owner__username")[:1]),
                chat_pk=Subquery(chats.values("id")[:1]),
                chat_title=Subquery(chats.values("title")[:1]),
            )
        )

    def get_search_results(self, request, queryset, search_term):
        from chat.models import ChatSession

        results, may_have_duplicates = super().get_search_results(request, queryset, search_term)
        term = search_term.strip()
        if term:
            chat_q = (
                Q(owner__username__icontains=term)
                | Q(owner__email__icontains=term)
                | Q(title__icontains=term)
            )
            chat_q |= Q(client_id=term)
            try:
                chat_q |= Q(id=uuid.UUID(term))
            except ValueError:
                pass
            agent_ids = (
                ChatSession.objects.filter(chat_q).exclude(agent_session_id="").values("agent_session_id")
            )
            results = results | queryset.filter(session_id__in=agent_ids)
        return results, may_have_duplicates

    @admin.display(description="CLI session", ordering="session_id")
    def session_link(self, obj):
        url = reverse("transcripts:viewer", args=[obj.session_id])
        anchor = f"#{obj.subpath}" if obj.subpath else ""
        return format_html(
            '<a href="{}?{}{}">{}</a>', url, urlencode({"project": obj.project_key}), anchor, obj.session_id
        )

    @admin.display(description="owner", ordering="chat_owner")
    def owner(self, obj):
        return obj.chat_owner or "—"

    @admin.display(description="chat session")
    def chat(self, obj):
        if not obj.chat_pk:
            return "—"
        return obj.chat_title or str(obj.chat_pk)

    @admin.display(description="size", ordering="size_bytes")
    def size(self, obj):
        from transcripts.templatetags.humanize_bytes import bytes_h

        return bytes_h(obj.size_bytes)

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

"""The admin as an operator's control room: find a stuck or failing session, see why, fix it.

Sessions (annotated list, filters, readable read-only messages, actions: clear stale error markers,
stop the active turn, release a stuck lock, archive), turns and messages (read-only), token usage
(read-only, with an SVG charts page), rate-limit records, API keys (revoke; the hash is never
shown), per-user budgets and per-user tool rules (editable). Actions call services
(chat.services, chat.ops, chat.runtime, chat.apikeys); nothing here writes models directly.

Every operator action is audited (audit app): each admin action writes an ``AuditEvent`` per object
it acted on (``chatsession.clear_error_markers``, ``chatsession.stop_turn``, ``apikey.revoke``…),
and ``AuditedAdminMixin`` records the admin's own add/change/delete (``userbudget.change`` with the
old and new limits, ``mcpserver.delete``…). A session's and a turn's change pages carry the live
supervision panel (chat.live_admin).
"""

from __future__ import annotations

import datetime as dt
import json
import shlex
import uuid
from typing import Any

from asgiref.sync import async_to_sync
from django import forms
from django.contrib import admin, messages
from django.contrib.admin import DateFieldListFilter, SimpleListFilter
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe

from audit.adminlog import AuditedAdminMixin, note_form_changes
from chat import charts, live_admin
from chat.apikeys import api_key_create, api_key_revoke
from chat.models import (
    ApiKey,
    ChatMessage,
    ChatSession,
    ChatTurn,
    McpServer,
    RateLimitRecord,
    TokenUsage,
    ToolRule,
    UsageChart,
    UserBudget,
)
from chat.ops import lock_state, session_release_stuck_lock
from chat.runtime import turn_active_id, turn_stop_session
from chat.selectors import (
    session_has_running_turn_row,
    session_list_for_admin,
    turn_list_recent,
    usage_per_day,
    usage_per_model,
    usage_top_users,
)
from chat.services import message_clear_trailing_error_markers, session_archive
from chat.usage import budget_status

MESSAGE_INLINE_LIMIT = 200
PART_TEXT_LIMIT = 4000
CHART_DAYS = 30


# --- Rendering helpers ---------------------------------------------------------------------------


def _clip(text: Any, limit: int = PART_TEXT_LIMIT) -> str:
    text = text if isinstance(text, str) else json.dumps(text, indent=2, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[:limit] + f"\n… ({len(text) - limit} more characters)"


_KIND_COLORS = {
    ChatMessage.Kind.ERROR: "#ba2121",
    ChatMessage.Kind.RETRYABLE_ERROR: "#c77700",
    ChatMessage.Kind.STOPPED: "#666",
    ChatMessage.Kind.SYSTEM: "#417690",
}


def render_message(message: ChatMessage) -> SafeString:
    """A message's parts as readable HTML: text, reasoning, tool calls (input/output), files, markers."""
    out: list[str] = []
    if message.kind != ChatMessage.Kind.NORMAL:
        meta = message.metadata or {}
        code = meta.get("code") or meta.get("errorCode") or ""
        out.append(
            format_html(
                '<div><strong style="color:#fff;background:{};padding:1px 6px;'
                'border-radius:3px">{}</strong> {}</div>',
                _KIND_COLORS.get(message.kind, "#666"),
                message.kind,
                code,
            )
        )
    parts = message.parts if isinstance(message.parts, list) else []
    for part in parts:
        if not isinstance(part, dict):
            continue
        kind = str(part.get("type", ""))
        if kind == "text":
            out.append(format_html('<div style="white-space:pre-wrap">{}</div>', _clip(part.get("text", ""))))
        elif kind == "reasoning":
            out.append(
                format_html(
                    "<details><summary><em>reasoning</em></summary>"
                    '<pre style="white-space:pre-wrap">{}</pre></details>',
                    _clip(part.get("text", "")),
                )
            )
        elif kind.startswith("tool-") or kind == "dynamic-tool":
            name = part.get("toolName") or kind.removeprefix("tool-")
            state = part.get("state", "")
            body = [
                format_html(
                    '<div>input:</div><pre style="white-space:pre-wrap">{}</pre>',
                    _clip(part.get("input", {}), 2000),
                )
            ]
            if "output" in part:
                body.append(
                    format_html(
                        '<div>output:</div><pre style="white-space:pre-wrap">{}</pre>',
                        _clip(part.get("output")),
                    )
                )
            if part.get("errorText"):
                body.append(
                    format_html('<div style="color:#ba2121">error: {}</div>', _clip(part["errorText"], 1000))
                )
            out.append(
                format_html(
                    "<details><summary>tool <code>{}</code> {} <small>{}</small></summary>{}</details>",
                    name,
                    state,
                    part.get("toolCallId", ""),
                    mark_safe("".join(body)),
                )
            )
        elif kind == "file":
            out.append(
                format_html(
                    "<div>file: <code>{}</code> ({})</div>",
                    part.get("filename", "?"),
                    part.get("mediaType", ""),
                )
            )
        elif kind in {"step-start", "source-url", "source-document"}:
            continue
        else:
            out.append(
                format_html(
                    "<details><summary>{}</summary><pre>{}</pre></details>", kind or "part", _clip(part, 1000)
                )
            )
    if not parts and message.text:
        out.append(format_html('<div style="white-space:pre-wrap">{}</div>', _clip(message.text)))
    return mark_safe("".join(out)) if out else mark_safe("<em>(empty)</em>")


def transcript_url(agent_session_id: str) -> str | None:
    """The transcript viewer's URL for a CLI session id (None before the first sdk turn)."""
    return reverse("transcripts:viewer", args=[agent_session_id]) if agent_session_id else None


# --- Sessions ------------------------------------------------------------------------------------


class ActiveTurnFilter(SimpleListFilter):
    title = "active turn"
    parameter_name = "active_turn"

    def lookups(self, request, model_admin):
        return (("yes", "Has an active turn"), ("no", "No active turn"))

    def queryset(self, request, queryset):
        if self.value() == "yes":
            return queryset.filter(has_active_turn=True)
        if self.value() == "no":
            return queryset.filter(has_active_turn=False)
        return queryset


class ErrorMarkerFilter(SimpleListFilter):
    title = "error marker"
    parameter_name = "error_marker"

    def lookups(self, request, model_admin):
        return (("yes", "Ends with an error marker"), ("no", "No trailing error marker"))

    def queryset(self, request, queryset):
        if self.value() == "yes":
            return queryset.filter(last_kind__in=ChatMessage.ERROR_KINDS)
        if self.value() == "no":
            return queryset.exclude(last_kind__in=ChatMessage.ERROR_KINDS)
        return queryset


class ChatMessageInline(admin.TabularInline):
    model = ChatMessage
    verbose_name_plural = f"messages (the newest {MESSAGE_INLINE_LIMIT}, read-only)"
    fields = ("sequence", "role", "kind", "rendered", "created_at")
    readonly_fields = fields
    ordering = ("sequence",)
    extra = 0
    max_num = 0
    can_delete = False
    show_change_link = False

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.display(description="content")
    def rendered(self, obj: ChatMessage) -> SafeString:
        return render_message(obj)


@admin.register(ChatSession)
class ChatSessionAdmin(AuditedAdminMixin, admin.ModelAdmin):
    list_display = (
        "short_id",
        "title_or_id",
        "owner",
        "message_count",
        "last_activity_at",
        "active_turn",
        "error_marker",
        "backend",
        "model",
        "tool_mode",
        "archived",
        "transcript",
    )
    list_display_links = ("short_id", "title_or_id")
    list_filter = (
        ActiveTurnFilter,
        ErrorMarkerFilter,
        "backend",
        "model",
        "tool_mode",
        "archived",
        ("last_activity_at", DateFieldListFilter),
        ("created_at", DateFieldListFilter),
    )
    search_fields = ("title", "owner__username", "client_id", "agent_session_id")
    ordering = ("-last_activity_at",)
    list_per_page = 50
    fields = (
        "id",
        "owner",
        "title",
        "archived",
        "client_id",
        "backend",
        "model",
        "tool_mode",
        "max_steps",
        "instructions",
        "agent_session_id",
        "transcript",
        "created_at",
        "last_activity_at",
        "lock_status",
        "recent_turns",
    )
    readonly_fields = (
        "id",
        "owner",
        "client_id",
        "backend",
        "model",
        "tool_mode",
        "max_steps",
        "instructions",
        "agent_session_id",
        "transcript",
        "created_at",
        "last_activity_at",
        "lock_status",
        "recent_turns",
    )
    inlines = [ChatMessageInline]
    change_form_template = "admin/chat/chatsession/change_form.html"
    actions = [
        "clear_error_markers",
        "stop_active_turn",
        "release_stuck_lock",
        "archive_sessions",
        "unarchive_sessions",
    ]

    def get_queryset(self, request: HttpRequest) -> QuerySet[ChatSession]:
        return session_list_for_admin()

    def get_urls(self):
        live = [
            path(
                "<uuid:session_id>/live/stream/",
                live_admin.live_stream_view,
                name="chat_chatsession_live_stream",
            ),
            path(
                "<uuid:session_id>/live/stop/",
                self.admin_site.admin_view(live_admin.live_stop_view),
                name="chat_chatsession_live_stop",
            ),
        ]
        return live + super().get_urls()

    def change_view(self, request, object_id, form_url="", extra_context=None):
        session_id = self.live_session_id(object_id)
        if session_id is not None:
            extra_context = {
                **(extra_context or {}),
                **live_admin.live_context(request=request, session_id=session_id),
            }
        return super().change_view(request, object_id, form_url, extra_context)

    @staticmethod
    def live_session_id(object_id: str) -> uuid.UUID | None:
        try:
            return uuid.UUID(str(object_id))
        except ValueError:
            return None

    def has_add_permission(self, request):
        return False  # sessions are created by their owners

    def get_search_results(self, request, queryset, search_term):
        queryset, may_have_duplicates = super().get_search_results(request, queryset, search_term)
        term = search_term.strip()
        if term:
            try:
                queryset |= self.get_queryset(request).filter(pk=uuid.UUID(term))
            except ValueError:
                pass
        return queryset, may_have_duplicates

    def get_formset_kwargs(self, request, obj, inline, prefix):
        kwargs = super().get_formset_kwargs(request, obj, inline, prefix)
        if isinstance(inline, ChatMessageInline) and obj is not None:
            from chat.selectors import message_sequence_floor

            floor = message_sequence_floor(session_id=obj.pk, last=MESSAGE_INLINE_LIMIT)
            if floor is not None:
                kwargs["queryset"] = kwargs["queryset"].filter(sequence__gte=floor)
        return kwargs

    # -- columns --

    @admin.display(description="id", ordering="id")
    def short_id(self, obj: ChatSession) -> str:
        return str(obj.pk)[:8]

    @admin.display(description="title", ordering="title")
    def title_or_id(self, obj: ChatSession) -> str:
        return obj.title or "(untitled)"

    @admin.display(description="messages", ordering="message_count")
    def message_count(self, obj: ChatSession) -> int:
        return getattr(obj, "message_count", 0)

    @admin.display(description="active turn", boolean=True, ordering="has_active_turn")
    def active_turn(self, obj: ChatSession) -> bool:
        return bool(getattr(obj, "has_active_turn", False))

    @admin.display(description="error marker", boolean=True)
    def error_marker(self, obj: ChatSession) -> bool:
        return getattr(obj, "last_kind", None) in ChatMessage.ERROR_KINDS

    @admin.display(description="transcript")
    def transcript(self, obj: ChatSession) -> str:
        url = transcript_url(obj.agent_session_id)
        if url is None:
            return "-"
        return format_html('<a href="{}">transcript</a>', url)

    @admin.display(description="lock")
    def lock_status(self, obj: ChatSession) -> str:
        try:
            return lock_state(session_id=obj.pk).describe()
        except Exception as exc:  # noqa: BLE001 - e.g. Redis down: show it, do not break the page
            return f"unknown ({type(exc).__name__})"

    @admin.display(description="recent turns")
    def recent_turns(self, obj: ChatSession) -> SafeString:
        turns = turn_list_recent(session_id=obj.pk, limit=10)
        if not turns:
            return mark_safe("-")
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (
                    f"{t.started_at:%Y-%m-%d %H:%M:%S}",
                    t.status,
                    t.trigger,
                    t.finish_reason or "-",
                    t.error_code or "-",
                    t.worker or "-",
                    f"{t.heartbeat_at:%H:%M:%S}" if t.heartbeat_at else "-",
                )
                for t in turns
            ),
        )
        return format_html(
            "<table><tr><th>started</th><th>status</th><th>trigger</th><th>finish</th><th>error</th><th>worker</th>"
            "<th>heartbeat</th></tr>{}</table>",
            rows,
        )

    # -- actions --

    @admin.action(description="Clear stale error markers (trailing, no active turn)", permissions=["change"])
    def clear_error_markers(self, request: HttpRequest, queryset: QuerySet[ChatSession]) -> None:
        cleared = skipped = 0
        for session in queryset:
            if session_has_running_turn_row(session_id=session.pk):
                skipped += 1
                self.audit_action(request, "clear_error_markers", session, cleared=0, skipped="active turn")
                continue
            count = message_clear_trailing_error_markers(session_id=session.pk)
            cleared += count
            self.audit_action(request, "clear_error_markers", session, cleared=count)
        self.message_user(
            request,
            f"Cleared {cleared} error marker(s)"
            + (f"; skipped {skipped} session(s) with an active turn." if skipped else "."),
            messages.SUCCESS if not skipped else messages.WARNING,
        )

    @admin.action(description="Stop the active turn", permissions=["change"])
    def stop_active_turn(self, request: HttpRequest, queryset: QuerySet[ChatSession]) -> None:
        stopped = 0
        idle = 0
        for session in queryset:
            turn_id = async_to_sync(turn_active_id)(session_id=str(session.pk))
            if async_to_sync(turn_stop_session)(session_id=str(session.pk)):
                stopped += 1
                self.audit_action(request, "stop_turn", session, stopped=True, turn=turn_id)
            else:
                idle += 1
                self.audit_action(request, "stop_turn", session, stopped=False, turn=None)
        self.message_user(
            request,
            f"Asked {stopped} active turn(s) to stop"
            + (f"; {idle} session(s) had no active turn." if idle else "."),
            messages.SUCCESS if stopped else messages.WARNING,
        )

    @admin.action(
        description="Release a stuck lock (expired lease or dead worker) and mark its turn interrupted",
        permissions=["change"],
    )
    def release_stuck_lock(self, request: HttpRequest, queryset: QuerySet[ChatSession]) -> None:
        for session in queryset:
            released, detail = session_release_stuck_lock(session_id=session.pk)
            self.audit_action(request, "release_lock", session, released=released, detail=detail)
            label = session.title or str(session.pk)[:8]
            if released:
                self.message_user(request, f"{label}: {detail}.", messages.SUCCESS)
            else:
                self.message_user(request, f"{label}: refused, {detail}.", messages.WARNING)

    @admin.action(description="Archive", permissions=["change"])
    def archive_sessions(self, request: HttpRequest, queryset: QuerySet[ChatSession]) -> None:
        for session in queryset:
            self.audit_action(request, "archive", session)
        count = session_archive(session_ids=list(queryset.values_list("pk", flat=True)), archived=True)
        self.message_user(request, f"Archived {count} session(s).", messages.SUCCESS)

    @admin.action(description="Unarchive", permissions=["change"])
    def unarchive_sessions(self, request: HttpRequest, queryset: QuerySet[ChatSession]) -> None:
        for session in queryset:
            self.audit_action(request, "unarchive", session)
        count = session_archive(session_ids=list(queryset.values_list("pk", flat=True)), archived=False)
        self.message_user(request, f"Unarchived {count} session(s).", messages.SUCCESS)


# --- Read-only records ---------------------------------------------------------------------------


class ReadOnlyAdmin(AuditedAdminMixin, admin.ModelAdmin):
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(ChatTurn)
class ChatTurnAdmin(ReadOnlyAdmin):
    list_display = (
        "id",
        "session",
        "status",
        "backend",
        "model",
        "worker",
        "started_at",
        "heartbeat_at",
        "ended_at",
        "finish_reason",
        "error_code",
    )
    list_filter = ("status", "backend", "error_code", ("started_at", DateFieldListFilter))
    search_fields = ("session__title", "worker", "error_code")
    list_select_related = ("session",)
    ordering = ("-started_at",)
    change_form_template = "admin/chat/chatturn/change_form.html"

    def has_delete_permission(self, request, obj=None):
        return False

    def change_view(self, request, object_id, form_url="", extra_context=None):
        turn = self.get_object(request, object_id)
        if turn is not None:
            extra_context = {
                **(extra_context or {}),
                **live_admin.live_context(request=request, session_id=turn.session_id, turn=turn),
            }
        return super().change_view(request, object_id, form_url, extra_context)


@admin.register(ChatMessage)
class ChatMessageAdmin(ReadOnlyAdmin):
    list_display = ("session", "sequence", "role", "kind", "preview", "created_at")
    list_filter = ("kind", "role", ("created_at", DateFieldListFilter))
    search_fields = ("session__title", "text")
    list_select_related = ("session",)
    ordering = ("-created_at",)
    fields = ("session", "sequence", "role", "kind", "turn", "parent", "created_at", "rendered", "metadata")
    readonly_fields = fields

    @admin.display(description="text")
    def preview(self, obj: ChatMessage) -> str:
        return (obj.text or "")[:80]

    @admin.display(description="content")
    def rendered(self, obj: ChatMessage) -> SafeString:
        return render_message(obj)


@admin.register(TokenUsage)
class TokenUsageAdmin(ReadOnlyAdmin):
    list_display = (
        "created_at",
        "user",
        "model",
        "backend",
        "purpose",
        "input_tokens",
        "output_tokens",
        "cache_read_tokens",
        "cache_write_tokens",
        "weighted_tokens",
        "cost_usd",
        "session",
    )
    list_filter = ("model", "backend", "purpose", ("created_at", DateFieldListFilter))
    search_fields = ("user__username", "model")
    list_select_related = ("user", "session")
    ordering = ("-created_at",)
    date_hierarchy = None
    change_list_template = "admin/chat/tokenusage/change_list.html"

    def has_delete_permission(self, request, obj=None):
        return False

    def get_urls(self):
        urls = [path("charts/", self.admin_site.admin_view(self.charts_view), name="chat_tokenusage_charts")]
        return urls + super().get_urls()

    def charts_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_view_permission(request):
            from django.core.exceptions import PermissionDenied

            raise PermissionDenied
        today = timezone.now().astimezone(dt.UTC).date()
        first = today - dt.timedelta(days=CHART_DAYS - 1)
        since = dt.datetime.combine(first, dt.time.min, tzinfo=dt.UTC)
        by_day = {row["day"]: row for row in usage_per_day(since=since)}
        days = [first + dt.timedelta(days=i) for i in range(CHART_DAYS)]
        labels = [f"{d:%m-%d}" for d in days]

        def total(row: dict | None) -> int:
            if not row:
                return 0
            return sum(int(row.get(k) or 0) for k in ("input", "output", "cache_read", "cache_write"))

        tokens = [total(by_day.get(d)) for d in days]
        weighted = [int((by_day.get(d) or {}).get("weighted") or 0) for d in days]
        costs = [float((by_day.get(d) or {}).get("cost") or 0) for d in days]
        per_model = usage_per_model(since=since)
        top = usage_top_users(since=since, limit=10)
        context = {
            **self.admin_site.each_context(request),
            "title": f"Token usage, last {CHART_DAYS} days",
            "opts": self.model._meta,
            "since": since,
            "totals": {
                "tokens": f"{sum(tokens):,}",
                "weighted": f"{sum(weighted):,}",
                "cost": charts.fmt_usd(sum(costs)),
            },
            "chart_tokens": charts.column_chart(
                title="Tokens per day (all classes)", labels=labels, values=tokens
            ),
            "chart_weighted": charts.column_chart(
                title="Weighted tokens per day (budget units)",
                labels=labels,
                values=weighted,
                color="#5b80b2",
            ),
            "chart_cost": charts.column_chart(
                title="Cost per day (USD)", labels=labels, values=costs, fmt=charts.fmt_usd, color="#c77700"
            ),
            "chart_models": charts.bar_chart(
                title="Weighted tokens per model",
                labels=[r["model"] or "?" for r in per_model],
                values=[int(r["weighted"] or 0) for r in per_model],
                notes=[f"{charts.fmt_usd(r['cost'])}, {r['turns']} calls" for r in per_model],
            ),
            "chart_users": charts.bar_chart(
                title="Top users by weighted tokens",
                labels=[r["user__username"] or f"#{r['user_id']}" for r in top],
                values=[int(r["weighted"] or 0) for r in top],
                notes=[f"{charts.fmt_usd(r['cost'])}, {r['turns']} calls" for r in top],
                color="#70bf2b",
            ),
        }
        return TemplateResponse(request, "admin/chat/usage_charts.html", context)


@admin.register(UsageChart)
class UsageChartAdmin(admin.ModelAdmin):
    """An admin-index entry that opens the charts page."""

    def has_view_permission(self, request, obj=None):
        return (
            request.user.is_active and request.user.is_staff and request.user.has_perm("chat.view_tokenusage")
        )

    def has_module_permission(self, request):
        return self.has_view_permission(request)

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def changelist_view(self, request, extra_context=None):
        return HttpResponseRedirect(reverse("admin:chat_tokenusage_charts"))


class RateLimitActiveFilter(SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request, model_admin):
        return (("active", "Active (resets in the future)"), ("past", "Past"))

    def queryset(self, request, queryset):
        now = timezone.now()
        if self.value() == "active":
            return queryset.filter(resets_at__gt=now)
        if self.value() == "past":
            from django.db.models import Q

            return queryset.filter(Q(resets_at__lte=now) | Q(resets_at__isnull=True))
        return queryset


@admin.register(RateLimitRecord)
class RateLimitRecordAdmin(ReadOnlyAdmin):
    """Deleting an active upstream record lifts its block on new turns early."""

    list_display = ("created_at", "user", "source", "model", "resets_at", "active", "message")
    list_filter = (RateLimitActiveFilter, "source", "model", ("created_at", DateFieldListFilter))
    search_fields = ("user__username", "model", "raw_message")
    list_select_related = ("user",)
    ordering = ("-created_at",)
    fields = ("user", "session", "source", "model", "resets_at", "created_at", "raw_message")
    readonly_fields = fields

    @admin.display(description="active", boolean=True)
    def active(self, obj: RateLimitRecord) -> bool:
        return obj.resets_at is not None and obj.resets_at > timezone.now()

    @admin.display(description="raw message")
    def message(self, obj: RateLimitRecord) -> str:
        return (obj.raw_message or "")[:120]


class ApiKeyActiveFilter(SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request, model_admin):
        return (("active", "Active"), ("revoked", "Revoked"))

    def queryset(self, request, queryset):
        if self.value() == "active":
            return queryset.filter(revoked_at__isnull=True)
        if self.value() == "revoked":
            return queryset.filter(revoked_at__isnull=False)
        return queryset


@admin.register(ApiKey)
class ApiKeyAdmin(AuditedAdminMixin, admin.ModelAdmin):
    """Keys are created by their owners through the API, or here for them; the full key is shown
    once. ``salt`` and ``hashed_key`` are never displayed."""

    list_display = ("name", "owner", "prefix", "created_at", "last_used_at", "revoked_at", "is_active")
    list_filter = (ApiKeyActiveFilter, ("created_at", DateFieldListFilter))
    search_fields = ("name", "prefix", "owner__username")
    list_select_related = ("owner",)
    ordering = ("-created_at",)
    fields = ("name", "owner", "prefix", "created_at", "last_used_at", "revoked_at")
    readonly_fields = fields
    actions = ["revoke_keys"]

    def add_view(
        self, request: HttpRequest, form_url: str = "", extra_context: dict | None = None
    ) -> HttpResponse:
        """Create a key for a user through chat.apikeys; the full key is rendered once on the
        response (never stored, never put in a message cookie)."""
        if not self.has_add_permission(request):
            raise PermissionDenied
        form = ApiKeyCreateForm(request.POST or None)
        raw_key = None
        if request.method == "POST" and form.is_valid():
            api_key, raw_key = api_key_create(
                owner=form.cleaned_data["owner"], name=form.cleaned_data["name"]
            )
            note_form_changes(request, form)
            self.log_addition(request, api_key, [{"added": {}}])
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": "Create an API key",
            "form": form,
            "raw_key": raw_key,
        }
        # The admin site wraps this view in never_cache (Cache-Control: no-store).
        return TemplateResponse(request, "admin/chat/apikey/create.html", context)

    @admin.display(description="active", boolean=True)
    def is_active(self, obj: ApiKey) -> bool:
        return obj.revoked_at is None

    @admin.action(description="Revoke the selected API keys", permissions=["change"])
    def revoke_keys(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        count = 0
        for api_key in queryset.filter(revoked_at__isnull=True):
            api_key_revoke(api_key=api_key)
            self.audit_action(request, "revoke", api_key)
            count += 1
        self.message_user(request, f"Revoked {count} API key(s).", messages.SUCCESS)


@admin.register(ToolRule)
class ToolRuleAdmin(AuditedAdminMixin, admin.ModelAdmin):
    """A user's own decision per tool (``allow``, ``ask``, ``deny``), on top of the operator's
    AGENT_TOOL_POLICY (agents/approval.py). ``tool``: a tool name ("Bash") or a prefix ending in *
    ("mcp__notes__*")."""

    list_display = ("user", "tool", "decision", "created_at")
    list_filter = ("decision",)
    search_fields = ("user__username", "tool")
    list_select_related = ("user",)
    raw_id_fields = ("user",)
    ordering = ("user__username", "tool")
    fields = ("user", "tool", "decision", "created_at")
    readonly_fields = ("created_at",)


class McpServerForm(forms.ModelForm):
    """``command`` is edited as one shell-like line (``shlex``), stored as the argv list."""

    command = forms.CharField(
        required=False,
        widget=forms.TextInput(attrs={"size": 80}),
        help_text="stdio: the command line, e.g. <code>python -m agents.mcp_notes</code> (it runs in "
        "the jail, cwd = the chat's workspace; quote arguments as in a shell).",
    )

    url = forms.URLField(
        required=False, max_length=500, assume_scheme="https", help_text="http: the streamable-HTTP URL."
    )

    class Meta:
        model = McpServer
        fields = (
            "name",
            "transport",
            "command",
            "url",
            "headers",
            "enabled",
            "timeout_seconds",
            "description",
        )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance is not None and isinstance(self.instance.command, list):
            self.initial["command"] = shlex.join(str(a) for a in self.instance.command)

    def clean_command(self) -> list[str]:
        text = self.cleaned_data.get("command") or ""
        try:
            return shlex.split(text)
        except ValueError as exc:
            raise forms.ValidationError(f"Not a valid command line: {exc}.") from exc


@admin.register(McpServer)
class McpServerAdmin(AuditedAdminMixin, admin.ModelAdmin):
    """The MCP servers users may enable per chat (docs/operations.md "MCP servers")."""

    form = McpServerForm
    audit_redacted_fields = ("headers",)  # may carry a literal secret despite the docs' advice
    list_display = ("name", "transport", "target", "enabled", "timeout_seconds", "description")
    list_filter = ("transport", "enabled")
    search_fields = ("name", "description", "url")
    ordering = ("name",)

    @admin.display(description="command / url")
    def target(self, obj: McpServer) -> str:
        if obj.transport == "stdio":
            return shlex.join(str(a) for a in obj.command or [])
        return obj.url


class ApiKeyCreateForm(forms.Form):
    owner = forms.ModelChoiceField(
        queryset=get_user_model().objects.filter(is_active=True).order_by("username")
    )
    name = forms.CharField(max_length=100)


@admin.register(UserBudget)
class UserBudgetAdmin(AuditedAdminMixin, admin.ModelAdmin):
    """Per-user overrides of USER_TOKEN_BUDGET_DAILY / _WEEKLY (empty: the default)."""

    list_display = ("user", "daily", "weekly")
    search_fields = ("user__username",)
    list_select_related = ("user",)
    raw_id_fields = ("user",)
    fields = ("user", "daily_limit", "weekly_limit", "current_usage")
    readonly_fields = ("current_usage",)

    @admin.display(description="daily limit")
    def daily(self, obj: UserBudget) -> str:
        return f"{obj.daily_limit:,}" if obj.daily_limit is not None else "default"

    @admin.display(description="weekly limit")
    def weekly(self, obj: UserBudget) -> str:
        return f"{obj.weekly_limit:,}" if obj.weekly_limit is not None else "default"

    @admin.display(description="current usage")
    def current_usage(self, obj: UserBudget) -> SafeString:
        if not obj.pk or not obj.user_id:
            return mark_safe("-")
        status = budget_status(user=obj.user)
        return format_html_join(
            mark_safe("<br>"),
            "{}: {} used, {} reserved of {} (resets {} UTC)",
            (
                (
                    name,
                    f"{s['used']:,}",
                    f"{s['reserved']:,}",
                    f"{s['limit']:,}",
                    f"{s['resets_at']:%Y-%m-%d %H:%M}",
                )
                for name, s in (("day", status["day"]), ("week", status["week"]))
            ),
        )

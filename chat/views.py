"""Browser pages. Thin: authorise, call selectors/services, render."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.middleware.csrf import get_token
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET

from agents.jail import jail_problem
from chat.config import chat_config
from chat.conversations import share_find_by_token, share_page_messages
from chat.selectors import session_get_for_user

# What the offline scripted model understands (CONTRACT §3), shown on the page for discoverability.
SCRIPTED_MODEL_DIRECTIVES: list[dict[str, str]] = [
    {"example": "/tool bash ls", "effect": "runs a Bash tool call, then quotes its result"},
    {"example": "/tools 3", "effect": "runs N parallel Bash tool calls, then summarises"},
    {"example": "/long 50", "effect": "streams N words"},
    {"example": "/slow 200", "effect": "streams words MS milliseconds apart (try Stop or refresh)"},
    {"example": "/stamp 10 50", "effect": "N timestamped deltas MS ms apart (latency benchmarks)"},
    {"example": "/think", "effect": "a reasoning block before the answer"},
    {"example": "/error 500", "effect": "that HTTP error (429, 401, 400, 500, 529)"},
    {"example": "/toolong", "effect": "a 'prompt is too long' error"},
    {"example": "/drop", "effect": "a stream cut off mid-message"},
]

# Attachment limits (CONTRACT: agreed interfaces); the server enforces them too.
ATTACHMENT_LIMITS: dict[str, Any] = {
    "maxFiles": 4,
    "maxBytes": 5 * 1024 * 1024,
    "imageTypes": ["image/png", "image/jpeg", "image/gif", "image/webp"],
    "fileTypes": ["text/*", "application/json", "application/pdf", "text/csv"],
}


def _offline_model() -> bool:
    try:
        from agents.config import model_endpoint

        return model_endpoint().offline
    except Exception:  # noqa: BLE001 - the banner is cosmetic; never break the page over it
        return not settings.ANTHROPIC_API_KEY


def _page_config(request: HttpRequest, *, chat_id: str | None) -> dict[str, Any]:
    offline = _offline_model()
    return {
        "wsPath": "/ws/chat/",
        "apiBase": "/api/v1/",
        "chatId": chat_id,
        "user": {"username": request.user.get_username()},
        "csrfToken": get_token(request),
        "model": settings.AGENT_MODEL,
        "backend": settings.AGENT_BACKEND,
        "offline": offline,
        "directives": SCRIPTED_MODEL_DIRECTIVES if offline else [],
        "limits": ATTACHMENT_LIMITS,
        "uploadMaxBytes": chat_config().upload_max_bytes,  # the files panel's uploads (AGENT_UPLOAD_MAX_MB)
    }


def _page_context(request: HttpRequest, *, chat_id: str | None, **extra: Any) -> dict[str, Any]:
    # Under DEBUG, tools may run without the jail (AGENT_JAIL=off, or bubblewrap missing): say so
    # on every page. In production such a turn is refused instead (agents.jail.require_jail).
    unjailed = jail_problem() if settings.DEBUG else None
    return {"page_config": _page_config(request, chat_id=chat_id), "tools_unjailed": unjailed, **extra}


@require_GET
@login_required
def index(request: HttpRequest) -> HttpResponse:
    return render(request, "chat/index.html", _page_context(request, chat_id=None))


@require_GET
@login_required
def chat_page(request: HttpRequest, chat_id: Any) -> HttpResponse:
    session = session_get_for_user(user=request.user, chat_id=str(chat_id))
    if session is None:
        raise Http404("No such chat.")
    if str(session.pk) != str(chat_id):  # reached through the client-chosen id: canonical URL
        return redirect("chat", chat_id=session.pk)
    return render(
        request,
        "chat/index.html",
        _page_context(request, chat_id=str(session.pk), session=session),
    )


# The public share page: nothing but the snapshot (no script, no API, no other origin).
SHARE_PAGE_CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
SHARE_TOKEN_MAX_CHARS = 500


@require_GET
def share_page(request: HttpRequest, token: str) -> HttpResponse:
    """``/s/<token>/``: a shared chat, read-only, without login (docs/browser.md "Share page").
    An invalid, expired or revoked token: 404."""
    share = share_find_by_token(token=token) if len(token) <= SHARE_TOKEN_MAX_CHARS else None
    if share is None:
        raise Http404("No such shared chat.")
    response = render(
        request,
        "chat/share.html",
        {"title": share.title or "Shared chat", "messages": share_page_messages(share=share)},
    )
    response["Content-Security-Policy"] = SHARE_PAGE_CSP
    response["Referrer-Policy"] = "no-referrer"  # the token is in the URL
    response["X-Robots-Tag"] = "noindex, nofollow"
    response["Cache-Control"] = "private, no-store"
    return response

"""Web hardening that Django does not ship: login throttling and the page CSP header.

- ``ThrottledModelBackend`` (AUTHENTICATION_BACKENDS): ModelBackend that refuses to check a
  password while the (username, IP) pair is locked and counts every failure
  (``chat.ratelimit``). Every sign-in form goes through it, the admin's included.
- ``ThrottledAuthenticationForm`` / ``ThrottledLoginView``: the same check before
  authenticating, so a locked-out user reads "too many attempts" instead of "wrong password".
- ``content_security_policy_middleware``: a strict Content-Security-Policy header (plus
  ``frame-ancestors 'none'``, which a ``<meta>`` cannot express) on the app's own HTML pages.
- ``websocket_origin_allowed`` / ``WebsocketOriginValidator``: the websocket handshake's Origin
  judged exactly as Django's CSRF judges an unsafe request's Origin (scheme, host *and* port).
"""

from __future__ import annotations

import math
from typing import Any
from urllib.parse import urlsplit

from asgiref.sync import iscoroutinefunction
from django import forms
from django.conf import settings
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.forms import AuthenticationForm
from django.contrib.auth.views import LoginView
from django.core.exceptions import DisallowedHost, PermissionDenied
from django.http import HttpRequest
from django.http.request import split_domain_port, validate_host
from django.middleware.csrf import CsrfViewMiddleware
from django.utils.decorators import sync_and_async_middleware
from django.utils.http import is_same_domain

from chat import ratelimit
from chat.config import chat_config

TOO_MANY_ATTEMPTS = (
    "Too many failed sign-in attempts for this account from your address. Try again in %(minutes)d minutes."
)

# Paths whose pages come from third-party templates with inline scripts/styles (the Django
# admin, Swagger UI): they keep X-Frame-Options/nosniff/COOP but get no CSP header from us.
CSP_EXEMPT_PREFIXES = ("/admin/", "/api/")


class ThrottledModelBackend(ModelBackend):
    def authenticate(
        self, request: Any, username: str | None = None, password: str | None = None, **kwargs: Any
    ) -> Any:
        if username is None:
            username = kwargs.get(self._username_field())
        if username is None or password is None:
            return None
        ip = ratelimit.client_ip(request)
        if ratelimit.login_is_locked(username=username, ip=ip):
            # PermissionDenied stops django.contrib.auth.authenticate() trying other backends.
            raise PermissionDenied("too many failed sign-in attempts")
        user = super().authenticate(request, username=username, password=password, **kwargs)
        if user is None:
            ratelimit.login_failure_record(username=username, ip=ip)
        else:
            ratelimit.login_failures_clear(username=username, ip=ip)
        return user

    @staticmethod
    def _username_field() -> str:
        from django.contrib.auth import get_user_model

        return get_user_model().USERNAME_FIELD


class ThrottledAuthenticationForm(AuthenticationForm):
    error_messages = {
        **AuthenticationForm.error_messages,
        "too_many_attempts": TOO_MANY_ATTEMPTS,
    }

    throttled = False  # read by registration/login.html

    def _locked(self, username: str | None) -> bool:
        return bool(username) and ratelimit.login_is_locked(
            username=username, ip=ratelimit.client_ip(self.request)
        )

    def _too_many(self) -> forms.ValidationError:
        self.throttled = True
        return forms.ValidationError(
            self.error_messages["too_many_attempts"],
            code="too_many_attempts",
            params={"minutes": max(1, math.ceil(ratelimit.login_failure_window() / 60))},
        )

    def clean(self) -> dict[str, Any]:
        username = self.cleaned_data.get("username")
        if self._locked(username):
            raise self._too_many()
        try:
            return super().clean()
        except forms.ValidationError:
            if self._locked(username):  # this failure was the one that locked the pair
                raise self._too_many() from None
            raise


class ThrottledLoginView(LoginView):
    authentication_form = ThrottledAuthenticationForm


def _apply_csp(request: Any, response: Any) -> Any:
    if request.path.startswith(CSP_EXEMPT_PREFIXES) or "Content-Security-Policy" in response:
        return response
    if not response.get("Content-Type", "").startswith("text/html"):
        return response
    response["Content-Security-Policy"] = chat_config().content_security_policy
    return response


@sync_and_async_middleware
def content_security_policy_middleware(get_response: Any) -> Any:
    """Sync and async capable, so the async SSE views stay on the event loop."""
    if iscoroutinefunction(get_response):

        async def middleware(request: Any) -> Any:
            return _apply_csp(request, await get_response(request))

    else:

        def middleware(request: Any) -> Any:
            return _apply_csp(request, get_response(request))

    return middleware


# --- websocket Origin ------------------------------------------------------------------------------


class _HandshakeRequest(HttpRequest):
    """The websocket handshake seen as a Django request, for ``get_host()`` and ``is_secure()``:
    headers as ``HTTP_*`` META, ``scope["server"]`` as SERVER_NAME/PORT, and the scheme of the
    socket (``wss`` is ``https``). ``is_secure()`` therefore honours SECURE_PROXY_SSL_HEADER (and
    ``get_host()`` USE_X_FORWARDED_HOST) exactly as for an HTTP request."""

    def __init__(self, scope: dict[str, Any]) -> None:
        super().__init__()
        meta: dict[str, str] = {}
        for raw_name, raw_value in scope.get("headers", []):
            name = "HTTP_" + raw_name.decode("latin-1").upper().replace("-", "_")
            value = raw_value.decode("latin-1")
            meta[name] = f"{meta[name]},{value}" if name in meta else value
        server = scope.get("server")
        if server:
            meta["SERVER_NAME"], meta["SERVER_PORT"] = str(server[0]), str(server[1] or "")
        self.META = meta
        self.path = self.path_info = scope.get("path", "/")
        self._ws_scheme = "https" if scope.get("scheme") in ("wss", "https") else "http"

    def _get_scheme(self) -> str:
        return self._ws_scheme


def _csrf_trusted() -> CsrfViewMiddleware:
    # Its allowed_origins_exact / allowed_origin_subdomains parse CSRF_TRUSTED_ORIGINS (wildcards
    # included) the one way Django does; built per handshake so settings overrides apply.
    return CsrfViewMiddleware(lambda request: None)


def websocket_origin_allowed(scope: dict[str, Any]) -> bool:
    """Django's CSRF Origin rule (``CsrfViewMiddleware._origin_verified``) for a handshake: the
    Origin must equal the request's own origin (scheme — ``wss``/SECURE_PROXY_SSL_HEADER mean
    https — plus the Host, which must be in ALLOWED_HOSTS, port included), or be one of
    CSRF_TRUSTED_ORIGINS (``https://*.example.com`` matches subdomains of that scheme). No Origin
    (or ``null``) is refused.

    A handshake carrying neither a Host header nor server info (only in-process ASGI test
    harnesses: browsers always send Host) is judged by ALLOWED_HOSTS and the socket's scheme."""
    request = _HandshakeRequest(scope)
    origin = request.META.get("HTTP_ORIGIN")
    if not origin:
        return False
    scheme = "https" if request.is_secure() else "http"
    if "HTTP_HOST" in request.META or "SERVER_NAME" in request.META:
        try:
            good_host = request.get_host()
        except DisallowedHost:
            pass
        else:
            if origin == f"{scheme}://{good_host}":
                return True
    else:
        parsed = urlsplit(origin)
        host, _port = split_domain_port(parsed.netloc)
        if parsed.scheme == scheme and host and validate_host(host, settings.ALLOWED_HOSTS):
            return True
    trusted = _csrf_trusted()
    if origin in trusted.allowed_origins_exact:
        return True
    try:
        parsed = urlsplit(origin)
    except ValueError:
        return False
    return any(
        is_same_domain(parsed.netloc, host)
        for host in trusted.allowed_origin_subdomains.get(parsed.scheme, ())
    )


class WebsocketOriginValidator:
    """ASGI middleware: a websocket handshake whose Origin fails ``websocket_origin_allowed`` is
    refused (403 before accept) — Channels' ``AllowedHostsOriginValidator`` checks the host only
    (any scheme, any port) and freezes ALLOWED_HOSTS at import."""

    def __init__(self, application: Any) -> None:
        self.application = application

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if scope.get("type") == "websocket" and not websocket_origin_allowed(scope):
            from channels.security.websocket import WebsocketDenier

            return await WebsocketDenier()(scope, receive, send)
        return await self.application(scope, receive, send)

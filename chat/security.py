"""Web hardening that Django does not ship: login throttling and the page CSP header.

- ``ThrottledModelBackend`` (AUTHENTICATION_BACKENDS): ModelBackend that refuses to check a
  password while the (username, IP) pair is locked and counts every failure
  (``chat.ratelimit``). Every sign-in form goes through it, the admin's included.
- ``ThrottledAuthenticationForm`` / ``ThrottledLoginView``: the same check before
  authenticating, so a locked-out user reads "too many attempts" instead of "wrong password".
- ``content_security_policy_middleware``: a strict Content-Security-Policy header (plus
  ``frame-ancestors 'none'``, which a ``<meta>`` cannot express) on the app's own HTML pages.
"""

from __future__ import annotations

import math
from asgiref.sync import iscoroutinefunction
from typing import Any

from django import forms
from django.conf import settings
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.forms import AuthenticationForm
from django.contrib.auth.views import LoginView
from django.core.exceptions import PermissionDenied
from django.utils.decorators import sync_and_async_middleware

from chat import ratelimit

TOO_MANY_ATTEMPTS = (
    "Too many failed sign-in attempts for this account from your address. "
    "Try again in %(minutes)d minutes."
)

DEFAULT_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self' ws: wss:; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
# Paths whose pages come from third-party templates with inline scripts/styles (the Django
# admin, Swagger UI): they keep X-Frame-Options/nosniff/COOP but get no CSP header from us.
CSP_EXEMPT_PREFIXES = ("/admin/", "/api/")


class ThrottledModelBackend(ModelBackend):
    def authenticate(self, request: Any, username: str | None = None, password: str | None = None, **kwargs: Any) -> Any:
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
        return bool(username) and ratelimit.login_is_locked(username=username, ip=ratelimit.client_ip(self.request))

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
    response["Content-Security-Policy"] = getattr(settings, "CONTENT_SECURITY_POLICY", DEFAULT_CSP)
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

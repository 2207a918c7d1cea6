"""Bearer API-key authentication for DRF and for the websocket handshake.

HTTP: ``BearerKeyAuthentication`` (listed first, so an unauthenticated request gets 401 with
``WWW-Authenticate: Bearer``) and DRF's SessionAuthentication (browser; CSRF enforced on writes).

Websocket: ``websocket_auth_stack(inner)`` = origin check → Bearer key, or else the cookie
session. A handshake carrying ``Authorization: Bearer <key>`` and no ``Origin`` is a non-browser
client (browsers always send Origin and cannot set Authorization) and skips the origin check;
every other handshake (cookie auth, or Bearer with an Origin) must come from an allowed origin.
A Bearer handshake is decided by the key alone (it wins over a cookie): it never loads the
cookie session, and a key verified moments ago comes from the per-process cache
(``api_key_cached``), so a burst of reconnects costs no database hop at all.
"""

from __future__ import annotations

import asyncio
from typing import Any

from channels.auth import AuthMiddlewareStack
from channels.db import database_sync_to_async
from channels.middleware import BaseMiddleware
from channels.security.websocket import WebsocketDenier
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions

from chat import ratelimit
from chat.apikeys import api_key_authenticate, api_key_cached
from chat.models import ApiKey
from chat.proxies import scope_client_ip

BEARER = "bearer"


def bearer_token(header_value: str | bytes | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header value; "" if Bearer but empty;
    None if the header is absent or uses another scheme."""
    if not header_value:
        return None
    if isinstance(header_value, bytes):
        header_value = header_value.decode("latin-1")
    scheme, _, token = header_value.strip().partition(" ")
    if scheme.lower() != BEARER:
        return None
    return token.strip()


class BearerKeyAuthentication(authentication.BaseAuthentication):
    """``Authorization: Bearer cps_…``. Sets ``request.user`` to the key's owner and
    ``request.auth`` to the ApiKey. Unknown, malformed or revoked keys → 401."""

    def authenticate(self, request: Any) -> tuple[Any, ApiKey] | None:
        token = bearer_token(request.META.get("HTTP_AUTHORIZATION"))
        if token is None:
            return None
        ip = ratelimit.client_ip(request)
        wait = ratelimit.api_key_blocked_for(ip=ip)
        if wait:
            raise exceptions.Throttled(
                wait=wait, detail="Too many failed API-key attempts from this address."
            )
        if not token:
            ratelimit.api_key_failure_record(ip=ip)
            raise exceptions.AuthenticationFailed("Empty bearer token.")
        api_key = api_key_authenticate(raw_key=token)
        if api_key is None:
            ratelimit.api_key_failure_record(ip=ip)
            raise exceptions.AuthenticationFailed("Invalid or revoked API key.")
        return api_key.owner, api_key

    def authenticate_header(self, request: Any) -> str:
        return 'Bearer realm="api"'


class BearerKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "chat.api.auth.BearerKeyAuthentication"
    name = "bearerAuth"

    def get_security_definition(self, auto_schema: Any) -> dict[str, Any]:
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key: `Authorization: Bearer cps_…`",
        }


# --- websocket ----------------------------------------------------------------------------------


def _header(scope: dict[str, Any], name: bytes) -> bytes | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value
    return None


class BearerAuthMiddleware(BaseMiddleware):
    """Authenticates a websocket handshake by its Bearer header; without one, hands the
    handshake to the cookie session stack (``cookie_inner``).

    A Bearer header with a bad or revoked key is refused at the handshake (403), cookie or not."""

    def __init__(self, inner: Any, cookie_inner: Any) -> None:
        super().__init__(inner)
        self.cookie_inner = cookie_inner

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        token = bearer_token(_header(scope, b"authorization")) if scope.get("type") == "websocket" else None
        if token is None:
            return await self.cookie_inner(scope, receive, send)
        ip = _scope_ip(scope)
        # A key this process verified moments ago answers from memory (no cache or DB hop); every
        # other handshake first asks whether its address is blocked for failed key attempts.
        api_key = api_key_cached(raw_key=token) if token else None
        if api_key is None:
            if await _off_thread(ratelimit.api_key_blocked_for)(ip=ip):
                return await WebsocketDenier.as_asgi()(scope, receive, send)
            api_key = await _handshake_key(token) if token else None
            if api_key is None:
                await _off_thread(ratelimit.api_key_failure_record)(ip=ip)
                return await WebsocketDenier.as_asgi()(scope, receive, send)
        scope = dict(scope, user=api_key.owner, api_key=api_key, auth_method="bearer")
        return await self.inner(scope, receive, send)


def _scope_ip(scope: dict[str, Any]) -> str:
    """The client's address, as ``chat.ratelimit.client_ip`` finds it for HTTP (chat.proxies)."""
    return scope_client_ip(scope)


def _off_thread(func: Any) -> Any:
    # Cache calls (Redis with REDIS_URL) off the event loop and off the serialised DB thread.
    return database_sync_to_async(func, thread_sensitive=False) if _shared_cache() else _sync_call(func)


def _shared_cache() -> bool:
    from django.conf import settings

    return "locmem" not in settings.CACHES.get("default", {}).get("BACKEND", "").lower()


def _sync_call(func: Any) -> Any:
    async def call(**kwargs: Any) -> Any:  # the in-process LocMem cache: no I/O, no thread hop
        return func(**kwargs)

    return call


# token -> (loop, verification in flight): a burst of handshakes with one key makes one DB hop.
_inflight: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Future]] = {}


async def _handshake_key(token: str) -> ApiKey | None:
    """The key for a handshake: from the per-process cache, else from one database check shared
    by every handshake that presents the same token meanwhile."""
    api_key = api_key_cached(raw_key=token)
    if api_key is not None:
        return api_key
    loop = asyncio.get_running_loop()
    entry = _inflight.get(token)
    if entry is None or entry[0] is not loop:
        # Off the serialised database thread (thread_sensitive=False): a handshake must not queue
        # behind this process's turn starts and ends.
        future = asyncio.ensure_future(
            database_sync_to_async(api_key_authenticate, thread_sensitive=False)(raw_key=token)
        )
        _inflight[token] = (loop, future)
        future.add_done_callback(lambda _f: _inflight.pop(token, None))
    else:
        future = entry[1]
    return await asyncio.shield(future)


class BearerAwareOriginValidator:
    """``chat.security.WebsocketOriginValidator`` (the Origin judged as Django's CSRF judges it),
    except for Bearer handshakes that send no Origin at all."""

    def __init__(self, application: Any) -> None:
        from chat.security import WebsocketOriginValidator

        self.application = application
        self.validated = WebsocketOriginValidator(application)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if (
            scope.get("type") == "websocket"
            and _header(scope, b"origin") is None
            and bearer_token(_header(scope, b"authorization")) is not None
        ):
            return await self.application(scope, receive, send)
        return await self.validated(scope, receive, send)


def websocket_auth_stack(inner: Any) -> Any:
    return BearerAwareOriginValidator(BearerAuthMiddleware(inner, AuthMiddlewareStack(inner)))

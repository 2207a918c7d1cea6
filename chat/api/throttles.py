"""Per-key / per-user throttles for write endpoints (rates in REST_FRAMEWORK DEFAULT_THROTTLE_RATES).

A view sets ``throttle_scope`` ("chat" or "writes"). Requests authenticated with an API key are
counted per key, session requests per user. Safe methods (GET/HEAD/OPTIONS) are not throttled.
Rates are read on every request (not frozen at import), so settings overrides apply.
"""

from __future__ import annotations

from typing import Any

from django.core.cache import caches
from rest_framework.permissions import SAFE_METHODS
from rest_framework.settings import api_settings
from rest_framework.throttling import SimpleRateThrottle

from chat.models import ApiKey
from chat.proxies import request_client_ip


class WriteRateThrottle(SimpleRateThrottle):
    cache_alias = "default"

    def __init__(self) -> None:  # rate is resolved per request in allow_request
        self.cache = caches[self.cache_alias]

    def get_rate(self) -> str | None:
        return api_settings.DEFAULT_THROTTLE_RATES.get(self.scope)

    def allow_request(self, request: Any, view: Any) -> bool:
        if request.method in SAFE_METHODS:
            return True
        self.scope = getattr(view, "throttle_scope", None)
        if not self.scope:
            return True
        self.rate = self.get_rate()
        if self.rate is None:
            return True
        self.num_requests, self.duration = self.parse_rate(self.rate)
        return super().allow_request(request, view)

    def get_cache_key(self, request: Any, view: Any) -> str | None:
        if isinstance(request.auth, ApiKey):
            ident = f"key{request.auth.pk}"
        elif request.user and request.user.is_authenticated:
            ident = f"user{request.user.pk}"
        else:
            ident = f"ip{self.get_ident(request)}"
        return f"throttle:{self.scope}:{ident}"

    def get_ident(self, request: Any) -> str:
        """The client's address (chat.proxies): X-Forwarded-For only from a trusted proxy (DRF's
        own ``get_ident`` believes it from anybody unless NUM_PROXIES is set)."""
        return request_client_ip(request)

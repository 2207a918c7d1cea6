"""The chat app's view of the settings, read in one place (copilot_project/settings.py defines
every one of them and its default; nothing here repeats a default).

``chat_config()`` reads ``django.conf.settings`` once per process; a setting changed at run time
(``override_settings``, pytest-django's ``settings`` fixture) sends ``setting_changed``, which
clears the cache, so the change takes effect at once."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver


@dataclass(frozen=True)
class ChatConfig:
    # API keys: how long a verified key is trusted in this process; last_used_at write interval.
    api_key_cache_seconds: float
    api_key_touch_interval: float
    # Failed sign-ins and failed API keys, counted per client (chat.ratelimit).
    login_failure_limit: int
    login_failure_window: int
    api_key_failure_limit: int
    api_key_failure_window: int
    api_key_failure_namespace: str
    # Concurrency caps (0: no cap) and the turn runtime's timings.
    max_turns_per_user: int
    max_turns_per_worker: int
    stream_idle_timeout: float
    shutdown_grace_seconds: float
    turn_lease_seconds: float
    # The doors.
    ws_frame_rate: float
    ws_frame_burst: float
    sse_heartbeat_seconds: float
    content_security_policy: str
    log_message_content: bool
    # Workspace files over HTTP: the largest upload; the most entries a listing or ZIP walks.
    upload_max_bytes: int
    workspace_files_max: int
    # Redis connection pools per process (REDIS_URL set).
    redis_pool_size: int
    redis_blocking_pool_size: int


@functools.cache
def chat_config() -> ChatConfig:
    return ChatConfig(
        api_key_cache_seconds=float(settings.API_KEY_CACHE_SECONDS),
        api_key_touch_interval=float(settings.API_KEY_TOUCH_INTERVAL),
        login_failure_limit=int(settings.LOGIN_FAILURE_LIMIT),
        login_failure_window=int(settings.LOGIN_FAILURE_WINDOW),
        api_key_failure_limit=int(settings.API_KEY_FAILURE_LIMIT),
        api_key_failure_window=max(1, int(settings.API_KEY_FAILURE_WINDOW)),
        api_key_failure_namespace=str(settings.API_KEY_FAILURE_NAMESPACE),
        max_turns_per_user=int(settings.AGENT_MAX_TURNS_PER_USER or 0),
        max_turns_per_worker=int(settings.AGENT_MAX_TURNS_PER_WORKER or 0),
        stream_idle_timeout=float(settings.AGENT_STREAM_IDLE_TIMEOUT or 0.0),
        shutdown_grace_seconds=float(settings.TURN_SHUTDOWN_GRACE_SECONDS),
        turn_lease_seconds=float(settings.TURN_LEASE_SECONDS),
        ws_frame_rate=float(settings.WS_FRAME_RATE),
        ws_frame_burst=float(settings.WS_FRAME_BURST),
        sse_heartbeat_seconds=float(settings.API_SSE_HEARTBEAT_SECONDS),
        content_security_policy=str(settings.CONTENT_SECURITY_POLICY),
        log_message_content=bool(settings.LOG_MESSAGE_CONTENT),
        upload_max_bytes=max(0, int(settings.AGENT_UPLOAD_MAX_MB)) * 1024 * 1024,
        workspace_files_max=max(1, int(settings.AGENT_WORKSPACE_FILES_MAX)),
        redis_pool_size=int(settings.REDIS_POOL_SIZE),
        redis_blocking_pool_size=int(settings.REDIS_BLOCKING_POOL_SIZE),
    )


@receiver(setting_changed)
def chat_config_reset(**_kwargs: Any) -> None:
    chat_config.cache_clear()

"""Lease locks: one holder per key, with a TTL the holder refreshes (DESIGN lesson 8).

A lock is taken atomically (``SET NX PX`` on Redis, a dict under a thread lock in-process),
refreshed by the owner's heartbeat, and released only by the owner's token — a crashed worker's
lock simply expires. The session lock's key is ``f"session:{session_id}"`` (see ``session_key``).

With ``settings.REDIS_URL`` the locks live in Redis (shared by every daphne process); without it
they live in this process (the single-process embedded setup).

Async functions (``lock_acquire``, ``lock_refresh``, ``lock_release``) are used by running turns;
the sync ones (``lock_holder``, ``lock_force_release``) by the admin, commands and selectors.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Any

import redis
import redis.asyncio as aioredis
from django.conf import settings
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from chat.config import chat_config

DEFAULT_TTL = 30.0  # seconds; a turn refreshes its lock every TTL/3

WORKER_ID = f"{socket.gethostname()}:{os.getpid()}"


def session_key(session_id: Any) -> str:
    return f"session:{session_id}"


@dataclass(frozen=True)
class LockInfo:
    key: str
    token: str
    worker: str
    acquired_at: float  # unix seconds
    expires_at: float  # unix seconds
    meta: dict[str, Any] = field(default_factory=dict)  # e.g. {"turn_id": ...}


# ---------------------------------------------------------------------------------------------
# In-process backend
# ---------------------------------------------------------------------------------------------

_local_lock = threading.Lock()
_local: dict[str, LockInfo] = {}


def _local_get(key: str) -> LockInfo | None:
    info = _local.get(key)
    if info is not None and info.expires_at <= time.time():
        del _local[key]
        return None
    return info


# ---------------------------------------------------------------------------------------------
# Redis backend
# ---------------------------------------------------------------------------------------------

# Compare-and-delete / compare-and-extend: only the token's owner may release or refresh.
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"
# Take the lock and write its info in one round trip.
_ACQUIRE = (
    "if redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then "
    "redis.call('set', KEYS[2], ARGV[3], 'PX', ARGV[2]); return 1 else return 0 end"
)
_REFRESH = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then "
    "redis.call('pexpire', KEYS[1], ARGV[2]); redis.call('pexpire', KEYS[2], ARGV[2]); return 1 "
    "else return 0 end"
)

_sync_client = None
_sync_client_lock = threading.Lock()
_async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = weakref.WeakKeyDictionary()


def use_redis() -> bool:
    return bool(settings.REDIS_URL)


def redis_key(name: str) -> str:
    return f"{settings.REDIS_KEY_PREFIX}:{name}"


# Connection pools (docs/performance.md, G). Short commands (locks, heartbeats, the stream mirror,
# pub/sub publishes) share one *bounded, blocking* pool per process and event loop: when every
# connection is busy a command waits for one (up to REDIS_POOL_TIMEOUT) instead of failing with
# "Too many connections". Commands that park a connection (``XREAD BLOCK`` of remote listeners,
# pub/sub subscriptions) use a second pool, so they can never starve the short ones. Transient
# connection errors are retried with a short exponential backoff.
REDIS_POOL_TIMEOUT = 10.0  # seconds a command waits for a free connection
REDIS_RETRIES = 3

_async_blocking_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = (
    weakref.WeakKeyDictionary()
)


def _retry_kwargs(retry_cls) -> dict[str, Any]:
    return {
        "retry": retry_cls(ExponentialBackoff(cap=0.5, base=0.02), REDIS_RETRIES),
        "retry_on_error": [RedisConnectionError, RedisTimeoutError],
    }


def sync_redis():
    """A process-wide synchronous Redis client (thread-safe, bounded blocking connection pool)."""
    global _sync_client
    with _sync_client_lock:
        if _sync_client is None:
            pool = redis.BlockingConnectionPool.from_url(
                settings.REDIS_URL,
                decode_responses=True,
                max_connections=chat_config().redis_pool_size,
                timeout=REDIS_POOL_TIMEOUT,
            )
            _sync_client = redis.Redis(connection_pool=pool, **_retry_kwargs(Retry))
        return _sync_client


# The blocking pool's socket timeout: longer than any wait its commands ask Redis for (XREAD
# BLOCK of a remote listener, chat.runtime.streams.REMOTE_BLOCK_MS = 5 s; the control listener's
# 30 s pub/sub wait). redis-py's default (5 s) cut a listener of a quiet turn — waiting for an
# approval, a long tool call — with a TimeoutError after its first silent block.
BLOCKING_SOCKET_TIMEOUT = 60.0


def _async_client(registry, size: int, **options: Any):
    loop = asyncio.get_running_loop()
    client = registry.get(loop)
    if client is None:
        pool = aioredis.BlockingConnectionPool.from_url(
            settings.REDIS_URL,
            decode_responses=True,
            max_connections=size,
            timeout=REDIS_POOL_TIMEOUT,
            **options,
        )
        client = aioredis.Redis(connection_pool=pool, **_retry_kwargs(AsyncRetry))
        registry[loop] = client
    return client


def async_redis():
    """The asyncio Redis client for short commands on the running event loop (clients are bound
    to their loop; one bounded blocking pool per loop)."""
    return _async_client(_async_clients, chat_config().redis_pool_size)


def async_redis_blocking():
    """The asyncio Redis client for commands that hold a connection for long (``XREAD BLOCK``,
    pub/sub subscriptions): its own pool, so they never starve ``async_redis()``."""
    return _async_client(
        _async_blocking_clients,
        chat_config().redis_blocking_pool_size,
        socket_timeout=BLOCKING_SOCKET_TIMEOUT,
    )


def _lock_keys(key: str) -> tuple[str, str]:
    return redis_key(f"lock:{key}"), redis_key(f"lockinfo:{key}")


def _info_from_redis(key: str, token: str | None, raw: str | None, pttl: int) -> LockInfo | None:
    if token is None:
        return None
    data = json.loads(raw) if raw else {}
    now = time.time()
    return LockInfo(
        key=key,
        token=token,
        worker=data.get("worker", ""),
        acquired_at=data.get("acquired_at", now),
        expires_at=now + max(pttl, 0) / 1000.0,
        meta=data.get("meta", {}),
    )


# ---------------------------------------------------------------------------------------------
# API
# ---------------------------------------------------------------------------------------------


def _local_acquire(key: str, token: str, now: float, ttl: float, meta: dict[str, Any] | None) -> str | None:
    with _local_lock:
        if _local_get(key) is not None:
            return None
        _local[key] = LockInfo(key, token, WORKER_ID, now, now + ttl, dict(meta or {}))
    return token


def _redis_info(now: float, meta: dict[str, Any] | None) -> str:
    return json.dumps({"worker": WORKER_ID, "acquired_at": now, "meta": meta or {}})


async def lock_acquire(
    key: str, *, ttl: float = DEFAULT_TTL, meta: dict[str, Any] | None = None
) -> str | None:
    """Take the lock; returns the owner token, or None when someone else holds it."""
    token, now = secrets.token_hex(16), time.time()
    if not use_redis():
        return _local_acquire(key, token, now, ttl, meta)
    lock_key, info_key = _lock_keys(key)
    client = async_redis()
    info = _redis_info(now, meta)
    if not await client.eval(_ACQUIRE, 2, lock_key, info_key, token, int(ttl * 1000), info):
        # A retried call whose first attempt went through reads as "taken": check the owner.
        if await client.get(lock_key) != token:
            return None
    return token


def lock_acquire_sync(
    key: str, *, ttl: float = DEFAULT_TTL, meta: dict[str, Any] | None = None
) -> str | None:
    """``lock_acquire`` for sync code (``chat.runtime.start`` takes the session lock inside its single
    database hop at turn start). Thread-safe; with Redis it uses the process's sync client."""
    token, now = secrets.token_hex(16), time.time()
    if not use_redis():
        return _local_acquire(key, token, now, ttl, meta)
    lock_key, info_key = _lock_keys(key)
    client = sync_redis()
    info = _redis_info(now, meta)
    if not client.eval(_ACQUIRE, 2, lock_key, info_key, token, int(ttl * 1000), info):
        # A retried call whose first attempt went through reads as "taken": check the owner.
        if client.get(lock_key) != token:
            return None
    return token


def lock_release_sync(key: str, token: str) -> bool:
    if not use_redis():
        return _local_release(key, token)
    lock_key, info_key = _lock_keys(key)
    client = sync_redis()
    released = bool(client.eval(_RELEASE, 1, lock_key, token))
    if released:
        client.delete(info_key)
    return released


async def lock_refresh(key: str, token: str, *, ttl: float = DEFAULT_TTL) -> bool:
    """Extend the lease; False when the token no longer owns the lock (expired or forced)."""
    if not use_redis():
        with _local_lock:
            info = _local_get(key)
            if info is None or info.token != token:
                return False
            _local[key] = LockInfo(
                info.key, token, info.worker, info.acquired_at, time.time() + ttl, info.meta
            )
        return True
    lock_key, info_key = _lock_keys(key)
    return bool(await async_redis().eval(_REFRESH, 2, lock_key, info_key, token, int(ttl * 1000)))


async def lock_release(key: str, token: str) -> bool:
    """Release the lock if ``token`` still owns it."""
    if not use_redis():
        return _local_release(key, token)
    lock_key, info_key = _lock_keys(key)
    client = async_redis()
    released = bool(await client.eval(_RELEASE, 1, lock_key, token))
    if released:
        await client.delete(info_key)
    return released


FORCED_TOMBSTONE_SECONDS = 300  # a force-released token may not re-take its lock for this long


def _forced_key(token: str) -> str:
    return redis_key(f"lockforced:{token}")


async def lock_reclaim(
    key: str, token: str, *, ttl: float = DEFAULT_TTL, meta: dict[str, Any] | None = None
) -> bool:
    """Take the lock back with the same token after it vanished without being released (Redis
    restarted without its data). False when someone else holds it or an operator force-released
    this token (``lock_force_release``: the holder must stop). In-process locks never vanish
    that way, so there it is just "still ours?"."""
    if not use_redis():
        with _local_lock:
            info = _local_get(key)
            return info is not None and info.token == token
    lock_key, info_key = _lock_keys(key)
    client = async_redis()
    if await client.exists(_forced_key(token)):
        return False
    ms = int(ttl * 1000)
    if not await client.set(lock_key, token, nx=True, px=ms):
        return await client.get(lock_key) == token
    await client.set(
        info_key, json.dumps({"worker": WORKER_ID, "acquired_at": time.time(), "meta": meta or {}}), px=ms
    )
    return True


def _local_release(key: str, token: str | None) -> bool:
    with _local_lock:
        info = _local_get(key)
        if info is None or (token is not None and info.token != token):
            return False
        del _local[key]
        return True


def lock_holder(key: str) -> LockInfo | None:
    """Who holds the lock now (None when free or expired)."""
    if not use_redis():
        with _local_lock:
            return _local_get(key)
    lock_key, info_key = _lock_keys(key)
    pipe = sync_redis().pipeline()
    pipe.get(lock_key)
    pipe.get(info_key)
    pipe.pttl(lock_key)
    token, raw, pttl = pipe.execute()
    return _info_from_redis(key, token, raw, pttl)


async def lock_holder_async(key: str) -> LockInfo | None:
    if not use_redis():
        return lock_holder(key)
    lock_key, info_key = _lock_keys(key)
    pipe = async_redis().pipeline()
    pipe.get(lock_key)
    pipe.get(info_key)
    pipe.pttl(lock_key)
    token, raw, pttl = await pipe.execute()
    return _info_from_redis(key, token, raw, pttl)


def lock_force_release(key: str) -> bool:
    """Operator override: drop the lock whoever holds it. The holder's next refresh fails."""
    if not use_redis():
        return _local_release(key, None)
    lock_key, info_key = _lock_keys(key)
    client = sync_redis()
    token = client.get(lock_key)
    if token:
        client.set(_forced_key(token), "1", ex=FORCED_TOMBSTONE_SECONDS)
    return bool(client.delete(lock_key, info_key))

"""API keys: services and selectors (keyword-only, ``api_key_<action>``).

A key looks like ``cps_<prefix>_<secret>``. Only the prefix (a public lookup handle), a random
salt and ``sha256(salt + secret)`` are stored; the full key is returned once, by
``api_key_create``. Verification looks the row up by prefix and compares digests in constant
time. ``last_used_at`` is written at most once per ``API_KEY_TOUCH_INTERVAL`` seconds per key,
by a conditional UPDATE, never once per request.

The websocket handshake asks ``api_key_cached`` first: a per-process cache of keys verified in
the last ``API_KEY_CACHE_SECONDS`` (default 5; 0 turns it off), so a burst of reconnects needs
no database hop (a hop queues behind turn work in the single database thread; docs/performance.md).
The secret is still checked against the stored digest on every hit. ``api_key_revoke`` and any
save of the key or of its owner drop the entry at once in this process; a change made elsewhere
(another worker, a raw UPDATE) is honoured within ``API_KEY_CACHE_SECONDS``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
import time
from typing import Any

from django.db.models import Q, QuerySet
from django.utils import timezone

from chat.config import chat_config
from chat.models import ApiKey

KEY_SCHEME = "cps"
PREFIX_BYTES = 6  # 12 hex characters
SECRET_BYTES = 32
CACHE_MAX_ENTRIES = 4096

# prefix -> (monotonic expiry, ApiKey with its owner loaded)
_verified: dict[str, tuple[float, ApiKey]] = {}


def api_key_hash(*, secret: str, salt: str) -> str:
    return hashlib.sha256(f"{salt}{secret}".encode()).hexdigest()


def api_key_parse(raw_key: str) -> tuple[str, str] | None:
    """``(prefix, secret)`` of a well-formed key, else None."""
    parts = (raw_key or "").strip().split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_SCHEME or not parts[1] or not parts[2]:
        return None
    prefix, secret = parts[1], parts[2]
    if len(prefix) != PREFIX_BYTES * 2 or len(secret) > 200:
        return None
    return prefix, secret


def api_key_create(*, owner: Any, name: str) -> tuple[ApiKey, str]:
    """A new key for ``owner``. Returns the row and the full key (shown once, never stored)."""
    secret = secrets.token_urlsafe(SECRET_BYTES)
    salt = secrets.token_hex(16)
    while True:
        prefix = secrets.token_hex(PREFIX_BYTES)
        if not ApiKey.objects.filter(prefix=prefix).exists():
            break
    api_key = ApiKey.objects.create(
        owner=owner,
        name=name[:100],
        prefix=prefix,
        salt=salt,
        hashed_key=api_key_hash(secret=secret, salt=salt),
    )
    return api_key, f"{KEY_SCHEME}_{prefix}_{secret}"


def api_key_revoke(*, api_key: ApiKey) -> ApiKey:
    api_key_cache_forget(prefix=api_key.prefix)
    if api_key.revoked_at is None:
        api_key.revoked_at = timezone.now()
        ApiKey.objects.filter(pk=api_key.pk, revoked_at__isnull=True).update(revoked_at=api_key.revoked_at)
    return api_key


def api_key_list_for_user(*, user: Any) -> QuerySet[ApiKey]:
    return ApiKey.objects.filter(owner=user).order_by("-created_at", "-pk")


def api_key_get_for_user(*, user: Any, key_id: Any) -> ApiKey | None:
    try:
        return ApiKey.objects.filter(owner=user, pk=int(key_id)).first()
    except (TypeError, ValueError, OverflowError):
        return None


def api_key_authenticate(*, raw_key: str) -> ApiKey | None:
    """The active key matching ``raw_key`` (its owner active), or None. Touches last_used_at."""
    parsed = api_key_parse(raw_key)
    if parsed is None:
        return None
    prefix, secret = parsed
    api_key = ApiKey.objects.select_related("owner").filter(prefix=prefix).first()
    if api_key is None:
        # Spend the same hashing work as a real check so timing does not reveal prefixes.
        hmac.compare_digest(api_key_hash(secret=secret, salt="0" * 32), "0" * 64)
        return None
    if not hmac.compare_digest(api_key_hash(secret=secret, salt=api_key.salt), api_key.hashed_key):
        return None
    if api_key.revoked_at is not None or not api_key.owner.is_active:
        return None
    api_key_touch(api_key=api_key)
    _cache_put(api_key)
    return api_key


def _cache_seconds() -> float:
    return chat_config().api_key_cache_seconds


def _cache_put(api_key: ApiKey) -> None:
    ttl = _cache_seconds()
    if ttl <= 0:
        return
    if len(_verified) >= CACHE_MAX_ENTRIES:
        _verified.clear()  # a burst of distinct keys: start over rather than track recency
    _verified[api_key.prefix] = (time.monotonic() + ttl, api_key)


def api_key_cached(*, raw_key: str) -> ApiKey | None:
    """The key for ``raw_key`` if it was verified in this process within the cache period, its
    secret matches and its use needs no ``last_used_at`` write; else None (then ask
    ``api_key_authenticate``). Never touches the database."""
    parsed = api_key_parse(raw_key)
    if parsed is None:
        return None
    prefix, secret = parsed
    entry = _verified.get(prefix)
    if entry is None:
        return None
    expires, api_key = entry
    if time.monotonic() >= expires:
        _verified.pop(prefix, None)
        return None
    if not hmac.compare_digest(api_key_hash(secret=secret, salt=api_key.salt), api_key.hashed_key):
        return None
    if api_key.last_used_at is None or api_key.last_used_at <= timezone.now() - _touch_interval():
        return None  # due for its last_used_at write: let the database path record the use
    return api_key


def api_key_known_active(*, api_key: ApiKey) -> bool:
    """True when this process verified the key within ``API_KEY_CACHE_SECONDS`` (no database)."""
    entry = _verified.get(api_key.prefix)
    return entry is not None and entry[1].pk == api_key.pk and time.monotonic() < entry[0]


def api_key_is_active(*, api_key: ApiKey) -> bool:
    """Is this (already authenticated) key still usable: not revoked, its owner active?

    What an open websocket asks before it starts a turn (``send``/``resume``), so a revocation
    reaches sockets that were opened with the key. From the per-process cache when this key was
    verified within ``API_KEY_CACHE_SECONDS`` (no database hop; a revocation in this process
    drops the entry at once), else one indexed query, whose positive answer is cached again.
    A revocation in another process is therefore honoured within ``API_KEY_CACHE_SECONDS``."""
    if api_key_known_active(api_key=api_key):
        return True
    fresh = (
        ApiKey.objects.select_related("owner")
        .filter(pk=api_key.pk, revoked_at__isnull=True, owner__is_active=True)
        .first()
    )
    if fresh is None:
        api_key_cache_forget(prefix=api_key.prefix)
        return False
    _cache_put(fresh)
    return True


def api_key_cache_forget(*, prefix: str | None = None, owner_id: Any = None) -> None:
    """Drop cached keys: one by prefix, every key of an owner, or (no argument) all."""
    if prefix is None and owner_id is None:
        _verified.clear()
        return
    for key_prefix, (_expires, api_key) in list(_verified.items()):
        if key_prefix == prefix or (owner_id is not None and api_key.owner_id == owner_id):
            _verified.pop(key_prefix, None)


def _touch_interval() -> dt.timedelta:
    return dt.timedelta(seconds=chat_config().api_key_touch_interval)


def api_key_touch(*, api_key: ApiKey, now: dt.datetime | None = None) -> bool:
    """Record use, at most once per interval per key (across processes). True if it wrote."""
    now = now or timezone.now()
    cutoff = now - _touch_interval()
    if api_key.last_used_at is not None and api_key.last_used_at > cutoff:
        return False
    written = (
        ApiKey.objects.filter(pk=api_key.pk)
        .filter(Q(last_used_at__isnull=True) | Q(last_used_at__lte=cutoff))
        .update(last_used_at=now)
    )
    if written:
        api_key.last_used_at = now
    return bool(written)

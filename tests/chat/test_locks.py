"""Lease locks (in-process, or Redis when REDIS_URL is set): atomic, owner-only, expiring."""

from __future__ import annotations

import asyncio
import uuid

from chat.runtime import locks


def key() -> str:
    return locks.session_key(uuid.uuid4())


async def test_acquire_is_exclusive_and_release_needs_the_token():
    k = key()
    token = await locks.lock_acquire(k, ttl=5, meta={"turn_id": "t1"})
    assert token
    assert await locks.lock_acquire(k, ttl=5) is None
    holder = locks.lock_holder(k)
    assert holder is not None and holder.token == token and holder.meta == {"turn_id": "t1"}
    assert holder.worker == locks.WORKER_ID
    assert not await locks.lock_release(k, "not-the-token")
    assert locks.lock_holder(k) is not None
    assert await locks.lock_release(k, token)
    assert locks.lock_holder(k) is None
    assert await locks.lock_acquire(k, ttl=5)
    assert locks.lock_force_release(k)


async def test_concurrent_acquire_has_one_winner():
    k = key()
    tokens = await asyncio.gather(*(locks.lock_acquire(k, ttl=5) for _ in range(20)))
    winners = [t for t in tokens if t]
    assert len(winners) == 1
    await locks.lock_release(k, winners[0])


async def test_lease_expires_unless_refreshed():
    k = key()
    token = await locks.lock_acquire(k, ttl=0.3)
    await asyncio.sleep(0.2)
    assert await locks.lock_refresh(k, token, ttl=0.3)
    await asyncio.sleep(0.2)
    assert locks.lock_holder(k) is not None  # refreshed, still held
    await asyncio.sleep(0.25)
    assert locks.lock_holder(k) is None  # expired: a crashed owner never blocks the session
    assert not await locks.lock_refresh(k, token)
    other = await locks.lock_acquire(k, ttl=5)
    assert other and not await locks.lock_release(k, token)
    assert await locks.lock_release(k, other)


async def test_force_release_makes_the_owner_lose_it():
    k = key()
    token = await locks.lock_acquire(k, ttl=5)
    assert locks.lock_force_release(k)
    assert not locks.lock_force_release(k)
    assert not await locks.lock_refresh(k, token)

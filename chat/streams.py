"""Per-turn chunk logs: sequence 0,1,2…, live fan-out, replay for late joiners.

The process that runs a turn owns its ``TurnStream``: an append-only in-memory list of chunks
plus one shared wake-up future. Every listener in that process (every tab, the SSE door, the
sender itself) *pulls* from the list at its own position: there is no per-listener queue, so a
slow listener costs no memory — the log is shared and bounded (``MAX_LOG_CHUNKS``; a listener
that falls behind the trimmed head gets ``StreamLagged``, a resumable error).

With ``settings.REDIS_URL`` the owner also mirrors the log into a Redis Stream per turn
(``XADD`` with explicit ids ``0-<sequence+1>``, batched in one pipeline per wake-up, ``EXPIRE``
for retention). A listener in *another* process reads that stream directly with ``XREAD BLOCK``
from its position — Redis Streams are durable and ordered, so there are no gaps to repair (the
channel layer, which is at-most-once with Redis pub/sub, is used only for control messages).

Logs are kept ``RETENTION_SECONDS`` after the turn ends so a client that reconnects late can
still fetch the tail it missed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from agents.events import Chunk
from chat.locks import async_redis, redis_key, use_redis

logger = logging.getLogger(__name__)

TERMINAL_TYPES = frozenset({"finish", "error", "abort"})
RETENTION_SECONDS = 600.0
RUNNING_TTL_SECONDS = 6 * 3600  # Redis keys of a running turn (refreshed on every write batch)
MAX_LOG_CHUNKS = 50_000  # per turn, in memory and in Redis (approximate MAXLEN)
REMOTE_BLOCK_MS = 5000  # a remote listener re-checks that the turn is alive this often


class StreamLagged(Exception):
    """The listener asked for chunks that were trimmed from the log: reload history, resume."""

    code = "stream_lagged"

    def __init__(self, message: str = "This stream fell too far behind; reload the chat to continue.") -> None:
        super().__init__(message)
        self.message = message


def _log_key(turn_id: str) -> str:
    return redis_key(f"turn:{turn_id}:log")


def _session_turn_key(session_id: str) -> str:
    return redis_key(f"session:{session_id}:turn")


class TurnStream:
    """The owner-side log of one turn. ``append`` is synchronous and cheap (hot path)."""

    __slots__ = (
        "turn_id",
        "session_id",
        "chunks",
        "base",
        "closed",
        "closed_at",
        "_waiter",
        "_redis_pending",
        "_redis_wake",
        "_redis_task",
    )

    def __init__(self, *, turn_id: str, session_id: str) -> None:
        self.turn_id = turn_id
        self.session_id = session_id
        self.chunks: list[Chunk] = []
        self.base = 0  # sequence of chunks[0] once the head was trimmed
        self.closed = False
        self.closed_at = 0.0
        self._waiter: asyncio.Future | None = None
        self._redis_pending: list[tuple[int, Chunk]] = []
        self._redis_wake: asyncio.Event | None = None
        self._redis_task: asyncio.Task | None = None
        if use_redis():
            self._redis_wake = asyncio.Event()
            self._redis_task = asyncio.get_running_loop().create_task(self._redis_pump())

    # -- producer ---------------------------------------------------------------------------
    @property
    def next_sequence(self) -> int:
        return self.base + len(self.chunks)

    def append(self, chunk: Chunk) -> int:
        if self.closed:
            raise RuntimeError("append to a closed stream")
        seq = self.base + len(self.chunks)
        self.chunks.append(chunk)
        if len(self.chunks) > MAX_LOG_CHUNKS:
            drop = len(self.chunks) - MAX_LOG_CHUNKS // 2
            del self.chunks[:drop]
            self.base += drop
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)
        if self._redis_wake is not None:
            self._redis_pending.append((seq, chunk))
            self._redis_wake.set()
        return seq

    async def aclose(self) -> None:
        """Mark the log finished (after the terminal chunk) and flush the Redis mirror."""
        if self.closed:
            return
        self.closed = True
        self.closed_at = time.monotonic()
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self._redis_task is not None:
            self._redis_wake.set()
            try:
                await asyncio.shield(self._redis_task)
            except Exception:  # noqa: BLE001 - logged in the pump
                pass

    async def _redis_pump(self) -> None:
        client = async_redis()
        key = _log_key(self.turn_id)
        session_key = _session_turn_key(self.session_id)
        first = True
        failing = False
        while True:
            await self._redis_wake.wait()
            self._redis_wake.clear()
            batch, self._redis_pending = self._redis_pending, []
            final = self.closed
            if batch or first or final:
                pipe = client.pipeline(transaction=False)
                for seq, chunk in batch:
                    pipe.xadd(key, {"c": json.dumps(chunk, separators=(",", ":"))}, id=f"0-{seq + 1}",
                              maxlen=MAX_LOG_CHUNKS, approximate=True)
                ttl = int(RETENTION_SECONDS) if final else RUNNING_TTL_SECONDS
                if first:
                    pipe.set(session_key, self.turn_id, ex=ttl)
                    first = False
                else:
                    pipe.expire(session_key, ttl)
                pipe.expire(key, ttl)
                try:
                    await pipe.execute()
                except Exception as exc:  # noqa: BLE001 - remote listeners lose live data; local ones do not
                    # Logged once per outage (Redis down: every batch fails until it is back).
                    if not failing:
                        logger.warning("redis mirror of turn %s failed: %s: %s", self.turn_id, type(exc).__name__, exc)
                    failing = True
                else:
                    if failing:
                        logger.warning("redis mirror of turn %s works again (a remote listener may have missed chunks)", self.turn_id)
                    failing = False
            if final:
                return

    # -- local listeners --------------------------------------------------------------------
    def _wait(self) -> asyncio.Future:
        if self._waiter is None:
            self._waiter = asyncio.get_running_loop().create_future()
        return self._waiter

    async def read(self, after_sequence: int = -1) -> AsyncIterator[tuple[int, Chunk]]:
        pos = after_sequence + 1
        while True:
            if pos < self.base:
                raise StreamLagged()
            while pos < self.base + len(self.chunks):
                if pos < self.base:
                    raise StreamLagged()
                chunk = self.chunks[pos - self.base]
                yield pos, chunk
                pos += 1
                if chunk["type"] in TERMINAL_TYPES:
                    return
            if self.closed:
                return
            # Shielded: the future is shared by every listener, and cancelling one listener
            # must not cancel it for the others.
            await asyncio.shield(self._wait())


# Streams owned or retained by this process: turn id -> stream; session id -> latest turn id.
_streams: dict[str, TurnStream] = {}
_session_latest: dict[str, str] = {}


def _purge() -> None:
    now = time.monotonic()
    for turn_id, stream in list(_streams.items()):
        if stream.closed and now - stream.closed_at > RETENTION_SECONDS:
            del _streams[turn_id]
            if _session_latest.get(stream.session_id) == turn_id:
                del _session_latest[stream.session_id]


def stream_open(*, turn_id: str, session_id: str) -> TurnStream:
    _purge()
    stream = TurnStream(turn_id=turn_id, session_id=session_id)
    _streams[turn_id] = stream
    _session_latest[session_id] = turn_id
    return stream


def stream_get_local(turn_id: str) -> TurnStream | None:
    return _streams.get(turn_id)


async def stream_latest_turn(*, session_id: str) -> str | None:
    """The newest turn of a session whose log is still retained.

    A turn running in this process is the newest. Otherwise, with Redis, the shared pointer is
    authoritative: this process's own latest turn of the session may be older than one another
    process ran since (found by the chaos run: a resume from a sequence replayed the tail of a
    stale turn)."""
    turn_id = _session_latest.get(session_id)
    if turn_id is not None:
        stream = _streams.get(turn_id)
        if not use_redis() or (stream is not None and not stream.closed):
            return turn_id
    if use_redis():
        return await async_redis().get(_session_turn_key(session_id)) or turn_id
    return turn_id


async def stream_is_finished(*, turn_id: str) -> bool | None:
    """True when the retained log ends with a terminal chunk; None when nothing is retained."""
    stream = _streams.get(turn_id)
    if stream is not None:
        return stream.closed
    if not use_redis():
        return None
    entries = await async_redis().xrevrange(_log_key(turn_id), count=1)
    if not entries:
        return None
    return json.loads(entries[0][1]["c"])["type"] in TERMINAL_TYPES


async def stream_last_sequence(*, turn_id: str) -> int:
    stream = _streams.get(turn_id)
    if stream is not None:
        return stream.next_sequence - 1
    if not use_redis():
        return -1
    entries = await async_redis().xrevrange(_log_key(turn_id), count=1)
    return int(entries[0][0].split("-")[1]) - 1 if entries else -1


async def stream_read(
    *, turn_id: str, after_sequence: int = -1, is_alive: Callable[[], Awaitable[bool]] | None = None
) -> AsyncIterator[tuple[int, Chunk]]:
    """Chunks after ``after_sequence`` until the terminal chunk: replay, then live.

    ``is_alive`` (remote listeners only) is asked whenever Redis stays silent for a while; when
    it says the turn's owner is gone, the listener gets a final ``error`` chunk instead of
    waiting forever.
    """
    stream = _streams.get(turn_id)
    if stream is not None:
        async for item in stream.read(after_sequence):
            yield item
        return
    if not use_redis():
        return
    async for item in _read_redis(turn_id, after_sequence, is_alive):
        yield item


async def _read_redis(
    turn_id: str, after_sequence: int, is_alive: Callable[[], Awaitable[bool]] | None
) -> AsyncIterator[tuple[int, Chunk]]:
    client = async_redis()
    key = _log_key(turn_id)
    expected = after_sequence + 1
    last_id = f"0-{after_sequence + 1}"
    while True:
        resp = await client.xread({key: last_id}, count=1000, block=REMOTE_BLOCK_MS)
        if not resp:
            if is_alive is not None and not await is_alive():
                # The owner may have finished between our read and the check: read once more.
                resp = await client.xread({key: last_id}, count=1000)
                if not resp:
                    yield expected, {"type": "error", "errorText": "The turn was interrupted on the server."}
                    return
            else:
                continue
        for entry_id, fields in resp[0][1]:
            seq = int(entry_id.split("-")[1]) - 1
            if seq != expected:
                raise StreamLagged()
            chunk = json.loads(fields["c"])
            yield seq, chunk
            expected = seq + 1
            last_id = entry_id
            if chunk["type"] in TERMINAL_TYPES:
                return

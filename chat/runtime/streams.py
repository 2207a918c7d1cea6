"""Per-turn chunk logs: sequence 0,1,2…, live fan-out, replay for late joiners.

The process that runs a turn owns its ``TurnStream``: an append-only in-memory list of chunks
plus one shared wake-up future. Every listener in that process (every tab, the SSE door, the
sender itself) *pulls* from the list at its own position: there is no per-listener queue, so a
slow listener costs no memory — the log is shared and bounded (``MAX_LOG_CHUNKS``; a listener
that falls behind the trimmed head gets ``StreamLagged``, a resumable error).

Each chunk is JSON-encoded once, when appended (``TurnStream.encoded``); every listener (the
websocket consumer, the SSE door, the Redis mirror) gets that text — ``(sequence, chunk JSON,
is_terminal)`` from ``stream_read`` — and forwards it as is: nothing re-encodes it per listener
or per replay.

Before a chunk reaches the log, the running turn's ``Coalescer`` merges the text deltas that
arrive within one event-loop pass (docs/performance.md, "Chat side").

With ``settings.REDIS_URL`` the owner also mirrors the log into a Redis Stream per turn
(``XADD`` with explicit ids ``0-<sequence+1>``, ``EXPIRE`` for retention). One mirror task per
process and event loop writes the pending chunks of *every* turn in one pipeline, with one
pipeline in flight at a time (so batches grow with load instead of the number of round trips),
and retries a failed batch a few times before giving up on it (docs/performance.md, G). A
listener in *another* process reads that stream directly with ``XREAD BLOCK``
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

from agents import events
from agents.events import DELTA_TYPES, Chunk
from chat.runtime.locks import async_redis, async_redis_blocking, redis_key, use_redis

logger = logging.getLogger(__name__)

TERMINAL_TYPES = frozenset({"finish", "error", "abort"})
RETENTION_SECONDS = 600.0
RUNNING_TTL_SECONDS = 6 * 3600  # Redis keys of a running turn (refreshed every TTL_REFRESH_SECONDS)
TTL_REFRESH_SECONDS = 60.0
MAX_LOG_CHUNKS = 50_000  # per turn, in memory and in Redis (approximate MAXLEN)
REMOTE_BLOCK_MS = 5000  # a remote listener re-checks that the turn is alive this often
MIRROR_ATTEMPTS = 4  # a failed mirror batch is retried this often (backoff 50, 100, 200 ms)
# seconds; 0: merge what arrives within one event-loop pass (``call_soon``, no timer per window).
# Measured against the former 3 ms timer window: less daphne CPU per paced delta and lower p50 at
# 100 streams (docs/performance.md, "Chat side").
COALESCE_WINDOW = 0.0

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


class StreamLagged(Exception):
    """The listener asked for chunks that were trimmed from the log: reload history, resume."""

    code = "stream_lagged"

    def __init__(
        self, message: str = "This stream fell too far behind; reload the chat to continue."
    ) -> None:
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
        "encoded",
        "base",
        "closed",
        "closed_at",
        "_waiter",
        "_redis_pending",
        "_mirror",
        "_mirror_first",
        "_mirror_failing",
        "_mirror_done",
        "_flush_waiters",
        "_mirror_ttl_at",
        "waiting",
    )

    def __init__(self, *, turn_id: str, session_id: str) -> None:
        self.turn_id = turn_id
        self.session_id = session_id
        self.chunks: list[Chunk] = []
        self.encoded: list[str] = []  # the JSON text of each chunk, encoded once
        self.base = 0  # sequence of chunks[0] once the head was trimmed
        self.closed = False
        self.closed_at = 0.0
        self._waiter: asyncio.Future | None = None
        self._redis_pending: list[tuple[int, str, str]] = []  # (sequence, json, type)
        self._mirror: _Mirror | None = None
        self._mirror_first = True
        self._mirror_failing = False
        self._mirror_done: asyncio.Future | None = None
        self._flush_waiters: list[asyncio.Future] = []
        self._mirror_ttl_at = 0.0  # monotonic time of the last TTL refresh of its Redis keys
        # Sequences of tool-approval-request chunks still waiting for the user's answer: a local
        # listener stops after one (chat.runtime.approvals).
        self.waiting: set[int] = set()
        if use_redis():
            self._mirror = _Mirror.for_loop()
            self._mirror.mark(self)  # the session -> turn pointer goes out at once

    # -- producer ---------------------------------------------------------------------------
    @property
    def next_sequence(self) -> int:
        return self.base + len(self.chunks)

    def append(self, chunk: Chunk) -> int:
        if self.closed:
            raise RuntimeError("append to a closed stream")
        seq = self.base + len(self.chunks)
        raw = _dumps(chunk)
        self.chunks.append(chunk)
        self.encoded.append(raw)
        if len(self.chunks) > MAX_LOG_CHUNKS:
            drop = len(self.chunks) - MAX_LOG_CHUNKS // 2
            del self.chunks[:drop]
            del self.encoded[:drop]
            self.base += drop
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)
        if self._mirror is not None:
            self._redis_pending.append((seq, raw, chunk["type"]))
            self._mirror.mark(self)
        return seq

    async def mirror_flush(self, timeout: float = 5.0) -> None:
        """Wait until everything appended so far is in the Redis mirror (no-op without Redis).
        ``chat.runtime.runner`` calls it before releasing a finished turn's lock, so a resume through
        another process that finds the lock gone also finds the log complete up to the end."""
        if self._mirror is None or self.closed:
            return
        fut = asyncio.get_running_loop().create_future()
        self._flush_waiters.append(fut)
        self._mirror.mark(self)
        try:
            await asyncio.wait_for(asyncio.shield(fut), timeout)
        except (TimeoutError, Exception):  # noqa: BLE001 - best effort: the terminal flush follows
            pass

    async def aclose(self) -> None:
        """Mark the log finished (after the terminal chunk) and flush the Redis mirror."""
        if self.closed:
            return
        self.closed = True
        self.closed_at = time.monotonic()
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self._mirror is not None:
            self._mirror_done = asyncio.get_running_loop().create_future()
            self._mirror.mark(self)
            try:
                await asyncio.shield(self._mirror_done)
            except Exception:  # noqa: BLE001 - logged by the mirror
                pass

    # -- local listeners --------------------------------------------------------------------
    def _wait(self) -> asyncio.Future:
        if self._waiter is None:
            self._waiter = asyncio.get_running_loop().create_future()
        return self._waiter

    async def read(self, after_sequence: int = -1) -> AsyncIterator[tuple[int, str, bool]]:
        """``(sequence, chunk JSON, is_terminal)`` from ``after_sequence + 1`` until the terminal
        chunk or the stream closes, or after an approval request still ``waiting``: the text
        encoded once by ``append``, no encoding per listener. Everything already in the log is
        yielded without suspending (a replay is one burst; the caller decides when to yield to
        the loop). Raises StreamLagged when the position was trimmed away."""
        pos = after_sequence + 1
        while True:
            if pos < self.base:
                raise StreamLagged()
            while pos < self.base + len(self.chunks):
                if pos < self.base:
                    raise StreamLagged()
                i = pos - self.base
                terminal = self.chunks[i]["type"] in TERMINAL_TYPES  # before yielding: trims move i
                yield pos, self.encoded[i], terminal
                if terminal or (self.waiting and pos in self.waiting):
                    return
                pos += 1
            if self.closed:
                return
            # Shielded: the future is shared by every listener, and cancelling one listener
            # must not cancel it for the others.
            await asyncio.shield(self._wait())


class _Mirror:
    """Per event loop: writes the pending chunks of every turn of this process to Redis, one
    pipeline per round, one round in flight at a time."""

    _by_loop: dict[asyncio.AbstractEventLoop, _Mirror] = {}

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.dirty: dict[TurnStream, None] = {}
        self.open = 0  # streams not yet fully written; the task ends when none is left
        self.wake = asyncio.Event()
        self.task = loop.create_task(self._run())

    @classmethod
    def for_loop(cls) -> _Mirror:
        loop = asyncio.get_running_loop()
        mirror = cls._by_loop.get(loop)
        if mirror is None or mirror.task.done():
            for other in [lp for lp in cls._by_loop if lp.is_closed()]:
                del cls._by_loop[other]
            mirror = cls._by_loop[loop] = cls(loop)
        mirror.open += 1
        return mirror

    def mark(self, stream: TurnStream) -> None:
        self.dirty[stream] = None
        self.wake.set()

    async def _run(self) -> None:
        while True:
            if self.open <= 0 and not self.dirty:
                return  # idle: the next stream starts a new task (for_loop)
            await self.wake.wait()
            self.wake.clear()
            streams, self.dirty = list(self.dirty), {}
            try:
                await self._write(streams)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("redis mirror round failed")
                for stream in streams:
                    for waiter in stream._flush_waiters:
                        if not waiter.done():
                            waiter.set_result(None)
                    stream._flush_waiters = []
                    fut = stream._mirror_done
                    if stream.closed and fut is not None and not fut.done():
                        fut.set_result(None)
                        self.open -= 1

    async def _write(self, streams: list[TurnStream]) -> None:
        client = async_redis()
        work = []
        cmds: list[tuple[str, tuple, dict]] = []
        for stream in streams:
            batch, stream._redis_pending = stream._redis_pending, []
            flushed, stream._flush_waiters = stream._flush_waiters, []
            final = stream.closed and stream._mirror_done is not None
            key = _log_key(stream.turn_id)
            for seq, raw, kind in batch:
                cmds.append(
                    (
                        "xadd",
                        (key, {"c": raw, "t": kind}),
                        {"id": f"0-{seq + 1}", "maxlen": MAX_LOG_CHUNKS, "approximate": True},
                    )
                )
            ttl = int(RETENTION_SECONDS) if final else RUNNING_TTL_SECONDS
            session_key = _session_turn_key(stream.session_id)
            now = time.monotonic()
            first, stream._mirror_first = stream._mirror_first, False
            if first:
                cmds.append(("set", (session_key, stream.turn_id), {"ex": ttl}))
            # TTLs are refreshed once a minute (and at the end), not on every round.
            if (final or now - stream._mirror_ttl_at >= TTL_REFRESH_SECONDS) and (batch or final):
                if not first:
                    cmds.append(("expire", (session_key, ttl), {}))
                cmds.append(("expire", (key, ttl), {}))
                stream._mirror_ttl_at = now
            work.append((stream, final, flushed))
        if not work:
            return
        error: Exception | None = None
        for attempt in range(MIRROR_ATTEMPTS if cmds else 0):
            if attempt:
                await asyncio.sleep(0.05 * 2 ** (attempt - 1))
            pipe = client.pipeline(transaction=False)  # execute() resets a pipeline: rebuild it
            for name, args, kwargs in cmds:
                getattr(pipe, name)(*args, **kwargs)
            try:
                results = await pipe.execute(raise_on_error=False)
            except Exception as exc:  # noqa: BLE001 - retried (the pipeline keeps its commands)
                error = exc
                continue
            # An XADD retried after its first attempt went through fails with "equal or smaller":
            # the entry is there, which is all that matters.
            bad = [r for r in results if isinstance(r, Exception) and "equal or smaller" not in str(r)]
            error = bad[0] if bad else None
            break
        for stream, final, flushed in work:
            for fut in flushed:
                if not fut.done():
                    fut.set_result(None)
            if error is not None:
                if not stream._mirror_failing:  # once per turn and outage
                    logger.warning(
                        "redis mirror of turn %s failed: %s: %s", stream.turn_id, type(error).__name__, error
                    )
                stream._mirror_failing = True
            elif stream._mirror_failing:
                logger.warning(
                    "redis mirror of turn %s works again (a remote listener may have missed chunks)",
                    stream.turn_id,
                )
                stream._mirror_failing = False
            if final and not stream._mirror_done.done():
                stream._mirror_done.set_result(None)
                self.open -= 1


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
) -> AsyncIterator[tuple[int, str, bool]]:
    """``(sequence, chunk JSON, is_terminal)`` after ``after_sequence`` until the terminal chunk:
    replay, then live. The JSON is the chunk's text as encoded once by its producer (doors
    forward it verbatim).

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


_INTERRUPTED_RAW = _dumps({"type": "error", "errorText": "The turn was interrupted on the server."})


async def _read_redis(
    turn_id: str, after_sequence: int, is_alive: Callable[[], Awaitable[bool]] | None
) -> AsyncIterator[tuple[int, str, bool]]:
    client = async_redis_blocking()  # XREAD BLOCK parks a connection: not from the short pool
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
                    yield expected, _INTERRUPTED_RAW, True
                    return
            else:
                continue
        for entry_id, fields in resp[0][1]:
            seq = int(entry_id.split("-")[1]) - 1
            if seq != expected:
                raise StreamLagged()
            raw = fields["c"]
            kind = fields.get("t")
            terminal = (kind if kind is not None else json.loads(raw)["type"]) in TERMINAL_TYPES
            yield seq, raw, terminal
            expected = seq + 1
            last_id = entry_id
            if terminal:
                return


class Coalescer:
    """Leading-edge coalescing of a running turn's chunks before they reach its log: a delta
    after a quiet period is emitted at once and opens a window; deltas arriving inside the window
    are merged (``agents.events.coalesce``) and emitted when it closes. Any other chunk flushes
    first, so order is kept.

    With ``window == 0`` (the default) the window is the rest of the current event-loop pass
    (``call_soon``, no timer): the runtime hands over everything its reader has buffered in one
    pass, so a burst is merged — however large the backlog under load — and a paced delta goes
    out at once with no added latency."""

    __slots__ = ("emit", "pending", "handle", "window")

    def __init__(self, emit: Callable[[Chunk], None], window: float = COALESCE_WINDOW) -> None:
        self.emit = emit
        self.pending: list[Chunk] = []
        self.handle: asyncio.Handle | None = None
        self.window = window

    def push(self, chunk: Chunk) -> None:
        if chunk["type"] in DELTA_TYPES:
            if self.handle is None:
                self.emit(chunk)
                loop = asyncio.get_running_loop()
                self.handle = (
                    loop.call_soon(self._tick)
                    if self.window <= 0
                    else loop.call_later(self.window, self._tick)
                )
            else:
                self.pending.append(chunk)
            return
        self.flush()
        self.emit(chunk)

    def _tick(self) -> None:
        self.handle = None
        if self.pending:
            self.flush()
            if self.window > 0:
                self.handle = asyncio.get_running_loop().call_later(self.window, self._tick)

    def flush(self) -> None:
        if self.pending:
            pending, self.pending = self.pending, []
            for chunk in events.coalesce(pending):
                self.emit(chunk)

    def close(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None
        self.flush()

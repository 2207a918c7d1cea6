"""Server-sent events in the AI SDK UI-message-stream format (CONTRACT §4).

Each chunk is one event ``id: <sequence>`` + ``data: <chunk JSON>`` — the JSON text the runtime
encoded once when the chunk was appended, written as is (never decoded here); the stream closes with
``data: [DONE]``. A comment (``: ping``) goes out after ``heartbeat`` seconds of silence so idle
proxies keep the connection open. The generator only *reads* the turn: when the client goes
away Django cancels it and the turn (a task of its own in chat.runtime) runs on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import AsyncIterator

from django.http import StreamingHttpResponse

from agents import events
from chat.config import chat_config

logger = logging.getLogger(__name__)

PING = b": ping\n\n"
DONE = b"data: [DONE]\n\n"
UI_STREAM_HEADER = "x-vercel-ai-ui-message-stream"


def sse_event(sequence: int, raw: str) -> bytes:
    """One event from a chunk's JSON text (compact: it holds no line break)."""
    return f"id: {sequence}\ndata: {raw}\n\n".encode()


def error_event(message: str) -> bytes:
    """An ``error`` chunk outside the turn's sequence (no ``id:``, so Last-Event-ID is kept)."""
    return f"data: {json.dumps(events.error(message), separators=(',', ':'))}\n\n".encode()


def heartbeat_seconds() -> float:
    return chat_config().sse_heartbeat_seconds


class _Reader:
    """Reads a subscription in one task for the whole response into a buffer. Per chunk that is
    one append and, when the response waits, one wake-up — no task and no timed wait per chunk.
    Silence is watched by one timer re-armed at most once per ``interval`` (it sets
    ``ping_due``). The subscription's ``__anext__`` is never cancelled by a timeout (DESIGN
    lesson 1): only ``close`` (the response itself is closed) cancels the reading task."""

    __slots__ = ("buffer", "ended", "ping_due", "last", "interval", "_loop", "_waiter", "_timer", "_task")

    def __init__(self, subscription: AsyncIterator[tuple[int, str, bool]], interval: float) -> None:
        self.buffer: deque[tuple[int, str, bool] | BaseException] = deque()
        self.ended = False
        self.ping_due = False
        self.interval = interval
        self._loop = asyncio.get_running_loop()
        self.last = self._loop.time()
        self._waiter: asyncio.Future | None = None
        self._timer = self._loop.call_later(interval, self._tick)
        self._task = self._loop.create_task(self._pump(subscription))

    async def _pump(self, subscription: AsyncIterator[tuple[int, str, bool]]) -> None:
        iterator = subscription.__aiter__()
        try:
            async for item in iterator:
                self.buffer.append(item)
                self._wake()
        except Exception as exc:  # noqa: BLE001 - e.g. StreamLagged: the response tells the client
            self.buffer.append(exc)
        finally:
            self.ended = True
            self._wake()
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _tick(self) -> None:
        now = self._loop.time()
        if now - self.last >= self.interval - 0.001:
            self.ping_due = True
            self.last = now
            self._wake()
        self._timer = self._loop.call_later(self.last + self.interval - now, self._tick)

    async def wait(self) -> None:
        """Until something is buffered, the subscription ended, or a ping is due."""
        if self.buffer or self.ended or self.ping_due:
            return
        self._waiter = self._loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def sent(self) -> None:
        """Something went out now: the next ping is due ``interval`` from here."""
        self.last = self._loop.time()

    async def close(self) -> None:
        self._timer.cancel()
        if not self._task.done():
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task


def _stream_error(exc: BaseException) -> bytes:
    logger.warning("SSE stream failed: %r", exc)
    return error_event(getattr(exc, "message", "") or "The stream failed on the server; resume to continue.")


async def sse_stream(
    subscription: AsyncIterator[tuple[int, str, bool]], *, heartbeat: float | None = None
) -> AsyncIterator[bytes]:
    """Write ``(sequence, chunk JSON, is_terminal)`` items (``chat.runtime.turn_listen`` /
    ``turn_subscribe``) as SSE events, pinging while the turn is silent. What arrived together
    goes out as one body write (one write per event loop pass, not one per chunk).

    One reading task per response (``_Reader``); it is cancelled only when this generator itself
    is closed (client gone)."""
    reader = _Reader(subscription, heartbeat if heartbeat is not None else heartbeat_seconds())
    buffer = reader.buffer
    try:
        while True:
            await reader.wait()
            if reader.ping_due:
                reader.ping_due = False
                if not buffer:
                    yield PING
                    continue
            if buffer:
                reader.sent()
                parts: list[bytes] = []
                failed = False
                while buffer:
                    item = buffer.popleft()
                    if isinstance(item, BaseException):
                        parts.append(_stream_error(item))
                        failed = True
                        break
                    parts.append(sse_event(item[0], item[1]))
                yield parts[0] if len(parts) == 1 else b"".join(parts)
                if failed:
                    break
            elif reader.ended:
                break
        yield DONE
    finally:
        await reader.close()


def sse_response(events: AsyncIterator[bytes]) -> StreamingHttpResponse:
    response = StreamingHttpResponse(events, content_type="text/event-stream; charset=utf-8")
    response[UI_STREAM_HEADER] = "v1"
    response["Cache-Control"] = "no-cache, no-transform"
    response["X-Accel-Buffering"] = "no"
    return response

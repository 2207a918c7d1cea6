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


async def sse_stream(
    subscription: AsyncIterator[tuple[int, str, bool]], *, heartbeat: float | None = None
) -> AsyncIterator[bytes]:
    """Write ``(sequence, chunk JSON, is_terminal)`` items (``chat.runtime.turn_listen`` /
    ``turn_subscribe``) as SSE events, pinging while the turn is silent.

    ``__anext__`` runs in its own task that a timeout never cancels (DESIGN lesson 1); the task
    is cancelled only when this generator itself is closed (client gone)."""
    interval = heartbeat if heartbeat is not None else heartbeat_seconds()
    iterator = subscription.__aiter__()
    pending: asyncio.Future | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(iterator.__anext__())
            done, _ = await asyncio.wait({pending}, timeout=interval)
            if not done:
                yield PING
                continue
            task, pending = pending, None
            try:
                sequence, raw, _terminal = task.result()
            except StopAsyncIteration:
                break
            except Exception as exc:  # noqa: BLE001 - e.g. StreamLagged: tell the client, end cleanly
                logger.warning("SSE stream failed: %r", exc)
                message = (
                    getattr(exc, "message", "") or "The stream failed on the server; resume to continue."
                )
                yield error_event(message)
                break
            yield sse_event(sequence, raw)
        yield DONE
    finally:
        if pending is not None and not pending.done():
            pending.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.wait({pending})
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(Exception):
                await aclose()


def sse_response(events: AsyncIterator[bytes]) -> StreamingHttpResponse:
    response = StreamingHttpResponse(events, content_type="text/event-stream; charset=utf-8")
    response[UI_STREAM_HEADER] = "v1"
    response["Cache-Control"] = "no-cache, no-transform"
    response["X-Accel-Buffering"] = "no"
    return response

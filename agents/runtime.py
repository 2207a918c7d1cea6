"""Runs one agent turn on the chosen backend and yields a well-formed chunk stream.

``run_turn(inp, result)`` (the agreed interface) never raises except ``CancelledError``:

    start → backend content (through ChunkTracker, heartbeats while silent, data-status when
    retrying) → data-usage → exactly one of finish / error

- Backends (``agents.backends.api.ApiBackend``, ``agents.backends.sdk.SdkBackend``) expose
  ``async def stream(inp, result) -> AsyncIterator[Chunk]``: content chunks only, ``AgentError``
  (or any exception, classified here) on failure, ``inp.stop`` watched by the backend itself.
- Retries (agents.retry) happen only while no content chunk has been yielded (lesson 5).
- "Prompt is too long" before any content climbs the context-size recovery ladder
  (agents.recovery: compacted history, then the newest DB messages only; a ``data-status`` per
  rung; one ``error`` suggesting a new chat when nothing fits).
- Heartbeats never cancel the backend iterator's ``__anext__`` (lesson 1): one long-lived pump
  task reads the backend into a buffer, a single re-armed timer marks silences (``_silence_aware``).
- Stop: ``inp.stop`` set → the backend ends early; if it does not within a grace period the
  runtime closes it. Open parts are closed, ``result.stopped`` is set and the stream ends with
  ``finish`` carrying ``{"stopped": true}``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import importlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from agents import events, recovery
from agents.adapter import REFUSAL_MESSAGE, ChunkTracker
from agents.config import agent_config
from agents.credentials import StreamScrubber
from agents.errors import AgentError, ErrorKind, classify_exception, scrub
from agents.events import Chunk
from agents.jail import require_jail
from agents.model_client import model_client
from agents.retry import retry_delay
from agents.turn import TurnInput, TurnResult, Usage

log = logging.getLogger(__name__)

STOP_GRACE_SECONDS = 3.0

BACKENDS = {"api": ("agents.backends.api", "ApiBackend"), "sdk": ("agents.backends.sdk", "SdkBackend")}

# USD per million tokens: (input, output, cache read, cache write). First matching family wins;
# a model's own prices in AGENT_MODELS come first, then AGENT_PRICES ({"family": [in, out,
# cache_read, cache_write]}).
DEFAULT_PRICES: list[tuple[str, tuple[float, float, float, float]]] = [
    ("opus-4-5", (5.0, 25.0, 0.5, 6.25)),
    ("opus-4.5", (5.0, 25.0, 0.5, 6.25)),
    ("opus", (15.0, 75.0, 1.5, 18.75)),
    ("sonnet", (3.0, 15.0, 0.3, 3.75)),
    ("haiku-3-5", (0.8, 4.0, 0.08, 1.0)),
    ("3-5-haiku", (0.8, 4.0, 0.08, 1.0)),
    ("3-haiku", (0.25, 1.25, 0.03, 0.3)),
    ("haiku", (1.0, 5.0, 0.1, 1.25)),
]


def model_prices(model: str) -> tuple[float, float, float, float] | None:
    """USD per million tokens of ``model``: its own prices in AGENT_MODELS, else the first
    AGENT_PRICES family it belongs to, else the built-in families; None when unknown."""
    config = agent_config()
    choice = config.model_find(model)
    if choice is not None and choice.prices is not None:
        return choice.prices
    name = (model or "").lower()
    overrides = config.prices
    for family in sorted(overrides, key=len, reverse=True):
        if family.lower() in name:
            values = [float(v) for v in overrides[family]]
            values += [values[0] * 0.1, values[0] * 1.25][len(values) - 2 :] if len(values) < 4 else []
            return tuple(values[:4])  # type: ignore[return-value]
    for family, prices in DEFAULT_PRICES:
        if family in name:
            return prices
    return None


def cost_usd(model: str, usage: Usage) -> float:
    """The price of ``usage`` on ``model`` (0.0 for an unknown model family)."""
    prices = model_prices(model)
    if prices is None:
        return 0.0
    p_in, p_out, p_read, p_write = prices
    return (
        usage.input_tokens * p_in
        + usage.output_tokens * p_out
        + usage.cache_read_tokens * p_read
        + usage.cache_write_tokens * p_write
    ) / 1_000_000


def get_backend(name: str) -> Any:
    if name not in BACKENDS:
        raise AgentError(ErrorKind.INVALID_REQUEST, detail=f"unknown backend {name!r}")
    module_name, class_name = BACKENDS[name]
    module = importlib.import_module(module_name)
    return getattr(module, class_name)()


class _Failure:
    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


_END = object()
PUMP_HIGH_WATER = 1024  # chunks buffered ahead of the consumer before the pump waits


async def _silence_aware(
    stream: AsyncIterator[Chunk], inp: TurnInput, interval: float
) -> AsyncIterator[Chunk]:
    """Yield the backend's chunks plus heartbeats while it is silent, without ever cancelling a
    pending ``__anext__`` (DESIGN lesson 1). After ``inp.stop`` the backend gets a grace period
    to end by itself, then it is closed.

    One long-lived *pump* task reads the backend into a buffer; the consumer pops from it. The hot
    path per chunk is an append, a ``loop.time()`` and (only when the consumer is waiting) one
    future: no task, no ``asyncio.wait`` and no timer per chunk (docs/performance.md, cause C).
    Heartbeats come from one timer re-armed at most once per ``interval``; stop from one callback.
    """
    loop = asyncio.get_running_loop()
    it = stream.__aiter__()
    buf: collections.deque[Any] = collections.deque()
    state = {"last": loop.time(), "beat": False, "stopped": False, "expired": False}
    waiter: list[asyncio.Future[None] | None] = [None]  # the consumer's, while the buffer is empty
    space: list[asyncio.Future[None] | None] = [None]  # the pump's, while the buffer is full
    timers: list[asyncio.TimerHandle | None] = [None, None]  # heartbeat, stop grace

    def wake() -> None:
        fut = waiter[0]
        if fut is not None and not fut.done():
            fut.set_result(None)

    async def pump() -> None:
        next_chunk = it.__anext__
        push = buf.append
        try:
            while True:
                try:
                    chunk = await next_chunk()
                except StopAsyncIteration:
                    push(_END)
                    break
                push(chunk)
                state["last"] = loop.time()
                wake()
                if len(buf) >= PUMP_HIGH_WATER:
                    space[0] = loop.create_future()
                    await space[0]
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which raises it
            push(_Failure(exc))
        wake()

    def beat() -> None:
        due = state["last"] + interval
        now = loop.time()
        if now >= due:
            if not state["stopped"]:
                state["beat"] = True
                state["last"] = now
                wake()
            due = now + interval
        timers[0] = loop.call_at(due, beat)

    def expire() -> None:
        state["expired"] = True
        wake()

    def on_stop(_: Any) -> None:
        if not state["stopped"] and inp.stop.is_set():
            state["stopped"] = True
            timers[1] = loop.call_later(STOP_GRACE_SECONDS, expire)
            wake()

    task = loop.create_task(pump())
    stop_wait = asyncio.ensure_future(inp.stop.wait())
    stop_wait.add_done_callback(on_stop)
    timers[0] = loop.call_later(interval, beat)
    try:
        while True:
            if buf:
                item = buf.popleft()
                if space[0] is not None and len(buf) < PUMP_HIGH_WATER // 2:
                    if not space[0].done():
                        space[0].set_result(None)
                    space[0] = None
                if item is _END:
                    return
                if type(item) is _Failure:
                    raise item.exc
                yield item
                continue
            if state["expired"]:
                log.info("backend did not end %.1fs after stop; closing it", STOP_GRACE_SECONDS)
                return
            if state["beat"]:
                state["beat"] = False
                yield events.heartbeat(time.time())
                continue
            if task.done():  # the pump was cancelled from outside: nothing more will come
                return
            waiter[0] = loop.create_future()
            try:
                await waiter[0]
            finally:
                waiter[0] = None
    finally:
        for handle in timers:
            if handle is not None:
                handle.cancel()
        stop_wait.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        aclose = getattr(it, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(Exception):
                await aclose()


async def _sleep_or_stop(inp: TurnInput, delay: float) -> bool:
    """Sleep ``delay`` seconds; True when the turn was stopped meanwhile."""
    if delay <= 0:
        return inp.stop.is_set()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(inp.stop.wait(), timeout=delay)
    return inp.stop.is_set()


async def _until_stopped(inp: TurnInput, coro: Any) -> Any:
    """Await ``coro`` unless ``inp.stop`` is set first (then cancel it and return None)."""
    task = asyncio.ensure_future(coro)
    stop_wait = asyncio.ensure_future(inp.stop.wait())
    try:
        await asyncio.wait({task, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop_wait.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
    return task.result() if task.done() and not task.cancelled() else None


def run_turn(inp: TurnInput, result: TurnResult) -> AsyncIterator[Chunk]:
    """One turn as chunks (see the module docstring). Never raises except CancelledError.

    Every chunk passes the turn's ``StreamScrubber`` (agents/credentials.py): configured secrets and
    key-shaped strings become "[redacted]", also across delta boundaries. Without a configured
    secret (the offline default) there is no scrubber and no extra generator layer."""
    scrubber = StreamScrubber.for_turn()
    if scrubber is None:
        return _run_turn(inp, result)
    return _scrubbed(_run_turn(inp, result), scrubber)


async def _scrubbed(chunks: AsyncIterator[Chunk], scrubber: StreamScrubber) -> AsyncIterator[Chunk]:
    async with contextlib.aclosing(chunks):  # type: ignore[type-var]
        feed = scrubber.feed
        async for chunk in chunks:
            for out in feed(chunk):
                yield out
    for out in scrubber.flush_all():  # normally nothing: the terminal chunk flushed every part
        yield out


async def _run_turn(inp: TurnInput, result: TurnResult) -> AsyncIterator[Chunk]:
    tracker = ChunkTracker()
    recovery_usage = Usage()
    result.model = result.model or inp.model
    error: AgentError | None = None
    yield events.start(inp.message_id)
    config = agent_config()
    interval = config.heartbeat_seconds or 10.0  # 0 is no interval: the default then
    max_retries = config.max_retries
    try:
        require_jail()  # tools never run outside the jail (AgentError: the turn is refused)
        backend = get_backend(inp.backend)
        attempt = 0
        current = inp  # the input of the current recovery rung (agents.recovery)
        rungs = list(recovery.LADDER)
        tried: list[str] = []
        while not inp.stop.is_set():
            try:
                async with contextlib.aclosing(
                    _silence_aware(backend.stream(current, result), inp, interval)
                ) as chunks:
                    async for chunk in chunks:
                        if chunk.get("type", "").startswith("data-"):
                            yield chunk
                            continue
                        for out in tracker.feed(chunk):
                            yield out
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - every failure is classified
                failure = classify_exception(exc)
                if not isinstance(exc, AgentError):
                    log.warning("agent turn failed: %s", failure.detail)
                if inp.stop.is_set():
                    break
                if failure.kind == ErrorKind.PROMPT_TOO_LONG and not tracker.has_content:
                    # The context-size recovery ladder (DESIGN lesson 5; agents/recovery.py).
                    for out in tracker.close_open():
                        yield out
                    nxt: TurnInput | None = None
                    while rungs and nxt is None and not inp.stop.is_set():
                        rung = rungs.pop(0)
                        if not recovery.applies(rung, inp):
                            continue
                        tried.append(rung.name)
                        yield events.status(rung.status_code, rung.message)
                        nxt = await _until_stopped(inp, recovery.rung_input(rung, inp, usage=recovery_usage))
                    if inp.stop.is_set():
                        break
                    if nxt is None:
                        error = recovery.final_error(failure, tried=tried)
                        if tried:  # keep the chat on its own CLI session, not a failed fresh one
                            result.agent_session_id = inp.agent_session_id
                        break
                    log.info("prompt too long; retrying with the %s context", tried[-1])
                    current = nxt
                    continue
                delay = None if tracker.has_content else retry_delay(failure, attempt)
                if delay is None:
                    error = failure
                    break
                attempt += 1
                log.info(
                    "retrying turn after %s (attempt %d of %d, %.2fs)",
                    failure.kind,
                    attempt,
                    max_retries,
                    delay,
                )
                for out in tracker.close_open():
                    yield out
                yield events.status(
                    "retrying",
                    f"{failure.message} Retrying in {delay:.0f}s (attempt {attempt} of {max_retries}).",
                )
                if await _sleep_or_stop(inp, delay):
                    break
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        error = classify_exception(exc)
        log.exception("agent runtime failed: %s", error.detail)

    stopped = inp.stop.is_set()
    for out in tracker.close_open():
        yield out
    if not result.usage.cost_usd:
        result.usage.cost_usd = cost_usd(result.model or inp.model, result.usage)
    if recovery_usage.input_tokens or recovery_usage.output_tokens:  # the compaction summary call
        extra = cost_usd(inp.model, recovery_usage)
        recovery_usage.cost_usd = 0.0
        result.usage.add(recovery_usage)
        result.usage.cost_usd += extra
    yield events.usage(
        input_tokens=result.usage.input_tokens,
        output_tokens=result.usage.output_tokens,
        cache_read_tokens=result.usage.cache_read_tokens,
        cache_write_tokens=result.usage.cache_write_tokens,
        cost_usd=result.usage.cost_usd,
        model=result.model or inp.model,
    )
    refused = not stopped and error is None and result.finish_reason == "content-filter"
    if refused:  # a refusal is an answer, not an error (docs/agents.md, "Stream grammar")
        yield events.status("refusal", REFUSAL_MESSAGE)
    if stopped:
        result.stopped = True
        result.error = None
        result.finish_reason = "stop"
        yield events.finish("stop", {"stopped": True})
    elif error is not None:
        result.error = error
        result.finish_reason = "error"
        yield events.error(error.message)
    else:
        result.finish_reason = result.finish_reason or "stop"
        reason = result.finish_reason if result.finish_reason in _FINISH_REASONS else "other"
        yield events.finish(reason, {"refusal": True} if refused else None)


_FINISH_REASONS = {"stop", "length", "content-filter", "tool-calls", "error", "other"}

TITLE_SYSTEM_PROMPT = (
    "You name chat conversations. Reply with a 3-6 word title for the conversation that starts "
    "with the user's message. Reply with the title only: no quotes, no punctuation at the end."
)


def _fallback_title(user_text: str) -> str:
    words = " ".join((user_text or "").split())
    if not words:
        return "New chat"
    return words if len(words) <= 60 else words[:57].rstrip() + "…"


async def generate_title(*, user_text: str, model: str) -> tuple[str, Usage]:
    """A short title for a chat from its first user message (falls back to the text itself)."""
    usage = Usage()
    try:
        message = (
            await model_client()
            .with_options(timeout=30.0)
            .messages.create(
                model=model,
                max_tokens=20,
                system=TITLE_SYSTEM_PROMPT,
                messages=[{"role": "user", "content": (user_text or "")[:2000] or "(empty)"}],
            )
        )
        usage = Usage.from_api(message.usage)
        usage.cost_usd = cost_usd(model, usage)
        text = "".join(getattr(block, "text", "") for block in message.content).strip()
        title = " ".join(scrub(text).split()).strip("\"'`*# ").rstrip(".")
        if not title:
            return _fallback_title(user_text), usage
        return (title if len(title) <= 80 else title[:77].rstrip() + "…"), usage
    except Exception as exc:  # noqa: BLE001 - a title is never worth failing a turn
        log.info("title generation failed: %s", scrub(f"{type(exc).__name__}: {exc}"))
        return _fallback_title(user_text), usage

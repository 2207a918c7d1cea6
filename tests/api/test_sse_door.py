"""The SSE door's writer (chat.api.sse.sse_stream) on its own: one reading task per response, what
arrived together written at once, pings on silence without cancelling the read (issue 21)."""

from __future__ import annotations

import asyncio

from chat.api.sse import DONE, PING, sse_event, sse_stream
from chat.runtime.streams import StreamLagged


async def _collect(gen) -> list[bytes]:
    return [part async for part in gen]


async def test_what_arrived_together_goes_out_as_one_write():
    async def subscription():
        yield 0, '{"type":"start"}', False
        yield 1, '{"type":"text-delta","id":"0","delta":"hi"}', False
        await asyncio.sleep(0.01)
        yield 2, '{"type":"finish"}', True

    parts = await _collect(sse_stream(subscription(), heartbeat=5))
    assert parts[0] == sse_event(0, '{"type":"start"}') + sse_event(
        1, '{"type":"text-delta","id":"0","delta":"hi"}'
    )
    assert parts[1:] == [sse_event(2, '{"type":"finish"}'), DONE]


async def test_silence_pings_and_the_read_is_not_cancelled():
    cancelled = []

    async def subscription():
        try:
            await asyncio.sleep(0.35)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise
        yield 0, '{"type":"finish"}', True

    parts = await _collect(sse_stream(subscription(), heartbeat=0.1))
    assert parts.count(PING) >= 2
    assert parts[-2:] == [sse_event(0, '{"type":"finish"}'), DONE]
    assert not cancelled


async def test_a_failing_subscription_ends_with_an_error_event_then_done():
    async def subscription():
        yield 0, '{"type":"start"}', False
        raise StreamLagged()

    parts = await _collect(sse_stream(subscription(), heartbeat=5))
    body = b"".join(parts)
    assert body.startswith(sse_event(0, '{"type":"start"}'))
    assert b'"type":"error"' in body and b"fell too far behind" in body
    assert parts[-1] == DONE


async def test_closing_the_response_stops_the_reader_and_closes_the_subscription():
    closed = asyncio.Event()

    async def subscription():
        try:
            yield 0, '{"type":"start"}', False
            await asyncio.sleep(30)
        finally:
            closed.set()

    gen = sse_stream(subscription(), heartbeat=5)
    assert await gen.__anext__() == sse_event(0, '{"type":"start"}')
    await gen.aclose()  # the client went away: Django closes the response's iterator
    await asyncio.wait_for(closed.wait(), 2)

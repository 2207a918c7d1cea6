"""The runtime's reading of a backend (agents.runtime._silence_aware): one pump task, heartbeats
from one re-armed timer, the stop grace period, bounded read-ahead — with a scripted in-process
backend, because these are properties of the runtime itself (the backends' own tests run them
against the real model and CLI)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from agents import events, runtime
from agents.turn import TurnInput, TurnResult
from tests.agents.conftest import collect


class FakeBackend:
    def __init__(self, script):
        self.script = script
        self.cancelled_reads = 0
        self.closed = False
        self.produced = 0

    async def stream(self, inp, result):
        try:
            async for chunk in self.script(self):
                self.produced += 1
                yield chunk
        except asyncio.CancelledError:
            self.cancelled_reads += 1
            raise
        finally:
            self.closed = True


def make_input(tmp_path: Path) -> TurnInput:
    return TurnInput(
        session_id="s",
        user_text="hi",
        workspace=tmp_path,
        backend="api",
        model="claude-sonnet-4-5",
        message_id="m1",
    )


@pytest.fixture
def use_backend(monkeypatch):
    def install(backend: FakeBackend) -> FakeBackend:
        monkeypatch.setattr(runtime, "get_backend", lambda name: backend)
        return backend

    return install


def text_parts(pid: str, words: list[str]):
    yield events.start_step()
    yield events.text_start(pid)
    for word in words:
        yield events.text_delta(pid, word)
    yield events.text_end(pid)
    yield events.finish_step()


async def test_silence_gives_heartbeats_and_never_cancels_the_backend_read(tmp_path, settings, use_backend):
    settings.AGENT_HEARTBEAT_SECONDS = 0.05

    async def script(backend):
        chunks = list(text_parts("t1", ["a", "b", "c"]))
        for i, chunk in enumerate(chunks):
            if i in (2, 4):
                await asyncio.sleep(0.2)  # ~4 heartbeat intervals of silence inside one read
            yield chunk

    backend = use_backend(FakeBackend(script))
    result = TurnResult()
    chunks = await collect(runtime.run_turn(make_input(tmp_path), result), timeout=10)
    kinds = [c["type"] for c in chunks]
    assert kinds.count("data-heartbeat") >= 4
    assert "".join(c["delta"] for c in chunks if c["type"] == "text-delta") == "abc"
    assert kinds[-1] == "finish" and result.error is None
    assert backend.cancelled_reads == 0 and backend.closed


async def test_a_backend_that_ignores_stop_is_closed_after_the_grace_period(
    tmp_path, settings, use_backend, monkeypatch
):
    monkeypatch.setattr(runtime, "STOP_GRACE_SECONDS", 0.2)

    async def script(backend):
        for chunk in text_parts("t1", ["x"]):
            yield chunk
        await asyncio.sleep(60)  # never ends by itself
        yield events.text_delta("t1", "never")

    backend = use_backend(FakeBackend(script))
    inp = make_input(tmp_path)
    result = TurnResult()
    chunks = []
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(10):
        async for chunk in runtime.run_turn(inp, result):
            chunks.append(chunk)
            if chunk["type"] == "finish-step":
                stopped_at = loop.time()
                inp.stop.set()
    assert 0.15 <= loop.time() - stopped_at < 3
    assert chunks[-1] == events.finish("stop", {"stopped": True}) and result.stopped
    assert backend.closed and backend.cancelled_reads == 1  # torn down only at the end


async def test_read_ahead_is_bounded_and_order_kept(tmp_path, use_backend):
    n = 5 * runtime.PUMP_HIGH_WATER

    async def script(backend):
        yield events.start_step()
        yield events.text_start("t1")
        for i in range(n):
            yield events.text_delta("t1", f"{i} ")
        yield events.text_end("t1")
        yield events.finish_step()

    backend = use_backend(FakeBackend(script))
    result = TurnResult()
    seen = 0
    ahead = 0
    words = []
    async for chunk in runtime.run_turn(make_input(tmp_path), result):
        if chunk["type"] == "text-delta":
            seen += 1
            words.append(chunk["delta"])
            ahead = max(ahead, backend.produced - seen)
            if seen % 100 == 0:
                await asyncio.sleep(0)  # a consumer slower than the backend
    assert words == [f"{i} " for i in range(n)]
    assert ahead <= runtime.PUMP_HIGH_WATER + 3


async def test_a_failure_after_content_ends_with_one_error_and_no_retry(tmp_path, use_backend):
    calls = []

    async def script(backend):
        calls.append(1)
        for chunk in text_parts("t1", ["partial"]):
            yield chunk
        raise ConnectionError("stream broke")

    use_backend(FakeBackend(script))
    result = TurnResult()
    chunks = await collect(runtime.run_turn(make_input(tmp_path), result), timeout=10)
    assert [c["type"] for c in chunks][-2:] == ["data-usage", "error"]
    assert result.error is not None and len(calls) == 1


# ---------------------------------------------------------------------------------------------
# The api backend's raw server-sent event reading: an `event: error` in the middle of a stream
# (the scripted model only fails with HTTP statuses) raises what the SDK's typed iterator raises.
# ---------------------------------------------------------------------------------------------

MIDSTREAM_ERROR = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}


def _sse(name: str, payload: dict) -> bytes:
    import json

    return f"event: {name}\ndata: {json.dumps(payload)}\n\n".encode()


async def _error_midstream_server():
    async def handle(reader, writer):
        await reader.readuntil(b"\r\n\r\n")  # the request body is not needed
        body = b"".join(
            [
                _sse(
                    "message_start",
                    {
                        "type": "message_start",
                        "message": {
                            "id": "msg_1",
                            "type": "message",
                            "role": "assistant",
                            "model": "m",
                            "content": [],
                            "stop_reason": None,
                            "usage": {"input_tokens": 3, "output_tokens": 1},
                        },
                    },
                ),
                _sse(
                    "content_block_start",
                    {
                        "type": "content_block_start",
                        "index": 0,
                        "content_block": {"type": "text", "text": ""},
                    },
                ),
                _sse("ping", {"type": "ping"}),
                _sse(
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": 0,
                        "delta": {"type": "text_delta", "text": "Hel"},
                    },
                ),
                _sse("error", MIDSTREAM_ERROR),
            ]
        )
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body) + body
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


async def test_api_midstream_error_event_raises_like_the_sdk(tmp_path, settings):
    import anthropic

    from agents.backends.api import ApiBackend

    server, url = await _error_midstream_server()
    settings.ANTHROPIC_BASE_URL = url
    settings.ANTHROPIC_API_KEY = ""
    try:
        # What the SDK's own typed iterator raises for this stream...
        async with anthropic.AsyncAnthropic(base_url=url, api_key="k", max_retries=0) as client:
            stream = await client.messages.create(
                model="m", max_tokens=5, messages=[{"role": "user", "content": "hi"}], stream=True
            )
            with pytest.raises(anthropic.APIStatusError) as expected:
                async for _ in stream:
                    pass
        # ...is what the backend's raw reading raises, after the text it already streamed.
        result = TurnResult()
        chunks = []
        with pytest.raises(anthropic.APIStatusError) as raised:
            async for chunk in ApiBackend().stream(make_input(tmp_path), result):
                chunks.append(chunk)
        assert type(raised.value) is type(expected.value)
        assert raised.value.body == expected.value.body == MIDSTREAM_ERROR
        assert [c["delta"] for c in chunks if c["type"] == "text-delta"] == ["Hel"]
        assert result.usage.input_tokens == 3
    finally:
        server.close()
        await server.wait_closed()


def test_one_model_client_per_loop_closed_with_its_loop(scripted_model):
    from agents.model_client import model_client

    async def two_calls():
        return model_client(), model_client()

    with asyncio.Runner() as runner:
        first, second = runner.run(two_calls())
        assert first is second and not first.is_closed()  # shared by every call of the loop
    assert first.is_closed()  # closed when the loop shut down
    with asyncio.Runner() as runner:
        other, _ = runner.run(two_calls())
    assert other is not first  # another loop, another client

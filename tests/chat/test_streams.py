"""Per-turn chunk logs, the folder that persists them, and delta coalescing."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest

from agents import events
from chat.runtime import streams
from chat.runtime.persistence import MessageFolder
from chat.runtime.streams import Coalescer


async def collect(it, timeout=5.0):
    """``(sequence, chunk)`` pairs from a reader's ``(sequence, chunk JSON, is_terminal)``."""

    async def run():
        return [(seq, json.loads(raw)) async for seq, raw, _terminal in it]

    return await asyncio.wait_for(run(), timeout)


async def test_replay_then_live_for_many_listeners():
    turn_id = str(uuid.uuid4())
    stream = streams.stream_open(turn_id=turn_id, session_id=str(uuid.uuid4()))
    stream.append(events.start("m1"))
    stream.append(events.text_start("t"))
    early = asyncio.ensure_future(collect(streams.stream_read(turn_id=turn_id)))
    late = asyncio.ensure_future(collect(streams.stream_read(turn_id=turn_id, after_sequence=1)))
    await asyncio.sleep(0)
    for i in range(5):
        stream.append(events.text_delta("t", f"{i} "))
    cancelled = asyncio.ensure_future(collect(streams.stream_read(turn_id=turn_id)))
    await asyncio.sleep(0.01)
    cancelled.cancel()  # one listener going away must not disturb the others
    stream.append(events.text_end("t"))
    stream.append(events.finish())
    await stream.aclose()
    a, b = await early, await late
    assert [s for s, _ in a] == list(range(9))
    assert [s for s, _ in b] == list(range(2, 9))
    assert a[-1][1]["type"] == "finish"
    # Retained after the end: a late reader gets the tail.
    assert [s for s, _ in await collect(streams.stream_read(turn_id=turn_id, after_sequence=6))] == [7, 8]
    assert await streams.stream_latest_turn(session_id=stream.session_id) == turn_id


async def test_a_listener_behind_the_trimmed_head_gets_a_resumable_error(monkeypatch):
    monkeypatch.setattr(streams, "MAX_LOG_CHUNKS", 10)
    turn_id = str(uuid.uuid4())
    stream = streams.stream_open(turn_id=turn_id, session_id=str(uuid.uuid4()))
    for i in range(30):
        stream.append(events.text_delta("t", str(i)))
    assert len(stream.chunks) <= 10  # memory stays bounded
    with pytest.raises(streams.StreamLagged):
        await collect(streams.stream_read(turn_id=turn_id, after_sequence=-1))
    stream.append(events.finish())
    await stream.aclose()
    tail = await collect(streams.stream_read(turn_id=turn_id, after_sequence=28))
    assert [s for s, _ in tail] == [29, 30]


def test_folder_keeps_model_order_and_closes_open_tool_calls():
    folder = MessageFolder(message_id="m")
    for chunk in [
        events.start("m"),
        events.start_step(),
        events.reasoning_start("r"),
        events.reasoning_delta("r", "hmm"),
        events.reasoning_end("r"),
        events.text_start("a"),
        events.text_delta("a", "Let me "),
        events.text_delta("a", "look."),
        events.text_end("a"),
        events.tool_input_start("c1", "Bash"),
        events.tool_input_delta("c1", '{"command"'),
        events.tool_input_available("c1", "Bash", {"command": "ls"}),
        events.tool_input_start("c2", "Read"),
        events.tool_output_available("c1", "a.txt"),
        events.finish_step(),
        events.heartbeat(1.0),
        events.usage(
            input_tokens=1, output_tokens=2, cache_read_tokens=0, cache_write_tokens=0, cost_usd=0, model="x"
        ),
    ]:
        folder.feed(chunk)
    folder.close_open_parts()
    parts, text, meta = folder.snapshot()
    assert [p["type"] for p in parts] == ["step-start", "reasoning", "text", "tool-Bash", "tool-Read"]
    assert parts[2] == {"type": "text", "text": "Let me look.", "state": "done"}
    assert parts[3] == {
        "type": "tool-Bash",
        "toolCallId": "c1",
        "state": "output-available",
        "input": {"command": "ls"},
        "output": "a.txt",
    }
    assert parts[4]["state"] == "output-error"  # never left without a result (lesson 2)
    assert text == "Let me look."
    assert meta["messageId"] == "m" and meta["usage"]["outputTokens"] == 2


async def test_coalescer_merges_bursts_and_keeps_order():
    out = []
    co = Coalescer(out.append, window=0.05)
    co.push(events.text_start("t"))
    for i in range(50):
        co.push(events.text_delta("t", f"{i},"))  # a burst: first goes out at once, the rest wait
    assert [c["type"] for c in out] == ["text-start", "text-delta"]
    co.push(events.text_end("t"))  # a non-delta flushes first
    assert [c["type"] for c in out] == ["text-start", "text-delta", "text-delta", "text-end"]
    assert "".join(c.get("delta", "") for c in out) == "".join(f"{i}," for i in range(50))
    await asyncio.sleep(0.12)  # window closes with nothing pending
    co.push(events.text_delta("t", "x"))
    assert out[-1] == events.text_delta("t", "x")  # after a quiet period: no added latency
    co.push(events.text_delta("t", "y"))
    await asyncio.sleep(0.1)
    assert out[-1] == events.text_delta("t", "y")  # flushed when the window closed
    co.close()

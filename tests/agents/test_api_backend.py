"""run_turn on the ``api`` backend: the real anthropic client against the real scripted model on
loopback, the real tools in a real workspace. Exact chunk sequences and classified errors."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from agents import events
from agents.errors import AgentError, ErrorKind
from agents.runtime import cost_usd, generate_title, run_turn
from agents.turn import Attachment, HistoryMessage, TurnInput, TurnResult, Usage

from .conftest import (
    ERROR_TURN,
    PARTIAL_THEN_ERROR,
    TEXT_TURN,
    chunk_types,
    requests_since,
    text_of,
    turn_input,
)
from .conftest import run_turn_chunks as turn

PNG_1x1 = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
)


def make_input(workspace, text: str, **kwargs) -> TurnInput:
    return turn_input(workspace, text, session_id=str(uuid.uuid4()), **kwargs)


def usage_chunk(chunks: list[dict]) -> dict:
    return next(c for c in chunks if c["type"] == "data-usage")["data"]


pytestmark = pytest.mark.usefixtures("scripted_model", "fast_retries")


async def test_plain_text(workspace):
    inp = make_input(workspace, "hello there")
    chunks, result = await turn(inp)
    assert chunk_types(chunks) == TEXT_TURN
    assert chunks[0] == events.start(inp.message_id)
    assert chunks[-1] == {"type": "finish", "finishReason": "stop"}
    assert 'you said "hello there"' in text_of(chunks)
    assert result.error is None and result.finish_reason == "stop" and not result.stopped
    assert result.usage.output_tokens > 0
    assert usage_chunk(chunks)["outputTokens"] == result.usage.output_tokens


async def test_long(workspace):
    chunks, _ = await turn(make_input(workspace, "/long 50"))
    assert chunk_types(chunks) == TEXT_TURN
    assert text_of(chunks) == "".join(f"w{i} " for i in range(50))
    assert sum(c["type"] == "text-delta" for c in chunks) == 50


async def test_tool_bash_sequence(workspace, scripted_model):
    mark = scripted_model.request_count
    chunks, result = await turn(make_input(workspace, "/tool bash echo hi"))
    assert chunk_types(chunks) == [
        "start",
        "start-step",
        "text-start",
        "text-delta",
        "text-end",
        "tool-input-start",
        "tool-input-delta",
        "tool-input-available",
        "tool-output-available",
        "finish-step",
        "start-step",
        "text-start",
        "text-delta",
        "text-end",
        "finish-step",
        "data-usage",
        "finish",
    ]
    available = next(c for c in chunks if c["type"] == "tool-input-available")
    assert available["toolName"] == "Bash" and available["input"]["command"] == "echo hi"
    output = next(c for c in chunks if c["type"] == "tool-output-available")
    assert output["toolCallId"] == available["toolCallId"] and output["output"] == "hi"
    assert "Tool result: hi" in text_of(chunks)
    # the second request carries the tool_result right after its own tool_use (lesson 4)
    second = requests_since(scripted_model, mark)[1]["body"]["messages"]
    assert [m["role"] for m in second] == ["user", "assistant", "user"]
    assert second[1]["content"][-1]["type"] == "tool_use"
    assert second[2]["content"][0] == {
        "type": "tool_result",
        "tool_use_id": available["toolCallId"],
        "content": "hi",
        "cache_control": {"type": "ephemeral"},
    }
    # usage summed over both model calls (the scripted model bills 5 + 1 streamed pieces)
    assert result.usage.output_tokens == 6
    assert result.usage.input_tokens >= 2
    assert result.usage.cache_read_tokens + result.usage.cache_write_tokens > 0
    data = usage_chunk(chunks)
    assert (data["inputTokens"], data["outputTokens"], data["cacheReadTokens"], data["cacheWriteTokens"]) == (
        result.usage.input_tokens,
        result.usage.output_tokens,
        result.usage.cache_read_tokens,
        result.usage.cache_write_tokens,
    )
    assert (
        data["costUsd"] == pytest.approx(cost_usd("claude-sonnet-4-5", result.usage), abs=1e-6)
        and data["costUsd"] > 0
    )


async def test_parallel_tools(workspace, scripted_model):
    mark = scripted_model.request_count
    chunks, result = await turn(make_input(workspace, "/tools 3"))
    types = chunk_types(chunks)
    assert types == (
        ["start", "start-step"]
        + ["tool-input-start", "tool-input-delta", "tool-input-available"] * 3
        + ["tool-output-available"] * 3
        + [
            "finish-step",
            "start-step",
            "text-start",
            "text-delta",
            "text-end",
            "finish-step",
            "data-usage",
            "finish",
        ]
    )
    starts = [c["toolCallId"] for c in chunks if c["type"] == "tool-input-start"]
    outputs = {c["toolCallId"]: c["output"] for c in chunks if c["type"] == "tool-output-available"}
    assert len(set(starts)) == 3  # none emitted twice
    assert sorted(outputs.values()) == ["tool-0", "tool-1", "tool-2"]
    assert set(outputs) == set(starts)
    assert not any(c["type"] == "tool-output-error" for c in chunks)  # none closed early
    assert "Ran 3 tools: tool-0 tool-1 tool-2" in text_of(chunks)
    second = requests_since(scripted_model, mark)[1]["body"]["messages"]
    assert [b["type"] for b in second[-1]["content"]] == ["tool_result"] * 3  # one user message


async def test_think_passes_reasoning(workspace):
    chunks, _ = await turn(make_input(workspace, "/think"))
    assert chunk_types(chunks) == [
        "start",
        "start-step",
        "reasoning-start",
        "reasoning-delta",
        "reasoning-end",
        "text-start",
        "text-delta",
        "text-end",
        "finish-step",
        "data-usage",
        "finish",
    ]
    reasoning = "".join(c["delta"] for c in chunks if c["type"] == "reasoning-delta")
    assert "thinking block" in reasoning


@pytest.mark.parametrize(
    ("status", "kind", "attempts"),
    [
        (401, ErrorKind.AUTHENTICATION, 1),
        (400, ErrorKind.INVALID_REQUEST, 1),
        (500, ErrorKind.SERVER, 4),
        (529, ErrorKind.OVERLOADED, 4),
    ],
)
async def test_errors_classified_and_retried(workspace, scripted_model, status, kind, attempts):
    mark = scripted_model.request_count
    chunks, result = await turn(make_input(workspace, f"/error {status}"))
    assert chunk_types(chunks) == ERROR_TURN
    assert sum(c["type"] == "error" for c in chunks) == 1
    assert result.error is not None and result.error.kind == kind and result.error.status_code == status
    assert chunks[-1]["errorText"] == result.error.message and "Traceback" not in chunks[-1]["errorText"]
    assert len(requests_since(scripted_model, mark)) == attempts  # 1 + AGENT_MAX_RETRIES when retried
    statuses = [c["data"]["code"] for c in chunks if c["type"] == "data-status"]
    assert statuses == ["retrying"] * (attempts - 1)
    assert result.finish_reason == "error"


async def test_rate_limited_has_reset_time(workspace, scripted_model):
    mark = scripted_model.request_count
    chunks, result = await turn(make_input(workspace, "/error 429"))
    assert chunk_types(chunks) == ERROR_TURN
    error = result.error
    assert (
        error.kind == ErrorKind.RATE_LIMITED and error.resets_at is not None and error.retry_after is not None
    )
    assert 0 < (error.resets_at.timestamp() - time.time()) < 60
    # retry-after (1 s) exceeds the test's AGENT_RETRY_MAX_DELAY: reported, not retried
    assert len(requests_since(scripted_model, mark)) == 1


async def test_prompt_too_long(workspace, scripted_model):
    mark = scripted_model.request_count
    chunks, result = await turn(make_input(workspace, "/toolong"))
    assert chunk_types(chunks) == ERROR_TURN
    assert result.error.kind == ErrorKind.PROMPT_TOO_LONG
    assert len(requests_since(scripted_model, mark)) == 1


async def test_drop_is_connection_error_without_retry_after_text(workspace, scripted_model):
    mark = scripted_model.request_count
    chunks, result = await turn(make_input(workspace, "/drop"))
    assert chunk_types(chunks) == PARTIAL_THEN_ERROR
    assert result.error.kind == ErrorKind.CONNECTION
    assert text_of(chunks)  # partial text reached the client ...
    assert len(requests_since(scripted_model, mark)) == 1  # ... so no retry (it would duplicate)


async def test_stop_during_slow_stream(workspace):
    inp = make_input(workspace, "/slow 50")  # 40 deltas, 50 ms apart
    result = TurnResult()
    chunks: list[dict] = []
    started = time.monotonic()
    async for chunk in run_turn(inp, result):
        chunks.append(chunk)
        if chunk["type"] == "text-delta" and not inp.stop.is_set():
            inp.stop.set()
            stop_at = time.monotonic()
    elapsed_after_stop = time.monotonic() - stop_at
    assert elapsed_after_stop < 1.0, elapsed_after_stop
    assert time.monotonic() - started < 2.0  # far less than the 2 s the full reply takes
    assert chunk_types(chunks) == TEXT_TURN
    assert chunks[-1] == {"type": "finish", "finishReason": "stop", "messageMetadata": {"stopped": True}}
    assert text_of(chunks).startswith("w0 ")
    assert len(text_of(chunks).split()) < 40
    assert result.stopped and result.error is None and result.finish_reason == "stop"


async def test_heartbeats_while_silent_do_not_lose_chunks(workspace, settings):
    settings.AGENT_HEARTBEAT_SECONDS = 0.05
    chunks, result = await turn(make_input(workspace, "/slow 200 3"))
    assert any(c["type"] == "data-heartbeat" for c in chunks)
    assert chunk_types(chunks) == TEXT_TURN
    assert text_of(chunks) == "w0 w1 w2 "  # the iterator was never cancelled (lesson 1)
    assert result.error is None


async def test_step_check_ends_turn_at_boundary(workspace, scripted_model):
    seen: list[Usage] = []

    async def step_check(usage: Usage) -> None:
        seen.append(Usage(**vars(usage)))
        raise AgentError(ErrorKind.BUDGET, detail="test budget")

    mark = scripted_model.request_count
    chunks, result = await turn(make_input(workspace, "/tool bash echo hi", step_check=step_check))
    assert result.error.kind == ErrorKind.BUDGET
    assert chunk_types(chunks)[-2:] == ["data-usage", "error"]
    assert len(seen) == 1 and seen[0].output_tokens > 0
    assert len(requests_since(scripted_model, mark)) == 1  # no second model call


async def test_request_has_cache_control_and_system_prompt(workspace, scripted_model):
    mark = scripted_model.request_count
    await turn(make_input(workspace, "cache me", system_prompt="You are a test agent."))
    body = requests_since(scripted_model, mark)[0]["body"]
    assert body["system"] == [
        {"type": "text", "text": "You are a test agent.", "cache_control": {"type": "ephemeral"}}
    ]
    assert body["tools"][-1]["cache_control"] == {"type": "ephemeral"}
    assert {t["name"] for t in body["tools"]} >= {"Bash", "Read", "Write", "Edit", "Glob", "Grep"}
    assert body["messages"][-1]["content"][-1]["cache_control"] == {"type": "ephemeral"}
    assert body["stream"] is True
    breakpoints = str(body).count("cache_control")
    assert breakpoints <= 4  # the API allows at most four


async def test_image_attachment_reaches_request_and_file_is_saved(workspace, scripted_model):
    mark = scripted_model.request_count
    attachments = [
        Attachment(name="dot.png", media_type="image/png", data=PNG_1x1),
        Attachment(name="../../data.csv", media_type="text/csv", data=b"a,b\n1,2\n"),
    ]
    chunks, result = await turn(make_input(workspace, "what is in the picture?", attachments=attachments))
    assert result.error is None
    content = requests_since(scripted_model, mark)[0]["body"]["messages"][-1]["content"]
    image = content[0]
    assert image["type"] == "image" and image["source"]["media_type"] == "image/png"
    assert image["source"]["type"] == "base64" and image["source"]["data"]
    assert "uploads/data.csv" in content[-1]["text"]
    assert (workspace / "uploads" / "data.csv").read_bytes() == b"a,b\n1,2\n"


async def test_invalid_attachment_is_invalid_request(workspace, scripted_model):
    mark = scripted_model.request_count
    bad = [Attachment(name="fake.png", media_type="image/png", data=b"not a png")]
    chunks, result = await turn(make_input(workspace, "look", attachments=bad))
    assert chunk_types(chunks) == ERROR_TURN
    assert result.error.kind == ErrorKind.INVALID_REQUEST and "fake.png" in result.error.message
    assert requests_since(scripted_model, mark) == []
    too_many = [Attachment(name=f"{i}.txt", media_type="text/plain", data=b"x") for i in range(5)]
    _, result = await turn(make_input(workspace, "look", attachments=too_many))
    assert result.error.kind == ErrorKind.INVALID_REQUEST and "At most 4" in result.error.message


async def test_sandbox_denial_in_tool_loop_is_tool_error(workspace):
    target = workspace.parent / f"escape-{uuid.uuid4().hex[:6]}.txt"
    chunks, result = await turn(make_input(workspace, f"/tool bash touch {target}"))
    assert result.error is None
    err = next(c for c in chunks if c["type"] == "tool-output-error")
    assert "Permission denied" in err["errorText"]
    assert "tool-output-available" not in chunk_types(chunks)
    # The jail refuses the write (the model is told the command's error, and the turn goes on).
    assert "Tool error: " in text_of(chunks) and "Permission denied" in text_of(chunks)
    assert not target.exists()


async def test_history_with_tool_parts_is_valid(workspace, scripted_model):
    history = [
        HistoryMessage("user", [{"type": "text", "text": "/tool bash ls"}]),
        HistoryMessage(
            "assistant",
            [
                {"type": "step-start"},
                {"type": "text", "text": "I'll run that command."},
                {
                    "type": "tool-Bash",
                    "toolCallId": "toolu_a",
                    "state": "output-available",
                    "input": {"command": "ls"},
                    "output": "a.txt",
                },
                {
                    "type": "tool-Bash",
                    "toolCallId": "toolu_b",
                    "state": "output-error",
                    "input": {"command": "x"},
                    "errorText": "boom",
                },
                {"type": "step-start"},
                {"type": "text", "text": "Done."},
            ],
        ),
        HistoryMessage("assistant", [{"type": "text", "text": "An extra assistant message."}]),
        HistoryMessage("user", [{"type": "text", "text": "and now?"}]),
        HistoryMessage(
            "assistant",
            [
                {
                    "type": "tool-Read",
                    "toolCallId": "toolu_c",
                    "state": "input-available",
                    "input": {"file_path": "a"},
                }
            ],
        ),
    ]
    mark = scripted_model.request_count
    chunks, result = await turn(make_input(workspace, "thanks", history=history))
    assert result.error is None
    messages = requests_since(scripted_model, mark)[0]["body"]["messages"]
    roles = [m["role"] for m in messages]
    assert all(a != b for a, b in zip(roles, roles[1:])), roles  # alternating: merged
    assert roles[0] == "user" and roles[-1] == "user"
    for previous, message in zip(messages, messages[1:]):
        results = [b["tool_use_id"] for b in message["content"] if b["type"] == "tool_result"]
        if message["role"] == "user" and results:
            uses = [b["id"] for b in previous["content"] if b["type"] == "tool_use"]
            assert results == uses  # every result right after its own tool_use
    flat = str(messages)
    assert "boom" in flat and "Tool call did not finish." in flat  # unfinished call closed with an error
    assert messages[-1]["content"][-1]["text"] == "thanks"


async def test_generate_title(scripted_model):
    title, usage = await generate_title(
        user_text="Help me plan a trip to Lisbon in May", model="claude-haiku-4-5"
    )
    assert title and len(title) <= 80 and "\n" not in title
    assert usage.output_tokens > 0


async def test_generate_title_falls_back_offline(settings):
    settings.ANTHROPIC_BASE_URL = "http://127.0.0.1:9"  # nothing listens there
    settings.ANTHROPIC_API_KEY = "sk-ant-unreachable-test"
    title, usage = await generate_title(
        user_text="  Summarise   this very long request " + "x" * 100, model="claude-haiku-4-5"
    )
    assert title.startswith("Summarise this very long request") and len(title) <= 60
    assert usage.output_tokens == 0


async def test_stop_while_tool_runs_cancels_it_and_closes_the_call(workspace):
    inp = make_input(workspace, "/tool bash sleep 5 && touch finished.txt")
    result = TurnResult()
    chunks: list[dict] = []
    started = time.monotonic()
    async for chunk in run_turn(inp, result):
        chunks.append(chunk)
        if chunk["type"] == "tool-input-available":
            inp.stop.set()
    assert time.monotonic() - started < 3.0
    types = chunk_types(chunks)
    assert types[-4:] == ["tool-output-error", "finish-step", "data-usage", "finish"]
    closed = next(c for c in chunks if c["type"] == "tool-output-error")
    assert closed["errorText"] == "Tool call did not finish."
    assert chunks[-1]["messageMetadata"] == {"stopped": True} and result.stopped
    await asyncio.sleep(0.2)
    assert not (workspace / "finished.txt").exists()  # the process group was killed


def test_chunk_tracker_dedupes_and_closes_everything():
    from agents.adapter import ChunkTracker

    tracker = ChunkTracker()
    fed: list[dict] = []
    for chunk in [
        events.start_step(),
        events.text_delta("t1", "hi"),  # delta before start: the start is added
        events.tool_input_start("c1", "Bash"),
        events.tool_input_available("c1", "Bash", {"command": "ls"}),
        events.tool_input_available("c1", "Bash", {"command": "ls"}),  # twice: dropped
        events.tool_input_available("c2", "Read", {"file_path": "a"}),  # parallel call
        events.tool_output_available("c1", "ok"),
        events.tool_output_available("c1", "again"),  # second output: dropped
        events.tool_output_available("nope", "x"),  # unknown call: dropped
        events.finish_step(),  # closes the text part, keeps c2 open (parallel continuation)
        events.reasoning_start("r1"),  # opens a step of its own
    ]:
        fed += tracker.feed(chunk)
    assert chunk_types(fed) == [
        "start-step",
        "text-start",
        "text-delta",
        "tool-input-start",
        "tool-input-available",
        "tool-input-available",
        "tool-output-available",
        "text-end",
        "finish-step",
        "start-step",
        "reasoning-start",
    ]
    assert tracker.open_tool_calls() == ["c2"]
    closing = tracker.close_open()
    assert closing == [
        events.reasoning_end("r1"),
        events.tool_output_error("c2", "Tool call did not finish."),
        events.finish_step(),
    ]
    assert tracker.close_open() == []
    assert tracker.has_content

"""The sdk backend: the real Claude Code CLI (bundled in claude-agent-sdk) against the real scripted
model on loopback. Plus fast tests of the message translation and the tool policy, fed with the
SDK's own message types (no CLI)."""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import json
import time
import uuid

import pytest
from claude_agent_sdk import (
    AssistantMessage,
    ResultMessage,
    TextBlock,
    ToolResultBlock,
    ToolUseBlock,
    UserMessage,
)
from claude_agent_sdk.types import RateLimitEvent, RateLimitInfo, StreamEvent

from agents.backends.sdk import SdkBackend, cli_env
from agents.backends.sdk_adapter import SdkTranslator
from agents.errors import AgentError, ErrorKind
from agents.events import Chunk
from agents.hooks import ToolPolicy
from agents.runtime import run_turn
from agents.sandbox import SubagentLimiter
from agents.turn import Attachment, TurnInput, TurnResult
from tests.agents.conftest import (
    ERROR_TURN,
    TEXT_TURN,
    chunk_types,
    collect,
    requests_since,
    text_of,
    turn_input,
)

PNG_1PX = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
)


make_input = functools.partial(turn_input, backend="sdk", message_id="msg-test")


async def backend_chunks(inp: TurnInput, result: TurnResult, *, timeout: float = 40.0) -> list[Chunk]:
    return await collect(SdkBackend().stream(inp, result), timeout=timeout)


# ---------------------------------------------------------------------------------------------
# The real CLI
# ---------------------------------------------------------------------------------------------


@pytest.mark.cli
async def test_plain_text_streams_as_deltas(scripted_model, workspace):
    inp = make_input(workspace, "hello there")
    result = TurnResult()
    chunks = await backend_chunks(inp, result)
    assert chunk_types(chunks) == ["start-step", "text-start", "text-delta", "text-end", "finish-step"]
    assert sum(c["type"] == "text-delta" for c in chunks) > 1  # really streamed, not one block
    assert text_of(chunks).startswith('Offline scripted model: you said "hello there".')
    assert result.agent_session_id and uuid.UUID(result.agent_session_id)
    assert result.finish_reason == "stop"
    assert result.usage.output_tokens > 0 and result.usage.cache_write_tokens + result.usage.input_tokens > 0
    assert result.usage.cost_usd > 0


@pytest.mark.cli
async def test_bash_tool_runs_in_the_workspace(scripted_model, workspace):
    result = TurnResult()
    chunks = await backend_chunks(make_input(workspace, "/tool bash echo hi"), result)
    assert chunk_types(chunks) == [
        "start-step", "text-start", "text-delta", "text-end",
        "tool-input-start", "tool-input-delta", "tool-input-available",
        "tool-output-available", "finish-step",
        "start-step", "text-start", "text-delta", "text-end", "finish-step",
    ]  # fmt: skip
    available = [c for c in chunks if c["type"] == "tool-input-available"]
    assert len(available) == 1 and available[0]["toolName"] == "Bash"
    assert available[0]["input"]["command"] == "echo hi"
    [output] = [c for c in chunks if c["type"] == "tool-output-available"]
    assert output["output"] == "hi" and output["toolCallId"] == available[0]["toolCallId"]
    assert "Tool result: hi" in text_of(chunks)

    # The command really ran, with the workspace as its working directory.
    await backend_chunks(make_input(workspace, "/tool bash echo made-here > made.txt"), TurnResult())
    assert (workspace / "made.txt").read_text().strip() == "made-here"


@pytest.mark.cli
async def test_home_and_tmpdir_are_inside_the_workspace(scripted_model, workspace):
    chunks = await backend_chunks(
        make_input(workspace, "/tool bash echo $HOME $CLAUDE_CODE_TMPDIR $TMPDIR; pwd"), TurnResult()
    )
    [output] = [c for c in chunks if c["type"] == "tool-output-available"]
    paths = output["output"].split()
    assert paths == [str(workspace / "home"), str(workspace / "tmp"), str(workspace / "tmp"), str(workspace)]
    # The CLI's own files (config, session transcripts) landed inside the workspace too.
    assert list((workspace / "home" / ".claude").rglob("*.jsonl"))


@pytest.mark.cli
async def test_pretooluse_denial_is_a_tool_error_and_never_runs(scripted_model, workspace, settings):
    settings.AGENT_JAIL = "off"  # the lexical Bash check denies (with the jail on, the jail confines)
    outside = workspace.parent / f"escape-{uuid.uuid4().hex}.txt"
    chunks = await backend_chunks(make_input(workspace, f"/tool bash touch ../{outside.name}"), TurnResult())
    assert not outside.exists()  # never executed
    [error] = [c for c in chunks if c["type"] == "tool-output-error"]
    assert "outside the workspace" in error["errorText"]
    assert not any(c["type"] == "tool-output-available" for c in chunks)
    assert "Tool error: " in text_of(chunks)  # the model was told, and the turn went on

    chunks = await backend_chunks(make_input(workspace, "/tool bash cat /etc/passwd"), TurnResult())
    [error] = [c for c in chunks if c["type"] == "tool-output-error"]
    assert error["errorText"] == "Bash denied: /etc/passwd is outside the workspace."
    assert "root:" not in json.dumps(chunks)


@pytest.mark.cli
async def test_secrets_do_not_reach_the_cli(scripted_model, workspace, monkeypatch):
    monkeypatch.setenv("SOME_SERVICE_API_KEY", "very-secret-value-123")
    env = cli_env(workspace)
    assert env["SOME_SERVICE_API_KEY"] == ""
    assert env["ANTHROPIC_BASE_URL"] == scripted_model.url
    assert env["CLAUDE_CODE_MAX_RETRIES"] == "0"


@pytest.mark.cli
async def test_stop_interrupts_quickly_and_keeps_partial_text(scripted_model, workspace):
    inp = make_input(workspace, "/slow 100")
    result = TurnResult()
    chunks: list[Chunk] = []
    stopped_at = None
    async with asyncio.timeout(30):
        async for chunk in SdkBackend().stream(inp, result):
            chunks.append(chunk)
            if chunk["type"] == "text-delta" and stopped_at is None:
                stopped_at = time.monotonic()
                inp.stop.set()
    assert stopped_at is not None and time.monotonic() - stopped_at < 3.0
    assert result.stopped
    assert text_of(chunks).startswith("w0 ")
    assert len(text_of(chunks).split()) < 40  # far from the full 40 words


@pytest.mark.cli
@pytest.mark.parametrize(
    ("directive", "kind"),
    [
        ("/error 401", ErrorKind.AUTHENTICATION),
        ("/error 429", ErrorKind.RATE_LIMITED),
        ("/toolong", ErrorKind.PROMPT_TOO_LONG),
    ],
)
async def test_errors_are_classified(scripted_model, workspace, directive, kind):
    mark = scripted_model.request_count
    result = TurnResult()
    with pytest.raises(AgentError) as caught:
        await backend_chunks(make_input(workspace, directive), result)
    assert caught.value.kind == kind
    assert "sk-ant" not in caught.value.message and "Traceback" not in caught.value.message
    assert len(requests_since(scripted_model, mark)) == 1  # the CLI itself does not retry
    assert result.agent_session_id


@pytest.mark.cli
async def test_runtime_error_turn_ends_with_one_error_chunk(scripted_model, workspace):
    result = TurnResult()
    chunks = await collect(run_turn(make_input(workspace, "/error 401"), result), timeout=40)
    assert chunk_types(chunks) == ERROR_TURN
    assert result.error is not None and result.error.kind == ErrorKind.AUTHENTICATION


@pytest.mark.cli
async def test_heartbeats_while_the_cli_is_silent_lose_nothing(scripted_model, workspace, settings):
    # The runtime wraps every __anext__ in a task and times it out for heartbeats (lesson 1);
    # the backend's driver task keeps the CLI client in one task, so nothing breaks or is lost.
    settings.AGENT_HEARTBEAT_SECONDS = 0.05
    result = TurnResult()
    chunks = await collect(run_turn(make_input(workspace, "/slow 200 5"), result), timeout=40)
    assert any(c["type"] == "data-heartbeat" for c in chunks)
    assert chunk_types(chunks) == TEXT_TURN
    assert text_of(chunks) == "w0 w1 w2 w3 w4 "
    assert result.error is None


@pytest.mark.cli
async def test_next_turn_resumes_the_cli_session(scripted_model, workspace):
    first = TurnResult()
    await backend_chunks(make_input(workspace, "remember the word pineapple"), first)
    assert first.agent_session_id
    mark = scripted_model.request_count
    second = TurnResult()
    chunks = await backend_chunks(
        make_input(workspace, "what was the word?", agent_session_id=first.agent_session_id), second
    )
    assert 'you said "what was the word?"' in text_of(chunks)
    assert second.agent_session_id == first.agent_session_id
    [request] = requests_since(scripted_model, mark)
    assert "pineapple" in json.dumps(request["body"]["messages"])  # the earlier turn was resumed

    # A transcript that is gone (e.g. a wiped workspace) falls back to a fresh CLI session.
    third = TurnResult()
    chunks = await backend_chunks(
        make_input(workspace, "still there?", agent_session_id=str(uuid.uuid4())), third
    )
    assert 'you said "still there?"' in text_of(chunks)
    assert third.agent_session_id and third.agent_session_id != first.agent_session_id


@pytest.mark.cli
async def test_attachments_reach_the_model(scripted_model, workspace):
    mark = scripted_model.request_count
    attachments = [
        Attachment(name="dot.png", media_type="image/png", data=PNG_1PX),
        Attachment(name="notes.txt", media_type="text/plain", data=b"attached notes"),
    ]
    chunks = await backend_chunks(
        make_input(workspace, "look at these", attachments=attachments), TurnResult()
    )
    assert chunk_types(chunks)[-1] == "finish-step"
    assert (workspace / "uploads" / "notes.txt").read_bytes() == b"attached notes"
    [request] = requests_since(scripted_model, mark)
    content = request["body"]["messages"][-1]["content"]
    assert any(block.get("type") == "image" for block in content)
    assert "uploads/notes.txt" in json.dumps(content)


# ---------------------------------------------------------------------------------------------
# Translation of SDK messages (no CLI): lessons 2, 5 and 9
# ---------------------------------------------------------------------------------------------


def _event(event: dict) -> StreamEvent:
    return StreamEvent(uuid=uuid.uuid4().hex, session_id="s1", event=event)


def _tool_message(*ids: str) -> list:
    msgs = [_event({"type": "message_start", "message": {"id": "m1", "usage": {"input_tokens": 5}}})]
    for index, tid in enumerate(ids):
        msgs.append(
            _event(
                {
                    "type": "content_block_start",
                    "index": index,
                    "content_block": {"type": "tool_use", "id": tid, "name": "Bash", "input": {}},
                }
            )
        )
        msgs.append(
            AssistantMessage(
                content=[ToolUseBlock(id=tid, name="Bash", input={"command": f"echo {tid}"})],
                model="m",
                message_id="m1",
            )
        )
        msgs.append(_event({"type": "content_block_stop", "index": index}))
    msgs.append(
        _event({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 7}})
    )
    msgs.append(_event({"type": "message_stop"}))
    return msgs


def _feed(translator: SdkTranslator, messages: list) -> list[Chunk]:
    out: list[Chunk] = []
    for message in messages:
        out += translator.feed(message)
    return out


def test_parallel_tool_calls_stay_open_until_their_results():
    translator = SdkTranslator()
    chunks = _feed(translator, _tool_message("t1", "t2"))
    assert [c["type"] for c in chunks].count("tool-input-available") == 2
    assert "finish-step" not in [c["type"] for c in chunks]  # not closed early
    chunks = _feed(translator, [UserMessage(content=[ToolResultBlock(tool_use_id="t2", content="two")])])
    assert [c["type"] for c in chunks] == ["tool-output-available"]
    chunks = _feed(
        translator, [UserMessage(content=[ToolResultBlock(tool_use_id="t1", content="one", is_error=True)])]
    )
    assert [c["type"] for c in chunks] == ["tool-output-error", "finish-step"]
    # A repeated result or tool_use is never emitted twice.
    assert (
        _feed(translator, [UserMessage(content=[ToolResultBlock(tool_use_id="t1", content="again")])]) == []
    )
    assert translator.usage.input_tokens == 5 and translator.usage.output_tokens == 7


def test_stream_end_closes_every_open_tool_call():
    translator = SdkTranslator()
    _feed(translator, _tool_message("t1", "t2"))
    _feed(translator, [UserMessage(content=[ToolResultBlock(tool_use_id="t1", content="one")])])
    closing = translator.finish()
    assert [(c["type"], c.get("toolCallId")) for c in closing] == [
        ("tool-output-error", "t2"),
        ("finish-step", None),
    ]


def test_synthetic_error_text_is_not_shown_and_classified():
    translator = SdkTranslator()
    synthetic = AssistantMessage(
        content=[TextBlock(text="Invalid API key · Fix external API key")],
        model="<synthetic>",
        error="authentication_failed",
    )
    assert translator.feed(synthetic) == []
    result = ResultMessage(subtype="success", duration_ms=1, duration_api_ms=0, is_error=True, num_turns=1,
                           session_id="s1", result="Invalid API key · Fix external API key",
                           api_error_status=401)  # fmt: skip
    translator.feed(result)
    assert translator.error().kind == ErrorKind.AUTHENTICATION


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("Prompt is too long", ErrorKind.PROMPT_TOO_LONG),
        ("You've hit your limit · resets 4pm (America/Los_Angeles)", ErrorKind.RATE_LIMITED),
    ],
)
def test_successful_result_carrying_an_error_text(text, kind):
    translator = SdkTranslator()
    translator.feed(
        ResultMessage(
            subtype="success",
            duration_ms=1,
            duration_api_ms=0,
            is_error=False,
            num_turns=1,
            session_id="s1",
            result=text,
        )
    )
    error = translator.error()
    assert error is not None and error.kind == kind
    if kind == ErrorKind.RATE_LIMITED:
        assert error.resets_at is not None and error.resets_at > dt.datetime.now(dt.UTC)


def test_model_answer_that_mentions_limits_is_not_an_error():
    translator = SdkTranslator()
    answer = "Prompt is too long errors happen when the context exceeds the window."
    _feed(translator, [
        _event({"type": "message_start", "message": {"id": "m1", "usage": {}}}),
        _event({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        _event({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": answer}}),
        _event({"type": "content_block_stop", "index": 0}),
        _event({"type": "message_stop"}),
    ])  # fmt: skip
    translator.feed(
        ResultMessage(
            subtype="success",
            duration_ms=1,
            duration_api_ms=0,
            is_error=False,
            num_turns=1,
            session_id="s1",
            result=answer,
        )
    )
    assert translator.error() is None


def test_rejected_rate_limit_event_carries_the_reset_time():
    translator = SdkTranslator()
    resets = int(time.time()) + 3600
    translator.feed(
        RateLimitEvent(
            rate_limit_info=RateLimitInfo(status="rejected", resets_at=resets, rate_limit_type="five_hour"),
            uuid="u",
            session_id="s1",
        )
    )
    translator.feed(
        ResultMessage(
            subtype="success",
            duration_ms=1,
            duration_api_ms=0,
            is_error=True,
            num_turns=1,
            session_id="s1",
            result="limit",
        )
    )
    error = translator.error()
    assert error.kind == ErrorKind.RATE_LIMITED and int(error.resets_at.timestamp()) == resets


def test_empty_input_breaker_ends_the_turn():
    from agents.sandbox import EmptyInputBreaker

    translator = SdkTranslator(breaker=EmptyInputBreaker(limit=2))
    translator.feed(
        AssistantMessage(content=[ToolUseBlock(id="e1", name="Read", input={})], model="m", message_id="x1")
    )
    with pytest.raises(AgentError) as caught:
        translator.feed(
            AssistantMessage(
                content=[ToolUseBlock(id="e2", name="Read", input={})], model="m", message_id="x1"
            )
        )
    assert caught.value.kind == ErrorKind.POLICY


async def test_tool_policy_hook_and_can_use_tool(workspace):
    policy = ToolPolicy(workspace, limiter=SubagentLimiter(limit=1))
    denied = await policy.pre_tool_use(
        {"tool_name": "Read", "tool_input": {"file_path": "/etc/shadow"}}, "t1", None
    )
    assert denied["hookSpecificOutput"]["permissionDecision"] == "deny"
    assert "outside the workspace" in denied["hookSpecificOutput"]["permissionDecisionReason"]
    assert (
        await policy.pre_tool_use({"tool_name": "Read", "tool_input": {"file_path": "notes.txt"}}, "t2", None)
        == {}
    )

    class Ctx:
        def __init__(self, tool_use_id):
            self.tool_use_id = tool_use_id

    # Sub-agents (Task and Agent): one slot; the hook and the callback see one decision per call.
    assert await policy.pre_tool_use({"tool_name": "Agent", "tool_input": {"prompt": "x"}}, "a1", None) == {}
    assert (await policy.can_use_tool("Agent", {"prompt": "x"}, Ctx("a1"))).behavior == "allow"
    assert (await policy.can_use_tool("Task", {"prompt": "y"}, Ctx("a2"))).behavior == "deny"
    await policy.post_tool_use({"tool_name": "Agent"}, "a1", None)
    assert (await policy.can_use_tool("Task", {"prompt": "y"}, Ctx("a3"))).behavior == "allow"

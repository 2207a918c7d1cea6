"""The real Messages API stream grammar through both backends (issue "Production fidelity", part 2).

The scripted model sends what the real API sends (docs/scripted_model.md, "Stream grammar"):
pings and cumulative ``message_delta`` usage on every stream, and per directive signed and
redacted thinking, server tools (web search) with citations, event and block types newer than the
client, a mid-stream ``event: error``, ``max_tokens`` inside a tool call, ``pause_turn``,
``refusal`` and ``model_context_window_exceeded``. Each is run through ``run_turn`` on the ``api``
backend (real ``anthropic`` client) and the ``sdk`` backend (real Claude Code CLI), asserting on
the chunks users get and, for thinking, on the history sent back to the model.
"""

from __future__ import annotations

import pytest

from agents.adapter import CUT_TOOL_CALL, REFUSAL_MESSAGE
from agents.errors import ErrorKind
from agents.turn import HistoryMessage
from tests.agents.conftest import (
    PARTIAL_THEN_ERROR,
    TEXT_TURN,
    chunk_types,
    requests_since,
    run_turn_chunks,
    text_of,
    turn_input,
)

BACKENDS = [pytest.param("api", id="api"), pytest.param("sdk", id="sdk", marks=pytest.mark.cli)]

THINK_TOOL_TURN = [
    "start",
    "start-step", "reasoning-start", "reasoning-delta", "reasoning-end",
    "tool-input-start", "tool-input-delta", "tool-input-available", "tool-output-available", "finish-step",
    "start-step", "text-start", "text-delta", "text-end", "finish-step",
    "data-usage", "finish",
]  # fmt: skip
SEARCH_TURN = [
    "start", "start-step",
    "tool-input-start", "tool-input-delta", "tool-input-available", "tool-output-available",
    "text-start", "text-delta", "source-url", "text-delta", "text-end",
    "finish-step", "data-usage", "finish",
]  # fmt: skip


async def run(server, workspace, backend: str, text: str, **extra):
    """(chunks, result, the main-turn requests the scripted model got)."""
    mark = server.request_count
    chunks, result = await run_turn_chunks(turn_input(workspace, text, backend=backend, **extra), timeout=90)
    requests = [r for r in requests_since(server, mark) if r.get("directive") != "side"]
    return chunks, result, requests


def terminal(chunks):
    ends = [c for c in chunks if c["type"] in ("finish", "error")]
    assert len(ends) == 1 and ends[0] is chunks[-1]
    return ends[0]


@pytest.mark.parametrize("backend", BACKENDS)
async def test_usage_is_the_final_cumulative_figure_not_a_sum(scripted_model, workspace, backend):
    """message_start reports the input (and 1 output token); message_delta repeats the input and
    the final output: the turn's usage is the sum over model calls of the *final* figures."""
    chunks, result, requests = await run(scripted_model, workspace, backend, "grammar usage /long 7")
    assert chunk_types(chunks) == TEXT_TURN
    assert [r["directive"] for r in requests] == ["long"]
    final = requests[0]["usage"]
    assert result.usage.output_tokens == final["output_tokens"] == 7
    assert result.usage.input_tokens == final["input_tokens"]
    assert result.usage.cache_read_tokens == final["cache_read_input_tokens"]
    assert result.usage.cache_write_tokens == final["cache_creation_input_tokens"]
    usage = next(c for c in chunks if c["type"] == "data-usage")["data"]
    assert usage["outputTokens"] == 7 and usage["inputTokens"] == final["input_tokens"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("directive", ["/signed-think", "/redacted-think"])
async def test_thinking_goes_back_intact(scripted_model, workspace, backend, directive):
    chunks, result, requests = await run(scripted_model, workspace, backend, f"grammar {directive}")
    assert chunk_types(chunks) == THINK_TOOL_TURN, chunk_types(chunks)
    assert result.error is None
    follow_up = [r for r in requests if r["directive"] == "tool_result"]
    assert len(follow_up) == 1
    returned = follow_up[0]["thinking_returned"]
    kinds = ["thinking"] + (["redacted_thinking"] if directive == "/redacted-think" else [])
    assert [b["type"] for b in returned] == kinds
    assert all(b["valid"] for b in returned)
    assert (
        returned[0]["thinking"] == "I should run a command to check before answering."
        and returned[0]["signature"]
    )
    # the assistant message sent back starts with the thinking blocks, then its tool_use
    sent = next(m for m in reversed(follow_up[0]["body"]["messages"]) if m["role"] == "assistant")
    assert [b["type"] for b in sent["content"]] == [*kinds, "tool_use"]
    assert f"thinking blocks returned intact: {', '.join(kinds)}" in text_of(chunks)


async def test_changed_thinking_is_rejected_like_the_real_api(scripted_model):
    import anthropic

    client = anthropic.AsyncAnthropic(base_url=scripted_model.url, api_key="sk-test", max_retries=0)
    history = [
        {"role": "user", "content": "hi"},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "edited", "signature": "bm90LXZhbGlk"},
                {"type": "text", "text": "ok"},
            ],
        },
        {"role": "user", "content": "again"},
    ]
    with pytest.raises(anthropic.BadRequestError, match="Invalid `signature`"):
        await client.messages.create(model="m", max_tokens=10, messages=history)
    history[1]["content"][0] = {"type": "redacted_thinking", "data": "Zm9yZ2Vk"}
    with pytest.raises(anthropic.BadRequestError, match="Invalid `data`"):
        await client.messages.create(model="m", max_tokens=10, messages=history)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_web_search_shows_as_provider_executed_tool_with_sources(scripted_model, workspace, backend):
    chunks, result, _ = await run(scripted_model, workspace, backend, "grammar /websearch")
    assert chunk_types(chunks) == SEARCH_TURN, chunk_types(chunks)
    assert result.error is None and chunks[-1]["finishReason"] == "stop"
    start = next(c for c in chunks if c["type"] == "tool-input-start")
    assert start["toolName"] == "web_search" and start["providerExecuted"] is True
    assert start["toolCallId"].startswith("srvtoolu_")
    available = next(c for c in chunks if c["type"] == "tool-input-available")
    assert available["input"] == {"query": "scripted model offline"} and available["providerExecuted"] is True
    output = next(c for c in chunks if c["type"] == "tool-output-available")
    assert output["output"][0] == {"url": "https://example.com/scripted-model", "title": "The scripted model"}
    source = next(c for c in chunks if c["type"] == "source-url")
    assert source["url"] == "https://example.com/scripted-model" and source["title"] == "The scripted model"
    assert text_of(chunks) == "According to the search, the scripted model answers offline."


@pytest.mark.parametrize("backend", BACKENDS)
async def test_document_citations_become_source_documents(scripted_model, workspace, backend):
    chunks, result, _ = await run(scripted_model, workspace, backend, "grammar /citations")
    types = chunk_types(chunks)
    assert types == [
        "start",
        "start-step",
        "text-start",
        "text-delta",
        "source-document",
        "text-delta",
        "text-end",
        "finish-step",
        "data-usage",
        "finish",
    ]
    source = next(c for c in chunks if c["type"] == "source-document")
    assert source["title"] == "Scripted model notes"
    assert text_of(chunks) == "The notes say it runs offline." and result.error is None


@pytest.mark.parametrize("backend", BACKENDS)
async def test_unknown_events_and_block_types_are_ignored(scripted_model, workspace, backend):
    """An unknown event name and a trailing ``future_block_type`` block: the answer stands.
    (sdk: the CLI reports ``error_during_execution`` with an ``[ede_diagnostic]`` note although
    ``terminal_reason`` is ``completed``; that used to end the turn in "Something went wrong".)"""
    chunks, result, _ = await run(scripted_model, workspace, backend, "grammar /future")
    assert chunk_types(chunks) == TEXT_TURN, chunk_types(chunks)
    assert result.error is None and terminal(chunks)["finishReason"] == "stop"
    assert text_of(chunks) == "Known text before the future."


@pytest.mark.parametrize("backend", BACKENDS)
async def test_midstream_error_after_content(scripted_model, fast_retries, workspace, backend):
    chunks, result, requests = await run(scripted_model, workspace, backend, "grammar /midstream-error")
    assert chunk_types(chunks) == PARTIAL_THEN_ERROR, chunk_types(chunks)
    assert text_of(chunks).startswith("This answer starts streaming")
    assert result.error is not None and result.error.kind == ErrorKind.OVERLOADED
    assert terminal(chunks)["errorText"] == result.error.message
    assert len(requests) == 1  # never retried after content reached the user


@pytest.mark.parametrize("backend", BACKENDS)
async def test_max_tokens_inside_a_tool_call_never_runs_it(scripted_model, fast_retries, workspace, backend):
    chunks, result, _ = await run(scripted_model, workspace, backend, "grammar /maxtokens-tool")
    call_id = next(c["toolCallId"] for c in chunks if c["type"] == "tool-input-start")
    outputs = [c for c in chunks if c.get("toolCallId") == call_id and c["type"].startswith("tool-output")]
    assert [c["type"] for c in outputs] == ["tool-output-error"]
    assert text_of(chunks).startswith("I'll run a command.")
    if backend == "api":
        assert outputs[0]["errorText"] == CUT_TOOL_CALL
        assert "tool-input-available" not in chunk_types(chunks)  # the cut input is never complete
        assert result.error is not None and result.error.kind == ErrorKind.MAX_OUTPUT_TOKENS
    else:  # the CLI rejects the cut JSON itself and lets the model answer the error
        assert "could not be parsed as JSON" in outputs[0]["errorText"]
        assert result.error is None and terminal(chunks)["type"] == "finish"


@pytest.mark.parametrize("backend", BACKENDS)
async def test_pause_turn_does_not_fail_the_turn(scripted_model, workspace, backend):
    chunks, result, requests = await run(scripted_model, workspace, backend, "grammar /pause")
    assert result.error is None and terminal(chunks)["finishReason"] == "stop"
    assert text_of(chunks).startswith("Let me search for that.")
    output = next(c for c in chunks if c["type"] == "tool-output-available")
    assert output["providerExecuted"] is True
    if backend == "api":  # continued by sending the paused turn back, as Anthropic documents
        assert [r["directive"] for r in requests] == ["pause", "pause_continue"]
        sent = requests[1]["body"]["messages"][-1]
        assert sent["role"] == "assistant"
        assert [b["type"] for b in sent["content"]] == ["text", "server_tool_use", "web_search_tool_result"]
        assert sent["content"][2]["content"][0]["encrypted_content"] == "c2NyaXB0ZWQtcmVzdWx0LTE="  # verbatim
        assert text_of(chunks).endswith(
            "The search finished after the pause: the scripted model answers offline."
        )
        assert chunk_types(chunks).count("start-step") == 2
    else:  # the CLI ends its turn at pause_turn (terminal_reason completed)
        assert [r["directive"] for r in requests] == ["pause"]


@pytest.mark.parametrize("backend", BACKENDS)
async def test_refusal_is_an_answer_not_an_error(scripted_model, workspace, backend):
    chunks, result, _ = await run(scripted_model, workspace, backend, "grammar /refusal")
    end = terminal(chunks)
    assert end == {"type": "finish", "finishReason": "content-filter", "messageMetadata": {"refusal": True}}
    assert result.error is None and result.finish_reason == "content-filter"
    statuses = [c["data"] for c in chunks if c["type"] == "data-status"]
    assert statuses == [{"code": "refusal", "message": REFUSAL_MESSAGE}]
    assert text_of(chunks).startswith("I can help with many things, but")


@pytest.mark.parametrize("backend", BACKENDS)
async def test_context_window_exceeded_is_prompt_too_long(scripted_model, fast_retries, workspace, backend):
    chunks, result, _ = await run(scripted_model, workspace, backend, "grammar /ctx-exceeded")
    assert chunk_types(chunks)[-2:] == ["data-usage", "error"]
    assert result.error is not None and result.error.kind == ErrorKind.PROMPT_TOO_LONG
    assert "tool-" not in " ".join(chunk_types(chunks)) and not text_of(chunks)


async def test_context_window_exceeded_climbs_the_recovery_ladder(scripted_model, workspace, settings):
    """api: the full history is over the limit, the compacted one is not (``/ctx-exceeded N``)."""
    settings.AGENT_COMPACT_KEEP_CHARS = 500
    history = []
    for i in range(6):
        history.append(
            HistoryMessage(role="user", parts=[{"type": "text", "text": f"question {i} " + "x" * 900}])
        )
        history.append(
            HistoryMessage(role="assistant", parts=[{"type": "text", "text": f"answer {i} " + "y" * 900}])
        )
    chunks, result, requests = await run(
        scripted_model, workspace, "api", "grammar /ctx-exceeded 4000", history=history
    )
    statuses = [c["data"]["code"] for c in chunks if c["type"] == "data-status"]
    assert statuses[0] == "compacting-context"
    assert result.error is None and terminal(chunks)["finishReason"] == "stop"
    assert requests[0]["directive"] == "ctx_exceeded" and requests[-1]["directive"] == "echo"

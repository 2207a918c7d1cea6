"""Upstream faults through the scripted model (both backends where it applies): a stream cut
mid-text and mid-tool-call, 5xx/529 bursts (recovering and persistent), 429 with retry-after, and
a stalled upstream. Each turn must end within a bounded time with the client told, the output
produced before the fault persisted exactly once, the lock free and the next turn working."""

from __future__ import annotations

import time
import uuid

import pytest

from chat.models import ChatMessage
from tests.agents.conftest import requests_since
from tests.reliability.conftest import FAULT_TIMEOUT, assert_recovered, run_ws_turn, sequences_ok, text_of

pytestmark = pytest.mark.django_db(transaction=True)


def turn_requests(server, mark: int) -> list[dict]:
    """Messages requests of turns (title side requests have a tiny max_tokens)."""
    return [r for r in requests_since(server, mark) if (r.get("body") or {}).get("max_tokens", 0) > 64]


@pytest.fixture(params=["api", pytest.param("sdk", marks=pytest.mark.cli)])
def backend(request, settings, scripted_model, tmp_path):
    settings.AGENT_BACKEND = request.param
    settings.AGENT_WORKSPACE_ROOT = tmp_path / "workspaces"
    settings.AGENT_MAX_RETRIES = 2
    settings.AGENT_RETRY_BASE_DELAY = 0.01
    settings.AGENT_RETRY_MAX_DELAY = 0.05
    return request.param


@pytest.fixture
def api(settings, scripted_model, tmp_path):
    settings.AGENT_BACKEND = "api"
    settings.AGENT_WORKSPACE_ROOT = tmp_path / "workspaces"
    settings.AGENT_MAX_RETRIES = 2
    settings.AGENT_RETRY_BASE_DELAY = 0.01
    settings.AGENT_RETRY_MAX_DELAY = 0.05
    return "api"


async def test_drop_mid_text(backend, connect, user):
    ws = await connect()
    chat_id = str(uuid.uuid4())
    frames, chunks, elapsed = await run_ws_turn(ws, chat_id, "/drop")
    assert elapsed < FAULT_TIMEOUT and sequences_ok(frames)
    assert frames[-1]["type"] == "end" and chunks[-1]["type"] == "error", chunks[-3:]
    seen = text_of(chunks)
    if backend == "api":
        assert seen.startswith("This reply ")  # content reached the client: never retried (lesson 5)
    else:
        # The CLI usually drops a broken message whole (and it may then be retried); under load it
        # sometimes passes the partial text on first, exactly as the api backend does. Either way
        # what the client saw is what is persisted, once (assert_recovered).
        assert seen == "" or seen.startswith("This reply "), seen
    msgs = await assert_recovered(ws, chat_id, user, seen_text=seen)
    kinds = (
        [("user", "normal")]
        + ([("assistant", "normal")] if seen else [])
        + [("assistant", "retryable_error")]
    )
    assert [(m.role, m.kind) for m in msgs] == kinds
    assert msgs[-1].metadata["code"] == "connection"


async def test_drop_mid_tool_call(api, connect, user, scripted_model):
    ws = await connect()
    chat_id = str(uuid.uuid4())
    mark = scripted_model.request_count
    frames, chunks, _ = await run_ws_turn(ws, chat_id, "/droptool")
    assert chunks[-1]["type"] == "error"
    assert len(turn_requests(scripted_model, mark)) == 1  # no retry after content, no tool run
    assert "never-runs" not in str([c for c in chunks if c["type"].startswith("tool-output")])
    msgs = await assert_recovered(ws, chat_id, user, seen_text=text_of(chunks))
    assistant = msgs[1]
    tool_parts = [p for p in assistant.parts if p["type"].startswith("tool-")]
    # No tool call is left spinning: a half-streamed call is either absent or closed as an error.
    assert all(p["state"] == "output-error" for p in tool_parts), tool_parts
    assert msgs[-1].kind == ChatMessage.Kind.RETRYABLE_ERROR


@pytest.mark.parametrize("status", [500, 503, 529])
async def test_5xx_burst_recovers(api, connect, user, scripted_model, status):
    ws = await connect()
    chat_id = str(uuid.uuid4())
    mark = scripted_model.request_count
    frames, chunks, _ = await run_ws_turn(ws, chat_id, f"/flaky {status} 2 {uuid.uuid4().hex}")
    assert chunks[-1] == {"type": "finish", "finishReason": "stop"}
    assert len(turn_requests(scripted_model, mark)) == 3
    statuses = [c for c in chunks if c["type"] == "data-status"]
    assert len(statuses) == 2
    seen = text_of(chunks)
    assert seen.startswith("Recovered after 2 failed attempts")
    msgs = await assert_recovered(ws, chat_id, user, seen_text=seen)
    assert [(m.role, m.kind) for m in msgs] == [("user", "normal"), ("assistant", "normal")]


async def test_529_burst_gives_up(backend, connect, user, scripted_model):
    ws = await connect()
    chat_id = str(uuid.uuid4())
    frames, chunks, elapsed = await run_ws_turn(ws, chat_id, f"/flaky 529 50 {uuid.uuid4().hex}")
    assert elapsed < FAULT_TIMEOUT
    assert chunks[-1]["type"] == "error" and "overloaded" in chunks[-1]["errorText"].lower()
    msgs = await assert_recovered(ws, chat_id, user)
    assert msgs[-1].kind == ChatMessage.Kind.RETRYABLE_ERROR and msgs[-1].metadata["code"] == "overloaded"
    assert not [m for m in msgs if m.role == "assistant" and m.kind == "normal"]


async def test_429_retry_after_is_honoured(api, connect, user, scripted_model, settings):
    settings.AGENT_RETRY_MAX_DELAY = 5.0  # the cap allows the upstream's retry-after: 1
    ws = await connect()
    chat_id = str(uuid.uuid4())
    frames, chunks, elapsed = await run_ws_turn(ws, chat_id, f"/flaky 429 1 {uuid.uuid4().hex}")
    assert chunks[-1]["type"] == "finish"
    assert elapsed >= 0.95, elapsed  # waited for retry-after, not the 10 ms backoff
    await assert_recovered(ws, chat_id, user, seen_text=text_of(chunks))


async def test_429_beyond_the_cap_is_reported(api, connect, user):
    ws = await connect()
    chat_id = str(uuid.uuid4())
    frames, chunks, elapsed = await run_ws_turn(ws, chat_id, "/error 429")
    assert elapsed < 5 and chunks[-1]["type"] == "error"
    msgs = await assert_recovered(ws, chat_id, user)
    assert msgs[-1].metadata["code"] == "rate_limited" and msgs[-1].kind == ChatMessage.Kind.RETRYABLE_ERROR


async def test_stalled_upstream_ends_the_turn(backend, connect, user, settings):
    settings.AGENT_HEARTBEAT_SECONDS = 0.5
    settings.AGENT_STREAM_IDLE_TIMEOUT = 2.0
    ws = await connect()
    chat_id = str(uuid.uuid4())
    started = time.monotonic()
    frames, chunks, elapsed = await run_ws_turn(ws, chat_id, "/stall 60000")
    assert elapsed < 2.0 + 8.0, elapsed  # idle timeout + the runtime's stop grace, not 60 s
    assert time.monotonic() - started >= 2.0
    assert chunks[-1]["type"] == "error" and "stopped responding" in chunks[-1]["errorText"]
    assert "data-heartbeat" in [c["type"] for c in chunks]  # the client was kept informed meanwhile
    seen = text_of(chunks)
    assert seen.startswith("This reply ")
    msgs = await assert_recovered(ws, chat_id, user, seen_text=seen)
    assert [(m.role, m.kind) for m in msgs] == [
        ("user", "normal"),
        ("assistant", "normal"),
        ("assistant", "retryable_error"),
    ]
    assert msgs[-1].metadata["code"] == "upstream_stalled"

"""Tool approval and plan mode through the websocket door, on both backends (real run_turn, the
scripted model, the real Claude Code CLI for ``sdk``): the AI SDK 7 chunks and the answer the way
a stock ``Chat`` sends it (``addToolApprovalResponse``)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from chat.models import ChatMessage, ChatSession, ChatTurn, ToolRule
from chat.runtime import turn_stop, turn_wait_idle
from tests.chat.conftest import answer_frame, chunks_of, send_frame, text_of

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(params=["api", pytest.param("sdk", marks=pytest.mark.cli)])
def backend(request, settings, scripted_model, tmp_path):
    settings.AGENT_BACKEND = request.param
    settings.AGENT_WORKSPACE_ROOT = tmp_path / "workspaces"
    return request.param


async def chat_with_mode(user, mode: str) -> str:
    chat_id = str(uuid.uuid4())
    await ChatSession.objects.acreate(owner=user, client_id=chat_id, tool_mode=mode)
    return chat_id


async def until_approval(ws, chat_id: str, text: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Send ``text``; the request's stream ends right after its ``tool-approval-request``."""
    frame = send_frame(chat_id, text)
    await ws.send(frame)
    frames = await ws.frames_until_done(frame["requestId"], timeout=60)
    assert frames[-1]["type"] == "end", frames[-3:]
    chunks = chunks_of(frames)
    assert chunks[-1]["type"] == "tool-approval-request", [c["type"] for c in chunks]
    shown = [c for c in chunks if c["type"] == "tool-input-available"]
    assert shown and shown[-1]["toolCallId"] == chunks[-1]["toolCallId"]
    return frames, chunks[-1]


async def answer(ws, chat_id: str, request: dict[str, Any], **kw: Any) -> list[dict[str, Any]]:
    frame = answer_frame(chat_id, request, **kw)
    await ws.send(frame)
    frames = await ws.frames_until_done(frame["requestId"], timeout=60)
    assert frames[-1]["type"] == "end", frames[-3:]
    return frames


async def assistant_message(chat_id: str, user) -> ChatMessage:
    msgs = [
        m
        async for m in ChatMessage.objects.filter(session__owner=user, session__client_id=chat_id).order_by(
            "sequence"
        )
    ]
    assistants = [m for m in msgs if m.role == "assistant" and m.kind == ChatMessage.Kind.NORMAL]
    assert len(assistants) == 1, [(m.role, m.kind) for m in msgs]
    return assistants[0]


async def test_approved_call_runs_in_the_same_turn_and_message(backend, connect, user):
    ws = await connect()
    chat_id = await chat_with_mode(user, "ask")
    first, request = await until_approval(ws, chat_id, "/tool bash echo approved-run")
    rest = await answer(ws, chat_id, request, approved=True)
    chunks = chunks_of(rest)
    assert chunks[0] == {
        "type": "tool-approval-response",
        "approvalId": request["approvalId"],
        "approved": True,
    }
    assert chunks[-1]["type"] == "finish"
    output = next(c for c in chunks if c["type"] == "tool-output-available")
    assert output["toolCallId"] == request["toolCallId"] and "approved-run" in str(output["output"])
    assert "Tool result" in text_of(chunks)
    # a send's frames count from 0; ``turnSequence`` carries on the turn's log after the request
    assert [f["sequence"] for f in rest if f["type"] == "chunk"] == list(range(len(chunks)))
    assert rest[1]["turnSequence"] == first[-2]["sequence"] + 1
    await turn_wait_idle()
    message = await assistant_message(chat_id, user)
    tool = next(p for p in message.parts if p["type"] == "tool-Bash")
    assert tool["state"] == "output-available" and tool["approval"]["approved"] is True
    assert await ChatTurn.objects.filter(session__client_id=chat_id).acount() == 1


async def test_denied_call_never_runs_and_the_model_reads_the_reason(backend, connect, user, settings):
    ws = await connect()
    chat_id = await chat_with_mode(user, "ask")
    _, request = await until_approval(ws, chat_id, "/tool bash echo denied-run > marker.txt")
    chunks = chunks_of(await answer(ws, chat_id, request, approved=False, reason="not today"))
    assert chunks[0]["approved"] is False and chunks[0]["reason"] == "not today"
    assert {"type": "tool-output-denied", "toolCallId": request["toolCallId"]} in chunks
    assert not [c for c in chunks if c["type"] == "tool-output-available"]
    assert "not today" in text_of(chunks)  # the model got the denial and its reason
    assert chunks[-1]["type"] == "finish"
    await turn_wait_idle()
    session = await ChatSession.objects.aget(owner=user, client_id=chat_id)
    assert not (settings.AGENT_WORKSPACE_ROOT / str(session.pk) / "marker.txt").exists()
    tool = next(p for p in (await assistant_message(chat_id, user)).parts if p["type"] == "tool-Bash")
    assert tool["state"] == "output-denied" and tool["approval"] == {
        "id": request["approvalId"],
        "approved": False,
        "reason": "not today",
    }


async def test_a_pending_approval_survives_a_reconnect_and_any_tab_answers(backend, connect, user):
    tab1 = await connect()
    chat_id = await chat_with_mode(user, "ask")
    first, request = await until_approval(tab1, chat_id, "/tool bash echo from-tab-two")
    await tab1.close()
    tab2 = await connect()  # a refresh: the page resumes the chat
    await tab2.send({"type": "resume", "requestId": "r1", "id": chat_id})
    replay = await tab2.frames_until_done("r1")
    assert replay[-1]["type"] == "end"
    assert [f["chunk"] for f in replay if f["type"] == "chunk"] == chunks_of(first)
    # the history a reload reads shows the pending request too
    tool = next(p for p in (await assistant_message(chat_id, user)).parts if p["type"] == "tool-Bash")
    assert tool["state"] == "approval-requested" and tool["approval"] == {"id": request["approvalId"]}
    chunks = chunks_of(await answer(tab2, chat_id, request, approved=True))
    assert "from-tab-two" in str(next(c for c in chunks if c["type"] == "tool-output-available")["output"])


async def test_an_unanswered_approval_expires_as_a_denial(backend, connect, user, settings):
    settings.TOOL_APPROVAL_TIMEOUT_SECONDS = 1.0
    ws = await connect()
    chat_id = await chat_with_mode(user, "ask")
    first, request = await until_approval(ws, chat_id, "/tool bash echo too-late")
    await turn_wait_idle(timeout=60)
    await ws.send({"type": "resume", "requestId": "r2", "id": chat_id, "lastSequence": first[-2]["sequence"]})
    chunks = chunks_of(await ws.frames_until_done("r2"))
    assert chunks[0]["type"] == "tool-approval-response" and chunks[0]["approved"] is False
    assert "expired" in chunks[0]["reason"]
    assert {"type": "tool-output-denied", "toolCallId": request["toolCallId"]} in chunks
    assert chunks[-1]["type"] == "finish"
    # a late answer is refused clearly
    late = answer_frame(chat_id, request, approved=True)
    await ws.send(late)
    frames = await ws.frames_until_done(late["requestId"])
    assert frames[-1]["type"] == "error" and frames[-1]["code"] == "invalid_request"
    assert "expired or was already answered" in frames[-1]["errorText"]


async def test_stop_while_waiting_ends_the_turn_cleanly(backend, connect, user):
    ws = await connect()
    chat_id = await chat_with_mode(user, "ask")
    frame = send_frame(chat_id, "/tool bash echo never")
    await ws.send(frame)
    await ws.frames_until_done(frame["requestId"], timeout=60)
    # the request ended at the approval request: stop is the chat's cancel (REST), or an abort
    # of a request that follows the turn (a resume)
    await ws.send({"type": "resume", "requestId": "r3", "id": chat_id, "lastSequence": 0})
    await asyncio.sleep(0.2)
    assert await turn_stop(user=user, chat_id=chat_id)
    await turn_wait_idle(timeout=30)
    turn = await ChatTurn.objects.aget(session__client_id=chat_id)
    assert turn.status == ChatTurn.Status.STOPPED
    tool = next(p for p in (await assistant_message(chat_id, user)).parts if p["type"] == "tool-Bash")
    assert tool["state"] == "output-error"


async def test_auto_mode_runs_freely_and_operator_rules_still_apply(backend, connect, user, settings):
    ws = await connect()
    chat_id = await chat_with_mode(user, "auto")
    frame = send_frame(chat_id, "/tool bash echo free-run")
    await ws.send(frame)
    chunks = chunks_of(await ws.frames_until_done(frame["requestId"], timeout=60))
    assert not [c for c in chunks if c["type"] == "tool-approval-request"]
    assert "free-run" in str(next(c for c in chunks if c["type"] == "tool-output-available")["output"])
    # the operator asks about Bash everywhere; this user's own rule denies it
    settings.AGENT_TOOL_POLICY = {"Bash": "ask"}
    chat2 = await chat_with_mode(user, "auto")
    await until_approval(ws, chat2, "/tool bash echo asked")
    assert await turn_stop(user=user, chat_id=chat2)
    await ToolRule.objects.acreate(user=user, tool="Bash", decision="deny")
    chat3 = await chat_with_mode(user, "auto")
    frame = send_frame(chat3, "/tool bash echo refused")
    await ws.send(frame)
    chunks = chunks_of(await ws.frames_until_done(frame["requestId"], timeout=60))
    error = next(c for c in chunks if c["type"] == "tool-output-error")
    assert "not allowed" in error["errorText"]


async def test_plan_mode_approved_then_the_plan_runs(backend, connect, user):
    ws = await connect()
    chat_id = await chat_with_mode(user, "plan")
    first, request = await until_approval(ws, chat_id, "/plan echo planned-run")
    shown = next(c for c in chunks_of(first) if c["type"] == "tool-input-available")
    assert shown["toolName"] == "ExitPlanMode" and "echo planned-run" in shown["input"]["plan"]
    chunks = chunks_of(await answer(ws, chat_id, request, approved=True))
    ran = [c for c in chunks if c["type"] == "tool-output-available"]
    assert any("planned-run" in str(c["output"]) for c in ran), chunks
    assert not [c for c in chunks if c["type"] == "tool-approval-request"]  # approved: tools run freely
    assert chunks[-1]["type"] == "finish"


async def test_plan_mode_denied_with_a_reason_revises_the_plan(backend, connect, user):
    ws = await connect()
    chat_id = await chat_with_mode(user, "plan")
    _, request = await until_approval(ws, chat_id, "/plan echo first-plan")
    frame = answer_frame(chat_id, request, approved=False, reason="use printf instead")
    await ws.send(frame)
    frames = await ws.frames_until_done(frame["requestId"], timeout=60)
    chunks = chunks_of(frames)
    assert {"type": "tool-output-denied", "toolCallId": request["toolCallId"]} in chunks
    assert chunks[-1]["type"] == "tool-approval-request"  # the revised plan, asked again
    revised = [c for c in chunks if c["type"] == "tool-input-available"][-1]
    assert revised["toolName"] == "ExitPlanMode" and "use printf instead" in revised["input"]["plan"]
    assert await turn_stop(user=user, chat_id=chat_id)
    await turn_wait_idle(timeout=30)


async def test_waiting_for_an_answer_is_not_a_stalled_model(backend, connect, user, settings):
    """The idle watchdog pauses while an approval is pending (the model is not silent: the user is)."""
    # Long enough for a CLI to start (the watchdog counts that silence), short against the wait.
    settings.AGENT_STREAM_IDLE_TIMEOUT = 3.0
    ws = await connect()
    chat_id = await chat_with_mode(user, "ask")
    _, request = await until_approval(ws, chat_id, "/tool bash echo after-a-pause")
    await asyncio.sleep(4.5)
    chunks = chunks_of(await answer(ws, chat_id, request, approved=True))
    assert "after-a-pause" in str(next(c for c in chunks if c["type"] == "tool-output-available")["output"])
    assert chunks[-1]["type"] == "finish"

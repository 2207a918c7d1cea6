"""The same websocket turns through the sdk backend: the real Claude Code CLI against the
scripted model."""

from __future__ import annotations

import uuid

import pytest

from chat.models import ChatMessage, ChatSession, ChatTurn
from chat.runtime.locks import lock_holder, session_key
from tests.chat.conftest import chunks_of, send_frame, text_of

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.cli]


async def test_full_turn_sdk(backend_sdk, connect, user):
    ws = await connect()
    chat_id = str(uuid.uuid4())
    frame = send_frame(chat_id, "hello cli")
    await ws.send(frame)
    frames = await ws.frames_until_done(frame["requestId"], timeout=90)
    assert frames[0]["type"] == "start" and frames[-1]["type"] == "end"
    chunks = chunks_of(frames)
    assert chunks[0]["type"] == "start" and chunks[-1]["type"] == "finish"
    assert 'you said "hello cli"' in text_of(chunks)
    session = await ChatSession.objects.aget(owner=user, client_id=chat_id)
    msgs = [m async for m in ChatMessage.objects.filter(session=session).order_by("sequence")]
    assert [(m.role, m.kind) for m in msgs] == [("user", "normal"), ("assistant", "normal")]
    assert msgs[1].text == text_of(chunks)
    assert (await ChatTurn.objects.aget(session=session)).status == "finished"


async def test_abort_sdk(backend_sdk, connect, user):
    ws = await connect()
    chat_id = str(uuid.uuid4())
    frame = send_frame(chat_id, "/slow 50 400")
    rid = frame["requestId"]
    await ws.send(frame)
    seen = 0

    def three_deltas(f) -> bool:
        nonlocal seen
        seen += f["type"] == "chunk" and f["chunk"]["type"] == "text-delta"
        return seen >= 3 or f["type"] in ("end", "error")

    got = await ws.frames_until(rid, three_deltas, timeout=90)
    await ws.send({"type": "abort", "requestId": rid})
    rest = await ws.frames_until_done(rid, timeout=30)
    chunks = chunks_of(got + rest)
    assert chunks[-1] == {"type": "finish", "finishReason": "stop", "messageMetadata": {"stopped": True}}
    session = await ChatSession.objects.aget(owner=user, client_id=chat_id)
    assert lock_holder(session_key(session.pk)) is None
    msgs = [m async for m in ChatMessage.objects.filter(session=session).order_by("sequence")]
    assert [m.kind for m in msgs] == ["normal", "normal", "stopped"]
    assert msgs[1].text.startswith("w0 w1 w2")
    nxt = send_frame(chat_id, "again")
    await ws.send(nxt)
    frames = await ws.frames_until_done(nxt["requestId"], timeout=90)
    assert chunks_of(frames)[-1]["type"] == "finish"

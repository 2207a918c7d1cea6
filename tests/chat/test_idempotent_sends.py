"""Idempotent sends over the websocket (docs/protocol.md "Idempotent sends"): a retried ``send``
with the same user message id joins the turn that message started (replay from its first chunk,
then live, same ``messageId``) instead of starting a second turn; once the turn's log is gone,
``error`` with ``already_answered``. The real ASGI app and runtime, the scripted model."""

from __future__ import annotations

import importlib
import uuid

import pytest
from django.apps import apps

from chat import runtime
from chat.models import ChatMessage, ChatSession, ChatTurn
from chat.runtime import streams
from chat.services import message_append, session_create
from tests.chat.conftest import chunks_of, model_calls, send_frame, text_of

pytestmark = pytest.mark.django_db(transaction=True)


def retry_of(frame: dict) -> dict:
    """The same send again (same messages, same user message id), as a new request."""
    return {**frame, "requestId": uuid.uuid4().hex}


async def rows(chat_id: str, user) -> tuple[list[tuple[str, str]], int]:
    session = await ChatSession.objects.aget(owner=user, client_id=chat_id)
    messages = [
        (m.role, m.kind) async for m in ChatMessage.objects.filter(session=session).order_by("sequence")
    ]
    return messages, await ChatTurn.objects.filter(session=session).acount()


async def test_retry_while_running_joins_the_turn(backend_api, connect, user):
    ws = await connect()
    chat_id = str(uuid.uuid4())
    first = send_frame(chat_id, "/slow 60 15")
    mark = backend_api.request_count
    await ws.send(first)
    seen = await ws.frames_until(
        first["requestId"], lambda f: f["type"] == "chunk" and f["chunk"]["type"] == "text-delta"
    )
    retry = retry_of(first)
    await ws.send(retry)
    joined = await ws.frames_until_done(retry["requestId"])
    original = seen + await ws.frames_until_done(first["requestId"])
    assert joined[0]["type"] == "start" and joined[-1]["type"] == "end", joined[-3:]
    # Replayed from the first chunk, then live: the same stream, numbered from 0.
    assert [f["sequence"] for f in joined if f["type"] == "chunk"] == list(range(len(chunks_of(joined))))
    assert chunks_of(joined) == chunks_of(original)
    assert chunks_of(joined)[0]["messageId"] == chunks_of(original)[0]["messageId"]
    assert text_of(chunks_of(joined)) == "".join(f"w{i} " for i in range(15))
    await runtime.turn_wait_idle()
    assert await rows(chat_id, user) == ([("user", "normal"), ("assistant", "normal")], 1)
    assert len(model_calls(backend_api, mark)) == 1  # one model call, not two


async def test_retry_after_the_turn_ended_replays_its_retained_log(backend_api, connect, user):
    ws = await connect()
    chat_id = str(uuid.uuid4())
    first = send_frame(chat_id, "hello once")
    await ws.send(first)
    original = chunks_of(await ws.frames_until_done(first["requestId"]))
    await runtime.turn_wait_idle()
    retry = retry_of(first)
    await ws.send(retry)
    replay = await ws.frames_until_done(retry["requestId"])
    assert replay[-1]["type"] == "end"
    assert chunks_of(replay) == original and original[-1]["type"] == "finish"
    assert await rows(chat_id, user) == ([("user", "normal"), ("assistant", "normal")], 1)
    # A new message id is a new turn, as ever.
    other = send_frame(chat_id, "hello twice")
    await ws.send(other)
    assert (await ws.frames_until_done(other["requestId"]))[-1]["type"] == "end"
    await runtime.turn_wait_idle()
    assert (await rows(chat_id, user))[1] == 2


async def test_retry_once_the_log_is_gone_is_already_answered(backend_api, connect, user, monkeypatch):
    if streams.use_redis():
        pytest.skip("the Redis mirror keeps the log for RETENTION_SECONDS; this drops the local one")
    ws = await connect()
    chat_id = str(uuid.uuid4())
    first = send_frame(chat_id, "hello once")
    await ws.send(first)
    await ws.frames_until_done(first["requestId"])
    await runtime.turn_wait_idle()
    monkeypatch.setattr(streams, "RETENTION_SECONDS", 0.0)
    streams.stream_open(turn_id=str(uuid.uuid4()), session_id=str(uuid.uuid4()))  # purges closed logs
    retry = retry_of(first)
    await ws.send(retry)
    frames = await ws.frames_until_done(retry["requestId"])
    assert frames == [
        {
            "type": "error",
            "requestId": retry["requestId"],
            "errorText": frames[0]["errorText"],
            "code": "already_answered",
        }
    ]
    assert await rows(chat_id, user) == ([("user", "normal"), ("assistant", "normal")], 1)


async def test_the_message_id_is_unique_per_session_not_globally(backend_api, connect, user):
    ws = await connect()
    frame_a = send_frame(str(uuid.uuid4()), "same id in chat a")
    frame_b = {**send_frame(str(uuid.uuid4()), "same id in chat b"), "messages": frame_a["messages"]}
    for frame in (frame_a, frame_b):
        await ws.send(frame)
        assert (await ws.frames_until_done(frame["requestId"]))[-1]["type"] == "end"
    await runtime.turn_wait_idle()
    ids = [
        m async for m in ChatMessage.objects.filter(role="user").values_list("client_message_id", flat=True)
    ]
    assert ids == [frame_a["messages"][0]["id"]] * 2


def test_migration_backfills_client_message_ids_keeping_the_first_of_a_duplicate(user):
    backfill = importlib.import_module(
        "chat.migrations.0008_idempotent_sends_shares"
    ).client_message_id_backfill
    session = session_create(owner=user)
    for text, mid in (("a", "dup"), ("b", "dup"), ("c", "solo"), ("d", None)):
        message_append(
            session=session, role=ChatMessage.Role.USER, text=text, metadata={"messageId": mid} if mid else {}
        )
    message_append(session=session, role=ChatMessage.Role.ASSISTANT, text="x", metadata={"messageId": "m-a"})
    backfill(apps, None)
    got = list(
        ChatMessage.objects.filter(session=session)
        .order_by("sequence")
        .values_list("client_message_id", flat=True)
    )
    assert got == ["dup", None, "solo", None, None]

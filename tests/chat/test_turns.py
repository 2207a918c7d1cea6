"""Full turns over the websocket: the real ASGI app (origin validator, cookie auth), the real
run_turn with the api backend against the scripted model, the real channel layer and DB."""

from __future__ import annotations

import asyncio
import base64
import uuid

import pytest

from agents.errors import AgentError, ErrorKind
from chat import runtime
from chat.models import ChatMessage, ChatSession, ChatTurn, RateLimitRecord, TokenUsage
from chat.runtime.locks import lock_holder, session_key
from tests.chat.conftest import chunks_of, model_calls, send_frame, text_of

pytestmark = pytest.mark.django_db(transaction=True)


async def messages(chat_id: str, user) -> list[ChatMessage]:
    session = await ChatSession.objects.aget(owner=user, client_id=chat_id)
    return [m async for m in ChatMessage.objects.filter(session=session).order_by("sequence")]


def deltas_seen(frames, n: int):
    count = 0

    def pred(frame) -> bool:
        nonlocal count
        if frame["type"] == "chunk" and frame["chunk"]["type"] == "text-delta":
            count += 1
        return count >= n or frame["type"] in ("end", "error")

    return pred


async def test_full_turn_api(backend_api, connect, user):
    ws = await connect()
    chat_id = str(uuid.uuid4())
    frame = send_frame(chat_id, "hello there")
    await ws.send(frame)
    frames = await ws.frames_until_done(frame["requestId"])
    assert frames[0] == {"type": "start", "requestId": frame["requestId"]}
    assert frames[-1] == {"type": "end", "requestId": frame["requestId"]}
    chunk_frames = [f for f in frames if f["type"] == "chunk"]
    assert [f["sequence"] for f in chunk_frames] == list(range(len(chunk_frames)))
    chunks = chunks_of(frames)
    assert chunks[0]["type"] == "start"
    assert chunks[-1] == {"type": "finish", "finishReason": "stop"}
    assert "data-usage" in [c["type"] for c in chunks]
    assert 'Offline scripted model: you said "hello there"' in text_of(chunks)
    msgs = await messages(chat_id, user)
    assert [(m.role, m.kind) for m in msgs] == [("user", "normal"), ("assistant", "normal")]
    assert msgs[0].text == "hello there"
    assert msgs[1].text == text_of(chunks)
    assert msgs[1].metadata["messageId"] == chunks[0]["messageId"]
    assert [p["type"] for p in msgs[1].parts] == ["step-start", "text"]
    assert msgs[1].parts[1]["state"] == "done"
    turn = await ChatTurn.objects.aget(session_id=msgs[0].session_id)
    assert turn.status == "finished" and turn.ended_at is not None
    usage = await TokenUsage.objects.aget(turn=turn)
    assert usage.input_tokens > 0 and usage.output_tokens > 0
    await runtime.turn_wait_idle()
    session = await ChatSession.objects.aget(pk=msgs[0].session_id)
    assert session.title  # generated in the background from the first message
    assert not await asyncio.to_thread(lambda: runtime.turn_is_active(session_id=session.pk))


async def test_tool_turn_persists_parts_in_model_order(backend_api, connect, user):
    ws = await connect()
    chat_id = str(uuid.uuid4())
    frame = send_frame(chat_id, "/tool bash echo tool-ran-ok")
    await ws.send(frame)
    frames = await ws.frames_until_done(frame["requestId"])
    chunks = chunks_of(frames)
    types = [c["type"] for c in chunks]
    assert types.index("tool-input-available") < types.index("tool-output-available") < len(types) - 1
    assert chunks[-1]["type"] == "finish"
    output = next(c for c in chunks if c["type"] == "tool-output-available")["output"]
    assert "tool-ran-ok" in str(output)
    msgs = await messages(chat_id, user)
    assert [m.role for m in msgs] == ["user", "assistant"]  # one assistant message for the whole turn
    parts = msgs[1].parts
    assert [p["type"] for p in parts] == ["step-start", "text", "tool-Bash", "step-start", "text"]
    tool = parts[2]
    assert tool["state"] == "output-available"
    assert tool["input"]["command"] == "echo tool-ran-ok"
    assert "tool-ran-ok" in str(tool["output"])
    assert tool["toolCallId"] == next(c for c in chunks if c["type"] == "tool-input-available")["toolCallId"]
    assert "Tool result" in parts[4]["text"]


async def test_two_tabs_and_a_late_joiner_see_every_chunk_once(backend_api, connect, user):
    tab1, tab2, tab3 = await connect(), await connect(), await connect()
    chat_id = str(uuid.uuid4())
    frame = send_frame(chat_id, "/slow 20 30")
    await tab1.send(frame)
    rid = frame["requestId"]
    first = await tab1.frames_until(rid, deltas_seen(None, 1))
    await tab2.send({"type": "resume", "requestId": "r2", "id": chat_id})
    early = await tab1.frames_until(rid, deltas_seen(None, 10))
    await tab3.send({"type": "resume", "requestId": "r3", "id": chat_id})
    rest = await tab1.frames_until_done(rid)
    seen1 = [(f["sequence"], f["chunk"]) for f in first + early + rest if f["type"] == "chunk"]
    frames2 = await tab2.frames_until_done("r2")
    frames3 = await tab3.frames_until_done("r3")
    for frames in (frames2, frames3):
        assert frames[0]["type"] == "start" and frames[-1]["type"] == "end"
        seen = [(f["sequence"], f["chunk"]) for f in frames if f["type"] == "chunk"]
        assert seen == seen1  # replay from 0, then live: every chunk exactly once, in order
    assert text_of([c for _, c in seen1]) == "".join(f"w{i} " for i in range(30))

    # With lastSequence the replay starts right after it.
    await tab2.send({"type": "resume", "requestId": "r4", "id": chat_id, "lastSequence": 5})
    frames4 = await tab2.frames_until_done("r4")
    assert [f["sequence"] for f in frames4 if f["type"] == "chunk"] == [s for s, _ in seen1 if s > 5]
    # Without it, a finished turn is not replayed.
    await tab2.send({"type": "resume", "requestId": "r5", "id": chat_id})
    assert await tab2.frames_until_done("r5") == [{"type": "no-active", "requestId": "r5"}]


async def test_disconnect_mid_turn_then_resume(backend_api, connect, user):
    ws = await connect()
    chat_id = str(uuid.uuid4())
    frame = send_frame(chat_id, "/slow 30 30")
    await ws.send(frame)
    got = await ws.frames_until(frame["requestId"], deltas_seen(None, 3))
    last = got[-1]["sequence"]
    await ws.close()
    ws2 = await connect()
    await ws2.send({"type": "resume", "requestId": "again", "id": chat_id, "lastSequence": last})
    more = await ws2.frames_until_done("again")
    assert more[0]["type"] == "start" and more[-1]["type"] == "end"
    assert [f["sequence"] for f in more if f["type"] == "chunk"][0] == last + 1
    full = chunks_of(got) + chunks_of(more)
    assert text_of(full) == "".join(f"w{i} " for i in range(30))
    assert full[-1]["type"] == "finish"
    msgs = await messages(chat_id, user)
    assert msgs[-1].text == text_of(full)


async def test_disconnect_then_turn_completes_and_is_persisted(backend_api, connect, user):
    ws = await connect()
    chat_id = str(uuid.uuid4())
    frame = send_frame(chat_id, "/slow 10 20")
    await ws.send(frame)
    await ws.frames_until(frame["requestId"], deltas_seen(None, 2))
    await ws.close()
    await runtime.turn_wait_idle()
    msgs = await messages(chat_id, user)
    assert msgs[-1].role == "assistant" and msgs[-1].kind == "normal"
    assert msgs[-1].text == "".join(f"w{i} " for i in range(20))
    turn = await ChatTurn.objects.aget(session_id=msgs[0].session_id)
    assert turn.status == "finished"


async def test_long_text_is_saved_on_a_timer_during_the_turn(backend_api, connect, user, monkeypatch):
    monkeypatch.setattr("chat.runtime.persistence.FLUSH_INTERVAL", 0.1)
    ws = await connect()
    chat_id = str(uuid.uuid4())
    frame = send_frame(chat_id, "/slow 20 100")
    await ws.send(frame)
    await ws.frames_until(frame["requestId"], deltas_seen(None, 20))
    await asyncio.sleep(0.3)  # > 2 timer periods while deltas keep coming
    mid = await messages(chat_id, user)
    assert mid[-1].role == "assistant" and mid[-1].text.startswith("w0 w1 ")
    assert mid[-1].parts[-1]["state"] == "streaming"
    await ws.send({"type": "abort", "requestId": frame["requestId"]})
    await ws.frames_until_done(frame["requestId"])
    after = await messages(chat_id, user)
    assert after[len(mid) - 1].pk == mid[-1].pk  # the same row was updated, not a new one


async def test_abort_stops_the_turn_and_the_session_is_free(backend_api, connect, user):
    ws = await connect()
    chat_id = str(uuid.uuid4())
    frame = send_frame(chat_id, "/slow 50 400")
    rid = frame["requestId"]
    await ws.send(frame)
    got = await ws.frames_until(rid, deltas_seen(None, 3))
    await ws.send({"type": "abort", "requestId": rid})
    rest = await ws.frames_until_done(rid, timeout=10)
    chunks = chunks_of(got + rest)
    assert rest[-1] == {"type": "end", "requestId": rid}
    assert chunks[-1] == {"type": "finish", "finishReason": "stop", "messageMetadata": {"stopped": True}}
    session = await ChatSession.objects.aget(owner=user, client_id=chat_id)
    assert lock_holder(session_key(session.pk)) is None
    msgs = await messages(chat_id, user)
    assert [(m.role, m.kind) for m in msgs] == [
        ("user", "normal"),
        ("assistant", "normal"),
        ("assistant", "stopped"),
    ]
    partial = msgs[1].text
    assert partial.startswith("w0 w1 w2 ") and len(partial) < len("".join(f"w{i} " for i in range(400)))
    assert partial == text_of(chunks)
    assert (await ChatTurn.objects.aget(session=session)).status == "stopped"
    assert await TokenUsage.objects.filter(session=session, purpose="turn").acount() == 1
    # The next send works at once.
    nxt = send_frame(chat_id, "and now?")
    await ws.send(nxt)
    frames = await ws.frames_until_done(nxt["requestId"])
    assert chunks_of(frames)[-1]["type"] == "finish"
    msgs = await messages(chat_id, user)
    assert [m.kind for m in msgs].count("stopped") == 1


async def test_two_sends_at_once_make_one_model_call(backend_api, connect, user):
    a, b = await connect(), await connect()
    chat_id = str(uuid.uuid4())
    # Create the session first so both race on the lock, not on creating the chat.
    warm = send_frame(chat_id, "hi")
    await a.send(warm)
    await a.frames_until_done(warm["requestId"])
    await runtime.turn_wait_idle()
    mark = backend_api.request_count  # len(requests) stops at the log size
    f1, f2 = send_frame(chat_id, "/slow 20 10"), send_frame(chat_id, "/slow 20 10")
    await asyncio.gather(a.send(f1), b.send(f2))
    r1, r2 = await asyncio.gather(a.frames_until_done(f1["requestId"]), b.frames_until_done(f2["requestId"]))
    outcomes = sorted([r1[-1]["type"], r2[-1]["type"]])
    assert outcomes == ["end", "error"]
    refused = r1 if r1[-1]["type"] == "error" else r2
    assert refused == [refused[-1]]  # no start, no chunk
    assert "stream_already_active" in refused[-1]["errorText"]
    assert "already" in refused[-1]["errorText"]
    assert len(model_calls(backend_api, mark)) == 1
    msgs = await messages(chat_id, user)
    assert [m.role for m in msgs] == ["user", "assistant", "user", "assistant"]
    await runtime.turn_wait_idle()
    # none leaked by the refusal
    assert await ChatTurn.objects.filter(session__owner=user, reserved_tokens__gt=0).acount() == 0


ERROR_CASES = [
    ("/error 429", ErrorKind.RATE_LIMITED, "retryable_error"),
    ("/error 401", ErrorKind.AUTHENTICATION, "error"),
    ("/error 400", ErrorKind.INVALID_REQUEST, "error"),
    ("/error 500", ErrorKind.SERVER, "retryable_error"),
    ("/error 529", ErrorKind.OVERLOADED, "retryable_error"),
    ("/toolong", ErrorKind.PROMPT_TOO_LONG, "error"),
]


@pytest.mark.parametrize("directive,kind,marker", ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
async def test_error_directives(backend_api, fast_retries_settings, connect, user, directive, kind, marker):
    ws = await connect()
    chat_id = str(uuid.uuid4())
    frame = send_frame(chat_id, directive)
    await ws.send(frame)
    frames = await ws.frames_until_done(frame["requestId"])
    assert frames[-1]["type"] == "end"
    chunks = chunks_of(frames)
    errors = [c for c in chunks if c["type"] == "error"]
    assert len(errors) == 1 and chunks[-1] is errors[0]
    if kind == ErrorKind.PROMPT_TOO_LONG:  # the runtime words this one by context
        assert "too long" in errors[0]["errorText"]
    else:
        assert errors[0]["errorText"].startswith(AgentError(kind).message)
    msgs = await messages(chat_id, user)
    assert msgs[-1].kind == marker
    assert msgs[-1].metadata["code"] == kind.value
    assert msgs[-1].text == errors[0]["errorText"]
    session = await ChatSession.objects.aget(owner=user, client_id=chat_id)
    assert lock_holder(session_key(session.pk)) is None
    assert (await ChatTurn.objects.aget(session=session)).status == "failed"
    assert await TokenUsage.objects.filter(session=session, purpose="turn").acount() == 1
    limits = await RateLimitRecord.objects.filter(session=session).acount()
    assert limits == (1 if kind == ErrorKind.RATE_LIMITED else 0)
    if kind == ErrorKind.RATE_LIMITED:
        assert msgs[-1].metadata["resets_at"]


async def test_next_turn_clears_stale_error_markers(backend_api, fast_retries_settings, connect, user):
    ws = await connect()
    chat_id = str(uuid.uuid4())
    frame = send_frame(chat_id, "/error 500")
    await ws.send(frame)
    await ws.frames_until_done(frame["requestId"])
    await runtime.turn_wait_idle()
    assert [m.kind for m in await messages(chat_id, user)] == ["normal", "retryable_error"]
    # Several markers can pile up at the end (e.g. from other doors or crashed workers).
    session = await ChatSession.objects.aget(owner=user, client_id=chat_id)
    from chat.services import message_append

    def pile() -> None:
        message_append(session=session, role="assistant", kind="stopped", text="Stopped.")
        message_append(session=session, role="assistant", kind="error", text="x")
        message_append(session=session, role="assistant", kind="retryable_error", text="y")

    await asyncio.to_thread(pile)
    # A new message (the scripted model would see the unanswered "/error 500" merged into the
    # history, so regenerate is not used here; the text names no directive).
    frame = send_frame(chat_id, "fine now")
    await ws.send(frame)
    await ws.frames_until_done(frame["requestId"])
    msgs = await messages(chat_id, user)
    assert [(m.role, m.kind) for m in msgs[:2]] == [("user", "normal"), ("assistant", "stopped")]
    assert all(m.kind not in ("error", "retryable_error") for m in msgs[:-1])
    assert msgs[-2].text == "fine now" and msgs[-2].role == "user"


async def test_regenerate_answers_the_last_user_message_again_keeping_the_old_reply(
    backend_api, connect, user
):
    """Regenerate no longer deletes: the new reply is the old one's sibling (docs/api.md
    "Branches"; more in tests/chat/test_branches.py). An unknown ``messageId`` regenerates the
    active path's last reply, as before."""
    ws = await connect()
    chat_id = str(uuid.uuid4())
    for text in ("first question", "second question"):
        frame = send_frame(chat_id, text)
        await ws.send(frame)
        await ws.frames_until_done(frame["requestId"])
    before = await messages(chat_id, user)
    frame = send_frame(chat_id, "second question", trigger="regenerate-message")
    frame["messageId"] = "assistant-msg-to-replace"
    await ws.send(frame)
    frames = await ws.frames_until_done(frame["requestId"])
    assert chunks_of(frames)[-1]["type"] == "finish"
    after = await messages(chat_id, user)
    assert [m.role for m in after] == ["user", "assistant", "user", "assistant", "assistant"]
    assert after[:4] == before  # nothing deleted: the old reply stays
    assert after[4].parent_id == after[3].parent_id == before[2].pk  # siblings under the question
    assert "second question" in after[4].text
    session = await ChatSession.objects.aget(owner=user, client_id=chat_id)
    assert session.active_leaf_id == after[4].pk


async def test_attachments_are_persisted_as_file_parts(backend_api, connect, user):
    ws = await connect()
    chat_id = str(uuid.uuid4())
    data = base64.b64encode(b"name,qty\napple,3\n").decode()
    file_part = {
        "type": "file",
        "mediaType": "text/csv",
        "filename": "fruit.csv",
        "url": f"data:text/csv;base64,{data}",
    }
    frame = send_frame(chat_id, "see the file", files=[file_part])
    await ws.send(frame)
    frames = await ws.frames_until_done(frame["requestId"])
    assert chunks_of(frames)[-1]["type"] == "finish"
    msgs = await messages(chat_id, user)
    assert msgs[0].parts == [{"type": "text", "text": "see the file"}, file_part]


async def test_fast_deltas_are_coalesced_into_few_frames(backend_api, connect, user):
    ws = await connect()
    chat_id = str(uuid.uuid4())
    frame = send_frame(chat_id, "/long 300")
    await ws.send(frame)
    frames = await ws.frames_until_done(frame["requestId"])
    chunks = chunks_of(frames)
    deltas = [c for c in chunks if c["type"] == "text-delta"]
    assert text_of(chunks) == "".join(f"w{i} " for i in range(300))
    assert len(deltas) < 100  # 300 model deltas, far fewer frames
    msgs = await messages(chat_id, user)
    assert msgs[-1].text == text_of(chunks)

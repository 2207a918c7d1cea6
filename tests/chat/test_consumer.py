"""The websocket door: frame validation, multiplexing, auth, origins, foreign chats."""

from __future__ import annotations

import json
import uuid

import pytest

from chat.models import ChatSession
from chat.protocol import MAX_TEXT_CHARS
from tests.chat.conftest import chunks_of, requests_since, send_frame

pytestmark = pytest.mark.django_db(transaction=True)


async def test_unauthenticated_socket_is_refused(connect):
    connected, code, _ = await connect(cookie=False, expect_ok=False)
    assert not connected


async def test_cross_origin_handshake_is_refused(connect):
    connected, _, _ = await connect(origin=b"https://evil.example", expect_ok=False)
    assert not connected
    connected, _, _ = await connect(origin=None, expect_ok=False)
    assert not connected


@pytest.mark.parametrize(
    "raw,request_id,fragment",
    [
        ("{not json", None, "not valid JSON"),
        ("[1, 2]", None, "JSON object"),
        (json.dumps({"type": "send"}), None, "requestId"),
        (json.dumps({"type": "bogus", "requestId": "q1"}), "q1", "Unknown frame type"),
        (json.dumps({"type": "resume", "requestId": "q2"}), "q2", "'id'"),
        (
            json.dumps({"type": "resume", "requestId": "q3", "id": "x", "lastSequence": "7"}),
            "q3",
            "lastSequence",
        ),
        (json.dumps({"type": "send", "requestId": "q4", "id": "c", "messages": "nope"}), "q4", "messages"),
        (json.dumps({"type": "send", "requestId": "q5", "id": "c", "messages": []}), "q5", "no user message"),
        (json.dumps({**send_frame("c", ""), "requestId": "q6"}), "q6", "empty"),
        (json.dumps({**send_frame("c", "x" * (MAX_TEXT_CHARS + 1)), "requestId": "q7"}), "q7", "longer than"),
        (json.dumps({**send_frame("c", "x"), "requestId": "q8", "trigger": "explode"}), "q8", "trigger"),
        (
            json.dumps(
                {
                    **send_frame(
                        "c",
                        "x",
                        files=[
                            {
                                "type": "file",
                                "mediaType": "application/x-sh",
                                "url": "data:application/x-sh;base64,eA==",
                            }
                        ],
                    ),
                    "requestId": "q9",
                }
            ),
            "q9",
            "not accepted",
        ),
        (
            json.dumps(
                {
                    **send_frame(
                        "c",
                        "x",
                        files=[
                            {"type": "file", "mediaType": "image/png", "url": "https://example.com/a.png"}
                        ],
                    ),
                    "requestId": "q10",
                }
            ),
            "q10",
            "data: URL",
        ),
    ],
)
async def test_malformed_frames_get_an_error_frame_and_the_socket_lives(
    backend_api, connect, user, raw, request_id, fragment
):
    ws = await connect()
    await ws.send(raw)
    frame = await ws.recv()
    assert frame["type"] == "error" and frame["requestId"] == request_id
    assert fragment in frame["errorText"]
    # The socket still serves requests.
    ok = send_frame(str(uuid.uuid4()), "still alive?")
    await ws.send(ok)
    frames = await ws.frames_until_done(ok["requestId"])
    assert frames[-1]["type"] == "end"


async def test_oversized_frame(backend_api, connect, monkeypatch):
    monkeypatch.setattr("chat.protocol.MAX_FRAME_BYTES", 1000)
    ws = await connect()
    await ws.send(send_frame("c", "y" * 2000))
    frame = await ws.recv()
    assert frame["type"] == "error" and "too large" in frame["errorText"]


async def test_several_requests_multiplexed_on_one_socket(backend_api, connect, user):
    ws = await connect()
    frames = [send_frame(str(uuid.uuid4()), f"/slow 10 {n}") for n in (5, 8, 3)]
    for frame in frames:
        await ws.send(frame)
    for frame, n in zip(frames, (5, 8, 3)):
        got = await ws.frames_until_done(frame["requestId"])
        assert got[0]["type"] == "start" and got[-1]["type"] == "end"
        text = "".join(c["delta"] for c in chunks_of(got) if c["type"] == "text-delta")
        assert text == "".join(f"w{i} " for i in range(n))


async def test_foreign_and_unknown_chat_ids(backend_api, connect, user, other_user):
    alice = await connect()
    chat_id = str(uuid.uuid4())
    frame = send_frame(chat_id, "/slow 30 30")
    await alice.send(frame)
    await alice.frames_until(frame["requestId"], lambda f: f["type"] == "chunk")
    session = await ChatSession.objects.aget(owner=user, client_id=chat_id)

    bob = await connect(other_user)
    errors = []
    for rid, target in (("b1", chat_id), ("b2", str(session.pk)), ("b3", str(uuid.uuid4()))):
        await bob.send({"type": "resume", "requestId": rid, "id": target})
        errors.append(await bob.frames_until_done(rid))
    texts = {e[-1]["errorText"] for e in errors}
    assert all(e == [e[-1]] and e[-1]["type"] == "error" for e in errors)
    assert texts == {"Chat not found."}  # foreign and missing look the same
    # Bob cannot abort Alice's turn by guessing her request id or chat id.
    await bob.send({"type": "abort", "requestId": frame["requestId"]})
    # A send with Alice's chat id starts Bob's own chat and never touches hers.
    mine = send_frame(chat_id, "hello from bob")
    await bob.send(mine)
    got = await bob.frames_until_done(mine["requestId"])
    assert got[-1]["type"] == "end"
    assert await ChatSession.objects.filter(client_id=chat_id).acount() == 2
    rest = await alice.frames_until_done(frame["requestId"])
    assert chunks_of(rest)[-1] == {"type": "finish", "finishReason": "stop"}  # not stopped


async def test_resume_with_nothing_active(backend_api, connect, user):
    ws = await connect()
    chat_id = str(uuid.uuid4())
    frame = send_frame(chat_id, "hi")
    await ws.send(frame)
    await ws.frames_until_done(frame["requestId"])
    await ws.send({"type": "resume", "requestId": "r", "id": chat_id})
    assert await ws.frames_until_done("r") == [{"type": "no-active", "requestId": "r"}]


async def test_budget_refusal_never_reaches_the_model(backend_api, connect, user, monkeypatch):
    import datetime as dt

    from agents.errors import AgentError, ErrorKind

    resets = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)

    def refuse(*, user, model, **_kw):  # the operators' budget_check contract: raise AgentError
        raise AgentError(ErrorKind.BUDGET, resets_at=resets)

    monkeypatch.setattr("chat.usage.budget_check", refuse)
    mark = len(backend_api.requests)
    ws = await connect()
    frame = send_frame(str(uuid.uuid4()), "hello")
    await ws.send(frame)
    frames = await ws.frames_until_done(frame["requestId"])
    assert frames == [frames[-1]] and frames[-1]["type"] == "error"
    assert frames[-1]["errorText"].startswith("You have used your token budget.")
    assert requests_since(backend_api, mark) == []

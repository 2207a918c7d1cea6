"""SSE chat against a real daphne (subprocess, test database, scripted model), parsed with the
httpx-sse client; resume across doors (SSE <-> websocket); client disconnects."""

from __future__ import annotations

import json
import uuid

import httpx
import pytest
import websockets.sync.client as ws_client
from httpx_sse import connect_sse

from chat.apikeys import api_key_create
from chat.models import ChatMessage, ChatSession, ChatTurn, TokenUsage, UserBudget
from tests.agents.conftest import text_of
from tests.api.conftest import chat_body
from tests.waiting import wait_until_sync

pytestmark = [pytest.mark.django_db(transaction=True)]
TIMEOUT = httpx.Timeout(30.0, connect=5.0)


@pytest.fixture
def server(live_daphne):
    return live_daphne


@pytest.fixture
def key(user) -> str:
    return api_key_create(owner=user, name="sse")[1]


@pytest.fixture
def http(server, key):
    with httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=TIMEOUT
    ) as client:
        yield client


def read_events(event_source, *, stop_after: int | None = None) -> tuple[list[tuple[int, dict]], bool]:
    """``([(id, chunk)], saw_done)`` from an httpx-sse EventSource."""
    out: list[tuple[int, dict]] = []
    for sse in event_source.iter_sse():
        if sse.data == "[DONE]":
            return out, True
        out.append((int(sse.id), json.loads(sse.data)))
        if stop_after is not None and len(out) >= stop_after:
            return out, False
    return out, False


def wait_turn_done(chat_id: str, user, timeout: float = 30.0) -> ChatTurn:
    def ended() -> ChatTurn | None:
        turn = (
            ChatTurn.objects.filter(session__owner=user, session__client_id=chat_id)
            .order_by("-started_at")
            .first()
        )
        return turn if turn is not None and turn.status != ChatTurn.Status.RUNNING else None

    return wait_until_sync(ended, timeout=timeout, message=f"turn of {chat_id} still running")


def ws_connect(server, key: str):
    return ws_client.connect(
        server.url.replace("http://", "ws://") + "/ws/chat/",
        additional_headers={"Authorization": f"Bearer {key}"},
        open_timeout=10,
    )


def ws_frames(
    ws, request_id: str, *, until=lambda f: f["type"] in ("end", "error", "no-active")
) -> list[dict]:
    frames = []
    while True:
        frame = json.loads(ws.recv(timeout=30))
        if frame.get("requestId") != request_id:
            continue
        frames.append(frame)
        if until(frame):
            return frames


def test_chat_streams_an_ai_sdk_ui_message_stream(http, user):
    chat_id = str(uuid.uuid4())
    with connect_sse(http, "POST", "/api/v1/chat/", json=chat_body(chat_id, "hello over sse")) as source:
        assert source.response.status_code == 200
        assert source.response.headers["content-type"].startswith("text/event-stream")
        assert source.response.headers["x-vercel-ai-ui-message-stream"] == "v1"
        events, done = read_events(source)
    assert done
    assert [seq for seq, _ in events] == list(range(len(events)))
    chunks = [c for _, c in events]
    assert chunks[0]["type"] == "start" and chunks[-1] == {"type": "finish", "finishReason": "stop"}
    assert any(c["type"] == "data-usage" for c in chunks)
    assert "hello over sse" in text_of(chunks)
    session = ChatSession.objects.get(owner=user, client_id=chat_id)
    wait_turn_done(chat_id, user)
    msgs = http.get(f"/api/v1/sessions/{chat_id}/messages/").json()["results"]
    assert [(m["role"], m["text"]) for m in msgs][0] == ("user", "hello over sse")
    assert msgs[1]["role"] == "assistant" and msgs[1]["text"] == text_of(chunks)
    assert TokenUsage.objects.filter(session=session, purpose="turn").count() == 1
    # Nothing running now: resume answers 204.
    assert http.get(f"/api/v1/chat/{chat_id}/stream/").status_code == 204


def test_disconnect_keeps_the_turn_running_and_resume_honours_last_event_id(http, user):
    chat_id = str(uuid.uuid4())
    with connect_sse(http, "POST", "/api/v1/chat/", json=chat_body(chat_id, "/slow 100 25")) as source:
        first, done = read_events(source, stop_after=5)
    assert not done  # we hung up mid-turn
    last_id = first[-1][0]
    with connect_sse(
        http, "GET", f"/api/v1/chat/{chat_id}/stream/", headers={"Last-Event-ID": str(last_id)}
    ) as source:
        assert source.response.status_code == 200
        rest, done = read_events(source)
    assert done
    assert [seq for seq, _ in rest] == list(range(last_id + 1, last_id + 1 + len(rest)))  # no gap, no repeat
    chunks = [c for _, c in first + rest]
    assert chunks[-1]["type"] == "finish"
    assert text_of(chunks) == "".join(f"w{i} " for i in range(25))
    turn = wait_turn_done(chat_id, user)
    assert turn.status == "finished"
    assert ChatMessage.objects.get(turn=turn, role="assistant").text == text_of(chunks)


def test_disconnect_without_resume_still_persists_the_whole_answer(http, user):
    chat_id = str(uuid.uuid4())
    with connect_sse(http, "POST", "/api/v1/chat/", json=chat_body(chat_id, "/slow 60 20")) as source:
        read_events(source, stop_after=3)
    turn = wait_turn_done(chat_id, user)
    assert turn.status == "finished"
    assert ChatMessage.objects.get(turn=turn, role="assistant").text == "".join(f"w{i} " for i in range(20))


def test_second_turn_is_409_and_cancel_stops_the_running_one(http, user):
    chat_id = str(uuid.uuid4())
    with connect_sse(http, "POST", "/api/v1/chat/", json=chat_body(chat_id, "/slow 200 100")) as source:
        events = []
        for sse in source.iter_sse():
            events.append(json.loads(sse.data) if sse.data != "[DONE]" else "[DONE]")
            if len(events) == 4:
                busy = http.post("/api/v1/chat/", json=chat_body(chat_id, "again"))
                assert busy.status_code == 409
                assert busy.json()["error"]["code"] == "stream_already_active"
                cancel = http.post(f"/api/v1/sessions/{chat_id}/cancel/")
                assert cancel.status_code == 200 and cancel.json() == {"stopped": True}
    assert events[-1] == "[DONE]"
    assert events[-2]["type"] == "finish" and events[-2].get("messageMetadata") == {"stopped": True}
    turn = wait_turn_done(chat_id, user)
    assert turn.status == "stopped"
    assert http.get(f"/api/v1/sessions/{chat_id}/").json()["active"] is False


def test_heartbeat_comments_while_the_turn_is_silent(http, server):
    """The daphne under test pings after 1 s of silence; /slow 1500 is silent for 1.5 s."""
    chat_id = str(uuid.uuid4())
    lines: list[str] = []
    with http.stream("POST", "/api/v1/chat/", json=chat_body(chat_id, "/slow 1500 3")) as response:
        for line in response.iter_lines():
            lines.append(line)
            if line == "data: [DONE]":
                break
    assert ": ping" in lines
    assert lines.index(": ping") > 0


def test_budget_refusal_is_429_with_retry_after_before_streaming(http, user):
    UserBudget.objects.create(user=user, daily_limit=10)
    TokenUsage.objects.create(user=user, model="m", backend="api", input_tokens=100, weighted_tokens=100)
    resp = http.post("/api/v1/chat/", json=chat_body(str(uuid.uuid4()), "hello"))
    assert resp.status_code == 429
    assert resp.headers["content-type"] == "application/json"
    assert resp.json()["error"]["code"] == "budget_exceeded"
    assert int(resp.headers["Retry-After"]) >= 1


def test_turn_started_over_sse_resumes_over_the_websocket(server, http, key, user):
    chat_id = str(uuid.uuid4())
    with connect_sse(http, "POST", "/api/v1/chat/", json=chat_body(chat_id, "/slow 100 20")) as source:
        first, _ = read_events(source, stop_after=4)
    last = first[-1][0]
    with ws_connect(server, key) as ws:
        ws.send(json.dumps({"type": "resume", "requestId": "r1", "id": chat_id, "lastSequence": last}))
        frames = ws_frames(ws, "r1")
    assert frames[0]["type"] == "start" and frames[-1]["type"] == "end"
    chunk_frames = [f for f in frames if f["type"] == "chunk"]
    assert [f["sequence"] for f in chunk_frames] == list(range(last + 1, last + 1 + len(chunk_frames)))
    chunks = [c for _, c in first] + [f["chunk"] for f in chunk_frames]
    assert text_of(chunks) == "".join(f"w{i} " for i in range(20))


def test_turn_started_over_the_websocket_resumes_over_sse(server, http, key, user):
    chat_id = str(uuid.uuid4())
    with ws_connect(server, key) as ws:
        ws.send(
            json.dumps(
                {
                    "type": "send",
                    "requestId": "s1",
                    "id": chat_id,
                    "trigger": "submit-message",
                    "messageId": None,
                    "messages": [
                        {"id": "u1", "role": "user", "parts": [{"type": "text", "text": "/slow 100 20"}]}
                    ],
                    "headers": {},
                    "body": {},
                    "metadata": None,
                }
            )
        )
        frames = ws_frames(ws, "s1", until=lambda f: f["type"] == "chunk" and f["sequence"] >= 4)
    last = frames[-1]["sequence"]
    with connect_sse(
        http, "GET", f"/api/v1/chat/{chat_id}/stream/", headers={"Last-Event-ID": str(last)}
    ) as source:
        rest, done = read_events(source)
    assert done and rest[0][0] == last + 1
    chunks = [f["chunk"] for f in frames if f["type"] == "chunk"] + [c for _, c in rest]
    assert text_of(chunks) == "".join(f"w{i} " for i in range(20))
    assert wait_turn_done(chat_id, user).status == "finished"


def test_sse_and_resume_are_per_owner(server, http, other_user, user):
    chat_id = str(uuid.uuid4())
    with connect_sse(http, "POST", "/api/v1/chat/", json=chat_body(chat_id, "/slow 100 10")) as source:
        read_events(source, stop_after=2)
    other_key = api_key_create(owner=other_user, name="o")[1]
    with httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {other_key}"}, timeout=TIMEOUT
    ) as other:
        # Bob asking for Alice's chat id: her stream is never revealed (404 like any unknown chat).
        resp = other.get(f"/api/v1/chat/{chat_id}/stream/")
        assert resp.status_code == 404
        assert resp.json() == {"error": {"code": "not_found", "message": "Not found."}}
    wait_turn_done(chat_id, user)


def test_ai_sdk_default_urls_without_trailing_slash(http, user):
    """``DefaultChatTransport({api: "/api/v1/chat"})`` posts to /api/v1/chat and reconnects to
    /api/v1/chat/<id>/stream (no trailing slashes): both aliases stream like the canonical paths."""
    chat_id = str(uuid.uuid4())
    with connect_sse(http, "POST", "/api/v1/chat", json=chat_body(chat_id, "/slow 100 10")) as source:
        first, _ = read_events(source, stop_after=3)
    with connect_sse(
        http, "GET", f"/api/v1/chat/{chat_id}/stream", headers={"Last-Event-ID": str(first[-1][0])}
    ) as source:
        assert source.response.status_code == 200
        rest, done = read_events(source)
    assert done and rest[0][0] == first[-1][0] + 1
    assert text_of([c for _, c in first + rest]) == "".join(f"w{i} " for i in range(10))
    wait_turn_done(chat_id, user)
    assert http.get(f"/api/v1/chat/{chat_id}/stream").status_code == 204


@pytest.mark.django_db(transaction=True)
async def test_chat_during_shutdown_is_503_with_retry_after(user):
    """A worker that is shutting down refuses new turns with 503 + Retry-After (clients retry,
    and the load balancer sends them to another worker)."""
    from django.test import AsyncClient

    from chat.runtime import shutdown

    client = AsyncClient()
    await client.aforce_login(user)
    await shutdown.turns_interrupt_all()
    try:
        resp = await client.post(
            "/api/v1/chat/", chat_body(str(uuid.uuid4()), "hello"), content_type="application/json"
        )
    finally:
        shutdown.shutdown_reset()
    assert resp.status_code == 503
    assert int(resp["Retry-After"]) >= 1
    assert json.loads(resp.content)["error"]["code"] == "unavailable"
    assert not await ChatSession.objects.filter(owner=user).aexists()  # refused before anything was written
    assert not await ChatTurn.objects.aexists()


def test_tool_approval_over_sse_ends_the_stream_and_the_answer_continues_the_turn(http, user):
    """CONTRACT §6: the request's stream ends right after ``tool-approval-request`` while the turn
    waits; the answering POST (a stock ``Chat``'s) streams the rest of the same turn and message;
    a resume meanwhile replays the request; a bad answer is a 400, never a 500."""
    chat_id = str(uuid.uuid4())
    ChatSession.objects.create(owner=user, client_id=chat_id, tool_mode="ask")
    with connect_sse(
        http, "POST", "/api/v1/chat/", json=chat_body(chat_id, "/tool bash echo sse-ok")
    ) as source:
        first, done = read_events(source)
    assert done and first[-1][1]["type"] == "tool-approval-request"
    request = first[-1][1]
    with connect_sse(http, "GET", f"/api/v1/chat/{chat_id}/stream/") as source:
        replay, done = read_events(source)
    assert done and replay == first
    part = {
        "type": "tool-Bash",
        "toolCallId": request["toolCallId"],
        "state": "approval-responded",
        "input": {"command": "echo sse-ok"},
        "approval": {"id": request["approvalId"], "approved": True},
    }
    body = chat_body(chat_id, "unused")
    body["messages"].append({"id": first[0][1]["messageId"], "role": "assistant", "parts": [part]})
    bad = {
        **body,
        "messages": [*body["messages"][:-1], {**body["messages"][-1], "parts": [{**part, "approval": {}}]}],
    }
    refused = http.post("/api/v1/chat/", json=bad)
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "invalid_request"
    with connect_sse(http, "POST", "/api/v1/chat/", json=body) as source:
        rest, done = read_events(source)
    assert done and rest[0][0] == first[-1][0] + 1  # ids continue the turn's log
    chunks = [c for _, c in rest]
    assert chunks[0]["type"] == "tool-approval-response" and chunks[0]["approved"] is True
    assert "sse-ok" in str(next(c for c in chunks if c["type"] == "tool-output-available")["output"])
    assert chunks[-1]["type"] == "finish"
    wait_turn_done(chat_id, user)
    msgs = http.get(f"/api/v1/sessions/{chat_id}/messages/").json()["results"]
    assert [m["role"] for m in msgs] == ["user", "assistant"]
    tool = next(p for p in msgs[1]["parts"] if p["type"] == "tool-Bash")
    assert tool["state"] == "output-available" and tool["approval"]["approved"] is True
    # answering again once the turn is over: a clear 400
    again = http.post("/api/v1/chat/", json=body)
    assert again.status_code == 400 and "expired or was already answered" in again.json()["error"]["message"]


# --- idempotent sends (docs/api.md "Idempotent sends") ------------------------------------------


def test_retried_post_joins_the_running_turn_then_replays_it_once_finished(http, user):
    chat_id = str(uuid.uuid4())
    body = chat_body(chat_id, "/slow 80 12")  # one user message id, posted three times
    with connect_sse(http, "POST", "/api/v1/chat/", json=body) as source:
        first, done = read_events(source, stop_after=4)
    assert not done  # the client lost the response mid-turn and retries the same request
    with connect_sse(http, "POST", "/api/v1/chat/", json=body) as source:
        assert source.response.status_code == 200
        joined, done = read_events(source)
    assert done
    assert [seq for seq, _ in joined] == list(range(len(joined)))  # from the first chunk on
    assert joined[: len(first)] == first  # the same stream (same messageId), not a new turn
    assert joined[-1][1]["type"] == "finish"
    assert text_of([c for _, c in joined]) == "".join(f"w{i} " for i in range(12))
    wait_turn_done(chat_id, user)
    with connect_sse(http, "POST", "/api/v1/chat/", json=body) as source:
        assert source.response.status_code == 200
        replay, done = read_events(source)
    assert done and replay == joined  # finished: its retained log, replayed
    session = ChatSession.objects.get(owner=user, client_id=chat_id)
    assert ChatTurn.objects.filter(session=session).count() == 1
    assert list(ChatMessage.objects.filter(session=session).values_list("role", flat=True)) == [
        "user",
        "assistant",
    ]

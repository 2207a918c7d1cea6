"""Per-chat settings in real turns (CONTRACT §6, docs/api.md "Per-chat settings"), through both
doors and both backends against the scripted model (which answers with the request's model and
logs every request it got): a model switched mid-chat (PATCH, or the request's ``body.model``)
is what the next turn asks the model for and what its usage row records; the chat's
instructions reach the system prompt; ``max_steps`` bounds the tool loop; an unknown
``body.model`` is refused with ``invalid_request`` and starts nothing; the budget check at the
start uses the chat's effective model."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient
from django.utils import timezone

from agents.config import INSTRUCTIONS_HEADING
from chat.models import ChatSession, ChatTurn, RateLimitRecord, TokenUsage
from tests.api.conftest import bearer_client, chat_body, key_for  # noqa: F401 - key_for: a fixture
from tests.chat.conftest import chunks_of, model_calls, send_frame, text_of

pytestmark = pytest.mark.django_db(transaction=True)

DEFAULT = "claude-sonnet-5-5"
OTHER = "claude-opus-5"
UNKNOWN_TEXT = "Unknown model 'gpt-5': choose one of GET /api/v1/models/."


@pytest.fixture
def models(settings):
    settings.AGENT_MODEL = DEFAULT
    settings.AGENT_MODELS = f"{DEFAULT}=Claude Sonnet 5.5,{OTHER}=Claude Opus 5"
    return settings


@pytest.fixture(params=["api", pytest.param("sdk", marks=pytest.mark.cli)])
def backend(request) -> tuple[str, Any]:
    """(backend name, the scripted model) for each backend."""
    return request.param, request.getfixturevalue(f"backend_{request.param}")


@pytest.fixture
async def api(user, key_for):
    """A Bearer API client of ``user``, for the async tests (call it through sync_to_async)."""
    return bearer_client(await sync_to_async(key_for)(user))


async def patch(api, session: ChatSession, body: dict[str, Any]) -> dict[str, Any]:
    resp = await sync_to_async(api.patch)(f"/api/v1/sessions/{session.pk}/", body, format="json")
    assert resp.status_code == 200, resp.content
    return resp.json()


async def ws_turn(ws, chat_id: str, text: str, *, body: dict | None = None, timeout: float = 90):
    frame = send_frame(chat_id, text)
    if body is not None:
        frame["body"] = body
    await ws.send(frame)
    return await ws.frames_until_done(frame["requestId"], timeout=timeout)


def usage_chunk(chunks: list[dict]) -> dict:
    return next(c for c in chunks if c["type"] == "data-usage")["data"]


async def turn_models(session: ChatSession) -> list[str]:
    rows = TokenUsage.objects.filter(session=session, purpose="turn").order_by("created_at", "pk")
    return [u.model async for u in rows]


# --- the model and the instructions, through both backends --------------------------------------


async def test_model_switched_mid_chat_and_instructions_reach_the_model(backend, models, connect, user, api):
    name, server = backend
    ws = await connect()
    chat_id = str(uuid.uuid4())
    first = chunks_of(await ws_turn(ws, chat_id, "first turn"))
    assert first[-1]["type"] == "finish", first[-3:]
    session = await ChatSession.objects.aget(owner=user, client_id=chat_id)
    assert session.model == ""  # a new chat follows the server default

    marker = f"Always sign as Captain {uuid.uuid4().hex[:8]}."
    shown = await patch(api, session, {"model": OTHER, "instructions": marker})
    assert shown["model"] == OTHER and shown["instructions"] == marker
    mark = server.request_count
    second = chunks_of(await ws_turn(ws, chat_id, "second turn"))
    assert second[-1]["type"] == "finish", second[-3:]
    assert 'you said "second turn"' in text_of(second)

    calls = model_calls(server, mark)
    assert calls, "the turn reached the model"
    assert {c["body"]["model"] for c in calls} == {OTHER}
    system = json.dumps(calls[0]["body"].get("system"))
    assert INSTRUCTIONS_HEADING in system and marker in system, system[:2000]
    assert system.index(INSTRUCTIONS_HEADING) > system.index("You are Copilot")  # after the server's
    assert usage_chunk(second)["model"] == OTHER
    assert await turn_models(session) == [DEFAULT, OTHER]
    assert [t.model async for t in ChatTurn.objects.filter(session=session).order_by("started_at")] == [
        DEFAULT,
        OTHER,
    ]
    # Back to the default (null): the next turn asks for it again, without the instructions.
    await patch(api, session, {"model": None, "instructions": ""})
    mark = server.request_count
    third = chunks_of(await ws_turn(ws, chat_id, "third turn"))
    assert third[-1]["type"] == "finish"
    calls = model_calls(server, mark)
    assert {c["body"]["model"] for c in calls} == {DEFAULT}
    assert marker not in json.dumps(calls[0]["body"].get("system"))
    assert await turn_models(session) == [DEFAULT, OTHER, DEFAULT]


async def test_max_steps_bounds_the_tool_loop(backend, models, connect, user, api, settings):
    name, server = backend
    settings.AGENT_MAX_TURNS = 10
    ws = await connect()
    chat_id = str(uuid.uuid4())
    assert chunks_of(await ws_turn(ws, chat_id, "hello"))[-1]["type"] == "finish"
    session = await ChatSession.objects.aget(owner=user, client_id=chat_id)
    await patch(api, session, {"max_steps": 1})
    mark = server.request_count
    chunks = chunks_of(await ws_turn(ws, chat_id, "please /tool bash echo hi"))
    # One model call (the tool call), no second one to read its result: the turn ends in an error
    # that says the step limit was reached.
    calls = model_calls(server, mark)
    assert len(calls) == 1, [c.get("directive") for c in calls]
    assert chunks[-1]["type"] == "error", chunks[-3:]
    assert "steps" in chunks[-1]["errorText"], chunks[-1]
    turn = await ChatTurn.objects.filter(session=session).order_by("-started_at").afirst()
    assert turn.status == ChatTurn.Status.FAILED


# --- body.model through both doors --------------------------------------------------------------


async def test_body_model_over_the_websocket(backend_api, models, connect, user):
    ws = await connect()
    chat_id = str(uuid.uuid4())
    mark = backend_api.request_count
    chunks = chunks_of(await ws_turn(ws, chat_id, "hello opus", body={"model": OTHER}))
    assert chunks[-1]["type"] == "finish"
    assert {c["body"]["model"] for c in model_calls(backend_api, mark)} == {OTHER}
    assert usage_chunk(chunks)["model"] == OTHER
    session = await ChatSession.objects.aget(owner=user, client_id=chat_id)
    assert session.model == OTHER  # created with it: the chat's model from now on
    # A later turn without body.model stays on it; an explicit one switches again.
    assert chunks_of(await ws_turn(ws, chat_id, "still opus", body={}))[-1]["type"] == "finish"
    back = chunks_of(await ws_turn(ws, chat_id, "sonnet again", body={"model": DEFAULT}))
    assert usage_chunk(back)["model"] == DEFAULT
    assert await turn_models(session) == [OTHER, OTHER, DEFAULT]
    await session.arefresh_from_db()
    assert session.model == DEFAULT

    # Unknown: an error frame with invalid_request; nothing started, nothing changed.
    turns = await ChatTurn.objects.filter(session=session).acount()
    frames = await ws_turn(ws, chat_id, "hello gpt", body={"model": "gpt-5"})
    assert [f["type"] for f in frames] == ["error"]
    assert frames[0]["code"] == "invalid_request" and frames[0]["errorText"] == UNKNOWN_TEXT
    for bad in ({"model": 5}, {"model": ["x"]}):
        frames = await ws_turn(ws, chat_id, "hello", body=bad)
        assert frames[0]["type"] == "error" and frames[0]["code"] == "invalid_request", frames
    assert await ChatTurn.objects.filter(session=session).acount() == turns
    await session.arefresh_from_db()
    assert session.model == DEFAULT
    new_chat = str(uuid.uuid4())
    frames = await ws_turn(ws, new_chat, "hello gpt", body={"model": "gpt-5"})
    assert frames[0]["code"] == "invalid_request"
    assert not await ChatSession.objects.filter(owner=user, client_id=new_chat).aexists()


async def sse_post(client: AsyncClient, body: dict[str, Any]) -> tuple[int, str]:
    """POST /api/v1/chat/ in-process: (status, the whole body once the stream ended)."""
    response = await client.post("/api/v1/chat/", body, content_type="application/json")
    if getattr(response, "streaming", False):
        return response.status_code, b"".join([c async for c in response.streaming_content]).decode()
    return response.status_code, response.content.decode()


def sse_chunks(text: str) -> list[dict]:
    data = [line[len("data: ") :] for line in text.splitlines() if line.startswith("data: ")]
    assert data and data[-1] == "[DONE]", data[-3:]
    return [json.loads(d) for d in data[:-1]]


async def test_body_model_over_http(backend_api, models, user):
    client = AsyncClient()
    await client.aforce_login(user)
    chat_id = str(uuid.uuid4())
    mark = backend_api.request_count
    # DefaultChatTransport merges the request's `body` into the JSON: a top-level "model".
    status, text = await sse_post(client, chat_body(chat_id, "hello over sse", model=OTHER))
    assert status == 200, text[:500]
    chunks = sse_chunks(text)
    assert chunks[-1]["type"] == "finish"
    assert usage_chunk(chunks)["model"] == OTHER
    assert {c["body"]["model"] for c in model_calls(backend_api, mark)} == {OTHER}
    session = await ChatSession.objects.aget(owner=user, client_id=chat_id)
    assert session.model == OTHER
    assert await turn_models(session) == [OTHER]

    for bad in ("gpt-5", 7):
        status, text = await sse_post(client, chat_body(chat_id, "hello gpt", model=bad))
        assert status == 400, text
        error = json.loads(text)["error"]
        assert error["code"] == "invalid_request" and "model" in error["details"], error
        if bad == "gpt-5":
            assert error["message"] == UNKNOWN_TEXT and error["details"] == {"model": [UNKNOWN_TEXT]}
    assert await ChatTurn.objects.filter(session=session).acount() == 1
    new_chat = str(uuid.uuid4())
    status, _text = await sse_post(client, chat_body(new_chat, "hello gpt", model="gpt-5"))
    assert status == 400
    assert not await ChatSession.objects.filter(owner=user, client_id=new_chat).aexists()


# --- the budget check at the start uses the chat's effective model -------------------------------


async def test_start_checks_the_effective_models_rate_limit(backend_api, models, connect, user, api):
    await RateLimitRecord.objects.acreate(
        user=None,
        source=RateLimitRecord.Source.UPSTREAM,
        model=OTHER,
        resets_at=timezone.now() + dt.timedelta(minutes=5),
        raw_message="rate limited",
    )
    ws = await connect()
    chat_id = str(uuid.uuid4())
    # The default model is not limited: the turn runs.
    assert chunks_of(await ws_turn(ws, chat_id, "hello"))[-1]["type"] == "finish"
    session = await ChatSession.objects.aget(owner=user, client_id=chat_id)
    # This request's own body.model is: refused before anything starts, the chat's model unchanged.
    frames = await ws_turn(ws, chat_id, "hello opus", body={"model": OTHER})
    assert frames[0]["type"] == "error" and frames[0]["code"] == "rate_limited", frames
    await session.arefresh_from_db()
    assert session.model == ""
    # The chat's own model (PATCH) is checked the same way.
    await patch(api, session, {"model": OTHER})
    frames = await ws_turn(ws, chat_id, "hello again")
    assert frames[0]["code"] == "rate_limited", frames
    assert await ChatTurn.objects.filter(session=session).acount() == 1

"""Edit and branch (docs/api.md "Branches") in real turns, through both backends against the
scripted model (which logs every request it got): regenerate keeps the old reply as a sibling,
an edit of an earlier user message starts a branch, a branch switch (PATCH ``active_leaf``)
is continued by the next turn — and each time the model sees the active path only (on ``sdk``
the CLI session of another branch is not resumed: a fresh one gets the path as its context).
A retried edit joins its turn instead of branching twice, on the websocket and over SSE."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient

from chat import runtime
from chat.models import ChatMessage, ChatSession, ChatTurn
from tests.api.conftest import bearer_client, key_for  # noqa: F401 - key_for: a fixture
from tests.chat.conftest import chunks_of, model_calls, send_frame

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(params=["api", pytest.param("sdk", marks=pytest.mark.cli)])
def backend(request) -> tuple[str, Any]:
    """(backend name, the scripted model) for each backend."""
    return request.param, request.getfixturevalue(f"backend_{request.param}")


@pytest.fixture
async def api(user, key_for):
    """A Bearer API client of ``user`` (call it through sync_to_async)."""
    return bearer_client(await sync_to_async(key_for)(user))


def edit_frame(chat_id: str, message_id: str, text: str) -> dict[str, Any]:
    """What the stock ``chat.sendMessage({text, messageId})`` sends: the edited message keeps its
    id and is the newest message; ``messageId`` names it."""
    frame = send_frame(chat_id, text)
    frame["messageId"] = message_id
    frame["messages"][0]["id"] = message_id
    return frame


async def turn(ws, frame: dict[str, Any], *, timeout: float = 90) -> list[dict[str, Any]]:
    await ws.send(frame)
    frames = await ws.frames_until_done(frame["requestId"], timeout=timeout)
    chunks = chunks_of(frames)
    assert chunks and chunks[-1]["type"] == "finish", frames[-3:]
    await runtime.turn_wait_idle()
    return chunks


def seen(server, mark: int) -> str:
    """Everything the model was sent by the newest turn request since ``mark`` (its messages,
    the CLI's context block and resumed transcript included), as one string."""
    calls = model_calls(server, mark)
    assert calls, "the model was not called"
    return json.dumps(calls[-1]["body"]["messages"], ensure_ascii=False)


async def session_of(chat_id: str, user) -> ChatSession:
    return await ChatSession.objects.aget(owner=user, client_id=chat_id)


async def rows(session: ChatSession) -> list[ChatMessage]:
    return [m async for m in ChatMessage.objects.filter(session=session).order_by("sequence")]


async def active_path(api, session: ChatSession, **params: str) -> list[dict[str, Any]]:
    resp = await sync_to_async(api.get)(f"/api/v1/sessions/{session.pk}/messages/", params)
    assert resp.status_code == 200, resp.content
    return resp.json()["results"]


async def test_regenerate_keeps_the_old_reply_and_the_model_sees_the_active_path(backend, connect, user, api):
    _name, server = backend
    ws = await connect()
    chat_id = str(uuid.uuid4())
    await turn(ws, send_frame(chat_id, "alpha-one question"))
    second = await turn(ws, send_frame(chat_id, "bravo-two question"))
    old_reply_id = second[0]["messageId"]
    mark = server.request_count
    regen = send_frame(chat_id, "unused", trigger="regenerate-message")
    regen["messageId"] = old_reply_id
    regen["messages"] = []
    chunks = await turn(ws, regen)
    new_reply_id = chunks[0]["messageId"]
    assert new_reply_id != old_reply_id
    sent = seen(server, mark)
    # The question once (the old reply, which quotes it, is not on the path), the first exchange.
    assert sent.count("bravo-two") == 1 and "alpha-one" in sent
    session = await session_of(chat_id, user)
    messages = await rows(session)
    assert [(m.role, m.kind) for m in messages] == [("user", "normal"), ("assistant", "normal")] * 2 + [
        ("assistant", "normal")
    ]
    old, new = messages[3], messages[4]
    assert old.parent_id == new.parent_id == messages[2].pk
    path = await active_path(api, session)
    assert [m["message_id"] for m in path][-1] == new_reply_id
    assert [m["id"] for m in path] == [str(m.pk) for m in (messages[0], messages[1], messages[2], new)]
    assert path[-1]["siblings"] == [str(old.pk), str(new.pk)] and path[-1]["parent"] == str(messages[2].pk)
    # A follow-up continues the new reply's branch.
    mark = server.request_count
    await turn(ws, send_frame(chat_id, "charlie-three question"))
    sent = seen(server, mark)
    assert sent.count("bravo-two") == 2  # the question and the (new) reply quoting it, once each
    assert (await rows(session))[-2].parent_id == new.pk


async def test_editing_an_earlier_message_branches_and_the_model_sees_that_branch_only(
    backend, connect, user, api
):
    _name, server = backend
    ws = await connect()
    chat_id = str(uuid.uuid4())
    await turn(ws, send_frame(chat_id, "alpha-one question"))
    second = send_frame(chat_id, "bravo-two question")
    await turn(ws, second)
    await turn(ws, send_frame(chat_id, "charlie-three question"))
    session = await session_of(chat_id, user)
    before = await rows(session)
    mark = server.request_count
    edited_id = second["messages"][0]["id"]
    await turn(ws, edit_frame(chat_id, edited_id, "delta-four question"))
    sent = seen(server, mark)
    assert "alpha-one" in sent and sent.count("delta-four") == 1
    assert "bravo-two" not in sent and "charlie-three" not in sent  # the abandoned branch
    messages = await rows(session)
    assert messages[: len(before)] == before  # nothing deleted
    edit, reply = messages[len(before)], messages[len(before) + 1]
    assert edit.role == "user" and edit.parent_id == before[2].parent_id == before[1].pk
    assert reply.parent_id == edit.pk
    path = await active_path(api, session)
    assert [m["text"] for m in path if m["role"] == "user"] == ["alpha-one question", "delta-four question"]
    assert path[2]["message_id"] == edited_id  # the stock client's id for it is kept
    assert path[2]["siblings"] == [str(before[2].pk), str(edit.pk)]
    every = await active_path(api, session, path="all")
    assert len(every) == len(messages)

    # Switch back to the first branch (any message of it): the next turn continues it, and the
    # model (on sdk: a CLI that does not carry the edited branch) sees that branch only.
    resp = await sync_to_async(api.patch)(
        f"/api/v1/sessions/{session.pk}/", {"active_leaf": str(before[2].pk)}, format="json"
    )
    assert resp.status_code == 200, resp.content
    assert resp.json()["active_leaf"] == str(before[-1].pk)  # down to that branch's newest message
    mark = server.request_count
    await turn(ws, send_frame(chat_id, "echo-five question"))
    sent = seen(server, mark)
    assert "charlie-three" in sent and "bravo-two" in sent and "delta-four" not in sent
    path = await active_path(api, session)
    assert [m["text"] for m in path if m["role"] == "user"] == [
        "alpha-one question",
        "bravo-two question",
        "charlie-three question",
        "echo-five question",
    ]


async def test_a_follow_up_on_the_same_branch_resumes_the_cli_session(backend_sdk, connect, user):
    """The branch rule does not cost the common case its resume: the CLI session ended at the
    reply the next message follows."""
    ws = await connect()
    chat_id = str(uuid.uuid4())
    await turn(ws, send_frame(chat_id, "alpha-one question"))
    session = await session_of(chat_id, user)
    first_cli = session.agent_session_id
    assert first_cli and session.agent_session_leaf_id == (await rows(session))[-1].pk
    mark = backend_sdk.request_count
    await turn(ws, send_frame(chat_id, "bravo-two question"))
    assert "alpha-one" in seen(backend_sdk, mark)
    session = await session_of(chat_id, user)
    assert session.agent_session_id == first_cli  # the same CLI session, continued


async def test_a_retried_edit_joins_its_turn_instead_of_branching_twice(backend_api, connect, user):
    ws = await connect()
    chat_id = str(uuid.uuid4())
    first = send_frame(chat_id, "alpha-one question")
    await turn(ws, first)
    await turn(ws, send_frame(chat_id, "bravo-two question"))
    edit = edit_frame(chat_id, first["messages"][0]["id"], "/slow 40 10")
    mark = backend_api.request_count
    await ws.send(edit)
    head = await ws.frames_until(
        edit["requestId"], lambda f: f["type"] == "chunk" and f["chunk"]["type"] == "text-delta"
    )
    retry = {**edit, "requestId": uuid.uuid4().hex}  # while it runs: joins
    await ws.send(retry)
    joined = chunks_of(await ws.frames_until_done(retry["requestId"]))
    original = chunks_of(head + await ws.frames_until_done(edit["requestId"]))
    assert joined == original and joined[-1]["type"] == "finish"
    await runtime.turn_wait_idle()
    replay = await turn(ws, {**edit, "requestId": uuid.uuid4().hex})  # after it ended: the same turn
    assert replay == original
    session = await session_of(chat_id, user)
    users = [m for m in await rows(session) if m.role == "user"]
    assert [m.text for m in users] == ["alpha-one question", "bravo-two question", "/slow 40 10"]
    assert users[2].parent_id is None and users[0].parent_id is None  # siblings: both first messages
    assert await ChatTurn.objects.filter(session=session).acount() == 3
    assert len(model_calls(backend_api, mark)) == 1
    # The same message edited to another text is another branch.
    await turn(ws, edit_frame(chat_id, first["messages"][0]["id"], "charlie-three question"))
    assert await ChatMessage.objects.filter(session=session, role="user", parent__isnull=True).acount() == 3


async def test_a_resubmitted_last_message_is_a_retry_not_an_edit(backend_api, connect, user):
    """The stock client's ``sendMessage()`` after a failure sends the last user message again with
    ``messageId`` = its id: the same text there is a retried send (it joins), not an edit."""
    ws = await connect()
    chat_id = str(uuid.uuid4())
    first = send_frame(chat_id, "alpha-one question")
    await turn(ws, first)
    again = edit_frame(chat_id, first["messages"][0]["id"], "alpha-one question")
    replay = await turn(ws, again)
    session = await session_of(chat_id, user)
    assert [m.role for m in await rows(session)] == ["user", "assistant"]
    assert replay[0]["messageId"].startswith("msg-")


async def sse_post(client: AsyncClient, body: dict[str, Any]) -> tuple[int, list[dict[str, Any]]]:
    """POST /api/v1/chat/ in-process: (status, the stream's chunks once it ended)."""
    response = await client.post("/api/v1/chat/", body, content_type="application/json")
    text = (
        b"".join([c async for c in response.streaming_content]).decode()
        if getattr(response, "streaming", False)
        else response.content.decode()
    )
    data = [line[len("data: ") :] for line in text.splitlines() if line.startswith("data: ")]
    return response.status_code, [json.loads(d) for d in data if d != "[DONE]"]


async def test_edit_and_regenerate_over_sse(backend_api, user):
    client = AsyncClient()
    await client.aforce_login(user)
    chat_id = str(uuid.uuid4())
    body = {
        "id": chat_id,
        "trigger": "submit-message",
        "messageId": None,
        "messages": [
            {"id": "u-1", "role": "user", "parts": [{"type": "text", "text": "alpha-one question"}]}
        ],
    }
    status, _chunks = await sse_post(client, body)
    assert status == 200
    await runtime.turn_wait_idle()
    edit = {
        **body,
        "messageId": "u-1",
        "messages": [
            {"id": "u-1", "role": "user", "parts": [{"type": "text", "text": "bravo-two question"}]}
        ],
    }
    mark = backend_api.request_count
    status, chunks = await sse_post(client, edit)
    assert status == 200 and chunks[-1]["type"] == "finish"
    await runtime.turn_wait_idle()
    sent = seen(backend_api, mark)
    assert "alpha-one" not in sent and "bravo-two" in sent
    status, retried = await sse_post(client, edit)  # a retried edit: the same turn replayed
    assert status == 200 and retried[0]["messageId"] == chunks[0]["messageId"]
    session = await session_of(chat_id, user)
    messages = await rows(session)
    assert [(m.role, m.parent_id) for m in messages] == [
        ("user", None),
        ("assistant", messages[0].pk),
        ("user", None),
        ("assistant", messages[2].pk),
    ]
    # Regenerate the first branch's reply by its pk: a sibling under the first question, and the
    # chat is on that branch now.
    regen = {**body, "trigger": "regenerate-message", "messageId": str(messages[1].pk), "messages": []}
    mark = backend_api.request_count
    status, chunks = await sse_post(client, regen)
    assert status == 200 and chunks[-1]["type"] == "finish"
    await runtime.turn_wait_idle()
    sent = seen(backend_api, mark)
    assert sent.count("alpha-one") == 1 and "bravo-two" not in sent
    newest = (await rows(session))[-1]
    assert newest.parent_id == messages[0].pk
    assert (await session_of(chat_id, user)).active_leaf_id == newest.pk

"""Authorisation matrix (issue 10 item 4).

Every route under /api/v1/ (enumerated from the URLconf: a new route or method without an entry
here fails ``test_every_api_route_and_method_is_in_the_matrix``), every websocket request type,
the chat page and the transcript viewer: user B (bob) cannot read, resume, abort, rename, delete
or stream user A's (alice's) session, transcript, usage or keys, and gets exactly the answer a
random missing id gets, with both cookie and Bearer authentication.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import AsyncClient, Client
from django.utils import timezone

from agents.sandbox import workspace_for
from chat import runtime
from chat.apikeys import api_key_create
from chat.conversations import share_create
from chat.models import ApiKey, ChatMessage, ChatSession, Share, TokenUsage
from chat.services import message_append, session_create
from tests.agents.conftest import requests_since
from tests.chat.conftest import ORIGIN, WsClient, chunks_of, send_frame, session_cookie

pytestmark = pytest.mark.django_db(transaction=True)

SECRET_TITLE = "alice-secret-title"
SECRET_TEXT = "alice-secret-text-7f3a"
ALICE_CLIENT_ID = "alice-chat"
ALICE_FILE = "alice-secret.txt"  # in her chat's workspace (the file routes)

# route -> the methods a test below exercises. Object routes name one of alice's resources.
OBJECT_ROUTES: dict[str, set[str]] = {
    "sessions/<str:chat_id>/": {"get", "patch", "delete"},
    "sessions/<str:chat_id>/messages/": {"get"},
    "sessions/<str:chat_id>/cancel/": {"post"},
    "sessions/<str:chat_id>/files/": {"get"},
    "sessions/<str:chat_id>/files/<workspace_path:file_path>": {"get", "put"},
    "sessions/<str:chat_id>/files.zip": {"get"},
    "sessions/<str:chat_id>/export/": {"get"},
    "sessions/<str:chat_id>/shares/": {"get", "post"},
    "sessions/<str:chat_id>/shares/<str:share_id>/": {"delete"},
    "chat/<str:chat_id>/stream/": {"get"},
    "chat/<str:chat_id>/stream": {"get"},
    "keys/<int:key_id>/": {"delete"},
}
# Collection routes act on the caller's own data only.
COLLECTION_ROUTES: dict[str, set[str]] = {
    "sessions/": {"get", "post"},
    "sessions/import/": {"post"},  # creates a chat of the caller's own
    "chat/": {"post"},
    "chat": {"post"},
    "usage/": {"get"},
    "keys/": {"get", "post"},
    "models/": {"get"},  # the operator's allow-list, no user data (401 without credentials: tests/api)
    "mcp-servers/": {"get"},  # the operator's enabled MCP servers, no user data (tests/api)
    "search/": {"get"},  # full-text search over the caller's own chats
}
# No user data at all (the schema and its docs pages, the JSON 404 for unknown paths).
PUBLIC_ROUTES: dict[str, set[str]] = {"schema/": {"get"}, "docs/": {"get"}, "redoc/": {"get"}, "^.*$": set()}


def _api_routes() -> dict[str, Any]:
    from chat.api import urls

    return {str(p.pattern): p.callback.cls for p in urls.urlpatterns}


def test_every_api_route_and_method_is_in_the_matrix():
    matrix = {**OBJECT_ROUTES, **COLLECTION_ROUTES, **PUBLIC_ROUTES}
    routes = _api_routes()
    assert set(routes) == set(matrix), (
        "a route under /api/v1/ has no authorisation test: add it to the matrix"
    )
    for route, cls in routes.items():
        methods = {m for m in cls.http_method_names if m not in ("options", "head") and hasattr(cls, m)}
        assert methods == matrix[route], f"{route}: methods {methods} but the matrix tests {matrix[route]}"


# --- fixtures -----------------------------------------------------------------------------------


@pytest.fixture
def alice_data(user):
    session = session_create(owner=user, client_id=ALICE_CLIENT_ID, title=SECRET_TITLE)
    message_append(
        session=session,
        role=ChatMessage.Role.USER,
        text=SECRET_TEXT,
        parts=[{"type": "text", "text": SECRET_TEXT}],
    )
    api_key, raw = api_key_create(owner=user, name="alice key")
    TokenUsage.objects.create(
        user=user, session=session, model="m", backend="api", input_tokens=12345, output_tokens=678
    )
    share = share_create(session=session, include_tool_outputs=False, expires_in_days=None)
    return {"session": session, "key": api_key, "raw_key": raw, "share": share}


def _alice_workspace(session) -> dict[str, bytes]:
    """Alice's workspace (given a secret file first): every file's content, by relative path."""
    workspace = workspace_for(str(session.pk))
    secret = workspace / ALICE_FILE
    if not secret.exists():
        secret.write_text(SECRET_TEXT)
    return {str(p.relative_to(workspace)): p.read_bytes() for p in workspace.rglob("*") if p.is_file()}


def _snapshot(alice_data) -> tuple:
    session = ChatSession.objects.filter(pk=alice_data["session"].pk).values_list("title", "archived").first()
    key = ApiKey.objects.filter(pk=alice_data["key"].pk).values_list("revoked_at", flat=True).first()
    messages = list(
        ChatMessage.objects.filter(session_id=alice_data["session"].pk).values_list("sequence", "text")
    )
    shares = list(Share.objects.filter(session_id=alice_data["session"].pk).values_list("pk", "revoked_at"))
    return session, key, messages, shares


class BearerAsyncClient(AsyncClient):
    """AsyncClient that sends ``Authorization: Bearer`` on every request (its constructor's
    ``headers`` do not reach the ASGI scope)."""

    def __init__(self, raw_key: str) -> None:
        super().__init__()
        self.bearer = f"Bearer {raw_key}"

    def generic(
        self,
        method,
        path,
        data="",
        content_type="application/octet-stream",
        secure=False,
        *,
        headers=None,
        **extra,
    ):
        headers = {**(headers or {}), "Authorization": self.bearer}
        return super().generic(method, path, data, content_type, secure, headers=headers, **extra)


async def _client(auth: str, bob) -> AsyncClient:
    if auth == "bearer":
        _, raw = await sync_to_async(api_key_create)(owner=bob, name="bob key")
        return BearerAsyncClient(raw)
    client = AsyncClient()
    await client.aforce_login(bob)
    return client


async def _body(response) -> Any:
    if getattr(response, "streaming", False):
        return b"".join([chunk async for chunk in response.streaming_content]).decode()
    return response.content.decode()


async def _start_alice_turn(alice, session) -> runtime.TurnHandle:
    return await runtime.turn_start(user=alice, chat_id=str(session.pk), text=f"/slow 100 1000 {SECRET_TEXT}")


async def _stop_alice_turn(alice, session) -> None:
    assert await runtime.turn_stop(user=alice, chat_id=str(session.pk))
    await runtime.turn_wait_idle(timeout=20)


# --- HTTP: object routes ------------------------------------------------------------------------


@pytest.mark.parametrize("route", sorted(OBJECT_ROUTES))
async def test_object_routes_hide_alices_resources(route, backend_api, user, other_user, alice_data):
    session = alice_data["session"]
    handle = (
        await _start_alice_turn(user, session)
        if route.startswith(("chat/", "sessions/<str:chat_id>/cancel"))
        else None
    )
    before = await sync_to_async(_snapshot)(alice_data)
    files_before = await sync_to_async(_alice_workspace)(session) if "/files" in route else None
    try:
        for auth in ("cookie", "bearer"):
            client = await _client(auth, other_user)
            if route.startswith("keys/"):
                missing_id = await ApiKey.objects.acount() + 10_000
                pairs = [(alice_data["key"].pk, missing_id)]
            else:
                pairs = [
                    (str(session.pk), str(uuid.uuid4())),
                    (ALICE_CLIENT_ID, f"missing-{uuid.uuid4().hex[:8]}"),
                ]
            for method in sorted(OBJECT_ROUTES[route]):
                for alice_id, missing in pairs:
                    answers = []
                    for ident in (alice_id, missing):
                        url = "/api/v1/" + route.replace("<str:chat_id>", str(ident)).replace(
                            "<int:key_id>", str(ident)
                        ).replace("<workspace_path:file_path>", ALICE_FILE).replace(
                            "<str:share_id>", str(alice_data["share"].pk)
                        )
                        kwargs: dict[str, Any] = {}
                        if method in ("patch", "post", "put"):
                            kwargs = {
                                "data": json.dumps({"title": "pwned", "archived": True}),
                                "content_type": "application/json",
                            }
                        response = await getattr(client, method)(url, **kwargs)
                        answers.append((response.status_code, await _body(response)))
                    where = f"{auth} {method.upper()} {route} with {alice_id!r}"
                    assert answers[0] == answers[1], f"{where}: differs from a missing id: {answers}"
                    assert answers[0][0] == 404, f"{where}: {answers[0]}"
                    assert SECRET_TEXT not in answers[0][1] and SECRET_TITLE not in answers[0][1]
        assert await sync_to_async(_snapshot)(alice_data) == before
        if files_before is not None:  # bob's upload wrote nothing, in her workspace or his
            assert await sync_to_async(_alice_workspace)(session) == files_before
        if handle is not None:
            assert await sync_to_async(runtime.turn_is_active)(session_id=session.pk), (
                "bob stopped alice's turn"
            )
    finally:
        if handle is not None:
            await _stop_alice_turn(user, session)


# --- HTTP: collection routes --------------------------------------------------------------------


@pytest.mark.parametrize("auth", ["cookie", "bearer"])
async def test_collection_routes_show_only_the_callers_data(auth, backend_api, user, other_user, alice_data):
    client = await _client(auth, other_user)
    before = await sync_to_async(_snapshot)(alice_data)
    body = (await client.get("/api/v1/sessions/?archived=all&search=alice")).json()
    assert body["count"] == 0 and body["results"] == []
    body = (await client.get("/api/v1/sessions/?archived=all")).content.decode()
    assert str(alice_data["session"].pk) not in body and SECRET_TITLE not in body
    for q in ("alice", SECRET_TITLE, SECRET_TEXT, "secret"):
        found = await client.get("/api/v1/search/", {"q": q})
        assert found.status_code == 200 and found.json() == {"results": []}, found.content
    usage = (await client.get("/api/v1/usage/")).json()
    assert usage["day"]["input_tokens"] == 0 and usage["week"]["output_tokens"] == 0
    keys = (await client.get("/api/v1/keys/")).content.decode()
    assert alice_data["key"].prefix not in keys
    created = await client.post("/api/v1/keys/", data={"name": "b"}, content_type="application/json")
    assert created.status_code == 201
    assert await ApiKey.objects.filter(pk=created.json()["id"], owner=other_user).aexists()
    # Creating a session with alice's client id is as unremarkable as with a fresh one (no 409).
    for client_id in (ALICE_CLIENT_ID, f"fresh-{uuid.uuid4().hex[:6]}"):
        response = await client.post(
            "/api/v1/sessions/", data={"client_id": client_id}, content_type="application/json"
        )
        assert response.status_code == 201, response.content
        assert response.json()["title"] == ""
    assert await sync_to_async(_snapshot)(alice_data) == before


@pytest.mark.parametrize("route", ["chat/", "chat"])
@pytest.mark.parametrize("auth", ["cookie", "bearer"])
async def test_chat_post_with_alices_id_starts_bobs_own_session(
    route, auth, backend_api, user, other_user, alice_data
):

    client = await _client(auth, other_user)
    before = await sync_to_async(_snapshot)(alice_data)
    mark = backend_api.request_count
    body = {
        "id": str(alice_data["session"].pk),
        "trigger": "submit-message",
        "messageId": None,
        "messages": [
            {"id": "m1", "role": "user", "parts": [{"type": "text", "text": "what did alice say?"}]}
        ],
    }
    response = await client.post("/api/v1/" + route, data=json.dumps(body), content_type="application/json")
    text = await _body(response)
    assert response.status_code == 200 and text.rstrip().endswith("data: [DONE]"), text
    assert SECRET_TEXT not in text
    assert all(SECRET_TEXT not in json.dumps(r.get("body")) for r in requests_since(backend_api, mark))
    assert await sync_to_async(_snapshot)(alice_data) == before
    assert await ChatSession.objects.filter(
        owner=other_user, client_id=str(alice_data["session"].pk)
    ).aexists()


# --- websocket ----------------------------------------------------------------------------------


async def _bob_socket(auth: str, bob) -> WsClient:
    from copilot_project.asgi import application

    if auth == "bearer":
        _, raw = await sync_to_async(api_key_create)(owner=bob, name="bob ws")
        headers = [(b"authorization", f"Bearer {raw}".encode())]
    else:
        headers = [(b"cookie", (await sync_to_async(session_cookie)(bob)).encode()), (b"origin", ORIGIN)]
    comm = WebsocketCommunicator(application, "/ws/chat/", headers=headers)
    connected, _ = await comm.connect(timeout=10)
    assert connected
    return WsClient(comm)


@pytest.mark.parametrize("auth", ["cookie", "bearer"])
async def test_websocket_requests_cannot_touch_alices_chat(auth, backend_api, user, other_user, alice_data):

    session = alice_data["session"]
    await _start_alice_turn(user, session)
    ws = await _bob_socket(auth, other_user)
    try:
        before = await sync_to_async(_snapshot)(alice_data)
        # resume (with and without lastSequence): the same error as for a random id.
        for last in (None, 0):
            answers = []
            for ident in (str(session.pk), ALICE_CLIENT_ID, str(uuid.uuid4()), "missing-chat"):
                frame = {"type": "resume", "requestId": f"r-{uuid.uuid4().hex[:6]}", "id": ident}
                if last is not None:
                    frame["lastSequence"] = last
                await ws.send(frame)
                got = await ws.frames_until_done(frame["requestId"])
                answers.append([{k: v for k, v in f.items() if k != "requestId"} for f in got])
            assert all(a == answers[0] for a in answers), answers
            assert answers[0][-1]["type"] == "error" and answers[0][-1]["code"] == "not_found"
        # abort: of a resume aimed at alice's chat, and of request ids bob cannot know.
        await ws.send({"type": "resume", "requestId": "steal", "id": str(session.pk)})
        await ws.send({"type": "abort", "requestId": "steal"})
        for rid in ("alice-request", "0", ""):
            await ws.send({"type": "abort", "requestId": rid})
        assert (await ws.frames_until_done("steal"))[-1]["code"] == "not_found"
        # send with alice's ids: bob's own new chat, nothing of alice's in it or in the model call.
        mark = backend_api.request_count
        for ident in (str(session.pk), ALICE_CLIENT_ID):
            frame = send_frame(ident, "repeat what was said before")
            await ws.send(frame)
            frames = await ws.frames_until_done(frame["requestId"])
            assert frames[-1]["type"] == "end", frames  # never "stream_already_active"
            assert SECRET_TEXT not in json.dumps(chunks_of(frames))
        assert all(SECRET_TEXT not in json.dumps(r.get("body")) for r in requests_since(backend_api, mark))
        assert (
            await ChatSession.objects.filter(
                owner=other_user, client_id__in=[str(session.pk), ALICE_CLIENT_ID]
            ).acount()
            == 2
        )
        assert await sync_to_async(_snapshot)(alice_data) == before
        assert await sync_to_async(runtime.turn_is_active)(session_id=session.pk), "bob stopped alice's turn"
    finally:
        await ws.close()
        await _stop_alice_turn(user, session)


# --- pages --------------------------------------------------------------------------------------


def test_chat_page_and_transcript_viewer_hide_alices_data(user, other_user, alice_data, django_user_model):
    from django.contrib.auth.models import Permission

    from transcripts.models import Transcript

    Transcript.objects.create(project_key="p", session_id="agent-session-alice", updated_at=timezone.now())
    client = Client()
    client.force_login(other_user)
    a = client.get(f"/c/{alice_data['session'].pk}/")
    b = client.get(f"/c/{uuid.uuid4()}/")
    assert a.status_code == b.status_code == 404 and a.content == b.content
    for suffix in ("", "download.jsonl"):
        answers = [
            client.get(f"/admin/transcripts/session/{sid}/{suffix}")
            for sid in ("agent-session-alice", "nope")
        ]
        assert answers[0].status_code == answers[1].status_code == 302
        assert answers[0]["Location"].split("?")[0] == answers[1]["Location"].split("?")[0] == "/admin/login/"
    # Staff without the transcript permission: 403 whether it exists or not.
    other_user.is_staff = True
    other_user.save()
    for suffix in ("", "download.jsonl"):
        answers = [
            client.get(f"/admin/transcripts/session/{sid}/{suffix}")
            for sid in ("agent-session-alice", "nope")
        ]
        assert (
            answers[0].status_code == answers[1].status_code == 403
            and answers[0].content == answers[1].content
        )
    # With the permission it is an operator tool (staff see every transcript, by design).
    other_user.user_permissions.add(Permission.objects.get(codename="view_transcript"))
    other_user = django_user_model.objects.get(pk=other_user.pk)
    client.force_login(other_user)
    assert client.get("/admin/transcripts/session/nope/").status_code == 404

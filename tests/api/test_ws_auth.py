"""Bearer keys on the websocket handshake, and the origin rule (CONTRACT §4): a Bearer handshake
without Origin is a non-browser client and may connect; cookie sockets need an allowed Origin."""

from __future__ import annotations

import json

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client
from django.utils import timezone

from chat.apikeys import api_key_create
from chat.models import ApiKey
from tests.chat.conftest import backend_api, scripted_model  # noqa: F401 - fixtures
from tests.conftest import require_services
from tests.servers import DaphneServer, daphne_env

pytestmark = pytest.mark.django_db(transaction=True)


def _cookie(user) -> str:
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}"


async def handshake(headers: list[tuple[bytes, bytes]]):
    from copilot_project.asgi import application

    comm = WebsocketCommunicator(application, "/ws/chat/", headers=headers)
    connected, _ = await comm.connect(timeout=10)
    return comm, connected


async def test_bearer_without_origin_connects_as_the_keys_owner(user, other_user):
    _, key = await sync_to_async(api_key_create)(owner=user, name="ws")
    comm, connected = await handshake([(b"authorization", f"Bearer {key}".encode())])
    assert connected
    try:
        # Authenticated as alice: a resume of a chat she does not have is "no-active"/"error",
        # never a refusal to talk (an anonymous socket would have been closed at connect).
        await comm.send_to(text_data=json.dumps({"type": "resume", "requestId": "r", "id": "nope"}))
        frame = json.loads(await comm.receive_from(timeout=10))
        assert frame["requestId"] == "r" and frame["type"] in {"no-active", "error"}
    finally:
        await comm.disconnect()


async def test_bearer_with_an_allowed_origin_connects(user):
    _, key = await sync_to_async(api_key_create)(owner=user, name="ws")
    comm, connected = await handshake(
        [(b"authorization", f"Bearer {key}".encode()), (b"origin", b"http://localhost")]
    )
    await comm.disconnect()
    assert connected


@pytest.mark.parametrize("origin", [b"http://evil.example", None])
async def test_cookie_socket_needs_a_valid_origin(user, origin):
    cookie = await sync_to_async(_cookie)(user)
    headers = [(b"cookie", cookie.encode())] + ([(b"origin", origin)] if origin else [])
    comm, connected = await handshake(headers)
    await comm.disconnect()
    assert not connected
    ok, connected = await handshake([(b"cookie", cookie.encode()), (b"origin", b"http://127.0.0.1")])
    await ok.disconnect()
    assert connected  # the same cookie from an allowed origin is fine


async def test_bearer_with_a_bad_origin_is_refused(user):
    _, key = await sync_to_async(api_key_create)(owner=user, name="ws")
    comm, connected = await handshake(
        [(b"authorization", f"Bearer {key}".encode()), (b"origin", b"http://evil.example")]
    )
    await comm.disconnect()
    assert not connected


async def test_revoked_or_bad_bearer_is_refused_even_with_a_valid_cookie(user):
    _, key = await sync_to_async(api_key_create)(owner=user, name="ws")
    await ApiKey.objects.filter(owner=user).aupdate(revoked_at=timezone.now())
    cookie = await sync_to_async(_cookie)(user)
    for headers in (
        [(b"authorization", f"Bearer {key}".encode())],
        [(b"authorization", b"Bearer cps_000000000000_nope")],
        [(b"authorization", b"Bearer ")],
        [
            (b"authorization", f"Bearer {key}".encode()),
            (b"cookie", cookie.encode()),
            (b"origin", b"http://127.0.0.1"),
        ],
    ):
        comm, connected = await handshake(headers)
        await comm.disconnect()
        assert not connected, headers


async def test_no_credentials_is_refused():
    comm, connected = await handshake([(b"origin", b"http://127.0.0.1")])
    await comm.disconnect()
    assert not connected


# --- the handshake's key cache (chat.apikeys.api_key_cached) ------------------------------------


@pytest.fixture
def fresh_key_cache():
    from chat.apikeys import api_key_cache_forget

    api_key_cache_forget()
    yield
    api_key_cache_forget()


async def _connects(key: str) -> bool:
    comm, connected = await handshake([(b"authorization", f"Bearer {key}".encode())])
    await comm.disconnect()
    return connected


async def test_a_verified_key_answers_the_next_handshake_without_the_database(user, fresh_key_cache):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from chat.apikeys import api_key_cached

    def cached_and_queries():
        with CaptureQueriesContext(connection) as ctx:
            found = api_key_cached(raw_key=key)
        return found, len(ctx.captured_queries)

    api_key, key = await sync_to_async(api_key_create)(owner=user, name="ws")
    assert api_key_cached(raw_key=key) is None  # never verified here yet
    assert await _connects(key)
    cached, queries = await sync_to_async(cached_and_queries)()
    assert queries == 0
    assert cached is not None and cached.pk == api_key.pk and cached.owner.pk == user.pk
    # The digest is still checked: the right prefix with another secret is not a hit.
    prefix = key.split("_")[1]
    assert api_key_cached(raw_key=f"cps_{prefix}_not-the-secret") is None
    assert not await _connects(f"cps_{prefix}_not-the-secret")


async def test_revoking_or_deactivating_in_this_process_refuses_the_next_handshake(user, fresh_key_cache):
    from chat.apikeys import api_key_revoke

    api_key, key = await sync_to_async(api_key_create)(owner=user, name="ws")
    assert await _connects(key)
    await sync_to_async(api_key_revoke)(api_key=api_key)
    assert not await _connects(key)

    _, key2 = await sync_to_async(api_key_create)(owner=user, name="ws2")
    assert await _connects(key2)
    user.is_active = False
    await sync_to_async(user.save)()
    assert not await _connects(key2)


async def test_a_change_made_elsewhere_is_honoured_within_the_cache_period(user, fresh_key_cache, settings):
    import asyncio

    settings.API_KEY_CACHE_SECONDS = 0.5
    _, key = await sync_to_async(api_key_create)(owner=user, name="ws")
    assert await _connects(key)
    # Another worker revokes it (a raw UPDATE: no signal reaches this process).
    await ApiKey.objects.filter(owner=user).aupdate(revoked_at=timezone.now())
    assert await _connects(key)  # still trusted inside the period: the documented bound
    await asyncio.sleep(0.6)
    assert not await _connects(key)


async def test_cache_off_asks_the_database_every_time(user, fresh_key_cache, settings):
    from chat.apikeys import api_key_cached

    settings.API_KEY_CACHE_SECONDS = 0
    _, key = await sync_to_async(api_key_create)(owner=user, name="ws")
    assert await _connects(key)
    assert api_key_cached(raw_key=key) is None
    await ApiKey.objects.filter(owner=user).aupdate(revoked_at=timezone.now())
    assert not await _connects(key)


async def test_a_burst_of_handshakes_with_one_key_verifies_it_once(
    user, fresh_key_cache, monkeypatch, settings
):
    import asyncio
    import time

    from chat import apikeys
    from chat.api import auth

    _, key = await sync_to_async(api_key_create)(owner=user, name="ws")
    calls = []
    real = apikeys.api_key_authenticate

    def counting(**kwargs):
        calls.append(kwargs["raw_key"])
        time.sleep(0.3)  # a slow database: every handshake of the burst arrives meanwhile
        return real(**kwargs)

    settings.API_KEY_CACHE_SECONDS = 0  # the cache off: only the shared in-flight check dedupes

    monkeypatch.setattr(auth, "api_key_authenticate", counting)
    results = await asyncio.gather(*(_connects(key) for _ in range(8)))
    assert results == [True] * 8
    assert len(calls) == 1


# --- revocation reaches sockets that are already open -------------------------------------------


def _send(chat_id: str, text: str, rid: str) -> str:
    return json.dumps(
        {
            "type": "send",
            "requestId": rid,
            "id": chat_id,
            "trigger": "submit-message",
            "messageId": None,
            "messages": [{"id": rid, "role": "user", "parts": [{"type": "text", "text": text}]}],
        }
    )


async def _frames_until_done(comm, rid: str) -> list[dict]:
    out = []
    while True:
        frame = json.loads(await comm.receive_from(timeout=30))
        if frame.get("requestId") == rid:
            out.append(frame)
            if frame["type"] in {"end", "error", "no-active"}:
                return out


async def _assert_refused_and_closed(comm, frame_text: str, rid: str) -> None:
    await comm.send_to(text_data=frame_text)
    answer = json.loads(await comm.receive_from(timeout=10))
    assert answer == {
        "type": "error",
        "requestId": rid,
        "code": "unauthorized",
        "errorText": answer["errorText"],
    }
    assert "revoked" in answer["errorText"]
    closed = await comm.receive_output(timeout=10)
    assert closed == {"type": "websocket.close", "code": 4401}


async def test_a_key_revoked_in_this_process_stops_its_open_socket_at_once(
    user, fresh_key_cache, backend_api
):
    from chat.apikeys import api_key_revoke
    from chat.models import ChatMessage

    api_key, key = await sync_to_async(api_key_create)(owner=user, name="ws")
    comm, connected = await handshake([(b"authorization", f"Bearer {key}".encode())])
    assert connected
    await comm.send_to(text_data=_send("c1", "hello", "before"))
    frames = await _frames_until_done(comm, "before")
    assert frames[-1]["type"] == "end"  # the key works
    messages_before = await ChatMessage.objects.acount()
    await sync_to_async(api_key_revoke)(api_key=api_key)
    await _assert_refused_and_closed(comm, _send("c1", "after revocation", "after"), "after")
    assert await ChatMessage.objects.acount() == messages_before  # no turn ran, nothing stored
    await comm.disconnect()


async def test_a_resume_after_revocation_is_refused_too(user, fresh_key_cache):
    from chat.apikeys import api_key_revoke

    api_key, key = await sync_to_async(api_key_create)(owner=user, name="ws")
    comm, connected = await handshake([(b"authorization", f"Bearer {key}".encode())])
    assert connected
    await sync_to_async(api_key_revoke)(api_key=api_key)
    await _assert_refused_and_closed(comm, json.dumps({"type": "resume", "requestId": "r", "id": "c1"}), "r")
    await comm.disconnect()


async def test_a_revocation_elsewhere_reaches_the_socket_within_the_cache_period(
    user, fresh_key_cache, settings
):
    """Another worker revokes (a raw UPDATE: no signal here): the socket keeps working while the
    cached verification is fresh, and is refused once it is older than API_KEY_CACHE_SECONDS."""
    import asyncio

    settings.API_KEY_CACHE_SECONDS = 0.5
    _, key = await sync_to_async(api_key_create)(owner=user, name="ws")
    comm, connected = await handshake([(b"authorization", f"Bearer {key}".encode())])
    assert connected
    loop = asyncio.get_running_loop()
    await ApiKey.objects.filter(owner=user).aupdate(revoked_at=timezone.now())
    revoked_at = loop.time()
    n = 0
    while True:  # resumes are cheap (no-active); each waits for its answer
        n += 1
        await comm.send_to(text_data=json.dumps({"type": "resume", "requestId": f"r{n}", "id": "c1"}))
        answer = json.loads(await comm.receive_from(timeout=10))
        if answer.get("code") == "unauthorized":
            break
        assert answer["type"] in {"no-active", "error"} and answer.get("code") != "unauthorized"
        assert loop.time() - revoked_at < 0.5 + 2.0, "still served long after the cache period"
    assert loop.time() - revoked_at <= 0.5 + 2.0
    assert (await comm.receive_output(timeout=10))["code"] == 4401
    await comm.disconnect()


async def test_cookie_sockets_are_not_affected_by_key_checks(user):
    cookie = await sync_to_async(_cookie)(user)
    comm, connected = await handshake([(b"cookie", cookie.encode()), (b"origin", b"http://127.0.0.1")])
    assert connected
    await comm.send_to(text_data=json.dumps({"type": "resume", "requestId": "r", "id": "c1"}))
    answer = json.loads(await comm.receive_from(timeout=10))
    assert answer["requestId"] == "r" and answer.get("code") != "unauthorized"
    await comm.disconnect()


# --- across two daphne processes on PostgreSQL + Redis ------------------------------------------


@pytest.mark.services
async def test_a_key_revoked_through_one_process_stops_a_socket_on_another(user, scripted_model, tmp_path):
    """Two daphne processes (PostgreSQL + Redis). A Bearer socket on A runs a turn; the key is
    revoked with DELETE /api/v1/keys/<id>/ on B; within API_KEY_CACHE_SECONDS (1 s here) a send on
    A's already-open socket is refused with ``unauthorized`` and the socket closes (4401)."""
    import asyncio

    import httpx
    import websockets

    require_services(postgres=True, redis=True)
    api_key, key = await sync_to_async(api_key_create)(owner=user, name="ws")
    env = daphne_env(workspaces=tmp_path / "ws", scripted_url=scripted_model.url, API_KEY_CACHE_SECONDS="1")
    servers = [DaphneServer(env, name="revocation") for _ in range(2)]
    try:
        for server in servers:
            server.launch()
        for server in servers:
            await sync_to_async(server.wait_ready, thread_sensitive=False)()
        a, b = servers
        headers = {"Authorization": f"Bearer {key}"}
        async with websockets.connect(a.ws_url, additional_headers=headers) as ws:
            await ws.send(_send("multi", "hello", "t1"))
            async with asyncio.timeout(60):
                while (frame := json.loads(await ws.recv()))["type"] not in {"end", "error"}:
                    pass
            assert frame["type"] == "end", frame
            async with httpx.AsyncClient(base_url=b.url, headers=headers, timeout=30) as http:
                resp = await http.delete(f"/api/v1/keys/{api_key.pk}/")
            assert resp.status_code == 204
            loop = asyncio.get_running_loop()
            revoked_at = loop.time()
            n = 0
            async with asyncio.timeout(10):
                while True:
                    n += 1
                    await ws.send(json.dumps({"type": "resume", "requestId": f"r{n}", "id": "multi"}))
                    answer = json.loads(await ws.recv())
                    if answer.get("code") == "unauthorized":
                        break
                    assert loop.time() - revoked_at < 1.0 + 2.0, "A still serves the revoked key"
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await ws.recv()
            assert closed.value.rcvd.code == 4401
        # A new socket with the key is refused by both processes.
        for server in servers:
            with pytest.raises(websockets.InvalidStatus):
                async with websockets.connect(server.ws_url, additional_headers=headers):
                    pass
    finally:
        for server in servers:
            server.stop()

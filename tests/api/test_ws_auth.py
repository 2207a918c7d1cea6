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
    comm, connected = await handshake([(b"authorization", f"Bearer {key}".encode()), (b"origin", b"http://localhost")])
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
    comm, connected = await handshake([(b"authorization", f"Bearer {key}".encode()), (b"origin", b"http://evil.example")])
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
        [(b"authorization", f"Bearer {key}".encode()), (b"cookie", cookie.encode()), (b"origin", b"http://127.0.0.1")],
    ):
        comm, connected = await handshake(headers)
        await comm.disconnect()
        assert not connected, headers


async def test_no_credentials_is_refused():
    comm, connected = await handshake([(b"origin", b"http://127.0.0.1")])
    await comm.disconnect()
    assert not connected

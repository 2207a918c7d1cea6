"""A client that is gone while its socket's forwarding still sends. Under load daphne can hand
the application a send for a socket whose protocol has already started closing: autobahn raises
``Disconnected`` before the consumer hears ``websocket.disconnect``. That forwarding must end
quietly (no error logged, no "Task exception was never retrieved", no error frame attempt), and
the turn runs on to its normal end for a client that resumes. The race is timing-dependent on a
real server, so the ASGI ``send`` below raises exactly what daphne raises, after a few frames."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid

import pytest
from autobahn.exception import Disconnected
from channels.testing import WebsocketCommunicator

from chat.models import ChatTurn
from tests.chat.conftest import ORIGIN, send_frame, session_cookie_async

pytestmark = [pytest.mark.django_db(transaction=True)]


def _closing_after(app, frames: int):
    """``app`` whose outgoing websocket frames raise ``Disconnected`` after the first ``frames``."""

    async def wrapped(scope, receive, send):
        sent = 0

        async def closing_send(message):
            nonlocal sent
            if message["type"] == "websocket.send":
                sent += 1
                if sent > frames:
                    raise Disconnected("Attempt to send on a closed protocol")
            await send(message)

        return await app(scope, receive, closing_send)

    return wrapped


@pytest.mark.parametrize("backend", ["backend_api", "backend_sdk"])
async def test_a_send_on_a_closed_protocol_ends_the_forwarding_quietly(backend, request, user, caplog):
    from copilot_project.asgi import application

    request.getfixturevalue(backend)
    loop_errors: list[dict] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: loop_errors.append(ctx))
    headers = [(b"cookie", (await session_cookie_async(user)).encode()), (b"origin", ORIGIN)]
    comm = WebsocketCommunicator(_closing_after(application, 4), "/ws/chat/", headers=headers)
    assert (await comm.connect(timeout=10))[0]
    chat_id = str(uuid.uuid4())
    caplog.set_level(logging.INFO, logger="chat")
    await comm.send_to(text_data=json.dumps(send_frame(chat_id, "/slow 6 50")))
    for _ in range(4):  # start + the first chunks, then the "socket" is closing
        await comm.receive_from(timeout=30)

    async def turn_status() -> str:
        while True:
            turn = await ChatTurn.objects.filter(session__client_id=chat_id).afirst()
            if turn is not None and turn.status != ChatTurn.Status.RUNNING:
                return turn.status
            await asyncio.sleep(0.05)

    assert await asyncio.wait_for(turn_status(), 60) == ChatTurn.Status.FINISHED
    assert await comm.receive_nothing(timeout=0.3)  # no error frame went out (nor was tried)
    await comm.disconnect()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [
        r.getMessage() for r in caplog.records
    ]
    assert not loop_errors

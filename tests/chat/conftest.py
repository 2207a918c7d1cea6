"""Fixtures for the streaming-turn tests: the real ASGI app (origin validator + cookie auth),
WebsocketCommunicator clients, the real run_turn against the scripted model."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client

from tests.agents.conftest import (  # noqa: F401 - fixture and helper re-exports
    requests_since,
    scripted_model,
    text_of,
    use_fast_retries,
)

ORIGIN = b"http://127.0.0.1"
RECV_TIMEOUT = 20.0
DONE_TYPES = ("end", "error", "no-active")  # the frames that end a request


def session_cookie(user) -> str:
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}"


class WsClient:
    """A WebsocketCommunicator speaking the WebSocketChatTransport frames."""

    def __init__(self, communicator: WebsocketCommunicator) -> None:
        self.comm = communicator
        self.inbox: dict[str | None, list[dict[str, Any]]] = {}

    async def send(self, frame: dict[str, Any] | str) -> None:
        await self.comm.send_to(text_data=frame if isinstance(frame, str) else json.dumps(frame))

    async def recv(self, timeout: float = RECV_TIMEOUT) -> dict[str, Any]:
        return json.loads(await self.comm.receive_from(timeout=timeout))

    async def frames_until_done(
        self, request_id: str | None, timeout: float = RECV_TIMEOUT
    ) -> list[dict[str, Any]]:
        """Frames of one request until its end / error / no-active (other requests' frames are
        kept in the inbox)."""
        out = self.inbox.pop(request_id, [])
        if out and out[-1]["type"] in DONE_TYPES:
            return out
        return out + await self.frames_until(request_id, lambda f: f["type"] in DONE_TYPES, timeout)

    async def frames_until(
        self, request_id: str, predicate, timeout: float = RECV_TIMEOUT
    ) -> list[dict[str, Any]]:
        """Frames of one request up to (including) the first that satisfies ``predicate``."""
        out: list[dict[str, Any]] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            frame = await self.recv(timeout=max(0.1, deadline - loop.time()))
            if frame.get("requestId") != request_id:
                self.inbox.setdefault(frame.get("requestId"), []).append(frame)
                continue
            out.append(frame)
            if predicate(frame):
                return out

    async def close(self) -> None:
        await self.comm.disconnect()


def send_frame(
    chat_id: str, text: str, *, request_id: str | None = None, trigger: str = "submit-message", files=None
):
    parts: list[dict[str, Any]] = [{"type": "text", "text": text}] + list(files or [])
    return {
        "type": "send",
        "requestId": request_id or uuid.uuid4().hex,
        "id": chat_id,
        "trigger": trigger,
        "messageId": None,
        "messages": [{"id": uuid.uuid4().hex, "role": "user", "parts": parts}],
        "headers": {},
        "body": {},
        "metadata": None,
    }


async def ws_recv_until(ws, request_id: str, pred, timeout: float = 30.0) -> list[dict[str, Any]]:
    """Frames of one request from a ``websockets`` client (a real server) until ``pred`` or the
    request's end; other requests' frames are dropped."""
    out: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        while True:
            frame = json.loads(await ws.recv())
            if frame.get("requestId") != request_id:
                continue
            out.append(frame)
            if pred(frame) or frame["type"] in DONE_TYPES:
                return out


def chunks_of(frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [f["chunk"] for f in frames if f["type"] == "chunk"]


@pytest.fixture
def backend_api(settings, scripted_model, tmp_path):
    settings.AGENT_BACKEND = "api"
    settings.AGENT_WORKSPACE_ROOT = tmp_path / "workspaces"
    settings.AGENT_HEARTBEAT_SECONDS = 10.0
    return scripted_model


@pytest.fixture
def backend_sdk(settings, scripted_model, tmp_path):
    settings.AGENT_BACKEND = "sdk"
    settings.AGENT_WORKSPACE_ROOT = tmp_path / "workspaces"
    return scripted_model


@pytest.fixture
async def connect(user):
    """``await connect()`` -> an accepted WsClient for ``user`` (or another user / no cookie)."""
    from copilot_project.asgi import application

    opened: list[WsClient] = []

    async def _connect(
        as_user=None, *, cookie: bool = True, origin: bytes | None = ORIGIN, expect_ok: bool = True
    ):
        headers = []
        if cookie:
            headers.append((b"cookie", (await session_cookie_async(as_user or user)).encode()))
        if origin is not None:
            headers.append((b"origin", origin))
        comm = WebsocketCommunicator(application, "/ws/chat/", headers=headers)
        connected, code = await comm.connect(timeout=10)
        client = WsClient(comm)
        if connected:
            opened.append(client)
        if expect_ok:
            assert connected, f"websocket refused ({code})"
            return client
        return connected, code, client

    yield _connect
    for client in opened:
        try:
            await client.close()
        except Exception:  # noqa: BLE001
            pass
    from chat.runtime import turn_wait_idle

    await turn_wait_idle(timeout=20)


async def session_cookie_async(user) -> str:
    return await sync_to_async(session_cookie)(user)


@pytest.fixture
def fast_retries_settings(settings):
    return use_fast_retries(settings, max_retries=2)


def model_calls(server, mark: int) -> list[dict]:
    """Turn requests to the scripted model since ``mark`` (title side requests excluded)."""
    return [r for r in requests_since(server, mark) if (r.get("body") or {}).get("max_tokens", 0) > 64]


def answer_frame(
    chat_id: str, request: dict[str, Any], *, approved: bool, reason: str = ""
) -> dict[str, Any]:
    """What ``Chat.addToolApprovalResponse`` + ``sendAutomaticallyWhen`` send: the assistant
    message, its asked tool part now ``approval-responded``."""
    approval: dict[str, Any] = {"id": request["approvalId"], "approved": approved}
    if reason:
        approval["reason"] = reason
    part = {
        "type": "tool-Bash",
        "toolCallId": request["toolCallId"],
        "state": "approval-responded",
        "input": {},
        "approval": approval,
    }
    frame = send_frame(chat_id, "unused")
    frame["messageId"] = "msg-x"
    frame["messages"] = [
        frame["messages"][0],
        {"id": "msg-x", "role": "assistant", "parts": [{"type": "step-start"}, part]},
    ]
    return frame

"""Two real daphne processes sharing PostgreSQL and Redis: a turn started through one is
resumed (and stopped) through the other."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

from tests.chat.conftest import send_frame, session_cookie
from tests.conftest import require_services

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.services]

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"daphne exited early with {proc.returncode}: {proc.stderr.read().decode()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"daphne on port {port} did not start")


@pytest.fixture
def daphnes(scripted_model, tmp_path):
    require_services(postgres=True, redis=True)
    db = settings.DATABASES["default"]
    url = f"postgres://{db['USER']}:{db.get('PASSWORD') or ''}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{connection.settings_dict['NAME']}"
    env = {
        **os.environ,
        "DEBUG": "true",
        "DATABASE_URL": url,
        "REDIS_URL": settings.REDIS_URL,
        "REDIS_KEY_PREFIX": settings.REDIS_KEY_PREFIX,
        "ANTHROPIC_BASE_URL": scripted_model.url,
        "ANTHROPIC_API_KEY": "",
        "AGENT_BACKEND": "api",
        "AGENT_WORKSPACE_ROOT": str(tmp_path / "ws"),
        "DJANGO_SETTINGS_MODULE": "copilot_project.settings",
        "LOG_LEVEL": "WARNING",
    }
    daphne = str(Path(sys.executable).parent / "daphne")
    procs, ports = [], []
    try:
        for _ in range(2):
            port = free_port()
            proc = subprocess.Popen(
                [daphne, "-b", "127.0.0.1", "-p", str(port), "copilot_project.asgi:application"],
                cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )
            procs.append(proc)
            ports.append(port)
        for port, proc in zip(ports, procs):
            wait_listening(port, proc)
        yield ports
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def recv_until(ws, request_id: str, pred, timeout: float = 30.0) -> list[dict]:
    out = []
    async with asyncio.timeout(timeout):
        while True:
            frame = json.loads(await ws.recv())
            if frame.get("requestId") != request_id:
                continue
            out.append(frame)
            if pred(frame) or frame["type"] in ("end", "error", "no-active"):
                return out


def is_delta(frame) -> bool:
    return frame["type"] == "chunk" and frame["chunk"]["type"] == "text-delta"


async def test_turn_started_on_one_process_resumed_and_stopped_on_another(daphnes, user):
    import websockets
    from asgiref.sync import sync_to_async

    cookie = await sync_to_async(session_cookie)(user)
    headers = {"Cookie": cookie}
    port_a, port_b = daphnes
    chat_id = str(uuid.uuid4())
    async with (
        websockets.connect(f"ws://127.0.0.1:{port_a}/ws/chat/", additional_headers=headers, origin="http://127.0.0.1") as a,
        websockets.connect(f"ws://127.0.0.1:{port_b}/ws/chat/", additional_headers=headers, origin="http://127.0.0.1") as b,
    ):
        # 1. Started through A, resumed mid-turn through B from a sequence: the rest, in order.
        frame = send_frame(chat_id, "/slow 30 30")
        await a.send(json.dumps(frame))
        seen = await recv_until(a, frame["requestId"], is_delta)
        last = seen[-1]["sequence"]
        await b.send(json.dumps({"type": "resume", "requestId": "rb", "id": chat_id, "lastSequence": last}))
        from_b = await recv_until(b, "rb", lambda f: f["type"] == "end")
        from_a = seen + await recv_until(a, frame["requestId"], lambda f: f["type"] == "end")
        chunks_a = [(f["sequence"], f["chunk"]) for f in from_a if f["type"] == "chunk"]
        chunks_b = [(f["sequence"], f["chunk"]) for f in from_b if f["type"] == "chunk"]
        assert from_b[0]["type"] == "start" and from_b[-1]["type"] == "end"
        assert chunks_b == [c for c in chunks_a if c[0] > last]
        assert chunks_b[-1][1]["type"] == "finish"
        text = "".join(c["delta"] for _, c in chunks_a if c["type"] == "text-delta")
        assert text == "".join(f"w{i} " for i in range(30))

        # 2. A second turn through A, followed through B from its start, stopped through B.
        frame = send_frame(chat_id, "/slow 50 400")
        await a.send(json.dumps(frame))
        await recv_until(a, frame["requestId"], is_delta)
        await b.send(json.dumps({"type": "resume", "requestId": "rb2", "id": chat_id}))
        got_b = await recv_until(b, "rb2", is_delta)
        assert got_b[0]["type"] == "start" and got_b[1]["sequence"] == 0
        # B refuses a concurrent send: the lock is shared.
        clash = send_frame(chat_id, "me too")
        await b.send(json.dumps(clash))
        refused = await recv_until(b, clash["requestId"], lambda f: False)
        assert refused[-1]["type"] == "error" and "stream_already_active" in refused[-1]["errorText"]
        await b.send(json.dumps({"type": "abort", "requestId": "rb2"}))
        rest_b = await recv_until(b, "rb2", lambda f: f["type"] == "end", timeout=15)
        rest_a = await recv_until(a, frame["requestId"], lambda f: f["type"] == "end", timeout=15)
        stopped = {"type": "finish", "finishReason": "stop", "messageMetadata": {"stopped": True}}
        assert [f for f in rest_b if f["type"] == "chunk"][-1]["chunk"] == stopped
        assert [f for f in rest_a if f["type"] == "chunk"][-1]["chunk"] == stopped

        # 3. The session is free again everywhere: B starts the next turn.
        nxt = send_frame(chat_id, "after the stop")
        await b.send(json.dumps(nxt))
        done = await recv_until(b, nxt["requestId"], lambda f: f["type"] == "end")
        assert done[-1]["type"] == "end"

    from chat.models import ChatMessage, ChatSession

    session = await ChatSession.objects.aget(owner=user, client_id=chat_id)
    kinds = [tuple(row) async for row in ChatMessage.objects.filter(session=session).order_by("sequence").values_list("role", "kind")]
    assert kinds == [
        ("user", "normal"), ("assistant", "normal"),
        ("user", "normal"), ("assistant", "normal"), ("assistant", "stopped"),
        ("user", "normal"), ("assistant", "normal"),
    ]

"""Process deaths around a running turn, with real daphne subprocesses: SIGTERM (graceful: the
turn is recorded as interrupted, partial output kept, lock released, the client told) and
``kill -9`` then restart (the lease / ``expire_stream_locks`` free the session)."""

from __future__ import annotations

import asyncio
import io
import json
import signal
import uuid

import pytest
from asgiref.sync import sync_to_async
from django.core.management import call_command

from chat.models import ChatMessage, ChatTurn
from chat.runtime.shutdown import SHUTDOWN_ERROR_TEXT
from tests.chat.conftest import session_cookie, ws_recv_until
from tests.reliability.conftest import child_pids, chunks_of, cmdline, deltas, send_frame, text_of, turn_rows
from tests.servers import DaphneServer, daphne_env
from tests.waiting import wait_until

pytestmark = [pytest.mark.django_db(transaction=True)]


@pytest.fixture
def daphne_factory(scripted_model, tmp_path):
    servers = []
    env = daphne_env(
        workspaces=tmp_path / "ws", scripted_url=scripted_model.url, TURN_SHUTDOWN_GRACE_SECONDS="5"
    )

    def start(port: int | None = None):
        server = DaphneServer(env, port=port, name="shutdown").start()
        servers.append(server)
        return server.proc, server.port

    yield start
    for server in servers:
        server.stop(signal.SIGKILL)


async def _connect(port: int, user):
    import websockets

    cookie = await sync_to_async(session_cookie)(user)
    return websockets.connect(
        f"ws://127.0.0.1:{port}/ws/chat/",
        additional_headers={"Cookie": cookie},
        origin=f"http://127.0.0.1:{port}",
    )


def _text(frames) -> str:
    return "".join(
        f["chunk"]["delta"] for f in frames if f["type"] == "chunk" and f["chunk"]["type"] == "text-delta"
    )


async def _next_turn_works(port: int, user, chat_id: str) -> None:
    async with await _connect(port, user) as ws:
        frame = send_frame(chat_id, "/long 3 next turn")
        await ws.send(json.dumps(frame))
        frames = await ws_recv_until(ws, frame["requestId"], lambda f: False)
        assert frames[-1]["type"] == "end", frames[-3:]
        assert frames[-2]["chunk"]["type"] == "finish"


async def _lock_free(session_id) -> bool:
    from chat.runtime.locks import lock_holder, session_key

    return await sync_to_async(lock_holder)(session_key(session_id)) is None


async def test_sigterm_interrupts_running_turns_gracefully(daphne_factory, user):
    import websockets

    proc, port = daphne_factory()
    chat_id = str(uuid.uuid4())
    async with await _connect(port, user) as ws:
        frame = send_frame(chat_id, "/slow 100 300")
        await ws.send(json.dumps(frame))
        frames = await ws_recv_until(ws, frame["requestId"], deltas(8))
        proc.send_signal(signal.SIGTERM)
        try:
            frames += await ws_recv_until(ws, frame["requestId"], lambda f: False, timeout=15)
        except websockets.ConnectionClosed:
            pass
    await asyncio.get_running_loop().run_in_executor(None, proc.wait, 15)
    chunks = [f["chunk"] for f in frames if f["type"] == "chunk"]
    assert [f["sequence"] for f in frames if f["type"] == "chunk"] == list(range(len(chunks)))
    assert chunks[-1] == {"type": "error", "errorText": SHUTDOWN_ERROR_TEXT}, chunks[-3:]
    seen = _text(frames)
    assert seen.startswith("w0 w1 w2 w3 w4 w5 w6 w7 ")

    session, msgs, turns = await turn_rows(chat_id, user)
    assert [(t.status, t.error_code) for t in turns] == [(ChatTurn.Status.INTERRUPTED, "server_shutdown")]
    assert [(m.role, m.kind) for m in msgs] == [
        ("user", "normal"),
        ("assistant", "normal"),
        ("assistant", "retryable_error"),
    ]
    assert msgs[1].text == seen  # everything the client saw, persisted once
    assert msgs[2].metadata["code"] == "server_shutdown" and msgs[2].metadata["retryable"] is True
    assert await _lock_free(session.pk)

    _proc2, port2 = daphne_factory()
    await _next_turn_works(port2, user, chat_id)


async def test_daphne_killed_mid_turn_then_restarted(daphne_factory, user):
    import websockets

    proc, port = daphne_factory()
    chat_id = str(uuid.uuid4())
    async with await _connect(port, user) as ws:
        frame = send_frame(chat_id, "/slow 100 300")
        await ws.send(json.dumps(frame))
        frames = await ws_recv_until(ws, frame["requestId"], deltas(26))  # > one 2 s snapshot
        proc.send_signal(signal.SIGKILL)
        with pytest.raises(websockets.ConnectionClosed):  # the client is told: its socket drops
            await ws_recv_until(ws, frame["requestId"], lambda f: False, timeout=10)
    await asyncio.get_running_loop().run_in_executor(None, proc.wait, 10)
    seen = _text(frames)

    # Restarted (same port). The dead turn is still marked running until the lease check runs.
    _proc2, port2 = daphne_factory(port)
    session, _msgs, turns = await turn_rows(chat_id, user)
    assert [t.status for t in turns] == [ChatTurn.Status.RUNNING]
    await asyncio.sleep(1.1)
    out = io.StringIO()
    await sync_to_async(call_command)("expire_stream_locks", "--lease", "1", stdout=out)
    assert "marked 1 dead turn(s) interrupted" in out.getvalue(), out.getvalue()

    session, msgs, turns = await turn_rows(chat_id, user)
    assert [t.status for t in turns] == [ChatTurn.Status.INTERRUPTED]
    assert [(m.role, m.kind) for m in msgs] == [
        ("user", "normal"),
        ("assistant", "normal"),
        ("assistant", "retryable_error"),
    ]
    # What was persisted before the kill is a non-empty prefix of what the client saw, once.
    assert msgs[1].text and seen.startswith(msgs[1].text), (msgs[1].text, seen)
    assert await _lock_free(session.pk)
    async with await _connect(port2, user) as ws:
        await ws.send(json.dumps({"type": "resume", "requestId": "r", "id": chat_id}))
        assert (await ws_recv_until(ws, "r", lambda f: False))[-1]["type"] == "no-active"
    await _next_turn_works(port2, user, chat_id)
    assert (
        await ChatMessage.objects.filter(session=session, kind="retryable_error").acount() == 0
    )  # cleared (lesson 6)


@pytest.mark.cli
async def test_shutdown_hook_in_process_sdk(backend_sdk, connect, user):
    """The same shutdown path without daphne, through the sdk backend (the CLI is interrupted)."""
    from chat import runtime
    from chat.runtime import shutdown

    ws = await connect()
    chat_id = str(uuid.uuid4())
    frame = send_frame(chat_id, "/slow 100 300")
    await ws.send(frame)
    frames = await ws.frames_until(frame["requestId"], deltas(3), timeout=60)
    try:
        assert await shutdown.turns_interrupt_all(grace=10) == 1
        with pytest.raises(runtime.TurnRefused) as refused:
            await runtime.turn_start(user=user, chat_id=chat_id, text="during shutdown")
        assert refused.value.code == "unavailable"
    finally:
        shutdown.shutdown_reset()
    frames += await ws.frames_until_done(frame["requestId"], timeout=15)
    chunks = chunks_of(frames)
    assert chunks[-1] == {"type": "error", "errorText": SHUTDOWN_ERROR_TEXT}
    session, msgs, turn_list = await turn_rows(chat_id, user)
    assert [(t.status, t.error_code) for t in turn_list] == [(ChatTurn.Status.INTERRUPTED, "server_shutdown")]
    assert [(m.role, m.kind) for m in msgs] == [
        ("user", "normal"),
        ("assistant", "normal"),
        ("assistant", "retryable_error"),
    ]
    assert msgs[1].text == text_of(chunks)
    assert await _lock_free(session.pk)


@pytest.mark.cli
async def test_sigterm_exits_within_20s_with_kept_cli_clients(scripted_model, tmp_path, user):
    """SIGTERM to an sdk worker that keeps idle Claude Code CLI clients (and runs a turn): the
    process exits well within 20 s and takes its CLI processes with it. Before chat.runtime.shutdown
    closed the kept clients (agents.backends.sdk.close_all_clients) it never exited: its main
    thread waited in ``threading._shutdown`` for an anyio worker thread that stops only when the
    kept client's owner task ends."""

    env = daphne_env(
        workspaces=tmp_path / "ws",
        scripted_url=scripted_model.url,
        AGENT_BACKEND="sdk",
        ANTHROPIC_API_KEY="sk-ant-test-offline",  # the credential-proxy path, as in production
        TURN_SHUTDOWN_GRACE_SECONDS="5",
        # Unjailed, the SDK looks the CLI up in an anyio worker thread (the thread that held the
        # process); the jail's launcher passes the CLI path, so no such thread starts at all.
        AGENT_JAIL="off",
    )
    server = DaphneServer(env, name="shutdown-sdk").start()
    try:
        async with await _connect(server.port, user) as ws:
            idle = send_frame(str(uuid.uuid4()), "/long 3 a turn whose CLI is kept")
            await ws.send(json.dumps(idle))
            frames = await ws_recv_until(ws, idle["requestId"], lambda f: False, timeout=60)
            assert frames[-2]["chunk"]["type"] == "finish", frames[-3:]
            running = send_frame(str(uuid.uuid4()), "/slow 100 300")
            await ws.send(json.dumps(running))
            await ws_recv_until(ws, running["requestId"], deltas(3), timeout=60)
            clis = [p for p in child_pids(server.pid) if "claude" in cmdline(p)]
            assert len(clis) >= 2, clis  # the kept one and the busy one
            loop = asyncio.get_running_loop()
            started = loop.time()
            server.proc.send_signal(signal.SIGTERM)
            code = await loop.run_in_executor(None, server.proc.wait, 25)
            took = loop.time() - started
        assert took < 20, f"exited {took:.1f}s after SIGTERM"
        assert code == 0, f"exit code {code} (1: the shutdown watchdog had to end it)\n{server.log_tail()}"
        await wait_until(
            lambda: not [p for p in clis if cmdline(p)],
            timeout=5,
            message="CLI processes outlived their worker",
        )
    finally:
        server.stop(signal.SIGKILL)

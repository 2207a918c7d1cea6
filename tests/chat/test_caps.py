"""Concurrency caps (docs/security.md, "Concurrency caps"): running turns per user (over every
process, counted in the database), turns per worker, CLI processes per worker (sdk backend), and
a closed socket starts nothing. A turn over a cap is refused with ``too_many_turns`` through both
doors and leaves nothing behind."""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
import uuid
from pathlib import Path

import pytest
from asgiref.sync import SyncToAsync, sync_to_async
from channels.testing import HttpCommunicator
from django.utils import timezone

from chat import runtime
from chat.models import ChatMessage, ChatSession, ChatTurn
from chat.runtime import supervision
from tests.api.conftest import isolated_cache, key_for  # noqa: F401 - fixture re-export
from tests.chat.conftest import ORIGIN, WsClient, send_frame, session_cookie

pytestmark = pytest.mark.django_db(transaction=True)

SLOW = "/slow 50 400"  # 20 s of deltas: running until aborted


def is_delta(frame) -> bool:
    return frame["type"] == "chunk" and frame["chunk"]["type"] == "text-delta"


async def start_running(ws, chat_id: str | None = None) -> dict:
    """Send a slow turn and return its frame once its first text delta arrived (it runs)."""
    frame = send_frame(chat_id or str(uuid.uuid4()), SLOW)
    await ws.send(frame)
    got = await ws.frames_until(
        frame["requestId"], lambda f: is_delta(f) or f["type"] in ("error", "end"), timeout=90
    )
    assert is_delta(got[-1]), got
    return frame


async def abort_all(ws, frames: list[dict]) -> None:
    for frame in frames:
        await ws.send({"type": "abort", "requestId": frame["requestId"]})
    for frame in frames:
        await ws.frames_until_done(frame["requestId"], timeout=30)


async def refused_frame(ws, chat_id: str) -> dict:
    frame = send_frame(chat_id, "one too many")
    await ws.send(frame)
    got = await ws.frames_until_done(frame["requestId"])
    assert [f["type"] for f in got] == ["error"], got
    return got[0]


async def nothing_stored_for(user, chat_id: str) -> None:
    assert not await ChatSession.objects.filter(owner=user, client_id=chat_id).aexists()
    assert not await ChatMessage.objects.filter(session__client_id=chat_id).aexists()


async def rest_post(user_key: str, chat_id: str, text: str = "over the cap"):
    from copilot_project.asgi import application

    body = json.dumps(
        {
            "id": chat_id,
            "messages": [{"id": "m1", "role": "user", "parts": [{"type": "text", "text": text}]}],
            "trigger": "submit-message",
        }
    ).encode()
    comm = HttpCommunicator(
        application,
        "POST",
        "/api/v1/chat/",
        body=body,
        headers=[
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"authorization", f"Bearer {user_key}".encode()),
            (b"host", b"127.0.0.1"),
        ],
    )
    return await comm.get_response(timeout=30)


@pytest.fixture
def caps(settings):
    settings.AGENT_MAX_TURNS_PER_USER = 3
    settings.AGENT_MAX_TURNS_PER_WORKER = 16
    settings.API_THROTTLE_CHAT = "100000/min"
    return settings


async def test_fourth_turn_of_a_user_is_refused_through_both_doors(
    backend_api, caps, connect, user, other_user, key_for
):
    ws = await connect()
    running = [await start_running(ws) for _ in range(3)]
    assert runtime.registry.slot_counts()["turns"] == 3

    # websocket: an error frame with the code and a clear text; nothing stored for the new chat.
    chat_id = str(uuid.uuid4())
    frame = await refused_frame(ws, chat_id)
    assert frame["code"] == "too_many_turns"
    assert "at once (3)" in frame["errorText"] and "already" not in frame["errorText"]
    await nothing_stored_for(user, chat_id)

    # REST: 429, the error body, Retry-After; nothing stored either.
    key = await sync_to_async(key_for)(user)
    response = await rest_post(key, chat_id)
    assert response["status"] == 429, response["body"]
    headers = {k.decode().lower(): v.decode() for k, v in response["headers"]}
    assert int(headers["retry-after"]) >= 1
    body = json.loads(response["body"])
    assert body["error"]["code"] == "too_many_turns" and "too_many_turns" in body["error"]["message"]
    await nothing_stored_for(user, chat_id)
    # An existing chat of the user is refused the same way, without a user message.
    existing = running[0]["id"]
    before = await ChatMessage.objects.filter(session__client_id=existing).acount()
    assert (await refused_frame(ws, str(uuid.uuid4())))["code"] == "too_many_turns"
    assert await ChatMessage.objects.filter(session__client_id=existing).acount() == before
    assert await ChatTurn.objects.filter(session__owner=user).acount() == 3

    # The cap is per user: another user starts a turn meanwhile.
    other = await connect(other_user)
    theirs = await start_running(other)

    # One ends: the user may start one again.
    await abort_all(ws, running[:1])
    again = await start_running(ws, chat_id)
    await abort_all(ws, running[1:] + [again])
    await abort_all(other, [theirs])


async def test_per_user_cap_counts_turns_of_other_processes_in_the_database(backend_api, caps, connect, user):
    """Turns running in another worker are ``ChatTurn`` rows with a live heartbeat: they count;
    rows whose heartbeat is older than the lease (a dead worker) do not."""
    sessions = [await ChatSession.objects.acreate(owner=user, client_id=f"elsewhere-{i}") for i in range(3)]
    now = timezone.now()
    rows = [
        await ChatTurn.objects.acreate(
            session=s, backend="api", model="m", worker="other-host:1", heartbeat_at=now
        )
        for s in sessions
    ]
    ws = await connect()
    chat_id = str(uuid.uuid4())
    assert (await refused_frame(ws, chat_id))["code"] == "too_many_turns"
    await nothing_stored_for(user, chat_id)
    assert runtime.registry.slot_counts()["turns"] == 0  # the in-process slot was given back

    # The other worker died: its heartbeats are older than the lease.
    stale = now - dt.timedelta(seconds=supervision.LOCK_TTL + 5)
    await ChatTurn.objects.filter(pk=rows[0].pk).aupdate(heartbeat_at=stale)
    frame = send_frame(chat_id, "hello")
    await ws.send(frame)
    got = await ws.frames_until_done(frame["requestId"], timeout=30)
    assert got[-1]["type"] == "end"


async def test_per_worker_cap(backend_api, caps, connect, user, other_user, django_user_model):
    caps.AGENT_MAX_TURNS_PER_WORKER = 2
    third_user = await django_user_model.objects.acreate_user(username="carol", password="carol-password-1")
    a, b, c = await connect(user), await connect(other_user), await connect(third_user)
    running_a, running_b = await start_running(a), await start_running(b)
    chat_id = str(uuid.uuid4())
    frame = await refused_frame(c, chat_id)
    assert frame["code"] == "too_many_turns" and "server" in frame["errorText"]
    await nothing_stored_for(third_user, chat_id)
    await abort_all(a, [running_a])
    running_c = await start_running(c, chat_id)
    await abort_all(b, [running_b])
    await abort_all(c, [running_c])


async def test_closed_socket_starts_nothing(backend_api, caps, user):
    """Frames whose turn start still waits for the database when the socket closes start nothing:
    the database thread is held busy while they arrive, the socket closes, then it is freed."""
    from channels.testing import WebsocketCommunicator

    from copilot_project.asgi import application

    cookie = await sync_to_async(session_cookie)(user)
    comm = WebsocketCommunicator(
        application, "/ws/chat/", headers=[(b"cookie", cookie.encode()), (b"origin", ORIGIN)]
    )
    assert (await comm.connect(timeout=10))[0]
    ws = WsClient(comm)
    hold, entered = threading.Event(), threading.Event()

    def blocker() -> None:
        entered.set()
        hold.wait(timeout=30)

    blocked = SyncToAsync.single_thread_executor.submit(blocker)
    try:
        assert entered.wait(timeout=10)
        chat_ids = [str(uuid.uuid4()) for _ in range(5)]
        for chat_id in chat_ids:
            await ws.send(send_frame(chat_id, "queued"))
        await ws.close()
    finally:
        hold.set()
        blocked.result(timeout=30)
    await runtime.turn_wait_idle(timeout=20)
    assert await ChatTurn.objects.filter(session__owner=user).acount() == 0
    assert await ChatSession.objects.filter(owner=user).acount() == 0
    assert runtime.registry.slot_counts()["turns"] == 0


async def test_frames_queued_ahead_of_the_close_start_nothing(backend_api, caps, user):
    """A flood closed by its sender: the frames still wait in the consumer's inbox with the close
    behind them. None of them starts a turn (nor gets an answer)."""
    from channels.testing import WebsocketCommunicator

    from copilot_project.asgi import application

    cookie = await sync_to_async(session_cookie)(user)
    comm = WebsocketCommunicator(
        application, "/ws/chat/", headers=[(b"cookie", cookie.encode()), (b"origin", ORIGIN)]
    )
    assert (await comm.connect(timeout=10))[0]
    # No await that yields in between: all of it is queued before the consumer runs again.
    for i in range(20):
        comm.input_queue.put_nowait(
            {"type": "websocket.receive", "text": json.dumps(send_frame(f"queued-{i}", "hi"))}
        )
    comm.input_queue.put_nowait({"type": "websocket.disconnect", "code": 1000})
    await comm.wait(timeout=10)
    await runtime.turn_wait_idle(timeout=20)
    assert await ChatTurn.objects.filter(session__owner=user).acount() == 0
    assert await ChatSession.objects.filter(owner=user).acount() == 0
    assert await comm.receive_nothing(timeout=0.1)


async def test_start_with_a_closed_connection_writes_nothing(backend_api, caps, user):
    with pytest.raises(runtime.TurnRefused) as refused:
        await runtime.turn_start(user=user, chat_id="gone-chat", text="hi", alive=lambda: False)
    assert refused.value.code == "connection_closed"
    await nothing_stored_for(user, "gone-chat")


# --- sdk backend: CLI processes per worker --------------------------------------------------------


def cli_processes(root_pid: int | None = None) -> list[int]:
    """Descendants of ``root_pid`` (default: this process) running the Claude Code CLI."""
    found, todo = [], [root_pid or os.getpid()]
    while todo:
        pid = todo.pop()
        try:
            for task in (Path("/proc") / str(pid) / "task").iterdir():
                todo.extend(int(c) for c in (task / "children").read_text().split())
        except (OSError, ValueError):
            continue
        if pid == (root_pid or os.getpid()):
            continue
        try:
            argv = (Path("/proc") / str(pid) / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(part.endswith(b"/claude") or part == b"claude" for part in argv[:2]):
            found.append(pid)
    return found


@pytest.mark.cli
async def test_cli_processes_bounded_kept_clients_evicted_first(backend_sdk, caps, connect, user, settings):
    from agents.backends import sdk

    settings.AGENT_SDK_MAX_CLI_PROCESSES = 2
    settings.AGENT_SDK_MAX_IDLE_CLIENTS = 8
    settings.AGENT_SDK_IDLE_SECONDS = 300
    ws = await connect()

    async def finished_turn(chat_id: str) -> None:
        frame = send_frame(chat_id, "hello cli")
        await ws.send(frame)
        assert (await ws.frames_until_done(frame["requestId"], timeout=90))[-1]["type"] == "end"

    first, second, third = (str(uuid.uuid4()) for _ in range(3))
    await finished_turn(first)
    await finished_turn(second)
    kept = sdk.kept_clients()
    assert len(kept) == 2 and len(cli_processes()) == 2
    pids = {k["session_id"]: k["pid"] for k in kept}
    first_sid = str((await ChatSession.objects.aget(owner=user, client_id=first)).pk)
    second_sid = str((await ChatSession.objects.aget(owner=user, client_id=second)).pk)

    # A third chat: the least recently used kept CLI (the first chat's) is closed to make room.
    await finished_turn(third)
    kept = sdk.kept_clients()
    assert first_sid not in {k["session_id"] for k in kept} and second_sid in {k["session_id"] for k in kept}
    alive = cli_processes()
    assert len(alive) <= 2 and pids[first_sid] not in alive

    # Two busy sdk turns: every kept CLI is closed for them; a third is refused (all busy).
    running = [await start_running(ws) for _ in range(2)]
    assert sdk.kept_clients() == [] and len(cli_processes()) <= 2
    chat_id = str(uuid.uuid4())
    frame = await refused_frame(ws, chat_id)
    assert frame["code"] == "too_many_turns"
    await nothing_stored_for(user, chat_id)
    await abort_all(ws, running)
    assert len(cli_processes()) <= 2

"""Faults of the processes a turn depends on: the Claude Code CLI killed (``kill -9``), Redis
restarted without its data (a private redis-server, never the shared one), the database briefly
unavailable (SQLite: an exclusive lock held by another connection; PostgreSQL: the app's
connections terminated). The turn ends within a bounded time, what it produced is persisted
exactly once, the lock is free and the next turn works."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import time
import uuid

import pytest

from chat import runtime
from chat.models import ChatMessage, ChatTurn
from chat.runtime import locks, supervision
from tests.chat.conftest import chunks_of, send_frame
from tests.conftest import IN_CI, uses_postgres
from tests.reliability.conftest import (
    FAULT_TIMEOUT,
    assert_recovered,
    child_pids,
    cmdline,
    deltas,
    sequences_ok,
    text_of,
    turn_rows,
)
from tests.servers import free_port, wait_port
from tests.waiting import wait_until

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.cli
async def test_cli_killed_mid_turn(backend_sdk, connect, user):
    ws = await connect()
    chat_id = str(uuid.uuid4())
    frame = send_frame(chat_id, "/slow 100 200")
    await ws.send(frame)
    frames = await ws.frames_until(frame["requestId"], deltas(3), timeout=60)
    clis = [pid for pid in child_pids(os.getpid()) if "claude" in cmdline(pid).split(" ")[0]]
    assert clis, "no Claude Code CLI child process found"
    for pid in clis:
        os.kill(pid, signal.SIGKILL)
    started = time.monotonic()
    frames += await ws.frames_until_done(frame["requestId"], timeout=FAULT_TIMEOUT)
    assert time.monotonic() - started < 15
    chunks = chunks_of(frames)
    assert sequences_ok(frames) and chunks[-1]["type"] == "error", chunks[-3:]
    seen = text_of(chunks)
    assert seen.startswith("w0 w1 w2 ")
    msgs = await assert_recovered(ws, chat_id, user, seen_text=seen)
    assert [(m.role, m.kind) for m in msgs] == [
        ("user", "normal"),
        ("assistant", "normal"),
        ("assistant", "retryable_error"),
    ]


# --- Redis ---------------------------------------------------------------------------------------


class PrivateRedis:
    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_port(self.port, self.proc, timeout=10)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _reset_redis_clients() -> None:
    locks._sync_client = None
    locks._async_clients.clear()


@pytest.fixture
def private_redis(settings, backend_api):
    if shutil.which("redis-server") is None:
        if IN_CI:
            pytest.fail("redis-server is not installed")
        pytest.skip("redis-server is not installed")
    server = PrivateRedis()
    server.start()
    settings.REDIS_URL = server.url
    settings.REDIS_KEY_PREFIX = f"t_rel_private_{uuid.uuid4().hex[:6]}"
    _reset_redis_clients()
    try:
        yield server
    finally:
        server.kill()
        _reset_redis_clients()


async def _listen(handle, seen: list) -> None:
    async for seq, raw, _terminal in runtime.turn_listen(handle=handle):
        seen.append((seq, json.loads(raw)))


def _delta_count(seen) -> int:
    return sum(1 for _, c in seen if c["type"] == "text-delta")


async def test_redis_restarted_mid_turn(private_redis, user, monkeypatch):
    monkeypatch.setattr(supervision, "LOCK_TTL", 1.5)  # heartbeat every 0.5 s
    chat_id = str(uuid.uuid4())
    handle = await runtime.turn_start(user=user, chat_id=chat_id, text="/slow 100 40")
    key = locks.session_key(handle.session_id)
    seen: list = []
    listener = asyncio.create_task(_listen(handle, seen))
    await wait_until(lambda: _delta_count(seen) >= 5, timeout=20)
    private_redis.kill()  # every key is lost: the lock, the replay log, the control channel
    await asyncio.sleep(0.7)
    private_redis.start()
    # The turn's heartbeat notices the vanished lease and takes it back (same token).
    holder = await wait_until(
        lambda: locks.lock_holder_async(key), timeout=5, message="the running turn did not re-take its lock"
    )
    assert holder.meta["turn_id"] == handle.turn_id
    # ...so a second turn in the session is still refused while the first runs.
    with pytest.raises(runtime.TurnRefused) as refused:
        await runtime.turn_start(user=user, chat_id=chat_id, text="me too")
    assert refused.value.code == "stream_already_active"
    await asyncio.wait_for(listener, FAULT_TIMEOUT)
    assert [s for s, _ in seen] == list(range(len(seen)))
    chunks = [c for _, c in seen]
    assert chunks[-1] == {"type": "finish", "finishReason": "stop"}
    assert text_of(chunks) == "".join(f"w{i} " for i in range(40))
    await runtime.turn_wait_idle(timeout=10)
    assert await locks.lock_holder_async(key) is None
    session, msgs, turn_list = await turn_rows(chat_id, user)
    assert [(m.role, m.kind, m.text) for m in msgs][1] == ("assistant", "normal", text_of(chunks))
    assert [t.status for t in turn_list] == [ChatTurn.Status.FINISHED]
    # The next turn works (the pub/sub control listener reconnects too).
    handle2 = await runtime.turn_start(user=user, chat_id=chat_id, text="/long 3 next")
    after = []
    await asyncio.wait_for(_listen(handle2, after), FAULT_TIMEOUT)
    assert after[-1][1]["type"] == "finish"
    await runtime.turn_wait_idle(timeout=10)


# --- Database ------------------------------------------------------------------------------------


def _sqlite_hold_exclusive(path: str, seconds: float, ready) -> None:
    con = sqlite3.connect(path, timeout=10, isolation_level=None)
    try:
        con.execute("BEGIN EXCLUSIVE")
        ready.set()
        time.sleep(seconds)
        con.execute("COMMIT")
    finally:
        con.close()


def _pg_terminate_app_connections(seconds: float, main_pid: int | None, ready) -> int:
    """Terminate every other connection to the test database, repeatedly, for ``seconds``
    (except the test's own main-thread connection, which pytest-django's teardown uses)."""
    import psycopg
    from django.db import connection

    params = connection.get_connection_params()
    params.pop("cursor_factory", None)
    params.pop("context", None)
    killed = 0
    with psycopg.connect(
        **{k: v for k, v in params.items() if k in ("dbname", "user", "password", "host", "port")},
        autocommit=True,
    ) as con:
        ready.set()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            keep = {con.info.backend_pid, main_pid or 0}
            rows = con.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> ALL(%s)",
                (list(keep),),
            ).fetchall()
            for (pid,) in rows:
                killed += bool(con.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()[0])
            time.sleep(0.1)
    return killed


@pytest.fixture
def main_pg_pid(db):
    """The backend pid of the main thread's connection (pytest-django's teardown uses it)."""
    from django.db import connection

    if not uses_postgres():
        return None
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return cursor.fetchone()[0]


async def test_database_briefly_unavailable(backend_api, connect, user, main_pg_pid):
    import threading

    from django.db import connection

    ws = await connect()
    chat_id = str(uuid.uuid4())
    frame = send_frame(chat_id, "/slow 100 30")
    await ws.send(frame)
    frames = await ws.frames_until(frame["requestId"], deltas(3), timeout=20)
    ready = threading.Event()
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    if uses_postgres():
        outage = loop.run_in_executor(None, _pg_terminate_app_connections, 3.5, main_pg_pid, ready)
    else:
        outage = loop.run_in_executor(
            None, _sqlite_hold_exclusive, str(connection.settings_dict["NAME"]), 3.5, ready
        )
    await loop.run_in_executor(None, ready.wait, 10)
    frames += await ws.frames_until_done(frame["requestId"], timeout=FAULT_TIMEOUT)
    killed = await outage
    if uses_postgres():
        assert killed >= 1  # the fault really happened
        # The test's own async ORM calls (plain sync_to_async) share the cut connection.
        from channels.db import database_sync_to_async
        from django.db import close_old_connections

        await database_sync_to_async(close_old_connections)()
    assert time.monotonic() - started < 3.5 + 10
    chunks = chunks_of(frames)
    assert sequences_ok(frames) and chunks[-1] == {"type": "finish", "finishReason": "stop"}, chunks[-3:]
    seen = text_of(chunks)
    assert seen == "".join(f"w{i} " for i in range(30))
    msgs = await assert_recovered(ws, chat_id, user, seen_text=seen)
    assert [(m.role, m.kind) for m in msgs] == [("user", "normal"), ("assistant", "normal")]
    session, _msgs, turn_list = await turn_rows(chat_id, user)
    assert turn_list[0].status == ChatTurn.Status.FINISHED
    assert (
        await ChatMessage.objects.filter(session=session, turn=turn_list[0], role="assistant").acount() == 1
    )


async def test_latest_turn_prefers_the_shared_pointer(private_redis):
    """Found by the chaos run: a resume from a sequence, on a process that ran an *older* turn of
    the chat, replayed that stale turn's tail instead of the newest turn's (run elsewhere)."""
    from chat.runtime import streams

    session_id = str(uuid.uuid4())
    old = streams.stream_open(turn_id=str(uuid.uuid4()), session_id=session_id)
    old.append({"type": "start"})
    old.append({"type": "finish", "finishReason": "stop"})
    await old.aclose()
    assert await streams.stream_latest_turn(session_id=session_id) == old.turn_id
    newer = str(uuid.uuid4())  # started on another process: only the shared pointer knows it
    await locks.async_redis().set(locks.redis_key(f"session:{session_id}:turn"), newer, ex=60)
    assert await streams.stream_latest_turn(session_id=session_id) == newer

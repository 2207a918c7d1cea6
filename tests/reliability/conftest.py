"""Fixtures and checks shared by the reliability tests (docs/reliability.md).

Every fault test ends with ``assert_recovered``: the turn ended (its row is not ``running``),
the session lock is free, the assistant output of the turn is persisted exactly once (one
normal assistant row per turn) and matches what the client saw, and the next turn works.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.chat.conftest import (  # noqa: F401 - fixture re-exports
    backend_api,
    backend_sdk,
    chunks_of,
    connect,
    fast_retries_settings,
    scripted_model,
    send_frame,
    text_of,
)

ROOT = Path(__file__).resolve().parents[2]
FAULT_TIMEOUT = 30.0  # every faulty turn must end well within this


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen | None = None, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace")[-3000:] if proc.stderr else ""
            raise RuntimeError(f"process exited early with {proc.returncode}: {err}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port}")


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def child_pids(pid: int) -> list[int]:
    """All descendants of ``pid`` (from /proc; no psutil needed)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def deltas(n: int):
    """A predicate for ``WsClient.frames_until``: the n-th text delta (or the request's end)."""
    count = 0

    def pred(frame: dict[str, Any]) -> bool:
        nonlocal count
        if frame["type"] == "chunk" and frame["chunk"]["type"] == "text-delta":
            count += 1
        return count >= n or frame["type"] in ("end", "error", "no-active")

    return pred


def sequences_ok(frames: list[dict[str, Any]]) -> bool:
    seqs = [f["sequence"] for f in frames if f["type"] == "chunk"]
    return seqs == list(range(seqs[0], seqs[0] + len(seqs))) if seqs else True


async def turn_rows(chat_id: str, user) -> tuple[Any, list[Any], list[Any]]:
    from chat.models import ChatMessage, ChatSession, ChatTurn

    session = await ChatSession.objects.aget(owner=user, client_id=chat_id)
    msgs = [m async for m in ChatMessage.objects.filter(session=session).order_by("sequence")]
    turns = [t async for t in ChatTurn.objects.filter(session=session).order_by("started_at")]
    return session, msgs, turns


async def assert_recovered(ws, chat_id: str, user, *, seen_text: str | None = None, exact: bool = True) -> list[Any]:
    """The invariants every fault must leave behind (see the module docstring). Returns the
    session's messages (before the follow-up turn)."""
    from chat.locks import lock_holder_async, session_key
    from chat.models import ChatMessage, ChatTurn

    session, msgs, turns = await turn_rows(chat_id, user)
    assert all(t.status != ChatTurn.Status.RUNNING for t in turns), [(t.pk, t.status) for t in turns]
    assert await lock_holder_async(session_key(session.pk)) is None
    seqs = [m.sequence for m in msgs]
    assert len(seqs) == len(set(seqs))
    for turn in turns:
        normal = [m for m in msgs if m.turn_id == turn.pk and m.role == "assistant" and m.kind == ChatMessage.Kind.NORMAL]
        assert len(normal) <= 1, f"turn {turn.pk} persisted {len(normal)} assistant rows"
    if seen_text is not None:
        last_turn = turns[-1]
        rows = [m for m in msgs if m.turn_id == last_turn.pk and m.role == "assistant" and m.kind == ChatMessage.Kind.NORMAL]
        persisted = rows[0].text if rows else ""
        if exact:
            assert persisted == seen_text.strip() or persisted == seen_text, (persisted, seen_text)
        else:
            assert seen_text.startswith(persisted), (persisted, seen_text)
    # The next turn works. (Its own directive: the history may end with the faulty user message,
    # which the backend merges with this one, lesson 4.) An upstream 429 blocks the user until
    # its reset (chat.usage): wait for it.
    deadline = time.monotonic() + 5.0
    while True:
        frame = send_frame(chat_id, f"/long 3 after the fault {uuid.uuid4().hex[:6]}")
        await ws.send(frame)
        frames = await ws.frames_until_done(frame["requestId"], timeout=FAULT_TIMEOUT)
        if frames[-1]["type"] == "error" and frames[-1].get("code") == "rate_limited" and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            continue
        break
    chunks = chunks_of(frames)
    assert frames[-1]["type"] == "end", frames[-3:]
    assert chunks[-1]["type"] == "finish", chunks[-3:]
    return msgs


async def run_ws_turn(ws, chat_id: str, text: str, *, timeout: float = FAULT_TIMEOUT) -> tuple[list, list, float]:
    frame = send_frame(chat_id, text)
    start = time.monotonic()
    await ws.send(frame)
    frames = await ws.frames_until_done(frame["requestId"], timeout=timeout)
    return frames, chunks_of(frames), time.monotonic() - start


def daphne_env(*, scripted_url: str, database_url: str, redis_url: str, prefix: str, workspaces: Path, **extra: str) -> dict:
    env = {
        **os.environ,
        "DEBUG": "true",
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "REDIS_KEY_PREFIX": prefix,
        "ANTHROPIC_BASE_URL": scripted_url,
        "ANTHROPIC_API_KEY": "",
        "AGENT_BACKEND": "api",
        "AGENT_WORKSPACE_ROOT": str(workspaces),
        "DJANGO_SETTINGS_MODULE": "copilot_project.settings",
        "LOG_LEVEL": "WARNING",
    }
    env.update(extra)
    return env


def test_database_url() -> str:
    """A DATABASE_URL for subprocesses that points at the test database pytest-django made."""
    from django.conf import settings
    from django.db import connection

    db = settings.DATABASES["default"]
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{connection.settings_dict['NAME']}"
    return (
        f"postgres://{db['USER']}:{db.get('PASSWORD') or ''}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/"
        f"{connection.settings_dict['NAME']}"
    )


test_database_url.__test__ = False  # not a test


def start_daphne(port: int, env: dict, log: Path) -> subprocess.Popen:
    daphne = str(Path(sys.executable).parent / "daphne")
    fh = open(log, "ab")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(
        [daphne, "-b", "127.0.0.1", "-p", str(port), "copilot_project.asgi:application"],
        cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT,
    )
    proc.log_path = log  # type: ignore[attr-defined]
    try:
        wait_port(port, proc)
    except Exception:
        stop_process(proc, signal.SIGKILL)
        raise RuntimeError(f"daphne did not start: {log.read_text()[-3000:]}") from None
    return proc


async def ws_recv_until(ws, request_id: str, pred, timeout: float = FAULT_TIMEOUT) -> list[dict]:
    """Frames of one request from a ``websockets`` client until ``pred`` or the request's end."""
    import json

    out: list[dict] = []
    async with asyncio.timeout(timeout):
        while True:
            frame = json.loads(await ws.recv())
            if frame.get("requestId") != request_id:
                continue
            out.append(frame)
            if pred(frame) or frame["type"] in ("end", "error", "no-active"):
                return out

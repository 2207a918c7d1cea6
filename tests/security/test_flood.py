"""A flood of ``send`` frames on one websocket, each to a new chat id, against a real daphne with
the sdk backend (the real Claude Code CLI against the scripted model): the concurrency caps hold
(docs/security.md, "Concurrency caps") and nothing starts once the socket is closed.

The per-connection frame rate limit is lifted for this server (WS_FRAME_RATE/WS_FRAME_BURST), so
every frame reaches the turn runtime and the caps are what is tested: without them this flood
runs one turn (and one CLI) per frame in flight."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
import uuid

import pytest

from tests.chat.conftest import send_frame, session_cookie
from tests.chat.test_caps import cli_processes
from tests.servers import DaphneServer, daphne_env

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.cli]

FRAMES = 2000
PER_USER, PER_WORKER, CLI_BOUND = 3, 16, 4
PACED, BATCH = (
    1800,
    10,
)  # at most, BATCH per 0.1 s until turns ended and others started; then the rest at once


@pytest.fixture
def flood_daphne(scripted_model, tmp_path):
    env = daphne_env(
        workspaces=tmp_path / "ws",
        scripted_url=scripted_model.url,
        AGENT_BACKEND="sdk",
        WS_FRAME_RATE="1000000",
        WS_FRAME_BURST="1000000",
        AGENT_MAX_TURNS_PER_USER=str(PER_USER),
        AGENT_MAX_TURNS_PER_WORKER=str(PER_WORKER),
        AGENT_SDK_MAX_CLI_PROCESSES=str(CLI_BOUND),
        AGENT_SDK_MAX_IDLE_CLIENTS="8",
        AGENT_SDK_IDLE_SECONDS="300",
    )
    with DaphneServer(env, name="flood", ready_path="/healthz", timeout=60) as server:
        yield server


async def test_send_flood_on_one_socket_respects_the_caps(flood_daphne, user):
    import websockets
    from asgiref.sync import sync_to_async

    from chat.models import ChatSession, ChatTurn

    cookie = await sync_to_async(session_cookie)(user)
    peak = {"turns": 0, "cli": 0}
    sampling = True

    async def sample() -> None:
        while sampling:
            running = await ChatTurn.objects.filter(status="running").acount()
            peak["turns"] = max(peak["turns"], running)
            peak["cli"] = max(peak["cli"], len(cli_processes(flood_daphne.pid)))
            await asyncio.sleep(0.05)  # the sampling period, not a wait for something

    sampler = asyncio.get_running_loop().create_task(sample())
    codes: dict[str, int] = {}
    started = 0
    began = time.monotonic()
    try:
        async with websockets.connect(
            flood_daphne.ws_url,
            additional_headers={"Cookie": cookie},
            origin=flood_daphne.url,
            max_queue=None,
        ) as ws:
            frames = [json.dumps(send_frame(str(uuid.uuid4()), "/slow 20 10")) for _ in range(FRAMES)]

            async def read() -> None:
                nonlocal started
                async for message in ws:
                    frame = json.loads(message)
                    if frame["type"] == "error":
                        codes[frame.get("code", "")] = codes.get(frame.get("code", ""), 0) + 1
                    elif frame["type"] == "start":
                        started += 1

            reader = asyncio.get_running_loop().create_task(read())
            sent = 0
            while sent < PACED and started <= 2 * PER_USER:
                for raw in frames[sent : sent + BATCH]:
                    await ws.send(raw)
                sent += BATCH
                await asyncio.sleep(0.1)  # the pacing of the flood, not a wait for something
            for raw in frames[sent:]:
                await ws.send(raw)
            await ws.close()  # with frames still queued on the server
            reader.cancel()
        closed_at = dt.datetime.now(dt.UTC)
        # Every turn ends (they outlive the socket); then look at what started when.
        async with asyncio.timeout(40):
            while await ChatTurn.objects.filter(status="running").aexists():
                await asyncio.sleep(0.05)
    finally:
        sampling = False
        await sampler
    elapsed = time.monotonic() - began

    turns = [t async for t in ChatTurn.objects.filter(session__owner=user).order_by("started_at")]
    print(
        f"\nflood: {FRAMES} frames, {len(turns)} turns started ({started} seen on the socket), "
        f"refusals {codes}, "
        f"peak running turns {peak['turns']}, peak CLI processes {peak['cli']}, {elapsed:.1f}s; turns "
        + ", ".join(
            f"{(t.started_at - turns[0].started_at).total_seconds():.1f}"
            f"+{(t.ended_at - t.started_at).total_seconds():.1f}s"
            for t in turns
        )
    )
    assert peak["turns"] <= PER_USER
    assert len(turns) > PER_USER  # turns ended and others started during the flood (no stuck slot)
    assert peak["cli"] <= CLI_BOUND
    # The caps were hit over and over (how many of the frames are answered before the close
    # depends on the machine's speed: 475 of 2,000 on a loaded 2-core CI machine).
    assert codes.get("too_many_turns", 0) >= 100
    assert turns and all(t.status == "finished" for t in turns)
    # Nothing started after the socket closed (a start already in its database write may land).
    assert turns[-1].started_at <= closed_at + dt.timedelta(seconds=1)
    # A refused frame stores nothing: one chat per turn, no empty chats.
    assert await ChatSession.objects.filter(owner=user).acount() == len(turns)

"""Keeping a session's Claude Code CLI alive between its turns (agents.backends.sdk, docs/agents.md):
the real CLI against the scripted model. A follow-up turn of the same session reuses the process,
another session does not, the pool is bounded (LRU) and expires idle clients, a stopped turn
closes its client, a loop that shuts down takes its clients with it, and a turn whose per-chat
settings differ from the kept CLI's never reuses it."""

from __future__ import annotations

import asyncio
import functools
import json
import uuid

import pytest

from agents.backends import sdk
from agents.backends.sdk import SdkBackend
from agents.config import INSTRUCTIONS_HEADING
from agents.sandbox import workspace_for
from agents.turn import TurnInput, TurnResult
from tests.agents.conftest import collect, requests_since, turn_input
from tests.waiting import wait_until, wait_until_sync

pytestmark = pytest.mark.cli


make_input = functools.partial(turn_input, backend="sdk", message_id="msg-test")


async def run(inp: TurnInput) -> tuple[TurnResult, str]:
    result = TurnResult()
    chunks = await collect(SdkBackend().stream(inp, result), timeout=60)
    assert result.error is None
    return result, "".join(c["delta"] for c in chunks if c["type"] == "text-delta")


def parked() -> dict[str, int]:
    return {k["session_id"]: k["pid"] for k in sdk.kept_clients()}


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return "\nState:\tZ" not in f.read()
    except (FileNotFoundError, ProcessLookupError):  # gone before the open, or between open and read
        return False


async def wait_gone(pid: int, timeout: float = 15.0) -> None:
    await wait_until(lambda: not alive(pid), timeout=timeout, message=f"CLI {pid} still running")


@pytest.fixture(autouse=True)
def keep_alive(settings):
    settings.AGENT_SDK_IDLE_SECONDS = 300
    settings.AGENT_SDK_MAX_IDLE_CLIENTS = 8
    return settings


async def test_follow_up_turn_reuses_the_process_and_another_session_does_not(scripted_model, workspace):
    first, _ = await run(make_input(workspace, "remember the word pineapple"))
    pid = parked()[workspace.name]
    assert alive(pid)

    mark = scripted_model.request_count
    second, text = await run(
        make_input(workspace, "what was the word?", agent_session_id=first.agent_session_id)
    )
    assert 'you said "what was the word?"' in text
    assert second.agent_session_id == first.agent_session_id
    assert parked()[workspace.name] == pid  # the same CLI process served the follow-up
    [request] = requests_since(scripted_model, mark)
    assert "pineapple" in json.dumps(request["body"]["messages"])  # same CLI session, no resume needed

    other = workspace_for(str(uuid.uuid4()))
    await run(make_input(other, "hello from another chat"))
    assert parked()[other.name] != pid
    assert parked()[workspace.name] == pid

    # A turn that asks for another CLI session (e.g. a recovery rung starting afresh) never gets it.
    third, _ = await run(make_input(workspace, "fresh start", agent_session_id=None))
    assert third.agent_session_id != first.agent_session_id
    await wait_gone(pid)
    assert parked()[workspace.name] != pid
    assert await sdk.close_idle_clients() == 2
    assert parked() == {}


async def test_pool_is_bounded_and_idle_clients_expire(scripted_model, workspace, settings):
    settings.AGENT_SDK_MAX_IDLE_CLIENTS = 1
    await run(make_input(workspace, "one"))
    first_pid = parked()[workspace.name]
    other = workspace_for(str(uuid.uuid4()))
    await run(make_input(other, "two"))
    assert list(parked()) == [other.name]  # least recently used evicted...
    await wait_gone(first_pid)  # ...and its process closed

    settings.AGENT_SDK_IDLE_SECONDS = 1.0  # long enough to read the pool on a loaded machine
    third = workspace_for(str(uuid.uuid4()))
    await run(make_input(third, "three"))
    pid = parked()[third.name]
    await wait_gone(pid)  # idle expiry
    assert third.name not in parked()


async def test_stopped_turn_closes_its_client_and_the_next_turn_resumes(scripted_model, workspace):
    first, _ = await run(make_input(workspace, "remember the word mango"))
    pid = parked()[workspace.name]
    inp = make_input(workspace, "/slow 100", agent_session_id=first.agent_session_id)
    result = TurnResult()
    async with asyncio.timeout(30):
        async for chunk in SdkBackend().stream(inp, result):
            if chunk["type"] == "text-delta":
                inp.stop.set()
    assert result.stopped
    await wait_gone(pid)  # the stopped turn ran on the kept process, which is then closed
    assert workspace.name not in parked()

    mark = scripted_model.request_count
    after, text = await run(
        make_input(workspace, "what was the word?", agent_session_id=first.agent_session_id)
    )
    assert 'you said "what was the word?"' in text
    assert after.agent_session_id == first.agent_session_id  # resumed from the transcript
    assert parked()[workspace.name] != pid
    assert any("mango" in json.dumps(r["body"]["messages"]) for r in requests_since(scripted_model, mark))


async def test_a_busy_client_is_never_shared(scripted_model, workspace):
    first, _ = await run(make_input(workspace, "hello"))
    pid = parked()[workspace.name]
    a = make_input(workspace, "/slow 20", agent_session_id=first.agent_session_id)
    result_a = TurnResult()
    stream_a = SdkBackend().stream(a, result_a)
    await asyncio.wait_for(stream_a.__anext__(), 30)  # turn a runs on the parked client...
    assert workspace.name not in parked()  # ...which left the pool while busy

    await run(make_input(workspace, "meanwhile", agent_session_id=first.agent_session_id))
    pid_b = parked()[workspace.name]
    assert pid_b != pid  # the concurrent turn got a CLI of its own
    await collect(stream_a)
    assert result_a.error is None and not result_a.stopped
    # One client per session stays parked (the one whose turn ended last); the other is closed.
    kept_pid = parked()[workspace.name]
    assert kept_pid in (pid, pid_b)
    await wait_gone(pid_b if kept_pid == pid else pid)


def test_loop_shutdown_closes_its_clients(scripted_model, workspace_root):
    ws = workspace_for(str(uuid.uuid4()))
    with asyncio.Runner() as runner:
        runner.run(run(make_input(ws, "hello")))
        pid = runner.run(_parked_pid(ws.name))
        assert alive(pid)
    wait_until_sync(lambda: not alive(pid), timeout=15, message="the CLI outlived its event loop")


async def _parked_pid(session_id: str) -> int:
    return parked()[session_id]


# -- per-chat settings: a CLI is connected with the chat's model, system prompt (with its
# instructions) and step limit, so a turn whose settings differ never reuses it (a new CLI
# resumes the session and the stale one is closed); a resumed CLI session takes the changed
# instructions (the system prompt is not snapshotted).


async def test_changed_settings_never_reuse_the_kept_cli(scripted_model, workspace):
    first, _ = await run(make_input(workspace, "remember the word pineapple"))
    session = first.agent_session_id
    pid = parked()[workspace.name]

    # The same settings: the same process serves the follow-up.
    await run(make_input(workspace, "same settings", agent_session_id=session))
    assert parked()[workspace.name] == pid

    for change in (
        {"instructions": "Answer like a pirate."},
        {"instructions": "Answer like a pirate.", "max_steps": 3},
        {"instructions": "Answer like a pirate.", "max_steps": 3, "model": "claude-opus-5"},
    ):
        inp = make_input(workspace, "changed settings", agent_session_id=session)
        for name, value in change.items():
            setattr(inp, name, value)
        mark = scripted_model.request_count
        result, text = await run(inp)
        assert 'you said "changed settings"' in text
        await wait_gone(pid)  # the stale CLI is closed, not left parked
        new_pid = parked()[workspace.name]
        assert new_pid != pid and len(parked()) == 1
        pid = new_pid
        # The new CLI resumed the same CLI session (the conversation goes on) with the new prompt.
        assert result.agent_session_id == session
        [request] = requests_since(scripted_model, mark)
        assert "pineapple" in json.dumps(request["body"]["messages"])
        system = json.dumps(request["body"]["system"])
        assert INSTRUCTIONS_HEADING in system and "Answer like a pirate." in system
        assert request["body"]["model"] == inp.model

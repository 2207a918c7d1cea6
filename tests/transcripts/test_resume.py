"""Cross-process resume: a CLI session continues with full context from the database alone.

The real Claude Code CLI (through the sdk backend) against the scripted model on loopback, with
``transcripts.store.DjangoSessionStore`` as the SDK's session store. "Another process" is
simulated the way it differs in reality: the workspace directory — and with it the CLI's local
state (HOME, CLAUDE_CONFIG_DIR and its JSONL transcripts, which live inside it) — is deleted
between the turns, and nothing but the database survives.
"""

from __future__ import annotations

import json
import shutil
import uuid

import pytest
from asgiref.sync import sync_to_async

from agents.backends.sdk import SdkBackend, close_idle_clients
from agents.turn import TurnInput, TurnResult
from tests.agents.conftest import collect, requests_since, scripted_model  # noqa: F401 - fixture
from transcripts.models import Transcript, TranscriptEntry
from transcripts.store import DjangoSessionStore

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.cli]

CODEWORD = "zebra-7431"


def _turn(session_id: str, text: str, *, store=None, resume: str | None = None) -> TurnInput:
    from agents.sandbox import workspace_for

    return TurnInput(
        session_id=session_id,
        user_text=text,
        workspace=workspace_for(session_id),
        backend="sdk",
        model="claude-sonnet-4-5",
        message_id="msg-test",
        agent_session_id=resume,
        session_store=store,
    )


async def _run(inp: TurnInput) -> tuple[TurnResult, list]:
    result = TurnResult()
    chunks = await collect(SdkBackend().stream(inp, result), timeout=60)
    assert result.error is None, result.error
    return result, chunks


async def _wipe(session_id: str) -> None:
    from agents.sandbox import workspace_for

    await close_idle_clients()  # this worker's kept-alive CLI goes too: only the database survives

    workspace = workspace_for(session_id)
    shutil.rmtree(workspace)
    assert not workspace.exists()


def _turn_requests(server, mark: int, text: str) -> list[str]:
    """Bodies (as JSON text) of the model requests made for the turn whose user text is ``text``."""
    bodies = [json.dumps(r["body"].get("messages", [])) for r in requests_since(server, mark)]
    return [body for body in bodies if text in body]


async def test_resume_after_local_state_is_wiped_uses_the_database(scripted_model, settings, tmp_path):
    settings.AGENT_WORKSPACE_ROOT = tmp_path / "workspaces"
    store = DjangoSessionStore()
    chat_id = str(uuid.uuid4())

    first, _ = await _run(_turn(chat_id, f"remember the codeword {CODEWORD}", store=store))
    cli_session = first.agent_session_id
    assert cli_session
    main = await Transcript.objects.aget(session_id=cli_session, subpath="")
    stored_after_first = main.entry_count
    assert stored_after_first > 0
    assert await TranscriptEntry.objects.filter(transcript=main, data__contains=CODEWORD).aexists()

    await _wipe(chat_id)  # a different worker: no workspace, no ~/.claude, no local JSONL
    mark = scripted_model.request_count
    second, chunks = await _run(_turn(chat_id, "what was the codeword?", store=store, resume=cli_session))
    assert second.agent_session_id == cli_session  # the same CLI session continued
    bodies = _turn_requests(scripted_model, mark, "what was the codeword?")
    assert bodies and all(CODEWORD in body for body in bodies)  # turn 1's content reached the model

    main = await Transcript.objects.aget(pk=main.pk)
    assert main.entry_count > stored_after_first  # turn 2 mirrored into the same transcript
    uuids = [
        u
        async for u in TranscriptEntry.objects.filter(transcript=main)
        .exclude(uuid=None)
        .values_list("uuid", flat=True)
    ]
    assert len(uuids) == len(set(uuids))
    loaded = await store.load({"project_key": main.project_key, "session_id": cli_session})
    assert [e.get("uuid") for e in loaded if e.get("uuid")] == uuids or len(loaded) == main.entry_count

    # Control: the same wipe without the store loses turn 1 (so the assertions above can fail).
    await _wipe(chat_id)
    mark = scripted_model.request_count
    third, _ = await _run(_turn(chat_id, "and now, the codeword?", resume=cli_session))
    assert third.agent_session_id != cli_session
    bodies = _turn_requests(scripted_model, mark, "and now, the codeword?")
    assert bodies and not any(CODEWORD in body for body in bodies)


async def test_pinned_project_key_resumes_after_the_workspace_moved(scripted_model, settings, tmp_path):
    """Another host with another AGENT_WORKSPACE_ROOT: the cwd-derived project key changes, a
    store pinned to one project key still finds the session."""
    store = DjangoSessionStore(project_key="copilot")
    chat_id = str(uuid.uuid4())
    settings.AGENT_WORKSPACE_ROOT = tmp_path / "host-a"
    first, _ = await _run(_turn(chat_id, f"remember the codeword {CODEWORD}", store=store))
    assert await Transcript.objects.filter(project_key="copilot", session_id=first.agent_session_id).aexists()

    settings.AGENT_WORKSPACE_ROOT = tmp_path / "host-b"
    await close_idle_clients()
    shutil.rmtree(tmp_path / "host-a")
    mark = scripted_model.request_count
    second, _ = await _run(
        _turn(chat_id, "what was the codeword?", store=store, resume=first.agent_session_id)
    )
    assert second.agent_session_id == first.agent_session_id
    bodies = _turn_requests(scripted_model, mark, "what was the codeword?")
    assert bodies and all(CODEWORD in body for body in bodies)
    assert set(
        await sync_to_async(lambda: list(Transcript.objects.values_list("project_key", flat=True)))()
    ) == {"copilot"}


async def test_chat_turn_resumes_on_another_worker(scripted_model, settings, tmp_path, user):
    """The product path: two chat turns through chat.runtime, the workspace wiped in between."""
    from agents.sandbox import workspace_for
    from chat import runtime
    from chat.models import ChatSession

    settings.AGENT_BACKEND = "sdk"
    settings.AGENT_WORKSPACE_ROOT = tmp_path / "workspaces"
    chat_id = str(uuid.uuid4())

    async def turn(text: str) -> None:
        handle = await runtime.turn_start(user=user, chat_id=chat_id, text=text)
        chunks = [json.loads(raw) async for _, raw, _t in runtime.turn_listen(handle=handle)]
        assert chunks[-1]["type"] == "finish", chunks[-3:]
        await runtime.turn_wait_idle(timeout=60)
        return handle

    handle = await turn(f"remember the codeword {CODEWORD}")
    session = await ChatSession.objects.aget(pk=handle.session_id)
    assert session.agent_session_id
    assert await Transcript.objects.filter(session_id=session.agent_session_id, subpath="").aexists()

    await close_idle_clients()  # another worker: no kept-alive CLI, no workspace
    await sync_to_async(lambda: shutil.rmtree(workspace_for(str(session.pk))))()
    mark = scripted_model.request_count
    await turn("what was the codeword?")
    bodies = _turn_requests(scripted_model, mark, "what was the codeword?")
    assert bodies and all(CODEWORD in body for body in bodies)
    # Resumed from the store (same CLI session), not rebuilt from ChatMessage rows into a new one.
    assert (await ChatSession.objects.aget(pk=handle.session_id)).agent_session_id == session.agent_session_id

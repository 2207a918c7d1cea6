"""Per-chat settings and the sdk backend's kept-alive CLI (agents.backends.sdk): a CLI client is
connected with the chat's model, system prompt (with its instructions) and step limit, so a turn
whose settings differ never reuses it (a new CLI resumes the session, and the stale one is
closed), while a turn with the same settings still does; and a resumed CLI session takes the
changed instructions (the system prompt is not snapshotted)."""

from __future__ import annotations

import json

import pytest

from agents.config import INSTRUCTIONS_HEADING
from tests.agents.conftest import requests_since
from tests.agents.test_sdk_keepalive import keep_alive, make_input, parked, run, wait_gone  # noqa: F401

pytestmark = pytest.mark.cli


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

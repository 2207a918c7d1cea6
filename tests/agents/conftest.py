"""Fixtures for the agent tests: the real scripted model on loopback, the real anthropic client.

- ``scripted_model`` (session): a ``ScriptedModelServer`` of its own, with
  ``settings.ANTHROPIC_BASE_URL`` pointing at it and no API key (so ``model_endpoint()`` is the
  offline one). Use ``requests_since(server, mark)`` / ``server.request_count`` to count calls.
- ``fast_retries``: tiny retry delays so the retry matrix is tested in milliseconds.
- ``workspace``: a fresh per-test session workspace under a temporary AGENT_WORKSPACE_ROOT.
- ``chunk_types(chunks)``: the chunk type sequence with consecutive deltas collapsed and
  heartbeats/status notes dropped (for exact sequence assertions, reused by the conformance test).
- ``turn_input(workspace, text, ...)``: a TurnInput on the test model; ``run_turn_chunks(inp)``:
  run it through ``run_turn`` -> (chunks, result); ``text_of(chunks)``: the streamed text.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings

from agents.events import DELTA_TYPES, Chunk
from agents.turn import TurnInput, TurnResult
from scripted_model.server import ScriptedModelServer

IGNORED_TYPES = frozenset({"data-heartbeat", "data-status"})


# The chunk-type shapes of common turns (one definition for every backend test).
TEXT_TURN = [
    "start",
    "start-step",
    "text-start",
    "text-delta",
    "text-end",
    "finish-step",
    "data-usage",
    "finish",
]
ERROR_TURN = ["start", "data-usage", "error"]
PARTIAL_THEN_ERROR = [
    "start",
    "start-step",
    "text-start",
    "text-delta",
    "text-end",
    "finish-step",
    "data-usage",
    "error",
]


def chunk_types(chunks: list[Chunk]) -> list[str]:
    """Chunk types in order; runs of the same delta type collapse to one; heartbeats and status
    notes are dropped."""
    out: list[str] = []
    for chunk in chunks:
        kind = chunk["type"]
        if kind in IGNORED_TYPES:
            continue
        if out and kind in DELTA_TYPES and out[-1] == kind:
            continue
        out.append(kind)
    return out


def requests_since(
    server: ScriptedModelServer, mark: int, path: str = "/v1/messages"
) -> list[dict[str, Any]]:
    """Requests the server logged after ``mark`` (= ``server.request_count`` taken before).

    ``request_count`` keeps growing while the log itself is bounded, so this stays right in a
    long session."""
    new = server.request_count - mark
    recent = list(server.requests)[-new:] if new > 0 else []
    return [r for r in recent if r["path"] == path]


async def collect(stream: AsyncIterator[Chunk], *, timeout: float = 30.0) -> list[Chunk]:
    async def run() -> list[Chunk]:
        return [chunk async for chunk in stream]

    return await asyncio.wait_for(run(), timeout)


def turn_input(
    workspace: Path,
    text: str,
    *,
    backend: str = "api",
    session_id: str | None = None,
    message_id: str | None = None,
    **extra: Any,
) -> TurnInput:
    """A TurnInput for ``workspace`` on the test model: session id = the workspace's name and a
    fresh ``msg-…`` message id unless given."""
    return TurnInput(
        session_id=session_id or workspace.name,
        user_text=text,
        workspace=workspace,
        backend=backend,  # type: ignore[arg-type]
        model="claude-sonnet-4-5",
        message_id=message_id or f"msg-{uuid.uuid4().hex[:8]}",
        **extra,
    )


async def run_turn_chunks(inp: TurnInput, timeout: float = 30.0) -> tuple[list[Chunk], TurnResult]:
    """``agents.runtime.run_turn`` to its end: (every chunk, the filled TurnResult)."""
    from agents.runtime import run_turn

    result = TurnResult()
    chunks = await collect(run_turn(inp, result), timeout=timeout)
    return chunks, result


def text_of(chunks: list[Chunk]) -> str:
    """The streamed text: every ``text-delta`` joined."""
    return "".join(c["delta"] for c in chunks if c["type"] == "text-delta")


@pytest.fixture(scope="session")
def scripted_model():
    server = ScriptedModelServer(host="127.0.0.1", port=0).start()
    saved = (django_settings.ANTHROPIC_BASE_URL, django_settings.ANTHROPIC_API_KEY)
    django_settings.ANTHROPIC_BASE_URL = server.url
    django_settings.ANTHROPIC_API_KEY = ""
    try:
        yield server
    finally:
        django_settings.ANTHROPIC_BASE_URL, django_settings.ANTHROPIC_API_KEY = saved
        server.stop()


def use_fast_retries(settings, *, max_retries: int):
    """Millisecond retry delays (and ``max_retries``) on pytest-django's ``settings``."""
    settings.AGENT_MAX_RETRIES = max_retries
    settings.AGENT_RETRY_BASE_DELAY = 0.001
    settings.AGENT_RETRY_MAX_DELAY = 0.01
    return settings


@pytest.fixture
def fast_retries(settings):
    return use_fast_retries(settings, max_retries=3)


@pytest.fixture
def workspace_root(tmp_path, settings):
    root = tmp_path / "workspaces"
    settings.AGENT_WORKSPACE_ROOT = root
    return root


@pytest.fixture
def workspace(workspace_root):
    from agents.sandbox import workspace_for

    return workspace_for(str(uuid.uuid4()))

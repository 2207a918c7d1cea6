"""Agent sandbox, end to end (issue 10 item 6): with a canary ANTHROPIC_API_KEY (in settings and
in the process environment, as in production) and ANTHROPIC_BASE_URL at the scripted model,
chat turns that try to read the key through tools — env dumps, /proc, ``$VAR`` expansion, an
interpreter — and a model auth error never put the canary into chunks, persisted messages,
logs, the admin transcript viewer/download or error texts; path escapes are denied.

The unit-level policy tests live in tests/agents/test_sandbox.py."""

from __future__ import annotations

import json
import logging
import secrets
import uuid

import pytest
from asgiref.sync import sync_to_async
from django.test import Client

from chat.models import ChatMessage, ChatSession
from tests.chat.conftest import chunks_of, send_frame

pytestmark = pytest.mark.django_db(transaction=True)

LEAKY_COMMANDS = [
    # an interpreter reading the environment (not visible to the lexical check; the tool's
    # environment must simply not contain the key)
    "python3 -c \"import os; print([v for k, v in os.environ.items() if 'KEY' in k or 'TOKEN' in k or 'ANTHROPIC' in k])\"",
    "env",
    "printenv ANTHROPIC_API_KEY",
    "echo $ANTHROPIC_API_KEY",
    "cat /proc/self/environ",
    "cat /proc/$PPID/environ",
    "cd .. && cat ../../../proc/self/environ",
    "cat ../../etc/passwd",
    "ls /",
]


@pytest.fixture
def canary(settings, monkeypatch, backend_api):
    value = "sk-ant-canary-" + secrets.token_hex(20)
    settings.ANTHROPIC_API_KEY = value
    settings.ANTHROPIC_BASE_URL = backend_api.url  # the scripted model accepts any key
    monkeypatch.setenv("ANTHROPIC_API_KEY", value)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", backend_api.url)
    return value


async def _run_turns(connect, chat_id: str, texts: list[str]) -> list[dict]:
    ws = await connect()
    frames: list[dict] = []
    for text in texts:
        frame = send_frame(chat_id, text)
        await ws.send(frame)
        got = await ws.frames_until_done(frame["requestId"], timeout=60)
        assert got[-1]["type"] in {"end", "error"}, got
        frames += got
    return frames


def _persisted(chat_id: str) -> str:
    session = ChatSession.objects.get(client_id=chat_id)
    rows = ChatMessage.objects.filter(session=session).values("text", "parts", "metadata", "kind")
    return json.dumps(list(rows), default=str)


def _admin_views(django_user_model, chat_id: str, *, chat_admin: bool = True, transcripts: bool = True) -> str:
    """The staff pages showing this chat: its admin change page and its transcript viewer/download."""
    admin_user = django_user_model.objects.create_superuser(username=f"root{uuid.uuid4().hex[:6]}", password="x-root-pass-1")
    client = Client()
    client.force_login(admin_user)
    session = ChatSession.objects.get(client_id=chat_id)
    pages = [client.get(f"/admin/chat/chatsession/{session.pk}/change/")] if chat_admin else []
    if session.agent_session_id and transcripts:
        pages.append(client.get(f"/admin/transcripts/session/{session.agent_session_id}/"))
        download = client.get(f"/admin/transcripts/session/{session.agent_session_id}/download.jsonl")
        pages.append(download)
    out = []
    for page in pages:
        assert page.status_code == 200, page
        out.append(b"".join(page.streaming_content).decode() if page.streaming else page.content.decode())
    return "\n".join(out)


def _assert_no_canary(canary: str, **places: str) -> None:
    for name, text in places.items():
        assert canary not in text, f"the API key leaked into {name}"
        assert canary[len("sk-ant-"):] not in text, f"part of the API key leaked into {name}"


async def test_api_backend_turns_never_leak_the_key(canary, connect, caplog, django_user_model, settings):
    caplog.set_level(logging.DEBUG)
    chat_id = f"leak-{uuid.uuid4().hex[:8]}"
    frames = await _run_turns(connect, chat_id, [f"/tool bash {c}" for c in LEAKY_COMMANDS] + ["/error 401"])
    chunks = chunks_of(frames)
    outputs = [c for c in chunks if c["type"] in ("tool-output-available", "tool-output-error")]
    assert len(outputs) == len(LEAKY_COMMANDS)
    denied = [c for c in outputs if c["type"] == "tool-output-error"]
    assert len(denied) >= len(LEAKY_COMMANDS) - 1  # only the interpreter runs (with a clean env)
    assert any("outside the workspace" in c["errorText"] for c in denied)
    errors = [c["errorText"] for c in chunks if c["type"] == "error"]
    assert errors, "the /error 401 turn must end with an error chunk"
    _assert_no_canary(
        canary,
        frames=json.dumps(frames),
        messages=await sync_to_async(_persisted)(chat_id),
        logs=caplog.text,
        admin=await sync_to_async(_admin_views)(django_user_model, chat_id),
        errors=json.dumps(errors),
    )


@pytest.mark.cli
async def test_sdk_backend_turns_never_leak_the_key(canary, connect, caplog, django_user_model, settings):
    """The Claude Code CLI needs the key in its own environment; its Bash tool, its transcript
    (stored through our SessionStore and shown in the admin) and its logs must not leak it."""
    settings.AGENT_BACKEND = "sdk"
    caplog.set_level(logging.DEBUG)
    chat_id = f"leak-sdk-{uuid.uuid4().hex[:8]}"
    commands = [LEAKY_COMMANDS[0], "env", "cat /proc/self/environ"]
    frames = await _run_turns(connect, chat_id, [f"/tool bash {c}" for c in commands])
    chunks = chunks_of(frames)
    assert sum(c["type"] in ("tool-output-available", "tool-output-error") for c in chunks) == len(commands)
    session = await ChatSession.objects.aget(client_id=chat_id)
    assert session.agent_session_id, "the sdk turn must have stored its transcript"
    tool_chunks = [c for c in chunks if c["type"].startswith("tool-")]
    _assert_no_canary(
        canary,
        tool_chunks=json.dumps(tool_chunks),
        logs=caplog.text,
        transcript_viewer=await sync_to_async(_admin_views)(django_user_model, chat_id, chat_admin=False),
    )
    # The model's own text: the CLI hands the model the raw tool output and the model may quote
    # it. Known leak (report to the agent-runtime owners), tracked here until fixed.
    chat_admin = await sync_to_async(_admin_views)(django_user_model, chat_id, transcripts=False)
    text_leak = any(canary in text for text in (json.dumps(frames), await sync_to_async(_persisted)(chat_id), chat_admin))
    if text_leak:
        pytest.xfail(
            "agents/backends/sdk*: the CLI's Bash tool inherits ANTHROPIC_API_KEY (cli_env), so "
            "`python3 -c 'print(os.environ)'` reaches the model unscrubbed and the model's text quoting it "
            "streams the key in text-delta chunks and persists it in ChatMessage.text, shown by the chat admin "
            "(tool-output chunks, logs and the transcript viewer/download are scrubbed). Fix: keep the key out of the CLI's tool "
            "environment (e.g. a loopback proxy that adds the key, or apiKeyHelper) and/or scrub text deltas."
        )

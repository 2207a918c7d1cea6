"""Agent sandbox, end to end (issue 10 item 6): with a canary ANTHROPIC_API_KEY (in settings and
in the process environment, as in production) and ANTHROPIC_BASE_URL at the scripted model,
chat turns that try to read the key through tools — env dumps, /proc, ``$VAR`` expansion, an
interpreter — and a model auth error never put the canary into chunks, persisted messages,
logs, the admin transcript viewer/download or error texts; path escapes are denied.

The unit-level policy tests live in tests/agents/test_sandbox.py."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
import re
import secrets
import uuid
from pathlib import Path

import anthropic
import h11
import httpx
import pytest
from asgiref.sync import sync_to_async
from django.test import Client

from agents import events, runtime
from agents.backends import sdk
from agents.backends.sdk import SdkBackend
from agents.credentials import TOKEN_PREFIX, StreamScrubber, credential_proxy
from agents.sandbox import workspace_for
from agents.turn import TurnInput, TurnResult
from chat.models import ChatMessage, ChatSession
from tests.agents.conftest import collect
from tests.chat.conftest import chunks_of, requests_since, send_frame

pytestmark = pytest.mark.django_db(transaction=True)

LEAKY_COMMANDS = [
    # an interpreter reading the environment (not visible to the lexical check; the tool's
    # environment must simply not contain the key)
    'python3 -c "import os; print([v for k, v in os.environ.items() '
    "if 'KEY' in k or 'TOKEN' in k or 'ANTHROPIC' in k])\"",
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


def _admin_views(
    django_user_model, chat_id: str, *, chat_admin: bool = True, transcripts: bool = True
) -> str:
    """The staff pages showing this chat: its admin change page and its transcript viewer/download."""
    admin_user = django_user_model.objects.create_superuser(
        username=f"root{uuid.uuid4().hex[:6]}", password="x-root-pass-1"
    )
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
        assert canary[len("sk-ant-") :] not in text, f"part of the API key leaked into {name}"


async def test_api_backend_turns_never_leak_the_key(canary, connect, caplog, django_user_model, settings):
    caplog.set_level(logging.DEBUG)
    chat_id = f"leak-{uuid.uuid4().hex[:8]}"
    frames = await _run_turns(connect, chat_id, [f"/tool bash {c}" for c in LEAKY_COMMANDS] + ["/error 401"])
    chunks = chunks_of(frames)
    outputs = [c for c in chunks if c["type"] in ("tool-output-available", "tool-output-error")]
    assert len(outputs) == len(LEAKY_COMMANDS)
    # With the jail every command runs, in an environment and a /proc without the key (the
    # attempts themselves are tests/security/test_jail.py).
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
    chat_admin = await sync_to_async(_admin_views)(django_user_model, chat_id, transcripts=False)
    _assert_no_canary(
        canary,
        frames=json.dumps(frames),
        messages=await sync_to_async(_persisted)(chat_id),
        logs=caplog.text,
        admin=chat_admin,
        transcript_viewer=await sync_to_async(_admin_views)(django_user_model, chat_id, chat_admin=False),
    )


def _sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


# The interpreter dump: not visible to the lexical Bash check, so it runs and its output (the CLI's
# environment as its Bash tool sees it) goes to the model raw, and the model quotes it back.
ENV_DUMP = LEAKY_COMMANDS[0]


@pytest.mark.cli
async def test_sdk_cli_holds_only_a_revocable_grant_token(canary, backend_api, settings):
    """Layer 1 (agents.credentials.CredentialProxy): the CLI process — so its Bash tool, its
    /proc/<pid>/environ and whatever it sends the model — holds a per-CLI grant token, never the
    key; the proxy swaps the real key in; the token is dead while the CLI is parked and after."""
    settings.AGENT_SDK_IDLE_SECONDS = 60
    settings.AGENT_SDK_MAX_IDLE_CLIENTS = 2
    workspace = workspace_for(f"grant-{uuid.uuid4().hex[:8]}")
    mark = backend_api.request_count
    inp = TurnInput(
        session_id=workspace.name,
        user_text=f"/tool bash {ENV_DUMP}",
        workspace=workspace,
        backend="sdk",
        model="claude-sonnet-4-5",
        message_id="msg-grant",
    )
    result = TurnResult()
    chunks = await collect(SdkBackend().stream(inp, result), timeout=60)
    assert result.error is None
    assert any(c["type"] == "tool-output-available" for c in chunks)
    proxy = credential_proxy()
    try:
        [kept] = [k for k in sdk.kept_clients() if k["session_id"] == workspace.name]
        environ = Path(f"/proc/{kept['pid']}/environ").read_bytes().decode(errors="replace")
        assert canary not in environ, "the CLI's (jail's) process holds the real key"
        # What the CLI's Bash sees inside the jail: a grant token and the bridge to the proxy.
        dumped = json.dumps([c for c in chunks if c["type"] == "tool-output-available"])
        assert canary not in dumped and "http://127.0.0.1:" in dumped
        requests = requests_since(backend_api, mark)
        assert requests and all(r["auth_sha256"] == _sha(canary) for r in requests), (
            "the proxy must add the real key"
        )
        bodies = json.dumps([r["body"] for r in requests])
        found = re.search(re.escape(TOKEN_PREFIX) + r"[0-9a-f]+", bodies)
        assert found, "the env dump (the token) reached the model as the tool result"
        token = found.group(0)
        assert canary not in bodies
        async with httpx.AsyncClient(timeout=10) as client:
            parked = await client.post(f"{proxy.url}/v1/messages", headers={"x-api-key": token}, json={})
            assert parked.status_code == 401 and parked.json()["error"]["type"] == "authentication_error"
            assert await sdk.close_idle_clients() == 1
            revoked = await client.post(
                f"{proxy.url}/v1/messages", headers={"authorization": f"Bearer {token}"}, json={}
            )
            assert revoked.status_code == 401
    finally:
        await sdk.close_idle_clients()


async def test_credential_proxy_streams_unchanged_and_refuses_unknown_tokens(canary, backend_api):
    """The proxy with the real anthropic client: a live token streams the scripted model's reply
    through unchanged with the real key added; unknown, revoked and non-API requests are refused."""
    proxy = credential_proxy()
    grant = proxy.grant(upstream=backend_api.url, api_key=canary)
    mark = backend_api.request_count
    client = anthropic.AsyncAnthropic(api_key=grant.api_key, base_url=grant.base_url, max_retries=0)
    try:
        async with client.messages.stream(
            model="claude-sonnet-4-5", max_tokens=100, messages=[{"role": "user", "content": "/long 30"}]
        ) as stream:
            text = "".join([t async for t in stream.text_stream])
        assert text.split() == [f"w{i}" for i in range(30)]
        [request] = requests_since(backend_api, mark)
        assert request["auth_sha256"] == _sha(canary)
        with pytest.raises(anthropic.AuthenticationError):
            await client.with_options(api_key=TOKEN_PREFIX + "0" * 48).messages.create(
                model="claude-sonnet-4-5", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
            )
        async with httpx.AsyncClient(timeout=10) as http:
            assert (
                await http.get(f"{proxy.url}/admin/", headers={"x-api-key": grant.api_key})
            ).status_code == 404
        proxy.revoke(grant.api_key)
        with pytest.raises(anthropic.AuthenticationError):
            await client.messages.create(
                model="claude-sonnet-4-5", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
            )
        assert len(requests_since(backend_api, mark)) == 1  # refused requests never went upstream
    finally:
        proxy.revoke(grant.api_key)
        await client.close()


async def _exchange(reader, writer, conn: h11.Connection, method: str, target: str, headers: list, chunks=()):
    """One request on a client connection (``h11`` on our side too): (response, body)."""
    writer.write(conn.send(h11.Request(method=method, target=target, headers=[("host", "proxy"), *headers])))
    for chunk in chunks:
        writer.write(conn.send(h11.Data(data=chunk)))
    writer.write(conn.send(h11.EndOfMessage()))
    await writer.drain()
    response, body = None, b""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await asyncio.wait_for(reader.read(65536), 10))
        elif isinstance(event, h11.Response):
            response = event
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            break
    if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
        conn.start_next_cycle()
    return response, body


async def _raw(proxy, data: bytes) -> bytes:
    """Send ``data`` on a fresh connection; everything the proxy answers until it closes."""
    reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


async def test_credential_proxy_keeps_connections_alive_and_reads_chunked_bodies(canary, backend_api):
    """The proxy's HTTP/1.1 (parsed with h11): several requests on one connection, a chunked
    request body, refusals that keep the connection open, ``Connection: close`` honoured."""
    proxy = credential_proxy()
    grant = proxy.grant(upstream=backend_api.url, api_key=canary)
    token = [("x-api-key", grant.api_key), ("content-type", "application/json")]
    body = json.dumps(
        {"model": "claude-sonnet-4-5", "max_tokens": 50, "messages": [{"role": "user", "content": "/long 3"}]}
    )
    mark = backend_api.request_count
    reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
    conn = h11.Connection(h11.CLIENT)
    try:
        chunked = [body[:10].encode(), body[10:40].encode(), body[40:].encode()]
        response, data = await _exchange(
            reader,
            writer,
            conn,
            "POST",
            "/v1/messages/count_tokens",
            [*token, ("transfer-encoding", "chunked")],
            chunked,
        )
        assert response.status_code == 200 and json.loads(data)["input_tokens"] > 0
        response, data = await _exchange(
            reader,
            writer,
            conn,
            "POST",
            "/v1/messages?beta=true",
            [*token, ("content-length", str(len(body)))],
            [body.encode()],
        )
        assert response.status_code == 200 and json.loads(data)["content"][0]["text"] == "w0 w1 w2 "
        refused = [("x-api-key", TOKEN_PREFIX + "0" * 48), ("content-length", "2")]
        response, data = await _exchange(reader, writer, conn, "POST", "/v1/messages", refused, [b"{}"])
        assert response.status_code == 401
        assert json.loads(data) == {
            "type": "error",
            "error": {"type": "authentication_error", "message": "invalid x-api-key"},
        }
        response, data = await _exchange(reader, writer, conn, "GET", "/admin/", token[:1])
        assert response.status_code == 404 and json.loads(data)["error"]["type"] == "not_found_error"
        response, data = await _exchange(
            reader,
            writer,
            conn,
            "POST",
            "/v1/messages/count_tokens",
            [*token, ("content-length", str(len(body))), ("connection", "close")],
            [body.encode()],
        )
        assert response.status_code == 200 and (b"connection", b"close") in response.headers
        assert await asyncio.wait_for(reader.read(), 10) == b""  # the proxy closed the connection
        bodies = [r["body"] for r in list(backend_api.requests)[-(backend_api.request_count - mark) :]]
        assert (
            bodies == [json.loads(body)] * 3
        )  # both chunked and sized bodies arrived whole; refusals never did
    finally:
        writer.close()
        proxy.revoke(grant.api_key)


async def test_credential_proxy_refuses_malformed_requests_with_api_errors(canary, backend_api):
    proxy = credential_proxy()
    grant = proxy.grant(upstream=backend_api.url, api_key=canary)
    mark = backend_api.request_count
    try:
        cases = [
            (b"NOT A REQUEST\r\n\r\n", 400),
            (
                b"POST /v1/messages HTTP/1.1\r\nhost: p\r\nx-long: " + b"a" * 100_000,
                431,
            ),  # a head over 64 KiB
            (b"POST /v1/messages HTTP/1.1\r\nhost: p\r\ncontent-length: 999999999999\r\n\r\n", 413),
            (b"POST /v1/messages HTTP/1.1\r\nhost: p\r\ncontent-length: x\r\n\r\n", 400),
        ]
        for request, status in cases:
            answer = await _raw(proxy, request)
            head, _, data = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 %d " % status), (request[:40], answer[:200])
            assert b"connection: close" in head.lower()
            error = json.loads(data)
            assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
        # Expect: 100-continue gets its interim answer before the body is sent.
        body = b'{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}'
        reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
        try:
            writer.write(
                b"POST /v1/messages/count_tokens HTTP/1.1\r\nhost: p\r\nexpect: 100-continue\r\n"
                b"x-api-key: %s\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
                % (grant.api_key.encode(), len(body))
            )
            await writer.drain()
            interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert interim.startswith(b"HTTP/1.1 100 ")
            writer.write(body)
            answer = await asyncio.wait_for(reader.read(), 10)
            assert answer.startswith(b"HTTP/1.1 200 ") and b"input_tokens" in answer
        finally:
            writer.close()
        assert len(requests_since(backend_api, mark, "/v1/messages/count_tokens")) == 1
        assert requests_since(backend_api, mark) == []  # no malformed request went upstream
    finally:
        proxy.revoke(grant.api_key)


@pytest.mark.cli
async def test_scrubber_alone_redacts_a_key_the_model_quotes(
    canary, connect, django_user_model, settings, backend_api
):
    """Layer 2 on its own (the proxy switched off, so the CLI holds the real key and the model
    really receives and quotes it): the runtime's StreamScrubber keeps it out of every chunk, the
    persisted messages and the chat admin."""
    settings.AGENT_BACKEND = "sdk"
    settings.AGENT_SDK_CREDENTIAL_PROXY = False
    settings.AGENT_JAIL = "off"  # a jailed CLI always goes through the proxy: test the scrubber alone
    settings.DEBUG = True  # (the only setting in which the jail may be off)
    chat_id = f"leak-scrub-{uuid.uuid4().hex[:8]}"
    mark = backend_api.request_count
    frames = await _run_turns(connect, chat_id, [f"/tool bash {ENV_DUMP}"])
    await sdk.close_idle_clients()  # the CLI holding the real key: gone
    bodies = json.dumps([r["body"] for r in requests_since(backend_api, mark)])
    assert canary in bodies, "without the proxy the key reaches the model (else this test proves nothing)"
    text = "".join(c["delta"] for c in chunks_of(frames) if c["type"] == "text-delta")
    assert "[redacted]" in text
    _assert_no_canary(
        canary,
        frames=json.dumps(frames),
        messages=await sync_to_async(_persisted)(chat_id),
        admin=await sync_to_async(_admin_views)(django_user_model, chat_id, transcripts=False),
    )


@pytest.mark.cli
async def test_proxy_alone_keeps_the_key_from_the_model(canary, connect, settings, backend_api, monkeypatch):
    """Layer 1 on its own (no stream scrubber): nothing the CLI can read holds the key, so neither
    the model's requests nor the chunks do."""
    monkeypatch.setattr(runtime.StreamScrubber, "for_turn", classmethod(lambda cls: None))
    settings.AGENT_BACKEND = "sdk"
    chat_id = f"leak-proxy-{uuid.uuid4().hex[:8]}"
    mark = backend_api.request_count
    frames = await _run_turns(connect, chat_id, [f"/tool bash {ENV_DUMP}"])
    await sdk.close_idle_clients()
    requests = requests_since(backend_api, mark)
    assert requests and all(r["auth_sha256"] == _sha(canary) for r in requests)
    assert TOKEN_PREFIX in json.dumps([r["body"] for r in requests])  # the model saw (only) the token
    _assert_no_canary(
        canary,
        frames=json.dumps(frames),
        model_requests=json.dumps([r["body"] for r in requests]),
        messages=await sync_to_async(_persisted)(chat_id),
    )


# -- StreamScrubber units -------------------------------------------------------------------------

SECRET = "sk-ant-canary-" + "0123456789abcdef" * 3
OTHER = "operator-secret-value-XYZ123456"
TEXT = f"key={SECRET}; also {OTHER}, sk-{'A1' * 12} and a partial sk-ant-pr- then ssk-ant- words s"


def _feed_all(scrubber: StreamScrubber, chunks: list[dict]) -> list[dict]:
    return [out for chunk in chunks for out in scrubber.feed(chunk)]


def test_stream_scrubber_redacts_secrets_across_any_delta_split():
    rng = random.Random(7)
    expected = "key=[redacted]; also [redacted], [redacted] and a partial sk-ant-pr- then ssk-ant- words s"
    for _ in range(500):
        cuts = sorted(rng.sample(range(1, len(TEXT)), rng.randint(1, 30)))
        pieces = [TEXT[a:b] for a, b in zip([0, *cuts], [*cuts, len(TEXT)])]
        chunks = [events.text_delta("t1", p) for p in pieces] + [events.text_end("t1")]
        out = _feed_all(StreamScrubber([SECRET, OTHER]), chunks)
        assert out[-1] == events.text_end("t1")
        assert all(c["type"] == "text-delta" and c["id"] == "t1" and c["delta"] for c in out[:-1])
        assert "".join(c["delta"] for c in out[:-1]) == expected, pieces


def test_stream_scrubber_covers_every_text_like_chunk():
    s = StreamScrubber([SECRET])
    head, tail = SECRET[:20], SECRET[20:]
    out = _feed_all(
        s,
        [
            events.start("m"),
            events.start_step(),
            events.reasoning_delta("r1", "think " + head),
            events.reasoning_delta("r1", tail),
            events.reasoning_end("r1"),
            events.tool_input_start("c1", "Bash"),
            events.tool_input_delta("c1", '{"command": "echo ' + head),
            events.tool_input_delta("c1", tail + '"}'),
            events.tool_input_available("c1", "Bash", {"command": f"echo {SECRET}"}),
            events.tool_output_available("c1", {"stdout": SECRET, "nested": [SECRET]}),
            events.tool_output_error("c2", f"failed: {SECRET}"),
            events.status("retrying", f"because {SECRET}"),
            events.text_delta("t1", "dangling " + head),
            events.error(f"boom {SECRET}"),
        ],
    )
    dumped = json.dumps(out)
    assert SECRET not in dumped and "canary" not in dumped
    assert dumped.count("[redacted]") == 9
    # the held "dangling" text was flushed (without the secret prefix made whole) before the error
    assert [c["type"] for c in out[-2:]] == ["text-delta", "error"]
    assert "".join(c.get("delta", "") for c in out if c["type"] == "reasoning-delta") == "think [redacted]"


def test_stream_scrubber_passes_clean_chunks_through_untouched(settings):
    s = StreamScrubber([SECRET])
    for chunk in (
        events.text_delta("t", "hello world "),
        events.usage(
            input_tokens=1,
            output_tokens=2,
            cache_read_tokens=0,
            cache_write_tokens=0,
            cost_usd=0.0,
            model="m",
        ),
    ):
        assert s.feed(chunk)[0] is chunk
    # offline default (no key, the public development SECRET_KEY): no scrubber at all
    settings.ANTHROPIC_API_KEY = ""
    settings.SECRET_KEY = "django-insecure-dev-only-key-never-use-in-production"
    assert StreamScrubber.for_turn() is None
    settings.SECRET_KEY = "a-real-production-secret-key-1234567890"
    assert StreamScrubber.for_turn() is not None

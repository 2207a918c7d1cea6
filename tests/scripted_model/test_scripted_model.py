"""The scripted model (CONTRACT §3), driven by the real anthropic client and CLI.

Run alone with:
    python -m pytest tests/scripted_model/test_scripted_model.py -p no:django -q
"""

from __future__ import annotations

import asyncio
import http.client
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import pytest

from scripted_model.directives import Directive, parse_directive
from scripted_model.server import ScriptedModelServer, ensure_scripted_model

try:  # the anthropic client's HTTP library (httpx2 in anthropic 2.x, httpx before)
    import httpx2 as _http
except ImportError:  # pragma: no cover
    import httpx as _http  # type: ignore[no-redef]

MODEL = "claude-scripted-test"
STREAM_ERRORS = (anthropic.APIConnectionError, _http.TransportError)


@pytest.fixture(scope="module")
def server() -> Iterator[ScriptedModelServer]:
    srv = ScriptedModelServer().start()
    yield srv
    srv.stop()


@pytest.fixture
def client(server: ScriptedModelServer) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=server.url, api_key="sk-test", max_retries=0)


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


async def ask(client: anthropic.AsyncAnthropic, text: str, **kwargs: Any) -> anthropic.types.Message:
    messages = kwargs.pop("messages", [user(text)])
    return await client.messages.create(model=MODEL, max_tokens=1024, messages=messages, **kwargs)


async def ask_stream(
    client: anthropic.AsyncAnthropic, text: str, **kwargs: Any
) -> tuple[anthropic.types.Message, list[Any]]:
    messages = kwargs.pop("messages", [user(text)])
    events = []
    async with client.messages.stream(model=MODEL, max_tokens=1024, messages=messages, **kwargs) as stream:
        async for event in stream:
            events.append(event)
        return await stream.get_final_message(), events


def text_of(message: anthropic.types.Message) -> str:
    return "".join(b.text for b in message.content if b.type == "text")


def logged(server: ScriptedModelServer, marker: str) -> list[dict[str, Any]]:
    return [r for r in list(server.requests) if marker in json.dumps(r["body"])]


# -- directive parsing ------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("hello /tool bash echo hi", Directive("tool", command="echo hi")),
        ("/tool bash ls -la | wc -l\nsecond line", Directive("tool", command="ls -la | wc -l")),
        ("/tools 3", Directive("tools", numbers=(3,))),
        ("/long 50", Directive("long", numbers=(50,))),
        ("/slow 100 5", Directive("slow", numbers=(100, 5))),
        ("/stamp 10 20", Directive("stamp", numbers=(10, 20))),
        ("/error 429", Directive("error", numbers=(429,))),
        ("/toolong", Directive("toolong")),
        ("please /drop", Directive("drop")),
        ("<system-reminder>/long 9</system-reminder>\n/think", Directive("think")),
        ("cd /long/path", None),
        ("a/long 5", None),
        ("just chatting", None),
    ],
)
def test_parse_directive(text: str, expected: Directive | None) -> None:
    assert parse_directive(text) == expected


# -- replies through the real anthropic client -----------------------------


@pytest.mark.asyncio
async def test_echo_non_streaming(client: anthropic.AsyncAnthropic) -> None:
    message = await ask(client, "hello there")
    assert message.model == MODEL
    assert message.stop_reason == "end_turn"
    assert text_of(message).startswith('Offline scripted model: you said "hello there".')
    assert "ANTHROPIC_API_KEY" in text_of(message)
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0


@pytest.mark.asyncio
async def test_echo_streaming_matches_non_streaming(client: anthropic.AsyncAnthropic) -> None:
    plain = await ask(client, "same words")
    streamed, events = await ask_stream(client, "same words")
    assert text_of(streamed) == text_of(plain)
    types = [e.type for e in events]
    assert types[0] == "message_start" and types[-1] == "message_stop"
    assert types.count("content_block_delta") >= 3
    assert streamed.usage.output_tokens == types.count("content_block_delta")


@pytest.mark.asyncio
async def test_long_exact_text(client: anthropic.AsyncAnthropic) -> None:
    message, events = await ask_stream(client, "/long 50")
    assert text_of(message) == "".join(f"w{i} " for i in range(50))
    assert sum(1 for e in events if e.type == "content_block_delta") == 50
    assert message.usage.output_tokens == 50
    assert text_of(await ask(client, "/long 50")) == text_of(message)


@pytest.mark.asyncio
async def test_long_is_fast(server: ScriptedModelServer) -> None:
    started = time.monotonic()
    raw = await raw_stream(server.port, "/long 20000")
    assert raw.count(b'"type":"text_delta"') == 20000
    assert raw.endswith(b"0\r\n\r\n")
    assert time.monotonic() - started < 2


@pytest.mark.asyncio
async def test_tool_bash_round_trip(client: anthropic.AsyncAnthropic) -> None:
    message, events = await ask_stream(client, "please /tool bash echo hi && pwd", tools=[BASH])
    assert message.stop_reason == "tool_use"
    (tool,) = [b for b in message.content if b.type == "tool_use"]
    assert tool.name == "Bash"
    assert tool.input["command"] == "echo hi && pwd"
    assert "description" in tool.input
    json_deltas = [
        e for e in events if e.type == "content_block_delta" and e.delta.type == "input_json_delta"
    ]
    assert len(json_deltas) >= 2

    reminder = "\n<system-reminder>\nA note the CLI appends.\n</system-reminder>"
    result = {"type": "tool_result", "tool_use_id": tool.id, "content": "hi\n/tmp" + reminder}
    history = [
        user("please /tool bash echo hi && pwd"),
        {"role": "assistant", "content": message.content},
        user([result]),
    ]
    reply = await ask(client, "", messages=history, tools=[BASH])
    assert reply.stop_reason == "end_turn"
    assert text_of(reply) == "Tool result: hi\n/tmp"


@pytest.mark.asyncio
async def test_parallel_tools_then_summary(client: anthropic.AsyncAnthropic) -> None:
    message, _ = await ask_stream(client, "/tools 3", tools=[BASH])
    tools = [b for b in message.content if b.type == "tool_use"]
    assert message.stop_reason == "tool_use"
    assert [t.input["command"] for t in tools] == ["echo tool-0", "echo tool-1", "echo tool-2"]
    assert len({t.id for t in tools}) == 3
    results = [
        {"type": "tool_result", "tool_use_id": t.id, "content": [{"type": "text", "text": f"tool-{i}\n"}]}
        for i, t in enumerate(tools)
    ]
    history = [user("/tools 3"), {"role": "assistant", "content": message.content}, user(results)]
    reply = await ask(client, "", messages=history, tools=[BASH])
    assert text_of(reply) == "Ran 3 tools: tool-0 tool-1 tool-2"


@pytest.mark.asyncio
async def test_think(client: anthropic.AsyncAnthropic) -> None:
    message, events = await ask_stream(client, "/think")
    assert [b.type for b in message.content] == ["thinking", "text"]
    thinking = message.content[0]
    assert thinking.thinking and thinking.signature
    delta_types = {e.delta.type for e in events if e.type == "content_block_delta"}
    assert {"thinking_delta", "signature_delta", "text_delta"} <= delta_types
    plain = await ask(client, "/think")
    assert [b.type for b in plain.content] == ["thinking", "text"]


@pytest.mark.asyncio
async def test_only_newest_user_text_counts(client: anthropic.AsyncAnthropic) -> None:
    history = [
        user("/long 5"),
        {"role": "assistant", "content": "w0 w1 w2 w3 w4 "},
        user("thanks"),
    ]
    assert text_of(await ask(client, "", messages=history)).startswith(
        'Offline scripted model: you said "thanks"'
    )


@pytest.mark.asyncio
async def test_directive_found_among_system_reminders(client: anthropic.AsyncAnthropic) -> None:
    content = [
        {"type": "text", "text": "<system-reminder>\nSome context.\n</system-reminder>\n"},
        {"type": "text", "text": "hello /long 3"},
    ]
    assert text_of(await ask(client, "", messages=[user(content)])) == "w0 w1 w2 "


ERROR_CASES = [
    (429, anthropic.RateLimitError, "rate_limit_error"),
    (401, anthropic.AuthenticationError, "authentication_error"),
    (400, anthropic.BadRequestError, "invalid_request_error"),
    (402, anthropic.PaymentRequiredError, "billing_error"),
    (403, anthropic.PermissionDeniedError, "permission_error"),
    (500, anthropic.InternalServerError, "api_error"),
    (529, anthropic.OverloadedError, "overloaded_error"),
    (418, anthropic.APIStatusError, "api_error"),
]


@pytest.mark.asyncio
@pytest.mark.parametrize(("status", "exc_class", "error_type"), ERROR_CASES)
@pytest.mark.parametrize("streaming", [False, True])
async def test_error_statuses(
    client: anthropic.AsyncAnthropic,
    status: int,
    exc_class: type[anthropic.APIStatusError],
    error_type: str,
    streaming: bool,
) -> None:
    with pytest.raises(exc_class) as caught:
        if streaming:
            await ask_stream(client, f"/error {status}")
        else:
            await ask(client, f"/error {status}")
    exc = caught.value
    assert exc.status_code == status
    assert exc.body["type"] == "error"
    assert exc.body["error"]["type"] == error_type
    assert exc.response.headers["request-id"]
    if status == 429:
        assert exc.response.headers["retry-after"] == "1"
        assert exc.response.headers["anthropic-ratelimit-requests-reset"]


@pytest.mark.asyncio
async def test_toolong(client: anthropic.AsyncAnthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        await ask(client, "/toolong")
    assert caught.value.body["error"]["message"] == ("prompt is too long: 250000 tokens > 200000 maximum")


@pytest.mark.asyncio
async def test_drop_cuts_the_stream(client: anthropic.AsyncAnthropic) -> None:
    seen: list[str] = []
    with pytest.raises(STREAM_ERRORS):
        async with client.messages.stream(model=MODEL, max_tokens=100, messages=[user("/drop")]) as stream:
            async for event in stream:
                seen.append(event.type)
    assert "message_start" in seen and "content_block_delta" in seen
    assert "message_stop" not in seen
    with pytest.raises(anthropic.APIConnectionError):
        await ask(client, "/drop")


@pytest.mark.asyncio
async def test_slow_spacing(client: anthropic.AsyncAnthropic) -> None:
    started = time.monotonic()
    message, _ = await ask_stream(client, "/slow 30 5")
    assert text_of(message) == "w0 w1 w2 w3 w4 "
    assert time.monotonic() - started >= 0.12


@pytest.mark.asyncio
async def test_stamp_times(client: anthropic.AsyncAnthropic) -> None:
    stamps: list[tuple[int, int, int]] = []
    async with client.messages.stream(model=MODEL, max_tokens=100, messages=[user("/stamp 5 20")]) as stream:
        async for event in stream:
            if event.type == "content_block_delta":
                index, sent = event.delta.text.strip().split(":")
                stamps.append((int(index), int(sent), time.time_ns()))
    assert [s[0] for s in stamps] == [0, 1, 2, 3, 4]
    for (_, sent, received), (_, next_sent, _) in itertools.pairwise(stamps):
        assert sent <= received
        assert next_sent - sent >= 15_000_000


@pytest.mark.asyncio
async def test_many_concurrent_streams(server: ScriptedModelServer) -> None:
    bodies = await asyncio.gather(*(raw_stream(server.port, "/stamp 5 20") for _ in range(300)))
    assert all(b.count(b'"type":"text_delta"') == 5 and b.endswith(b"0\r\n\r\n") for b in bodies)


@pytest.mark.asyncio
async def test_count_tokens(client: anthropic.AsyncAnthropic) -> None:
    short = await client.messages.count_tokens(model=MODEL, messages=[user("hi")])
    again = await client.messages.count_tokens(model=MODEL, messages=[user("hi")])
    longer = await client.messages.count_tokens(model=MODEL, messages=[user("hi " * 400)])
    assert short.input_tokens == again.input_tokens > 0
    assert longer.input_tokens > short.input_tokens + 200


@pytest.mark.asyncio
async def test_prompt_cache_usage(client: anthropic.AsyncAnthropic) -> None:
    system = [
        {
            "type": "text",
            "text": f"Cache test {uuid.uuid4()} " + "lorem ipsum " * 200,
            "cache_control": {"type": "ephemeral"},
        }
    ]
    first = await ask(client, "hello", system=system)
    assert first.usage.cache_creation_input_tokens > 0
    assert first.usage.cache_read_input_tokens == 0
    second = await ask(client, "hello", system=system)
    assert second.usage.cache_creation_input_tokens == 0
    assert second.usage.cache_read_input_tokens == first.usage.cache_creation_input_tokens
    history = [
        user("hello"),
        {"role": "assistant", "content": "hi"},
        user([{"type": "text", "text": "more", "cache_control": {"type": "ephemeral"}}]),
    ]
    third, _ = await ask_stream(client, "", system=system, messages=history)
    assert third.usage.cache_read_input_tokens == first.usage.cache_creation_input_tokens
    assert third.usage.cache_creation_input_tokens > 0
    plain = await ask(client, "no caching here")
    assert plain.usage.cache_creation_input_tokens == plain.usage.cache_read_input_tokens == 0


@pytest.mark.asyncio
async def test_title_side_request_gets_json(client: anthropic.AsyncAnthropic) -> None:
    """What the Claude Code CLI sends to name a session: no tools, json_schema output."""
    schema = {
        "type": "object",
        "properties": {"title": {"type": "string"}},
        "required": ["title"],
        "additionalProperties": False,
    }
    message = await client.messages.create(
        model=MODEL,
        max_tokens=1024,
        system='You are naming a coding session. Return JSON with a single "title" field.',
        messages=[user("<session>\nfix the parser /long 500\n</session>")],
        tools=[],
        extra_body={"output_config": {"format": {"type": "json_schema", "schema": schema}}},
    )
    assert json.loads(text_of(message)) == {"title": "Fix the parser"}


@pytest.mark.asyncio
async def test_request_log(server: ScriptedModelServer, client: anthropic.AsyncAnthropic) -> None:
    marker = f"log-{uuid.uuid4()}"
    await ask(client, f"{marker} /long 2", tools=[BASH])
    (entry,) = logged(server, marker)
    assert entry["method"] == "POST" and entry["path"] == "/v1/messages"
    headers = entry["headers"]
    assert "<redacted>" in (headers.get("x-api-key"), headers.get("authorization"))
    assert "sk-test" not in json.dumps(headers)
    assert headers["anthropic-version"]
    assert entry["body"]["tools"][0]["name"] == "Bash"
    assert entry["directive"] == "long" and entry["status"] == 200
    assert isinstance(entry["time"], float)


# -- plain HTTP ---------------------------------------------------------------


def test_unknown_paths_404_and_keep_alive(server: ScriptedModelServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        conn.request("GET", "/")
        response = conn.getresponse()
        assert response.status == 404
        assert json.loads(response.read())["error"]["type"] == "not_found_error"

        conn.request("HEAD", "/v1/messages")
        response = conn.getresponse()
        assert response.status == 404 and response.read() == b""

        body = json.dumps({"model": MODEL, "max_tokens": 10, "stream": True, "messages": [user("/long 3")]})
        conn.request("POST", "/v1/messages?beta=true", body, {"content-type": "application/json"})
        response = conn.getresponse()
        assert response.status == 200
        assert response.getheader("content-type").startswith("text/event-stream")
        assert response.read().count(b"text_delta") == 3

        conn.request("POST", "/v1/messages", "not json", {"content-type": "application/json"})
        response = conn.getresponse()
        assert response.status == 400
        assert json.loads(response.read())["error"]["type"] == "invalid_request_error"

        conn.request("POST", "/v1/nothing-here", "{}")
        response = conn.getresponse()
        assert response.status == 404
        response.read()
    finally:
        conn.close()


@pytest.mark.asyncio
async def test_client_disconnect_mid_stream_is_harmless(server: ScriptedModelServer) -> None:
    reader, writer = await open_stream(server.port, "/slow 20 50")
    await reader.readuntil(b"text_delta")
    writer.close()
    assert (await raw_stream(server.port, "/long 3")).count(b"text_delta") == 3


def test_singleton_starts_once() -> None:
    urls: list[str] = []
    threads = [threading.Thread(target=lambda: urls.append(ensure_scripted_model())) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(urls)) == 1 and urls[0].startswith("http://127.0.0.1:")
    conn = http.client.HTTPConnection(urls[0].removeprefix("http://"), timeout=5)
    conn.request("GET", "/")
    assert conn.getresponse().status == 404
    conn.close()


def test_manage_py_command_serves_until_interrupted() -> None:
    """``python manage.py scripted_model --port N`` (CONTRACT §6), now from the scripted_model app."""
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "DEBUG": "true", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "scripted_model", "--port", "0"],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        first = proc.stdout.readline()
        assert first.startswith("Scripted model listening on http://127.0.0.1:"), first + proc.stdout.read()
        url = first.split()[4]
        conn = http.client.HTTPConnection(url.removeprefix("http://"), timeout=5)
        body = json.dumps({"model": MODEL, "max_tokens": 5, "messages": [user("hi")]})
        conn.request("POST", "/v1/messages/count_tokens", body, {"content-type": "application/json"})
        response = conn.getresponse()
        assert response.status == 200 and json.loads(response.read())["input_tokens"] > 0
        conn.close()
        proc.send_signal(signal.SIGINT)
        assert "Scripted model stopped." in proc.communicate(timeout=30)[0]
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# -- the real Claude Code CLI -------------------------------------------------


def cli_binary() -> str | None:
    try:
        import claude_agent_sdk
    except ImportError:
        return shutil.which("claude")
    bundled = Path(claude_agent_sdk.__file__).parent / "_bundled" / "claude"
    return str(bundled) if bundled.exists() else shutil.which("claude")


def run_cli(server: ScriptedModelServer, prompt: str, tmp_path: Path) -> list[dict[str, Any]]:
    binary = cli_binary()
    if binary is None:
        pytest.skip("Claude Code CLI not installed")
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "ANTHROPIC_BASE_URL": server.url,
        "ANTHROPIC_API_KEY": "sk-test-offline",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_AUTOUPDATER": "1",
        "CLAUDE_CODE_MAX_RETRIES": "0",
    }
    proc = subprocess.run(
        [binary, "-p", prompt, "--output-format", "stream-json", "--verbose", "--allowedTools", "Bash"],
        check=False,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-2000:] + proc.stdout[-2000:]
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


@pytest.mark.cli
def test_claude_cli_echo(server: ScriptedModelServer, tmp_path: Path) -> None:
    marker = f"cli-{uuid.uuid4().hex[:8]}"
    events = run_cli(server, f"hello {marker}", tmp_path)
    (result,) = [e for e in events if e.get("type") == "result"]
    assert result["is_error"] is False
    assert result["result"].startswith(f'Offline scripted model: you said "hello {marker}"')
    main = [r for r in logged(server, marker) if r["body"].get("tools")]
    assert main, "the main /v1/messages request was not logged"
    assert main[0]["method"] == "POST" and main[0]["path"] == "/v1/messages"
    assert main[0]["headers"]["anthropic-version"] == "2023-06-01"
    assert main[0]["body"]["stream"] is True
    assert any(t["name"] == "Bash" for t in main[0]["body"]["tools"])


@pytest.mark.cli
def test_claude_cli_runs_bash_tool(server: ScriptedModelServer, tmp_path: Path) -> None:
    marker = f"cli-{uuid.uuid4().hex[:8]}"
    events = run_cli(server, f"/tool bash echo {marker}", tmp_path)
    (result,) = [e for e in events if e.get("type") == "result"]
    assert result["is_error"] is False
    assert result["result"] == f"Tool result: {marker}"


# -- helpers ------------------------------------------------------------------

BASH = {
    "name": "Bash",
    "description": "Run a shell command.",
    "input_schema": {
        "type": "object",
        "properties": {"command": {"type": "string"}, "description": {"type": "string"}},
        "required": ["command"],
    },
}


async def open_stream(port: int, text: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    body = json.dumps({"model": MODEL, "max_tokens": 10, "stream": True, "messages": [user(text)]}).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /v1/messages HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    )
    await writer.drain()
    return reader, writer


async def raw_stream(port: int, text: str) -> bytes:
    """One streaming request on a raw socket; the whole (chunked) response."""
    reader, writer = await open_stream(port, text)
    try:
        return await reader.read()
    finally:
        writer.close()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-p", "no:django", "-q"]))


# -- stream grammar (docs/scripted_model.md, "Stream grammar") -----------------


def test_stream_grammar_pings_and_cumulative_usage(server: ScriptedModelServer) -> None:
    body = {"model": MODEL, "max_tokens": 100, "stream": True, "messages": [user("/websearch")]}
    response = _http.post(f"{server.url}/v1/messages", json=body, timeout=10)
    names = [line[len("event: ") :] for line in response.text.splitlines() if line.startswith("event: ")]
    assert names[:2] == ["message_start", "ping"]
    assert names.count("ping") == 1 + names.count("content_block_start") - 1  # one more between blocks
    datas = [
        json.loads(line[len("data: ") :]) for line in response.text.splitlines() if line.startswith("data: ")
    ]
    start = datas[0]["message"]["usage"]
    final = next(d for d in datas if d["type"] == "message_delta")["usage"]
    assert start["output_tokens"] == 1 and final["output_tokens"] > 1
    assert final["input_tokens"] == start["input_tokens"]  # cumulative: repeated, not a remainder
    assert final["server_tool_use"] == {"web_search_requests": 1}
    deltas = [d["delta"]["type"] for d in datas if d["type"] == "content_block_delta"]
    assert "citations_delta" in deltas

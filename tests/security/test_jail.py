"""The escape suite (docs/security.md "The jail"): an ordinary user's chat turns try, through the
agent's Bash tool, everything an attacker tried before the jail existed — on both backends, with
canary secrets in the server's environment and settings, a canary file next to the workspaces,
another user's workspace, and live loopback services. Every attempt must fail; ordinary work
must still succeed.

Each attempt is one turn (``/tool bash <command>``) through the real websocket consumer, the
real runtime and the real backends (the Claude Code CLI inside its jail for ``sdk``)."""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import shutil
import socket
import uuid
from pathlib import Path

import pytest
from django.conf import settings as django_settings

from agents.jail import jail_problem, workspace_usage
from agents.sandbox import workspace_for
from tests.chat.conftest import chunks_of, send_frame
from tests.waiting import wait_until

pytestmark = [pytest.mark.django_db(transaction=True)]

BACKENDS = ["api", pytest.param("sdk", marks=pytest.mark.cli)]


@pytest.fixture(autouse=True)
def _needs_the_jail():
    problem = jail_problem()
    if problem:
        pytest.fail(f"the jail must work here (.ci/run installs bubblewrap, util-linux and socat): {problem}")


@pytest.fixture
def canaries(settings, monkeypatch, tmp_path, scripted_model):
    """Secrets in the server's settings and environment, a file beside the workspaces and in
    another user's workspace; ANTHROPIC_BASE_URL at the scripted model (it takes any key)."""
    values = {
        name: f"canary-{name.lower()}-{secrets.token_hex(12)}"
        for name in ("API_KEY", "SECRET_KEY", "FILE", "OTHER")
    }
    key = "sk-ant-" + values["API_KEY"]
    settings.ANTHROPIC_API_KEY = key
    settings.SECRET_KEY = values["SECRET_KEY"] + "-" + secrets.token_hex(20)
    settings.ANTHROPIC_BASE_URL = scripted_model.url
    monkeypatch.setenv("ANTHROPIC_API_KEY", key)
    monkeypatch.setenv("SECRET_KEY", settings.SECRET_KEY)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", scripted_model.url)
    settings.AGENT_WORKSPACE_ROOT = tmp_path / "workspaces"
    (tmp_path / "server-secret.txt").write_text(values["FILE"])
    other = workspace_for(f"other-user-{uuid.uuid4().hex[:8]}")
    (other / "private.txt").write_text(values["OTHER"])
    return {"values": values, "other": other, "root": tmp_path}


@pytest.fixture(params=BACKENDS)
def backend(request, settings, scripted_model):
    settings.AGENT_BACKEND = request.param
    return request.param


async def _bash(
    connect, command: str, *, chat_id: str | None = None, timeout: float = 90
) -> tuple[str, list[dict]]:
    """One turn running ``command``: (the tool's output or error text, the turn's chunks)."""
    ws = await connect()
    frame = send_frame(chat_id or f"jail-{uuid.uuid4().hex[:8]}", f"/tool bash {command}")
    await ws.send(frame)
    frames = await ws.frames_until_done(frame["requestId"], timeout=timeout)
    chunks = chunks_of(frames)
    outputs = [c for c in chunks if c["type"] in ("tool-output-available", "tool-output-error")]
    assert outputs, f"the tool did not run: {frames[-3:]}"
    out = outputs[0]
    text = out.get("output") if out["type"] == "tool-output-available" else out.get("errorText")
    return str(text if not isinstance(text, dict) else text), chunks


def _host_only_passwd_lines() -> set[str]:
    nobody = "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin"
    return {line for line in Path("/etc/passwd").read_text().splitlines() if line and line != nobody}


def _assert_no_canary(text: str, canaries: dict) -> None:
    for name, value in canaries["values"].items():
        assert value not in text, f"canary {name} escaped the jail: {text[:500]!r}"


def _listening_port() -> tuple[socket.socket, int]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    return server, server.getsockname()[1]


@pytest.mark.parametrize(
    "command",
    [
        "a=etc; cat /$a/passwd",
        "cat {/etc/passwd,x}",
        "python3 -c \"print(open('/etc/passwd').read())\"",
        "echo " + base64.b64encode(b"cat /etc/passwd").decode() + " | base64 -d | bash",
    ],
    ids=["variable", "brace", "python", "base64"],
)
async def test_host_files_are_not_there(backend, canaries, connect, command):
    output, _ = await _bash(connect, command)
    leaked = _host_only_passwd_lines() & set(output.splitlines())
    assert not leaked, f"host /etc/passwd read from the jail: {sorted(leaked)[:3]}"


async def test_no_process_environment_holds_a_secret(backend, canaries, connect):
    # The first attack verbatim, and every /proc entry a jailed process can read.
    attack = "tr '\\0' '\\n' < /proc/$PPID/envi* | grep SECRET_KEY | base64 -w0; echo"
    sweep = (
        "for f in /proc/[0-9]*/environ /proc/self/environ; do tr '\\0' '\\n' < $f; done 2>/dev/null; "
        "env; ps axe"
    )
    for command in (attack, sweep, "cat /proc/$PPID/environ; ps -o ppid= $PPID; cat /proc/1/cmdline"):
        output, chunks = await _bash(connect, command)
        decoded = ""
        for word in output.split():
            try:
                decoded += base64.b64decode(word, validate=True).decode(errors="replace")
            except ValueError:
                pass
        _assert_no_canary(output + decoded, canaries)
        _assert_no_canary(repr(chunks), canaries)


async def test_files_beyond_the_workspace_are_not_reachable(backend, canaries, connect):
    root = canaries["root"]
    other = canaries["other"]
    project = Path(django_settings.BASE_DIR)
    commands = [
        f"cat {root}/server-secret.txt; cat $HOME/../../../server-secret.txt",
        f"cat {other}/private.txt; ls $HOME/../..; ls {other}",
        "python3 -c \"import os; os.symlink('/', 'hostroot'); print(os.listdir('hostroot')); "
        f"print(open('hostroot{root}/server-secret.txt').read())\"",
        f"ls -la {project}; cat {project}/.env {project}/var/db.sqlite3 | head -c 300",
    ]
    for command in commands:
        output, _ = await _bash(connect, command)
        _assert_no_canary(output, canaries)
        assert other.name not in output.replace(f"{other}", ""), "another workspace is visible"
        assert "manage.py" not in output, "the project directory is visible"


async def test_writes_beyond_the_workspace_fail(backend, canaries, connect):
    root = canaries["root"]
    output, _ = await _bash(
        connect, f"echo pwned > $HOME/../../../PWNED.txt; echo pwned > {root}/PWNED2.txt; touch /PWNED3"
    )
    assert not (root / "PWNED.txt").exists() and not (root / "PWNED2.txt").exists()
    assert not Path("/PWNED3").exists()
    assert "pwned" not in (canaries["other"] / "private.txt").read_text()


async def test_loopback_services_are_unreachable(backend, canaries, connect, scripted_model):
    server, port = _listening_port()  # stands in for the app's own port
    try:
        ports = [5432, 6379, port, scripted_model.port]
        probe = "; ".join(
            f"(exec 3<>/dev/tcp/127.0.0.1/{p}) 2>/dev/null && echo OPEN-{p} || echo CLOSED-{p}" for p in ports
        )
        output, _ = await _bash(
            connect, probe + f"; curl -s -m 3 http://127.0.0.1:{port}/ || echo curl-failed"
        )
        for p in ports:
            assert f"CLOSED-{p}" in output and f"OPEN-{p}" not in output, output
    finally:
        server.close()


def _host_processes_running(marker: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if marker.encode() in f.read():
                        found.append(int(entry))
            except OSError:
                pass
    return found


async def test_nothing_outlives_its_turn(backend, canaries, connect):
    seconds = f"{300 + secrets.randbelow(600)}.{secrets.randbelow(1000)}"
    chat_id = f"bg-{uuid.uuid4().hex[:8]}"
    await _bash(
        connect,
        f"nohup sleep {seconds} >/dev/null 2>&1 & setsid sleep {seconds} & disown; echo started",
        chat_id=chat_id,
    )
    await _gone(f"sleep\0{seconds}")
    # And the session still works on the same (kept) CLI.
    output, _ = await _bash(connect, "echo still-here", chat_id=chat_id)
    assert "still-here" in output


async def _gone(marker: str) -> None:
    """The api backend's jail is gone before the tool result; the sdk backend sweeps the kept
    CLI's jail before the turn ends (a killed process may take a moment to leave /proc)."""
    await wait_until(
        lambda: not _host_processes_running(marker), timeout=5, message="processes outlived their turn"
    )


async def test_fork_storm_is_bounded(backend, canaries, connect, settings):
    settings.AGENT_TOOL_MAX_PROCESSES = 64
    settings.AGENT_TOOL_TIMEOUT_SECONDS = 6
    before = len(os.listdir("/proc"))
    output, chunks = await _bash(connect, "bomb() { bomb | bomb & }; bomb; sleep 30", timeout=120)
    assert chunks[-1]["type"] in ("finish", "error"), chunks[-1]
    await _gone("bomb")
    assert len(os.listdir("/proc")) < before + 50


async def test_filling_the_disk_hits_the_quota(backend, canaries, connect, settings):
    settings.AGENT_WORKSPACE_QUOTA_MB = 8
    chat_id = f"fill-{uuid.uuid4().hex[:8]}"
    output, chunks = await _bash(
        connect, "pwd; head -c 50M /dev/zero > big; head -c 5M /dev/zero > big2", chat_id=chat_id
    )
    workspace = Path(output.strip().splitlines()[0].split()[-1])
    assert workspace.parent == Path(settings.AGENT_WORKSPACE_ROOT).resolve(), output
    assert workspace_usage(workspace) <= 16 * 1024 * 1024, "files grew far past the workspace quota"
    assert (workspace / "big").stat().st_size <= 8 * 1024 * 1024, "a file grew past the quota"
    errors = [c for c in chunks if c["type"] in ("error", "tool-output-error")]
    assert any("quota" in (c.get("errorText") or "") for c in errors), chunks[-4:]


async def test_ordinary_work_still_succeeds(backend, canaries, connect):
    chat_id = f"work-{uuid.uuid4().hex[:8]}"
    script = (
        "mkdir -p a/b/c && echo hello > a/b/c/note.txt && cat a/b/c/note.txt && "
        "python3 -c \"import json; print(json.dumps({'ok': 6 * 7}))\" && "
        "echo 'print(sum(range(10)))' > t.py && python3 t.py && whoami && echo $HOME"
    )
    output, _ = await _bash(connect, script, chat_id=chat_id)
    assert "hello" in output and '{"ok": 42}' in output and "45" in output and "agent" in output
    if shutil.which("gcc"):
        output, _ = await _bash(
            connect,
            "printf '#include <stdio.h>\\nint main(){puts(\"compiled-ok\");}\\n' > m.c "
            "&& gcc m.c -o m && ./m",
            chat_id=chat_id,
        )
        assert "compiled-ok" in output


async def test_network_allow_reaches_only_named_hosts(backend, canaries, connect, settings):
    """AGENT_NETWORK_ALLOW: an HTTPS tunnel through the egress proxy reaches a named host:port;
    anything unnamed (and this machine's services, even by name) is refused; without the proxy
    nothing is reachable at all."""
    server, port = _listening_port()
    accepted: list[bytes] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(await reader.readline())
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\nconnection: close\r\n\r\nallowed!\n")
        await writer.drain()
        writer.close()

    server.close()
    target = await asyncio.start_server(answer, "127.0.0.1", port)
    try:
        settings.AGENT_NETWORK_ALLOW = [f"127.0.0.1:{port}"]
        command = (
            f"env -u NO_PROXY -u no_proxy curl -s -m 5 -p http://127.0.0.1:{port}/ok; echo; "
            "env -u NO_PROXY -u no_proxy curl -s -m 5 -p -o /dev/null "
            "-w 'other:%{http_code}\\n' http://127.0.0.1:5432/ ; "
            "env -u NO_PROXY -u no_proxy curl -s -m 5 -p -o /dev/null "
            "-w 'named:%{http_code}\\n' https://localhost/ ; "
            f"(exec 3<>/dev/tcp/127.0.0.1/{port}) 2>/dev/null && echo DIRECT-OPEN || echo DIRECT-CLOSED"
        )
        output, _ = await _bash(connect, command)
        assert "allowed!" in output and accepted == [b"GET /ok HTTP/1.1\r\n"], output
        assert "other:000" in output or "other:403" in output, output
        assert "named:000" in output or "named:403" in output, output
        assert "DIRECT-CLOSED" in output
        settings.AGENT_NETWORK_ALLOW = []
        output, _ = await _bash(
            connect,
            f"env -u NO_PROXY -u no_proxy curl -s -m 5 -p http://127.0.0.1:{port}/ok || echo no-route",
        )
        assert "allowed!" not in output
    finally:
        target.close()

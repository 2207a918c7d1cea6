"""Shared benchmark harness: real daphne + scripted-model subprocesses, websocket clients, stats.

Everything runs on loopback, in a private temp dir (SQLite file DB, workspaces) or a private
PostgreSQL database / Redis key prefix, and is torn down by ``Stack.close()`` (also on errors).
Only processes this harness started are stopped, by their own process-group id.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.processes import free_port, wait_port

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv" / "bin"
PY = str(VENV / "python") if (VENV / "python").exists() else sys.executable
DAPHNE = str(VENV / "daphne") if (VENV / "daphne").exists() else "daphne"
PYSPY = str(VENV / "py-spy") if (VENV / "py-spy").exists() else shutil.which("py-spy")
RESULTS = ROOT / "bench" / "results"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PG_URL = os.environ.get("BENCH_PG_URL", "postgres://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------


def cpu_seconds(pid: int, *, children: bool = True) -> float:
    """utime+stime (and reaped children's, e.g. the Claude CLI) of ``pid`` from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    # fields[0] is state (field 3); utime/stime are fields 14/15, cutime/cstime 16/17.
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLK_TCK


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def tree_pids(pid: int) -> list[int]:
    """``pid`` and its live descendants (CLI processes; the workers hypercorn and granian fork)."""
    found: list[int] = []
    pids = [pid]
    while pids:
        p = pids.pop()
        if p in found:
            continue
        found.append(p)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as fh:
                    pids.extend(int(c) for c in fh.read().split())
    return found


def tree_rss_mb(pid: int) -> float:
    """RSS of ``pid`` plus its direct and indirect children (CLI processes)."""
    total = 0.0
    for p in tree_pids(pid):
        with contextlib.suppress(OSError):
            total += rss_mb(p)
    return total


def tree_cpu_seconds(pid: int) -> float:
    """utime+stime of ``pid`` and of its live descendants (servers that fork workers: hypercorn,
    granian), plus what reaped children used."""
    total = 0.0
    for p in tree_pids(pid):
        with contextlib.suppress(OSError):
            total += cpu_seconds(p)
    return total


class Proc:
    """A subprocess in its own session (process group); stopped by that group id only."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], logdir: Path) -> None:
        self.name = name
        self.log_path = logdir / f"{name}.log"
        self._log = open(self.log_path, "wb")
        self.popen = subprocess.Popen(
            argv, env=env, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.pid = self.popen.pid

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 5.0) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)
                self.popen.wait(5)
        self._log.close()

    def error_summary(self, n: int = 8) -> list[tuple[int, str]]:
        """The most frequent ERROR/exception lines of this process's log (ids masked)."""
        import re
        from collections import Counter

        counts: Counter[str] = Counter()
        with contextlib.suppress(OSError):
            for line in self.log_path.read_text(errors="replace").splitlines():
                if " ERROR " in line or re.match(r"^[\w.]+(Error|Exception): ", line):
                    line = re.sub(r"^[\d-]+ [\d:,]+ ", "", line)
                    line = re.sub(r"[0-9a-f]{8}-[0-9a-f-]{27}", "<id>", line)
                    counts[line[:160]] += 1
        return [(c, k) for k, c in counts.most_common(n)]

    def tail(self, n: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        return ""


def profile(pid: int, seconds: float, out: Path, *, rate: int = 250) -> subprocess.Popen | None:
    """Start ``py-spy record`` on ``pid`` (returns the Popen; wait() on it). None without py-spy."""
    if not PYSPY:
        return None
    out.parent.mkdir(parents=True, exist_ok=True)
    fmt = "speedscope" if out.suffix == ".json" else ("raw" if out.suffix == ".txt" else "flamegraph")
    return subprocess.Popen(
        [
            PYSPY,
            "record",
            "-p",
            str(pid),
            "-d",
            str(max(1, int(seconds))),
            "-r",
            str(rate),
            "-f",
            fmt,
            "-o",
            str(out),
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def profile_stop(spy: subprocess.Popen | None) -> None:
    """Stop a py-spy recorder the way Ctrl-C does, so it writes its output."""
    if spy is None:
        return
    if spy.poll() is None:
        spy.send_signal(signal.SIGINT)
    try:
        spy.wait(30)
    except subprocess.TimeoutExpired:
        spy.kill()
        spy.wait(5)


def raw_samples(raw_path: Path) -> list[tuple[str, int]]:
    """(stack, sample count) of every line of a py-spy ``raw`` (collapsed) profile; [] if unreadable."""
    out: list[tuple[str, int]] = []
    with contextlib.suppress(OSError):
        for line in raw_path.read_text().splitlines():
            stack, _, num = line.rpartition(" ")
            if num.isdigit():
                out.append((stack, int(num)))
    return out


def top_frames(raw_path: Path, n: int = 15) -> list[tuple[str, float]]:
    """Self-time share of the hottest leaf functions in a py-spy ``raw`` (collapsed) profile."""
    counts: dict[str, int] = {}
    total = 0
    for stack, num in raw_samples(raw_path):
        leaf = stack.split(";")[-1]
        counts[leaf] = counts.get(leaf, 0) + num
        total += num
    ranked = sorted(counts.items(), key=lambda kv: -kv[1])[:n]
    return [(k, round(v / total, 3)) for k, v in ranked] if total else []


BREAKDOWN = (
    ("db (django.db incl. connect/close)", ("django/db/",)),
    ("ssl context creation (new HTTP client)", ("create_default_context", "load_verify_locations")),
    ("anthropic client (SSE parse, pydantic)", ("anthropic/", "pydantic", "httpx/", "httpcore/")),
    (
        "websocket out (consumer send, autobahn, twisted)",
        ("autobahn/", "twisted/internet/tcp", "consumers.py", "daphne/ws_protocol"),
    ),
    (
        "http out (sse door, Django ASGI handler, daphne http)",
        ("chat/api/sse.py", "django/core/handlers/asgi", "daphne/http_protocol", "twisted/web/http"),
    ),
    ("chat.persistence (folding)", ("chat/runtime/persistence.py",)),
    ("chat.streams", ("chat/runtime/streams.py",)),
    ("chat.turns (coalescer, heartbeat, title)", ("chat/runtime/",)),
    ("agents (runtime, adapter, api backend)", ("agents/",)),
    ("channels / asgiref glue", ("channels/", "asgiref/")),
    ("event loop / other", ("",)),
)


def breakdown(raw_path: Path) -> dict[str, float]:
    """Disjoint share of samples per component: each sample goes to the first matching row."""
    hits: dict[str, int] = {}
    total = 0
    for stack, num in raw_samples(raw_path):
        total += num
        for label, needles in BREAKDOWN:
            if any(n in stack for n in needles):
                hits[label] = hits.get(label, 0) + num
                break
    return {k: round(v / total, 3) for k, v in sorted(hits.items(), key=lambda kv: -kv[1])} if total else {}


def inclusive_frames(raw_path: Path, needles: Iterable[str]) -> dict[str, float]:
    """Share of samples whose stack contains each needle (inclusive time)."""
    needles = list(needles)
    hits = dict.fromkeys(needles, 0)
    total = 0
    for stack, num in raw_samples(raw_path):
        total += num
        for needle in needles:
            if needle in stack:
                hits[needle] += num
    return {k: round(v / total, 3) for k, v in hits.items()} if total else {}


# --------------------------------------------------------------------------------------------
# The stack: DB + scripted model + daphne(s)
# --------------------------------------------------------------------------------------------

SETUP_USER = """
from django.contrib.auth import get_user_model
from chat.apikeys import api_key_create
User = get_user_model()
user, _ = User.objects.get_or_create(username="bench")
user.set_password("bench-password-1234")
user.save()
_, key = api_key_create(owner=user, name="bench")
print("KEY=" + key)
print("USER_ID=" + str(user.pk))
"""


@dataclass
class Stack:
    backend: str = "api"
    daphnes: int = 1
    postgres: bool = False
    redis: bool = False
    extra_env: dict[str, str] = field(default_factory=dict)
    model_in_process: bool = False  # unused by default: the model runs as its own process

    def __post_init__(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="copilot-bench-"))
        self.procs: list[Proc] = []
        self.daphne: list[Proc] = []
        self.ports: list[int] = []
        self.pg_db: str | None = None
        self.prefix = f"t_bench_{secrets.token_hex(3)}"
        self.key = ""
        self.secret_key = secrets.token_urlsafe(50)

    # -- env ------------------------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("ANTHROPIC_", "DATABASE_URL", "REDIS_URL"))
        }
        env.update(
            # Production settings (DEBUG=true would wrap every cursor in CursorDebugWrapper and
            # keep connection.queries: ~8 % of daphne's samples at 100 streams).
            DEBUG="false",
            SECRET_KEY=self.secret_key,
            ALLOWED_HOSTS="127.0.0.1,localhost",
            SECURE_SSL_REDIRECT="false",  # plain HTTP on loopback; production sits behind TLS
            VAR_DIR=str(self.tmp / "var"),
            AGENT_WORKSPACE_ROOT=str(self.tmp / "workspaces"),
            AGENT_BACKEND=self.backend,
            REDIS_KEY_PREFIX=self.prefix,
            TEST_DB_SUFFIX="_bench",
            LOG_LEVEL="WARNING",
            USER_TOKEN_BUDGET_DAILY=str(10**13),
            USER_TOKEN_BUDGET_WEEKLY=str(10**14),
            API_THROTTLE_CHAT="100000/min",
            API_THROTTLE_WRITES="100000/min",
            # One benchmark user runs every stream: the concurrency caps (docs/security.md) would
            # refuse all but three; the benchmarks measure the relay, not the caps.
            AGENT_MAX_TURNS_PER_USER="0",
            AGENT_MAX_TURNS_PER_WORKER="0",
            AGENT_SDK_MAX_CLI_PROCESSES="0",
            PYTHONUNBUFFERED="1",
        )
        if self.postgres:
            env["DATABASE_URL"] = PG_URL.rsplit("/", 1)[0] + "/" + self.pg_db
        else:
            env["DATABASE_URL"] = f"sqlite:///{self.tmp / 'db.sqlite3'}"
        if self.redis:
            env["REDIS_URL"] = REDIS_URL
        if getattr(self, "model_url", None):
            env["ANTHROPIC_BASE_URL"] = self.model_url
        env.update(self.extra_env)
        return env

    def manage(self, *args: str, input_text: str | None = None, timeout: float = 180) -> str:
        res = subprocess.run(
            [PY, "manage.py", *args],
            env=self.env(),
            cwd=ROOT,
            input=input_text,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if res.returncode != 0:
            raise RuntimeError(
                f"manage.py {' '.join(args)} failed:\n{res.stdout[-2000:]}\n{res.stderr[-4000:]}"
            )
        return res.stdout

    def shell(self, code: str, timeout: float = 300) -> str:
        return self.manage("shell", "-c", code, timeout=timeout)

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> Stack:
        try:
            (self.tmp / "var").mkdir()
            if self.postgres:
                self._pg_create()
            t0 = time.monotonic()
            # The model first: under DEBUG=false, migrate's system checks need ANTHROPIC_BASE_URL
            # (agents.E002).
            port = free_port()
            model = Proc(
                "scripted_model",
                [PY, "manage.py", "scripted_model", "--port", str(port)],
                self.env(),
                self.tmp,
            )
            self.procs.append(model)
            wait_port(port, model.popen, timeout=60)
            self.model = model
            self.model_url = f"http://127.0.0.1:{port}"
            self.manage("migrate", "--noinput")
            out = self.shell(SETUP_USER)
            self.key = next(line[4:] for line in out.splitlines() if line.startswith("KEY="))
            self.user_id = int(next(line[8:] for line in out.splitlines() if line.startswith("USER_ID=")))
            for _ in range(self.daphnes):
                self.add_daphne()
            log(
                f"stack up ({self.backend}, {'pg' if self.postgres else 'sqlite'}, "
                f"{'redis' if self.redis else 'inmemory'}, {self.daphnes} daphne) "
                f"in {time.monotonic() - t0:.1f}s: {self.tmp}"
            )
            return self
        except BaseException:
            self.close()
            raise

    def add_daphne(self) -> Proc:
        port = free_port()
        proc = Proc(
            f"daphne{len(self.daphne)}",
            [
                *os.environ.get("BENCH_DAPHNE", DAPHNE).split(),
                "-b",
                "127.0.0.1",
                "-p",
                str(port),
                "--proxy-headers",
                "copilot_project.asgi:application",
            ],
            self.env(),
            self.tmp,
        )
        self.procs.append(proc)
        try:
            wait_port(port, proc.popen, timeout=60)
        except Exception:  # noqa: BLE001 - whatever stopped it, show daphne's own log
            raise RuntimeError(f"daphne did not start:\n{proc.tail()}") from None
        self.daphne.append(proc)
        self.ports.append(port)
        return proc

    def restart_daphnes(self) -> None:
        """Stop every daphne and start as many fresh ones (new ports)."""
        old = self.daphne
        self.daphne, self.ports = [], []
        for proc in old:
            proc.stop()
            self.procs.remove(proc)
        for _ in old:
            self.add_daphne()

    def ws_url(self, i: int = 0) -> str:
        return f"ws://127.0.0.1:{self.ports[i % len(self.ports)]}/ws/chat/"

    def http_url(self, i: int = 0) -> str:
        return f"http://127.0.0.1:{self.ports[i % len(self.ports)]}"

    def close(self) -> None:
        for proc in reversed(self.procs):
            with contextlib.suppress(Exception):
                proc.stop()
        if self.postgres and self.pg_db:
            with contextlib.suppress(Exception):
                self._pg_drop()
        if self.redis:
            with contextlib.suppress(Exception):
                import redis

                r = redis.Redis.from_url(REDIS_URL)
                keys = list(r.scan_iter(f"{self.prefix}*", count=1000))
                for i in range(0, len(keys), 500):
                    r.delete(*keys[i : i + 500])
        if os.environ.get("BENCH_KEEP_TMP"):
            log(f"kept {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- postgres -------------------------------------------------------------------------------
    def _pg(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(sql)

    def _pg_create(self) -> None:
        self.pg_db = f"copilot_bench_{secrets.token_hex(4)}"
        self._pg(f'CREATE DATABASE "{self.pg_db}"')

    def _pg_drop(self) -> None:
        self._pg(f'DROP DATABASE IF EXISTS "{self.pg_db}" WITH (FORCE)')


# --------------------------------------------------------------------------------------------
# Websocket client (AI SDK WebSocketChatTransport frames, CONTRACT §4)
# --------------------------------------------------------------------------------------------


def send_frame_dict(*, request_id: str, chat_id: str, text: str) -> dict[str, Any]:
    """A ``send`` frame (CONTRACT §4) with one user text message."""
    return {
        "type": "send",
        "requestId": request_id,
        "id": chat_id,
        "trigger": "submit-message",
        "messageId": None,
        "messages": [{"id": uuid.uuid4().hex, "role": "user", "parts": [{"type": "text", "text": text}]}],
        "headers": {},
        "body": {},
        "metadata": None,
    }


def send_frame(*, request_id: str, chat_id: str, text: str) -> str:
    return json.dumps(send_frame_dict(request_id=request_id, chat_id=chat_id, text=text))


def resume_frame(*, request_id: str, chat_id: str, last_sequence: int | None = None) -> str:
    frame: dict[str, Any] = {"type": "resume", "requestId": request_id, "id": chat_id}
    if last_sequence is not None:
        frame["lastSequence"] = last_sequence
    return json.dumps(frame)


async def ws_connect(url: str, key: str | None = None):
    import websockets

    headers = {"Authorization": f"Bearer {key}"} if key else None
    return await websockets.connect(
        url,
        additional_headers=headers,
        max_size=None,
        compression=None,
        open_timeout=60,
        ping_interval=None,
        max_queue=None,
    )


def _is_terminal(raw: str) -> bool:
    # Server frames start with {"type":"chunk"... ; only the rare non-chunk frames need a parse.
    return not raw.startswith('{"type":"chunk"') and json.loads(raw).get("type") in (
        "end",
        "error",
        "no-active",
    )


@dataclass
class TurnRecord:
    """The raw frames a client received for one request, with arrival times (ns)."""

    t_send: int = 0
    frames: list[tuple[int, str]] = field(default_factory=list)
    error: str | None = None

    def parsed(self) -> list[tuple[int, dict[str, Any]]]:
        return [(t, json.loads(raw)) for t, raw in self.frames]


async def ws_turn(
    ws,
    *,
    chat_id: str,
    text: str,
    timeout: float = 120.0,
    stop_after_seq: int | None = None,
    record: TurnRecord | None = None,
) -> TurnRecord:
    """Send one message and collect frames until ``end``/``error`` (or ``stop_after_seq``)."""
    rec = record or TurnRecord()
    rid = uuid.uuid4().hex[:12]
    rec.t_send = time.time_ns()
    await ws.send(send_frame(request_id=rid, chat_id=chat_id, text=text))
    await _collect(ws, rec, timeout=timeout, stop_after_seq=stop_after_seq)
    return rec


async def ws_resume(
    ws, *, chat_id: str, last_sequence: int | None, timeout: float = 120.0, record: TurnRecord | None = None
) -> TurnRecord:
    rec = record or TurnRecord()
    rec.t_send = time.time_ns()
    await ws.send(
        resume_frame(request_id=uuid.uuid4().hex[:12], chat_id=chat_id, last_sequence=last_sequence)
    )
    await _collect(ws, rec, timeout=timeout)
    return rec


_SEQ_MARK = '"sequence":'


def frame_sequence(raw: str) -> int:
    i = raw.find(_SEQ_MARK)
    if i < 0:
        return -1
    j = i + len(_SEQ_MARK)
    k = j
    while k < len(raw) and raw[k].isdigit():
        k += 1
    return int(raw[j:k]) if k > j else -1


async def _collect(ws, rec: TurnRecord, *, timeout: float, stop_after_seq: int | None = None) -> None:
    frames = rec.frames
    now = time.time_ns
    try:
        async with asyncio.timeout(timeout):
            while True:
                raw = await ws.recv()
                frames.append((now(), raw))
                if _is_terminal(raw):
                    obj = json.loads(raw)
                    if obj.get("type") != "end":
                        rec.error = obj.get("errorText") or obj.get("type")
                    return
                if (
                    stop_after_seq is not None
                    and frame_sequence(raw) >= stop_after_seq
                    and not _is_terminal_chunk(raw)
                ):
                    return  # switch sockets mid-turn (after the turn's last chunk there is nothing to resume)
    except TimeoutError:
        rec.error = f"timeout after {timeout}s"
    except Exception as exc:  # noqa: BLE001
        rec.error = f"{type(exc).__name__}: {exc}"


def _is_terminal_chunk(raw: str) -> bool:
    """A chunk frame carrying the turn's terminal chunk (finish / error / abort)."""
    return json.loads(raw).get("chunk", {}).get("type") in ("finish", "error", "abort")


def chunks_of(rec: TurnRecord) -> list[tuple[int, int, dict[str, Any]]]:
    """(arrival ns, sequence, chunk) of every ``chunk`` frame."""
    out = []
    for t, obj in rec.parsed():
        if obj.get("type") == "chunk":
            out.append((t, obj["sequence"], obj["chunk"]))
    return out


def stamps_of(rec: TurnRecord) -> list[tuple[int, int, int]]:
    """(index, send ns, arrival ns) of every ``/stamp`` token in the text deltas (coalesced ok)."""
    out = []
    for t, _seq, chunk in chunks_of(rec):
        if chunk.get("type") == "text-delta":
            for token in chunk.get("delta", "").split():
                idx, _, ns = token.partition(":")
                if idx.isdigit() and ns.isdigit():
                    out.append((int(idx), int(ns), t))
    return out


# --------------------------------------------------------------------------------------------
# Stats and results
# --------------------------------------------------------------------------------------------


def save(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, default=str))
    return path


def sync_bare_server(
    mode: str, env: dict[str, str] | None = None, logdir: Path | None = None, **kw: Any
) -> tuple[Proc, int]:
    """Start ``bench/bare_server.py`` (the baseline) as its own process."""
    port = free_port()
    argv = [PY, str(ROOT / "bench" / "bare_server.py"), "--port", str(port), "--mode", mode]
    for k, v in kw.items():
        argv += [f"--{k.replace('_', '-')}", str(v)]
    logdir = logdir or Path(tempfile.mkdtemp(prefix="copilot-bench-bare-"))
    proc = Proc(f"bare_{mode}", argv, env or dict(os.environ), logdir)
    wait_port(port, proc.popen, timeout=60)
    return proc, port

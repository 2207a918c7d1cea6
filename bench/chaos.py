"""Chaos run (issue 10, docs/reliability.md): ``make chaos`` / ``python -m bench.chaos``.

N randomised chat sessions (default 300) against the real server — two daphne processes sharing
PostgreSQL and Redis, the scripted model as a subprocess — with random directives (text, tools,
thinking, drops, 5xx/529 bursts, 429s, stalls), random disconnects and resumes from random
sequences on either process, aborts, double sends and duplicated tabs. Afterwards an invariant
checker verifies, from the database and the clients' logs:

- every view (a ``send`` or ``resume`` stream) a client saw was in order, without gaps or
  duplicates, and ended with exactly one terminal chunk (unless the client cut it);
- all views of one turn agree chunk by chunk;
- every persisted assistant message equals what was streamed (the chunks folded with the same
  ``MessageFolder`` give the same parts and text), one row per turn at most;
- message sequences are unique per session; no two turns of a session overlapped in time;
- no turn is left ``running`` and no session lock is held;
- a ``TokenUsage`` row exists for every turn; every turn a client saw start exists, and its
  status matches the terminal chunk the client saw.

It prints the counts and exits non-zero on any violation. It uses a dedicated database
(``--database``, default ``copilot_chaos``; dropped and re-created) and a private Redis key
prefix; it skips (exit 0, with a message) when PostgreSQL or Redis are not reachable, unless
``CI=true``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import random
import secrets
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.harness import send_frame_dict
from bench.processes import free_port, wait_port

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv" / "bin"
PY = str(VENV / "python") if (VENV / "python").exists() else sys.executable
DAPHNE = str(VENV / "daphne") if (VENV / "daphne").exists() else "daphne"
PG_URL = os.environ.get("CHAOS_PG_URL", "postgres://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("CHAOS_REDIS_URL", "redis://127.0.0.1:6379/0")
TERMINAL = ("finish", "error", "abort")
VIEW_TIMEOUT = 60.0


def log(msg: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Services and processes
# --------------------------------------------------------------------------------------------


def services_missing() -> list[str]:
    missing = []
    try:
        import psycopg

        with psycopg.connect(_pg_conninfo(PG_URL), connect_timeout=3):
            pass
    except Exception as exc:  # noqa: BLE001
        missing.append(f"PostgreSQL at {PG_URL} ({type(exc).__name__})")
    try:
        import redis

        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3).ping()
    except Exception as exc:  # noqa: BLE001
        missing.append(f"Redis at {REDIS_URL} ({type(exc).__name__})")
    return missing


def _pg_conninfo(url: str, dbname: str | None = None) -> str:
    from urllib.parse import urlparse

    u = urlparse(url)
    parts = {
        "host": u.hostname or "127.0.0.1",
        "port": str(u.port or 5432),
        "user": u.username or "postgres",
        "dbname": dbname or (u.path.lstrip("/") or "postgres"),
    }
    if u.password:
        parts["password"] = u.password
    return " ".join(f"{k}={v}" for k, v in parts.items())


def recreate_database(name: str, template: str | None = None) -> str:
    """Drop and create ``name``, empty or as a copy of ``template`` (an already migrated
    database nobody is connected to: migrate then has nothing to do)."""
    import psycopg

    with psycopg.connect(_pg_conninfo(PG_URL), autocommit=True) as con:
        con.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        )
        con.execute(f'DROP DATABASE IF EXISTS "{name}"')
        con.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
    base = PG_URL.rsplit("/", 1)[0]
    return f"{base}/{name}"


def drop_database(name: str) -> None:
    import psycopg

    with psycopg.connect(_pg_conninfo(PG_URL), autocommit=True) as con:
        con.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        )
        con.execute(f'DROP DATABASE IF EXISTS "{name}"')


class Processes:
    """Only the processes this run started; stopped by their own pid (SIGTERM, then SIGKILL)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[subprocess.Popen] = []

    def start(self, name: str, args: list[str], env: dict[str, str], port: int) -> subprocess.Popen:
        out = open(self.workdir / f"{name}.log", "ab")
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        try:
            wait_port(port, proc, timeout=60)
        except Exception:
            log(
                f"{name} failed to start; last log lines:\n"
                f"{(self.workdir / f'{name}.log').read_text()[-3000:]}"
            )
            raise
        return proc

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# --------------------------------------------------------------------------------------------
# Client side
# --------------------------------------------------------------------------------------------

DIRECTIVES: list[tuple[float, Any]] = [
    (3, lambda r: f"hello {r.randrange(1000)}"),
    (3, lambda r: f"/long {r.randrange(5, 300)}"),
    (4, lambda r: f"/slow {r.choice([10, 20, 40])} {r.randrange(10, 60)}"),
    (2, lambda r: f"/tool bash echo chaos-{r.randrange(1000)}"),
    (1, lambda r: f"/tools {r.randrange(1, 4)}"),
    (1, lambda r: "/think"),
    (1, lambda r: "/drop"),
    (0.5, lambda r: "/droptool"),
    (1, lambda r: f"/error {r.choice([400, 500, 529])}"),
    (1, lambda r: f"/flaky {r.choice([500, 529])} 1 {uuid.uuid4().hex[:8]}"),
    (0.3, lambda r: "/error 429"),
    (0.3, lambda r: "/stall 20000"),
]
ACTIONS = [("plain", 4), ("disconnect", 2), ("abort", 1.5), ("double", 1), ("tab", 1.5)]


@dataclass
class View:
    """One stream a client read: a send or a resume."""

    kind: str  # send | resume | tab
    chat_id: str
    turn_index: int
    frames: list[dict[str, Any]] = field(default_factory=list)
    after: int = -1  # the resume's lastSequence (-1: from the start)
    cut: bool = False  # the client closed it on purpose
    outcome: str = ""  # end | error | no-active | cut | closed
    turn_id: str = ""  # from the view's own ``start`` chunk, or the turn a resume continues


@dataclass
class Stats:
    counts: collections.Counter = field(default_factory=collections.Counter)
    views: list[View] = field(default_factory=list)
    started_turns: set[str] = field(default_factory=set)  # turn ids whose start a client saw


class Client:
    def __init__(
        self,
        endpoints: list[str],
        cookie: str,
        rng: random.Random,
        stats: Stats,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.endpoints = endpoints  # ws://host:port or wss://host:port: each worker, or one front door
        self.cookie = cookie
        self.rng = rng
        self.stats = stats
        self.tls = tls

    async def connect(self, endpoint: str | None = None):
        import websockets

        endpoint = endpoint or self.rng.choice(self.endpoints)
        return await websockets.connect(
            f"{endpoint}/ws/chat/",
            additional_headers={"Cookie": self.cookie},
            origin=http_origin(endpoint),  # the socket's own origin (judged as CSRF judges it)
            max_size=None,
            open_timeout=30,
            ssl=self.tls if endpoint.startswith("wss:") else None,
        )

    async def read_view(self, ws, rid: str, view: View, *, stop_after: int | None = None) -> View:
        """Frames of request ``rid`` until its end (or ``stop_after`` chunks, then cut)."""
        chunks = 0
        try:
            async with asyncio.timeout(VIEW_TIMEOUT):
                while True:
                    frame = json.loads(await ws.recv())
                    if frame.get("requestId") != rid:
                        continue
                    view.frames.append(frame)
                    if frame["type"] == "chunk":
                        chunks += 1
                        if (
                            stop_after is not None
                            and chunks >= stop_after
                            and frame["chunk"]["type"] not in TERMINAL
                        ):
                            view.cut, view.outcome = True, "cut"
                            return view
                    elif frame["type"] in ("end", "error", "no-active"):
                        view.outcome = frame["type"]
                        return view
        except TimeoutError:
            view.outcome = "timeout"
            self.stats.counts["view timeouts"] += 1
            return view
        except Exception:  # noqa: BLE001 - websockets.ConnectionClosed and friends
            view.outcome = "closed"
            return view
        finally:
            self.stats.views.append(view)
            self._note_start(view)

    def _note_start(self, view: View) -> None:
        for frame in view.frames:
            if frame["type"] == "chunk" and frame["chunk"]["type"] == "start":
                view.turn_id = frame["chunk"].get("messageId", "").removeprefix("msg-")
                self.stats.started_turns.add(view.turn_id)

    @staticmethod
    def send_frame(chat_id: str, text: str) -> dict[str, Any]:
        return send_frame_dict(request_id=uuid.uuid4().hex, chat_id=chat_id, text=text)

    async def resume(
        self, chat_id: str, turn_index: int, after: int | None, *, kind: str = "resume", turn_id: str = ""
    ) -> View:
        ws = await self.connect()
        try:
            rid = uuid.uuid4().hex
            frame = {"type": "resume", "requestId": rid, "id": chat_id}
            if after is not None:
                frame["lastSequence"] = after
            await ws.send(json.dumps(frame))
            # A resume from a sequence has no ``start`` chunk: it continues the turn the client was
            # reading (nothing else runs in this chat meanwhile).
            view = View(
                kind=kind,
                chat_id=chat_id,
                turn_index=turn_index,
                after=-1 if after is None else after,
                turn_id=turn_id if after is not None and after >= 0 else "",
            )
            return await self.read_view(ws, rid, view)
        finally:
            await ws.close()

    async def session(self, index: int) -> None:
        rng, counts = self.rng, self.stats.counts
        chat_id = str(uuid.uuid4())
        counts["sessions"] += 1
        for turn_index in range(rng.choice([1, 1, 2, 2, 3, 4])):
            text = rng.choices([d[1] for d in DIRECTIVES], weights=[d[0] for d in DIRECTIVES])[0](rng)
            action = rng.choices([a[0] for a in ACTIONS], weights=[a[1] for a in ACTIONS])[0]
            counts[f"action {action}"] += 1
            counts[f"directive {text.split()[0] if text.startswith('/') else 'echo'}"] += 1
            await getattr(self, f"_turn_{action}")(chat_id, turn_index, text)
            if rng.random() < 0.3:
                await asyncio.sleep(rng.random() * 0.2)

    async def _send(self, ws, chat_id: str, turn_index: int, text: str, **kw) -> View:
        frame = self.send_frame(chat_id, text)
        await ws.send(json.dumps(frame))
        return await self.read_view(ws, frame["requestId"], View("send", chat_id, turn_index), **kw)

    async def _wait_idle(self, chat_id: str, turn_index: int) -> None:
        """Follow the chat until no turn is active (the next turn must not be refused)."""
        for _ in range(50):
            view = await self.resume(chat_id, turn_index, None)
            if view.outcome in ("no-active",):
                self.stats.views.remove(view)
                return
            if view.outcome == "error":
                await asyncio.sleep(0.2)
        self.stats.counts["wait idle gave up"] += 1

    async def _turn_plain(self, chat_id: str, turn_index: int, text: str) -> None:
        ws = await self.connect()
        try:
            await self._send(ws, chat_id, turn_index, text)
        finally:
            await ws.close()

    async def _turn_disconnect(self, chat_id: str, turn_index: int, text: str) -> None:
        ws = await self.connect()
        try:
            view = await self._send(ws, chat_id, turn_index, text, stop_after=self.rng.randrange(1, 12))
        finally:
            await ws.close()
        self.stats.counts["disconnects"] += 1
        if not view.cut:
            return
        seqs = [f["sequence"] for f in view.frames if f["type"] == "chunk"]
        choice = self.rng.random()
        after = None if choice < 0.25 else self.rng.randrange(-1, seqs[-1] + 1) if seqs else -1
        self.stats.counts["resumes"] += 1
        resumed = await self.resume(chat_id, turn_index, after, turn_id=view.turn_id)
        if resumed.outcome == "no-active":
            self.stats.counts["resume found the turn finished"] += 1
            self.stats.views.remove(resumed)
        await self._wait_idle(chat_id, turn_index)

    async def _turn_abort(self, chat_id: str, turn_index: int, text: str) -> None:
        ws = await self.connect()
        try:
            frame = self.send_frame(chat_id, text)
            await ws.send(json.dumps(frame))
            view = View("send", chat_id, turn_index)
            await self.read_view(ws, frame["requestId"], view, stop_after=self.rng.randrange(1, 8))
            if view.cut:
                self.stats.views.remove(view)  # the same request continues below
                view.cut, view.outcome = False, ""
                await ws.send(json.dumps({"type": "abort", "requestId": frame["requestId"]}))
                self.stats.counts["aborts"] += 1
                await self.read_view(ws, frame["requestId"], view)
                last = [f["chunk"] for f in view.frames if f["type"] == "chunk"][-1:]
                if last and last[0].get("messageMetadata", {}).get("stopped"):
                    self.stats.counts["aborts that stopped a turn"] += 1
        finally:
            await ws.close()

    async def _turn_double(self, chat_id: str, turn_index: int, text: str) -> None:
        a, b = await self.connect(self.endpoints[0]), await self.connect(self.endpoints[-1])
        try:
            first, second = (
                self.send_frame(chat_id, text),
                self.send_frame(chat_id, f"/long 3 double {turn_index}"),
            )
            await a.send(json.dumps(first))
            await b.send(json.dumps(second))
            v1, v2 = await asyncio.gather(
                self.read_view(a, first["requestId"], View("send", chat_id, turn_index)),
                self.read_view(b, second["requestId"], View("send", chat_id, turn_index)),
            )
            self.stats.counts["double sends"] += 1
            refused = [
                v
                for v in (v1, v2)
                if v.outcome == "error" and "stream_already_active" in v.frames[-1].get("errorText", "")
            ]
            self.stats.counts["double sends refused"] += len(refused)
            for v in refused:
                self.stats.views.remove(v)
            if not refused:
                # Both ran: only allowed one after the other (checked from the database).
                self.stats.counts["double sends both ran (sequentially)"] += 1
        finally:
            await a.close()
            await b.close()
        await self._wait_idle(chat_id, turn_index)

    async def _turn_tab(self, chat_id: str, turn_index: int, text: str) -> None:
        ws = await self.connect(self.endpoints[0])
        try:
            frame = self.send_frame(chat_id, text)
            await ws.send(json.dumps(frame))
            main = asyncio.ensure_future(
                self.read_view(ws, frame["requestId"], View("send", chat_id, turn_index))
            )
            await asyncio.sleep(self.rng.random() * 0.3)
            tab = await self.resume(chat_id, turn_index, None, kind="tab")
            self.stats.counts["tab duplications"] += 1
            if tab.outcome == "no-active":
                self.stats.views.remove(tab)
            await main
        finally:
            await ws.close()


# --------------------------------------------------------------------------------------------
# Invariants
# --------------------------------------------------------------------------------------------


def check_invariants(stats: Stats, *, redis_prefix: str) -> tuple[collections.Counter, list[str]]:
    from django.db.models import Count

    from chat.models import ChatMessage, ChatSession, ChatTurn, TokenUsage
    from chat.runtime.locks import lock_holder, session_key
    from chat.runtime.persistence import MessageFolder

    counts: collections.Counter = collections.Counter()
    bad: list[str] = []

    # 1. Each view: in order, no gaps, no duplicates, one terminal chunk at the end.
    per_turn: dict[str, dict[int, dict]] = collections.defaultdict(dict)
    for view in stats.views:
        chunks = [(f["sequence"], f["chunk"]) for f in view.frames if f["type"] == "chunk"]
        counts["views"] += 1
        counts["chunks seen"] += len(chunks)
        if view.outcome in ("error",) and not chunks:
            continue  # refused (e.g. a 429 block) or lagged
        seqs = [s for s, _ in chunks]
        first = 0 if view.kind == "send" else view.after + 1
        if view.kind != "send" and view.after < 0:
            first = 0
        if seqs and seqs != list(range(seqs[0], seqs[0] + len(seqs))):
            bad.append(
                f"view {view.kind} of {view.chat_id}#{view.turn_index}: gap or duplicate in {seqs[:50]}"
            )
        if seqs and seqs[0] != first and view.kind == "send":
            bad.append(f"send view of {view.chat_id}#{view.turn_index} starts at {seqs[0]}")
        terminals = [i for i, (_, c) in enumerate(chunks) if c["type"] in TERMINAL]
        if view.outcome == "end":
            if terminals != [len(chunks) - 1]:
                bad.append(
                    f"view of {view.chat_id}#{view.turn_index} ended without exactly one final terminal chunk"
                )
        elif view.outcome in ("timeout",):
            bad.append(f"view of {view.chat_id}#{view.turn_index} timed out after {len(chunks)} chunks")
        elif view.outcome == "error":
            bad.append(
                f"view of {view.chat_id}#{view.turn_index} failed on the server after {len(chunks)} chunks: "
                f"{view.frames[-1].get('errorText', '')[:100]}"
            )
        elif view.outcome == "closed" and not view.cut:
            bad.append(f"view of {view.chat_id}#{view.turn_index} was closed by the server")
        if not view.turn_id:
            if chunks:
                bad.append(
                    f"{view.kind} view of {view.chat_id}#{view.turn_index} (after {view.after}) has chunks "
                    f"but no turn: {[c['type'] for _, c in chunks[:6]]} from sequence {chunks[0][0]}"
                )
            continue
        log_ = per_turn[view.turn_id]
        for seq, chunk in chunks:
            if seq in log_ and log_[seq] != chunk:
                bad.append(f"views of turn {view.turn_id} disagree at sequence {seq}")
            log_[seq] = chunk

    # 2. The turns clients saw: their status, their persisted message, their usage row.
    sessions = {
        str(s.client_id): s
        for s in ChatSession.objects.filter(client_id__in={v.chat_id for v in stats.views})
    }
    turns = {str(t.pk): t for t in ChatTurn.objects.filter(session__in=sessions.values())}
    usage_turns = set(
        str(t) for t in TokenUsage.objects.filter(turn__in=list(turns)).values_list("turn_id", flat=True)
    )
    rows: dict[str, list[ChatMessage]] = collections.defaultdict(list)
    for msg in ChatMessage.objects.filter(session__in=sessions.values(), role="assistant", kind="normal"):
        rows[str(msg.turn_id)].append(msg)
    for turn_id in stats.started_turns:
        counts["turns started (seen by clients)"] += 1
        turn = turns.get(turn_id)
        if turn is None:
            bad.append(f"turn {turn_id} seen by a client is not in the database")
            continue
        log_ = per_turn.get(turn_id, {})
        seqs = sorted(log_)
        complete = seqs == list(range(len(seqs))) and seqs and log_[seqs[-1]]["type"] in TERMINAL
        if not complete:
            counts["turns not fully observed"] += 1
            continue
        counts["turns fully observed"] += 1
        terminal = log_[seqs[-1]]
        expected = {
            "finish": {"finished", "stopped"},
            "error": {"failed", "interrupted"},
            "abort": {"stopped"},
        }[terminal["type"]]
        if turn.status not in expected:
            bad.append(f"turn {turn_id}: client saw {terminal['type']} but the turn is {turn.status}")
        counts[f"turns {turn.status}"] += 1
        folder = MessageFolder(message_id=f"msg-{turn_id}")
        for seq in seqs:
            folder.feed(log_[seq])
        folder.close_open_parts()
        parts, text, _meta = folder.snapshot()
        persisted = rows.get(turn_id, [])
        if len(persisted) > 1:
            bad.append(f"turn {turn_id}: {len(persisted)} assistant rows")
        elif not persisted:
            if folder.has_content:
                bad.append(f"turn {turn_id}: streamed content was not persisted")
        else:
            counts["messages compared with the stream"] += 1
            if persisted[0].text != text or persisted[0].parts != parts:
                bad.append(
                    f"turn {turn_id}: persisted message differs from the stream "
                    f"({persisted[0].text[:60]!r} vs {text[:60]!r})"
                )
    for turn_id, turn in turns.items():
        counts["turns in the database"] += 1
        if turn.status == ChatTurn.Status.RUNNING:
            bad.append(f"turn {turn_id} is still running")
        if turn_id not in usage_turns:
            bad.append(f"turn {turn_id} ({turn.status}) has no usage row")
        else:
            counts["usage rows"] += 1

    # 3. Sessions: unique sequences, no overlapping turns, no stuck lock.
    dupes = (
        ChatMessage.objects.filter(session__in=sessions.values())
        .values("session", "sequence")
        .annotate(n=Count("id"))
        .filter(n__gt=1)
    )
    for row in dupes:
        bad.append(f"session {row['session']}: sequence {row['sequence']} used {row['n']} times")
    by_session: dict[Any, list[ChatTurn]] = collections.defaultdict(list)
    for turn in turns.values():
        by_session[turn.session_id].append(turn)
    for session_id, items in by_session.items():
        items.sort(key=lambda t: t.started_at)
        for prev, nxt in zip(items, items[1:]):
            if prev.ended_at is None or prev.ended_at > nxt.started_at:
                bad.append(f"session {session_id}: turns {prev.pk} and {nxt.pk} overlapped")
    for session in sessions.values():
        counts["sessions checked"] += 1
        if lock_holder(session_key(session.pk)) is not None:
            bad.append(f"session {session.pk}: lock still held")
    counts["messages in the database"] = ChatMessage.objects.filter(session__in=sessions.values()).count()
    return counts, bad


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=12)
    parser.add_argument("--users", type=int, default=0, help="default: one per 10 sessions")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--database", default="copilot_chaos")
    parser.add_argument("--drop", action="store_true", help="drop the chaos database at the end")
    parser.add_argument(
        "--worker-ports",
        default="",
        help="P1,P2: run the two daphne processes on these ports (default: free ones)",
    )
    parser.add_argument(
        "--base-url",
        default="",
        help="send every client through this front door (e.g. https://127.0.0.1:8443, an nginx in front "
        "of --worker-ports) instead of straight to the workers",
    )
    parser.add_argument("--ca-file", default=None, help="the certificate to trust for an https --base-url")
    parser.add_argument(
        "--template-database",
        default=None,
        help="create --database as a copy of this migrated database (no connections to it) to skip migrating",
    )
    return parser.parse_args(argv)


def http_origin(endpoint: str) -> str:
    """ws://h:p → http://h:p, wss://h:p → https://h:p."""
    return "http" + endpoint.removeprefix("ws")


def client_endpoints(args: argparse.Namespace, ports: list[int]) -> list[str]:
    """Where clients connect: the front door (``--base-url``) or each worker directly."""
    if args.base_url:
        return ["ws" + args.base_url.rstrip("/").removeprefix("http")]
    return [f"ws://127.0.0.1:{port}" for port in ports]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    in_ci = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
    missing = services_missing()
    if missing:
        msg = f"chaos run skipped: needs {' and '.join(missing)}"
        if in_ci:
            log(msg + " (CI=true: failing)")
            return 1
        log(msg)
        return 0
    seed = args.seed if args.seed is not None else secrets.randbelow(10**6)
    log(f"seed {seed}, {args.sessions} sessions, concurrency {args.concurrency}")
    workdir = Path(tempfile.mkdtemp(prefix="chaos-"))
    prefix = f"chaos_{secrets.token_hex(4)}"
    db_url = recreate_database(args.database, args.template_database)
    env = {
        **os.environ,
        "DEBUG": "true",
        "DATABASE_URL": db_url,
        "REDIS_URL": REDIS_URL,
        "REDIS_KEY_PREFIX": prefix,
        "DJANGO_SETTINGS_MODULE": "copilot_project.settings",
        "AGENT_BACKEND": "api",
        "AGENT_WORKSPACE_ROOT": str(workdir / "workspaces"),
        "AGENT_RETRY_BASE_DELAY": "0.01",
        "AGENT_RETRY_MAX_DELAY": "0.05",
        "AGENT_HEARTBEAT_SECONDS": "1",
        "AGENT_STREAM_IDLE_TIMEOUT": "2",
        "USER_TOKEN_BUDGET_DAILY": str(10**13),
        "USER_TOKEN_BUDGET_WEEKLY": str(10**14),
        "LOG_LEVEL": "ERROR",
        "CONN_MAX_AGE": "0",
    }
    env.pop("ANTHROPIC_API_KEY", None)
    if args.base_url:
        # The workers run with DEBUG=true, which does not read X-Forwarded-Proto: an https front
        # door's origin is trusted explicitly (as CSRF_TRUSTED_ORIGINS does for Django's CSRF check).
        env["CSRF_TRUSTED_ORIGINS"] = args.base_url.rstrip("/")
    os.environ.update(
        {
            k: env[k]
            for k in ("DEBUG", "DATABASE_URL", "REDIS_URL", "REDIS_KEY_PREFIX", "DJANGO_SETTINGS_MODULE")
        }
    )
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.test import Client as DjangoClient

    procs = Processes(workdir)
    started = time.monotonic()
    try:
        log("migrating the chaos database")
        call_command("migrate", verbosity=0, interactive=False)
        users = args.users or max(1, args.sessions // 10)
        cookies = []
        for i in range(users):
            user = get_user_model().objects.create_user(username=f"chaos{i}", password=secrets.token_hex(8))
            client = DjangoClient()
            client.force_login(user)
            cookies.append(f"sessionid={client.cookies['sessionid'].value}")
        model_port = free_port()
        procs.start(
            "scripted-model", [PY, "manage.py", "scripted_model", "--port", str(model_port)], env, model_port
        )
        env["ANTHROPIC_BASE_URL"] = f"http://127.0.0.1:{model_port}"
        ports = (
            [int(p) for p in args.worker_ports.split(",")]
            if args.worker_ports
            else [free_port(), free_port()]
        )
        for i, port in enumerate(ports):
            procs.start(
                f"daphne-{i}",
                [DAPHNE, "-b", "127.0.0.1", "-p", str(port), "copilot_project.asgi:application"],
                env,
                port,
            )
        endpoints = client_endpoints(args, ports)
        log(f"daphne on {ports}, scripted model on {model_port}; clients to {endpoints}; running")
        stats = Stats()
        t0 = time.monotonic()
        asyncio.run(run_sessions(args, seed, endpoints, cookies, stats))
        run_seconds = time.monotonic() - t0
        log(f"sessions done in {run_seconds:.1f}s; stopping the servers and checking invariants")
    finally:
        procs.stop()
    counts, bad = check_invariants(stats, redis_prefix=prefix)
    counts.update(stats.counts)
    print(f"chaos: seed {seed}, {run_seconds:.1f}s of traffic, {time.monotonic() - started:.1f}s in all")
    for key in sorted(counts):
        print(f"  {key:45s} {counts[key]}")
    print(f"  {'invariant violations':45s} {len(bad)}")
    for line in bad[:50]:
        print(f"  ! {line}")
    if args.drop:
        from django.db import connections

        connections.close_all()
        drop_database(args.database)
    return 1 if bad else 0


async def run_sessions(
    args: argparse.Namespace, seed: int, endpoints: list[str], cookies: list[str], stats: Stats
) -> None:
    sem = asyncio.Semaphore(args.concurrency)
    tls = ssl.create_default_context(cafile=args.ca_file) if args.base_url.startswith("https:") else None

    async def one(i: int) -> None:
        async with sem:
            rng = random.Random(seed * 1_000_003 + i)
            client = Client(endpoints, cookies[i % len(cookies)], rng, stats, tls)
            try:
                await client.session(i)
            except Exception as exc:  # noqa: BLE001 - counted; the checker judges the logs
                stats.counts[f"client errors ({type(exc).__name__})"] += 1

    await asyncio.gather(*(one(i) for i in range(args.sessions)))


if __name__ == "__main__":
    sys.exit(main())

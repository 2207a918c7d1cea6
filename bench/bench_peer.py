"""Benchmark 10 — the AI SDK peer (issue 21): this project against the canonical Vercel AI SDK chat
backend, side by side in one run, both reading the same scripted model, with the same load client.

- **peer**: ``bench/peer/server.mjs`` — Node ``node:http``, ``streamText`` with ``@ai-sdk/anthropic``
  (``createAnthropic({baseURL: <scripted model>/v1})``) returning ``toUIMessageStreamResponse()``;
  dependencies pinned by ``bench/peer/package-lock.json`` (``npm ci`` on first use).
- **sse**: this project's ``POST /api/v1/chat/`` (daphne, production settings, ``api`` backend, a
  Bearer API key), one new chat per stream.
- **ws**: this project's websocket door (``bench_latency.stamp_round``), same counts.

Each stream asks ``/stamp 200 20`` (200 text deltas, one every 20 ms, each carrying its send time);
per-delta latency = arrival at the client − the model's stamp (as in benchmark 2). For each level
(25 and 100 concurrent streams) and round, the doors run one after the other (order rotated each
round); the figures are p50/p99 per door and the server's CPU seconds (``/proc/<pid>/stat`` of
the server process) per 1,000 deltas, reported as the median over the rounds, with the ratios
project / peer.

Lever A/Bs in the same run (docs/performance.md, issue 21): ``--servers daphne,uvicorn`` starts
one process of each ASGI server on the same stack (each measured as its own door); ``--variant
NAME[@SERVER][*WORKERS][=ENV=VALUE,…]`` adds a server (``daphne-uvloop``, ``uvicorn``,
``hypercorn``, ``granian``), optionally several worker processes (streams spread over them, CPU
summed) and extra environment (e.g. ``PYTHONPATH=<copy of the tree>`` for the "before" code).
``--count 1 --interval 0`` measures what a turn costs apart from its deltas; ``--profile`` records
a py-spy profile of each project door in a separate repeat of the top level.

    .venv/bin/python -m bench.bench_peer [--levels 25,100] [--rounds 3] [--doors peer,sse,ws]
        [--variant before=PYTHONPATH=/tmp/old-tree] [--variant two*2] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from bench import harness as h
from bench.bench_latency import stamp_round
from bench.processes import HOST, free_port, wait_port
from bench.stats import pct, r

PEER_DIR = h.ROOT / "bench" / "peer"
NODE_MIN_MAJOR = 20
COUNT, INTERVAL_MS = 200, 20
PEER_MODEL = "claude-sonnet-5-5"


# --------------------------------------------------------------------------------------------
# The peer: npm ci + node server.mjs
# --------------------------------------------------------------------------------------------


def node_missing() -> str | None:
    """Why the peer cannot run here (no node/npm, or a Node older than 20), else None."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        return "node/npm not found on PATH: the AI SDK peer is skipped (install Node >= 20)"
    out = subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip()
    try:
        major = int(out.lstrip("v").split(".")[0])
    except ValueError:
        return f"cannot read the Node version ({out!r}): the AI SDK peer is skipped"
    if major < NODE_MIN_MAJOR:
        return f"Node {out} is older than {NODE_MIN_MAJOR}: the AI SDK peer is skipped"
    return None


def peer_install() -> None:
    """``npm ci`` in bench/peer unless node_modules already holds exactly the lockfile."""
    lock = PEER_DIR / "package-lock.json"
    installed = PEER_DIR / "node_modules" / ".package-lock.json"
    if installed.exists() and installed.stat().st_mtime >= lock.stat().st_mtime:
        return
    h.log("peer: npm ci (bench/peer)")
    res = subprocess.run(
        ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=PEER_DIR,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if res.returncode != 0:
        raise RuntimeError(f"npm ci failed in bench/peer:\n{res.stderr[-3000:]}")


def peer_start(model_url: str, logdir: Path) -> tuple[h.Proc, int]:
    port = free_port()
    proc = h.Proc(
        "peer",
        [
            "node",
            str(PEER_DIR / "server.mjs"),
            "--port",
            str(port),
            "--model-url",
            model_url,
            "--model",
            PEER_MODEL,
        ],
        {**os.environ, "NODE_ENV": "production"},
        logdir,
    )
    wait_port(port, proc.popen, timeout=60)
    return proc, port


# --------------------------------------------------------------------------------------------
# The load client: a lean HTTP/1.1 SSE reader (the same for every door)
# --------------------------------------------------------------------------------------------


@dataclass
class SseRecord:
    chunks: list[tuple[int, bytes]] = field(default_factory=list)  # (arrival ns, body bytes)
    error: str | None = None


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    status_line = await reader.readline()
    parts = status_line.split(b" ", 2)
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    headers: dict[str, str] = {}
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            return status, headers
        k, _, v = line.decode("latin-1").partition(":")
        headers[k.strip().lower()] = v.strip()


async def sse_post(port: int, path: str, body: dict, key: str | None, start: asyncio.Event, timeout: float):
    """POST ``body`` as JSON, read the event stream to its end; arrival times per body chunk."""
    rec = SseRecord()
    try:
        reader, writer = await asyncio.open_connection(HOST, port)
    except OSError as exc:
        rec.error = f"connect: {exc}"
        return rec
    payload = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Type: application/json\r\n"
        f"Accept: text/event-stream\r\nContent-Length: {len(payload)}\r\n"
        + (f"Authorization: Bearer {key}\r\n" if key else "")
        + "Connection: close\r\n\r\n"
    ).encode()
    now = time.time_ns
    try:
        await start.wait()
        async with asyncio.timeout(timeout):
            writer.write(head + payload)
            status, headers = await _read_head(reader)
            if status != 200:
                rec.error = f"HTTP {status}: {(await reader.read(300))!r}"
                return rec
            chunked = "chunked" in headers.get("transfer-encoding", "")
            while True:
                if chunked:
                    size_line = await reader.readline()
                    size = int(size_line.split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        break
                    data = await reader.readexactly(size + 2)
                    rec.chunks.append((now(), data[:-2]))
                else:
                    data = await reader.read(65536)
                    if not data:
                        break
                    rec.chunks.append((now(), data))
    except TimeoutError:
        rec.error = f"timeout after {timeout}s"
    except Exception as exc:  # noqa: BLE001 - one failed stream is counted, not fatal
        rec.error = f"{type(exc).__name__}: {exc}"
    finally:
        writer.close()
    return rec


def sse_stamps(rec: SseRecord) -> tuple[list[float], bool]:
    """Latencies (ms) of every ``/stamp`` token in ``text-delta`` events, and whether the stream
    ended with ``[DONE]`` after a ``finish`` chunk."""
    out: list[float] = []
    buf = b""
    finished = done = False
    for t, data in rec.chunks:
        buf += data
        *events, buf = buf.split(b"\n\n")
        for event in events:
            for line in event.split(b"\n"):
                if not line.startswith(b"data: "):
                    continue
                raw = line[6:]
                if raw == b"[DONE]":
                    done = True
                    continue
                if b'"text-delta"' not in raw:
                    finished = finished or b'"type":"finish"' in raw
                    continue
                for token in json.loads(raw).get("delta", "").split():
                    idx, _, ns = token.partition(":")
                    if idx.isdigit() and ns.isdigit():
                        out.append((t - int(ns)) / 1e6)
    return out, finished and done


def user_message(text: str) -> dict:
    return {"id": uuid.uuid4().hex, "role": "user", "parts": [{"type": "text", "text": text}]}


async def sse_round(
    ports: list[int],
    path: str,
    key: str | None,
    *,
    streams: int,
    timeout: float,
    count: int,
    interval_ms: int,
) -> dict:
    """``streams`` concurrent ``/stamp`` chats (one POST each, stream i to ``ports[i % len]``),
    started together."""
    start = asyncio.Event()
    text = f"/stamp {count} {interval_ms}"
    tasks = [
        asyncio.create_task(
            sse_post(
                ports[i % len(ports)],
                path,
                {"id": str(uuid.uuid4()), "messages": [user_message(text)], "trigger": "submit-message"},
                key,
                start,
                timeout,
            )
        )
        for i in range(streams)
    ]
    await asyncio.sleep(0.2 + streams / 500)
    t0 = time.monotonic()
    start.set()
    recs = await asyncio.gather(*tasks)
    wall = time.monotonic() - t0
    lat: list[float] = []
    errors: list[str] = []
    for rec in recs:
        stamps, complete = sse_stamps(rec)
        lat += stamps
        if rec.error or not complete:
            errors.append(rec.error or "stream ended without finish/[DONE]")
    return _figures(streams, wall, lat, errors, count)


def _figures(streams: int, wall: float, lat: list[float], errors: list[str], count: int) -> dict:
    return {
        "streams": streams,
        "wall_s": round(wall, 2),
        "stamps": len(lat),
        "expected_stamps": streams * count,
        "errors": len(errors),
        "error_samples": sorted(set(errors))[:3],
        "p50_ms": r(pct(lat, 50)),
        "p99_ms": r(pct(lat, 99)),
    }


# --------------------------------------------------------------------------------------------
# Doors and the run
# --------------------------------------------------------------------------------------------


@dataclass
class Door:
    """One thing measured: the peer, or a project server process on one of its doors."""

    name: str
    kind: str  # "peer" | "sse" | "ws"
    procs: list[h.Proc]  # the server processes (several: workers per host), CPU summed
    ports: list[int]
    key: str | None = None
    count: int = COUNT
    interval_ms: int = INTERVAL_MS

    def cpu(self) -> float:
        return sum(h.tree_cpu_seconds(p.pid) for p in self.procs)

    async def run(self, streams: int, timeout: float) -> dict:
        cpu0, client0, t0 = self.cpu(), time.process_time(), time.monotonic()
        if self.kind == "ws":
            res = await stamp_round(
                [f"ws://{HOST}:{port}/ws/chat/" for port in self.ports],
                self.key,
                streams=streams,
                count=self.count,
                interval_ms=self.interval_ms,
                timeout=timeout,
            )
            res = _figures(streams, res["wall_s"], [], [], self.count) | {
                k: res[k] for k in ("stamps", "errors", "error_samples", "p50_ms", "p99_ms")
            }
        else:
            path = "/api/chat" if self.kind == "peer" else "/api/v1/chat/"
            res = await sse_round(
                self.ports,
                path,
                self.key,
                streams=streams,
                timeout=timeout,
                count=self.count,
                interval_ms=self.interval_ms,
            )
        cpu = self.cpu() - cpu0
        res["server_cpu_s"] = round(cpu, 2)
        res["cpu_s_per_1000_deltas"] = round(1000 * cpu / max(1, res["stamps"]), 3)
        res["cpu_ms_per_stream"] = round(1000 * cpu / streams, 2)
        res["server_threads"] = sum(len(os.listdir(f"/proc/{p.pid}/task")) for p in self.procs)
        # The load client shares the machine: its own CPU share tells whether it kept up.
        res["client_cpu_share"] = round((time.process_time() - client0) / (time.monotonic() - t0), 2)
        return res


# daphne on uvloop: Twisted's asyncio reactor on the loop uvloop's policy makes (no daphne flag).
DAPHNE_UVLOOP = (
    "import asyncio, sys, uvloop; asyncio.set_event_loop_policy(uvloop.EventLoopPolicy()); "
    "from daphne.cli import CommandLineInterface; sys.argv[0] = 'daphne'; CommandLineInterface.entrypoint()"
)
SERVER_ARGV = {
    "daphne": lambda port: [h.DAPHNE, "-b", HOST, "-p", str(port), "--proxy-headers"],
    "daphne-uvloop": lambda port: [h.PY, "-c", DAPHNE_UVLOOP, "-b", HOST, "-p", str(port), "--proxy-headers"],
    "uvicorn": lambda port: [
        str(h.VENV / "uvicorn"),
        "--host",
        HOST,
        "--port",
        str(port),
        "--lifespan",
        "off",
        "--no-access-log",
        "--log-level",
        "warning",
        "--proxy-headers",
    ],
    "hypercorn": lambda port: [h.PY, "-m", "hypercorn", "-b", f"{HOST}:{port}", "--log-level", "warning"],
    "granian": lambda port: [
        h.PY,
        "-m",
        "granian",
        "--interface",
        "asgi",
        "--host",
        HOST,
        "--port",
        str(port),
        "--ws",
        "--log-level",
        "warning",
    ],
}
APP = "copilot_project.asgi:application"


def add_server(stack: h.Stack, name: str, server: str, extra_env: dict[str, str]) -> tuple[h.Proc, int]:
    """A project server process on ``stack`` (its DB and model): ``server`` is an ASGI server."""
    port = free_port()
    argv = [*SERVER_ARGV[server](port), APP]
    proc = h.Proc(name, argv, {**stack.env(), **extra_env}, stack.tmp)
    stack.procs.append(proc)
    try:
        wait_port(port, proc.popen, timeout=60)
    except Exception:  # noqa: BLE001 - show the server's own log
        raise RuntimeError(f"{name} did not start:\n{proc.tail()}") from None
    return proc, port


def parse_variant(spec: str) -> tuple[str, str, int, dict[str, str]]:
    """``NAME[@SERVER][*WORKERS][=ENV=VALUE,ENV=VALUE]`` → (name, server, workers, env)."""
    name, _, rest = spec.partition("=")
    name, _, workers = name.partition("*")
    name, _, server = name.partition("@")
    env = dict(item.split("=", 1) for item in rest.split(",") if "=" in item)
    return name, server or "daphne", int(workers or 1), env


def summary(runs: list[dict]) -> dict:
    """Median over the rounds of each figure (and the per-round values)."""
    out: dict = {"rounds": runs}
    for k in ("p50_ms", "p99_ms", "cpu_s_per_1000_deltas"):
        vals = [x[k] for x in runs if x.get(k) is not None]
        out[k] = r(statistics.median(vals), 3) if vals else None
        out[f"{k}_all"] = vals
    out["errors"] = sum(x["errors"] for x in runs)
    return out


def ratios(res: dict, door: str, peer: str = "peer") -> dict:
    a, b = res.get(door), res.get(peer)
    if not a or not b:
        return {}
    return {
        k: (round(a[k] / b[k], 2) if a.get(k) and b.get(k) else None)
        for k in ("p50_ms", "p99_ms", "cpu_s_per_1000_deltas")
    }


async def run(
    stack: h.Stack,
    *,
    levels: tuple[int, ...] = (25, 100),
    rounds: int = 3,
    doors: tuple[str, ...] = ("peer", "sse", "ws"),
    servers: tuple[str, ...] = ("daphne",),
    variants: tuple[str, ...] = (),
    timeout: float = 90.0,
    profile: bool = False,
    count: int = COUNT,
    interval_ms: int = INTERVAL_MS,
) -> dict:
    out: dict = {
        "count": count,
        "interval_ms": interval_ms,
        "rounds": rounds,
        "loadavg_start": os.getloadavg(),
        "levels": {},
    }
    skip = node_missing() if "peer" in doors else None
    if skip:
        h.log(skip)
        out["peer_skipped"] = skip
    door_list: list[Door] = []
    if "peer" in doors and not skip:
        peer_install()
        proc, port = peer_start(stack.model_url, stack.tmp)
        stack.procs.append(proc)
        door_list.append(Door("peer", "peer", [proc], [port], None, count, interval_ms))
    project = [(s, s, 1, {}) for s in servers] + [parse_variant(v) for v in variants]
    for name, server, workers, env in project:
        started = [add_server(stack, f"{name}{i}", server, env) for i in range(workers)]
        procs, ports = [p for p, _ in started], [port for _, port in started]
        for kind in ("sse", "ws"):
            if kind in doors:
                door_list.append(Door(f"{kind}:{name}", kind, procs, ports, stack.key, count, interval_ms))
    # warm-up: imports, first connections, the model's first requests
    for door in door_list:
        await door.run(2, timeout)
    for n in levels:
        per_door: dict[str, list[dict]] = {d.name: [] for d in door_list}
        for i in range(rounds):
            order = door_list[i % len(door_list) :] + door_list[: i % len(door_list)]
            for door in order:
                res = await door.run(n, timeout)
                per_door[door.name].append(res)
                h.log(
                    f"peer bench {n} streams, round {i + 1}, {door.name}: p50 {res['p50_ms']} / "
                    f"p99 {res['p99_ms']} ms, {res['cpu_s_per_1000_deltas']} CPU-s/1k deltas, "
                    f"{res['errors']} err, {res['server_threads']} threads, "
                    f"client CPU {res['client_cpu_share']}"
                )
                await asyncio.sleep(0.5)  # let the finished turns' end writes settle
        level = {name: summary(runs) for name, runs in per_door.items()}
        level["ratios"] = {name: ratios(level, name) for name in per_door if name != "peer"}
        out["levels"][str(n)] = level
    out["loadavg_end"] = os.getloadavg()
    if profile and levels:
        out["profiles"] = {d.name: await profile_door(d, max(levels), timeout) for d in door_list}
    return out


async def profile_door(door: Door, streams: int, timeout: float) -> dict:
    """A separate, profiled repeat (py-spy takes CPU from its target: never the measured run)."""
    if door.kind == "peer" or not h.PYSPY:
        return {}
    prof = h.RESULTS / f"peer{streams}_{door.name.replace(':', '_')}_pyspy.txt"
    spy = h.profile(door.procs[0].pid, timeout + 30, prof, rate=250)
    await asyncio.sleep(1)  # py-spy attaches
    await door.run(streams, timeout)
    h.profile_stop(spy)
    return {
        "file": str(prof.relative_to(h.ROOT)),
        "top_self": h.top_frames(prof, 15),
        "breakdown": h.breakdown(prof),
    }


def rows(res: dict) -> list[tuple[str, str, str, str, str]]:
    """Rows for ``make bench``'s table: each project door against the peer, per level."""
    out = []
    if res.get("peer_skipped"):
        out.append(("10 AI SDK peer", "skipped", res["peer_skipped"][:70], "", "—"))
    for n, level in res.get("levels", {}).items():
        peer = level.get("peer")
        for name, x in level.items():
            if name in ("peer", "ratios"):
                continue
            rt = level["ratios"].get(name, {})
            met = (
                None if not peer else all(v is not None and v <= 1 for v in rt.values()) and x["errors"] == 0
            )
            kind, _, server = name.partition(":")
            out.append(
                (
                    f"10 vs AI SDK {n} streams {kind.upper()} ({server})",
                    f"p50 {x['p50_ms']} / p99 {x['p99_ms']} ms, {x['cpu_s_per_1000_deltas']} CPU-s/1k, "
                    f"{x['errors']} err",
                    f"AI SDK p50 {peer['p50_ms']} / p99 {peer['p99_ms']} ms, "
                    f"{peer['cpu_s_per_1000_deltas']} CPU-s/1k"
                    if peer
                    else "(no peer)",
                    f"{rt.get('p50_ms')}x / {rt.get('p99_ms')}x / CPU {rt.get('cpu_s_per_1000_deltas')}x (≤1)"
                    if rt
                    else "",
                    "—" if met is None else ("yes" if met else "NO"),
                )
            )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--levels", default="25,100")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--doors", default="peer,sse,ws")
    ap.add_argument("--servers", default="daphne", help="comma list of daphne,uvicorn,hypercorn,granian")
    ap.add_argument(
        "--variant", action="append", default=[], help="NAME[@SERVER][*WORKERS][=ENV=VALUE[,ENV=VALUE]]"
    )
    ap.add_argument("--timeout", type=float, default=90.0)
    ap.add_argument("--count", type=int, default=COUNT, help="deltas per stream (/stamp COUNT MS)")
    ap.add_argument("--interval", type=int, default=INTERVAL_MS, help="ms between deltas")
    ap.add_argument("--profile", action="store_true", help="py-spy each project door at the top level")
    args = ap.parse_args()
    with h.Stack(backend="api", daphnes=0) as stack:
        res = asyncio.run(
            run(
                stack,
                levels=tuple(int(x) for x in args.levels.split(",")),
                rounds=args.rounds,
                doors=tuple(args.doors.split(",")),
                servers=tuple(s for s in args.servers.split(",") if s),
                variants=tuple(args.variant),
                timeout=args.timeout,
                profile=args.profile,
                count=args.count,
                interval_ms=args.interval,
            )
        )
    h.save("peer", res)
    for row in rows(res):
        print(" | ".join(row))
    print("BENCH_JSON=" + json.dumps(res, default=str))


if __name__ == "__main__":
    main()

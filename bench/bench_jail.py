"""Benchmark 8 — the jail's cost (agents/jail.py), in one process (DEBUG=true, ``django.setup()``),
against a baseline taken in the same run with ``AGENT_JAIL=off`` (allowed under DEBUG only).

1. Tool-call latency: ``agents.tools.run_tool(workspace, "Bash", {"command": ...})`` for ``echo hi``
   and ``/usr/bin/python3 -c 'print(1)'``, jailed (``AGENT_JAIL=bwrap``: a fresh bwrap jail per call) and
   plain (a bare subprocess), interleaved call by call (the order flips every round) after a
   warm-up: p50/p99 of each and the added p50/p99 (jailed − plain).
   Target (the jail issue): the jail adds ≤ 20 ms p50 per tool call.
2. Memory of a kept CLI client: one ``SdkBackend().stream`` turn (``/tool bash echo hi``, the
   in-process scripted model) with ``AGENT_SDK_IDLE_SECONDS`` > 0, so the Claude Code CLI is
   parked; then the summed VmRSS (and Pss, from smaps_rollup: a shared page split among its users) of the
   kept CLI's whole process tree — with the jail: the outer bwrap (the pid ``kept_clients()``
   gives), bwrap's init, socat and the CLI; without: the CLI alone. Each mode's client is closed
   before the other's turn (two live CLIs would share the binary's pages and halve their Pss).

    .venv/bin/python -m bench.bench_jail [--quick] [--calls N] [--skip-sdk]

Prints a table and a last line ``BENCH_JSON={...}`` (read by ``bench/run.py``); also writes
``bench/results/jail.json``. Imports nothing from ``tests/``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

from bench.stats import pct, r

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TARGET_ADDED_P50_MS = 20.0
# python3 by its path: the plain subprocess inherits the server's PATH (here pyenv's shim, a shell
# script that alone costs ~100 ms), the jail's PATH is /usr/local/bin:/usr/bin:/bin.
COMMANDS = {"echo": "echo hi", "python3": "/usr/bin/python3 -c 'print(1)'"}
EXPECTED = {"echo": "hi", "python3": "1"}
MODES = ("bwrap", "off")


def _log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------
# Process trees
# ------------------------------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/children") as fh:
                out.extend(int(c) for c in fh.read().split())
    return out


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    seen: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.append(p)
        todo.extend(_children(p))
    return seen


def _status_kb(pid: int, field: str) -> int:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _pss_kb(pid: int) -> int:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/smaps_rollup") as fh:
        for line in fh:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


def _comm(pid: int) -> str:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/comm") as fh:
        return fh.read().strip()
    return "?"


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for its parent's wait() is not)."""
    with contextlib.suppress(OSError), open(f"/proc/{pid}/stat") as fh:
        return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    return False


async def _gone(pids: list[int], timeout: float = 10.0) -> list[int]:
    """Wait up to ``timeout`` for ``pids`` to exit; the ones still running."""
    deadline = time.monotonic() + timeout
    while True:
        left = [p for p in pids if _alive(p)]
        if not left or time.monotonic() > deadline:
            return left
        await asyncio.sleep(0.05)


def tree_memory(pid: int) -> dict:
    procs = []
    for p in tree(pid):
        procs.append({"pid": p, "comm": _comm(p), "rss_kb": _status_kb(p, "VmRSS"), "pss_kb": _pss_kb(p)})
    return {
        "root_pid": pid,
        "processes": procs,
        "rss_mb": round(sum(x["rss_kb"] for x in procs) / 1024, 1),
        "pss_mb": round(sum(x["pss_kb"] for x in procs) / 1024, 1),
    }


# ------------------------------------------------------------------------------------------------
# 1. Tool-call latency
# ------------------------------------------------------------------------------------------------


async def tool_latency(workspace: Path, calls: int, warmup: int = 5) -> dict:
    from django.conf import settings

    from agents.jail import jail_active, jail_problem
    from agents.tools import run_tool

    times: dict[str, dict[str, list[float]]] = {c: {m: [] for m in MODES} for c in COMMANDS}
    errors: list[str] = []
    saved = settings.AGENT_JAIL

    async def once(mode: str, name: str) -> float:
        settings.AGENT_JAIL = mode
        t0 = time.perf_counter_ns()
        outcome = await run_tool(workspace, "Bash", {"command": COMMANDS[name]})
        ms = (time.perf_counter_ns() - t0) / 1e6
        if outcome.is_error or outcome.output.strip() != EXPECTED[name]:
            errors.append(f"{mode}/{name}: {outcome.output[:200]}")
        return ms

    try:
        settings.AGENT_JAIL = "bwrap"
        problem = jail_problem()
        if problem is not None or not jail_active():
            raise RuntimeError(f"the jail does not work here: {problem}")
        for _ in range(warmup):
            for mode in MODES:
                for name in COMMANDS:
                    await once(mode, name)
        errors.clear()
        for i in range(calls):
            order = MODES if i % 2 == 0 else MODES[::-1]
            for name in COMMANDS:
                for mode in order:
                    times[name][mode].append(await once(mode, name))
    finally:
        settings.AGENT_JAIL = saved

    out: dict = {
        "calls_per_mode": calls,
        "commands": dict(COMMANDS),
        "errors": errors[:10],
        "error_count": len(errors),
    }
    for name in COMMANDS:
        jailed, plain = times[name]["bwrap"], times[name]["off"]
        row = {
            "jailed": {
                "p50_ms": r(pct(jailed, 50)),
                "p99_ms": r(pct(jailed, 99)),
                "mean_ms": r(sum(jailed) / len(jailed)),
            },
            "plain": {
                "p50_ms": r(pct(plain, 50)),
                "p99_ms": r(pct(plain, 99)),
                "mean_ms": r(sum(plain) / len(plain)),
            },
        }
        row["added_p50_ms"] = r(pct(jailed, 50) - pct(plain, 50))
        row["added_p99_ms"] = r(pct(jailed, 99) - pct(plain, 99))
        out[name] = row
    out["max_added_p50_ms"] = max(out[name]["added_p50_ms"] for name in COMMANDS)
    out["target"] = f"added p50 <= {TARGET_ADDED_P50_MS:g} ms per tool call"
    out["met"] = out["max_added_p50_ms"] <= TARGET_ADDED_P50_MS and not errors
    return out


# ------------------------------------------------------------------------------------------------
# 2. A kept CLI client's memory
# ------------------------------------------------------------------------------------------------


async def kept_cli_memory(root: Path, settle_seconds: float = 3.0) -> dict:
    from django.conf import settings

    from agents.backends.sdk import SdkBackend, close_idle_clients, kept_clients
    from agents.turn import TurnInput, TurnResult

    saved = settings.AGENT_JAIL
    out: dict = {"prompt": "/tool bash echo hi", "settle_seconds": settle_seconds}
    try:
        for mode in MODES:
            settings.AGENT_JAIL = mode
            workspace = root / str(uuid.uuid4())
            workspace.mkdir(parents=True)
            inp = TurnInput(
                session_id=workspace.name,
                user_text="/tool bash echo hi",
                workspace=workspace,
                backend="sdk",
                model="claude-sonnet-4-5",
                message_id=f"msg-{uuid.uuid4().hex[:8]}",
            )
            result = TurnResult()
            before = {k["pid"] for k in kept_clients()}
            t0 = time.perf_counter()
            kinds = [chunk["type"] async for chunk in SdkBackend().stream(inp, result)]
            turn_s = time.perf_counter() - t0
            if "tool-output-available" not in kinds:
                raise RuntimeError(f"jail={mode}: the turn ran no tool ({kinds})")
            kept = [k for k in kept_clients() if k["session_id"] == inp.session_id and k["pid"] not in before]
            if not kept or kept[0]["pid"] is None:
                raise RuntimeError(f"jail={mode}: no kept CLI client after the turn")
            await asyncio.sleep(settle_seconds)  # let the CLI finish its post-turn work
            mem = tree_memory(kept[0]["pid"])
            mem["turn_seconds"] = round(turn_s, 2)
            out["jailed" if mode == "bwrap" else "plain"] = mem
            _log(
                f"kept CLI, jail={mode}: RSS {mem['rss_mb']} MB, Pss {mem['pss_mb']} MB: "
                + ", ".join(
                    f"{p['comm']} {p['rss_kb'] // 1024}/{p['pss_kb'] // 1024}" for p in mem["processes"]
                )
            )
            # Closed before the next mode's CLI starts: two live CLIs would share the binary's
            # pages and halve each other's Pss.
            out["closed_clients"] = out.get("closed_clients", 0) + await close_idle_clients()
            mem["left_running"] = await _gone([p["pid"] for p in mem["processes"]])
    finally:
        settings.AGENT_JAIL = saved
        out["closed_clients"] = out.get("closed_clients", 0) + await close_idle_clients()
    out["added_rss_mb"] = round(out["jailed"]["rss_mb"] - out["plain"]["rss_mb"], 1)
    out["added_pss_mb"] = round(out["jailed"]["pss_mb"] - out["plain"]["pss_mb"], 1)
    return out


# ------------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------------


def rows(res: dict) -> list[tuple[str, str, str, str, str]]:
    """(benchmark, measured, baseline, vs target, met) rows, as in bench/run.py's table."""
    out = []
    lat = res.get("tool_latency")
    if lat:
        for name in COMMANDS:
            x = lat[name]
            out.append(
                (
                    f"8 jail Bash `{COMMANDS[name]}`",
                    f"jailed p50 {x['jailed']['p50_ms']} / p99 {x['jailed']['p99_ms']} ms",
                    f"plain p50 {x['plain']['p50_ms']} / p99 {x['plain']['p99_ms']} ms",
                    f"{x['added_p50_ms']:+} / {x['added_p99_ms']:+} ms (p50 ≤+{TARGET_ADDED_P50_MS:g})",
                    "yes" if x["added_p50_ms"] <= TARGET_ADDED_P50_MS and not lat["error_count"] else "NO",
                )
            )
    mem = res.get("kept_cli")
    if mem and "jailed" in mem and "plain" in mem:
        out.append(
            (
                "8 jail kept CLI memory",
                f"jailed RSS {mem['jailed']['rss_mb']} MB (Pss {mem['jailed']['pss_mb']}), "
                f"{len(mem['jailed']['processes'])} procs",
                f"plain RSS {mem['plain']['rss_mb']} MB (Pss {mem['plain']['pss_mb']}), "
                f"{len(mem['plain']['processes'])} procs",
                f"{mem['added_rss_mb']:+} MB RSS / {mem['added_pss_mb']:+} MB Pss",
                "",
            )
        )
    elif mem and "error" in mem:
        out.append(("8 jail kept CLI memory", "error", mem["error"][:60], "", "NO"))
    return out


def main() -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="40 calls per mode and command (default 200)")
    ap.add_argument("--calls", type=int, default=None)
    ap.add_argument("--skip-sdk", action="store_true", help="skip the kept-CLI memory part")
    args = ap.parse_args()
    calls = args.calls or (40 if args.quick else 200)

    tmp = Path(tempfile.mkdtemp(prefix="copilot-bench-jail-"))
    os.environ.update(
        DJANGO_SETTINGS_MODULE="copilot_project.settings",
        DEBUG="true",
        AGENT_JAIL="bwrap",
        DATABASE_URL=f"sqlite:///{tmp / 'db.sqlite3'}",
        VAR_DIR=str(tmp / "var"),
        AGENT_WORKSPACE_ROOT=str(tmp / "ws"),
        AGENT_BACKEND="sdk",
        AGENT_SDK_IDLE_SECONDS="600",
        REDIS_KEY_PREFIX="t_bench_jail",
    )
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    for k in ("REDIS_URL", "ANTHROPIC_BASE_URL", "ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN"):
        os.environ.pop(k, None)
    (tmp / "var").mkdir()
    model = None
    res: dict = {"load_avg_start": os.getloadavg(), "cpus": os.cpu_count(), "uid": os.geteuid()}
    try:
        import django

        django.setup()
        from django.conf import settings

        from agents.sandbox import workspace_for
        from scripted_model.server import ScriptedModelServer

        model = ScriptedModelServer(host="127.0.0.1", port=0).start()
        settings.ANTHROPIC_BASE_URL, settings.ANTHROPIC_API_KEY = model.url, ""

        workspace = workspace_for(str(uuid.uuid4()))
        workspace.mkdir(parents=True, exist_ok=True)
        _log(f"jail: {calls} Bash calls per mode and command, interleaved")
        t0 = time.monotonic()
        res["tool_latency"] = asyncio.run(tool_latency(workspace, calls))
        res["tool_latency"]["seconds"] = round(time.monotonic() - t0, 1)
        if not args.skip_sdk:
            _log("jail: one sdk turn per mode, memory of the kept CLI")
            try:
                res["kept_cli"] = asyncio.run(kept_cli_memory(tmp / "sdk-ws"))
            except Exception as exc:  # noqa: BLE001 - keep the latency figures
                import traceback

                traceback.print_exc()
                res["kept_cli"] = {"error": f"{type(exc).__name__}: {exc}"}
        res["met"] = res["tool_latency"]["met"]
        res["load_avg_end"] = os.getloadavg()
    finally:
        if model is not None:
            model.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    table = rows(res)
    head = ("benchmark", "measured", "baseline (same run)", "vs target", "met")
    widths = [max(len(str(row[i])) for row in [head, *table]) for i in range(5)]
    for row in [head, *table]:
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths)) + " |")
    lat = res["tool_latency"]
    print(
        f"target (jail adds ≤ {TARGET_ADDED_P50_MS:g} ms p50 per tool call): "
        f"{'HOLDS' if lat['met'] else 'MISSED'} (worst added p50 {lat['max_added_p50_ms']} ms, "
        f"{lat['error_count']} failed calls; "
        f"load average {res['load_avg_start'][0]:.1f} → {res['load_avg_end'][0]:.1f} "
        f"on {res['cpus']} CPUs)"
    )
    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / "jail.json").write_text(json.dumps(res, indent=2, default=str))
    return res


if __name__ == "__main__":
    result = main()
    print("BENCH_JSON=" + json.dumps(result, default=str))

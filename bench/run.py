"""``make bench``: run every benchmark (issue 9), write ``bench/results/latest.json`` and print a table.

    .venv/bin/python -m bench.run [--only relay,latency,...] [--quick] [--latency-levels 1,10,25,50,100,500]
                                   [--scale-streams 100,500] [--no-profile]

Stacks (each torn down after use, everything on loopback):
  api     SQLite file + InMemory layer, 1 daphne, AGENT_BACKEND=api  → relay, latency, resume, ttft(api), api
  sdk     same with AGENT_BACKEND=sdk (real Claude Code CLI)         → ttft(sdk)
  scale   PostgreSQL + Redis, 2 daphnes, AGENT_BACKEND=api           → scaleout
  (none)  in-process, temp SQLite                                     → dbwrites
  (none)  in-process, DEBUG=true, jail on vs AGENT_JAIL=off            → jail (tool-call latency,
                                                                         kept-CLI memory)
  (none)  in-process, temp SQLite (+ PostgreSQL with DATABASE_URL)    → search (full-text search
                                                                         latency, issue #19)
  peer    SQLite file + InMemory layer, AGENT_BACKEND=api, the AI SDK   → peer (issue 21: both doors
          Node server (bench/peer, `npm ci` on first use)                 against the AI SDK server)
Every figure comes with its baseline from the same run; see docs/performance.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import time
import traceback

from bench import harness as h

ALL = ("relay", "latency", "scaleout", "dbwrites", "resume", "ttft", "api", "jail", "search", "peer")


def _services_up() -> bool:
    try:
        import psycopg
        import redis

        redis.Redis.from_url(h.REDIS_URL, socket_timeout=2).ping()
        with psycopg.connect(h.PG_URL, connect_timeout=3):
            pass
        return True
    except Exception:  # noqa: BLE001
        return False


def run_all(args: argparse.Namespace) -> dict:
    only = set(args.only.split(",")) if args.only else set(ALL)
    levels = tuple(int(x) for x in args.latency_levels.split(","))
    results: dict = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "loadavg_start": os.getloadavg(),
        },
        "args": vars(args),
        "benchmarks": {},
    }
    bench = results["benchmarks"]

    def guard(name: str, fn):
        t0 = time.monotonic()
        try:
            bench[name] = fn()
        except Exception as exc:  # noqa: BLE001 - one failing benchmark must not hide the others
            traceback.print_exc()
            bench[name] = {"error": f"{type(exc).__name__}: {exc}"}
        bench[name]["bench_seconds"] = round(time.monotonic() - t0, 1)
        h.save(name, bench[name])

    if only & {"relay", "latency", "resume", "ttft", "api"}:
        with h.Stack(backend="api") as stack:
            if "relay" in only:
                guard(
                    "relay",
                    lambda: asyncio.run(
                        __import__("bench.bench_relay", fromlist=["run"]).run(
                            stack, n=args.relay_n, profile=not args.no_profile
                        )
                    ),
                )
            if "ttft" in only:
                guard(
                    "ttft_api",
                    lambda: asyncio.run(__import__("bench.bench_ttft", fromlist=["run"]).run(stack)),
                )
            if "resume" in only:
                guard(
                    "resume",
                    lambda: asyncio.run(
                        __import__("bench.bench_resume", fromlist=["run"]).run(
                            stack, chunks=args.resume_chunks
                        )
                    ),
                )
            if "api" in only:
                guard(
                    "api",
                    lambda: __import__("bench.bench_api", fromlist=["run"]).run(stack, reps=args.api_reps),
                )
            if "latency" in only:
                guard(
                    "latency",
                    lambda: asyncio.run(
                        __import__("bench.bench_latency", fromlist=["run"]).run(
                            stack,
                            levels=levels,
                            profile_level=None if args.no_profile else args.profile_level,
                            level_timeout=args.level_timeout,
                        )
                    ),
                )
    if "ttft" in only and not args.skip_sdk:
        with h.Stack(backend="sdk") as stack:
            guard(
                "ttft_sdk",
                lambda: asyncio.run(__import__("bench.bench_ttft", fromlist=["run"]).run(stack, chats=3)),
            )
    if "dbwrites" in only:
        guard("dbwrites", lambda: _subprocess_bench("bench_db_writes"))
    if "jail" in only:
        guard(
            "jail",
            lambda: _subprocess_bench(
                "bench_jail",
                *(["--quick"] if args.quick else []),
                *(["--skip-sdk"] if args.skip_sdk else []),
                timeout=600,
            ),
        )
    if "search" in only:
        guard(
            "search",
            lambda: _subprocess_bench("bench_search", *(["--quick"] if args.quick else []), timeout=900),
        )
    if "peer" in only:
        with h.Stack(backend="api", daphnes=0) as stack:
            guard(
                "peer",
                lambda: asyncio.run(
                    __import__("bench.bench_peer", fromlist=["run"]).run(
                        stack,
                        levels=tuple(int(x) for x in args.peer_levels.split(",")),
                        rounds=args.peer_rounds,
                        timeout=args.level_timeout,
                    )
                ),
            )
    if "scaleout" in only:
        if _services_up():
            with h.Stack(backend="api", postgres=True, redis=True, daphnes=2) as stack:

                def scaleout() -> dict:
                    mod = __import__("bench.bench_scaleout", fromlist=["run"])
                    runs = {}
                    for n in (int(x) for x in str(args.scale_streams).split(",")):
                        runs[str(n)] = asyncio.run(
                            mod.run(
                                stack,
                                streams=n,
                                single_p99=_single_p99(bench, n),
                                level_timeout=args.level_timeout,
                            )
                        )
                        stack.restart_daphnes()  # what outlived its clients must not skew the next count
                    return {"runs": runs}

                guard("scaleout", scaleout)
        else:
            bench["scaleout"] = {
                "error": "PostgreSQL/Redis not reachable on 127.0.0.1 (BENCH_PG_URL/BENCH_REDIS_URL)"
            }
    results["machine"]["loadavg_end"] = os.getloadavg()
    results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return results


def _subprocess_bench(module: str, *argv: str, timeout: float = 300) -> dict:
    """An in-process benchmark that configures Django itself, run as its own process (its last
    ``BENCH_JSON=`` line holds the figures)."""
    proc = subprocess.run(
        [h.PY, "-m", f"bench.{module}", *argv], cwd=h.ROOT, capture_output=True, text=True, timeout=timeout
    )
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH_JSON=")), None)
    if line is None:
        raise RuntimeError(f"{module} failed:\n{proc.stderr[-3000:]}")
    return json.loads(line[len("BENCH_JSON=") :])


def _single_p99(bench: dict, streams: int) -> float | None:
    level = bench.get("latency", {}).get("levels", {}).get(str(streams))
    return level["real"]["p99_ms"] if level else None


# --------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------


def _yn(v) -> str:
    return "—" if v is None else ("yes" if v else "NO")


def table(results: dict) -> list[tuple[str, str, str, str, str]]:
    b = results["benchmarks"]
    rows: list[tuple[str, str, str, str, str]] = []

    def err(name: str) -> bool:
        if "error" in b.get(name, {}):
            rows.append((name, "error", b[name]["error"][:60], "", "NO"))
            return True
        return name not in b

    if not err("relay"):
        x = b["relay"]
        rows.append(
            (
                "1 relay bytes/s",
                f"{x['real_ws_bytes_per_s']:,} B/s",
                f"bare {x['bare_ws_bytes_per_s']:,} B/s",
                f"{x['ratio_bytes_per_s']}x (≥0.5x)",
                _yn(x["met"]),
            )
        )
        rows.append(
            (
                "1 relay text bytes/s",
                f"{x['real_text_bytes_per_s']:,} B/s",
                f"bare, 1 frame/delta {x['bare_per_delta_text_bytes_per_s']:,} B/s",
                f"{x['ratio_text_bytes_vs_per_delta_replay']}x (≥0.5x)",
                _yn(x["ratio_text_bytes_vs_per_delta_replay"] >= 0.5),
            )
        )
        rows.append(
            (
                "1 relay deltas/s",
                f"{x['model_deltas_per_s']:,}/s ({x['delta_frames_per_s']} frames/s)",
                f"bare relay {x['bare_relay']['model_deltas'] / x['bare_relay']['seconds']:,.0f}/s",
                f"{x['ratio_text_bytes_vs_bare_relay']}x",
                "",
            )
        )
        rows.append(
            (
                "1 server CPU/1k deltas",
                f"{x['server_cpu_s_per_1000_deltas']} s",
                f"bare relay {x['bare_relay_cpu_s_per_1000_deltas']} s",
                f"{x['server_cpu_s_per_1000_deltas'] / max(1e-9, x['bare_relay_cpu_s_per_1000_deltas']):.1f}"
                "x",
                "",
            )
        )
    if not err("latency"):
        for n, lv in b["latency"]["levels"].items():
            real, bare = lv["real"], lv["bare"]
            target = {"100": "p50≤+2, p99≤+25", "500": "0 err, p99≤+100"}.get(n, "")
            met = {"100": b["latency"].get("met_100"), "500": b["latency"].get("met_500")}.get(n)
            rows.append(
                (
                    f"2 latency {n} streams",
                    f"p50 {real['p50_ms']} / p99 {real['p99_ms']} ms, {real['errors']} err, "
                    f"{real.get('server_cpu_ms_per_delta')} ms CPU/delta",
                    f"bare p50 {bare['p50_ms']} / p99 {bare['p99_ms']} ms",
                    f"+{lv['p50_above_baseline_ms']} / +{lv['p99_above_baseline_ms']} ms {target}",
                    _yn(met),
                )
            )
        if "max_streams_within_target" in b["latency"]:
            rows.append(
                (
                    "2 latency capacity",
                    f"target holds up to {b['latency']['max_streams_within_target']} streams",
                    "levels " + ",".join(b["latency"]["levels"]),
                    "",
                    "",
                )
            )
    if not err("scaleout"):
        for n, x in sorted(b["scaleout"].get("runs", {}).items(), key=lambda kv: int(kv[0])):
            r = x["real"]
            rows.append(
                (
                    f"3 scale-out {n} streams",
                    f"live p99 {r['p99_live_ms']} ms (all {r['p99_ms']}), "
                    f"lost {r['lost_chunks']}, dup {r['duplicated_chunks']}, {r['errors']} err",
                    f"1 process p99 {x.get('single_process_p99_ms')} ms",
                    f"{x.get('p99_live_ratio')}x (≤2x, 0 lost/dup)",
                    _yn(x.get("met")),
                )
            )
    if not err("dbwrites"):
        s = b["dbwrites"]["summary"]
        rows.append(
            (
                "4 DB writes text turn",
                f"{s['text_turn_writes']} (first turn "
                f"{s['text_first_turn_writes_with_chat_insert']} incl. the chat's INSERT)",
                f"1-delta turn {s['baseline_turn_writes']}",
                "≤6",
                _yn(s["met_text"]),
            )
        )
        rows.append(
            (
                "4 DB writes per tool call",
                f"{s['tool_writes_per_call']}",
                f"+{s['tool_writes_per_call_above_baseline']} above baseline",
                "≤3",
                _yn(s["met_tools"]),
            )
        )
    if not err("resume"):
        x = b["resume"]
        rows.append(
            (
                "5 resume 5k chunks",
                f"{x['catch_up_ms']} ms ({x['replayed_chunks']} chunks)",
                f"bare push {x['bare_push_ms']} ms",
                f"{x['ratio_vs_bare']}x (≤200 ms)",
                _yn(x["met"]),
            )
        )
    for backend in ("api", "sdk"):
        name = f"ttft_{backend}"
        if not err(name):
            x = b[name]
            rows.append(
                (
                    f"6 TTFT {backend}",
                    f"first +{x['first_turn_overhead_ms']} / follow-up +{x['followup_overhead_ms']} ms",
                    f"model {x['model_first_delta_ms']} ms, bare relay {x['bare_relay_ttft_ms']} ms",
                    x["target"].replace("followup_overhead_ms", "follow-up"),
                    _yn(x["met"]),
                )
            )
    if not err("api"):
        x = b["api"]
        rows.append(
            (
                "7 GET messages (10k)",
                f"p50 {x['messages_10k']['p50_ms']} / p99 {x['messages_10k']['p99_ms']} ms",
                f"100-msg p50 {x['baseline_messages_100']['p50_ms']} ms, "
                f"404 {x['baseline_auth_404']['p50_ms']} ms",
                f"{x['ratio_messages_p50']}x",
                "",
            )
        )
        rows.append(
            (
                "7 GET sessions (1k)",
                f"p50 {x['sessions_1k_first_page']['p50_ms']} "
                f"/ p99 {x['sessions_1k_first_page']['p99_ms']} ms",
                f"10-session p50 {x['baseline_sessions_10']['p50_ms']} ms",
                f"{x['ratio_sessions_p50']}x",
                "",
            )
        )
    if not err("jail"):
        from bench.bench_jail import rows as jail_rows

        rows += jail_rows(b["jail"])
    if not err("search"):
        from bench.bench_search import rows as search_rows

        rows += search_rows(b["search"])
    if not err("peer"):
        from bench.bench_peer import rows as peer_rows

        rows += peer_rows(b["peer"])
    return rows


def print_table(rows) -> str:
    head = ("benchmark", "measured", "baseline (same run)", "ratio / vs target", "met")
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(5)]
    lines = [
        "| " + " | ".join(str(c).ljust(w) for c, w in zip(head, widths)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    lines += ["| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |" for r in rows]
    text = "\n".join(lines)
    print(text)
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="", help=f"comma list of {','.join(ALL)}")
    ap.add_argument("--quick", action="store_true", help="smaller counts (smoke run)")
    ap.add_argument("--latency-levels", default="1,10,25,50,100,500")
    ap.add_argument("--scale-streams", default="100,500", help="comma list of stream counts")
    ap.add_argument("--level-timeout", type=float, default=60.0, help="seconds a latency level may take")
    ap.add_argument("--relay-n", type=int, default=20000)
    ap.add_argument("--resume-chunks", type=int, default=5000)
    ap.add_argument("--api-reps", type=int, default=200)
    ap.add_argument("--peer-levels", default="25,100", help="AI SDK peer: concurrent streams (comma list)")
    ap.add_argument("--peer-rounds", type=int, default=3, help="AI SDK peer: rounds per level (medians)")
    ap.add_argument("--profile-level", type=int, default=100)
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--skip-sdk", action="store_true", help="skip the sdk backend (Claude Code CLI)")
    args = ap.parse_args()
    if args.quick:
        args.latency_levels, args.scale_streams, args.relay_n = "1,20", "20", 5000
        args.resume_chunks, args.api_reps, args.level_timeout = 1000, 50, 30.0
        args.peer_levels, args.peer_rounds = "25", 1
    t0 = time.monotonic()
    results = run_all(args)
    results["seconds"] = round(time.monotonic() - t0, 1)
    results["table"] = print_table(table(results))
    path = h.save("latest", results)
    print(f"\n{len(results['benchmarks'])} benchmarks in {results['seconds']} s → {path.relative_to(h.ROOT)}")
    sys.exit(0)


if __name__ == "__main__":
    main()

"""Benchmark 3 — scale-out: ``streams`` concurrent ``/stamp`` turns with ``REDIS_URL`` + PostgreSQL and
two daphne processes; client i starts on daphne i % 2 and, mid-turn, drops its socket and resumes
the turn once through the other process (``resume`` with ``lastSequence``). Counted: lost and
duplicated chunks (stamp indexes and sequences; must be 0), errors, and p99 latency against the
single-process figure at the same stream count (benchmark 2, same run) and the bare relay.

Targets: zero lost or duplicated chunks, p99 ≤ 2× the single-process figure. The p99 judged is
that of the stamps relayed live (on the first socket, or sent by the model after the client
resumed on the second); stamps produced while the client was switching wait in the log for the
reconnect by design, so they are reported (``p99_ms``) but not judged.
``streams`` is a flag (default 500); on a loaded 2-core machine use a smaller count and say so.
"""

from __future__ import annotations

import argparse
import asyncio

from bench import harness as h
from bench.bench_latency import stamp_round


async def run(
    stack: h.Stack,
    *,
    streams: int = 500,
    count: int = 200,
    interval_ms: int = 20,
    single_p99: float | None = None,
    level_timeout: float = 90.0,
) -> dict:
    h.log(
        f"scale-out: {streams} streams over {len(stack.ports)} daphnes "
        "(PostgreSQL + Redis), each resumed once"
    )
    urls = [stack.ws_url(i) for i in range(len(stack.ports))]
    other = urls[1:] + urls[:1]
    await stamp_round(urls, stack.key, streams=2, count=5, interval_ms=5, resume_urls=other)  # warm-up
    cpu0 = [p.cpu() for p in stack.daphne]
    real = await stamp_round(
        urls,
        stack.key,
        streams=streams,
        count=count,
        interval_ms=interval_ms,
        timeout=level_timeout,
        resume_urls=other,
    )
    real["server_cpu_s"] = [round(p.cpu() - c, 2) for p, c in zip(stack.daphne, cpu0)]
    real["server_log_errors"] = {p.name: p.error_summary() for p in stack.daphne}
    out = {
        "streams": streams,
        "count": count,
        "interval_ms": interval_ms,
        "real": real,
        "single_process_p99_ms": single_p99,
    }
    if single_p99 is None:
        # No benchmark-2 figure at this count in this run: measure one daphne of this stack alone.
        h.log(f"scale-out: single-process reference at {streams} streams (no resume)")
        ref = await stamp_round(
            urls[:1], stack.key, streams=streams, count=count, interval_ms=interval_ms, timeout=level_timeout
        )
        out["single_process_ref"] = ref
        single_p99 = out["single_process_p99_ms"] = ref["p99_ms"]
    out["p99_ratio"] = round(real["p99_ms"] / single_p99, 2) if real["p99_ms"] and single_p99 else None
    out["p99_live_ratio"] = (
        round(real["p99_live_ms"] / single_p99, 2) if real["p99_live_ms"] and single_p99 else None
    )
    out["met"] = bool(
        real["errors"] == 0
        and real["lost_chunks"] == 0
        and real["duplicated_chunks"] == 0
        and real["sequence_gaps"] == 0
        and real["sequence_duplicates"] == 0
        and out["p99_live_ratio"] is not None
        and out["p99_live_ratio"] <= 2
    )
    h.log(
        f"scale-out: lost {real['lost_chunks']}, dup {real['duplicated_chunks']}, errors {real['errors']}, "
        f"live p99 {real['p99_live_ms']} ms (x{out['p99_live_ratio']} of single process), "
        f"all p99 {real['p99_ms']} ms"
    )
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--streams", type=int, default=500)
    ap.add_argument("--level-timeout", type=float, default=90.0)
    args = ap.parse_args()
    with h.Stack(backend="api", postgres=True, redis=True, daphnes=2) as stack:
        res = asyncio.run(run(stack, streams=args.streams, level_timeout=args.level_timeout))
    h.save("scaleout", res)
    print(res)


if __name__ == "__main__":
    main()

"""Benchmark 6 — time to first token: websocket ``send`` → first ``text-delta`` at the client, for a
chat's first turn and for a follow-up turn, per backend. The model's own share is measured in
the same run and subtracted: a direct streaming request to the same scripted model
(``/stamp 1 0``), request written → first ``text_delta`` event read. The bare relay's TTFT
(``bench/bare_server.py --mode relay``) is reported for context.

Targets: overhead ≤ 10 ms for ``api`` (follow-up), ≤ 150 ms for an ``sdk`` follow-up turn.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid

from bench import harness as h
from bench.bare_server import model_stream
from bench.stats import pct, r

PROMPT = "/stamp 1 0"


async def model_first_delta_ms(model_url: str, reps: int = 10) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter_ns()
        async for _text in model_stream(model_url, PROMPT):
            times.append((time.perf_counter_ns() - t0) / 1e6)
            break
    return statistics.median(times)


async def _first_delta_ms(ws, chat_id: str) -> tuple[float | None, str | None]:
    rec = await h.ws_turn(ws, chat_id=chat_id, text=PROMPT, timeout=120)
    for t, _seq, chunk in h.chunks_of(rec):
        if chunk.get("type") == "text-delta":
            return (t - rec.t_send) / 1e6, rec.error
    return None, rec.error or "no text-delta"


async def _rounds(stack: h.Stack, chats: int) -> tuple[list[float], list[float], list[str]]:
    """``chats`` new chats, each a first turn and two follow-ups, on one socket (after a warm-up)."""
    first: list[float] = []
    follow: list[float] = []
    errors: list[str] = []
    ws = await h.ws_connect(stack.ws_url(), stack.key)
    try:
        await _first_delta_ms(ws, str(uuid.uuid4()))  # warm-up (imports, first connection)
        for _ in range(chats):
            chat_id = str(uuid.uuid4())
            for i in range(3):
                ms, err = await _first_delta_ms(ws, chat_id)
                if ms is not None:
                    (follow if i else first).append(ms)
                if err:
                    errors.append(err)
    finally:
        await ws.close()
    return first, follow, errors


async def run(stack: h.Stack, *, chats: int = 5, profile: bool = True) -> dict:
    h.log(f"ttft: backend {stack.backend}, {chats} chats × (first + 2 follow-ups)")
    model_ms = await model_first_delta_ms(stack.model_url)
    first, follow, errors = await _rounds(stack, chats)
    prof = h.RESULTS / f"ttft_{stack.backend}_daphne_pyspy.txt" if profile else None
    if prof:
        # A separate, profiled repeat: py-spy takes CPU from the target, so it is not the measured run.
        spy = h.profile(stack.daphne[0].pid, 120, prof, rate=200)
        await asyncio.sleep(1.0)
        await _rounds(stack, chats)
        h.profile_stop(spy)
    rss = h.tree_rss_mb(stack.daphne[0].pid)
    # the bare relay's own TTFT, for context
    proc, port = h.sync_bare_server("relay", logdir=stack.tmp, model_url=stack.model_url)
    try:
        bws = await h.ws_connect(f"ws://127.0.0.1:{port}/")
        bare = []
        try:
            for _ in range(6):
                ms, _err = await _first_delta_ms(bws, "x")
                if ms is not None:
                    bare.append(ms)
        finally:
            await bws.close()
    finally:
        proc.stop()
    med = statistics.median
    out = {
        "backend": stack.backend,
        "model_first_delta_ms": round(model_ms, 2),
        "bare_relay_ttft_ms": round(med(bare[1:] or bare), 2) if bare else None,
        "first_turn_ttft_ms": round(med(first), 1) if first else None,
        "followup_ttft_ms": round(med(follow), 1) if follow else None,
        "first_turn_overhead_ms": round(med(first) - model_ms, 1) if first else None,
        "followup_overhead_ms": round(med(follow) - model_ms, 1) if follow else None,
        "followup_p90_ms": r(pct(follow, 90), 1),
        "samples": {"first": [round(x, 1) for x in first], "followup": [round(x, 1) for x in follow]},
        "errors": errors[:3],
        "server_tree_rss_mb_after": round(rss, 1),
    }
    if prof:
        out["profile"] = {
            "file": str(prof.relative_to(h.ROOT)),
            "top_self": h.top_frames(prof, 12),
            "breakdown": h.breakdown(prof),
        }
    limit = 10 if stack.backend == "api" else 150
    out["target"] = f"followup_overhead_ms <= {limit}"
    out["met"] = (
        out["followup_overhead_ms"] is not None and out["followup_overhead_ms"] <= limit and not errors
    )
    h.log(
        f"ttft {stack.backend}: first {out['first_turn_overhead_ms']} ms, "
        f"follow-up {out['followup_overhead_ms']} ms over the model"
    )
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", default="api", choices=["api", "sdk"])
    ap.add_argument("--chats", type=int, default=5)
    args = ap.parse_args()
    with h.Stack(backend=args.backend) as stack:
        res = asyncio.run(run(stack, chats=args.chats))
    h.save(f"ttft_{args.backend}", res)
    print(res)


if __name__ == "__main__":
    main()

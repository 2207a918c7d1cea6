"""Benchmark 5 — resume: while a long turn runs (``/slow 4 N``: one chunk per delta, the 4 ms
spacing is above the 3 ms coalescing window), a second client connects and resumes it from
sequence 0 once ≥ ``chunks`` chunks exist. Measured: resume frame sent → the resumer has caught
up to live (it holds a sequence ≥ the live client's newest). Baseline in the same run: the bare
websockets server pushing those same replayed frames (``--mode replay``).

Target: ≤ 200 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
import uuid

from bench import harness as h


async def run(
    stack: h.Stack, *, chunks: int = 5000, spacing_ms: int = 4, timeout: float = 90.0, profile: bool = True
) -> dict:
    h.log(f"resume: live turn to {chunks} chunks, then resume from 0")
    chat_id = str(uuid.uuid4())
    live = await h.ws_connect(stack.ws_url(), stack.key)
    resumer = await h.ws_connect(stack.ws_url(), stack.key)
    state = {"live_seq": -1, "done": False}
    reached = asyncio.Event()
    near = asyncio.Event()
    n = int(chunks * 1.6) + 100  # deltas bunched under load get coalesced: head-room

    async def live_reader() -> h.TurnRecord:
        rec = h.TurnRecord(t_send=time.time_ns())
        await live.send(h.send_frame(request_id="live", chat_id=chat_id, text=f"/slow {spacing_ms} {n}"))
        async with asyncio.timeout(timeout):
            while True:
                raw = await live.recv()
                seq = h.frame_sequence(raw)
                if seq >= 0:
                    state["live_seq"] = seq
                    if seq >= chunks - 250:
                        near.set()
                    if seq >= chunks:
                        reached.set()
                elif h._is_terminal(raw):
                    state["done"] = True
                    reached.set()
                    return rec

    live_task = asyncio.create_task(live_reader())
    out: dict = {"chunks_target": chunks, "spacing_ms": spacing_ms}
    try:
        async with asyncio.timeout(timeout):
            await near.wait()
        async with asyncio.timeout(timeout):
            await reached.wait()
        if state["done"]:
            raise RuntimeError(f"the turn ended before {chunks} chunks (got {state['live_seq'] + 1})")
        t0 = time.perf_counter_ns()
        await resumer.send(h.resume_frame(request_id="resume", chat_id=chat_id))
        frames: list[str] = []
        caught_up_ns = None
        first_ns = None
        live_at_catch = None
        async with asyncio.timeout(timeout):
            while True:
                raw = await resumer.recv()
                frames.append(raw)
                seq = h.frame_sequence(raw)
                if seq >= 0 and first_ns is None:
                    first_ns = time.perf_counter_ns()
                if seq >= 0 and seq >= state["live_seq"]:
                    caught_up_ns = time.perf_counter_ns()
                    live_at_catch = state["live_seq"]
                    break
                if h._is_terminal(raw):
                    break
        if profile:
            # A second, profiled resume of the same turn (py-spy takes CPU from the target, so the
            # measured resume above ran without it).
            prof = h.RESULTS / "resume_daphne_pyspy.txt"
            spy = h.profile(stack.daphne[0].pid, 30, prof, rate=1000)
            await asyncio.sleep(0.5)  # py-spy attach
            again = await h.ws_connect(stack.ws_url(), stack.key)
            try:
                await again.send(h.resume_frame(request_id="resume2", chat_id=chat_id))
                async with asyncio.timeout(timeout):
                    while True:
                        raw = await again.recv()
                        if h.frame_sequence(raw) >= state["live_seq"] or h._is_terminal(raw):
                            break
            finally:
                await again.close()
                h.profile_stop(spy)
            out["profile"] = {
                "file": str(prof.relative_to(h.ROOT)),
                "note": "covers ~1 s of live streaming too",
                "top_self": h.top_frames(prof, 10),
                "breakdown": h.breakdown(prof),
            }
        if caught_up_ns is None:
            raise RuntimeError("the resumer never caught up")
        out.update(
            replayed_chunks=len(frames) - 1,
            live_sequence_at_catch_up=live_at_catch,
            catch_up_ms=round((caught_up_ns - t0) / 1e6, 1),
            first_chunk_ms=round((first_ns - t0) / 1e6, 1) if first_ns else None,
        )
        # abort the turn: no need to wait for its end
        await live.send('{"type":"abort","requestId":"live"}')
        with contextlib.suppress(Exception):
            async with asyncio.timeout(20):
                await live_task
    finally:
        live_task.cancel()
        await live.close()
        await resumer.close()
    frames_file = stack.tmp / "resume_frames.txt"
    frames_file.write_text("\n".join(frames) + "\n")
    proc, port = h.sync_bare_server("replay", logdir=stack.tmp, frames_file=frames_file)
    try:
        ws = await h.ws_connect(f"ws://127.0.0.1:{port}/")
        try:
            times = []
            for _ in range(3):
                t0 = time.perf_counter_ns()
                await ws.send("go")
                for _ in range(len(frames)):
                    await ws.recv()
                times.append((time.perf_counter_ns() - t0) / 1e6)
        finally:
            await ws.close()
    finally:
        proc.stop()
    out["bare_push_ms"] = round(min(times), 1)
    out["ratio_vs_bare"] = round(out["catch_up_ms"] / out["bare_push_ms"], 1)
    out["target"] = "catch_up_ms <= 200"
    out["met"] = out["catch_up_ms"] <= 200
    h.log(
        f"resume: caught up in {out['catch_up_ms']} ms over {out['replayed_chunks']} chunks "
        f"(bare push {out['bare_push_ms']} ms)"
    )
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--chunks", type=int, default=5000)
    args = ap.parse_args()
    with h.Stack(backend="api") as stack:
        res = asyncio.run(run(stack, chunks=args.chunks))
    h.save("resume", res)
    print(res)


if __name__ == "__main__":
    main()

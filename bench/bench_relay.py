"""Benchmark 1 — relay throughput: one websocket client, the scripted model's ``/long N`` through
the ``api`` backend. Baselines in the same run:

* ``bare`` (the issue's baseline): ``bench/bare_server.py --mode replay`` pushing the exact frames
  the real server sent (same text, same frame sizes) as fast as it can;
* ``bare_per_delta`` (the other reading of "same frame sizes"): the same replay server pushing
  the same text as one AI SDK ``text-delta`` chunk frame per model delta — the frames a relay
  without coalescing sends — as fast as it can;
* ``bare_relay`` (context): the minimal relay fed by the same scripted model, one frame per model
  delta — the cost of just parsing the model's SSE stream and forwarding it.

Target: bytes/s ≥ 0.5× the bare server's. Both replay baselines read nothing upstream; the real
server (and the bare relay) must parse the model's N server-sent events first.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time
import uuid
from pathlib import Path

from bench import harness as h


def _summary(rec: h.TurnRecord) -> dict:
    chunks = h.chunks_of(rec)
    deltas = [c for _t, _s, c in chunks if c.get("type") == "text-delta"]
    text = "".join(c.get("delta", "") for c in deltas)
    t_end = rec.frames[-1][0]
    first = chunks[0][0] if chunks else t_end
    return {
        "frames": len(rec.frames),
        "text_delta_frames": len(deltas),
        "model_deltas": len(text.split()),
        "text_bytes": len(text.encode()),
        "ws_bytes": sum(len(raw.encode()) for _t, raw in rec.frames),
        "seconds": (t_end - rec.t_send) / 1e9,
        "seconds_first_to_end": (t_end - first) / 1e9,
        "error": rec.error,
    }


async def _real(stack: h.Stack, n: int, profile_out: Path | None) -> tuple[dict, h.TurnRecord]:
    ws = await h.ws_connect(stack.ws_url(), stack.key)
    try:
        await h.ws_turn(ws, chat_id=str(uuid.uuid4()), text="/long 50", timeout=60)  # warm-up
        pid = stack.daphne[0].pid
        model_pid = stack.model.pid
        spy = h.profile(pid, 30, profile_out) if profile_out else None
        if spy:
            await asyncio.sleep(1.0)  # py-spy attach
        cpu0, mcpu0 = h.cpu_seconds(pid), h.cpu_seconds(model_pid)
        rec = await h.ws_turn(ws, chat_id=str(uuid.uuid4()), text=f"/long {n}", timeout=300)
        await asyncio.sleep(0.3)  # let the final persistence finish inside the measured CPU
        cpu1, mcpu1 = h.cpu_seconds(pid), h.cpu_seconds(model_pid)
        h.profile_stop(spy)
    finally:
        await ws.close()
    s = _summary(rec)
    s["server_cpu_s"] = round(cpu1 - cpu0, 3)
    s["model_cpu_s"] = round(mcpu1 - mcpu0, 3)
    return s, rec


async def _bare(proc: h.Proc, port: int, expected_frames: int) -> tuple[dict, float]:
    ws = await h.ws_connect(f"ws://127.0.0.1:{port}/")
    try:
        await ws.send("go")  # warm-up round
        for _ in range(expected_frames):
            await ws.recv()
        cpu0 = proc.cpu()
        rec = h.TurnRecord(t_send=time.time_ns())
        await ws.send("go")
        for _ in range(expected_frames):
            rec.frames.append((time.time_ns(), await ws.recv()))
        cpu = proc.cpu() - cpu0
    finally:
        await ws.close()
    return _summary(rec), cpu


def _per_delta_frames(text: str) -> list[str]:
    """The text as one ``text-delta`` chunk frame per model delta (``/long`` emits ``w<i> ``)."""
    dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
    return [
        dumps(
            {
                "type": "chunk",
                "requestId": "r",
                "sequence": i,
                "chunk": {"type": "text-delta", "id": "0", "delta": d},
            }
        )
        for i, d in enumerate(re.findall(r"\S+\s*", text))
    ]


async def _replay(stack: h.Stack, name: str, frames: list[str]) -> dict:
    frames_file = stack.tmp / f"{name}_frames.txt"
    frames_file.write_text("\n".join(frames) + "\n")
    proc, port = h.sync_bare_server("replay", logdir=stack.tmp, frames_file=frames_file)
    try:
        out, cpu = await _bare(proc, port, len(frames))
        out["server_cpu_s"] = round(cpu, 3)
    finally:
        proc.stop()
    return out


async def _bare_relay(stack: h.Stack, n: int) -> dict:
    proc, port = h.sync_bare_server("relay", logdir=stack.tmp, model_url=stack.model_url)
    try:
        ws = await h.ws_connect(f"ws://127.0.0.1:{port}/")
        try:
            await h.ws_turn(ws, chat_id="x", text="/long 50", timeout=60)
            cpu0 = proc.cpu()
            rec = await h.ws_turn(ws, chat_id="x", text=f"/long {n}", timeout=300)
            cpu = proc.cpu() - cpu0
        finally:
            await ws.close()
    finally:
        proc.stop()
    out = _summary(rec)
    out["server_cpu_s"] = round(cpu, 3)
    return out


async def run(stack: h.Stack, *, n: int = 20000, profile: bool = True) -> dict:
    h.log(f"relay: /long {n} through daphne")
    prof = h.RESULTS / "relay_daphne_pyspy.txt" if profile else None
    real, rec = await _real(stack, n, None)
    if real["error"]:
        raise RuntimeError(f"relay turn failed: {real['error']}")
    bare = await _replay(stack, "relay", [raw for _t, raw in rec.frames])
    text = "".join(c.get("delta", "") for _t, _s, c in h.chunks_of(rec) if c.get("type") == "text-delta")
    per_delta = await _replay(stack, "per_delta", _per_delta_frames(text))
    relay = await _bare_relay(stack, n)
    real_bps = real["ws_bytes"] / real["seconds"]
    bare_bps = bare["ws_bytes"] / bare["seconds"]
    out = {
        "n": n,
        "real": real,
        "bare": bare,
        "bare_relay": relay,
        "bare_per_delta": per_delta,
        "bare_per_delta_text_bytes_per_s": round(per_delta["text_bytes"] / per_delta["seconds"]),
        "ratio_text_bytes_vs_per_delta_replay": round(
            (real["text_bytes"] / real["seconds"]) / (per_delta["text_bytes"] / per_delta["seconds"]), 3
        ),
        "bare_relay_text_bytes_per_s": round(relay["text_bytes"] / relay["seconds"]),
        "ratio_text_bytes_vs_bare_relay": round(
            (real["text_bytes"] / real["seconds"]) / (relay["text_bytes"] / relay["seconds"]), 3
        ),
        "bare_relay_cpu_s_per_1000_deltas": round(relay["server_cpu_s"] / (relay["model_deltas"] / 1000), 4),
        "real_ws_bytes_per_s": round(real_bps),
        "bare_ws_bytes_per_s": round(bare_bps),
        "real_text_bytes_per_s": round(real["text_bytes"] / real["seconds"]),
        "model_deltas_per_s": round(real["model_deltas"] / real["seconds"]),
        "delta_frames_per_s": round(real["text_delta_frames"] / real["seconds"]),
        "bare_frames_per_s": round(bare["frames"] / bare["seconds"]),
        "server_cpu_s_per_1000_deltas": round(real["server_cpu_s"] / (real["model_deltas"] / 1000), 4),
        "bare_cpu_s_per_1000_deltas": round(bare["server_cpu_s"] / (real["model_deltas"] / 1000), 4),
        "ratio_bytes_per_s": round(real_bps / bare_bps, 3),
        "target": "ratio_bytes_per_s >= 0.5",
    }
    out["met"] = out["ratio_bytes_per_s"] >= 0.5
    if prof:
        # A second, profiled run (py-spy slows the target a little, so it is not the measured one).
        real2, _ = await _real(stack, n, prof)
        out["profile"] = {
            "file": str(prof.relative_to(h.ROOT)),
            "top_self": h.top_frames(prof, 12),
            "breakdown": h.breakdown(prof),
            "seconds_under_profiler": round(real2["seconds"], 2),
        }
    h.log(
        f"relay: {out['ratio_bytes_per_s']}x bare bytes/s (its own frames), "
        f"{out['ratio_text_bytes_vs_per_delta_replay']}x bare text bytes/s (one frame per delta), "
        f"{out['server_cpu_s_per_1000_deltas']} cpu-s/1000 deltas"
    )
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--no-profile", action="store_true")
    args = ap.parse_args()
    with h.Stack(backend="api") as stack:
        res = asyncio.run(run(stack, n=args.n, profile=not args.no_profile))
    h.save("relay", res)
    print(res)


if __name__ == "__main__":
    main()

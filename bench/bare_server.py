"""The baseline: a bare ``websockets`` server on the same machine, run as its own process.

Modes
  replay  on each client message, send every line of ``--frames-file`` (the exact frames the real
          server sent in the same run: same text, same frame sizes) as fast as it can.
  relay   a minimal relay fed by the scripted model: the client sends a ``send`` frame, the
          server streams ``POST /v1/messages`` (SSE) from ``--model-url`` with that text and
          forwards every text delta at once as an AI SDK ``chunk`` frame, then ``end``.
          No Django, no channel layer, no database: the floor for added latency.

Stops by itself after ``--lifetime`` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from urllib.parse import urlsplit

from websockets.asyncio.server import serve

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


async def replay_handler(ws, frames: list[str]) -> None:
    async for _msg in ws:
        for frame in frames:
            await ws.send(frame)


async def model_stream(model_url: str, text: str):
    """Yield the text of each ``text_delta`` of a streamed Messages API reply."""
    url = urlsplit(model_url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    body = json.dumps(
        {
            "model": "bench",
            "max_tokens": 64000,
            "stream": True,
            "messages": [{"role": "user", "content": text}],
        }
    ).encode()
    writer.write(
        b"POST /v1/messages HTTP/1.1\r\nHost: %s\r\ncontent-type: application/json\r\nx-api-key: bench\r\n"
        b"anthropic-version: 2023-06-01\r\nconnection: close\r\ncontent-length: %d\r\n\r\n%s"
        % (url.netloc.encode(), len(body), body)
    )
    await writer.drain()
    try:
        while True:
            line = await reader.readline()
            if not line:
                return
            if line.startswith(b'data: {"type":"content_block_delta"') and b'"text_delta"' in line:
                yield json.loads(line[6:])["delta"]["text"]
            elif line.startswith(b'data: {"type":"message_stop"'):
                return
    finally:
        writer.close()


async def relay_handler(ws, model_url: str) -> None:
    tasks: set[asyncio.Task] = set()

    async def one(frame: dict) -> None:
        rid = frame.get("requestId")
        text = frame["messages"][-1]["parts"][0]["text"]
        send = ws.send
        await send(_dumps({"type": "start", "requestId": rid}))
        seq = 0
        async for delta in model_stream(model_url, text):
            await send(
                _dumps(
                    {
                        "type": "chunk",
                        "requestId": rid,
                        "sequence": seq,
                        "chunk": {"type": "text-delta", "id": "0", "delta": delta},
                    }
                )
            )
            seq += 1
        await send(_dumps({"type": "end", "requestId": rid}))

    async for msg in ws:
        task = asyncio.create_task(one(json.loads(msg)))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    for task in tasks:
        task.cancel()


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--mode", choices=["replay", "relay"], required=True)
    ap.add_argument("--frames-file")
    ap.add_argument("--model-url")
    ap.add_argument("--lifetime", type=float, default=600)
    args = ap.parse_args()
    if args.mode == "replay":
        with open(args.frames_file) as fh:
            frames = [line.rstrip("\n") for line in fh if line.strip()]

        async def handler(ws):
            await replay_handler(ws, frames)
    else:

        async def handler(ws):
            await relay_handler(ws, args.model_url)

    async with serve(
        handler, "127.0.0.1", args.port, max_size=None, compression=None, ping_interval=None, backlog=1024
    ):
        await asyncio.sleep(args.lifetime)


if __name__ == "__main__":
    asyncio.run(main())

"""``ScriptedModelServer``: the scripted Messages API server on loopback, and the process-wide
one ``ensure_scripted_model()`` starts (docs/scripted_model.md)."""

from __future__ import annotations

import asyncio
import collections
import hashlib
import itertools
import json
import logging
import threading
import time
from typing import Any

from agents.loopserver import LoopThreadServer
from scripted_model.planner import ReplyPlanner
from scripted_model.stream import (
    DroppedConnection,
    SSEWriter,
    error_body,
    final_usage,
    render_message,
    stream_plan,
)
from scripted_model.usage import UsageMeter
from scripted_model.wire import (
    MAX_HEADER_BYTES,
    HttpError,
    HttpRequest,
    connection_reset,
    read_request,
    response_head_encode,
    write_json,
)

logger = logging.getLogger(__name__)

REQUEST_LOG_SIZE = 1000
_REDACTED_HEADERS = {"x-api-key", "authorization", "cookie", "proxy-authorization"}


def _log_headers(headers: dict[str, str]) -> dict[str, str]:
    return {k: ("<redacted>" if k in _REDACTED_HEADERS and v else v) for k, v in headers.items()}


def _auth_hash(headers: dict[str, str]) -> str | None:
    value = headers.get("x-api-key") or ""
    if not value and headers.get("authorization", "").lower().startswith("bearer "):
        value = headers["authorization"][7:].strip()
    return hashlib.sha256(value.encode()).hexdigest() if value else None


class ScriptedModelServer(LoopThreadServer):
    """The scripted Anthropic Messages API server (see module docstring)."""

    thread_name = "scripted-model"

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(host, port)
        self.requests: collections.deque[dict[str, Any]] = collections.deque(maxlen=REQUEST_LOG_SIZE)
        #: total number of requests ever logged (``len(requests)`` stops at the maxlen)
        self.request_count = 0
        self.planner = ReplyPlanner()
        self.usage = UsageMeter()
        self._counter = itertools.count(1)
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    # -- lifecycle (start/stop/url: LoopThreadServer) ----------------------

    def serve_forever(self) -> None:
        """Serve in the foreground until Ctrl-C (starts the server if needed)."""
        self.start()
        try:
            while self._thread is not None and self._thread.is_alive():
                self._thread.join(timeout=0.5)
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(
            self._handle_connection, self.host, self.port, backlog=2048, limit=MAX_HEADER_BYTES
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        if self._server is not None:
            await self._server.wait_closed()

    # -- connections -------------------------------------------------------

    async def _handle_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                try:
                    request = await read_request(reader, writer)
                except HttpError as exc:
                    body = error_body("invalid_request_error", str(exc), "req_bad")
                    await write_json(writer, exc.status, body, keep_alive=False)
                    break
                if request is None or not await self._dispatch(request, writer):
                    break
        except (ConnectionError, asyncio.IncompleteReadError, DroppedConnection):
            pass
        except Exception:  # a bug must not take the server down
            logger.exception("scripted model: request failed")
            writer.transport.abort()
        finally:
            self._writers.discard(writer)
            if not writer.transport.is_closing():
                writer.close()

    def _log(self, request: HttpRequest, body: Any) -> dict[str, Any]:
        entry = {
            "method": request.method,
            "path": request.path,
            "query": request.query,
            "headers": _log_headers(request.headers),
            # sha256 hex of the credential sent (x-api-key, else the bearer token): lets tests
            # check which key arrived without the log holding it.
            "auth_sha256": _auth_hash(request.headers),
            "body": body,
            "time": time.time(),
        }
        self.requests.append(entry)
        self.request_count += 1
        return entry

    async def _dispatch(self, request: HttpRequest, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; return whether the connection stays open."""
        try:
            body = json.loads(request.body) if request.body else None
        except (ValueError, UnicodeDecodeError):
            body = None
        entry = self._log(request, body)
        request_id = f"req_scripted_{next(self._counter):08d}"
        keep_alive = request.keep_alive
        common = {"request-id": request_id}
        route = (request.method, request.path.rstrip("/"))

        if route[1] in ("/v1/messages", "/v1/messages/count_tokens") and request.method == "POST":
            if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
                entry["status"] = 400
                err = error_body("invalid_request_error", "messages: field required", request_id)
                await write_json(writer, 400, err, keep_alive=keep_alive, extra=common)
                return keep_alive
            if route[1] == "/v1/messages/count_tokens":
                entry["status"] = 200
                payload = {"input_tokens": self.usage.count(body)}
                await write_json(writer, 200, payload, keep_alive=keep_alive, extra=common)
                return keep_alive
            return await self._messages(body, entry, writer, request_id, keep_alive)

        entry["status"] = 404
        err = error_body("not_found_error", f"Not found: {request.method} {request.path}", request_id)
        await write_json(
            writer,
            404,
            err,
            keep_alive=keep_alive,
            extra=common,
            head_only=request.method == "HEAD",
        )
        return keep_alive

    async def _messages(
        self,
        body: dict[str, Any],
        entry: dict[str, Any],
        writer: asyncio.StreamWriter,
        request_id: str,
        keep_alive: bool,
    ) -> bool:
        plan = self.planner.plan(body)
        entry["directive"] = plan.label
        entry.update(plan.notes)
        common = {"request-id": request_id}
        if plan.error is not None or (plan.stream_error is not None and not body.get("stream")):
            err = plan.error or plan.stream_error
            assert err is not None
            entry["status"] = err.status
            payload = error_body(err.type, err.message, request_id)
            await write_json(
                writer,
                err.status,
                payload,
                keep_alive=keep_alive,
                extra={**common, **err.headers},
            )
            return keep_alive
        entry["status"] = 200
        model = str(body.get("model") or "scripted-model")
        message_id = f"msg_scripted_{request_id[-8:]}"
        usage = self.usage.measure(body)
        entry["usage"] = final_usage(plan, usage)
        if not body.get("stream"):
            if plan.drop_after is not None:
                connection_reset(writer)
                return False
            message = await render_message(plan, message_id=message_id, model=model, usage=usage)
            await write_json(writer, 200, message, keep_alive=keep_alive, extra=common)
            return keep_alive
        writer.write(
            response_head_encode(
                200,
                {
                    "content-type": "text/event-stream; charset=utf-8",
                    "cache-control": "no-cache",
                    "transfer-encoding": "chunked",
                    "connection": "keep-alive" if keep_alive else "close",
                    "server": "scripted-model",
                    **common,
                },
            )
        )
        try:
            await stream_plan(plan, SSEWriter(writer), message_id=message_id, model=model, usage=usage)
        except DroppedConnection:
            connection_reset(writer)
            return False
        return keep_alive


# --------------------------------------------------------------------------
# Process-wide singleton
# --------------------------------------------------------------------------

_singleton: ScriptedModelServer | None = None
_singleton_lock = threading.Lock()


def ensure_scripted_model_server() -> ScriptedModelServer:
    """Start the process-wide scripted model once (thread-safe) and return it."""
    global _singleton
    with _singleton_lock:
        if _singleton is None:
            _singleton = ScriptedModelServer().start()
        return _singleton


def ensure_scripted_model() -> str:
    """Start the process-wide scripted model once (thread-safe); return its URL."""
    return ensure_scripted_model_server().url

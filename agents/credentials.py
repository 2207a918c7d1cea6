"""Keeping secrets out of everything a turn produces (docs/security.md "Secrets").

Two layers:

- ``CredentialProxy``: the Claude Code CLI (and so its Bash tool, which inherits the CLI's
  environment and can read ``/proc/<cli>/environ``) never holds the real API key. It gets
  ``ANTHROPIC_BASE_URL=http://127.0.0.1:<proxy>`` and ``ANTHROPIC_API_KEY=<a random grant token>``;
  this loopback proxy (a daemon thread with its own event loop in the worker process; requests
  parsed with ``h11``) accepts only live grant tokens, swaps in the real key and streams the
  upstream response back unchanged.
  Grants are suspended while their CLI is parked between turns and revoked when it closes, so a
  token quoted by the model is worthless.
- ``StreamScrubber``: the runtime passes every chunk a turn yields through it. Each configured
  secret (``agents.secret_values.secrets_to_scrub()``) and anything shaped like an Anthropic/OpenAI key
  becomes ``[redacted]``, also across delta boundaries: a delta's trailing characters that could
  start a secret (or a key-shaped run that may continue) are held back until the next delta of the
  same part, or flushed at the part's end.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http
import json
import logging
import os
import re
import secrets as _random
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h11

from agents.events import Chunk
from agents.loopserver import LoopThreadServer
from agents.secret_values import secrets_to_scrub

log = logging.getLogger(__name__)

REDACTED = "[redacted]"
# Anything shaped like an Anthropic or OpenAI API key (also our own grant tokens).
KEY_RE = re.compile(r"\b(?:sk-ant-[A-Za-z0-9_\-]{6,}|sk-[A-Za-z0-9]{20,})")
# A key-shaped run (or the start of one) at the very end of a text: it may continue in the next delta.
_KEY_TAIL_RE = re.compile(r"(?<![A-Za-z0-9_])s(?:k(?:-[A-Za-z0-9_\-]*)?)?\Z")
_HOLD_CAP = 4096  # a held key-shaped run longer than this is flushed (redacted) anyway
# Public, documented development defaults: never worth a scrubbing pass.
_PUBLIC_PREFIXES = ("django-insecure-",)


def configured_secrets() -> list[str]:
    """The secrets to scrub, longest first (public development defaults left out)."""
    try:
        values = secrets_to_scrub()
    except Exception:  # noqa: BLE001 - settings not configured (pure unit use)
        values = []
    values = [v for v in values if not v.startswith(_PUBLIC_PREFIXES)]
    return sorted(set(values), key=len, reverse=True)


def scrub_with(text: str, secrets: list[str]) -> str:
    """``text`` with each of ``secrets`` (longest first) and every key-shaped run redacted."""
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    if "sk-" in text:
        text = KEY_RE.sub(REDACTED, text)
    return text


def _deep(value: Any, secrets: list[str]) -> Any:
    if isinstance(value, str):
        return scrub_with(value, secrets)
    if isinstance(value, dict):
        return {
            (scrub_with(k, secrets) if isinstance(k, str) else k): _deep(v, secrets) for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [_deep(v, secrets) for v in value]
    return value


# Chunks with nothing to scrub (structure, ids, numbers).
_PLAIN = frozenset(
    {
        "start",
        "start-step",
        "finish-step",
        "text-start",
        "reasoning-start",
        "tool-input-start",
        "data-heartbeat",
        "data-usage",
        "finish",
        "abort",
    }
)
_DELTA_FIELD = {"text-delta": "delta", "reasoning-delta": "delta", "tool-input-delta": "inputTextDelta"}
_FLUSH_ALL = frozenset({"finish-step", "finish", "error", "abort"})


class StreamScrubber:
    """Redacts secrets in one turn's chunk stream (see the module docstring).

    ``feed(chunk)`` returns the chunks to emit instead (usually one; none while a whole delta is
    held back; a flushed delta before a part's end). Chunks that need no change are passed through
    as they are; changed ones are copies."""

    __slots__ = ("secrets", "_tails")

    def __init__(self, secrets: list[str]) -> None:
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)
        self._tails: dict[tuple[str, str], str] = {}  # (delta type, part id) -> held text

    @classmethod
    def for_turn(cls) -> StreamScrubber | None:
        """A scrubber for a new turn; None when no secret is configured (offline default)."""
        secrets = configured_secrets()
        return cls(secrets) if secrets else None

    # -- the hot path -----------------------------------------------------------------------
    def feed(self, chunk: Chunk) -> list[Chunk]:
        kind = chunk.get("type")
        field = _DELTA_FIELD.get(kind)  # type: ignore[arg-type]
        if field is not None:
            pid = chunk["toolCallId"] if kind == "tool-input-delta" else chunk["id"]
            text = chunk[field]
            out = self._piece((kind, pid), text)  # type: ignore[arg-type]
            if out is text:
                return [chunk]
            return [{**chunk, field: out}] if out else []
        if kind in _PLAIN:
            if kind in _FLUSH_ALL and self._tails:
                return [*self.flush_all(), chunk]
            return [chunk]
        # Part ends flush their held text first; everything else is scrubbed as a whole.
        before: list[Chunk] = []
        if self._tails:
            if kind in ("text-end", "reasoning-end"):
                before = self._flush((kind.replace("-end", "-delta"), chunk["id"]))
            elif kind == "tool-input-available":
                before = self._flush(("tool-input-delta", chunk["toolCallId"]))
            elif kind in _FLUSH_ALL:
                before = self.flush_all()
        if kind in ("text-end", "reasoning-end"):
            return [*before, chunk]
        scrubbed = _deep(chunk, self.secrets)
        return [*before, scrubbed]

    def _piece(self, key: tuple[str, str], delta: str) -> str:
        """The part of ``held + delta`` that is safe to emit now (secrets redacted); the rest is held."""
        tail = self._tails.pop(key, None)
        text = tail + delta if tail else delta
        changed = tail is not None
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
                changed = True
        n = len(text)
        cut = n
        # Hold back a trailing proper prefix of a secret (it may complete in the next delta).
        for secret in self.secrets:
            first = secret[0]
            i = text.find(first, max(0, n - len(secret) + 1))
            while i != -1 and i < cut:
                if secret.startswith(text[i:]):
                    cut = i
                    break
                i = text.find(first, i + 1)
        # Hold back a trailing key-shaped run (or "s", "sk", "sk-…" that may become one).
        if "s" in text[-_HOLD_CAP:]:
            match = _KEY_TAIL_RE.search(text, max(0, n - _HOLD_CAP))
            if match is not None and match.start() < cut:
                cut = match.start()
        if cut < n:
            self._tails[key] = text[cut:]
            text = text[:cut]
            changed = True
        if "sk-" in text:
            redacted = KEY_RE.sub(REDACTED, text)
            if redacted != text:
                return redacted
        return text if changed else delta

    # -- flushing ---------------------------------------------------------------------------
    def _flush(self, key: tuple[str, str]) -> list[Chunk]:
        held = self._tails.pop(key, None)
        if not held:
            return []
        text = scrub_with(held, self.secrets)
        kind, pid = key
        if kind == "tool-input-delta":
            return [{"type": kind, "toolCallId": pid, "inputTextDelta": text}]
        return [{"type": kind, "id": pid, "delta": text}]

    def flush_all(self) -> list[Chunk]:
        """Chunks carrying every held text (call before the stream ends)."""
        out: list[Chunk] = []
        for key in list(self._tails):
            out += self._flush(key)
        return out


# ------------------------------------------------------------------------------------------------
# The loopback credential proxy
# ------------------------------------------------------------------------------------------------

TOKEN_PREFIX = "sk-ant-proxy-"  # key-shaped on purpose: KEY_RE scrubs it from logs and outputs
MAX_HEAD_BYTES = 64 * 1024  # a larger request head: 431
MAX_BODY_BYTES = 64 * 1024 * 1024  # a larger request body: 413
READ_BYTES = 64 * 1024
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)
_CREDENTIAL_HEADERS = frozenset({"x-api-key", "authorization"})


def key_fingerprint(value: str) -> str:
    """A short, non-reversible name for a key (for logs and tests)."""
    return hashlib.sha256(value.encode()).hexdigest()[:16]


@dataclass
class _Grant:
    upstream: str  # base URL, no trailing slash
    api_key: str
    active: bool = True


@dataclass(frozen=True)
class Credential:
    """What a CLI gets instead of the real key."""

    base_url: str
    api_key: str  # the grant token


class CredentialProxy(LoopThreadServer):
    """A loopback HTTP reverse proxy that adds the real API key to requests carrying a live grant
    token. ``start()`` listens in a daemon thread; ``grant``/``suspend``/``resume``/``revoke`` are
    thread-safe and cheap (no I/O)."""

    thread_name = "credential-proxy"

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(host, port)
        self._grants: dict[str, _Grant] = {}
        self._lock = threading.Lock()
        self._server: asyncio.base_events.Server | None = None
        self._unix_server: asyncio.base_events.Server | None = None
        self.socket_path: Path | None = None  # the unix socket jails reach the proxy through
        self._client: Any = None  # httpx.AsyncClient, created in the proxy's loop
        self.denied = 0  # requests refused for a missing / unknown / inactive token
        self.forwarded = 0

    # -- grants -----------------------------------------------------------------------------
    def grant(self, *, upstream: str, api_key: str) -> Credential:
        token = TOKEN_PREFIX + _random.token_hex(24)
        with self._lock:
            self._grants[token] = _Grant(upstream.rstrip("/"), api_key)
        return Credential(base_url=self.url, api_key=token)

    def suspend(self, token: str) -> None:
        with self._lock:
            grant = self._grants.get(token)
            if grant is not None:
                grant.active = False

    def resume(self, token: str) -> None:
        with self._lock:
            grant = self._grants.get(token)
            if grant is not None:
                grant.active = True

    def revoke(self, token: str) -> None:
        with self._lock:
            self._grants.pop(token, None)

    def live_grants(self) -> int:
        with self._lock:
            return sum(1 for g in self._grants.values() if g.active)

    def _lookup(self, token: str | None) -> _Grant | None:
        if not token:
            return None
        with self._lock:
            grant = self._grants.get(token)
            return grant if grant is not None and grant.active else None

    # -- lifecycle (start/stop: LoopThreadServer) -------------------------------------------
    async def _listen(self) -> None:
        import httpx

        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(connect=15.0, read=600.0, write=60.0, pool=15.0),
            follow_redirects=False,
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=20),
        )
        self._server = await asyncio.start_server(self._handle, self.host, self.port, backlog=512)
        self.port = self._server.sockets[0].getsockname()[1]
        # The same proxy on a unix socket, for jails (no network of their own): its directory is
        # bound into a CLI's jail, where socat bridges it to a loopback port (agents/jail.py).
        directory = Path(tempfile.mkdtemp(prefix="copilot-proxy-"))
        os.chmod(directory, 0o755)
        self.socket_path = directory / "model.sock"
        self._unix_server = await asyncio.start_unix_server(
            self._handle, path=str(self.socket_path), backlog=512
        )
        os.chmod(self.socket_path, 0o666)  # the jail's uid connects; a grant token is still needed

    async def _close(self) -> None:
        for server in (self._server, self._unix_server):
            if server is not None:
                server.close()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(server.wait_closed(), timeout=2)
        if self.socket_path is not None:
            shutil.rmtree(self.socket_path.parent, ignore_errors=True)
        if self._client is not None:
            await self._client.aclose()

    # -- requests ---------------------------------------------------------------------------
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One client connection: requests parsed by ``h11`` (keep-alive, chunked bodies), each
        relayed in turn; a malformed request gets an Anthropic-shaped error and the connection
        closes."""
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        try:
            while True:
                try:
                    request = await _read_request(conn, reader, writer)
                except (h11.RemoteProtocolError, _BadRequest) as exc:
                    status = exc.status if isinstance(exc, _BadRequest) else exc.error_status_hint
                    await _write_error(
                        conn, writer, status, "invalid_request_error", str(exc), keep_alive=False
                    )
                    break
                if request is None or not await self._forward(conn, request, writer):
                    break
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    break  # the client asked to close (or spoke HTTP/1.0)
                conn.start_next_cycle()
        except (ConnectionError, asyncio.IncompleteReadError, h11.ProtocolError):
            pass
        except Exception:
            log.exception("credential proxy: request failed")
            writer.transport.abort()
        finally:
            if not writer.transport.is_closing():
                writer.close()

    async def _forward(
        self, conn: h11.Connection, request: ProxiedRequest, writer: asyncio.StreamWriter
    ) -> bool:
        """Relay one request; True when the client connection stays open."""
        token = request.header("x-api-key")
        if not token:
            auth = request.header("authorization") or ""
            token = auth[7:].strip() if auth.lower().startswith("bearer ") else None
        grant = self._lookup(token)
        if grant is None:
            self.denied += 1
            log.info("credential proxy: refused %s %s (no live grant)", request.method, request.path)
            await _write_error(
                conn, writer, 401, "authentication_error", "invalid x-api-key", keep_alive=request.keep_alive
            )
            return request.keep_alive
        if not request.path.startswith("/v1/") or request.method not in ("GET", "POST", "HEAD"):
            await _write_error(
                conn, writer, 404, "not_found_error", "not found", keep_alive=request.keep_alive
            )
            return request.keep_alive
        out_headers = [
            (name, value)
            for name, value in request.headers
            if name.decode("latin-1") not in _HOP_BY_HOP and name.decode("latin-1") not in _CREDENTIAL_HEADERS
        ]
        out_headers.append((b"x-api-key", grant.api_key.encode("latin-1")))
        client = self._client
        upstream = client.build_request(
            request.method, grant.upstream + request.target, headers=out_headers, content=request.body
        )
        try:
            response = await client.send(upstream, stream=True)
        except Exception as exc:  # noqa: BLE001 - the CLI sees a dropped connection, as without the proxy
            log.info("credential proxy: upstream unreachable: %s", type(exc).__name__)
            writer.transport.abort()
            return False
        self.forwarded += 1
        try:
            headers = [
                (name, value)
                for name, value in response.headers.raw
                if name.lower().decode("latin-1") not in _HOP_BY_HOP
            ]
            # No content-length: h11 frames the body (chunked for HTTP/1.1 clients) as it streams.
            headers.append((b"connection", b"keep-alive" if request.keep_alive else b"close"))
            status = response.status_code
            writer.write(
                conn.send(h11.Response(status_code=status, headers=headers, reason=_reason(status).encode()))
            )
            if request.method != "HEAD" and status not in (204, 304):
                async for data in response.aiter_raw():
                    if data:
                        writer.write(conn.send(h11.Data(data=data)))
                        await writer.drain()
            writer.write(conn.send(h11.EndOfMessage()))
            await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            raise
        except Exception as exc:  # noqa: BLE001 - upstream broke mid-stream: drop the client too
            log.info("credential proxy: upstream stream failed: %s", type(exc).__name__)
            writer.transport.abort()
            return False
        finally:
            await response.aclose()
        return request.keep_alive


@dataclass(frozen=True)
class ProxiedRequest:
    """One complete client request, as ``h11`` parsed it (names lower-case, values raw bytes)."""

    method: str
    target: str  # path and query, forwarded as is
    headers: list[tuple[bytes, bytes]]
    body: bytes
    keep_alive: bool

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    def header(self, name: str) -> str | None:
        """The last value of header ``name`` (lower case), if any."""
        wanted = name.encode("latin-1")
        values = [value for key, value in self.headers if key == wanted]
        return values[-1].decode("latin-1") if values else None


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


async def _read_request(
    conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> ProxiedRequest | None:
    """The next whole request on ``conn`` (head and body); ``None`` when the client closed the
    connection between requests. Raises ``h11.RemoteProtocolError`` or ``_BadRequest``."""
    head: h11.Request | None = None
    body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            if conn.they_are_waiting_for_100_continue:
                writer.write(conn.send(h11.InformationalResponse(status_code=100, headers=[])))
            conn.receive_data(await reader.read(READ_BYTES))
        elif isinstance(event, h11.Request):
            head = event
            length = dict(event.headers).get(b"content-length")
            if length is not None and int(length) > MAX_BODY_BYTES:
                raise _BadRequest(413, "body too large")
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > MAX_BODY_BYTES:
                raise _BadRequest(413, "body too large")
        elif isinstance(event, h11.EndOfMessage) and head is not None:
            connection = b",".join(value for name, value in head.headers if name == b"connection").lower()
            keep_alive = head.http_version == b"1.1" and b"close" not in connection
            return ProxiedRequest(
                method=head.method.decode("ascii").upper(),
                target=head.target.decode("latin-1"),
                headers=list(head.headers),
                body=bytes(body),
                keep_alive=keep_alive,
            )
        else:  # ConnectionClosed (or PAUSED, which a fresh cycle never yields)
            return None


def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


async def _write_error(
    conn: h11.Connection,
    writer: asyncio.StreamWriter,
    status: int,
    kind: str,
    message: str,
    *,
    keep_alive: bool,
) -> None:
    """An Anthropic-shaped JSON error (what the CLI expects from the API)."""
    body = json.dumps({"type": "error", "error": {"type": kind, "message": message}}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"keep-alive" if keep_alive else b"close"),
    ]
    writer.write(
        conn.send(h11.Response(status_code=status, headers=headers, reason=_reason(status).encode()))
    )
    writer.write(conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()))
    await writer.drain()


def credential_proxy() -> CredentialProxy:
    """The process's credential proxy (started on first use)."""
    return CredentialProxy.shared()

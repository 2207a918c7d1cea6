"""``/ws/chat/``: the AI SDK ``WebSocketChatTransport`` protocol (CONTRACT §4, docs/protocol.md).

Thin: parse and validate frames (``chat.protocol``), call ``chat.runtime``, serialise. Every
request's forwarding runs as its own task, so ``receive`` is never blocked by a stream and an
``abort`` (or another request) on the same socket is handled at once (DESIGN). A bad frame gets
an ``error`` frame for its request; it never closes the socket.

Hardening (docs/security.md): frames are rate-limited per connection by a token bucket
(``WS_FRAME_RATE``/``WS_FRAME_BURST``) charged *before* parsing; an excess frame gets an
``error`` frame with ``code: "rate_limited"`` and is dropped, the socket stays open. Error frames
carry a machine-readable ``code`` next to ``errorText`` (additive to the AI SDK protocol). No
exception from a frame escapes ``receive`` (an escaping one would close the socket).
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import re
from collections.abc import AsyncIterator

try:  # what daphne's websocket protocol raises on a send after the client has gone
    from autobahn.exception import Disconnected as _Disconnected
except ImportError:  # pragma: no cover - another ASGI server

    class _Disconnected(Exception):  # type: ignore[no-redef]
        pass


from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from channels.sessions import InstanceSessionWrapper

from chat import metrics, runtime
from chat.apikeys import api_key_is_active, api_key_known_active
from chat.config import chat_config
from chat.logcontext import log_context_bind
from chat.protocol import MAX_ID_CHARS, AbortFrame, ProtocolError, ResumeFrame, SendFrame, frame_parse
from chat.ratelimit import TokenBucket

logger = logging.getLogger(__name__)

UNAUTHENTICATED_CLOSE_CODE = 4401
REVOKED_TEXT = "This connection's API key has been revoked; reconnect with a valid key."
MAX_REQUESTS_PER_SOCKET = 32
REPLAY_YIELD_EVERY = 256  # frames sent back to back before yielding to the event loop

RATE_LIMITED_TEXT = "Too many frames on this connection; slow down (this frame was ignored)."
# Cheap look at a frame's requestId without parsing it (for the rate-limit error frame).
_REQUEST_ID_RE = re.compile(r'"requestId"\s*:\s*"([^"\\]{1,' + str(MAX_ID_CHARS) + r'})"')

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def _peek_request_id(raw: str | bytes | None) -> str | None:
    if raw is None:
        return None
    head = raw[:1024]
    if isinstance(head, (bytes, bytearray)):
        head = head.decode("utf-8", "replace")
    match = _REQUEST_ID_RE.search(head)
    return match.group(1) if match else None


class ChatConsumer(AsyncJsonWebsocketConsumer):
    # Chunks reach a socket through chat.runtime.streams, never through the channel layer, and nothing
    # sends to a socket's own channel: no channel per connection, so a handshake costs no Redis
    # SUBSCRIBE (and a close no UNSUBSCRIBE) and a socket runs no channel-layer reader task.
    channel_layer_alias = None

    async def __call__(self, scope, receive, send):
        self._inbox = receive  # to see a close queued behind pending frames (``_alive``)
        return await super().__call__(scope, receive, send)

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=UNAUTHENTICATED_CLOSE_CODE)
            return
        self.user = user
        self.gone = False  # set by disconnect: frames handled after it start nothing
        self.requests: dict[str, asyncio.Task] = {}
        self.request_chats: dict[str, str] = {}
        config = chat_config()
        self.bucket = TokenBucket(
            rate=config.ws_frame_rate,
            burst=config.ws_frame_burst,
        )
        await self.accept()
        self.counted = True  # in copilot_websocket_connections until its disconnect
        metrics.websocket_opened()

    async def disconnect(self, code: int) -> None:
        # The turns run on (they outlive connections); only this socket's forwarding stops, and
        # no frame of it still queued or waiting for the database starts a turn any more.
        self.gone = True
        if getattr(self, "counted", False):
            self.counted = False
            metrics.websocket_closed()
        for task in list(getattr(self, "requests", {}).values()):
            task.cancel()

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        raw = text_data if text_data is not None else bytes_data
        if not self._alive():
            return  # closed (or never accepted): nothing a frame asks for happens any more
        if not self.bucket.take():
            await self._error(_peek_request_id(raw), RATE_LIMITED_TEXT, code="rate_limited")
            return
        try:
            await self._receive_frame(raw)
        except Exception:
            logger.exception("handling a websocket frame failed")
            await self._error(None, "The server could not handle this frame.", code="server_error")

    async def _receive_frame(self, raw: str | bytes | None) -> None:
        try:
            frame = frame_parse(raw)
        except ProtocolError as exc:
            await self._error(exc.request_id, exc.message, code=exc.code)
            return
        if isinstance(frame, AbortFrame):
            await self._abort(frame)
            return
        if frame.request_id in self.requests:
            await self._error(
                frame.request_id, "A request with this requestId is already running.", code="invalid_request"
            )
            return
        if not await self._key_still_active():
            # The socket's API key was revoked (here, or elsewhere within API_KEY_CACHE_SECONDS):
            # no new turn, no resume; tell the client why, then close like a refused handshake.
            await self._error(frame.request_id, REVOKED_TEXT, code="unauthorized")
            await self.close(code=UNAUTHENTICATED_CLOSE_CODE)
            return
        if len(self.requests) >= MAX_REQUESTS_PER_SOCKET:
            await self._error(
                frame.request_id, "Too many concurrent requests on this connection.", code="rate_limited"
            )
            return
        self.request_chats[frame.request_id] = frame.chat_id
        coro = self._send_request(frame) if isinstance(frame, SendFrame) else self._resume_request(frame)
        # The request's log lines carry its requestId and chat id (chat.logcontext); so do its
        # turn's, whose task copies this context.
        context = contextvars.copy_context()
        context.run(log_context_bind, request_id=frame.request_id, session_id=frame.chat_id)
        task = asyncio.get_running_loop().create_task(coro, context=context)
        self.requests[frame.request_id] = task
        task.add_done_callback(lambda _t, rid=frame.request_id: self._request_done(rid))

    def _alive(self) -> bool:
        """False once the socket is closed: its disconnect handled, or already waiting in the
        application's inbox behind the frames still queued (a flood closed by its sender)."""
        if getattr(self, "gone", True):
            return False
        # The server queues ``websocket.disconnect`` after every frame the client sent before it,
        # and Channels handles one message at a time: look at the inbox's tail (an asyncio.Queue
        # for daphne and the test communicator; any other receive callable: not knowable).
        inbox = getattr(getattr(self, "_inbox", None), "__self__", None)
        pending = getattr(inbox, "_queue", None) if isinstance(inbox, asyncio.Queue) else None
        if pending and pending[-1].get("type") == "websocket.disconnect":
            self.gone = True
            return False
        return True

    async def _key_still_active(self) -> bool:
        """Bearer sockets re-check their key before each send/resume (cookie sockets: always True).
        Cheap: the per-process key cache, else one query off the serialised database thread."""
        api_key = self.scope.get("api_key")
        if api_key is None or api_key_known_active(api_key=api_key):
            return True
        return await database_sync_to_async(api_key_is_active, thread_sensitive=False)(api_key=api_key)

    def _request_done(self, rid: str) -> None:
        self.requests.pop(rid, None)
        self.request_chats.pop(rid, None)

    # -- requests -----------------------------------------------------------------------------
    async def _send_request(self, frame: SendFrame) -> None:
        rid = frame.request_id
        message = frame.message
        if frame.approvals:
            await self._approval_request(frame)
            return
        try:
            handle = await runtime.turn_start(
                user=self.user,
                chat_id=frame.chat_id,
                text=message.text if message else "",
                attachments=message.attachments if message else [],
                trigger=frame.trigger,
                client_message_id=message.client_message_id if message else None,
                alive=self._alive,
                model=frame.model,
                message_ref=frame.message_id,
            )
        except runtime.TurnRefused as exc:
            if exc.code != "connection_closed":
                await self._error(rid, exc.message, code=exc.code)
            return
        except Exception:
            logger.exception("starting a turn failed")
            await self._error(rid, "The server could not start this response.", code="server_error")
            return
        await self._forward(rid, runtime.turn_listen(handle=handle))

    async def _approval_request(self, frame: SendFrame) -> None:
        """Answers to tool approval requests: the waiting turn continues, and this request's
        stream carries the rest of the same assistant message."""
        rid = frame.request_id
        try:
            handle, after = await runtime.turn_approval_answer(
                user=self.user, chat_id=frame.chat_id, replies=frame.approvals
            )
        except runtime.TurnRefused as exc:
            await self._error(rid, exc.message, code=exc.code)
            return
        except Exception:
            logger.exception("answering an approval request failed")
            await self._error(rid, "The server could not take this answer.", code="server_error")
            return
        # A send's frames are numbered from 0 (what the stock WebSocketChatTransport checks);
        # ``turnSequence`` keeps the turn's own numbers for a later resume with lastSequence.
        await self._forward(rid, runtime.turn_listen(handle=handle, after_sequence=after), offset=after + 1)

    async def _resume_request(self, frame: ResumeFrame) -> None:
        rid = frame.request_id
        after = frame.last_sequence if frame.last_sequence is not None else -1
        try:
            chunks = await runtime.turn_subscribe(user=self.user, chat_id=frame.chat_id, after_sequence=after)
        except runtime.TurnRefused as exc:
            await self._error(rid, exc.message, code=exc.code)
            return
        except Exception:
            logger.exception("resuming failed")
            await self._error(rid, "The server could not resume this chat.", code="server_error")
            return
        if chunks is None:
            await self.send(text_data=_dumps({"type": "no-active", "requestId": rid}))
            return
        await self._forward(rid, chunks)

    def _frame_send(self):
        """The ASGI send for outgoing text frames, past channels' session wrapper: that wrapper
        only acts on ``http.response.start`` but loads and inspects the session for *every*
        message (``SessionBase.is_empty``), a per-frame cost on the hot path."""
        send = self.base_send
        owner = getattr(send, "__self__", None)
        while isinstance(owner, InstanceSessionWrapper):
            send = owner.real_send
            owner = getattr(send, "__self__", None)
        return send

    async def _forward(self, rid: str, chunks: AsyncIterator, *, offset: int = 0) -> None:
        """Forward ``(sequence, chunk JSON, is_terminal)``: each frame is built by concatenation
        around the chunk's JSON (encoded once, by the stream) and sent straight to the server.
        A backlog (replay) is sent as a burst, yielding to the loop every ``REPLAY_YIELD_EVERY``
        frames so the transport flushes and other streams run. ``offset``: the frames are
        numbered from the turn's sequence ``offset`` on (``sequence`` 0 there), and each also
        carries the turn's own number as ``turnSequence``."""
        send = self._frame_send()
        prefix = '{"type":"chunk","requestId":' + _dumps(rid) + ',"sequence":'
        n = 0
        try:
            await send({"type": "websocket.send", "text": _dumps({"type": "start", "requestId": rid})})
            async for seq, raw, _terminal in chunks:
                if offset:
                    text = f'{prefix}{seq - offset},"turnSequence":{seq},"chunk":{raw}}}'
                else:
                    text = f'{prefix}{seq},"chunk":{raw}}}'
                await send({"type": "websocket.send", "text": text})
                n += 1
                if n >= REPLAY_YIELD_EVERY:
                    n = 0
                    await asyncio.sleep(0)
            await send({"type": "websocket.send", "text": _dumps({"type": "end", "requestId": rid})})
        except runtime.StreamLagged as exc:
            await self._error(rid, exc.message, code="stream_lagged")
        except asyncio.CancelledError:
            raise
        except _Disconnected:
            # The client closed the socket before its disconnect reached us: nobody to tell, and
            # the turn runs on (it outlives connections); a resume picks it up.
            return
        except Exception:
            logger.exception("forwarding request %s failed", rid)
            await self._error(
                rid, "The stream failed on the server; resume to continue.", code="server_error"
            )
        finally:
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                try:
                    await aclose()
                except Exception:  # noqa: BLE001
                    pass

    async def _abort(self, frame: AbortFrame) -> None:
        chat_id = self.request_chats.get(frame.request_id)
        if chat_id is None:
            return  # unknown or long-finished request: nothing to stop
        try:
            await runtime.turn_stop(user=self.user, chat_id=chat_id)
        except Exception:
            logger.exception("abort failed")
            await self._error(
                frame.request_id, "The server could not stop this response.", code="server_error"
            )

    async def _error(self, rid: str | None, text: str, *, code: str = "invalid_request") -> None:
        try:
            await self.send(
                text_data=_dumps({"type": "error", "requestId": rid, "errorText": text, "code": code})
            )
        except _Disconnected:
            pass  # the socket is gone: there is nobody left to tell

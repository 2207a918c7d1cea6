"""The AI SDK compatible streaming chat: POST /api/v1/chat/ and GET /api/v1/chat/<id>/stream/."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiExample, OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.negotiation import BaseContentNegotiation, DefaultContentNegotiation
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response

from chat.api.base import AsyncAPIView
from chat.api.errors import retry_after_seconds
from chat.api.exceptions import ApiError
from chat.api.serializers import StrictCharField, with_errors
from chat.api.sse import UI_STREAM_HEADER, sse_response, sse_stream
from chat.logcontext import log_context_bind
from chat.protocol import (
    ApprovalReply,
    ProtocolError,
    UserMessage,
    approval_replies_parse,
    body_model_parse,
    user_message_parse,
)
from chat.runtime import (
    TOO_MANY_TURNS_RETRY_AFTER,
    TurnRefused,
    turn_approval_answer,
    turn_listen,
    turn_start,
    turn_subscribe,
)

SSE_DESCRIPTION = (
    "`text/event-stream` in the AI SDK UI message stream format (header "
    f"`{UI_STREAM_HEADER}: v1`): one event per chunk, `id: <sequence>` and `data: <chunk JSON>` "
    "(chunk types: start, start-step, text-start/-delta/-end, reasoning-*, tool-input-*, "
    "tool-output-available/-error, finish-step, finish, error, data-usage, data-status, "
    "data-heartbeat, data-session), `: ping` comments while idle, and `data: [DONE]` last."
)
# OpenAPI 3.0 has the text/event-stream ``schema`` describe one event (as schemathesis and other
# SSE-aware tools read it): ``id`` is the chunk's sequence, ``data`` its JSON; the last event is
# ``data: [DONE]`` without an id; ``: ping`` comments are no events.
SSE_EVENT_SCHEMA = {
    "type": "object",
    "description": "One server-sent event.",
    "required": ["data"],
    "properties": {
        "id": {
            "type": "string",
            "pattern": "^[0-9]+$",
            "description": "The chunk's sequence (absent on `[DONE]`).",
        },
        "event": {"type": "string", "enum": ["message"], "description": "Always the default event type."},
        "data": {"type": "string", "description": "A UI message stream chunk as JSON, or `[DONE]` last."},
    },
}
SSE_RESPONSE = OpenApiResponse(response=SSE_EVENT_SCHEMA, description=SSE_DESCRIPTION)
REFUSAL_STATUS = {
    "stream_already_active": status.HTTP_409_CONFLICT,
    "already_answered": status.HTTP_409_CONFLICT,  # a retried send whose turn's log is gone
    "not_found": status.HTTP_404_NOT_FOUND,
    "budget_exceeded": status.HTTP_429_TOO_MANY_REQUESTS,
    "rate_limited": status.HTTP_429_TOO_MANY_REQUESTS,
    "too_many_turns": status.HTTP_429_TOO_MANY_REQUESTS,  # a concurrency cap (docs/security.md)
    "invalid_request": status.HTTP_400_BAD_REQUEST,
    "unavailable": status.HTTP_503_SERVICE_UNAVAILABLE,  # this worker is shutting down
}
SHUTDOWN_RETRY_AFTER = 5  # seconds: another worker (or this one, restarted) takes the turn


def refusal_error(exc: Any) -> ApiError:
    """A chat.runtime.TurnRefused as an API error (409, 429 / 503 with Retry-After, 404, 400)."""
    code = getattr(exc, "code", "invalid_request")
    http_status = REFUSAL_STATUS.get(code, status.HTTP_400_BAD_REQUEST)
    retry_after = None
    if code == "too_many_turns":
        retry_after = TOO_MANY_TURNS_RETRY_AFTER  # a running turn ends, or another worker has room
    elif http_status == status.HTTP_429_TOO_MANY_REQUESTS:
        retry_after = retry_after_seconds(getattr(exc, "resets_at", None))
    elif http_status == status.HTTP_503_SERVICE_UNAVAILABLE:
        retry_after = SHUTDOWN_RETRY_AFTER
    if code == "not_found":
        return ApiError("Not found.", code="not_found", status_code=http_status)
    return ApiError(
        getattr(exc, "message", str(exc)), code=code, status_code=http_status, retry_after=retry_after
    )


class StreamNegotiation(BaseContentNegotiation):
    """The streaming endpoints answer text/event-stream (not rendered by DRF) or a JSON error,
    whatever the Accept header says (SSE clients send ``Accept: text/event-stream``)."""

    def select_parser(self, request: Any, parsers: list) -> Any:
        return DefaultContentNegotiation().select_parser(request, parsers)

    def select_renderer(
        self, request: Any, renderers: list, format_suffix: str | None = None
    ) -> tuple[Any, str]:
        renderer = JSONRenderer()
        return renderer, renderer.media_type


def parse_chat_request(*, messages: list[dict[str, Any]], trigger: str) -> UserMessage | None:
    """The newest user message (parsed like the websocket's ``send``); None for a regenerate."""
    if trigger == "regenerate-message":
        return None
    newest = next((m for m in reversed(messages) if isinstance(m, dict) and m.get("role") == "user"), None)
    if newest is None:
        raise ApiError("The request has no user message.", details={"messages": ["no user message"]})
    try:
        return user_message_parse(newest)
    except ProtocolError as exc:
        raise ApiError(exc.message, details={"messages": [exc.message]}) from None


def parse_approval_replies(*, messages: list[dict[str, Any]], trigger: str) -> tuple[ApprovalReply, ...]:
    """Answers to tool approval requests (the last message is the assistant's, with tool parts
    in ``approval-responded``): the request continues the waiting turn."""
    if trigger != "submit-message":
        return ()
    try:
        return approval_replies_parse(messages)
    except ProtocolError as exc:
        raise ApiError(exc.message, details={"messages": [exc.message]}) from None


def parse_chat_model(model: str | None) -> str | None:
    """The request's ``model`` (the AI SDK ``body.model``), checked against the allow-list; None
    when it names none."""
    try:
        return body_model_parse({"model": model})
    except ProtocolError as exc:
        raise ApiError(exc.message, details={"model": [exc.message]}) from None


class ChatApi(AsyncAPIView):
    throttle_scope = "chat"
    content_negotiation_class = StreamNegotiation

    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "ChatRequest"

        id = StrictCharField(
            max_length=200,
            trim_whitespace=False,
            help_text="Chat id: a session UUID, or a new id of yours (creates a session).",
        )
        messages = serializers.ListField(
            child=serializers.DictField(),
            help_text="AI SDK UI messages; only the newest user message is used.",
        )
        trigger = serializers.ChoiceField(
            choices=["submit-message", "regenerate-message"], default="submit-message"
        )
        messageId = StrictCharField(
            required=False,
            allow_null=True,
            allow_blank=True,
            max_length=200,
            help_text="`submit-message`: naming a user message of the chat (its AI SDK id or its "
            "`id`) makes this an edit: the new message becomes that one's sibling, a new branch "
            "(docs/api.md, Branches). `regenerate-message`: the reply to answer again (none: the "
            "last reply of the active path); the old reply is kept as a sibling.",
        )
        model = StrictCharField(
            required=False,
            allow_null=True,
            allow_blank=True,
            max_length=200,
            help_text="The AI SDK request's `body.model` (DefaultChatTransport merges `body` into this "
            "object): one of `GET /api/v1/models/` (else `400 invalid_request`); it becomes the chat's "
            "model for this turn and the next ones. Absent, null or empty: the chat's model.",
        )

    @extend_schema(
        operation_id="chat_create",
        summary="Send a message and stream the answer (AI SDK DefaultChatTransport)",
        description="Starts a turn and streams it. " + SSE_DESCRIPTION + " The turn keeps running if the "
        "client disconnects; resume it with `GET /api/v1/chat/{chat_id}/stream/`. Beyond the schema, "
        "the newest `user` message must be valid (a `parts` list of objects; its text non-empty, "
        "at most 100,000 characters, without NUL; at most 4 `file` parts with base64 `data:` URLs "
        "of accepted types, 5 MiB each); otherwise `400 invalid_request` (not needed for "
        "`regenerate-message`). Idempotent: a retried request whose newest user message has an `id` "
        "already stored in this chat streams the turn that message started (from its first chunk, "
        "then live; same `messageId`) instead of starting another; when that turn's log is no "
        "longer retained, `409 already_answered`. Edit and regenerate make branches (see "
        "`messageId`); a retried edit (same message, same content) joins its turn the same way.",
        request=InputSerializer,
        examples=[
            OpenApiExample(
                "Send a message",
                request_only=True,
                value={
                    "id": "my-chat-1",
                    "messages": [
                        {"id": "msg-1", "role": "user", "parts": [{"type": "text", "text": "Hello!"}]}
                    ],
                    "trigger": "submit-message",
                    "messageId": None,
                },
            )
        ],
        responses=with_errors({(200, "text/event-stream"): SSE_RESPONSE}, 400, 403, 409, 429, 503),
    )
    async def post(self, request: Request) -> Any:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        chat_id, trigger = data.validated_data["id"], data.validated_data["trigger"]
        log_context_bind(session_id=chat_id)  # on this request's log lines (chat.logcontext)
        approvals = parse_approval_replies(messages=data.validated_data["messages"], trigger=trigger)
        if approvals:
            try:
                handle, after = await turn_approval_answer(
                    user=request.user, chat_id=chat_id, replies=approvals
                )
            except TurnRefused as exc:
                raise refusal_error(exc) from exc
            # The event ids go on with the turn's sequence (Last-Event-ID stays a turn position).
            return sse_response(sse_stream(turn_listen(handle=handle, after_sequence=after)))
        message = parse_chat_request(messages=data.validated_data["messages"], trigger=trigger)
        model = parse_chat_model(data.validated_data.get("model"))
        try:
            handle = await turn_start(
                user=request.user,
                chat_id=chat_id,
                text=message.text if message else "",
                attachments=message.attachments if message else [],
                trigger=trigger,
                client_message_id=message.client_message_id if message else None,
                model=model,
                message_ref=data.validated_data.get("messageId") or None,
            )
        except TurnRefused as exc:
            raise refusal_error(exc) from exc
        return sse_response(sse_stream(turn_listen(handle=handle)))


class ChatStreamApi(AsyncAPIView):
    content_negotiation_class = StreamNegotiation

    @extend_schema(
        operation_id="chat_stream_resume",
        summary="Resume the running turn's stream",
        description="Replays the active turn from the chunk after `Last-Event-ID` (from the first chunk "
        "without it), then continues live. " + SSE_DESCRIPTION + " 204 when no turn is running.",
        parameters=[
            OpenApiParameter(
                "chat_id", str, OpenApiParameter.PATH, description="Session UUID or your chat id."
            ),
            OpenApiParameter(
                "Last-Event-ID",
                {"type": "integer", "minimum": -1},
                OpenApiParameter.HEADER,
                required=False,
                description="Sequence of the last chunk received (-1: from the start).",
            ),
        ],
        responses=with_errors(
            {(200, "text/event-stream"): SSE_RESPONSE, 204: OpenApiResponse(description="No active turn.")},
            400,
            404,
        ),
    )
    async def get(self, request: Request, chat_id: str) -> Any:
        log_context_bind(session_id=chat_id)
        raw = request.headers.get("Last-Event-ID")
        after = -1
        if raw is not None:  # present but empty is not an integer either
            try:
                after = int(raw)
            except ValueError:
                raise ApiError(
                    "Last-Event-ID must be an integer sequence.",
                    details={"Last-Event-ID": ["not an integer"]},
                ) from None
            if after < -1:
                raise ApiError("Last-Event-ID must be >= -1.", details={"Last-Event-ID": ["must be >= -1"]})
        try:
            subscription = await turn_subscribe(user=request.user, chat_id=chat_id, after_sequence=after)
        except TurnRefused as exc:
            raise refusal_error(exc) from exc
        if subscription is None:
            return Response(status=status.HTTP_204_NO_CONTENT)
        return sse_response(sse_stream(subscription))

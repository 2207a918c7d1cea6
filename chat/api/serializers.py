"""Serializers shared by several API views (each view keeps its own nested Input/Output
serializers; these are the common shapes) and the OpenAPI error responses."""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiSerializerFieldExtension
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiResponse, extend_schema_field
from rest_framework import serializers

from agents.approval import TOOL_MODES
from chat.preferences import instructions_limit, session_model
from chat.selectors import session_mcp_names

NO_NUL_PATTERN = "^[^\\u0000]*$"


class StrictCharField(serializers.CharField):
    """A JSON string and nothing else: DRF's CharField turns ``0`` or ``1.5`` into ``"0"``, which
    the schema (``type: string``) says is refused. Not trimmed (a trimmed value passed
    ``max_length`` although the string sent was longer). NUL characters are refused (DRF's
    CharField validator; PostgreSQL cannot store them), which the schema says with a pattern."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("trim_whitespace", False)
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictBooleanField(serializers.BooleanField):
    """A JSON ``true``/``false`` only (DRF's BooleanField also takes "yes", "on", 1, "0" …)."""

    def to_internal_value(self, data: Any) -> bool:
        if not isinstance(data, bool):
            self.fail("invalid", input=data)
        return data


class StrictIntegerField(serializers.IntegerField):
    """A JSON integer only (DRF's IntegerField also takes "5", 5.0 and true)."""

    def to_internal_value(self, data: Any) -> int:
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictCharFieldSchema(OpenApiSerializerFieldExtension):
    target_class = StrictCharField

    def map_serializer_field(self, auto_schema: Any, direction: str) -> dict[str, Any]:
        schema = auto_schema._map_serializer_field(self.target, direction, bypass_extensions=True)
        schema.setdefault("pattern", NO_NUL_PATTERN)
        return schema


class ErrorDetailSerializer(serializers.Serializer):
    code = serializers.CharField(
        help_text="Machine-readable error code, e.g. `not_found`, `stream_already_active`."
    )
    message = serializers.CharField(help_text="Human-readable explanation.")
    details = serializers.JSONField(required=False, help_text="Field errors for `invalid_request`.")


class ErrorSerializer(serializers.Serializer):
    error = ErrorDetailSerializer()


_ERRORS: dict[int, tuple[str, str, str]] = {
    400: (
        "invalid_request",
        "The request is invalid; see details.",
        "Validation failed (field errors under `error.details`).",
    ),
    401: (
        "not_authenticated",
        "Authentication credentials were not provided.",
        "Missing, invalid or revoked credentials.",
    ),
    403: (
        "permission_denied",
        "CSRF Failed: CSRF token missing.",
        "Session-authenticated write without a CSRF token.",
    ),
    404: ("not_found", "Not found.", "No such object for this user (another user's object looks the same)."),
    405: ("method_not_allowed", 'Method "PUT" not allowed.', "Method not allowed."),
    409: (
        "stream_already_active",
        "A turn is already running in this session.",
        "A turn is already running.",
    ),
    429: (
        "throttled",
        "Too many requests. Retry in 12 s.",
        "Throttled or over budget; see the `Retry-After` header.",
    ),
    503: (
        "unavailable",
        "The server is restarting. Please try again in a moment.",
        "This worker is shutting down; retry after `Retry-After` seconds.",
    ),
}


def error_responses(*statuses: int) -> dict[int, OpenApiResponse]:
    out = {}
    for status in statuses:
        code, message, description = _ERRORS[status]
        out[status] = OpenApiResponse(
            ErrorSerializer,
            description=description,
            examples=[
                OpenApiExample(
                    code, value={"error": {"code": code, "message": message}}, status_codes=[str(status)]
                )
            ],
        )
    return out


def with_errors(responses: dict[int, Any], *statuses: int) -> dict[int, Any]:
    return {**responses, **error_responses(401, 405, *statuses)}


class SessionSerializer(serializers.Serializer):
    id = serializers.UUIDField(help_text="The session UUID (also accepted wherever a chat id is).")
    client_id = serializers.CharField(
        help_text="The chat id the client chose (equals `id` for server-created sessions)."
    )
    title = serializers.CharField(allow_blank=True)
    archived = serializers.BooleanField()
    active = serializers.BooleanField(help_text="A turn is running in this session.")
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()
    last_activity_at = serializers.DateTimeField()
    # Per-chat settings (docs/api.md, "Per-chat settings").
    model = serializers.SerializerMethodField(
        help_text="The model the chat's next turn runs on: one of `GET /api/v1/models/` (the "
        "server default unless the chat chose another)."
    )
    instructions = serializers.CharField(
        allow_blank=True, help_text="The user's addition to the system prompt of this chat."
    )
    instructions_max_chars = serializers.SerializerMethodField(
        help_text="The longest `instructions` this server accepts (AGENT_INSTRUCTIONS_MAX_CHARS)."
    )
    tool_mode = serializers.ChoiceField(
        choices=list(TOOL_MODES),
        help_text="`auto`: tools run freely; `ask`: ask before each tool that can change something; "
        "`plan`: read-only tools until the user approves a plan.",
    )
    max_steps = serializers.IntegerField(
        min_value=0, help_text="Model calls per reply; 0: the server's limit (AGENT_MAX_TURNS)."
    )
    mcp_servers = serializers.SerializerMethodField(
        help_text="The MCP servers this chat uses (names from `GET /api/v1/mcp-servers/`); their "
        "tools reach the model as `mcp__<server>__<tool>`."
    )
    active_leaf = serializers.SerializerMethodField(
        help_text="The `id` of the newest message of the branch the chat shows and continues (its "
        "active path: docs/api.md, Branches); null for a chat without messages. `PATCH` it with "
        "any message `id` of the chat to switch branch. While a turn runs, the session's own "
        "resource gives the turn's newest message; the sessions list gives the leaf as it was "
        "when the turn started."
    )

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_active_leaf(self, obj: Any) -> str | None:
        leaf = getattr(obj, "leaf_id", obj.active_leaf_id)
        return None if leaf is None else str(leaf)

    @extend_schema_field(OpenApiTypes.STR)
    def get_model(self, obj: Any) -> str:
        return session_model(obj)

    @extend_schema_field(serializers.ListField(child=serializers.CharField()))
    def get_mcp_servers(self, obj: Any) -> list[str]:
        return session_mcp_names(session=obj)

    @extend_schema_field(OpenApiTypes.INT)
    def get_instructions_max_chars(self, obj: Any) -> int:
        return instructions_limit()


class MessageSerializer(serializers.Serializer):
    id = serializers.CharField(
        source="pk",
        help_text="The message's id (what `parent`, `siblings` and the session's `active_leaf` name).",
    )
    parent = serializers.CharField(
        source="parent_id",
        allow_null=True,
        help_text="The `id` of the message this one follows (null: the first).",
    )
    message_id = serializers.CharField(
        source="ui_id",
        help_text="The AI SDK UI message id: the client's id of a user message (an edit keeps the id "
        "of the message it edits), `msg-<turn id>` for a reply, as the stream's `start.messageId`.",
    )
    siblings = serializers.SerializerMethodField(
        help_text="The `id`s of the messages with the same parent and role, oldest first, this one "
        "included: the branches at this message (one: no branch)."
    )
    sequence = serializers.IntegerField(help_text="Per-session order: 0, 1, 2, …")
    role = serializers.CharField()
    kind = serializers.CharField(help_text="normal | error | retryable_error | stopped | system")
    text = serializers.CharField(allow_blank=True)
    parts = serializers.ListField(child=serializers.DictField(), help_text="AI SDK UI message parts.")
    metadata = serializers.DictField()
    created_at = serializers.DateTimeField()

    @extend_schema_field(serializers.ListField(child=serializers.CharField()))
    def get_siblings(self, obj: Any) -> list[str]:
        siblings = self.context.get("siblings", {}).get(obj.pk, [obj.pk])
        return [str(pk) for pk in siblings]

"""Sessions and their messages as resources."""

from __future__ import annotations

from typing import Any

from asgiref.sync import sync_to_async
from django.utils.http import urlencode
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.pagination import PageNumberPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from agents.approval import TOOL_MODES
from chat.api.base import AsyncAPIView
from chat.api.errors import request_invalid
from chat.api.exceptions import ConflictError
from chat.api.selectors import message_page, session_active_ids, session_leaf_ids, session_list_filtered
from chat.api.serializers import (
    MessageSerializer,
    SessionSerializer,
    StrictBooleanField,
    StrictCharField,
    StrictIntegerField,
    with_errors,
)
from chat.api.services import session_delete, session_update
from chat.api.views.common import get_session_or_404
from chat.preferences import MODELS_PATH, instructions_limit, max_steps_limit, model_list
from chat.runtime import turn_is_active, turn_stop_session
from chat.selectors import mcp_server_find_enabled, message_get_in_session, session_get_for_user
from chat.services import session_branch_switch, session_create

MESSAGES_DEFAULT_LIMIT = 50
MCP_SERVERS_PATH = "/api/v1/mcp-servers/"
MCP_SERVERS_MAX = 50
MESSAGES_MAX_LIMIT = 200
CHAT_ID = OpenApiParameter(
    "chat_id", str, OpenApiParameter.PATH, description="Session UUID or the client's chat id."
)


class NameListField(serializers.ListField):
    """A list of names whose bad item gives its own message (not DRF's ``{index: [...]}``)."""

    def run_child_validation(self, data: list[Any]) -> list[Any]:
        try:
            return super().run_child_validation(data)
        except serializers.ValidationError as exc:
            detail = exc.detail
            while isinstance(detail, (dict, list)) and detail:
                detail = next(iter(detail.values())) if isinstance(detail, dict) else detail[0]
            raise serializers.ValidationError(str(detail or "Not a valid name.")) from exc


class SessionPagination(PageNumberPagination):
    page_size = 20
    page_size_query_param = "page_size"
    max_page_size = 100


def _with_active(sessions: list[Any], *, live_leaf: bool = False) -> list[Any]:
    """``active`` for each session; ``live_leaf`` (one session's resource): its ``active_leaf``
    read live while a turn runs (lists show the stored one: no query per row)."""
    active = session_active_ids(session_ids=[s.pk for s in sessions])
    leaves = session_leaf_ids(sessions=sessions, active=active if live_leaf else set())
    for s in sessions:
        s.active = s.pk in active
        s.leaf_id = leaves[s.pk]
    return sessions


class SessionListApi(APIView):
    throttle_scope = "writes"

    class FilterSerializer(serializers.Serializer):
        class Meta:
            ref_name = "SessionFilter"

        search = StrictCharField(
            required=False, allow_blank=True, max_length=200, help_text="Substring of the title."
        )
        archived = serializers.ChoiceField(choices=["false", "true", "all"], required=False, default="false")
        page = serializers.IntegerField(required=False, min_value=1)
        page_size = serializers.IntegerField(
            required=False, min_value=1, max_value=SessionPagination.max_page_size
        )

    class ListOutputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "SessionPage"

        count = serializers.IntegerField()
        next = serializers.URLField(allow_null=True)
        previous = serializers.URLField(allow_null=True)
        results = SessionSerializer(many=True)

    class CreateInputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "SessionCreate"

        title = StrictCharField(required=False, allow_blank=True, max_length=200, default="")
        client_id = StrictCharField(
            trim_whitespace=False,
            required=False,
            max_length=200,
            help_text="Your own chat id for this session (default: the new UUID).",
        )

    @extend_schema(
        operation_id="sessions_list",
        summary="List your sessions",
        parameters=[FilterSerializer],
        responses=with_errors({200: ListOutputSerializer}, 400, 404),
        description="`404 not_found` for a `page` past the last one.",
    )
    def get(self, request: Request) -> Response:
        # A plain dict, not the QueryDict: DRF reads ``archived=`` / ``page=`` from a QueryDict as
        # "absent", which the schema (an enum, an integer) says is refused.
        filters = self.FilterSerializer(data=request.query_params.dict())
        filters.is_valid(raise_exception=True)
        qs = session_list_filtered(
            user=request.user,
            archived=filters.validated_data["archived"],
            search=filters.validated_data.get("search", ""),
        )
        paginator = SessionPagination()
        page = _with_active(paginator.paginate_queryset(qs, request, view=self) or [])
        return paginator.get_paginated_response(SessionSerializer(page, many=True).data)

    @extend_schema(
        operation_id="sessions_create",
        summary="Create a session",
        request=CreateInputSerializer,
        responses=with_errors({201: SessionSerializer}, 400, 403, 409, 429),
    )
    def post(self, request: Request) -> Response:
        data = self.CreateInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        client_id = data.validated_data.get("client_id")
        if client_id and session_get_for_user(user=request.user, chat_id=client_id) is not None:
            raise ConflictError("You already have a session with this id.", code="session_exists")
        session = session_create(owner=request.user, client_id=client_id, title=data.validated_data["title"])
        session.active = False
        return Response(SessionSerializer(session).data, status=status.HTTP_201_CREATED)


class SessionDetailApi(APIView):
    throttle_scope = "writes"

    class UpdateInputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "SessionUpdate"

        title = StrictCharField(required=False, allow_blank=True, max_length=200)
        archived = StrictBooleanField(required=False)
        tool_mode = serializers.ChoiceField(
            choices=list(TOOL_MODES),
            required=False,
            error_messages={
                "invalid_choice": "Unknown tool_mode '{input}': choose one of " + ", ".join(TOOL_MODES) + "."
            },
            help_text="`auto`: tools run freely; `ask`: ask before each tool that can change "
            "something; `plan`: read-only tools until the user approves a plan.",
        )

        def get_fields(self) -> dict[str, serializers.Field]:
            """The fields whose bounds are settings (the models offered, the instructions' length,
            the step limit), built per request so that the schema and the checks follow them."""
            fields = super().get_fields()
            fields["model"] = serializers.ChoiceField(
                choices=[m["id"] for m in model_list()],
                required=False,
                allow_null=True,
                error_messages={
                    "invalid_choice": "Unknown model '{input}': choose one of GET " + MODELS_PATH + "."
                },
                help_text=f"One of `GET {MODELS_PATH}`; null: the server default. The chat's next "
                "turn runs on it.",
            )
            fields["instructions"] = StrictCharField(
                required=False,
                allow_blank=True,
                max_length=instructions_limit(),
                error_messages={"max_length": "The instructions are longer than {max_length} characters."},
                help_text='Added to the system prompt of this chat\'s turns ("": none).',
            )
            steps = max_steps_limit()
            steps_text = f"max_steps must be an integer from 0 (the server default) to {steps}."
            fields["max_steps"] = StrictIntegerField(
                required=False,
                min_value=0,
                max_value=steps,
                error_messages={"invalid": steps_text, "min_value": steps_text, "max_value": steps_text},
                help_text=f"Model calls per reply, at most {steps}; 0: the server's limit.",
            )
            # Names from GET /api/v1/mcp-servers/; unknown or disabled ones are refused by the view
            # (the database is not read to build the schema: checks and schema generation run
            # before migrations).
            fields["active_leaf"] = StrictCharField(
                required=False,
                max_length=20,
                help_text="Switch branch (docs/api.md, Branches): the `id` of any message of this chat; "
                "the chat then shows and continues the branch through it (down to its newest "
                "messages). Refused while a turn runs (`409 stream_already_active`).",
            )
            fields["mcp_servers"] = NameListField(
                child=StrictCharField(max_length=100),
                required=False,
                max_length=MCP_SERVERS_MAX,
                help_text=f"The chat's MCP servers: names from `GET {MCP_SERVERS_PATH}` (replaces the "
                "list; `[]`: none).",
            )
            return fields

    @extend_schema(
        operation_id="sessions_retrieve",
        summary="Get a session",
        parameters=[CHAT_ID],
        responses=with_errors({200: SessionSerializer}, 404),
    )
    def get(self, request: Request, chat_id: str) -> Response:
        session = _with_active([get_session_or_404(user=request.user, chat_id=chat_id)], live_leaf=True)[0]
        return Response(SessionSerializer(session).data)

    @extend_schema(
        operation_id="sessions_update",
        summary="Rename, (un)archive or change the chat's settings",
        description="Per-chat settings (docs/api.md): `model` (one of `GET /api/v1/models/`; null: "
        "the server default), `instructions` (added to the system prompt), `tool_mode` (`auto`, "
        "`ask`, `plan`), `max_steps` (0: the server's limit) and `mcp_servers` (names from "
        "`GET /api/v1/mcp-servers/`). They apply from the chat's next "
        "turn. `active_leaf` switches branch (docs/api.md, Branches): a message `id` of this chat "
        "(else `400 invalid_request`), refused while a turn runs (`409 stream_already_active`). "
        "Bad values: `400 invalid_request` with the reason as the message.",
        parameters=[CHAT_ID],
        request=UpdateInputSerializer,
        responses=with_errors({200: SessionSerializer}, 400, 403, 404, 409, 429),
    )
    def patch(self, request: Request, chat_id: str) -> Response:
        session = get_session_or_404(user=request.user, chat_id=chat_id)
        data = self.UpdateInputSerializer(data=request.data)
        if not data.is_valid():
            raise request_invalid(data.errors)
        values = dict(data.validated_data)
        if "model" in values and values["model"] is None:
            values["model"] = ""  # null: follow the server default
        if "mcp_servers" in values:
            servers, unknown = mcp_server_find_enabled(names=values["mcp_servers"])
            if unknown:
                text = f"Unknown MCP server {unknown[0][:40]!r}: choose from GET {MCP_SERVERS_PATH}."
                raise request_invalid({"mcp_servers": [text]})
            values["mcp_servers"] = servers
        leaf_ref = values.pop("active_leaf", None)
        branch = None
        if leaf_ref is not None:
            branch = message_get_in_session(session=session, ref=leaf_ref)
            if branch is None:
                raise request_invalid({"active_leaf": ["No message of this chat has this id."]})
            if turn_is_active(session_id=session.pk):
                raise ConflictError(
                    "A turn is running in this chat; switch branch once it has ended.",
                    code="stream_already_active",
                )
        session = session_update(session=session, **values)
        if branch is not None:
            session_branch_switch(session=session, message=branch)
        return Response(SessionSerializer(_with_active([session], live_leaf=True)[0]).data)

    @extend_schema(
        operation_id="sessions_destroy",
        summary="Delete a session and its messages",
        parameters=[CHAT_ID],
        responses=with_errors({204: None}, 403, 404, 409, 429),
    )
    def delete(self, request: Request, chat_id: str) -> Response:
        session = get_session_or_404(user=request.user, chat_id=chat_id)
        if session_active_ids(session_ids=[session.pk]):
            raise ConflictError("A turn is running in this session; cancel it first.")
        session_delete(session=session)
        return Response(status=status.HTTP_204_NO_CONTENT)


class MessageListApi(APIView):
    class FilterSerializer(serializers.Serializer):
        class Meta:
            ref_name = "MessageFilter"

        after = serializers.IntegerField(
            required=False, min_value=-1, help_text="Only messages with a greater sequence."
        )
        path = serializers.ChoiceField(
            choices=["active", "all"],
            required=False,
            default="active",
            help_text="`active`: the active path only (the branch the chat shows); `all`: every "
            "message of the tree (docs/api.md, Branches).",
        )
        before = serializers.IntegerField(
            required=False, min_value=0, help_text="Only messages with a smaller sequence."
        )
        limit = serializers.IntegerField(
            required=False, min_value=1, max_value=MESSAGES_MAX_LIMIT, default=MESSAGES_DEFAULT_LIMIT
        )

    class OutputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "MessagePage"

        results = MessageSerializer(many=True)
        next = serializers.CharField(
            allow_null=True, help_text="URL of the following page (`after=` the last sequence)."
        )
        prev = serializers.CharField(
            allow_null=True, help_text="URL of the preceding page (`before=` the first sequence)."
        )

    @extend_schema(
        operation_id="sessions_messages_list",
        summary="List a session's messages by sequence",
        description="The active path (the branch the chat shows; `path=all`: every message of the "
        "tree), oldest first. With only `before`, the newest `limit` messages before it. "
        f"`limit` defaults to {MESSAGES_DEFAULT_LIMIT}, at most {MESSAGES_MAX_LIMIT}.",
        parameters=[CHAT_ID, FilterSerializer],
        responses=with_errors({200: OutputSerializer}, 400, 404),
    )
    def get(self, request: Request, chat_id: str) -> Response:
        session = get_session_or_404(user=request.user, chat_id=chat_id)
        filters = self.FilterSerializer(data=request.query_params.dict())
        filters.is_valid(raise_exception=True)
        after, before, limit = (filters.validated_data.get(k) for k in ("after", "before", "limit"))
        path = filters.validated_data["path"]
        page = message_page(session=session, after=after, before=before, limit=limit, path=path)
        base = request.build_absolute_uri(request.path)

        def link(**params: int) -> str:
            extra = {"path": path} if path != "active" else {}
            return f"{base}?{urlencode({**params, 'limit': limit, **extra})}"

        nxt = prev = None
        if page.messages:
            if page.has_next:
                nxt = link(after=page.messages[-1].sequence)
            if page.has_prev:
                prev = link(before=page.messages[0].sequence)
        out = self.OutputSerializer(
            {"results": page.messages, "next": nxt, "prev": prev}, context={"siblings": page.siblings}
        )
        return Response(out.data)


class SessionCancelApi(AsyncAPIView):
    throttle_scope = "writes"

    class OutputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "CancelResult"

        stopped = serializers.BooleanField(
            help_text="A running turn was told to stop (false: nothing was running)."
        )

    @extend_schema(
        operation_id="sessions_cancel",
        summary="Stop the running turn",
        parameters=[CHAT_ID],
        request=None,
        responses=with_errors({200: OutputSerializer}, 403, 404, 429),
    )
    async def post(self, request: Request, chat_id: str) -> Response:
        session = await sync_to_async(get_session_or_404)(user=request.user, chat_id=chat_id)
        stopped = await turn_stop_session(session_id=session.pk)
        return Response(self.OutputSerializer({"stopped": bool(stopped)}).data)


__all__ = ["SessionListApi", "SessionDetailApi", "MessageListApi", "SessionCancelApi"]

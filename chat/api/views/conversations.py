"""Export, import and share a chat (docs/api.md "Export, import and share")."""

from __future__ import annotations

import json
from typing import Any

from django.http import HttpResponse
from django.urls import reverse
from django.utils.http import content_disposition_header
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from chat.api.errors import request_invalid
from chat.api.exceptions import ApiError, NotFoundError
from chat.api.serializers import SessionSerializer, StrictBooleanField, StrictIntegerField, with_errors
from chat.api.views.chat import StreamNegotiation
from chat.api.views.common import get_session_or_404
from chat.api.views.sessions import CHAT_ID
from chat.conversations import (
    IMPORT_MAX_BYTES,
    IMPORT_MAX_MESSAGES,
    IMPORT_MAX_PARTS,
    IMPORT_TITLE_CHARS,
    SHARE_MAX_DAYS,
    ConversationInvalid,
    conversation_import_parse,
    session_export_markdown,
    session_export_messages,
    session_import,
    share_create,
    share_get_for_session,
    share_list_for_session,
    share_revoke,
    share_token,
)
from chat.protocol import MAX_ID_CHARS

EXPORT_FORMATS = ("md", "json")
UI_MESSAGE_SCHEMA = {
    "type": "object",
    "required": ["role", "parts"],
    "properties": {
        "id": {"type": "string", "maxLength": MAX_ID_CHARS},
        "role": {"type": "string", "enum": ["user", "assistant", "system"]},
        "parts": {
            "type": "array",
            "maxItems": IMPORT_MAX_PARTS,
            "items": {"type": "object", "additionalProperties": True},
        },
        "metadata": {"type": "object", "additionalProperties": True},
    },
}
IMPORT_LIST_SCHEMA = {
    "type": "array",
    "minItems": 1,
    "maxItems": IMPORT_MAX_MESSAGES,
    "items": UI_MESSAGE_SCHEMA,
}


class SessionExportApi(APIView):
    # Not DRF's format negotiation: ``?format=md`` names the export's format, not a renderer.
    content_negotiation_class = StreamNegotiation

    class FilterSerializer(serializers.Serializer):
        class Meta:
            ref_name = "ExportFilter"

        format = serializers.ChoiceField(
            choices=list(EXPORT_FORMATS),
            required=False,
            default="json",
            help_text="`md`: a readable Markdown transcript; `json`: AI SDK `UIMessage[]`.",
        )

    @extend_schema(
        operation_id="sessions_export",
        summary="Export a chat (Markdown or AI SDK UIMessage[] JSON)",
        description="A download (`Content-Disposition: attachment`). `json`: the chat's messages as "
        "AI SDK `UIMessage[]` (`{id, role, parts, metadata: {sequence, createdAt}}`), error and "
        "stopped markers left out; `POST /api/v1/sessions/import/` takes it back. `md`: the title, "
        "each message under its role, tool calls with their input and output in fenced blocks, "
        "markers as notes.",
        parameters=[CHAT_ID, FilterSerializer],
        responses=with_errors(
            {
                (200, "application/json"): OpenApiResponse(
                    {"type": "array", "items": UI_MESSAGE_SCHEMA}, description="`format=json`"
                ),
                (200, "text/markdown"): OpenApiResponse(OpenApiTypes.STR, description="`format=md`"),
            },
            400,
            404,
        ),
    )
    def get(self, request: Request, chat_id: str) -> Any:
        session = get_session_or_404(user=request.user, chat_id=chat_id)
        filters = self.FilterSerializer(data=request.query_params.dict())
        if not filters.is_valid():
            raise request_invalid(filters.errors)
        fmt = filters.validated_data["format"]
        if fmt == "md":
            body = session_export_markdown(session=session).encode("utf-8")
            response = HttpResponse(body, content_type="text/markdown; charset=utf-8")
        else:
            messages = session_export_messages(session=session)
            body = json.dumps(messages, ensure_ascii=False, indent=1).encode("utf-8")
            response = HttpResponse(body, content_type="application/json")
        response["Content-Disposition"] = content_disposition_header(True, f"chat-{session.pk}.{fmt}")
        response["X-Content-Type-Options"] = "nosniff"
        return response


class SessionImportApi(APIView):
    throttle_scope = "writes"

    @extend_schema(
        operation_id="sessions_import",
        summary="Import a chat from its JSON export",
        description="The body is what `GET /api/v1/sessions/{chat_id}/export/?format=json` gives: an "
        "AI SDK `UIMessage[]` (or `{title?, messages}`). It becomes a new chat of yours (messages "
        f"in order, sequences 0..n-1). At most {IMPORT_MAX_MESSAGES} messages and "
        f"{IMPORT_MAX_BYTES // (1024 * 1024)} MiB; roles `user`, `assistant`, `system`; parts of "
        "known AI SDK types (`text`, `reasoning`, `file`, `step-start`, `source-*`, `tool-*`, "
        "`dynamic-tool`, `data-*`); strings without NUL or lone surrogates. Otherwise "
        "`400 invalid_request`.",
        request={
            "application/json": {
                "oneOf": [
                    IMPORT_LIST_SCHEMA,
                    {
                        "type": "object",
                        "required": ["messages"],
                        "properties": {
                            "title": {"type": "string", "maxLength": IMPORT_TITLE_CHARS},
                            "messages": IMPORT_LIST_SCHEMA,
                        },
                    },
                ]
            }
        },
        examples=[
            OpenApiExample(
                "Import",
                request_only=True,
                value=[
                    {"id": "m1", "role": "user", "parts": [{"type": "text", "text": "Hello"}]},
                    {"id": "m2", "role": "assistant", "parts": [{"type": "text", "text": "Hi!"}]},
                ],
            )
        ],
        responses=with_errors({201: SessionSerializer}, 400, 403, 429),
    )
    def post(self, request: Request) -> Response:
        length = request.META.get("CONTENT_LENGTH") or ""
        if length.isdigit() and int(length) > IMPORT_MAX_BYTES:
            raise ApiError(f"The import is larger than {IMPORT_MAX_BYTES // (1024 * 1024)} MiB.")
        try:
            conversation = conversation_import_parse(request.data)
        except ConversationInvalid as exc:
            raise ApiError(exc.message, details={"messages": [exc.message]}) from None
        session = session_import(user=request.user, conversation=conversation)
        session.active = False
        return Response(SessionSerializer(session).data, status=status.HTTP_201_CREATED)


class ShareSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    url = serializers.CharField(help_text="The public read-only page (no login): `/s/<token>/`.")
    token = serializers.CharField(help_text="Signed; worthless once the share is revoked or expired.")
    include_tool_outputs = serializers.BooleanField()
    created_at = serializers.DateTimeField()
    expires_at = serializers.DateTimeField(allow_null=True)


def _share_data(request: Request, share: Any) -> dict[str, Any]:
    token = share_token(share=share)
    return {
        "id": share.id,
        "url": request.build_absolute_uri(reverse("share", kwargs={"token": token})),
        "token": token,
        "include_tool_outputs": share.include_tool_outputs,
        "created_at": share.created_at,
        "expires_at": share.expires_at,
    }


class ShareListApi(APIView):
    throttle_scope = "writes"

    class CreateInputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "ShareCreate"

        include_tool_outputs = StrictBooleanField(
            required=False, default=False, help_text="Show the tool calls' outputs on the page."
        )
        expires_in_days = StrictIntegerField(
            required=False,
            allow_null=True,
            min_value=1,
            max_value=SHARE_MAX_DAYS,
            help_text="The link stops working after this many days (absent or null: never).",
        )

    @extend_schema(
        operation_id="sessions_shares_list",
        summary="List the chat's live shares",
        parameters=[CHAT_ID],
        responses=with_errors({200: ShareSerializer(many=True)}, 404),
    )
    def get(self, request: Request, chat_id: str) -> Response:
        session = get_session_or_404(user=request.user, chat_id=chat_id)
        shares = share_list_for_session(session=session)
        return Response(ShareSerializer([_share_data(request, s) for s in shares], many=True).data)

    @extend_schema(
        operation_id="sessions_shares_create",
        summary="Share the chat: a public read-only link",
        description="The page shows a snapshot of the chat as it is now (title and messages; tool "
        "outputs only with `include_tool_outputs`); later messages do not appear. Revoke it with "
        "`DELETE /api/v1/sessions/{chat_id}/shares/{share_id}/`.",
        parameters=[CHAT_ID],
        request=CreateInputSerializer,
        responses=with_errors({201: ShareSerializer}, 400, 403, 404, 429),
    )
    def post(self, request: Request, chat_id: str) -> Response:
        session = get_session_or_404(user=request.user, chat_id=chat_id)
        data = self.CreateInputSerializer(data=request.data)
        if not data.is_valid():
            raise request_invalid(data.errors)
        share = share_create(
            session=session,
            include_tool_outputs=data.validated_data["include_tool_outputs"],
            expires_in_days=data.validated_data.get("expires_in_days"),
        )
        return Response(ShareSerializer(_share_data(request, share)).data, status=status.HTTP_201_CREATED)


class ShareDetailApi(APIView):
    throttle_scope = "writes"

    @extend_schema(
        operation_id="sessions_shares_destroy",
        summary="Revoke a share (its link answers 404 from now on)",
        parameters=[CHAT_ID, OpenApiParameter("share_id", str, OpenApiParameter.PATH)],
        responses=with_errors({204: None}, 403, 404, 429),
    )
    def delete(self, request: Request, chat_id: str, share_id: str) -> Response:
        session = get_session_or_404(user=request.user, chat_id=chat_id)
        share = share_get_for_session(session=session, share_id=share_id)
        if share is None:
            raise NotFoundError()
        share_revoke(share=share)
        return Response(status=status.HTTP_204_NO_CONTENT)


__all__ = ["SessionExportApi", "SessionImportApi", "ShareListApi", "ShareDetailApi"]

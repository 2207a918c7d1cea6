"""The MCP servers a chat may use (the operator's ``chat.McpServer`` rows that are enabled;
docs/api.md "MCP servers")."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from chat.api.serializers import with_errors
from chat.selectors import mcp_server_list_enabled


class McpServerSerializer(serializers.Serializer):
    class Meta:
        ref_name = "McpServer"

    name = serializers.CharField(
        help_text="The value to put in a chat's `mcp_servers`; its tools are `mcp__<name>__<tool>`."
    )
    description = serializers.CharField(allow_blank=True)
    transport = serializers.ChoiceField(choices=["stdio", "http"])


class McpServerListApi(APIView):
    @extend_schema(
        operation_id="mcp_servers_list",
        summary="The MCP servers a chat may use",
        description="The operator's enabled MCP servers, by name. Enable them per chat with "
        '`PATCH /api/v1/sessions/{chat_id}/` `{"mcp_servers": [names]}`; their tool calls ask '
        "for approval unless a tool rule says otherwise.",
        responses=with_errors({200: McpServerSerializer(many=True)}),
    )
    def get(self, request: Request) -> Response:
        return Response(McpServerSerializer(mcp_server_list_enabled(), many=True).data)

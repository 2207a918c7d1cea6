"""The models a chat may choose (the operator's ``AGENT_MODELS``; docs/api.md, "Per-chat settings")."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from chat.api.serializers import with_errors
from chat.preferences import model_list


class ModelPricesSerializer(serializers.Serializer):
    class Meta:
        ref_name = "ModelPrices"

    input = serializers.FloatField(help_text="USD per million input tokens.")
    output = serializers.FloatField(help_text="USD per million output tokens.")
    cache_read = serializers.FloatField(help_text="USD per million cache-read tokens.")
    cache_write = serializers.FloatField(help_text="USD per million cache-write tokens.")


class ModelSerializer(serializers.Serializer):
    class Meta:
        ref_name = "Model"

    id = serializers.CharField(help_text="The model id: the value of a chat's `model` and of `body.model`.")
    name = serializers.CharField(help_text="The name to show.")
    default = serializers.BooleanField(help_text="The server default (a chat that chose no model).")
    prices = ModelPricesSerializer(
        allow_null=True, help_text="The operator's prices for this model; null when none were given."
    )


class ModelListApi(APIView):
    @extend_schema(
        operation_id="models_list",
        summary="The models a chat may use",
        description="The operator's allow-list (`AGENT_MODELS`) in its order; the default "
        "(`default: true`) is always in it. Set a chat's model with "
        "`PATCH /api/v1/sessions/{chat_id}/` or a chat request's `body.model`.",
        responses=with_errors({200: ModelSerializer(many=True)}),
    )
    def get(self, request: Request) -> Response:
        return Response(ModelSerializer(model_list(), many=True).data)

"""The caller's token usage and remaining budget."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from chat.api.selectors import usage_summary_for_user
from chat.api.serializers import with_errors


class UsageWindowSerializer(serializers.Serializer):
    start = serializers.DateTimeField()
    resets_at = serializers.DateTimeField()
    input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    cache_read_tokens = serializers.IntegerField()
    cache_write_tokens = serializers.IntegerField()
    weighted_tokens = serializers.IntegerField(help_text="Budget units used (tokens weighted by price).")
    cost_usd = serializers.DecimalField(max_digits=14, decimal_places=6, coerce_to_string=False)
    budget = serializers.IntegerField(help_text="Limit of the window, in weighted tokens.")
    reserved = serializers.IntegerField(help_text="Held for turns running now.")
    remaining = serializers.IntegerField()


class UsageApi(APIView):
    class OutputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "Usage"

        unit = serializers.CharField()
        day = UsageWindowSerializer(help_text="The current UTC day.")
        week = UsageWindowSerializer(help_text="The current ISO week (from Monday 00:00 UTC).")

    @extend_schema(
        operation_id="usage_retrieve",
        summary="Your token usage, cost and remaining budget",
        responses=with_errors({200: OutputSerializer}),
    )
    def get(self, request: Request) -> Response:
        return Response(self.OutputSerializer(usage_summary_for_user(user=request.user)).data)

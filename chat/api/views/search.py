"""Full-text search over the caller's own chats (docs/api.md "Search", chat.search)."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from chat.api.serializers import StrictCharField, with_errors
from chat.search import SEARCH_LIMIT_DEFAULT, SEARCH_LIMIT_MAX, SEARCH_QUERY_MAX_LENGTH
from chat.selectors import message_search_for_user


class SearchSessionSerializer(serializers.Serializer):
    class Meta:
        ref_name = "SearchSession"

    id = serializers.UUIDField()
    title = serializers.CharField(allow_blank=True)
    archived = serializers.BooleanField()


class SearchMessageSerializer(serializers.Serializer):
    class Meta:
        ref_name = "SearchMessage"

    id = serializers.IntegerField()
    sequence = serializers.IntegerField(help_text="Its place in the chat (`messages/?after=` cursors).")
    role = serializers.ChoiceField(choices=["user", "assistant"])


class SearchApi(APIView):
    class FilterSerializer(serializers.Serializer):
        class Meta:
            ref_name = "SearchFilter"

        q = StrictCharField(
            min_length=1,
            max_length=SEARCH_QUERY_MAX_LENGTH,
            help_text="Words to find (all of them; the last one as a prefix). Anything but letters "
            "and digits only separates words.",
        )
        limit = serializers.IntegerField(
            required=False, min_value=1, max_value=SEARCH_LIMIT_MAX, default=SEARCH_LIMIT_DEFAULT
        )

    class OutputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "SearchResults"

        class HitSerializer(serializers.Serializer):
            class Meta:
                ref_name = "SearchHit"

            session = SearchSessionSerializer()
            message = SearchMessageSerializer(
                allow_null=True, help_text="The matching message; null when the chat's title matched."
            )
            snippet = serializers.CharField(
                allow_blank=True, help_text="Plain text around the match (render it as text)."
            )
            highlights = serializers.ListField(
                child=serializers.ListField(child=serializers.IntegerField(), min_length=2, max_length=2),
                help_text="The matched words in `snippet`: `[start, end)` offsets in code points.",
            )

        results = HitSerializer(many=True)

    @extend_schema(
        operation_id="search",
        summary="Search your chats",
        description="Full-text search over your chats' titles and their user and assistant "
        "messages (archived chats included, flagged). Chats whose title matches come first (at "
        "most 5), then messages, best first; at most `limit` results, not paginated.",
        parameters=[FilterSerializer],
        responses=with_errors({200: OutputSerializer}, 400),
    )
    def get(self, request: Request) -> Response:
        filters = self.FilterSerializer(data=request.query_params.dict())
        filters.is_valid(raise_exception=True)
        hits = message_search_for_user(
            user=request.user, query=filters.validated_data["q"], limit=filters.validated_data["limit"]
        )
        return Response(self.OutputSerializer({"results": hits}).data)

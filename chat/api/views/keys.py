"""API keys: list, create (the full key is returned once), revoke."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from chat.api.exceptions import NotFoundError
from chat.api.serializers import StrictCharField, with_errors
from chat.apikeys import api_key_create, api_key_get_for_user, api_key_list_for_user, api_key_revoke


class KeySerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    prefix = serializers.CharField(help_text="Public handle: the key starts with `cps_<prefix>_`.")
    created_at = serializers.DateTimeField()
    last_used_at = serializers.DateTimeField(allow_null=True, help_text="Updated at most once a minute.")
    revoked = serializers.SerializerMethodField()
    revoked_at = serializers.DateTimeField(allow_null=True)

    def get_revoked(self, obj: object) -> bool:
        return getattr(obj, "revoked_at", None) is not None


class KeyListApi(APIView):
    throttle_scope = "writes"

    class CreateInputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "ApiKeyCreate"

        name = StrictCharField(max_length=100, trim_whitespace=False)

    class CreateOutputSerializer(KeySerializer):
        class Meta:
            ref_name = "ApiKeyCreated"

        key = serializers.CharField(help_text="The full key. Shown only in this response; store it now.")

    @extend_schema(
        operation_id="keys_list",
        summary="List your API keys (never the secret)",
        responses=with_errors({200: KeySerializer(many=True)}),
    )
    def get(self, request: Request) -> Response:
        return Response(KeySerializer(api_key_list_for_user(user=request.user), many=True).data)

    @extend_schema(
        operation_id="keys_create",
        summary="Create an API key",
        request=CreateInputSerializer,
        responses=with_errors({201: CreateOutputSerializer}, 400, 403, 429),
    )
    def post(self, request: Request) -> Response:
        data = self.CreateInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        api_key, full_key = api_key_create(owner=request.user, name=data.validated_data["name"])
        api_key.key = full_key
        return Response(self.CreateOutputSerializer(api_key).data, status=status.HTTP_201_CREATED)


class KeyDetailApi(APIView):
    throttle_scope = "writes"

    @extend_schema(
        operation_id="keys_revoke",
        summary="Revoke an API key",
        parameters=[OpenApiParameter("key_id", int, OpenApiParameter.PATH)],
        responses=with_errors({204: None}, 403, 404, 429),
    )
    def delete(self, request: Request, key_id: int) -> Response:
        api_key = api_key_get_for_user(user=request.user, key_id=key_id)
        if api_key is None:
            raise NotFoundError()
        api_key_revoke(api_key=api_key)
        return Response(status=status.HTTP_204_NO_CONTENT)

"""/api/v1/ routes (CONTRACT §4)."""

from django.urls import path, re_path, register_converter
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

from chat.api.views.agent_models import ModelListApi
from chat.api.views.chat import ChatApi, ChatStreamApi
from chat.api.views.conversations import SessionExportApi, SessionImportApi, ShareDetailApi, ShareListApi
from chat.api.views.files import FileDetailApi, FileListApi, FileZipApi, WorkspacePathConverter
from chat.api.views.keys import KeyDetailApi, KeyListApi
from chat.api.views.mcp_servers import McpServerListApi
from chat.api.views.misc import ApiNotFound
from chat.api.views.search import SearchApi
from chat.api.views.sessions import MessageListApi, SessionCancelApi, SessionDetailApi, SessionListApi
from chat.api.views.usage import UsageApi

app_name = "api"
register_converter(WorkspacePathConverter, "workspace_path")


class _NotInSchema(AutoSchema):
    """Aliases stay out of the schema. (Not ``@extend_schema(exclude=True)``: on a class it wraps
    the handlers in sync functions, which would turn these async views into sync ones.)"""

    def is_excluded(self) -> bool:
        return True


class ChatApiNoSlash(ChatApi):
    """``/api/v1/chat`` — what an AI SDK client posts to with ``api: "/api/v1/chat"``."""

    schema = _NotInSchema()


class ChatStreamApiNoSlash(ChatStreamApi):
    """``/api/v1/chat/<id>/stream`` — the AI SDK's default reconnect URL."""

    schema = _NotInSchema()


urlpatterns = [
    path("sessions/", SessionListApi.as_view(), name="sessions"),
    path("sessions/import/", SessionImportApi.as_view(), name="sessions-import"),
    path("sessions/<str:chat_id>/", SessionDetailApi.as_view(), name="session"),
    path("sessions/<str:chat_id>/export/", SessionExportApi.as_view(), name="session-export"),
    path("sessions/<str:chat_id>/shares/", ShareListApi.as_view(), name="session-shares"),
    path("sessions/<str:chat_id>/shares/<str:share_id>/", ShareDetailApi.as_view(), name="session-share"),
    path("sessions/<str:chat_id>/messages/", MessageListApi.as_view(), name="session-messages"),
    path("sessions/<str:chat_id>/cancel/", SessionCancelApi.as_view(), name="session-cancel"),
    path("sessions/<str:chat_id>/files/", FileListApi.as_view(), name="session-files"),
    path("sessions/<str:chat_id>/files/<workspace_path:file_path>", FileDetailApi.as_view(), name="file"),
    path("sessions/<str:chat_id>/files.zip", FileZipApi.as_view(), name="session-files-zip"),
    path("chat/", ChatApi.as_view(), name="chat"),
    path("chat", ChatApiNoSlash.as_view()),
    path("chat/<str:chat_id>/stream/", ChatStreamApi.as_view(), name="chat-stream"),
    path("chat/<str:chat_id>/stream", ChatStreamApiNoSlash.as_view()),
    path("usage/", UsageApi.as_view(), name="usage"),
    path("models/", ModelListApi.as_view(), name="models"),
    path("mcp-servers/", McpServerListApi.as_view(), name="mcp-servers"),
    path("search/", SearchApi.as_view(), name="search"),
    path("keys/", KeyListApi.as_view(), name="keys"),
    path("keys/<int:key_id>/", KeyDetailApi.as_view(), name="key"),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="api:schema"), name="docs"),
    path("redoc/", SpectacularRedocView.as_view(url_name="api:schema"), name="redoc"),
    re_path(r"^.*$", ApiNotFound.as_view()),
]

"""A chat's workspace files (CONTRACT §6 "Workspace files"; docs/api.md, docs/security.md §3).

- ``GET  sessions/<id>/files/``       the regular files, paginated (``path``, ``size``, ``modified``);
- ``GET  sessions/<id>/files/<path>`` one file, streamed as an attachment (``?inline=1``: a
  preview, for raster images and text only);
- ``PUT  sessions/<id>/files/<path>`` uploads the raw body there (atomically, size- and
  quota-bounded, owned like the agent's files);
- ``GET  sessions/<id>/files.zip``     the whole workspace as one ZIP, streamed.

The chat is looked up like every session route (another user's chat is a 404 like a missing one).
The file system work, which must not trust a path string while the agent changes the workspace
concurrently, is ``agents.workspace_files``. What goes out is never served as something a
browser would run from the app's origin: HTML, SVG, XML and scripts are
``application/octet-stream`` attachments, every file response carries ``nosniff`` and
``Content-Security-Policy: sandbox``, and a preview is a raster image or ``text/plain``.
"""

from __future__ import annotations

import mimetypes
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

from asgiref.sync import sync_to_async
from django.http import FileResponse, StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.pagination import PageNumberPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from agents.jail import jail_config
from agents.sandbox import SandboxViolation, workspace_for, workspace_locate
from agents.workspace_files import (
    CHUNK_BYTES,
    WorkspaceFileError,
    workspace_file_open,
    workspace_file_write,
    workspace_files_list,
    workspace_path_parse,
    workspace_zip_stream,
)
from chat.api.errors import request_invalid
from chat.api.exceptions import ApiError, NotFoundError
from chat.api.serializers import ErrorSerializer, with_errors
from chat.api.views.common import get_session_or_404
from chat.config import chat_config

CHAT_ID = OpenApiParameter(
    "chat_id", str, OpenApiParameter.PATH, description="Session UUID or the client's chat id."
)
# A relative POSIX path: components of anything but '/', '\' and control characters, none of
# them '.' or '..' (the pattern spells "not '.' or '..'" without lookarounds).
_NAME_CHAR = r"[^/\\\x00-\x1f\x7f]"
_NAME_START = r"[^/\\\x00-\x1f\x7f.]"
_COMPONENT = rf"(?:{_NAME_START}{_NAME_CHAR}*|\.{_NAME_START}{_NAME_CHAR}*|\.\.{_NAME_CHAR}+)"
FILE_PATH_PATTERN = rf"^{_COMPONENT}(?:/{_COMPONENT})*$"
FILE_PATH = OpenApiParameter(
    "file_path",
    str,
    OpenApiParameter.PATH,
    pattern=FILE_PATH_PATTERN,
    description="The file's path relative to the workspace, POSIX (`/` between directories; "
    "percent-encode other reserved characters). No `.` or `..` component, no absolute path, "
    "backslash or control character: those are `400 invalid_request`.",
)

RASTER_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})
# Served with their own type (always as attachments unless previewed): nothing a browser runs.
DOWNLOAD_TYPES = RASTER_TYPES | {
    "text/plain",
    "text/csv",
    "text/markdown",
    "application/json",
    "application/pdf",
    "application/zip",
    "application/gzip",
    "application/x-tar",
    "application/x-xz",
    "application/x-bzip2",
    "audio/mpeg",
    "audio/ogg",
    "video/mp4",
    "video/webm",
}
OCTET_STREAM = "application/octet-stream"
TEXT_PREVIEW_TYPE = "text/plain; charset=utf-8"
# Types whose content is text (previewed as text/plain: shown, never interpreted).
_TEXTUAL_TYPES = frozenset(
    {
        "application/json",
        "application/javascript",
        "application/xml",
        "application/x-sh",
        "application/x-csh",
        "application/toml",
        "application/yaml",
        "application/x-yaml",
        "application/sql",
        "image/svg+xml",
    }
)
SNIFF_BYTES = 8192
# Headers on every file response (the API's own JSON errors keep the usual ones).
FILE_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "sandbox",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Cache-Control": "private, no-cache",
}


def content_disposition(disposition: str, filename: str) -> str:
    """``attachment``/``inline`` with an ASCII ``filename`` fallback and the exact name as
    ``filename*`` (RFC 6266 / RFC 8187): no quote, backslash or control character reaches the
    header unescaped."""
    fallback = "".join(c if 0x20 <= ord(c) < 0x7F and c not in '"\\' else "_" for c in filename) or "file"
    return f"{disposition}; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


def file_type_guess(name: str) -> str | None:
    guessed, encoding = mimetypes.guess_type(name, strict=False)
    if encoding:  # foo.tar.gz is a gzip file, not a tar one (and is never unpacked on the fly)
        return {"gzip": "application/gzip", "xz": "application/x-xz", "bzip2": "application/x-bzip2"}.get(
            encoding, OCTET_STREAM
        )
    return guessed


def _textual(content_type: str | None) -> bool:
    if content_type is None:
        return True  # no extension (Makefile, LICENSE): the content decides
    return (
        content_type.startswith("text/")
        or content_type in _TEXTUAL_TYPES
        or content_type.endswith(("+json", "+xml"))
    )


class WorkspacePathConverter:
    """``<workspace_path:file_path>``: any non-empty rest of the URL, line breaks included (Django's
    ``path`` converter stops at one, and the request would miss this route and its 400)."""

    regex = "(?s:.+)"

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value


class _AnyRendererNegotiation(BaseContentNegotiation):
    """Files are not rendered by DRF: any ``Accept`` is fine (errors still go out as JSON)."""

    def select_parser(self, request: Any, parsers: list[Any]) -> Any:
        return parsers[0] if parsers else None

    def select_renderer(self, request: Any, renderers: list[Any], format_suffix: str | None = None) -> Any:
        return renderers[0], renderers[0].media_type


class ThreadedStreamMixin:
    """Serve a blocking iterator (file reads, ZIP deflating) over ASGI one chunk at a time, each
    pulled in a worker thread: Django would otherwise collect a sync iterator into one list
    before sending it (``StreamingHttpResponse.__aiter__``), the whole file in memory."""

    streaming_content: Any

    async def __aiter__(self) -> AsyncIterator[bytes]:
        iterator = iter(self.streaming_content)
        pull = sync_to_async(next, thread_sensitive=False)
        while True:
            chunk = await pull(iterator, None)
            if chunk is None:
                return
            yield chunk


class WorkspaceFileResponse(ThreadedStreamMixin, FileResponse):
    block_size = CHUNK_BYTES


class WorkspaceZipResponse(ThreadedStreamMixin, StreamingHttpResponse):
    pass


def _file_error(exc: WorkspaceFileError) -> ApiError:
    if exc.kind == "missing":
        return NotFoundError()
    if exc.kind == "too_large":
        return ApiError(
            exc.message, code="request_too_large", status_code=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
        )
    if exc.kind == "quota":
        return ApiError(
            exc.message, code="quota_exceeded", status_code=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
        )
    return ApiError(exc.message, details={"file_path": [exc.message]})


def _parts(file_path: str) -> tuple[str, ...]:
    try:
        return workspace_path_parse(file_path)
    except WorkspaceFileError as exc:
        raise _file_error(exc) from None


class WorkspaceFileSerializer(serializers.Serializer):
    path = serializers.CharField(help_text="Relative to the workspace, POSIX (`/` between directories).")
    size = serializers.IntegerField(help_text="Bytes.")
    modified = serializers.DateTimeField(help_text="Last modification (ISO 8601, UTC).")


class FilePagination(PageNumberPagination):
    page_size = 100
    page_size_query_param = "page_size"
    max_page_size = 1000


ERROR_413 = OpenApiResponse(
    ErrorSerializer,
    description="`request_too_large` (the upload is over AGENT_UPLOAD_MAX_MB), `quota_exceeded` "
    "(it would take the workspace over AGENT_WORKSPACE_QUOTA_MB) or `workspace_too_large` (the ZIP).",
    examples=[
        OpenApiExample(
            "quota_exceeded",
            value={
                "error": {
                    "code": "quota_exceeded",
                    "message": "This upload would put the workspace of this chat over its quota of "
                    "1024 MB (1000 MB are used). Delete files to make room.",
                }
            },
            status_codes=["413"],
        )
    ],
)


class FileListApi(APIView):
    class FilterSerializer(serializers.Serializer):
        class Meta:
            ref_name = "FileFilter"

        page = serializers.IntegerField(required=False, min_value=1)
        page_size = serializers.IntegerField(
            required=False, min_value=1, max_value=FilePagination.max_page_size
        )
        hidden = serializers.ChoiceField(
            choices=["true", "false"],
            required=False,
            default="true",
            help_text="`false`: leave out names starting with a dot (and what is below them).",
        )

    class ListOutputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "FilePage"

        count = serializers.IntegerField()
        next = serializers.URLField(allow_null=True)
        previous = serializers.URLField(allow_null=True)
        results = WorkspaceFileSerializer(many=True)
        truncated = serializers.BooleanField(
            help_text="The walk stopped at AGENT_WORKSPACE_FILES_MAX entries (or 64 directories "
            "deep): the workspace may hold files this list does not show."
        )

    @extend_schema(
        operation_id="sessions_files_list",
        summary="List the files of a chat's workspace",
        description="The workspace's regular files, recursively, sorted by path. Symbolic links, "
        "FIFOs, sockets and devices are not listed, nor names that are not valid UTF-8 or hold a "
        "backslash or a control character (no file route can address them). A chat whose agent "
        "never ran lists empty. `404 not_found` for a `page` past the last one.",
        parameters=[CHAT_ID, FilterSerializer],
        responses=with_errors({200: ListOutputSerializer}, 400, 404),
    )
    def get(self, request: Request, chat_id: str) -> Response:
        session = get_session_or_404(user=request.user, chat_id=chat_id)
        filters = self.FilterSerializer(data=request.query_params.dict())
        if not filters.is_valid():
            raise request_invalid(filters.errors)
        listing = workspace_files_list(
            workspace_locate(str(session.pk)),
            limit=chat_config().workspace_files_max,
            hidden=filters.validated_data["hidden"] == "true",
        )
        paginator = FilePagination()
        page = paginator.paginate_queryset(listing.files, request, view=self) or []
        response = paginator.get_paginated_response(WorkspaceFileSerializer(page, many=True).data)
        response.data["truncated"] = listing.truncated
        return response


class FileDetailApi(APIView):
    throttle_scope = "writes"
    content_negotiation_class = _AnyRendererNegotiation

    class DownloadFilterSerializer(serializers.Serializer):
        class Meta:
            ref_name = "FileDownloadFilter"

        inline = serializers.ChoiceField(
            choices=["0", "1", "false", "true"],
            required=False,
            default="0",
            help_text="`1`: a preview, only for PNG, JPEG, GIF and WebP images (their own type) "
            "and text (as `text/plain; charset=utf-8`); anything else is `400 invalid_request`.",
        )

    @extend_schema(
        operation_id="sessions_files_download",
        summary="Download one file of the workspace",
        description="Streams the file as an attachment (`Content-Disposition` with `filename*`). "
        "Its type is kept only for harmless types (images, plain text, CSV, JSON, PDF, archives, "
        "media); HTML, SVG, XML, scripts and everything else go out as "
        "`application/octet-stream`. Every file response has `X-Content-Type-Options: nosniff` "
        "and `Content-Security-Policy: sandbox`. A symbolic link anywhere in the path, a "
        "directory, FIFO, socket or device is `400 invalid_request`; nothing there is `404`.",
        parameters=[CHAT_ID, FILE_PATH, DownloadFilterSerializer],
        responses=with_errors(
            {(200, "*/*"): OpenApiResponse(OpenApiTypes.BINARY, description="The file's bytes.")},
            400,
            404,
        ),
    )
    def get(self, request: Request, chat_id: str, file_path: str) -> Any:
        session = get_session_or_404(user=request.user, chat_id=chat_id)
        parts = _parts(file_path)
        filters = self.DownloadFilterSerializer(data=request.query_params.dict())
        if not filters.is_valid():
            raise request_invalid(filters.errors)
        inline = filters.validated_data["inline"] in ("1", "true")
        try:
            handle, _st = workspace_file_open(workspace_locate(str(session.pk)), parts)
        except WorkspaceFileError as exc:
            raise _file_error(exc) from None
        name = parts[-1]
        guessed = file_type_guess(name)
        try:
            if inline:
                content_type = self._preview_type(handle, guessed, name)
            else:
                content_type = guessed if guessed in DOWNLOAD_TYPES else OCTET_STREAM
        except BaseException:
            handle.close()
            raise
        response = WorkspaceFileResponse(handle, content_type=content_type)
        response["Content-Disposition"] = content_disposition("inline" if inline else "attachment", name)
        for header, value in FILE_HEADERS.items():
            response[header] = value
        return response

    @staticmethod
    def _preview_type(handle: Any, guessed: str | None, name: str) -> str:
        if guessed in RASTER_TYPES:
            return guessed
        if _textual(guessed):
            head = handle.read(SNIFF_BYTES)
            handle.seek(0)
            if b"\x00" not in head:
                return TEXT_PREVIEW_TYPE
        message = f"{name} cannot be previewed (only PNG, JPEG, GIF, WebP images and text): download it."
        raise ApiError(message, details={"inline": [message]})

    @extend_schema(
        operation_id="sessions_files_upload",
        summary="Upload a file into the workspace",
        description="The raw request body becomes the file at that path (parent directories are "
        "created; an existing file is replaced). Written to a temporary file and renamed, so the "
        "agent never sees half a file; owned like the agent's own files, so its tools can read "
        "and change it. Allowed while a turn runs. At most AGENT_UPLOAD_MAX_MB "
        "(`413 request_too_large`), and the workspace must stay within AGENT_WORKSPACE_QUOTA_MB "
        "(`413 quota_exceeded`). A symbolic link in the path, or a directory or special file at "
        "it, is `400 invalid_request`; `409 workspace_unavailable` when the agent broke its "
        "workspace's `home/` or `tmp/`. 201 for a new file, 200 for a replaced one.",
        parameters=[CHAT_ID, FILE_PATH],
        request={OCTET_STREAM: OpenApiTypes.BINARY},
        responses={
            **with_errors(
                {201: WorkspaceFileSerializer, 200: WorkspaceFileSerializer}, 400, 403, 404, 409, 429
            ),
            413: ERROR_413,
        },
    )
    def put(self, request: Request, chat_id: str, file_path: str) -> Response:
        session = get_session_or_404(user=request.user, chat_id=chat_id)
        parts = _parts(file_path)
        cfg = chat_config()
        try:
            expected = int(request.META.get("CONTENT_LENGTH") or "")
        except ValueError:
            expected = None
        chunks = iter(lambda: request.read(CHUNK_BYTES), b"")
        try:
            workspace = workspace_for(str(session.pk))
        except (OSError, SandboxViolation):  # e.g. the agent replaced its tmp/ with a file
            raise ApiError(
                "This chat's workspace cannot be prepared for the upload: its home/ or tmp/ is not "
                "a directory. Ask the agent to restore them.",
                code="workspace_unavailable",
                status_code=status.HTTP_409_CONFLICT,
            ) from None
        try:
            written, created = workspace_file_write(
                workspace,
                parts,
                chunks,
                max_bytes=cfg.upload_max_bytes,
                quota_bytes=jail_config().quota_bytes,
                expected_size=expected,
            )
        except WorkspaceFileError as exc:
            raise _file_error(exc) from None
        code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
        return Response(WorkspaceFileSerializer(written).data, status=code)


class FileZipApi(APIView):
    content_negotiation_class = _AnyRendererNegotiation

    @extend_schema(
        operation_id="sessions_files_zip",
        summary="Download the whole workspace as a ZIP",
        description="Every regular file of the workspace (hidden ones too; links and special "
        "files are left out), streamed as one ZIP archive. Refused with `413 "
        "workspace_too_large` when the files add up to more than AGENT_WORKSPACE_QUOTA_MB or "
        "the workspace has more than AGENT_WORKSPACE_FILES_MAX entries. A chat whose agent "
        "never ran gives an empty archive.",
        parameters=[CHAT_ID],
        responses={
            **with_errors(
                {(200, "application/zip"): OpenApiResponse(OpenApiTypes.BINARY, description="The archive.")},
                404,
            ),
            413: ERROR_413,
        },
    )
    def get(self, request: Request, chat_id: str) -> Any:
        session = get_session_or_404(user=request.user, chat_id=chat_id)
        workspace = workspace_locate(str(session.pk))
        limit = chat_config().workspace_files_max
        listing = workspace_files_list(workspace, limit=limit, hidden=True)
        if listing.truncated:
            raise ApiError(
                f"The workspace has more than {limit} entries (AGENT_WORKSPACE_FILES_MAX), too many "
                "for one ZIP. Download files one by one, or ask the agent to pack them.",
                code="workspace_too_large",
                status_code=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
            )
        total = sum(f.size for f in listing.files)
        cap = jail_config().quota_bytes
        if total > cap:
            mb = 1024 * 1024
            raise ApiError(
                f"The workspace's files add up to {total // mb} MB, more than the {cap // mb} MB a "
                "ZIP may hold (AGENT_WORKSPACE_QUOTA_MB). Download files one by one, or delete some.",
                code="workspace_too_large",
                status_code=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
            )
        stream = workspace_zip_stream(workspace, listing.files)
        # Closing the response closes the generator (Django calls its close()): a ZIP the client
        # stopped reading releases its open file then.
        response = WorkspaceZipResponse(stream, content_type="application/zip")
        response["Content-Disposition"] = content_disposition("attachment", f"chat-{session.pk}.zip")
        for header, value in FILE_HEADERS.items():
            response[header] = value
        return response


__all__ = ["FileListApi", "FileDetailApi", "FileZipApi", "WorkspacePathConverter"]

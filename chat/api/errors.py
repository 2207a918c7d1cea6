"""One error body for every API failure: ``{"error": {"code", "message", "details"?}}``.

``api_exception_handler`` is DRF's EXCEPTION_HANDLER; ``error_response`` builds the same body
for plain Django paths (the SSE views before streaming starts, unknown URLs under /api/v1/).
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig
from django.http import Http404, JsonResponse
from django.utils import timezone
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from chat.api.exceptions import NOT_FOUND_MESSAGE, ApiError, NotFoundError

logger = logging.getLogger(__name__)


def retry_after_seconds(resets_at: dt.datetime | None, default: float = 60.0) -> int:
    if resets_at is None:
        return int(default)
    return max(1, math.ceil((resets_at - timezone.now()).total_seconds()))


# DRF exception class -> our code (DRF's own ``default_code`` where it is already good).
_CODES: dict[type[exceptions.APIException], str] = {
    exceptions.ValidationError: "invalid_request",
    exceptions.ParseError: "parse_error",
    exceptions.NotAuthenticated: "not_authenticated",
    exceptions.AuthenticationFailed: "authentication_failed",
    exceptions.PermissionDenied: "permission_denied",
    exceptions.NotFound: "not_found",
    exceptions.MethodNotAllowed: "method_not_allowed",
    exceptions.NotAcceptable: "not_acceptable",
    exceptions.UnsupportedMediaType: "unsupported_media_type",
    exceptions.Throttled: "throttled",
}


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        error["details"] = details
    return {"error": error}


def error_response(
    code: str, message: str, status_code: int, *, details: Any = None, retry_after: float | None = None
) -> JsonResponse:
    """A plain Django response with the API error body (for non-DRF code paths)."""
    response = JsonResponse(error_body(code, message, details), status=status_code)
    if retry_after is not None:
        response["Retry-After"] = str(int(math.ceil(retry_after)))
    return response


def _code_for(exc: exceptions.APIException) -> str:
    for cls in type(exc).__mro__:
        if cls in _CODES:
            return _CODES[cls]
    return getattr(exc, "default_code", None) or "error"


def request_too_large() -> ApiError:
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    return ApiError(
        f"The request body is larger than {limit} bytes.",
        code="request_too_large",
        status_code=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
    )


def request_invalid(errors: Any) -> ApiError:
    """A serializer's field errors as one ``invalid_request`` whose message is the first error
    (prefixed with its field unless it names it already), with every error under ``details``."""
    if isinstance(errors, dict):
        for field, messages in errors.items():
            first = messages[0] if isinstance(messages, list) and messages else messages
            text = str(first)
            if field != "non_field_errors" and field.lower() not in text.lower():
                text = f"{field}: {text}"
            return ApiError(text, details=errors)
    return ApiError("The request is invalid; see details.", details=errors)


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response:
    if isinstance(exc, Http404):
        exc = NotFoundError()
    elif isinstance(exc, RequestDataTooBig):  # Django refused the body (DATA_UPLOAD_MAX_MEMORY_SIZE)
        exc = request_too_large()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()
    response = drf_exception_handler(exc, context)  # sets WWW-Authenticate, Retry-After, rollback
    if response is None:
        logger.exception("unhandled API error", exc_info=exc)
        return Response(error_body("server_error", "Internal server error."), status=500)

    if isinstance(exc, ApiError):
        body = error_body(exc.error_code, exc.message, exc.details)
        if exc.retry_after is not None:
            response["Retry-After"] = str(int(math.ceil(exc.retry_after)))
    elif isinstance(exc, exceptions.ValidationError):
        body = error_body("invalid_request", "The request is invalid; see details.", exc.detail)
    elif isinstance(exc, exceptions.NotFound):
        body = error_body("not_found", NOT_FOUND_MESSAGE)
    elif isinstance(exc, exceptions.Throttled):
        wait = exc.wait
        message = "Too many requests." + (f" Retry in {math.ceil(wait)} s." if wait is not None else "")
        body = error_body("throttled", message)
        if wait is not None:
            response["Retry-After"] = str(max(1, math.ceil(wait)))
    else:
        detail = exc.detail if isinstance(exc, exceptions.APIException) else str(exc)
        body = error_body(_code_for(exc), str(detail))
    response.data = body
    return response

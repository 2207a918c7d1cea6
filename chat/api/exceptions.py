"""The API's own exceptions (``chat.api.errors`` turns every failure into one error body).

Apart from the handler so that the request parsers can raise them: the handler's module imports
DRF's views, whose settings import the parsers.
"""

from __future__ import annotations

from typing import Any

from rest_framework import exceptions, status

NOT_FOUND_MESSAGE = "Not found."


class ApiError(exceptions.APIException):
    """An API error with an explicit code; ``retry_after`` (seconds) adds a Retry-After header."""

    status_code = status.HTTP_400_BAD_REQUEST
    default_code = "invalid_request"
    default_detail = "Invalid request."

    def __init__(
        self,
        message: str | None = None,
        *,
        code: str | None = None,
        status_code: int | None = None,
        retry_after: float | None = None,
        details: Any = None,
    ) -> None:
        super().__init__(message or self.default_detail, code or self.default_code)
        if status_code is not None:
            self.status_code = status_code
        self.error_code = code or self.default_code
        self.message = str(message or self.default_detail)
        self.retry_after = retry_after
        self.details = details


class NotFoundError(ApiError):
    status_code = status.HTTP_404_NOT_FOUND
    default_code = "not_found"
    default_detail = NOT_FOUND_MESSAGE


class ConflictError(ApiError):
    status_code = status.HTTP_409_CONFLICT
    default_code = "stream_already_active"
    default_detail = "A turn is already running in this session."

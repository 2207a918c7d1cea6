"""Who a log line is about: the request, session and turn ids, carried in context variables and
added to every log record (docs/operations.md "Logs").

- ``request_id_middleware`` (first in MIDDLEWARE) takes the request's ``X-Request-ID`` when it
  is sane (``REQUEST_ID_RE``), else makes one, binds it for the request and echoes it in the
  response's ``X-Request-ID`` header. A websocket request's id is the frame's ``requestId``
  (``chat.consumers``).
- ``log_context_bind`` sets the ids known at a point (the consumer per request, the runner per
  turn). Context variables follow asyncio tasks (a task copies its creator's context) and
  ``sync_to_async`` hops, so the turn's task and its database writes inherit them; each request
  and each turn has its own copy, nothing leaks between them.
- ``LogContextFilter`` (on the console handler, copilot_project/settings.py) copies the bound ids
  onto each record as ``request_id``, ``session_id`` and ``turn_id``: the JSON formatter
  (``LOG_FORMAT=json``) writes them as fields.
- ``logging_json_install`` (copilot_project/asgi.py, with ``LOG_FORMAT=json``) routes daphne's
  access log (which daphne writes to stdout itself) and Python warnings through logging, so those
  lines are JSON too.

Imported while Django configures logging (before the apps are ready): no models here.
"""

from __future__ import annotations

import logging
import re
import uuid
from contextvars import ContextVar
from typing import Any

from asgiref.sync import iscoroutinefunction
from daphne.access import AccessLogGenerator
from django.utils.decorators import sync_and_async_middleware

REQUEST_ID_HEADER = "X-Request-ID"
# An incoming X-Request-ID is kept when it looks like an id (what proxies and tracing tools send:
# UUIDs, hex, base64-ish tokens), else replaced: it ends up in log lines and a response header.
REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:+/=-]{0,127}$")

request_id_var: ContextVar[str | None] = ContextVar("copilot_request_id", default=None)
session_id_var: ContextVar[str | None] = ContextVar("copilot_session_id", default=None)
turn_id_var: ContextVar[str | None] = ContextVar("copilot_turn_id", default=None)

_FIELDS = (("request_id", request_id_var), ("session_id", session_id_var), ("turn_id", turn_id_var))


def log_context_bind(*, request_id: Any = None, session_id: Any = None, turn_id: Any = None) -> None:
    """Bind the given ids (None: leave that one as it is) in the current context."""
    if request_id is not None:
        request_id_var.set(str(request_id))
    if session_id is not None:
        session_id_var.set(str(session_id))
    if turn_id is not None:
        turn_id_var.set(str(turn_id))


def log_context() -> dict[str, str]:
    """The ids bound in the current context (tests, diagnostics)."""
    return {name: value for name, var in _FIELDS if (value := var.get()) is not None}


class LogContextFilter(logging.Filter):
    """Adds the bound ids to every record that passes (never filters anything out)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, var in _FIELDS:
            value = var.get()
            if value is not None and not hasattr(record, name):
                setattr(record, name, value)
        return True


def request_id_for(incoming: str | None) -> str:
    """The incoming id when it is sane, else a new one."""
    if incoming and REQUEST_ID_RE.match(incoming):
        return incoming
    return uuid.uuid4().hex


@sync_and_async_middleware
def request_id_middleware(get_response: Any) -> Any:
    """Binds the request id for the request (sync and async, so async views stay on the loop).
    Under ASGI each request runs in a task of its own (its own context), so the id stays bound
    while a streamed response (SSE) is sent."""
    if iscoroutinefunction(get_response):

        async def middleware(request: Any) -> Any:
            request_id = request_id_for(request.headers.get(REQUEST_ID_HEADER))
            request_id_var.set(request_id)
            response = await get_response(request)
            response[REQUEST_ID_HEADER] = request_id
            return response

    else:

        def middleware(request: Any) -> Any:
            # A sync server's thread serves one request after another: unbind when done.
            request_id = request_id_for(request.headers.get(REQUEST_ID_HEADER))
            token = request_id_var.set(request_id)
            try:
                response = get_response(request)
            finally:
                request_id_var.reset(token)
            response[REQUEST_ID_HEADER] = request_id
            return response

    return middleware


# ---------------------------------------------------------------------------------------------
# LOG_FORMAT=json: the lines Django's logging config does not reach
# ---------------------------------------------------------------------------------------------

access_logger = logging.getLogger("daphne.access")


def access_entry_log(
    self: Any,
    host: Any,
    date: Any,
    request: Any,
    status: Any = None,
    length: Any = None,
    ident: Any = None,
    user: Any = None,
) -> None:
    """daphne's ``AccessLogGenerator.write_entry`` as a log record (fields: client, request,
    status, size) instead of an NCSA line on stdout."""
    access_logger.info(
        '%s "%s" %s %s',
        host,
        request,
        status if status is not None else "-",
        length if length is not None else "-",
        extra={"client": host, "request": request, "status": status, "size": length},
    )


def logging_json_install() -> None:
    """Route daphne's access log and Python warnings through logging (see the module docstring)."""
    logging.captureWarnings(True)
    AccessLogGenerator.write_entry = access_entry_log

"""The operators' endpoints (docs/operations.md "Health checks", "Metrics"; CONTRACT §6):

- ``GET /livez``: the process is up and its event loop answers (no database, no Redis);
- ``GET /readyz``: ready for traffic (``chat.health.readiness``): 200, or 503 with the failed
  checks — while draining after SIGTERM, or when the database or Redis does not answer;
- ``GET /healthz``: the same as ``/readyz`` (the older name, kept for existing probes);
- ``GET /metrics``: the Prometheus text format, for the clients ``chat.metrics.metrics_access``
  allows (METRICS_TOKEN, METRICS_ALLOW_IPS).

``probe_middleware`` (first in MIDDLEWARE) serves these paths before any other middleware: a
load balancer or Kubernetes probes a worker by its address (a Host header that ALLOWED_HOSTS
need not list), over plain HTTP (no HTTPS redirect), with no session, CSRF, login or throttle.
They build no URL from the Host header, so skipping its check is safe.
"""

from __future__ import annotations

from typing import Any

from asgiref.sync import async_to_sync, iscoroutinefunction, sync_to_async
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils.decorators import sync_and_async_middleware

from chat.health import readiness
from chat.metrics import METRICS_CONTENT_TYPE, metrics_access, metrics_text
from chat.proxies import request_client_ip

ALLOWED_METHODS = ("GET", "HEAD")
DENIAL_TEXT = {
    401: "Unauthorized: send Authorization: Bearer <METRICS_TOKEN>.\n",
    403: "Forbidden: this address may not read the metrics (METRICS_ALLOW_IPS).\n",
    404: "Not found.\n",
}


def _no_store(response: HttpResponse) -> HttpResponse:
    response["Cache-Control"] = "no-store"
    return response


def _method_not_allowed() -> HttpResponse:
    response = HttpResponse("Method not allowed.\n", status=405, content_type="text/plain")
    response["Allow"] = ", ".join(ALLOWED_METHODS)
    return response


async def livez(request: HttpRequest) -> HttpResponse:
    return _no_store(JsonResponse({"status": "ok"}))


async def readyz(request: HttpRequest) -> HttpResponse:
    report = await readiness()
    return _no_store(JsonResponse(report.as_dict(), status=200 if report.ok else 503))


async def metrics(request: HttpRequest) -> HttpResponse:
    status = metrics_access(
        remote_addr=request_client_ip(request),  # behind TRUSTED_PROXIES: the real client
        authorization=request.headers.get("Authorization", ""),
    )
    if status != 200:
        response = HttpResponse(DENIAL_TEXT[status], status=status, content_type="text/plain")
        if status == 401:
            response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return _no_store(response)
    # In a thread: with PROMETHEUS_MULTIPROC_DIR it reads every worker's files.
    body = await sync_to_async(metrics_text, thread_sensitive=False)()
    return _no_store(HttpResponse(body, content_type=METRICS_CONTENT_TYPE))


PROBES = {"/livez": livez, "/readyz": readyz, "/healthz": readyz, "/metrics": metrics}


async def probe_answer(request: HttpRequest, view: Any) -> HttpResponse:
    if request.method not in ALLOWED_METHODS:
        return _method_not_allowed()
    return await view(request)


@sync_and_async_middleware
def probe_middleware(get_response: Any) -> Any:
    """Serves ``PROBES`` ahead of the other middleware (see the module docstring)."""
    if iscoroutinefunction(get_response):

        async def middleware(request: HttpRequest) -> Any:
            view = PROBES.get(request.path_info)
            if view is not None:
                return await probe_answer(request, view)
            return await get_response(request)

    else:

        def middleware(request: HttpRequest) -> Any:
            view = PROBES.get(request.path_info)
            if view is not None:
                return async_to_sync(probe_answer)(request, view)
            return get_response(request)

    return middleware

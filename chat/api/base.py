"""Async DRF views: DRF's request pipeline (auth, permissions, throttles, exception handler,
renderers) with ``async def`` handlers, so a view can return a StreamingHttpResponse fed by an
async iterator that daphne streams without holding a thread."""

from __future__ import annotations

import inspect
from typing import Any

from asgiref.sync import sync_to_async
from rest_framework.views import APIView


class AsyncAPIView(APIView):
    """An APIView whose handlers are coroutines. ``initial`` (authentication touches the DB)
    runs in a worker thread; the handler runs on the event loop."""

    async def dispatch(self, request: Any, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        self.args = args
        self.kwargs = kwargs
        request = self.initialize_request(request, *args, **kwargs)
        self.request = request
        self.headers = self.default_response_headers
        try:
            await sync_to_async(self.initial)(request, *args, **kwargs)
            if request.method.lower() in self.http_method_names:
                handler = getattr(self, request.method.lower(), self.http_method_not_allowed)
            else:
                handler = self.http_method_not_allowed
            response = handler(request, *args, **kwargs)
            if inspect.isawaitable(response):
                response = await response
        except Exception as exc:  # noqa: BLE001 - DRF's own handler decides, as in APIView.dispatch
            response = await sync_to_async(self.handle_exception)(exc)
        self.response = self.finalize_response(request, response, *args, **kwargs)
        return self.response

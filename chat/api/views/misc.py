from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework.permissions import AllowAny
from rest_framework.views import APIView

from chat.api.exceptions import NotFoundError


@extend_schema(exclude=True)
class ApiNotFound(APIView):
    """Unknown paths under /api/v1/: the API's 404 body instead of Django's HTML page."""

    authentication_classes: list = []
    permission_classes = [AllowAny]

    def dispatch(self, request: Any, *args: Any, **kwargs: Any) -> Any:
        self.args, self.kwargs = args, kwargs
        request = self.initialize_request(request, *args, **kwargs)
        self.request = request
        self.headers = self.default_response_headers
        response = self.handle_exception(NotFoundError())
        self.response = self.finalize_response(request, response, *args, **kwargs)
        return self.response

"""The HTTP API under /api/v1/ (CONTRACT §4): DRF resources, the AI SDK compatible SSE chat,
API-key authentication (HTTP and websocket handshake), throttles, one error body, OpenAPI.

Layout: ``views/`` (thin API classes with nested Input/Output serializers), ``selectors.py`` /
``services.py`` (reads / writes the views need beyond chat.selectors / chat.services),
``auth.py``, ``throttles.py``, ``errors.py``, ``sse.py``, ``base.py`` (async DRF views), ``urls.py``.
"""

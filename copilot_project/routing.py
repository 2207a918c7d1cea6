"""Websocket routes (CONTRACT §4)."""

websocket_urlpatterns: list = []

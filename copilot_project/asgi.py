"""ASGI entry point: HTTP through Django, websockets through Channels (daphne serves both)."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "copilot_project.settings")

# Django must be set up before anything imports models (consumers, auth middleware).
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.conf import settings  # noqa: E402
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402

from agents.jail import jail_report as _report_jail  # noqa: E402
from chat.api.auth import websocket_auth_stack  # noqa: E402
from chat.logcontext import logging_json_install  # noqa: E402
from copilot_project.routing import websocket_urlpatterns  # noqa: E402
from copilot_project.serverpatches import install as _install_server_patches  # noqa: E402

_install_server_patches()
if settings.LOG_FORMAT == "json":
    logging_json_install()  # daphne's access log and warnings as JSON log records too
_report_jail()  # a server whose agent tools would run unjailed says so in its log at start

application = ProtocolTypeRouter(
    {
        "http": ASGIStaticFilesHandler(django_asgi_app),  # serves /static/ in-process, DEBUG or not
        # Origin check (skipped only for Bearer handshakes without Origin) → session cookie → Bearer key.
        "websocket": websocket_auth_stack(URLRouter(websocket_urlpatterns)),
    }
)

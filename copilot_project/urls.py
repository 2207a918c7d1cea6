from django.contrib import admin
from django.urls import include, path

from chat import probes
from chat import views as chat_views
from chat.security import ThrottledLoginView

urlpatterns = [
    # Staff-only transcript viewer (before the admin catch-all so it lives under /admin/).
    path("admin/transcripts/session/", include("transcripts.urls")),
    path("admin/", admin.site.urls),
    # Login with throttling (chat.security); the rest of django.contrib.auth.urls as is.
    path("accounts/login/", ThrottledLoginView.as_view(), name="login"),
    path("accounts/", include("django.contrib.auth.urls")),
    path("api/v1/", include("chat.api.urls", namespace="api")),
    # Operators' probes and metrics (chat.probes). chat.probes.probe_middleware answers these paths
    # before the other middleware (no host check, HTTPS redirect or session); listed here as well
    # so they resolve (reverse()) and work where that middleware is left out.
    path("livez", probes.livez, name="livez"),
    path("readyz", probes.readyz, name="readyz"),
    path("healthz", probes.readyz, name="healthz"),
    path("metrics", probes.metrics, name="metrics"),
    path("", chat_views.index, name="index"),
    path("c/<uuid:chat_id>/", chat_views.chat_page, name="chat"),
    path("s/<str:token>/", chat_views.share_page, name="share"),
]

from django.contrib import admin
from django.urls import include, path

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
    path("healthz", chat_views.healthz, name="healthz"),
    path("", chat_views.index, name="index"),
    path("c/<uuid:chat_id>/", chat_views.chat_page, name="chat"),
    path("s/<str:token>/", chat_views.share_page, name="share"),
]

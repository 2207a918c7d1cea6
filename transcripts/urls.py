from django.urls import path

from transcripts import views

app_name = "transcripts"

urlpatterns = [
    path("<str:session_id>/", views.viewer, name="viewer"),
    path("<str:session_id>/download.jsonl", views.download, name="download"),
]

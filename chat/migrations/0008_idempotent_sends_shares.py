# Idempotent sends and shares (issue #19; docs/api.md "Export, import and share").
#
# ChatMessage.client_message_id: the AI SDK id of a user message, unique per session (a retried
# send joins its turn). Backfilled from metadata.messageId; where earlier retries stored one id
# twice in a session, only the first (lowest sequence) keeps it.
# Share: a chat's public read-only link (its snapshot, nonce, expiry, revocation).

import uuid

import django.db.models.deletion
from django.db import migrations, models

BACKFILL_BATCH = 1000


def client_message_id_backfill(apps, schema_editor):
    message = apps.get_model("chat", "ChatMessage")
    rows = (
        message.objects.filter(role="user", metadata__has_key="messageId")
        .order_by("session_id", "sequence")
        .values_list("pk", "session_id", "metadata")
    )
    seen: set[tuple] = set()
    batch: list = []
    for pk, session_id, metadata in rows.iterator(chunk_size=BACKFILL_BATCH):
        value = metadata.get("messageId") if isinstance(metadata, dict) else None
        if not isinstance(value, str) or not value or len(value) > 200 or (session_id, value) in seen:
            continue
        seen.add((session_id, value))
        batch.append(message(pk=pk, client_message_id=value))
        if len(batch) >= BACKFILL_BATCH:
            message.objects.bulk_update(batch, ["client_message_id"])
            batch = []
    if batch:
        message.objects.bulk_update(batch, ["client_message_id"])


class Migration(migrations.Migration):
    dependencies = [
        ("chat", "0007_message_search"),
    ]

    operations = [
        migrations.CreateModel(
            name="Share",
            fields=[
                (
                    "id",
                    models.UUIDField(default=uuid.uuid4, editable=False, primary_key=True, serialize=False),
                ),
                ("nonce", models.CharField(max_length=64)),
                ("title", models.CharField(blank=True, default="", max_length=200)),
                ("messages", models.JSONField(blank=True, default=list)),
                ("include_tool_outputs", models.BooleanField(default=False)),
                ("created_at", models.DateTimeField(auto_now_add=True)),
                ("expires_at", models.DateTimeField(blank=True, null=True)),
                ("revoked_at", models.DateTimeField(blank=True, null=True)),
            ],
        ),
        migrations.AddField(
            model_name="chatmessage",
            name="client_message_id",
            field=models.CharField(blank=True, max_length=200, null=True),
        ),
        migrations.RunPython(client_message_id_backfill, migrations.RunPython.noop),
        migrations.AddConstraint(
            model_name="chatmessage",
            constraint=models.UniqueConstraint(
                condition=models.Q(("client_message_id__isnull", False)),
                fields=("session", "client_message_id"),
                name="chat_message_unique_client_msg",
            ),
        ),
        migrations.AddField(
            model_name="share",
            name="session",
            field=models.ForeignKey(
                on_delete=django.db.models.deletion.CASCADE, related_name="shares", to="chat.chatsession"
            ),
        ),
        migrations.AddIndex(
            model_name="share",
            index=models.Index(fields=["session", "-created_at"], name="share_session_recent"),
        ),
    ]

# Edit and branch (issue #19; docs/api.md "Branches").
#
# ChatMessage.parent: the message a message follows; siblings (same parent) are the branches an
# edit or a regenerate makes. ChatSession.active_leaf: the newest message of the branch the chat
# shows and continues. ChatSession.agent_session_leaf: the message the CLI session's transcript
# ends at (the sdk backend resumes it only while that message is on the active path).
# Back-fill: the chats so far are linear, so each message's parent is the previous message of its
# session by sequence, the active leaf is the last message, and a chat with a CLI session has it
# ending at its last normal message.

import django.db.models.deletion
from django.db import migrations, models
from django.db.models import OuterRef, Subquery


def branches_backfill(apps, schema_editor):
    message = apps.get_model("chat", "ChatMessage")
    session = apps.get_model("chat", "ChatSession")
    message.objects.update(
        parent=Subquery(
            message.objects.filter(session=OuterRef("session"), sequence__lt=OuterRef("sequence"))
            .order_by("-sequence")
            .values("pk")[:1]
        )
    )
    session.objects.update(
        active_leaf=Subquery(
            message.objects.filter(session=OuterRef("pk")).order_by("-sequence").values("pk")[:1]
        )
    )
    session.objects.exclude(agent_session_id="").update(
        agent_session_leaf=Subquery(
            message.objects.filter(session=OuterRef("pk"), kind="normal")
            .order_by("-sequence")
            .values("pk")[:1]
        )
    )


class Migration(migrations.Migration):
    dependencies = [
        ("chat", "0008_idempotent_sends_shares"),
    ]

    operations = [
        migrations.AddField(
            model_name="chatmessage",
            name="parent",
            field=models.ForeignKey(
                blank=True,
                null=True,
                on_delete=django.db.models.deletion.SET_NULL,
                related_name="children",
                to="chat.chatmessage",
            ),
        ),
        migrations.AddField(
            model_name="chatsession",
            name="active_leaf",
            field=models.ForeignKey(
                blank=True,
                null=True,
                on_delete=django.db.models.deletion.SET_NULL,
                related_name="+",
                to="chat.chatmessage",
            ),
        ),
        migrations.AddField(
            model_name="chatsession",
            name="agent_session_leaf",
            field=models.ForeignKey(
                blank=True,
                null=True,
                on_delete=django.db.models.deletion.SET_NULL,
                related_name="+",
                to="chat.chatmessage",
            ),
        ),
        migrations.RunPython(branches_backfill, migrations.RunPython.noop),
    ]

"""Create an API key for a user (creating the user first with ``--create-user``).

Operators use it to hand an integration its ``Authorization: Bearer`` key without a browser
login; the production lane (``scripts/prod-lane.sh``) uses it to provision its clients. The full
key is printed once on stdout (alone on its line with ``--quiet``, for scripts); only its hash is
stored. Works under ``DEBUG=false`` (unlike ``ensure_demo_user``): it sets no known password — a
user it creates has an unusable password until an operator sets one.
"""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from audit.commands import command_actor_label
from audit.models import AuditEvent
from audit.services import audit_record
from chat.apikeys import api_key_create


class Command(BaseCommand):
    help = "Create an API key for USERNAME and print it once (--create-user to create the user too)."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--name", default="cli", help="A label for the key (shown in the key list).")
        parser.add_argument(
            "--create-user",
            action="store_true",
            help="Create the user (active, not staff, unusable password) when it does not exist.",
        )
        parser.add_argument("--quiet", action="store_true", help="Print only the key.")

    def handle(self, *args, username: str, name: str, create_user: bool, quiet: bool, **options):
        User = get_user_model()
        with transaction.atomic():
            user = User.objects.filter(username=username).first()
            created = False
            if user is None:
                if not create_user:
                    raise CommandError(f"no user {username!r} (pass --create-user to create it)")
                user = User(username=username, is_active=True)
                user.set_unusable_password()
                user.save()
                created = True
            if not user.is_active:
                raise CommandError(f"user {username!r} is inactive; its keys would not authenticate")
            api_key, raw = api_key_create(owner=user, name=name)
            audit_record(
                action="command.create_api_key",
                source=AuditEvent.Source.COMMAND,
                actor_label=command_actor_label("create_api_key"),
                target=api_key,
                details={"owner": username, "name": name, "user_created": created},
            )
        if quiet:
            self.stdout.write(raw)
            return
        self.stdout.write(
            self.style.SUCCESS(
                f"{'Created user ' + repr(username) + ' and a' if created else 'Created a'} key "
                f"{api_key.prefix!r} named {name!r}. It is shown only now:"
            )
        )
        self.stdout.write(raw)

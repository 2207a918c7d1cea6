"""Create (or reset) the demo login that `make run` prints (local development only).

The password is published in the README, so the command refuses to run unless ``DEBUG`` is true:
on a production setup it would plant a superuser anyone can sign in as (or reset an existing
account named ``demo`` to the published password).
"""

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import CommandError

from audit.commands import OperatorCommand

DEMO_USERNAME = "demo"
DEMO_PASSWORD = "demo-password"


class Command(OperatorCommand):
    help = "Ensure the demo user exists with the documented password (local development only)."

    def add_arguments(self, parser):
        super().add_arguments(parser)  # --dry-run
        parser.add_argument("--username", default=DEMO_USERNAME)
        parser.add_argument("--password", default=DEMO_PASSWORD)

    def handle(self, *args, username: str, password: str, dry_run: bool, **options):
        if not settings.DEBUG:
            raise CommandError(
                "ensure_demo_user refuses to run with DEBUG=false: it creates a superuser with a published "
                "password. It is for local development (make run sets DEBUG=true); on a production setup "
                "create accounts with `manage.py createsuperuser`."
            )
        User = get_user_model()
        if dry_run:
            exists = User.objects.filter(username=username).exists()
            self.summary(
                f"would {'reset' if exists else 'create'} the demo login {username!r} (staff, superuser)",
                dry_run=True,
            )
            return
        user, created = User.objects.get_or_create(
            username=username, defaults={"is_staff": True, "is_superuser": True}
        )
        user.set_password(password)
        user.is_active = True
        user.save()
        self.audit({"username": username, "created": created})
        self.stdout.write(
            self.style.SUCCESS(
                f"{'Created' if created else 'Reset'} demo login: "
                f"username={username!r} password={password!r} "
                "(staff: the admin is at /admin/)"
            )
        )

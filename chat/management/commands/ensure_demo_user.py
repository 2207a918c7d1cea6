"""Create (or reset) the demo login that `make run` prints."""

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

DEMO_USERNAME = "demo"
DEMO_PASSWORD = "demo-password"


class Command(BaseCommand):
    help = "Ensure the demo user exists with the documented password (local development only)."

    def add_arguments(self, parser):
        parser.add_argument("--username", default=DEMO_USERNAME)
        parser.add_argument("--password", default=DEMO_PASSWORD)

    def handle(self, *args, username: str, password: str, **options):
        User = get_user_model()
        user, created = User.objects.get_or_create(username=username, defaults={"is_staff": True, "is_superuser": True})
        user.set_password(password)
        user.is_active = True
        user.save()
        self.stdout.write(
            self.style.SUCCESS(
                f"{'Created' if created else 'Reset'} demo login: username={username!r} password={password!r} "
                "(staff: the admin is at /admin/)"
            )
        )

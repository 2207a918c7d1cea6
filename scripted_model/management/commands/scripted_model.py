"""``python manage.py scripted_model --port N [--host 127.0.0.1]``.

Runs the offline scripted Anthropic Messages API server in the foreground until
Ctrl-C. Point a client at it with ``ANTHROPIC_BASE_URL=<printed url>``.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from scripted_model.server import ScriptedModelServer


class Command(BaseCommand):
    help = "Run the offline scripted Anthropic Messages API server (Ctrl-C to stop)."
    requires_system_checks = ()  # no database needed

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--port", type=int, default=0, help="TCP port (0: any free port).")
        parser.add_argument("--host", default="127.0.0.1", help="Interface to listen on.")

    def handle(self, *args: Any, **options: Any) -> None:
        server = ScriptedModelServer(host=options["host"], port=options["port"]).start()
        self.stdout.write(f"Scripted model listening on {server.url} (Ctrl-C to stop)")
        self.stdout.write(f"  ANTHROPIC_BASE_URL={server.url}")
        self.stdout.flush()
        server.serve_forever()
        self.stdout.write("Scripted model stopped.")

"""Create an API client and print its key, once: it is stored only as a hash."""

from django.core.management.base import BaseCommand, CommandError

from audit.actors import Actor
from operations.api.clients import api_client_create
from operations.errors import DomainError
from operations.models import ApiScope


class Command(BaseCommand):
    help = "Create an API client (--scopes cases:write cases:read --queues 'Claims handlers'); prints its key once."

    def add_arguments(self, parser):
        parser.add_argument("name")
        parser.add_argument("--scopes", nargs="+", required=True, choices=ApiScope.values, metavar="SCOPE")
        parser.add_argument("--queues", nargs="*", default=[], help="Escalation queues the client may act on.")
        parser.add_argument("--throttle-rate", default="", help="e.g. 1200/min; default: SELFOPS_API_THROTTLE_RATE.")

    def handle(self, *args, name, scopes, queues, throttle_rate, **options):
        try:
            client, key = api_client_create(
                name=name,
                scopes=scopes,
                queues=queues,
                throttle_rate=throttle_rate,
                actor=Actor.system("manage.py api_client_create"),
            )
        except DomainError as exc:
            raise CommandError(f"{exc.message} {exc.fields or ''}".strip()) from exc
        self.stderr.write(f"API client '{client.name}' created with scopes {', '.join(client.scopes)}.")
        self.stderr.write("Its key follows; it is shown this once and cannot be recovered (rotate it in the admin):")
        self.stdout.write(key)

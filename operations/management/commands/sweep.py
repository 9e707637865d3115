from django.core.management.base import BaseCommand, CommandError

from operations.services import cases_sweep


class Command(BaseCommand):
    help = "Re-enqueue running cases nobody is advancing (expired lease, or no task) and owed effects not delivered."

    def add_arguments(self, parser):
        parser.add_argument("--limit", type=int, default=1000)

    def handle(self, *args, limit, **options):
        if not 1 <= limit <= 100_000:
            raise CommandError("--limit must be between 1 and 100,000")
        self.stdout.write(f"re-enqueued {cases_sweep(limit=limit)} cases")

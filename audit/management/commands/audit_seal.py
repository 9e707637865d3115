from django.core.management.base import BaseCommand, CommandError

from audit.sealing import DEFAULT_BATCH_SIZE, seal


class Command(BaseCommand):
    help = "Seal unsealed audit events into the hash chain (safe to run alongside the scheduled sealer)."

    def add_arguments(self, parser):
        parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)

    def handle(self, *args, batch_size, **options):
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1")
        result = seal(batch_size=batch_size)
        self.stdout.write(f"sealed {result.sealed} events; head #{result.head_seq or 0} {result.head_hash}")

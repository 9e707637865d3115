from django.core.management.base import BaseCommand, CommandError

from audit.actors import Actor
from operations.packs.claims.install import install


class Command(BaseCommand):
    help = "Install the claims demo pack: workflow, default agent policies and reference data (idempotent)."

    def add_arguments(self, parser):
        parser.add_argument("--policies", type=int, default=20000, help="number of insurance policies to generate")

    def handle(self, *args, policies, **options):
        if policies < 1 or policies > 1_000_000:
            raise CommandError("--policies must be between 1 and 1,000,000")
        workflow = install(actor=Actor.system("load_demo"), policies=policies)
        self.stdout.write(self.style.SUCCESS(f"Installed {workflow} with {policies:,} policies."))

from django.core.management.base import BaseCommand, CommandError

from audit.archive import ArchiveError, export_range


class Command(BaseCommand):
    help = "Export sealed events FROM..TO with their hashes as JSON lines that verify on their own (cold storage)."

    def add_arguments(self, parser):
        parser.add_argument("--from-seq", type=int, required=True)
        parser.add_argument("--to-seq", type=int, required=True)
        parser.add_argument("--out", required=True)

    def handle(self, *args, from_seq, to_seq, out, **options):
        try:
            n = export_range(from_seq=from_seq, to_seq=to_seq, out=out)
        except ArchiveError as exc:
            raise CommandError(str(exc)) from exc
        except OSError as exc:
            raise CommandError(f"cannot write {out}: {exc.strerror or exc}") from exc
        self.stdout.write(f"exported {n} events (#{from_seq}..#{to_seq}) to {out}")

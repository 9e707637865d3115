from django.core.management.base import BaseCommand, CommandError

from audit.archive import ArchiveError, verify_archive
from audit.chain import GENESIS
from audit.digests import DigestError, load
from audit.verification import verify, verify_digest


class Command(BaseCommand):
    help = (
        "Recompute the audit hash chain; exit 1 naming the first bad sequence number. With --digest FILE, also prove "
        "the history up to that signed digest was not rewritten; with --archive FILE, verify an exported range alone."
    )

    def add_arguments(self, parser):
        parser.add_argument("--digest", help="a digest file written by audit_digest")
        parser.add_argument("--archive", help="a .jsonl range written by audit_export (checked without the database)")
        parser.add_argument("--from-seq", type=int, default=1, help="start here (older events archived)")
        parser.add_argument("--prev-hash", default="", help="the hash of event FROM_SEQ-1 (the last archive's last)")

    def handle(self, *args, digest=None, archive=None, from_seq=1, prev_hash="", **options):
        if from_seq > 1 and not prev_hash:
            raise CommandError("--from-seq needs --prev-hash: the hash of the last archived event")
        try:
            if archive:
                result = verify_archive(archive)
            elif digest:
                result = verify_digest(load(digest))
            else:
                result = verify(from_seq=from_seq, prev_hash=prev_hash or GENESIS)
        except (DigestError, ArchiveError) as exc:
            raise CommandError(str(exc)) from exc
        except OSError as exc:
            raise CommandError(f"cannot read {archive or digest}: {exc.strerror or exc}") from exc
        if not result.ok:
            raise CommandError(result.describe())
        suffix = f" (matches the digest at #{result.head_seq})" if digest else ""
        self.stdout.write(self.style.SUCCESS(result.describe() + suffix))

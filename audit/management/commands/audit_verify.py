from django.core.management.base import BaseCommand, CommandError

from audit.archive import ArchiveError, archive_tail, verify_archive
from audit.chain import GENESIS
from audit.digests import DigestError, load
from audit.verification import verify, verify_digest


class Command(BaseCommand):
    help = (
        "Recompute the audit hash chain; exit 1 naming the first bad sequence number. With --digest FILE, also prove "
        "the history up to that signed digest was not rewritten; with --archive FILE, verify an exported range alone. "
        "On a database whose older events were archived, start where the archive ends: --after-archive FILE (or "
        "--from-seq and --prev-hash)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--digest", help="a digest file written by audit_digest")
        parser.add_argument("--archive", help="a .jsonl range written by audit_export (checked without the database)")
        parser.add_argument(
            "--after-archive",
            help="the archive of the last range removed from the database: it is verified, and the database is "
            "verified from the event after it, chained from its last hash",
        )
        parser.add_argument("--from-seq", type=int, default=1, help="start here (older events archived)")
        parser.add_argument("--prev-hash", default="", help="the hash of event FROM_SEQ-1 (the last archive's last)")
        parser.add_argument("--workers", type=int, default=None, help="processes verifying ranges in parallel")

    def handle(self, *args, digest=None, archive=None, after_archive=None, from_seq=1, prev_hash="", **options):
        workers = options.get("workers")
        if after_archive and (from_seq > 1 or prev_hash):
            raise CommandError("--after-archive already says where to start: drop --from-seq and --prev-hash")
        if from_seq > 1 and not prev_hash:
            raise CommandError("--from-seq needs --prev-hash: the hash of the last archived event")
        try:
            if after_archive:
                tail = verify_archive(after_archive)
                if not tail.ok:
                    raise CommandError(f"{after_archive}: {tail.describe()}")
                from_seq, prev_hash = archive_tail(after_archive)
            start = {"from_seq": from_seq, "prev_hash": prev_hash or GENESIS, "workers": workers}
            digest = load(digest) if digest else None
            if archive:
                result = verify_archive(archive, against=digest)
            elif digest:
                result = verify_digest(digest, **start)
            else:
                result = verify(**start)
        except (DigestError, ArchiveError) as exc:
            raise CommandError(str(exc)) from exc
        except OSError as exc:
            raise CommandError(f"cannot read {archive or digest}: {exc.strerror or exc}") from exc
        if not result.ok:
            raise CommandError(result.describe())
        suffix = f" (matches the digest at #{digest['seq']})" if digest else ""
        self.stdout.write(self.style.SUCCESS(result.describe() + suffix))

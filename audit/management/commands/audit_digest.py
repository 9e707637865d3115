import json

from django.core.management.base import BaseCommand, CommandError

from audit.digests import export_digest, head_digest


class Command(BaseCommand):
    help = "Print the signed digest of the audit chain's head (sequence, hash, time), or write it to a file."

    def add_arguments(self, parser):
        parser.add_argument("--out", help="write the digest to this file")
        parser.add_argument("--dir", help="write a new digest file into this folder (default AUDIT_DIGEST_DIR)")

    def handle(self, *args, out=None, dir=None, **options):
        try:
            if dir:
                self.stdout.write(str(export_digest(dir)))
                return
            text = json.dumps(head_digest(), indent=2) + "\n"
            if out:
                with open(out, "w") as f:
                    f.write(text)
                self.stdout.write(f"digest written to {out}")
                return
        except OSError as exc:
            raise CommandError(f"cannot write the digest to {out or dir}: {exc.strerror or exc}") from exc
        self.stdout.write(text, ending="")

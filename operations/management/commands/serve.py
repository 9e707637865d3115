import os
import signal
import subprocess
import sys
import time

from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = "Run the portal (web) and a django-q2 cluster together, with an optional slow demo stream. Ctrl-C stops all."

    def add_arguments(self, parser):
        parser.add_argument("--addr", default="127.0.0.1:8000")
        parser.add_argument("--stream-rate", type=float, default=0.5, help="demo claims per second; 0 for none")

    def handle(self, *args, addr, stream_rate, **options):
        if not 0 <= stream_rate <= 1000:  # NaN fails this too
            raise CommandError("--stream-rate must be between 0 and 1,000 claims per second")
        manage = [sys.executable, "manage.py"]
        commands = {
            "web": manage + ["runserver", addr, "--noreload"],
            "workers": manage + ["qcluster"],
        }
        if stream_rate > 0:
            commands["demo stream"] = manage + ["simulate", "--cases", "10000000", "--rate", str(stream_rate)]
        procs = {}

        def stop(signum, frame):
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, stop)  # `kill` stops everything too, not just Ctrl-C
        try:
            for name, cmd in commands.items():
                procs[name] = subprocess.Popen(cmd, start_new_session=True)  # noqa: S603
                self.stdout.write(f"started {name} (pid {procs[name].pid})")
            self.stdout.write(self.style.SUCCESS(f"selfops is up on http://{addr}/  — Ctrl-C stops everything"))
            while all(p.poll() is None for p in procs.values()):
                time.sleep(0.5)
            dead = [n for n, p in procs.items() if p.poll() is not None]
            self.stderr.write(f"{', '.join(dead)} stopped; stopping the rest")
        except KeyboardInterrupt:
            self.stdout.write("\nstopping…")
        finally:
            for p in procs.values():
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGTERM)
            deadline = time.monotonic() + 15
            for p in procs.values():
                try:
                    p.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)

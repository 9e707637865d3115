"""Time the portal's pages with Django's test client (in-process: the figures are server time, no network):
queue, filtered queue, escalation detail, dashboard, case search, case detail; prints p50/p95 per page."""

import random
import statistics
import time

from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.core.management.base import BaseCommand, CommandError
from django.test import Client, override_settings
from django.urls import reverse

from operations.models import Case, Escalation, EscalationStatus
from operations.packs.claims.definition import HANDLERS, SIU
from operations.roles import SENIOR_SUPERVISOR

PLAIN_STATIC = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}


class Command(BaseCommand):
    help = "Time the portal pages (p50/p95 per page) against the loaded data; see load_volume."

    def add_arguments(self, parser):
        parser.add_argument("--runs", type=int, default=20)

    def handle(self, *args, runs, **options):
        if not 1 <= runs <= 10_000:
            raise CommandError("--runs must be between 1 and 10,000")
        from django.contrib.auth.models import Group

        user, _ = get_user_model().objects.get_or_create(username="bench-senior")
        user.groups.add(*[Group.objects.get_or_create(name=n)[0] for n in (SENIOR_SUPERVISOR, HANDLERS, SIU)])
        open_ids = list(Escalation.objects.filter(status=EscalationStatus.OPEN).values_list("pk", flat=True)[:2000])
        case_ids = list(Case.objects.order_by("-id").values_list("pk", flat=True)[:2000])
        some_ref = Case.objects.order_by("-id").values_list("reference", flat=True).first() or ""
        rng = random.Random(1)
        pages = {
            "queue": lambda: reverse("portal:escalations"),
            "queue page 5": lambda: reverse("portal:escalations") + "?page=5",
            "queue filtered": lambda: reverse("portal:escalations") + "?sla=amber&amount_min=20000&claimed=unclaimed",
            "queue htmx": lambda: reverse("portal:escalations") + "?queue=Claims+handlers",
            "escalation detail": lambda: reverse("portal:escalation", args=[rng.choice(open_ids)]),
            "dashboard (cold)": lambda: (cache.delete("portal:dashboard"), reverse("portal:dashboard"))[1],
            "dashboard (10 s cache)": lambda: reverse("portal:dashboard"),
            "cases": lambda: reverse("portal:cases"),
            "case search": lambda: reverse("portal:cases") + f"?reference={some_ref[:12]}",
            "case detail": lambda: reverse("portal:case", args=[rng.choice(case_ids)]),
        }
        with override_settings(STORAGES=PLAIN_STATIC, ALLOWED_HOSTS=["testserver"], DEBUG=False):
            client = Client()
            client.force_login(user)
            self.stdout.write(f"{'page':<24} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}")
            for name, url in pages.items():
                headers = {"HTTP_HX_REQUEST": "true"} if "htmx" in name else {}
                client.get(url(), **headers)  # warm
                times = []
                for _ in range(runs):
                    t0 = time.perf_counter()
                    response = client.get(url(), **headers)
                    times.append((time.perf_counter() - t0) * 1000)
                    assert response.status_code == 200, (name, response.status_code)
                times.sort()
                p95 = times[min(len(times) - 1, int(round(0.95 * (len(times) - 1))))]
                self.stdout.write(f"{name:<24} {statistics.median(times):>8.1f} {p95:>8.1f} {times[-1]:>8.1f}")

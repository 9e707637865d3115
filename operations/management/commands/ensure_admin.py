import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand

from operations.packs.claims.definition import HANDLERS, SIU


class Command(BaseCommand):
    help = "Create the demo login (admin, a password kept in var/admin_password) and the queue groups; print it."

    def handle(self, *args, **options):
        for name in (HANDLERS, SIU):
            Group.objects.get_or_create(name=name)
        governance, _ = Group.objects.get_or_create(name=settings.SELFOPS_GOVERNANCE["ADMIN_GROUP"])
        path = settings.VAR_DIR / "admin_password"
        if not path.exists():
            path.write_text(secrets.token_urlsafe(12))
            path.chmod(0o600)
        password = path.read_text().strip()
        user, created = get_user_model().objects.get_or_create(
            username="admin", defaults={"is_staff": True, "is_superuser": True}
        )
        if created or not user.check_password(password):
            user.set_password(password)
            user.is_staff = user.is_superuser = True
            user.save()
        user.groups.add(governance)  # demotion notices go to this group
        self.stdout.write(self.style.SUCCESS(f"Log in as  admin / {password}"))

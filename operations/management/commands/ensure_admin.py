import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand

from operations import roles
from operations.packs.claims.definition import HANDLERS, SIU
from operations.services import ensure_roles

# demo logins besides admin: (username, groups)
DEMO_USERS = [
    ("handler", [roles.SUPERVISOR, HANDLERS]),
    ("senior", [roles.SENIOR_SUPERVISOR, HANDLERS, SIU]),
    ("auditor", [roles.AUDITOR]),
]


def _password(name: str) -> str:
    path = settings.VAR_DIR / f"{name}_password"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(12))
        path.chmod(0o600)
    return path.read_text().strip()


class Command(BaseCommand):
    help = (
        "Create the role and queue groups, the demo login (admin, a password kept in var/admin_password) and the demo "
        "users handler, senior and auditor (passwords in var/<name>_password); print them."
    )

    def handle(self, *args, **options):
        for name in (HANDLERS, SIU):
            Group.objects.get_or_create(name=name)
        ensure_roles()
        governance, _ = Group.objects.get_or_create(name=settings.SELFOPS_GOVERNANCE["ADMIN_GROUP"])
        users = get_user_model().objects
        password = _password("admin")
        user, created = users.get_or_create(username="admin", defaults={"is_staff": True, "is_superuser": True})
        if created or not user.check_password(password):
            user.set_password(password)
            user.is_staff = user.is_superuser = True
            user.save()
        user.groups.add(governance)  # demotion notices go to this group
        self.stdout.write(self.style.SUCCESS(f"Log in as  admin / {password}"))
        for username, groups in DEMO_USERS:
            password = _password(username)
            user, created = users.get_or_create(username=username, defaults={"email": f"{username}@selfops.example"})
            if created or not user.check_password(password):
                user.set_password(password)
                user.save()
            user.groups.add(*Group.objects.filter(name__in=groups))
            self.stdout.write(f"           {username} / {password}  ({', '.join(groups)})")

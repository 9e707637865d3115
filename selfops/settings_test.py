"""Settings for the test suite: the same as production-like defaults, with test-only speedups.

DATABASE_URL selects PostgreSQL (``make test`` starts a throwaway one); without it the suite runs on SQLite, with a
file-backed test database so that a real qcluster subprocess can see it.
"""

from selfops.settings import *  # noqa: F403
from selfops.settings import DATABASES, VAR_DIR

if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test-selfops.sqlite3")}

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    # The manifest storage makes live_server serve 404 for every static file (ECOSYSTEM.md).
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
SELFOPS = {**SELFOPS, "STEP_RETRY_BACKOFF": 0.0}  # noqa: F405
# Tests talk plain HTTP to the test client and log in many times: HTTPS redirects and login throttling are tested in
# their own tests, which switch them on.
SECURE_SSL_REDIRECT = SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = False
SECURE_HSTS_SECONDS = 0
AXES_ENABLED = False

"""selfops settings: everything that varies between deployments comes from the environment (12-factor).

Defaults give the embedded mode: a SQLite file under ``var/`` shared by web and workers (WAL, IMMEDIATE
transactions, a busy timeout) and the django-q2 ORM broker on that same database.
"""

import secrets
from pathlib import Path

import environ

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(environ.Env().str("SELFOPS_VAR_DIR", default=str(BASE_DIR / "var")))
VAR_DIR.mkdir(parents=True, exist_ok=True)

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env")  # real environment variables win over .env


def _secret_key() -> str:
    """The secret key from the environment, else one generated once into var/ (never committed)."""
    if key := env.str("SECRET_KEY", default=""):
        return key
    path = VAR_DIR / "secret_key"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(50))
        path.chmod(0o600)
    return path.read_text().strip()


SECRET_KEY = _secret_key()
DEBUG = env.bool("DEBUG", default=False)
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "rest_framework",
    "django_filters",
    "django_htmx",
    "django_q",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "selfops",
    "audit",
    "governance",
    "operations",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "audit.middleware.CorrelationIdMiddleware",
]

ROOT_URLCONF = "selfops.urls"
WSGI_APPLICATION = "selfops.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "governance.context_processors.stops",
            ],
        },
    },
]

# --- database -------------------------------------------------------------------------------------------------------
SQLITE_OPTIONS = {
    # WAL lets the web process read while a worker writes; IMMEDIATE takes the write lock at BEGIN, which avoids
    # most "database is locked" errors when several processes write (see ECOSYSTEM.md).
    "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    "transaction_mode": "IMMEDIATE",
    "timeout": 20,
}
DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'selfops.sqlite3'}")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"].setdefault("OPTIONS", {}).update(SQLITE_OPTIONS)
else:
    # Workers run many short transactions: a new connection per task costs five-fold (ECOSYSTEM.md).
    DATABASES["default"]["CONN_MAX_AGE"] = env.int("CONN_MAX_AGE", default=300)
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

CACHES = {"default": env.cache("CACHE_URL", default="locmemcache://selfops")}

# --- auth -----------------------------------------------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 10}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "portal:home"
LOGOUT_REDIRECT_URL = "login"
SESSION_COOKIE_AGE = env.int("SESSION_COOKIE_AGE", default=8 * 3600)

# --- i18n / time ----------------------------------------------------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# --- static ---------------------------------------------------------------------------------------------------------
STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "staticfiles"
STATIC_ROOT.mkdir(exist_ok=True)
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": env.str(
            "STATICFILES_BACKEND",
            default="whitenoise.storage.CompressedManifestStaticFilesStorage"
            if not DEBUG
            else "django.contrib.staticfiles.storage.StaticFilesStorage",
        )
    },
}
WHITENOISE_USE_FINDERS = True

# --- email ----------------------------------------------------------------------------------------------------------
EMAIL_BACKEND = env.str("EMAIL_BACKEND", default="django.core.mail.backends.filebased.EmailBackend")
EMAIL_FILE_PATH = VAR_DIR / "mail"
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="claims@selfops.example")

# --- REST -----------------------------------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "operations.api.auth.ApiKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated", "operations.api.permissions.HasScope"],
    "DEFAULT_SCHEMA_CLASS": "operations.api.schema.SelfopsAutoSchema",
    # per API client (or portal user), in the default cache: it must be shared by all web processes (CACHE_URL)
    "DEFAULT_THROTTLE_CLASSES": ["operations.api.throttling.ClientRateThrottle"],
    "EXCEPTION_HANDLER": "operations.api.errors.exception_handler",
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
}
SPECTACULAR_SETTINGS = {
    "TITLE": "selfops API",
    "DESCRIPTION": "Submit and follow cases, resolve escalations, read governance and audit, receive signed webhooks. "
    "Authenticate with `Authorization: Bearer <key>`. Every error has the shape "
    '`{"error": code, "message": text, "fields": {field: text}}`.',
    "VERSION": "1.0.0",
    "OAS_VERSION": "3.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SCHEMA_PATH_PREFIX": r"/api/v1",
    "COMPONENT_SPLIT_REQUEST": True,
    "ENUM_NAME_OVERRIDES": {
        "CaseStatusEnum": "operations.models.CaseStatus",
        "EscalationStatusEnum": "operations.models.EscalationStatus",
        "StepRunStatusEnum": "operations.models.StepRunStatus",
        "WebhookDeliveryStatusEnum": "operations.models.WebhookDeliveryStatus",
        "WebhookEventEnum": "operations.models.WebhookEvent",
    },
    "WEBHOOKS": "operations.api.schema.WEBHOOKS",
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# --- workers (django-q2) --------------------------------------------------------------------------------------------
REDIS_URL = env.str("REDIS_URL", default="")
Q_CLUSTER = {
    "name": "selfops",
    "workers": env.int("Q_WORKERS", default=2),
    # A task that outlives `timeout` is killed; one not acknowledged within `retry` is delivered again. retry must
    # exceed timeout or a task runs twice while still running (checked by selfops.checks).
    "timeout": env.int("Q_TIMEOUT", default=60),
    "retry": env.int("Q_RETRY", default=90),
    # django-q2's own attempt limit does not hold when a worker dies; the engine counts step attempts itself.
    "max_attempts": env.int("Q_MAX_ATTEMPTS", default=5),
    "ack_failures": True,
    # The engine's rows are the record of success; storing every success costs 3x throughput (ECOSYSTEM.md).
    "save_limit": env.int("Q_SAVE_LIMIT", default=-1),
    "poll": env.float("Q_POLL", default=0.05),
    "catch_up": False,
    "label": "Workers",
}
if REDIS_URL:
    Q_CLUSTER["redis"] = REDIS_URL
else:
    Q_CLUSTER["orm"] = "default"

# --- selfops --------------------------------------------------------------------------------------------------------
SELFOPS = {
    # engine: attempts per step before an agent_error escalation, backoff between them (seconds), steps per task
    "STEP_MAX_ATTEMPTS": env.int("SELFOPS_STEP_MAX_ATTEMPTS", default=3),
    "STEP_RETRY_BACKOFF": env.float("SELFOPS_STEP_RETRY_BACKOFF", default=0.5),
    "AGENT_TIMEOUT": env.float("SELFOPS_AGENT_TIMEOUT", default=20.0),
    "MAX_STEPS_PER_TASK": env.int("SELFOPS_MAX_STEPS_PER_TASK", default=50),
    # the worker that decided a step delivers its payment/letter right after commit (no queue hop); off: a delivery
    # task per effect (for a slow gateway that should not hold the advancing workers)
    "DELIVER_INLINE": env.bool("SELFOPS_DELIVER_INLINE", default=True),
    # a case whose lease expired (its worker died) or that has sat running with no task is re-enqueued by the sweeper
    "SWEEP_STALE_AFTER": env.int("SELFOPS_SWEEP_STALE_AFTER", default=120),
    "DEFAULT_SLA_SECONDS": env.int("SELFOPS_DEFAULT_SLA_SECONDS", default=4 * 3600),
    # portal: approval authority (CLAIMS_DOMAIN.md tiers; decimal strings) and SLA follow-up
    "FOUR_EYES_AMOUNT": env.str("SELFOPS_FOUR_EYES_AMOUNT", default="10000"),
    "SUPERVISOR_APPROVAL_LIMIT": env.str("SELFOPS_SUPERVISOR_APPROVAL_LIMIT", default="10000"),
    "SENIOR_APPROVAL_LIMIT": env.str("SELFOPS_SENIOR_APPROVAL_LIMIT", default="50000"),
    "SLA_REASSIGN_AFTER": env.int("SELFOPS_SLA_REASSIGN_AFTER", default=4 * 3600),  # seconds past the deadline
    # REST API: requests per client per period (a client's own rate wins); webhook retries and timeout
    "API_THROTTLE_RATE": env.str("SELFOPS_API_THROTTLE_RATE", default="600/min"),
    "WEBHOOK_MAX_ATTEMPTS": env.int("SELFOPS_WEBHOOK_MAX_ATTEMPTS", default=8),
    "WEBHOOK_BACKOFF_SECONDS": env.float("SELFOPS_WEBHOOK_BACKOFF_SECONDS", default=30.0),
    "WEBHOOK_TIMEOUT": env.float("SELFOPS_WEBHOOK_TIMEOUT", default=10.0),
    # audit: seconds between sealer runs (the scheduled sealer's shift seals at this pace; audit.tasks)
    "AUDIT_SEAL_INTERVAL": env.float("SELFOPS_AUDIT_SEAL_INTERVAL", default=5.0),
}

# --- audit ----------------------------------------------------------------------------------------------------------
# HMAC key signing chain-head digests; empty: derived from SECRET_KEY (README "Audit trail": set it in production).
AUDIT_DIGEST_KEY = env.str("AUDIT_DIGEST_KEY", default="")
AUDIT_DIGEST_DIR = Path(env.str("AUDIT_DIGEST_DIR", default=str(VAR_DIR / "digests")))

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        "django-q": {"level": env.str("Q_LOG_LEVEL", default="WARNING")},
    },
}

# Language-model agents (operations/agents/llm.py): any OpenAI-compatible chat-completions endpoint; unset: agents
# that can use one fall back to their templates. Prices are money per 1,000 tokens, for the per-step cost.
SELFOPS_LLM = {
    "BASE_URL": env.str("SELFOPS_LLM_BASE_URL", default=""),
    "MODEL": env.str("SELFOPS_LLM_MODEL", default=""),
    "API_KEY": env.str("SELFOPS_LLM_API_KEY", default=""),
    "TIMEOUT": env.float("SELFOPS_LLM_TIMEOUT", default=8.0),  # two tries must fit in SELFOPS_AGENT_TIMEOUT
    "PRICE_IN": env.str("SELFOPS_LLM_PRICE_IN", default="0"),
    "PRICE_OUT": env.str("SELFOPS_LLM_PRICE_OUT", default="0"),
}
# Trained agent models (operations/agents/ml.py) are saved here
SELFOPS_MODELS_DIR = VAR_DIR / "models"


# --- governance -----------------------------------------------------------------------------------------------------
SELFOPS_GOVERNANCE = {
    # promotion: agreement over an agent's last WINDOW human judgements; eligible when the lower bound of the Wilson
    # interval (at z = WILSON_Z) reaches PROMOTE_AGREEMENT and at least PROMOTE_MIN_DECISIONS were judged
    "AGREEMENT_WINDOW": env.int("SELFOPS_GOV_AGREEMENT_WINDOW", default=50),
    "PROMOTE_AGREEMENT": env.float("SELFOPS_GOV_PROMOTE_AGREEMENT", default=0.85),
    "PROMOTE_MIN_DECISIONS": env.int("SELFOPS_GOV_PROMOTE_MIN_DECISIONS", default=20),
    "WILSON_Z": env.float("SELFOPS_GOV_WILSON_Z", default=1.96),
    # demotion: a bounded agent whose override share in the last DEMOTE_WINDOW_HOURS (at least DEMOTE_MIN_DECISIONS
    # judgements) exceeds DEMOTE_OVERRIDE_RATE goes back to supervised, automatically
    "DEMOTE_WINDOW_HOURS": env.int("SELFOPS_GOV_DEMOTE_WINDOW_HOURS", default=24),
    "DEMOTE_MIN_DECISIONS": env.int("SELFOPS_GOV_DEMOTE_MIN_DECISIONS", default=10),
    "DEMOTE_OVERRIDE_RATE": env.float("SELFOPS_GOV_DEMOTE_OVERRIDE_RATE", default=0.3),
    # the Django group whose members change governance (and get demotion notices)
    "ADMIN_GROUP": env.str("SELFOPS_GOV_ADMIN_GROUP", default="Governance admin"),
}


# --- security (hardening) -------------------------------------------------------------------------------------------
# HTTPS is on by default as soon as the site is served under a real host name; on the loopback-only default hosts
# (`make run` on http://127.0.0.1:8000) it is off, so the demo works without certificates. Every SECURE_* below can
# still be set one by one from the environment.
_LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "[::1]", "::1"}
SELFOPS_HTTPS = env.bool("SELFOPS_HTTPS", default=not DEBUG and not set(ALLOWED_HOSTS) <= _LOOPBACK_HOSTS)
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=SELFOPS_HTTPS)
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=SELFOPS_HTTPS)
CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=SELFOPS_HTTPS)
SESSION_COOKIE_HTTPONLY = True
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=31536000 if SELFOPS_HTTPS else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=SELFOPS_HTTPS)
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=SELFOPS_HTTPS)
# Opt-in, only behind a proxy that sets the header itself: e.g. SECURE_PROXY_SSL_HEADER=HTTP_X_FORWARDED_PROTO,https
if _proxy_header := env.list("SECURE_PROXY_SSL_HEADER", default=[]):
    SECURE_PROXY_SSL_HEADER = tuple(_proxy_header[:2])
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = env.str("SECURE_REFERRER_POLICY", default="same-origin")
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
# Bodies above this are refused with 400 before any view sees them (1 MiB; a claim payload is a few KB).
DATA_UPLOAD_MAX_MEMORY_SIZE = env.int("DATA_UPLOAD_MAX_MEMORY_SIZE", default=1024 * 1024)

# Content Security Policy (django-csp 4): no inline script anywhere (tests scan the templates for it).
INSTALLED_APPS += ["csp", "axes"]
MIDDLEWARE += [
    "csp.middleware.CSPMiddleware",
    "selfops.middleware.DenialLogMiddleware",
    # axes last, as its docs ask: it turns a locked-out login into its lockout response
    "axes.middleware.AxesMiddleware",
]
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "img-src": ["'self'", "data:"],
        "font-src": ["'self'"],
        "connect-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'self'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    }
}

# Login throttling (django-axes): AXES_FAILURE_LIMIT failed logins for one username from one address lock that pair
# out for AXES_COOLOFF_HOURS.
AUTHENTICATION_BACKENDS = ["axes.backends.AxesStandaloneBackend", "django.contrib.auth.backends.ModelBackend"]
AXES_ENABLED = env.bool("AXES_ENABLED", default=True)
AXES_FAILURE_LIMIT = env.int("AXES_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = env.float("AXES_COOLOFF_HOURS", default=0.5)
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_VERBOSE = False
LOGGING["loggers"]["selfops.security"] = {"level": "INFO"}
LOGGING["loggers"]["axes"] = {"level": "WARNING"}

# Workflow packs every process imports (their agents register on import); tests add a pack of their own here.
SELFOPS_PACKS = env.list("SELFOPS_PACKS", default=["operations.packs.claims"])

# Payments: the gateway (unset: ledger only), its timeout, and how owed effects are retried — backoff doubling from
# OUTBOX_RETRY_BACKOFF seconds (the sweeper hands due entries back to the workers), up to the retry window, after
# which the entry is marked failed and needs a person's attention.
SELFOPS_PAYMENT_GATEWAY_URL = env.str("SELFOPS_PAYMENT_GATEWAY_URL", default="")
SELFOPS.update(
    {
        "PAYMENT_TIMEOUT": env.float("SELFOPS_PAYMENT_TIMEOUT", default=10.0),
        "OUTBOX_RETRY_BACKOFF": env.float("SELFOPS_OUTBOX_RETRY_BACKOFF", default=30.0),
        "OUTBOX_RETRY_WINDOW": env.int("SELFOPS_OUTBOX_RETRY_WINDOW", default=6 * 3600),
    }
)

"""Settings, read from the environment.

Production is the default: DEBUG is off and a secret key must be given.
Development is explicit: ``DJANGO_DEBUG=1`` (``make run`` sets it).
"""

import os
from pathlib import Path

import dj_database_url
from django.utils.csp import CSP

from .environment import SettingError, env_bool, env_float, env_int, env_list

BASE_DIR = Path(__file__).resolve().parent.parent
DEVELOPMENT_SECRET_KEY = "django-insecure-development-only-never-use-in-production"

DEBUG = env_bool("DJANGO_DEBUG")

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY") or (DEVELOPMENT_SECRET_KEY if DEBUG else "")
if not SECRET_KEY:
    raise SettingError(
        "DJANGO_SECRET_KEY is not set. Set it to a long random string, or set DJANGO_DEBUG=1 for local development "
        '(make run and make manage ARGS="..." do).'
    )
if not DEBUG and (SECRET_KEY == DEVELOPMENT_SECRET_KEY or len(SECRET_KEY) < 32):
    raise SettingError(
        "DJANGO_SECRET_KEY is the development key or shorter than 32 characters: refusing to start in "
        "production. Generate one with: python -c 'import secrets; print(secrets.token_urlsafe(50))'"
    )

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]", "testserver"}
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost" if DEBUG else "")
if DEBUG and not env_bool("DJANGO_DEBUG_ANY_HOST") and set(ALLOWED_HOSTS) - LOCAL_HOSTS:
    raise SettingError(
        f"DJANGO_DEBUG is on with non-local hosts {sorted(set(ALLOWED_HOSTS) - LOCAL_HOSTS)}: debug pages "
        "leak settings and data. Turn DJANGO_DEBUG off for a served site."
    )
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "ninja",
    "django_htmx",
    "django_q",
    "treebeard",
    "forms_app",
    "events",
    # "demo" joins when EVENTS_DEMO_SERVICE is on (below).
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "events.middleware.ApiPathMiddleware",  # before CommonMiddleware: it settles the path first
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django.middleware.csp.ContentSecurityPolicyMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "events.middleware.ApiBodyLimitMiddleware",
]

ROOT_URLCONF = "config.urls"

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
                "django.template.context_processors.csp",
            ],
        },
    },
]

WSGI_APPLICATION = "config.wsgi.application"

# SQLite by default: WAL, IMMEDIATE transactions and a busy timeout, so that
# concurrent submits queue for the write lock instead of failing.
SQLITE_OPTIONS = {
    "transaction_mode": "IMMEDIATE",
    "timeout": 20,
    "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
}
# Persistent connections, checked before reuse (a restarted server is noticed). On SQLite too:
# in WAL mode a kept connection sees every commit, and opening one costs more than a query.
# On PostgreSQL this is the reuse DESIGN §12 asks for (~1 ms instead of ~40 ms for a fresh connection),
# rather than psycopg's pool (OPTIONS {"pool": ...}): a sync gunicorn worker and a django-q2 process
# each serve one thing at a time, so a pool would hold one connection per process all the same, and
# django-q2 forks its processes from the worker's, which would share the pool's open connections.
try:
    DATABASES = {
        "default": dj_database_url.parse(
            os.environ.get("DATABASE_URL") or f"sqlite:///{BASE_DIR / 'db.sqlite3'}",
            conn_max_age=env_int("DJANGO_CONN_MAX_AGE", 600),
            conn_health_checks=True,
        )
    }
except ValueError as error:  # an unknown scheme, a port that is not a number
    raise SettingError(f"DATABASE_URL cannot be read ({error}): use sqlite:///path or postgres://...") from None
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"]["OPTIONS"] = {**SQLITE_OPTIONS, **DATABASES["default"].get("OPTIONS", {})}
elif DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # Server-side binding: psycopg sends the parameters apart from the SQL, and prepares a statement
    # the fifth time a connection runs it, so PostgreSQL parses and plans each hot statement once per
    # connection instead of once per run (a queue job's statements a third faster, a poll's a quarter).
    # Off (Django's default, client-side binding) for a pooler that cannot keep prepared statements:
    # PgBouncer in transaction mode before 1.21, or without max_prepared_statements.
    # (Django leaves psycopg's preparing off unless prepare_threshold is given.)
    prepared = env_bool("EVENTS_DB_PREPARED_STATEMENTS", True)
    DATABASES["default"]["OPTIONS"] = {
        "server_side_binding": prepared,
        "prepare_threshold": 5 if prepared else None,
        **DATABASES["default"].get("OPTIONS", {}),
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# The throttles count in the default cache (events/throttle.py). Local memory by default, which counts
# per process: with N web processes a client gets up to N times each limit. DJANGO_CACHE=database
# counts once for every process and machine, in a table of the database (`manage.py createcachetable`).
CACHE_BACKENDS = {
    "locmem": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
    "database": {"BACKEND": "django.core.cache.backends.db.DatabaseCache", "LOCATION": "events_cache"},
}
CACHE_NAME = os.environ.get("DJANGO_CACHE", "locmem").strip().lower() or "locmem"
if CACHE_NAME not in CACHE_BACKENDS:
    raise SettingError(f"DJANGO_CACHE is {CACHE_NAME!r}: use one of {', '.join(sorted(CACHE_BACKENDS))}.")
CACHES = {"default": CACHE_BACKENDS[CACHE_NAME]}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

# Every text a visitor reads goes through gettext ({% translate %}, gettext_lazy); English is the only
# language shipped, so there is no LocaleMiddleware: every request is in LANGUAGE_CODE. A translation
# goes in locale/<code>/LC_MESSAGES/django.po (makemessages, compilemessages) and LANGUAGES.
LANGUAGE_CODE = "en"
LANGUAGES = [("en", "English")]
LOCALE_PATHS = [BASE_DIR / "locale"]
TIME_ZONE = os.environ.get("DJANGO_TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
# Files served at the site's root by whitenoise: /favicon.ico, which browsers ask for on every page
# that names no icon (admin, /api/docs). Our own pages name static/favicon.svg too.
WHITENOISE_ROOT = BASE_DIR / "static" / "root"
if not DEBUG:
    # Production: whitenoise serves collected, compressed, cache-busted files (run collectstatic).
    STORAGES = {
        "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
        "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
    }
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if env_bool("DJANGO_BEHIND_HTTPS_PROXY") else None

SESSION_COOKIE_SECURE = not DEBUG and env_bool("DJANGO_SECURE_COOKIES", True)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE

# Content Security Policy, on every page: scripts and styles from our own static files only, or inline
# with the request's nonce ({% csp_nonce_attr %}; django-htmx's {% htmx_script %} and Django admin add it
# themselves). data: images are Swagger UI's icons at /api/docs. No form-action: a form's POST may end,
# through its waiting page, in a redirect to the URL an admin chose, which form-action would block.
# tests/e2e/test_csp.py loads the public form, the waiting page, admin and /api/docs in a browser under it.
SECURE_CSP = {
    "default-src": [CSP.SELF],
    "script-src": [CSP.SELF, CSP.NONCE],
    "style-src": [CSP.SELF, CSP.NONCE],
    "img-src": [CSP.SELF, "data:"],
    "object-src": [CSP.NONE],
    "base-uri": [CSP.NONE],
    "frame-ancestors": [CSP.NONE],
}

# Mail: the console in development, SMTP (configured by environment) otherwise.
EMAIL_BACKEND_PATH = os.environ.get(
    "DJANGO_EMAIL_BACKEND",
    "django.core.mail.backends.console.EmailBackend" if DEBUG else "django.core.mail.backends.smtp.EmailBackend",
)
MAILERS = {"default": {"BACKEND": EMAIL_BACKEND_PATH}}
if EMAIL_BACKEND_PATH.endswith("smtp.EmailBackend"):
    MAILERS["default"]["OPTIONS"] = {
        "host": os.environ.get("DJANGO_EMAIL_HOST", "localhost"),
        "port": env_int("DJANGO_EMAIL_PORT", 25),
        "username": os.environ.get("DJANGO_EMAIL_USER", ""),
        "password": os.environ.get("DJANGO_EMAIL_PASSWORD", ""),
        "use_tls": env_bool("DJANGO_EMAIL_USE_TLS"),
        "timeout": 20,
    }
DEFAULT_FROM_EMAIL = os.environ.get("DJANGO_DEFAULT_FROM_EMAIL", "events@localhost")

# django-q2, with the database broker. Our own table holds results, so
# django-q2 keeps none (save_limit -1). Jobs are idempotent; retry is kept
# larger than timeout as django-q2 requires.
EVENTS_JOB_TIMEOUT = env_int("EVENTS_JOB_TIMEOUT", 600)
Q_CLUSTER = {
    "name": "events",
    "orm": "default",
    "workers": env_int("EVENTS_QUEUE_WORKERS", 2),
    "timeout": EVENTS_JOB_TIMEOUT,
    "retry": EVENTS_JOB_TIMEOUT + 60,
    "poll": 0.1,
    # Take at most one job per worker ahead: a job taken but not started is sent again only after
    # EVENTS_REQUEUE_AFTER_SECONDS if its worker dies, so few should wait taken.
    "queue_limit": env_int("EVENTS_QUEUE_WORKERS", 2),
    "save_limit": -1,
    "max_attempts": 1,
    "ack_failures": True,
    "catch_up": False,
    "label": "Queue",
}

# Our own settings (read at call time through django.conf.settings).
EVENTS_PUBLIC_URL = os.environ.get("EVENTS_PUBLIC_URL", "http://127.0.0.1:8000")
EVENTS_HTTP_ALLOWED_HOSTS = env_list("EVENTS_HTTP_ALLOWED_HOSTS")
# A step's lease: a worker's heartbeat renews it every third of its length while the step
# runs, so it can be short; a step whose worker was killed runs again about this long after.
EVENTS_TASK_LEASE_SECONDS = env_int("EVENTS_TASK_LEASE_SECONDS", 60)
# How often the worker hands due work to the queue and fails callbacks past their deadline.
EVENTS_DISPATCH_INTERVAL = env_float("EVENTS_DISPATCH_INTERVAL", 0.2)
# The sweep (in every worker): how often; after how long a hand-off whose job is gone from the
# broker is sent again; after how long a job a worker took but never started is sent again (and
# a run nothing moves on is repaired); how many times a task whose worker died is tried again.
EVENTS_SWEEP_INTERVAL = env_float("EVENTS_SWEEP_INTERVAL", 5)
EVENTS_HANDOFF_CHECK_SECONDS = env_int("EVENTS_HANDOFF_CHECK_SECONDS", 10)
EVENTS_REQUEUE_AFTER_SECONDS = env_int("EVENTS_REQUEUE_AFTER_SECONDS", 30)
# A job that loses the database waits this long for it to answer again, then hands its work back.
EVENTS_DATABASE_WAIT_SECONDS = env_int("EVENTS_DATABASE_WAIT_SECONDS", 300)
# On SIGTERM or SIGINT a worker stops claiming and lets running steps finish for this long.
EVENTS_STOP_GRACE_SECONDS = env_int("EVENTS_STOP_GRACE_SECONDS", 30)
EVENTS_LEASE_RETRY_LIMIT = env_int("EVENTS_LEASE_RETRY_LIMIT", 3)
# The watchdog: the oldest ready job may wait this long while the cluster claims to run.
EVENTS_WATCHDOG_SECONDS = env_int("EVENTS_WATCHDOG_SECONDS", 60)
EVENTS_RETENTION_DAYS = env_int("EVENTS_RETENTION_DAYS", 30)
EVENTS_MAX_EVENT_DEPTH = env_int("EVENTS_MAX_EVENT_DEPTH", 20)
EVENTS_HTTP_SIGNING_SECRET = os.environ.get("EVENTS_HTTP_SIGNING_SECRET", "")
# The demo app (demo/: the `demo` command, its booking form, and the stand-in external services at
# /demo/external-service/ and /demo/loyalty-service/): installed in development only, unless set.
# Its views also read the setting at call time, and answer 404 while it is off.
EVENTS_DEMO_SERVICE = env_bool("EVENTS_DEMO_SERVICE", DEBUG)
EVENTS_DEMO_SERVICE_STEP_SECONDS = env_float("EVENTS_DEMO_SERVICE_STEP_SECONDS", 1.5)
if EVENTS_DEMO_SERVICE:
    INSTALLED_APPS.append("demo")
EVENTS_API_MAX_BODY_BYTES = env_int("EVENTS_API_MAX_BODY_BYTES", 1024 * 1024)
# Task logs: an API call may add at most this many lines (more is refused with 413); a longer
# line is cut, with a marker; past the total, the oldest lines make way, behind one marker line.
EVENTS_TASK_LOG_MAX_LINES_PER_CALL = env_int("EVENTS_TASK_LOG_MAX_LINES_PER_CALL", 500)
EVENTS_TASK_LOG_MAX_LINE_CHARS = env_int("EVENTS_TASK_LOG_MAX_LINE_CHARS", 2000)
EVENTS_TASK_LOG_MAX_LINES = env_int("EVENTS_TASK_LOG_MAX_LINES", 1000)
# While the database is unreachable: the Retry-After (seconds) of the 503 answers.
EVENTS_UNAVAILABLE_RETRY_AFTER_SECONDS = env_int("EVENTS_UNAVAILABLE_RETRY_AFTER_SECONDS", 5)
# The web server's worker timeout: gunicorn's --timeout in the Procfile and deploy/events-web.service
# reads the same variable. A step run in the submit request (inline) may wait at most
# EVENTS_INLINE_STEP_MAX_SECONDS for any one thing (a pause, a connection, an answer's next bytes);
# `manage.py check` refuses a cap above a third of the web timeout (events/checks.py).
EVENTS_WEB_TIMEOUT_SECONDS = env_int("EVENTS_WEB_TIMEOUT_SECONDS", 30)
EVENTS_INLINE_STEP_MAX_SECONDS = env_float("EVENTS_INLINE_STEP_MAX_SECONDS", 10)
# A test run (events/testrun: a tree run against a submission, nothing sent) holds one transaction (on
# SQLite, the write lock: real submits wait for it), so it is short: it plays at most this many
# worker steps and stops after this many seconds, whatever the tree does; a replay runs at most
# EVENTS_REPLAY_MAX_RECORDS records through two versions each.
EVENTS_TEST_RUN_MAX_STEPS = env_int("EVENTS_TEST_RUN_MAX_STEPS", 1000)
EVENTS_TEST_RUN_MAX_SECONDS = env_float("EVENTS_TEST_RUN_MAX_SECONDS", 5)
EVENTS_REPLAY_MAX_RECORDS = env_int("EVENTS_REPLAY_MAX_RECORDS", 500)
# A replay job plays records for at most this long, then sends itself again for the rest.
EVENTS_REPLAY_SLICE_SECONDS = env_float("EVENTS_REPLAY_SLICE_SECONDS", 20)
# Throttles, per client address (events/throttle.py), counted in the default cache (CACHES above):
# POSTs to a public form, and failed API authentications (after which every API call that needs a
# credential answers 429 until the window ends). A limit of 0 turns its throttle off.
EVENTS_FORM_POST_LIMIT = env_int("EVENTS_FORM_POST_LIMIT", 30)
EVENTS_FORM_POST_WINDOW_SECONDS = env_int("EVENTS_FORM_POST_WINDOW_SECONDS", 60)
EVENTS_API_AUTH_FAILURE_LIMIT = env_int("EVENTS_API_AUTH_FAILURE_LIMIT", 20)
EVENTS_API_AUTH_FAILURE_WINDOW_SECONDS = env_int("EVENTS_API_AUTH_FAILURE_WINDOW_SECONDS", 300)
# How many reverse proxies in front of the web server append the client's address to X-Forwarded-For:
# the throttles count by the address the nearest of them saw. 0: the connection's own address.
EVENTS_TRUSTED_PROXIES = env_int("EVENTS_TRUSTED_PROXIES", 1 if SECURE_PROXY_SSL_HEADER else 0)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
    "loggers": {
        "events": {"level": os.environ.get("EVENTS_LOG_LEVEL", "INFO")},
        "demo": {"level": os.environ.get("EVENTS_LOG_LEVEL", "INFO")},
        "django_q": {"level": "WARNING"},
    },
}

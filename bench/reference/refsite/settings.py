"""The reference app: what a hand-written Django + django-q2 project looks like (``startproject`` defaults).

It shares no code with ours. The bench runs it beside ours, on the same kind of database and the
same server settings, and divides our figures by its own. Read from the environment:

- ``REF_SECRET_KEY``: the secret key (django-q2 signs its queue packages with it);
- ``REF_DATABASE_URL``: ``sqlite:////path/to/file`` or ``postgres://...``;
- ``REF_CONN_MAX_AGE`` (optional, from the bench's ``BENCH_REF_CONN_MAX_AGE``): overrides the below.

Connections: SQLite with Django's default (``CONN_MAX_AGE = 0``, a connection per request, as a
hand-written app has it) and the same SQLite options as ours (WAL, IMMEDIATE, a busy timeout);
PostgreSQL with persistent, health-checked connections (``CONN_MAX_AGE = 600``), as ours.
"""

import os
from pathlib import Path

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ["REF_SECRET_KEY"]
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_q",
    "entries",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "refsite.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

WSGI_APPLICATION = "refsite.wsgi.application"

DATABASES = {"default": dj_database_url.parse(os.environ["REF_DATABASE_URL"])}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"]["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
else:
    DATABASES["default"]["CONN_MAX_AGE"] = 600
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
if os.environ.get("REF_CONN_MAX_AGE"):
    DATABASES["default"]["CONN_MAX_AGE"] = int(os.environ["REF_CONN_MAX_AGE"])

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"

# The raw django-q2 cluster: the database broker, 2 workers, no stored results.
Q_CLUSTER = {
    "name": "reference",
    "orm": "default",
    "workers": 2,
    "timeout": 600,
    "retry": 660,
    "poll": 0.1,
    "save_limit": -1,
    "max_attempts": 1,
    "ack_failures": True,
    "catch_up": False,
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
}

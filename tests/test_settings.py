"""Production settings refuse unsafe configurations: each case starts ``manage.py`` in a fresh process."""

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings

from config.settings import DEVELOPMENT_SECRET_KEY

TIMEOUT = 60
GOOD_KEY = secrets.token_urlsafe(50)[:50]


@pytest.fixture
def manage(tmp_path):
    """``manage("check", DJANGO_SECRET_KEY=...)``: run manage.py with a clean production environment."""

    def run(*args, **env):
        clean = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith(("DJANGO_", "EVENTS_")) and name != "DATABASE_URL"
        }
        clean.update(DJANGO_SETTINGS_MODULE="config.settings", DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}")
        clean.update(env)
        return subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=settings.BASE_DIR,
            env=clean,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )

    return run


def test_production_without_a_secret_key_refuses_to_start(manage):
    result = manage("check")

    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY is not set" in result.stderr


def test_production_with_the_development_key_refuses_to_start(manage):
    result = manage("check", DJANGO_SECRET_KEY=DEVELOPMENT_SECRET_KEY, DJANGO_ALLOWED_HOSTS="example.com")

    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY is the development key" in result.stderr


def test_production_with_a_short_key_refuses_to_start(manage):
    result = manage("check", DJANGO_SECRET_KEY="0123456789", DJANGO_ALLOWED_HOSTS="example.com")

    assert result.returncode != 0
    assert "shorter than 32 characters" in result.stderr


def test_debug_on_a_served_host_refuses_to_start(manage):
    result = manage("check", DJANGO_DEBUG="1", DJANGO_SECRET_KEY=GOOD_KEY, DJANGO_ALLOWED_HOSTS="example.com")

    assert result.returncode != 0
    assert "DJANGO_DEBUG is on with non-local hosts ['example.com']" in result.stderr


def test_debug_on_localhost_starts(manage):
    result = manage("check", DJANGO_DEBUG="1")

    assert result.returncode == 0, result.stderr


def test_production_with_a_good_key_starts_with_secure_cookies_and_debug_off(manage):
    env = {"DJANGO_SECRET_KEY": GOOD_KEY, "DJANGO_ALLOWED_HOSTS": "example.com"}

    check = manage("check", **env)
    assert check.returncode == 0, check.stderr
    assert "System check identified no issues" in check.stdout

    shown = manage(
        "shell",
        "-c",
        "from django.conf import settings; "
        "print(settings.SESSION_COOKIE_SECURE, settings.CSRF_COOKIE_SECURE, settings.DEBUG, settings.ALLOWED_HOSTS)",
        **env,
    )
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.strip().splitlines()[-1] == "True True False ['example.com']"


def test_a_web_worker_on_sqlite_loads_neither_the_http_client_nor_the_postgresql_driver(tmp_path):
    """They cost a web worker ~19 and ~24 MB; the HTTP client loads when a step calls out, psycopg on PostgreSQL."""
    import subprocess
    import sys

    code = (
        "import sys, django; django.setup(); import config.wsgi; from django.urls import resolve; resolve('/admin/');"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'httpx', 'psycopg'}))"
    )
    env = {
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DJANGO_SECRET_KEY": "x" * 50,
        "DJANGO_ALLOWED_HOSTS": "127.0.0.1",
        "DATABASE_URL": f"sqlite:///{tmp_path}/db.sqlite3",
        "PATH": "/usr/bin:/bin",
    }
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=str(__import__("pathlib").Path(__file__).resolve().parent.parent),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_throttles_count_in_local_memory_unless_told_to_share_the_database(manage):
    """DJANGO_CACHE=database: one count for every web process and machine (README, Configuration)."""
    show = "from django.conf import settings; print(settings.CACHES['default']['BACKEND'])"

    assert manage("shell", "-c", show, DJANGO_DEBUG="1").stdout.split()[-1].endswith("LocMemCache")
    shared = manage("shell", "-c", show, DJANGO_DEBUG="1", DJANGO_CACHE="database")
    assert shared.stdout.split()[-1] == "django.core.cache.backends.db.DatabaseCache", shared.stderr
    unknown = manage("check", DJANGO_DEBUG="1", DJANGO_CACHE="redis")
    assert unknown.returncode != 0
    assert "DJANGO_CACHE is 'redis': use one of database, locmem." in unknown.stderr


def test_behind_an_https_proxy_the_throttles_read_one_forwarded_address(manage):
    show = "from django.conf import settings; print(settings.EVENTS_TRUSTED_PROXIES)"

    assert manage("shell", "-c", show, DJANGO_DEBUG="1").stdout.split()[-1] == "0"
    assert manage("shell", "-c", show, DJANGO_DEBUG="1", DJANGO_BEHIND_HTTPS_PROXY="1").stdout.split()[-1] == "1"


def test_postgresql_keeps_each_connection_open_rather_than_pooling(manage):
    """One persistent, health-checked connection per process (config/settings.py says why no pool)."""
    show = (
        "from django.conf import settings; d = settings.DATABASES['default']; "
        "print(d['ENGINE'], d['CONN_MAX_AGE'], d['CONN_HEALTH_CHECKS'], 'pool' in d.get('OPTIONS', {}))"
    )

    result = manage(
        "shell", "-c", show, DJANGO_DEBUG="1", DATABASE_URL="postgres://events:secret@127.0.0.1:5432/events"
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-4:] == ["django.db.backends.postgresql", "600", "True", "False"]


def test_postgresql_prepares_hot_statements_unless_a_pooler_cannot_keep_them(manage):
    """Server-side binding with psycopg's preparing (Django leaves it off); EVENTS_DB_PREPARED_STATEMENTS=false
    goes back to Django's client-side binding, for PgBouncer in transaction mode (docs/deploy.md)."""
    show = (
        "from django.conf import settings; o = settings.DATABASES['default']['OPTIONS']; "
        "print(o['server_side_binding'], o['prepare_threshold'])"
    )
    url = "postgres://events:secret@127.0.0.1:5432/events"

    prepared = manage("shell", "-c", show, DJANGO_DEBUG="1", DATABASE_URL=url)
    off = manage("shell", "-c", show, DJANGO_DEBUG="1", DATABASE_URL=url, EVENTS_DB_PREPARED_STATEMENTS="false")

    assert prepared.stdout.split()[-2:] == ["True", "5"], prepared.stderr
    assert off.stdout.split()[-2:] == ["False", "None"], off.stderr


# A wrong or missing setting is one line that names the variable, not a traceback (issue 11).


def assert_one_line(result, starts_with):
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()], result.stderr
    assert result.stderr.startswith(f"Configuration error: {starts_with}"), result.stderr


@pytest.mark.parametrize("command", [["check"], ["export_form", "booking"], ["worker"]])
def test_a_missing_secret_key_is_one_line_naming_the_variable(manage, command):
    result = manage(*command)

    assert_one_line(result, "DJANGO_SECRET_KEY is not set. Set it to a long random string, or set DJANGO_DEBUG=1")


@pytest.mark.parametrize(
    ("env", "starts_with"),
    [
        ({"EVENTS_TASK_LEASE_SECONDS": "60s"}, "EVENTS_TASK_LEASE_SECONDS is '60s': it must be a whole number"),
        ({"EVENTS_SWEEP_INTERVAL": "often"}, "EVENTS_SWEEP_INTERVAL is 'often': it must be a number"),
        ({"DJANGO_DEBUG": "ture"}, "DJANGO_DEBUG is 'ture': use 1 or 0"),
        ({"DATABASE_URL": "mysqll://db/events"}, "DATABASE_URL cannot be read"),
    ],
)
def test_a_wrong_setting_is_one_line_naming_the_variable(manage, env, starts_with):
    result = manage("check", **{"DJANGO_DEBUG": "1", **env})

    assert_one_line(result, starts_with)


def test_a_python_without_django_is_told_to_use_make_manage(manage):
    result = subprocess.run(
        [sys.executable, "-S", "manage.py", "check"],  # -S: no site-packages, so no Django
        cwd=settings.BASE_DIR,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )

    assert result.returncode == 1
    assert result.stderr.strip().startswith("Django is not installed for ")
    assert 'make manage ARGS="..."' in result.stderr and "Traceback" not in result.stderr


def test_the_wsgi_application_says_a_missing_setting_in_one_line_and_exits_4(tmp_path):
    env = {"PATH": os.environ.get("PATH", ""), "DATABASE_URL": f"sqlite:///{tmp_path}/db.sqlite3"}
    result = subprocess.run(
        [sys.executable, "-c", "import config.wsgi"],
        cwd=settings.BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )

    assert result.returncode == 4  # gunicorn's "App failed to load": it stops instead of restarting workers
    assert result.stderr.strip().startswith("Configuration error: DJANGO_SECRET_KEY is not set.")
    assert len(result.stderr.strip().splitlines()) == 1


def test_gunicorn_stops_on_a_missing_setting_without_a_traceback(tmp_path):
    gunicorn = Path(sys.executable).with_name("gunicorn")
    env = {"PATH": os.environ.get("PATH", ""), "DATABASE_URL": f"sqlite:///{tmp_path}/db.sqlite3"}
    result = subprocess.run(
        [str(gunicorn), "config.wsgi", "--bind", "127.0.0.1:0", "--workers", "1", "--no-control-socket"],
        cwd=settings.BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )

    assert result.returncode != 0
    assert "Configuration error: DJANGO_SECRET_KEY is not set." in result.stderr
    assert "App failed to load" in result.stderr
    assert "Traceback" not in result.stderr

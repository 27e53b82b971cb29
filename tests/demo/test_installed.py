"""The demo is not the product: in production it is not installed at all, unless EVENTS_DEMO_SERVICE says so.

Each case starts ``manage.py`` in a fresh process, since INSTALLED_APPS and the URLconf are read once.
"""

import os
import secrets
import subprocess
import sys

import pytest
from django.conf import settings

TIMEOUT = 60
SHOW = """
from django.apps import apps
from django.core.management import get_commands
from django.urls import Resolver404, resolve
try:
    resolve("/demo/external-service/")
    routed = True
except Resolver404:
    routed = False
print("demo:", apps.is_installed("demo"), routed, "demo" in get_commands())
"""


def demo_presence(tmp_path, **env):
    """(installed, its URL routed, its command known) in a fresh process with a production environment plus env."""
    clean = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("DJANGO_", "EVENTS_")) and name != "DATABASE_URL"
    }
    clean.update(
        DJANGO_SETTINGS_MODULE="config.settings",
        DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
        DJANGO_SECRET_KEY=secrets.token_urlsafe(50),
        DJANGO_ALLOWED_HOSTS="127.0.0.1",
    )
    clean.update(env)
    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", SHOW],
        cwd=settings.BASE_DIR,
        env=clean,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 0, result.stderr
    [shown] = [line for line in result.stdout.splitlines() if line.startswith("demo:")]
    return tuple(word == "True" for word in shown.split()[1:])


@pytest.mark.parametrize(
    ("env", "present"),
    [
        ({}, False),
        ({"EVENTS_DEMO_SERVICE": "1"}, True),
        ({"DJANGO_DEBUG": "1"}, True),
        ({"DJANGO_DEBUG": "1", "EVENTS_DEMO_SERVICE": "0"}, False),
    ],
    ids=["production", "production-with-the-setting", "development", "development-with-the-setting-off"],
)
def test_the_demo_app_its_urls_and_its_command_exist_only_in_development_or_with_the_setting(tmp_path, env, present):
    assert demo_presence(tmp_path, **env) == (present, present, present)

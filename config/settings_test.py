"""Settings for the test suite: development mode, unless the environment says otherwise."""

import os
import tempfile
from pathlib import Path

os.environ.setdefault("DJANGO_DEBUG", "1")
os.environ.setdefault("DJANGO_SECRET_KEY", "test-secret-key-not-for-production")

from .settings import *  # noqa: E402,F403
from .settings import DATABASES  # noqa: E402

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

# The test database is a file, not SQLite's in-memory database, so that the
# e2e tests' worker subprocess (``manage.py worker``) can open it too: they pass
# it DATABASE_URL=sqlite:///<the test database's file>. The file name carries the
# pid, so that test runs started side by side in one checkout never share one;
# pytest-xdist appends ``_gw0``, ``_gw1``... per worker. Django deletes it when the
# run ends. The SQLite OPTIONS (WAL, IMMEDIATE, busy timeout) apply to it as well.
# EVENTS_TEST_DB_DIR chooses the folder (default: the system's temporary folder).
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    _test_db_dir = Path(os.environ.get("EVENTS_TEST_DB_DIR") or tempfile.gettempdir())
    DATABASES["default"].setdefault("TEST", {})
    DATABASES["default"]["TEST"]["NAME"] = str(_test_db_dir / f"events-test-{os.getpid()}.sqlite3")

# Tests never run collectstatic: let WhiteNoise look files up per request, as in
# development, instead of warning that STATIC_ROOT does not exist.
WHITENOISE_AUTOREFRESH = True

# The throttles count per client address, and every test client comes from 127.0.0.1: off here,
# so that the suite's many submissions do not add up. The tests of the throttles turn them on
# (the limits are read at each call: the settings fixture sets them).
EVENTS_FORM_POST_LIMIT = 0
EVENTS_API_AUTH_FAILURE_LIMIT = 0

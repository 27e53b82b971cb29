"""Fixtures for the full-stack tests: a real worker process and a real browser.

The worker is ``manage.py worker`` in a subprocess that opens the same test
database file as this process (see config/settings_test.py), so every test
here needs ``django_db(transaction=True)``: rows must be committed for the
worker to see them, and hand-offs to the queue happen on commit.
"""

import io
import os
import shutil
import sys
from pathlib import Path
from urllib.parse import quote

import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import connection

from forms_app.models import Form
from tests.support.processes import ManagedProcess

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
WORKER_READY_LINE = "worker: cluster started"
WORKER_START_SECONDS = 30
WORKER_STOP_SECONDS = 15


def _test_database_url():
    """A DATABASE_URL naming this test run's database (SQLite file or PostgreSQL test database)."""
    db = connection.settings_dict
    if connection.vendor == "sqlite":
        assert db["NAME"] and not connection.is_in_memory_db(), (
            f"the test database must be a file the worker can open, not {db['NAME']!r}"
        )
        return f"sqlite:///{db['NAME']}"
    assert connection.vendor == "postgresql", f"e2e tests run on SQLite or PostgreSQL, not {connection.vendor}"
    credentials = quote(db["USER"] or "", safe="") + (":" + quote(db["PASSWORD"], safe="") if db["PASSWORD"] else "")
    return f"postgres://{credentials}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


def _worker_env(database_url, extra):
    env = dict(os.environ)
    env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    env.update(
        DATABASE_URL=database_url,
        DJANGO_SETTINGS_MODULE="config.settings_test",
        DJANGO_DEBUG="1",
        PYTHONUNBUFFERED="1",
        EVENTS_LOG_LEVEL="INFO",
    )
    env.update(extra)
    return env


@pytest.fixture
def worker_env():
    """Extra environment variables for the worker process. Override it in a module to add some."""
    return {}


@pytest.fixture
def booking(transactional_db):
    """The demo data, loaded by ``manage.py demo``: the ``booking`` form and its tree."""
    # pytest-django turns DEBUG off, and demo refuses to run without DEBUG unless forced.
    call_command("demo", force=True, stdout=io.StringIO())
    return Form.objects.get(slug="booking")


@pytest.fixture
def demo_service(live_server, settings):
    """The demo's stand-in service reachable on the live server, for both processes.

    This process (the live server) gets the settings; the returned variables are
    for the worker process: return them from a module's ``worker_env`` fixture.
    The live server becomes the public URL (callback URLs and ``{{ site.public_url }}``
    point at it), the HTTP action may reach 127.0.0.1, and the stand-in view is on
    although pytest-django turns DEBUG off.
    """
    settings.EVENTS_PUBLIC_URL = live_server.url
    settings.EVENTS_HTTP_ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
    settings.EVENTS_DEMO_SERVICE = True
    return {"EVENTS_PUBLIC_URL": live_server.url, "EVENTS_HTTP_ALLOWED_HOSTS": "127.0.0.1,localhost"}


@pytest.fixture
def worker(transactional_db, tmp_path, request, worker_env):
    """``python manage.py worker`` against this test's database, started and ready; stopped afterwards.

    Depends on ``transactional_db`` so that it stops before the database is flushed.
    Its environment is this process's plus ``worker_env``. Its output is printed when the test fails.
    """
    # Its own session: stop() SIGKILLs the group, so the cluster's children (sentinel,
    # pusher, workers, monitor) cannot outlive the test.
    running = ManagedProcess(
        "The worker",
        [sys.executable, "manage.py", "worker"],
        cwd=settings.BASE_DIR,
        env=_worker_env(_test_database_url(), worker_env),
        log_path=tmp_path / "worker.log",
        start_seconds=WORKER_START_SECONDS,
        stop_seconds=WORKER_STOP_SECONDS,
    )
    request.addfinalizer(lambda: _stop_and_report(running, request))
    running.wait_for_line(WORKER_READY_LINE)
    return running


def _stop_and_report(running, request):
    running.stop()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(f"\n----- worker output ({running.log_path}) -----\n{running.output()}\n----- end of worker output -----")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the item, so that fixtures can tell whether the test failed."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture(scope="module")
def browser():
    """Debian's chromium driven by Playwright (never ``playwright install``: it cannot download here).

    Module-scoped, so that Playwright's event loop never outlives the e2e modules
    into other tests run by the same process. While it runs, Django must be told
    that ORM calls from this thread are fine (DJANGO_ALLOW_ASYNC_UNSAFE).
    """
    executable = shutil.which("chromium")
    if executable is None:
        pytest.fail("chromium is missing: install Debian's chromium package (make browser).")
    from playwright.sync_api import sync_playwright

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        with sync_playwright() as playwright:
            chromium = playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
            try:
                yield chromium
            finally:
                chromium.close()


def _new_page(browser, **context_options):
    context = browser.new_context(**context_options)
    context.set_default_timeout(30_000)
    context.set_default_navigation_timeout(30_000)
    return context, context.new_page()


@pytest.fixture
def page(browser, request, tmp_path):
    """A fresh page in a fresh browser context, JavaScript on. Its HTML and a screenshot are kept on failure."""
    context, page = _new_page(browser)
    yield page
    _report_page(page, request, tmp_path)
    context.close()


@pytest.fixture
def page_without_js(browser, request, tmp_path):
    """A fresh page in a fresh browser context with JavaScript disabled."""
    context, page = _new_page(browser, java_script_enabled=False)
    yield page
    _report_page(page, request, tmp_path)
    context.close()


def _report_page(page, request, tmp_path):
    report = getattr(request.node, "rep_call", None)
    if report is None or not report.failed:
        return
    try:
        shot = Path(tmp_path) / "page.png"
        page.screenshot(path=str(shot), full_page=True)
        print(f"\n----- page {page.url} (screenshot: {shot}) -----\n{page.content()}\n----- end of page -----")
    except Exception as exc:  # the page may be gone; the test's own report must still come out
        print(f"\n(could not capture the page: {exc})")

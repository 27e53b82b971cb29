"""Fixtures for the fault tests: real processes on 127.0.0.1, each test with its own database.

These tests never use pytest-django's database. A test asks ``make_stack`` for a
stack on SQLite (a file in its tmp_path) or on PostgreSQL (a database of its own on
a throw-away cluster this session starts with initdb/pg_ctl on a free port, and
removes at the end: the machine's PostgreSQL is never touched). Run them on their
own, one at a time:

    .venv/bin/python -m pytest -s -m faults tests/faults
"""

import sqlite3
import time

import pytest

from tests.support.pg_cluster import PostgresUnavailable, ThrowawayPostgres

from . import harness
from .recorder import Recorder


@pytest.fixture(scope="session")
def pg_cluster():
    """The session's throw-away PostgreSQL cluster (started on first use, stopped and removed at the end)."""
    try:
        cluster = ThrowawayPostgres()
    except PostgresUnavailable as exc:
        pytest.fail(str(exc))
    try:
        cluster.start()
    except PostgresUnavailable as exc:
        cluster.destroy()
        pytest.fail(str(exc))
    yield cluster
    cluster.destroy()


@pytest.fixture
def recorder():
    recorder = Recorder()
    yield recorder
    recorder.close()


@pytest.fixture(scope="session")
def migrated_templates():
    """One migrated database per kind, made on first use; each test's database is a copy (saves a migrate)."""
    return {}


def _template(kind, templates, tmp_path_factory, request):
    if kind not in templates:
        if kind == "postgres":
            template = harness.PostgresDatabase(request.getfixturevalue("pg_cluster"), name="faults_template")
            harness.Stack(tmp_path_factory.mktemp("pg-template"), template).migrate()
            templates[kind] = template.name
        else:
            template = harness.SqliteDatabase(tmp_path_factory.mktemp("sqlite-template"))
            harness.Stack(template.path.parent, template).migrate()
            connection = sqlite3.connect(template.path)
            connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            connection.close()
            templates[kind] = template.path
    return templates[kind]


@pytest.fixture
def make_stack(tmp_path, tmp_path_factory, migrated_templates, request):
    """``make_stack("sqlite" | "postgres", overrides={...})``: a migrated stack; stopped (by PID) at the end."""
    made = []

    def make(database="sqlite", overrides=None):
        template = _template(database, migrated_templates, tmp_path_factory, request)
        if database == "postgres":
            cluster = request.getfixturevalue("pg_cluster")
            cluster.wait_until_up()
            db = harness.PostgresDatabase(cluster, template=template)
        else:
            db = harness.SqliteDatabase(tmp_path, template=template)
        stack = harness.Stack(tmp_path, db, overrides)
        made.append(stack)
        return stack

    yield make
    report = getattr(request.node, "rep_call", None)
    for stack in made:
        stack.close()
        if report is None or report.failed:
            stack.dump_logs()
        stack.database.drop()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


_session_started = time.monotonic()


def pytest_terminal_summary(terminalreporter):
    if harness.REPORTED:
        terminalreporter.section("fault test figures")
        for line in harness.REPORTED:
            terminalreporter.write_line(line)
        terminalreporter.write_line(f"fault tests took {time.monotonic() - _session_started:.0f} s in all")

"""Fixtures for the fault tests: each test gets its own SQLite file, processes and recorder.

These tests never use pytest-django's database: they start ``manage.py`` and
gunicorn processes against ``tmp_path/faults.sqlite3`` and read that file with
sqlite3. Run them on their own, sequentially:

    .venv/bin/python -m pytest tests/faults -m faults -s -p no:xdist
"""

import pytest

from .harness import Recorder, Stack


@pytest.fixture
def recorder():
    recorder = Recorder()
    yield recorder
    recorder.close()


@pytest.fixture
def stack(tmp_path, request):
    stack = Stack(tmp_path)
    stack.migrate()
    yield stack
    stack.close()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        stack.dump_logs()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report

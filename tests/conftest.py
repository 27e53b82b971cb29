import pytest
from django.db import OperationalError
from django.db.backends.utils import CursorWrapper
from django_q.conf import Conf

from tests.factories import FieldFactory, FormFactory


@pytest.fixture
def form(db):
    """A published form with an email field, a seats field and a hidden status field."""
    form = FormFactory(slug="booking-test", title="Book a flight")
    FieldFactory(form=form, name="email", label="Email", type="email", required=True)
    FieldFactory(form=form, name="seats", label="Seats", type="integer", min_value=1, max_value=9)
    FieldFactory(form=form, name="status", label="Status", type="hidden")
    return form


@pytest.fixture
def sync_queue(monkeypatch):
    """django-q2 in sync mode: async_task runs the job at once, in this process.

    django-q2 reads Q_CLUSTER once at import, so patch its Conf, not settings.
    Combine with django_capture_on_commit_callbacks(execute=True) so that
    hand-offs made after commit actually happen inside a test transaction.
    """
    monkeypatch.setattr(Conf, "SYNC", True)
    return Conf


@pytest.fixture
def database_down(monkeypatch):
    """``outage = database_down()``: every query raises OperationalError, as while PostgreSQL restarts.

    ``database_down(when=lambda sql: ...)`` fails only the statements ``when`` picks (say, the
    INSERTs: the database went away in the middle of a request). ``outage.up()`` ends it.
    """
    working = {name: getattr(CursorWrapper, name) for name in ("execute", "executemany")}

    class Outage:
        def __init__(self, when):
            for name, method in working.items():
                monkeypatch.setattr(CursorWrapper, name, self.refusing(method, when))

        @staticmethod
        def refusing(method, when):
            def execute(cursor, sql, *args, **kwargs):
                if when(sql):
                    raise OperationalError("connection to server at 127.0.0.1 failed: Connection refused")
                return method(cursor, sql, *args, **kwargs)

            return execute

        def up(self):
            for name, method in working.items():
                monkeypatch.setattr(CursorWrapper, name, method)

    return lambda when=lambda sql: True: Outage(when)

import pytest
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

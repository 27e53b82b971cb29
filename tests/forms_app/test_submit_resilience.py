"""A submit is kept although its inline phase breaks off after the commit; the sweep resumes the run."""

import logging
from datetime import timedelta

import pytest
from django.db import OperationalError
from django.utils import timezone

from events import engine
from events.models import Run, RunTask
from events.sweep import sweep
from forms_app.models import Record
from tests.factories import add_node

VALID = {"email": "ann@example.com", "seats": "2"}


@pytest.fixture
def inline_breaks(monkeypatch):
    """The inline phase raises after the record and run have committed (say, the database went away)."""

    working = engine.run_inline
    down = {"now": True}

    def broken(*, run):
        if down["now"]:
            raise OperationalError("server closed the connection unexpectedly")
        return working(run=run)

    monkeypatch.setattr(engine, "run_inline", broken)
    return down


@pytest.fixture
def flag_form(form):
    add_node(form, "set_flag", name="paid", label="Paid", config={"flag": "paid"})
    return form


def test_the_submit_still_answers_303_to_the_waiting_page_and_keeps_record_and_run(
    client, flag_form, inline_breaks, caplog
):
    with caplog.at_level(logging.ERROR, logger="forms_app.services"):
        response = client.post("/f/booking-test/", VALID)

    assert response.status_code == 303
    record = Record.objects.get()
    assert response["Location"] == f"/r/{record.token}/"
    assert record.data["email"] == "ann@example.com"
    run = Run.objects.get(record=record)
    assert run.is_submission
    assert run.status == Run.Status.RUNNING
    assert list(run.tasks.values_list("status", flat=True)) == [RunTask.Status.PENDING]

    [logged] = [r for r in caplog.records if r.name == "forms_app.services"]
    assert logged.levelno == logging.ERROR
    assert f"The inline phase of run {run.pk} broke off" in logged.getMessage()
    assert logged.exc_info and logged.exc_info[0] is OperationalError


def test_the_waiting_page_of_such_a_submit_answers(client, flag_form, inline_breaks):
    response = client.post("/f/booking-test/", VALID)

    assert client.get(response["Location"]).status_code == 200


def test_the_sweep_resumes_a_run_whose_inline_phase_broke_off(
    settings, client, flag_form, inline_breaks, sync_queue, django_capture_on_commit_callbacks
):
    settings.EVENTS_REQUEUE_AFTER_SECONDS = 120
    client.post("/f/booking-test/", VALID)
    inline_breaks["now"] = False  # the database is back
    run = Run.objects.get()
    Run.objects.filter(pk=run.pk).update(created_at=timezone.now() - timedelta(seconds=300))

    with django_capture_on_commit_callbacks(execute=True):  # the sync queue runs what the sweep hands off
        assert sweep()["run_stalled_resumed"] == 1

    run.refresh_from_db()
    assert run.status == Run.Status.COMPLETE
    record = Record.objects.get()
    assert record.is_complete
    assert record.flags.get("paid") is True

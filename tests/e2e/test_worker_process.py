"""A submit against a real ``manage.py worker`` process sharing the test database."""

import datetime
import functools

import pytest
from django.test import Client
from django.urls import reverse

from events.models import Run, RunTask
from forms_app.models import Record
from tests.factories import FieldFactory, FormFactory, add_node
from tests.support import processes

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("e2e"), pytest.mark.django_db(transaction=True)]

PAUSE_SECONDS = 2
DELAY_SECONDS = 3


# Poll a condition until truthy; fail the test after ``timeout`` seconds.
wait_until = functools.partial(processes.wait_until, timeout=30.0, interval=0.1)


@pytest.fixture
def form_with_background_and_delay():
    """Inline update_field; a Background (pause, then set_flag); a Delay after the submit (update_field)."""
    form = FormFactory(slug="e2e-worker", title="E2E worker")
    FieldFactory(form=form, name="email", label="Email", type="email", required=True)
    FieldFactory(form=form, name="status", label="Status", type="hidden")
    FieldFactory(form=form, name="follow_up", label="Follow-up", type="hidden")
    add_node(form, "update_field", name="receive", config={"field": "status", "value": "received"})
    confirm = add_node(form, "background", name="confirm", label="Confirming", visible=True)
    add_node(form, "pause", name="think", parent=confirm, config={"seconds": PAUSE_SECONDS})
    add_node(form, "set_flag", name="flag", parent=confirm, config={"flag": "confirmed", "value": True})
    later = add_node(form, "delay", name="later", config={"rule": "after", "after_seconds": DELAY_SECONDS})
    add_node(form, "update_field", name="follow", parent=later, config={"field": "follow_up", "value": "sent"})
    return form


def test_submit_returns_before_background_work_which_the_worker_then_completes(worker, form_with_background_and_delay):
    form = form_with_background_and_delay

    response = Client().post(reverse("forms_app:form_detail", args=[form.slug]), {"email": "ada@example.com"})

    assert response.status_code == 303
    record = Record.objects.get(form=form)
    assert response["Location"] == record.get_absolute_url()
    run = Run.objects.get(record=record, is_submission=True)
    tasks = {task.name: task for task in run.tasks.all()}
    # The redirect came back while the background branch was still queued or running.
    assert tasks["confirm"].status in (RunTask.Status.PENDING, RunTask.Status.ACTIVE)
    # Its steps' rows exist once the worker started it; its last step has not run either way.
    assert "flag" not in tasks or tasks["flag"].status == RunTask.Status.PENDING
    assert record.flags.get("confirmed") is None
    assert record.is_complete is False
    # The inline step ran in the request; the delay waits for its own due time.
    assert record.data["status"] == "received"
    assert tasks["receive"].status == RunTask.Status.COMPLETE
    assert tasks["later"].status == RunTask.Status.PENDING
    assert tasks["later"].due_at == record.created_at + datetime.timedelta(seconds=DELAY_SECONDS)

    def task(name):
        return RunTask.objects.get(run=run, name=name)

    wait_until(lambda: task("confirm").is_finished, timeout=30, message="the background branch to finish")
    confirm = task("confirm")
    assert confirm.status == RunTask.Status.COMPLETE, confirm.error
    assert confirm.attempt == 1
    assert task("think").status == RunTask.Status.COMPLETE
    assert task("flag").status == RunTask.Status.COMPLETE
    record.refresh_from_db()
    assert record.flags == {"confirmed": True}

    wait_until(lambda: task("later").is_finished, timeout=30, message="the delay to fire and finish")
    later = task("later")
    assert later.status == RunTask.Status.COMPLETE, later.error
    assert later.attempt == 1
    assert later.started_at >= later.due_at
    assert task("follow").status == RunTask.Status.COMPLETE

    wait_until(lambda: Run.objects.get(pk=run.pk).is_finished, timeout=10, message="the run to finish")
    run.refresh_from_db()
    assert run.status == Run.Status.COMPLETE, run.error
    assert run.finished_at >= later.finished_at
    record.refresh_from_db()
    assert record.is_complete is True
    assert record.data == {"email": "ada@example.com", "status": "received", "follow_up": "sent"}
    assert "Traceback" not in worker.output()

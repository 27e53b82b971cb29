"""The engine side of waiting for a callback: suspend, resume at the next sibling, fail, time out."""

import json
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone
from django.utils.module_loading import import_string
from django_q.models import OrmQ

from events import engine
from events.models import Run, RunTask
from events.queue import dispatch_due
from events.tasks import resume_job, task_job
from forms_app.services import record_submit
from tests.factories import RecordFactory, add_node
from tests.support.servers import QuietHandler, recording_server

CALLBACK_OUTPUT = {"seat": "12A", "body": "from the callback"}


def task_of(record, node):
    return RunTask.objects.get(run__record=record, node_id=node.pk)


def run_of(record):
    return Run.objects.get(record=record)


def jobs(func):
    return [job for job in OrmQ.objects.all() if job.func() == func]


def run_queued_jobs():
    """What a worker does: take each queued job and call its function with its arguments."""
    while OrmQ.objects.exists():
        for job in OrmQ.objects.all():
            job.delete()
            import_string(job.func())(*job.args(), **(job.kwargs() or {}))


@pytest.fixture
def add_wait(trail_form, http_server, allow_local_http):
    """``add_wait("book", parent=bg)``: an http_request to the local test server that waits for a callback."""

    def add(name, parent=None, **config):
        return add_node(
            trail_form,
            "http_request",
            parent=parent,
            name=name,
            label=name.title(),
            visible=True,
            config={
                "method": "POST",
                "url": http_server.url + "/start",
                "wait_for_callback": True,
                "callback_timeout_seconds": 600,
                **config,
            },
        )

    return add


@pytest.fixture
def add_reader(trail_form):
    """An update_field step that writes what it sees of tasks.book.output into the record's status."""

    def add(parent=None):
        value = "{{ tasks.book.output.seat }}|{{ tasks.book.output.body }}|{{ tasks.book.output.status_code }}"
        return add_node(
            trail_form,
            "update_field",
            parent=parent,
            name="reader",
            label="Reader",
            config={"field": "status", "value": value},
        )

    return add


def callback(task, status="SUCCESS", **fields):
    """Apply a callback the way the API does, running its after-commit hand-off (the resume job is queued)."""
    return engine.task_callback(task_id=task.pk, status=status, **fields)


# Inline ---------------------------------------------------------------------------------


def test_an_inline_waiting_step_suspends_the_rest_of_the_sequence(add_mark, add_wait, submit_queued):
    add_mark("A")
    wait = add_wait("book")
    b = add_mark("B")
    c = add_mark("C")

    record = submit_queued().record

    assert record.data["trail"] == "A"
    assert task_of(record, wait).status == RunTask.Status.AWAITING
    assert task_of(record, b).status == RunTask.Status.PENDING
    assert task_of(record, c).status == RunTask.Status.PENDING
    assert run_of(record).status == Run.Status.RUNNING
    assert not record.is_complete
    assert not OrmQ.objects.exists()  # nothing to do until the callback comes


def test_a_success_callback_resumes_the_inline_sequence_at_the_next_sibling(
    add_mark, add_wait, add_reader, submit_queued, django_capture_on_commit_callbacks
):
    add_mark("A")
    wait = add_wait("book")
    b = add_mark("B")
    add_reader()
    c = add_mark("C")
    record = submit_queued().record

    with django_capture_on_commit_callbacks(execute=True):
        result = callback(task_of(record, wait), output=CALLBACK_OUTPUT, logs=["seat found"], subtext="Seat 12A")

    assert (result.applied, result.status, result.duplicate) == (True, RunTask.Status.COMPLETE, False)
    record.refresh_from_db()
    assert record.data["trail"] == "A"  # the resume happens in a worker, not in the callback
    [job] = jobs("events.tasks.task_job")
    assert job.args() == (str(task_of(record, b).pk),)  # the next step, handed off with the callback

    run_queued_jobs()

    record.refresh_from_db()
    assert record.data["trail"] == "ABC"
    assert record.data["status"] == "12A|from the callback|200"  # callback keys win, the response's stay
    assert task_of(record, b).attempt == task_of(record, c).attempt == 1
    assert task_of(record, b).started_at < task_of(record, c).started_at
    waited = task_of(record, wait)
    assert waited.status == RunTask.Status.COMPLETE
    assert waited.output["seat"] == "12A"
    assert waited.output["status_code"] == 200
    assert waited.subtext == "Seat 12A"
    assert [entry["line"] for entry in waited.logs if entry["line"] == "seat found"] == ["seat found"]
    run = run_of(record)
    assert run.status == Run.Status.COMPLETE
    assert run.subtext == "Seat 12A"
    assert record.is_complete


def test_with_a_sync_queue_the_callback_resumes_at_once(add_mark, add_wait, submit, django_capture_on_commit_callbacks):
    wait = add_wait("book")
    add_mark("B")
    record = submit().record

    with django_capture_on_commit_callbacks(execute=True):
        callback(task_of(record, wait), output=CALLBACK_OUTPUT)

    record.refresh_from_db()
    assert record.data["trail"] == "B"
    assert record.is_complete
    assert run_of(record).status == Run.Status.COMPLETE


def test_a_waiting_step_as_the_last_node_completes_the_run_on_its_callback(
    add_mark, add_wait, submit_queued, django_capture_on_commit_callbacks
):
    add_mark("A")
    wait = add_wait("book")
    record = submit_queued().record

    with django_capture_on_commit_callbacks(execute=True):
        callback(task_of(record, wait), output=CALLBACK_OUTPUT)
    run_queued_jobs()

    record.refresh_from_db()
    assert run_of(record).status == Run.Status.COMPLETE
    assert record.is_complete


# Inside containers ----------------------------------------------------------------------


def test_a_waiting_step_parks_its_background_until_the_callback(
    trail_form, add_mark, add_wait, add_reader, submit_queued, django_capture_on_commit_callbacks
):
    background = add_node(trail_form, "background", label="Confirm")
    add_mark("A", parent=background)
    wait = add_wait("book", parent=background)
    b = add_mark("B", parent=background)
    add_reader(parent=background)
    c = add_mark("C", parent=background)
    add_mark("D")
    record = submit_queued().record
    run_queued_jobs()  # the background job: A, then the request, then it parks

    record.refresh_from_db()
    assert record.data["trail"] == "DA"
    container = task_of(record, background)
    assert container.status == RunTask.Status.ACTIVE
    assert container.lease_expires_at is None
    assert container.finished_at is None
    assert task_of(record, wait).status == RunTask.Status.AWAITING
    assert task_of(record, b).status == task_of(record, c).status == RunTask.Status.PENDING
    assert run_of(record).status == Run.Status.RUNNING
    assert not record.is_complete

    with django_capture_on_commit_callbacks(execute=True):
        callback(task_of(record, wait), output=CALLBACK_OUTPUT)
    run_queued_jobs()

    record.refresh_from_db()
    assert record.data["trail"] == "DABC"
    assert record.data["status"] == "12A|from the callback|200"
    container = task_of(record, background)
    assert container.status == RunTask.Status.COMPLETE
    assert container.attempt == 1
    assert container.finished_at is not None
    assert run_of(record).status == Run.Status.COMPLETE
    assert record.is_complete


def test_a_parked_background_is_not_taken_up_again_by_the_sweep(
    trail_form, add_mark, add_wait, submit_queued, django_capture_on_commit_callbacks
):
    background = add_node(trail_form, "background")
    wait = add_wait("book", parent=background)
    add_mark("B", parent=background)
    record = submit_queued().record
    run_queued_jobs()

    with django_capture_on_commit_callbacks(execute=True):
        assert dispatch_due() == 0

    assert not OrmQ.objects.exists()
    assert task_of(record, wait).status == RunTask.Status.AWAITING


def test_a_delay_after_a_waiting_step_is_deferred_again_when_the_sequence_resumes(
    trail_form, add_mark, add_wait, submit, django_capture_on_commit_callbacks
):
    background = add_node(trail_form, "background", label="Outer")
    wait = add_wait("book", parent=background)
    delay = add_node(trail_form, "delay", parent=background, label="Later", config={"after_seconds": 600})
    add_mark("B", parent=delay)
    add_mark("C", parent=background)
    record = submit().record  # sync queue: the background runs here and parks at the request
    assert task_of(record, background).status == RunTask.Status.ACTIVE

    with django_capture_on_commit_callbacks(execute=True):
        callback(task_of(record, wait), output=CALLBACK_OUTPUT)

    record.refresh_from_db()
    assert record.data["trail"] == "C"
    assert task_of(record, background).status == RunTask.Status.COMPLETE
    delay_task = task_of(record, delay)
    assert delay_task.status == RunTask.Status.PENDING
    assert delay_task.due_at == record.created_at + timedelta(seconds=600)
    assert not RunTask.objects.filter(run__record=record, label="B").exists()  # when the delay starts
    assert run_of(record).status == Run.Status.RUNNING
    assert not record.is_complete

    RunTask.objects.filter(pk=delay_task.pk).update(due_at=timezone.now() - timedelta(seconds=1))
    with django_capture_on_commit_callbacks(execute=True):
        assert dispatch_due() == 1

    record.refresh_from_db()
    assert record.data["trail"] == "CB"
    assert task_of(record, delay).status == RunTask.Status.COMPLETE
    assert run_of(record).status == Run.Status.COMPLETE
    assert record.is_complete


def test_a_waiting_step_in_a_nested_delay_parks_only_that_delay(
    trail_form, add_mark, add_wait, submit, django_capture_on_commit_callbacks
):
    background = add_node(trail_form, "background", label="Outer")
    delay = add_node(trail_form, "delay", parent=background, label="Inner", config={"rule": "now"})
    wait = add_wait("book", parent=delay)
    add_mark("B", parent=delay)
    add_mark("C", parent=background)
    record = submit().record

    record.refresh_from_db()
    assert record.data["trail"] == "C"
    assert task_of(record, background).status == RunTask.Status.COMPLETE
    assert task_of(record, delay).status == RunTask.Status.ACTIVE
    assert task_of(record, delay).lease_expires_at is None
    assert run_of(record).status == Run.Status.RUNNING

    with django_capture_on_commit_callbacks(execute=True):
        callback(task_of(record, wait))

    record.refresh_from_db()
    assert record.data["trail"] == "CB"
    assert task_of(record, delay).status == RunTask.Status.COMPLETE
    assert run_of(record).status == Run.Status.COMPLETE
    assert record.is_complete


# Failure and deadline -------------------------------------------------------------------


def test_a_failure_callback_fails_the_task_and_the_run_and_nothing_after_it_runs(
    add_mark, add_wait, submit_queued, django_capture_on_commit_callbacks
):
    add_mark("A")
    wait = add_wait("book")
    b = add_mark("B")
    record = submit_queued().record

    with django_capture_on_commit_callbacks(execute=True):
        result = callback(
            task_of(record, wait),
            status="FAILURE",
            subtext="No seats left",
            logs=["sold out"],
            output={"reason": "sold_out"},
        )
    run_queued_jobs()

    assert (result.applied, result.status) == (True, RunTask.Status.FAILED)
    assert not jobs("events.tasks.task_job")
    record.refresh_from_db()
    assert record.data["trail"] == "A"
    waited = task_of(record, wait)
    assert waited.status == RunTask.Status.FAILED
    assert "FAILURE" in waited.error and "No seats left" in waited.error
    assert waited.output["reason"] == "sold_out"
    assert any(entry["line"] == "sold out" for entry in waited.logs)
    assert task_of(record, b).status == RunTask.Status.CANCELLED
    run = run_of(record)
    assert run.status == Run.Status.FAILED
    assert "Book" in run.error
    assert record.is_complete


def test_a_failure_callback_cancels_the_parked_background_and_its_later_steps(
    trail_form, add_mark, add_wait, submit_queued, django_capture_on_commit_callbacks
):
    background = add_node(trail_form, "background")
    wait = add_wait("book", parent=background)
    b = add_mark("B", parent=background)
    later = add_node(trail_form, "delay", label="Later", config={"after_seconds": 600})
    add_mark("C", parent=later)
    record = submit_queued().record
    run_queued_jobs()
    assert task_of(record, background).status == RunTask.Status.ACTIVE

    with django_capture_on_commit_callbacks(execute=True):
        callback(task_of(record, wait), status="FAILURE")
    run_queued_jobs()

    record.refresh_from_db()
    assert record.data["trail"] == ""
    assert task_of(record, wait).status == RunTask.Status.FAILED
    assert task_of(record, b).status == RunTask.Status.CANCELLED
    container = task_of(record, background)
    assert container.status == RunTask.Status.CANCELLED
    assert container.finished_at is not None
    assert task_of(record, later).status == RunTask.Status.CANCELLED
    assert not RunTask.objects.filter(run__record=record, label="C").exists()  # Later never started
    assert run_of(record).status == Run.Status.FAILED
    assert record.is_complete


def test_an_expired_deadline_fails_the_task_as_timed_out_and_the_run(add_mark, add_wait, submit_queued):
    wait = add_wait("book")
    b = add_mark("B")
    record = submit_queued().record
    assert engine.awaiting_expire() == 0  # the deadline is ten minutes away

    RunTask.objects.filter(pk=task_of(record, wait).pk).update(deadline_at=timezone.now() - timedelta(seconds=1))
    assert engine.awaiting_expire() == 1
    assert engine.awaiting_expire() == 0

    waited = task_of(record, wait)
    assert waited.status == RunTask.Status.FAILED
    assert waited.error.startswith("Timed out")
    assert waited.finished_at is not None
    assert any("timed out waiting for a callback" in entry["line"] for entry in waited.logs)
    assert task_of(record, b).status == RunTask.Status.CANCELLED
    run = run_of(record)
    assert run.status == Run.Status.FAILED
    assert "timed out" in run.error
    record.refresh_from_db()
    assert record.is_complete


def test_awaiting_expire_takes_now_as_an_argument(add_wait, submit_queued):
    wait = add_wait("book")
    record = submit_queued().record

    assert engine.awaiting_expire(now=timezone.now() + timedelta(seconds=599)) == 0
    assert engine.awaiting_expire(now=timezone.now() + timedelta(seconds=601)) == 1
    assert task_of(record, wait).status == RunTask.Status.FAILED


def test_a_callback_after_the_deadline_is_refused_with_the_failed_status(
    add_mark, add_wait, submit_queued, django_capture_on_commit_callbacks
):
    wait = add_wait("book")
    add_mark("B")
    record = submit_queued().record
    RunTask.objects.filter(pk=task_of(record, wait).pk).update(deadline_at=timezone.now() - timedelta(seconds=1))
    engine.awaiting_expire()

    with django_capture_on_commit_callbacks(execute=True):
        result = callback(task_of(record, wait), output=CALLBACK_OUTPUT)

    assert (result.applied, result.duplicate, result.status) == (False, False, RunTask.Status.FAILED)
    assert not OrmQ.objects.exists()
    waited = task_of(record, wait)
    assert "seat" not in waited.output
    assert waited.error.startswith("Timed out")
    record.refresh_from_db()
    assert record.data["trail"] == ""
    assert run_of(record).status == Run.Status.FAILED


def test_a_callback_after_the_deadline_gets_409_from_the_api(add_wait, submit_queued, client):
    from events.models import ApiKey

    wait = add_wait("book")
    record = submit_queued().record
    task = task_of(record, wait)
    RunTask.objects.filter(pk=task.pk).update(deadline_at=timezone.now() - timedelta(seconds=1))
    engine.awaiting_expire()
    _, key = ApiKey.issue(name="partner")

    response = client.post(
        "/api/external-events/callback/",
        {"taskId": str(task.pk), "status": "SUCCESS"},
        content_type="application/json",
        headers={"Authorization": f"Bearer {key}"},
    )

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "not_awaiting"
    assert response.json()["error"]["details"] == {"status": "failed"}


def test_a_callback_for_a_cancelled_run_changes_nothing(
    add_mark, add_wait, submit_queued, django_capture_on_commit_callbacks
):
    wait = add_wait("book")
    add_mark("B")
    record = submit_queued().record
    engine.run_cancel(run=run_of(record))

    with django_capture_on_commit_callbacks(execute=True):
        result = callback(task_of(record, wait))

    assert (result.applied, result.status) == (False, RunTask.Status.CANCELLED)
    assert not OrmQ.objects.exists()


# Repeats --------------------------------------------------------------------------------


def test_a_repeated_callback_is_recognised_and_changes_nothing(
    add_wait, submit_queued, django_capture_on_commit_callbacks
):
    wait = add_wait("book")
    record = submit_queued().record
    payload = {"output": CALLBACK_OUTPUT, "logs": ["one", "two"], "subtext": "Seat 12A"}
    with django_capture_on_commit_callbacks(execute=True):
        callback(task_of(record, wait), **payload)
    before = task_of(record, wait)

    with django_capture_on_commit_callbacks(execute=True):
        repeat = callback(task_of(record, wait), **payload)
        different = callback(task_of(record, wait), output={"seat": "99Z"})

    assert (repeat.applied, repeat.duplicate, repeat.status) == (False, True, RunTask.Status.COMPLETE)
    assert (different.applied, different.duplicate, different.status) == (False, False, RunTask.Status.COMPLETE)
    after = task_of(record, wait)
    assert (after.output, after.logs, after.finished_at) == (before.output, before.logs, before.finished_at)
    assert not OrmQ.objects.exists()  # nothing followed the step: the first callback finished the run
    assert run_of(record).status == Run.Status.COMPLETE


def test_a_duplicate_resume_delivery_runs_each_later_step_once(
    add_mark, add_wait, submit_queued, django_capture_on_commit_callbacks
):
    wait = add_wait("book")
    b = add_mark("B")
    c = add_mark("C")
    record = submit_queued().record
    with django_capture_on_commit_callbacks(execute=True):
        callback(task_of(record, wait))

    assert task_job(str(task_of(record, b).pk)) == "done"
    first = {task.pk: (task.status, task.attempt, task.logs, task.finished_at) for task in RunTask.objects.all()}
    assert task_job(str(task_of(record, b).pk)) == "elsewhere"

    record.refresh_from_db()
    assert record.data["trail"] == "BC"
    assert {
        task.pk: (task.status, task.attempt, task.logs, task.finished_at) for task in RunTask.objects.all()
    } == first
    assert task_of(record, b).attempt == task_of(record, c).attempt == 1
    assert run_of(record).status == Run.Status.COMPLETE


def test_a_duplicate_resume_delivery_inside_a_background_runs_each_later_step_once(
    trail_form, add_mark, add_wait, submit_queued, django_capture_on_commit_callbacks
):
    background = add_node(trail_form, "background")
    wait = add_wait("book", parent=background)
    b = add_mark("B", parent=background)
    later = add_node(trail_form, "delay", config={"after_seconds": 600})  # keeps the run open
    add_mark("L", parent=later)
    record = submit_queued().record
    run_queued_jobs()
    with django_capture_on_commit_callbacks(execute=True):
        callback(task_of(record, wait))

    task_job(str(task_of(record, b).pk))
    first = {task.pk: (task.status, task.attempt, task.logs, task.finished_at) for task in RunTask.objects.all()}
    task_job(str(task_of(record, b).pk))

    record.refresh_from_db()
    assert record.data["trail"] == "B"
    assert {
        task.pk: (task.status, task.attempt, task.logs, task.finished_at) for task in RunTask.objects.all()
    } == first
    assert task_of(record, b).attempt == 1
    assert task_of(record, background).status == RunTask.Status.COMPLETE
    assert run_of(record).status == Run.Status.RUNNING


def test_a_delivery_for_a_step_nobody_handed_off_does_nothing(add_mark, add_wait, submit_queued):
    wait = add_wait("book")
    b = add_mark("B")
    record = submit_queued().record

    assert task_job(str(task_of(record, b).pk)) == "elsewhere"
    assert resume_job(str(task_of(record, wait).pk)) == "stopped"  # the older job, too

    assert task_of(record, b).status == RunTask.Status.PENDING
    assert task_of(record, wait).status == RunTask.Status.AWAITING


def test_a_resume_delivery_for_an_unknown_task_does_nothing(db):
    assert resume_job("00000000-0000-0000-0000-000000000000") == "stopped"


# A callback that arrives before the response ---------------------------------------------


def test_a_callback_before_the_response_is_stored_keeps_the_callbacks_output(trail_form, add_mark):
    wait = add_node(
        trail_form,
        "http_request",
        name="book",
        config={"method": "POST", "url": "http://x/", "wait_for_callback": True},
    )
    record = RecordFactory(form=trail_form, data={"trail": ""})
    run = engine.run_start(record=record, is_submission=True)
    task = task_of(record, wait)
    assert task.claim()
    engine.task_await(task=task, timeout_seconds=60)

    engine.task_callback(task_id=task.pk, status="SUCCESS", output=CALLBACK_OUTPUT, logs=["at once"])
    engine.task_store_waiting(
        task=task, output={"status_code": 200, "body": "from the response"}, logs=[RunTask.log_line("answered 200")]
    )

    task.refresh_from_db()
    assert task.status == RunTask.Status.COMPLETE
    assert task.output == {"status_code": 200, "body": "from the callback", "seat": "12A"}
    assert [entry["line"] for entry in task.logs] == ["at once", "answered 200"]
    assert run.status == Run.Status.RUNNING


@pytest.fixture
def calling_back_server():
    """A local server that, like a very fast external system, calls back before it answers the request."""
    seen = {}

    class Handler(QuietHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            try:
                seen["status_at_request"] = RunTask.objects.get(pk=body["taskId"]).status
                seen["result"] = engine.task_callback(
                    task_id=body["taskId"], status="SUCCESS", output=CALLBACK_OUTPUT, logs=["instant"]
                )
            finally:
                connection.close()
            self.answer(seen.get("answer_status", 202), b'{"accepted": true}', {"Content-Type": "application/json"})

    with recording_server(Handler) as server:
        seen["url"] = f"{server.url}/start"
        yield seen


@pytest.mark.django_db(transaction=True)
@pytest.mark.xdist_group("db_threads")
def test_an_instant_callback_finds_the_task_awaiting_and_keeps_its_output(
    trail_form, add_mark, add_reader, calling_back_server, allow_local_http
):
    wait = add_node(
        trail_form,
        "http_request",
        name="book",
        config={"method": "POST", "url": calling_back_server["url"], "wait_for_callback": True},
    )
    add_mark("B")
    add_reader()

    record = record_submit(form=trail_form, data={"email": "ann@example.com", "trail": ""})

    assert calling_back_server["status_at_request"] == RunTask.Status.AWAITING
    assert calling_back_server["result"].applied
    waited = task_of(record, wait)
    assert waited.status == RunTask.Status.COMPLETE
    assert waited.output["seat"] == "12A"
    assert waited.output["body"] == "from the callback"  # the callback's keys win over the response's
    assert waited.output["status_code"] == 202  # the response is kept too
    assert waited.output["json"] == {"accepted": True}
    lines = [entry["line"] for entry in waited.logs]
    assert "instant" in lines and "answered 202" in lines

    [job] = jobs("events.tasks.task_job")
    run_queued_jobs()

    record.refresh_from_db()
    assert record.data["trail"] == "B"
    assert record.data["status"] == "12A|from the callback|202"
    assert run_of(record).status == Run.Status.COMPLETE
    assert record.is_complete


@pytest.mark.django_db(transaction=True)
@pytest.mark.xdist_group("db_threads")
def test_an_instant_success_callback_and_an_error_answer_leave_task_and_run_consistent(
    trail_form, add_mark, calling_back_server, allow_local_http
):
    # The callback completed the task before the answer (a 500) came back. Whichever wins, the task
    # and its run must agree: a run failed "because Book failed" while Book is complete is wrong.
    calling_back_server["answer_status"] = 500
    wait = add_node(
        trail_form,
        "http_request",
        name="book",
        label="Book",
        config={"method": "POST", "url": calling_back_server["url"], "wait_for_callback": True},
    )
    add_mark("B")

    record = record_submit(form=trail_form, data={"email": "ann@example.com", "trail": ""})
    run_queued_jobs()

    assert calling_back_server["result"].applied
    waited, run = task_of(record, wait), run_of(record)
    assert (waited.status, run.status) in [
        (RunTask.Status.COMPLETE, Run.Status.COMPLETE),
        (RunTask.Status.FAILED, Run.Status.FAILED),
    ], (waited.status, run.status, run.error)


# The waiting page -----------------------------------------------------------------------


def test_the_waiting_page_shows_an_awaiting_step_as_waiting_for_a_reply_with_its_subtext(
    add_wait, submit_queued, client
):
    wait = add_wait("book")
    record = submit_queued().record
    engine.task_progress(task_id=task_of(record, wait).pk, subtext="Checking seat availability…")

    html = client.get(f"/r/{record.token}/status/").content.decode()

    assert 'data-state="working"' in html
    assert (
        '<li class="step step-waiting-for-a-reply"><span class="step-label">Book</span> '
        '<span class="step-state">waiting for a reply</span>'
        '<small class="step-subtext">Checking seat availability…</small></li>'
    ) in html
    assert '<p class="subtext">Checking seat availability…</p>' in html
    assert "hx-get" in html


def test_the_waiting_page_turns_to_done_after_the_callback(
    add_wait, submit, client, django_capture_on_commit_callbacks
):
    wait = add_wait("book")
    record = submit().record
    with django_capture_on_commit_callbacks(execute=True):
        callback(task_of(record, wait), subtext="Seat 12A booked")

    html = client.get(f"/r/{record.token}/status/").content.decode()

    assert 'data-state="done"' in html
    assert '<span class="step-state">done</span><small class="step-subtext">Seat 12A booked</small>' in html
    assert "hx-get" not in html

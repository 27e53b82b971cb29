"""A worker that stops, or loses its database, hands its work back at once (issue 8 §3).

These test the engine and queue side in one process; tests/faults runs the
same with real worker processes and signals.
"""

from datetime import timedelta

import pytest
from django.db import OperationalError
from django.utils import timezone
from django_q.models import OrmQ

from events import engine, queue, tasks
from events.management.commands.worker import Command
from events.models import Repair, Run, RunTask, lease_owner
from tests.factories import add_node


@pytest.fixture
def stopping(monkeypatch):
    """This process is a worker whose stop has begun."""
    monkeypatch.setattr(queue, "_stopping", None)
    queue.worker_prepare()
    monkeypatch.setattr(queue, "_heartbeat", {"pid": __import__("os").getpid()})  # no thread in tests
    queue.worker_stop_claiming()
    return tasks


def task(record, name):
    return RunTask.objects.get(run__record=record, name=name)


def run_jobs(capture):
    ran = []
    while job := OrmQ.objects.order_by("pk").first():
        job.delete()
        with capture(execute=True):
            ran.append(tasks.task_job(*job.args()))
    return ran


def test_a_container_walk_stops_before_its_next_step_and_hands_the_container_back(
    trail_form, add_mark, submit_queued, django_capture_on_commit_callbacks, monkeypatch
):
    background = add_node(trail_form, "background", name="bg")
    add_mark("A", parent=background)
    add_mark("B", parent=background)
    record = submit_queued().record
    [job] = OrmQ.objects.all()
    job.delete()

    # The stop begins while A runs: A finishes, B is not started.
    from events.nodes.update_field import UpdateField

    original = UpdateField.execute

    def execute_then_stop(self, ctx):
        result = original(self, ctx)
        queue.worker_prepare()
        queue.worker_stop_claiming()
        return result

    monkeypatch.setattr(queue, "_stopping", None)
    monkeypatch.setattr(UpdateField, "execute", execute_then_stop)
    with django_capture_on_commit_callbacks(execute=True):
        assert tasks.task_job(*job.args()) == "elsewhere"
    monkeypatch.undo()

    bg = task(record, "bg")
    assert (task(record, "a").status, task(record, "b").status) == (RunTask.Status.COMPLETE, RunTask.Status.PENDING)
    assert bg.status == RunTask.Status.PENDING
    assert bg.attempt == 0  # a stop is not a failed attempt
    assert (bg.lease_expires_at, bg.lease_owner) == (None, "")
    [again] = OrmQ.objects.all()
    assert again.args() == (str(bg.pk),) and bg.handoff_id == again.pk

    # The next worker (not stopping) walks the container again: A is not repeated.
    monkeypatch.setattr(queue, "_stopping", None)
    assert run_jobs(django_capture_on_commit_callbacks) == ["done"]
    record.refresh_from_db()
    assert record.data["trail"] == "AB"
    assert Run.objects.get(record=record).status == Run.Status.COMPLETE


def test_a_job_delivered_to_a_stopping_worker_is_handed_back_untouched(
    trail_form, add_mark, submit_queued, stopping, django_capture_on_commit_callbacks
):
    background = add_node(trail_form, "background", name="bg")
    add_mark("A", parent=background)
    record = submit_queued().record
    [job] = OrmQ.objects.all()
    job.delete()

    with django_capture_on_commit_callbacks(execute=True):
        assert tasks.task_job(*job.args()) == "handed back"

    bg = task(record, "bg")
    assert (bg.status, bg.attempt) == (RunTask.Status.PENDING, 0)
    [again] = OrmQ.objects.all()
    assert again.args() == job.args()
    assert bg.handoff_id == again.pk


def test_a_job_that_loses_the_database_puts_back_what_it_held_and_sends_itself_again(
    trail_form, add_mark, submit_queued, django_capture_on_commit_callbacks, monkeypatch
):
    background = add_node(trail_form, "background", name="bg")
    add_mark("A", parent=background)
    record = submit_queued().record
    [job] = OrmQ.objects.all()
    job.delete()

    def claim_then_lose_the_database(*, task_id):
        bg = RunTask.objects.get(pk=task_id)
        assert bg.claim(require_due=True)
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(engine, "task_job", claim_then_lose_the_database)
    monkeypatch.setattr(tasks, "database_wait", lambda *, deadline: None)  # it answers again at once
    with django_capture_on_commit_callbacks(execute=True):
        assert tasks.task_job(*job.args()) == "database lost; handed back"
    monkeypatch.undo()

    bg = task(record, "bg")
    assert bg.status == RunTask.Status.PENDING
    assert bg.lease_owner == ""
    assert OrmQ.objects.filter(pk=bg.handoff_id).exists()
    assert run_jobs(django_capture_on_commit_callbacks)[-1] == "done"
    record.refresh_from_db()
    assert record.data["trail"] == "A"


def test_a_stopped_worker_puts_back_only_what_its_own_processes_held(add_mark, submit_queued, settings):
    settings.EVENTS_LEASE_RETRY_LIMIT = 3
    add_mark("A")
    add_mark("B")
    record = submit_queued().record
    lease = timezone.now() + timedelta(seconds=60)
    RunTask.objects.filter(run__record=record, name="a").update(
        status=RunTask.Status.ACTIVE, attempt=1, lease_expires_at=lease, lease_owner="host:10:abc/11"
    )
    RunTask.objects.filter(run__record=record, name="b").update(
        status=RunTask.Status.ACTIVE, attempt=1, lease_expires_at=lease, lease_owner="host:20:def/21"
    )
    Run.objects.filter(record=record).update(status=Run.Status.RUNNING)
    command = Command()
    command.worker_id = "host:10:abc"

    assert command.release_held() == 1

    a, b = task(record, "a"), task(record, "b")
    assert (a.status, a.due_at is not None, a.lease_owner) == (RunTask.Status.PENDING, True, "")
    assert b.status == RunTask.Status.ACTIVE  # another worker's: left alone
    assert Repair.objects.get(kind="lease_released_on_stop").count == 1


def test_every_claim_names_the_process_that_holds_the_lease(add_mark, submit_queued, monkeypatch):
    monkeypatch.setenv("EVENTS_WORKER_ID", "host:1:abc")
    add_mark("A")
    record = submit_queued().record

    assert task(record, "a").lease_owner == lease_owner()
    assert lease_owner().startswith("host:1:abc/")


def test_the_worker_fails_a_callback_past_its_deadline_on_every_dispatch_tick(
    trail_form, add_mark, submit_queued, callback_server, allow_local_http, django_capture_on_commit_callbacks
):
    add_node(
        trail_form,
        "http_request",
        name="wait",
        config={
            "method": "POST",
            "url": callback_server.url + "/jobs",
            "timeout_seconds": 5,
            "wait_for_callback": True,
            "callback_timeout_seconds": 600,
        },
    )
    record = submit_queued().record
    RunTask.objects.filter(pk=task(record, "wait").pk).update(deadline_at=timezone.now() - timedelta(seconds=0.1))

    with django_capture_on_commit_callbacks(execute=True):
        Command().dispatch()

    wait = task(record, "wait")
    assert (wait.status, wait.failure) == (RunTask.Status.FAILED, RunTask.Failure.TIMEOUT)
    assert Run.objects.get(record=record).status == Run.Status.FAILED
    assert Repair.objects.get(kind="deadline_expired").count == 1

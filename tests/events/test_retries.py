"""Retries: attempts counted in our table before the side effect, backoff through due_at, exhaustion, redrive."""

from datetime import timedelta

import pytest
from django.utils import timezone
from django_q.models import OrmQ

from events import engine, queue, tasks
from events.models import Run, RunTask
from events.nodes import registry
from events.nodes.base import ConfigForm, NodeError, NodeType
from events.retry import RetryPolicy
from forms_app.services import record_submit
from tests.factories import add_node


class Flaky(NodeType):
    """Fails until its ``succeed_on`` attempt; notes the attempt our table held when it ran (its side effect)."""

    key = "flaky_for_tests"
    label = "Flaky"
    config_form = ConfigForm
    seen = []

    def execute(self, ctx):
        stored = RunTask.objects.get(pk=ctx.task.pk).attempt
        Flaky.seen.append(stored)
        if stored < int(ctx.config.get("succeed_on", 1000)):
            raise NodeError(f"attempt {stored} went wrong")
        return {"attempt": stored}


@pytest.fixture
def flaky(monkeypatch):
    monkeypatch.setitem(registry._types, Flaky.key, Flaky)
    Flaky.seen = []
    return Flaky


def add_flaky(form, *, succeed_on=1000, max_attempts=3, backoff=0, backoff_max=600, **fields):
    return add_node(
        form,
        Flaky.key,
        name="flaky",
        label="Flaky",
        config={"succeed_on": succeed_on},
        max_attempts=max_attempts,
        retry_backoff_seconds=backoff,
        retry_backoff_max_seconds=backoff_max,
        **fields,
    )


def add_after(form, parent=None):
    return add_node(form, "set_flag", parent=parent, name="after", label="After", config={"flag": "after"})


def task(record, name):
    return RunTask.objects.get(run__record=record, run__is_submission=True, name=name)


def run_of(record):
    return Run.objects.get(record=record, is_submission=True)


def make_due(record, name):
    """Time passes: the next attempt is due now."""
    RunTask.objects.filter(run__record=record, name=name).update(due_at=timezone.now() - timedelta(seconds=1))


# Counting ---------------------------------------------------------------------------------------


def test_each_try_is_a_new_attempt_of_the_same_task_counted_before_its_side_effect(
    form, flaky, submit_queued, dispatch
):
    add_flaky(form, succeed_on=3, max_attempts=3)
    add_after(form)

    record = submit_queued().record
    assert task(record, "flaky").attempt == 1
    dispatch()
    assert task(record, "flaky").attempt == 2
    dispatch()

    assert flaky.seen == [1, 2, 3]  # the table already held the attempt when the action ran
    done = task(record, "flaky")
    assert done.status == RunTask.Status.COMPLETE
    assert done.attempt == 3
    assert done.output == {"attempt": 3}
    assert RunTask.objects.filter(run__record=record, name="flaky").count() == 1
    lines = " | ".join(entry["line"] for entry in done.logs)
    assert "attempt 1 of 3 failed: attempt 1 went wrong" in lines
    assert "attempt 2 of 3 failed: attempt 2 went wrong" in lines
    record.refresh_from_db()
    assert record.flags == {"after": True}
    assert run_of(record).status == Run.Status.COMPLETE


# Backoff ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "retry", [None, {}, {"max_attempts": 4}, {"backoff_seconds": 5}, {"max_attempts": 1, "non_retryable": ["x"]}]
)
def test_the_attempts_of_a_snapshot_s_retry_are_read_as_the_whole_policy_reads_them(retry):
    assert RetryPolicy.attempts_of_document(retry) == RetryPolicy.of_document(retry).attempts


def test_retry_delay_bounds_grow_exponentially_up_to_the_cap():
    bounds = [RetryPolicy(attempts=6, backoff_seconds=10, backoff_max_seconds=60).delay_bounds(n) for n in range(1, 6)]

    assert bounds == [(5, 10), (10, 20), (20, 40), (30, 60), (30, 60)]


def test_each_failure_sets_due_at_within_the_backoff_bounds_and_the_cap_holds(form, flaky, submit_queued, dispatch):
    add_flaky(form, max_attempts=6, backoff=10, backoff_max=25)

    before = timezone.now()
    record = submit_queued().record
    after = timezone.now()
    for attempt in range(1, 6):
        row = task(record, "flaky")
        assert row.status == RunTask.Status.PENDING
        assert row.attempt == attempt
        shortest, longest = RetryPolicy(attempts=9, backoff_seconds=10, backoff_max_seconds=25).delay_bounds(attempt)
        assert before + timedelta(seconds=shortest) <= row.due_at <= after + timedelta(seconds=longest)
        assert row.due_at <= after + timedelta(seconds=25)  # the cap: 10 * 2**4 would be 160
        make_due(record, "flaky")
        before = timezone.now()
        dispatch()
        after = timezone.now()

    assert task(record, "flaky").status == RunTask.Status.FAILED


def test_the_jitter_spreads_waits_between_half_and_all_of_the_backoff(form, flaky, submit_queued):
    add_flaky(form, max_attempts=2, backoff=100, backoff_max=1000)

    waits = []
    for _ in range(12):
        started = timezone.now()
        record = submit_queued().record
        waits.append((task(record, "flaky").due_at - started).total_seconds())

    assert all(49.9 <= wait <= 100.5 for wait in waits), waits
    assert len({round(wait, 1) for wait in waits}) > 1, "no jitter: every wait was the same"


def test_a_retry_that_is_not_due_yet_is_not_dispatched(form, flaky, submit_queued, dispatch):
    add_flaky(form, max_attempts=2, backoff=60)

    record = submit_queued().record

    assert dispatch() == 0
    assert task(record, "flaky").attempt == 1
    assert flaky.seen == [1]


# Exhaustion -------------------------------------------------------------------------------------


def test_exhausted_retries_fail_the_task_with_kind_retries_and_then_the_run(form, flaky, submit_queued, dispatch):
    add_flaky(form, max_attempts=3)
    add_after(form)

    record = submit_queued().record
    dispatch()
    dispatch()

    row = task(record, "flaky")
    assert row.status == RunTask.Status.FAILED
    assert row.failure == RunTask.Failure.RETRIES
    assert row.attempt == 3
    assert row.error == "attempt 3 went wrong (after 3 attempts)"
    assert flaky.seen == [1, 2, 3]
    assert task(record, "after").status == RunTask.Status.CANCELLED
    run = run_of(record)
    assert run.status == Run.Status.FAILED
    assert "after 3 attempts" in run.error
    assert dispatch() == 0  # nothing more to try


def test_exhausted_retries_run_the_error_branch_and_the_sequence_goes_on(form, flaky, submit_queued, dispatch):
    node = add_flaky(form, max_attempts=2)
    add_node(
        form,
        "update_field",
        parent=node,
        branch="on_error",
        name="catch",
        config={"field": "status", "value": "{{ error.type }}: {{ error.message }}"},
    )
    add_after(form)

    record = submit_queued().record
    dispatch()

    record.refresh_from_db()
    assert record.data["status"] == "retries: attempt 2 went wrong (after 2 attempts)"
    assert record.flags == {"after": True}
    assert run_of(record).status == Run.Status.COMPLETE


def test_a_node_without_retries_fails_at_once_with_kind_raised(form, flaky, submit_queued):
    add_flaky(form, max_attempts=1)

    record = submit_queued().record

    row = task(record, "flaky")
    assert row.status == RunTask.Status.FAILED
    assert row.failure == RunTask.Failure.RAISED
    assert row.error == "attempt 1 went wrong"
    assert row.due_at is None


# Inline failures do not keep the visitor waiting ---------------------------------------------------


def test_an_inline_failure_with_retries_left_returns_at_once_with_the_task_pending(form, flaky, submit_queued):
    add_flaky(form, max_attempts=3, backoff=30)
    add_after(form)

    before = timezone.now()
    record = submit_queued().record

    row = task(record, "flaky")
    assert row.status == RunTask.Status.PENDING
    assert row.attempt == 1
    assert row.error == "attempt 1 went wrong"
    assert row.due_at >= before + timedelta(seconds=15)
    assert row.lease_expires_at is None and row.enqueued_at is None
    assert task(record, "after").status == RunTask.Status.PENDING
    assert run_of(record).status == Run.Status.RUNNING
    record.refresh_from_db()
    assert record.is_complete is False
    assert record.flags == {}
    assert not OrmQ.objects.exists()  # the dispatcher sends it when due, not the request


def test_dispatch_due_sends_a_due_retry_and_the_job_runs_it_and_continues_the_sequence(
    form, flaky, submit_queued, django_capture_on_commit_callbacks
):
    add_flaky(form, succeed_on=2, max_attempts=3, backoff=30)
    add_after(form)
    background = add_node(form, "background", name="bg")
    add_node(form, "update_field", parent=background, name="later", config={"field": "status", "value": "later"})
    record = submit_queued().record
    make_due(record, "flaky")

    with django_capture_on_commit_callbacks(execute=True):
        assert queue.dispatch_due() == 1
    [job] = OrmQ.objects.all()
    assert job.func() == "events.tasks.task_job"
    assert job.args() == (str(task(record, "flaky").pk),)
    job.delete()
    with django_capture_on_commit_callbacks(execute=True):
        tasks.container_job(*job.args())

    assert task(record, "flaky").status == RunTask.Status.COMPLETE
    assert task(record, "after").status == RunTask.Status.COMPLETE
    # The background after it was handed to the queue in turn.
    assert [job.func() for job in OrmQ.objects.all()] == ["events.tasks.task_job"]
    record.refresh_from_db()
    assert record.flags == {"after": True}


def test_an_early_delivery_of_a_retry_does_nothing(form, flaky, submit_queued):
    add_flaky(form, succeed_on=2, max_attempts=3, backoff=60)
    record = submit_queued().record

    tasks.container_job(str(task(record, "flaky").pk))

    row = task(record, "flaky")
    assert row.status == RunTask.Status.PENDING
    assert row.attempt == 1
    assert flaky.seen == [1]


# Redrive ----------------------------------------------------------------------------------------


@pytest.fixture
def broken(form, submit_queued):
    """A run that failed at ``count`` (seats from the status field, which holds no number)."""
    add_node(form, "update_field", name="first", config={"field": "email", "value": "{{ record.email }}"})
    add_node(
        form,
        "update_field",
        name="count",
        label="Count seats",
        config={"field": "seats", "value": "{{ record.status }}"},
    )
    add_after(form)
    background = add_node(form, "background", name="bg")
    add_node(
        form,
        "send_email",
        parent=background,
        name="mail",
        config={"to": "{{ record.email }}", "subject": "Booked", "body": "{{ record.seats }} seats"},
    )
    record = submit_queued(status="many").record
    assert run_of(record).status == Run.Status.FAILED
    return record


def test_redrive_continues_from_the_failed_step_and_completes_the_run(
    broken, sync_queue, django_capture_on_commit_callbacks, mailoutbox
):
    record = broken
    failed = task(record, "count")
    assert failed.status == RunTask.Status.FAILED
    assert "“many” is not a whole number." in failed.error
    assert {task(record, name).status for name in ("after", "bg")} == {RunTask.Status.CANCELLED}
    assert not RunTask.objects.filter(run__record=record, name="mail").exists()  # bg never started
    first_finished = task(record, "first").finished_at
    record.set_value("status", "3")  # fix the cause

    with django_capture_on_commit_callbacks(execute=True):
        assert engine.task_redrive(task_id=failed.pk) is True

    row = task(record, "count")
    assert row.status == RunTask.Status.COMPLETE
    assert row.attempt == 2
    record.refresh_from_db()
    assert record.data["seats"] == 3
    assert record.flags == {"after": True}
    assert [message.body for message in mailoutbox] == ["3 seats"]
    assert task(record, "first").finished_at == first_finished  # done steps do not run again
    run = run_of(record)
    assert run.status == Run.Status.COMPLETE
    assert run.error == ""
    assert record.is_complete is True
    lines = " | ".join(entry["line"] for entry in row.logs)
    assert "“many” is not a whole number." in lines  # the failure stays on record
    assert "re-run by an admin" in lines


def test_redrive_puts_the_run_back_to_running_and_the_cancelled_steps_back_to_pending(broken):
    record = broken
    record.set_value("status", "2")

    assert engine.task_redrive(task_id=task(record, "count").pk) is True

    assert run_of(record).status == Run.Status.RUNNING
    assert task(record, "count").status == RunTask.Status.PENDING
    assert {task(record, name).status for name in ("after", "bg")} == {RunTask.Status.PENDING}
    record.refresh_from_db()
    assert record.is_complete is False

    tasks.container_job(str(task(record, "count").pk))

    assert task(record, "count").status == RunTask.Status.COMPLETE
    assert task(record, "after").status == RunTask.Status.COMPLETE


def test_redrive_of_a_step_that_fails_again_fails_the_run_again_and_keeps_both_failures(
    broken, sync_queue, django_capture_on_commit_callbacks
):
    record = broken

    with django_capture_on_commit_callbacks(execute=True):
        engine.task_redrive(task_id=task(record, "count").pk)

    row = task(record, "count")
    assert row.status == RunTask.Status.FAILED
    assert row.attempt == 2
    failures = [entry for entry in row.logs if "not a whole number" in entry["line"]]
    assert len(failures) == 2
    assert run_of(record).status == Run.Status.FAILED
    assert task(record, "after").status == RunTask.Status.CANCELLED


def test_redrive_inside_a_background_reopens_the_container(form, sync_queue, django_capture_on_commit_callbacks):
    background = add_node(form, "background", name="bg")
    add_node(
        form, "update_field", parent=background, name="count", config={"field": "seats", "value": "{{ record.status }}"}
    )
    add_after(form, parent=background)
    with django_capture_on_commit_callbacks(execute=True):
        record = record_submit(form=form, data={"email": "ann@example.com", "status": "lots"})
    assert task(record, "bg").status == RunTask.Status.FAILED
    record.set_value("status", "4")

    with django_capture_on_commit_callbacks(execute=True):
        assert engine.task_redrive(task_id=task(record, "count").pk)

    assert task(record, "count").status == RunTask.Status.COMPLETE
    assert task(record, "after").status == RunTask.Status.COMPLETE
    assert task(record, "bg").status == RunTask.Status.COMPLETE
    assert run_of(record).status == Run.Status.COMPLETE


def test_redrive_refuses_a_task_that_did_not_fail(form, submit_queued):
    add_after(form)
    record = submit_queued().record

    assert engine.task_redrive(task_id=task(record, "after").pk) is False
    assert task(record, "after").attempt == 1

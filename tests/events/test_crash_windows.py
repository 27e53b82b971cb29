"""A state change and its consequence commit together (DESIGN 5.9, issue 8 §1).

Each test breaks a process off in the middle of a transition (the second
half raises, as a process dying there would stop it) and checks that what is
stored is a state the next callback, the dispatcher or the sweep reads right:
never a failed step that the run walks past.
"""

from datetime import timedelta

import pytest
from django.utils import timezone
from django_q.models import OrmQ

from events import engine, queue
from events.models import Run, RunTask
from tests.factories import add_node, steps_created


class ProcessDied(Exception):
    """Stands for the process dying at this point."""


def die(*args, **kwargs):
    raise ProcessDied


@pytest.fixture
def add_wait_then_b(trail_form, add_mark, callback_server, allow_local_http):
    """A: a step that waits for a callback; then B. ``catch=True`` gives A an error branch (E)."""

    def build(*, catch=False):
        wait = add_node(
            trail_form,
            "http_request",
            name="wait",
            label="Wait",
            config={
                "method": "POST",
                "url": callback_server.url + "/jobs",
                "timeout_seconds": 5,
                "wait_for_callback": True,
                "callback_timeout_seconds": 600,
            },
        )
        if catch:
            add_mark("E", parent=wait, branch="on_error")
        add_mark("B")
        return wait

    return build


def task(record, name):
    return RunTask.objects.get(run__record=record, name=name)


def run_of(record):
    return Run.objects.get(record=record, is_submission=True)


def age(record, seconds=3600):
    """Make the run look old, as the sweep sees a run that nothing moved on for a while."""
    Run.objects.filter(record=record).update(created_at=timezone.now() - timedelta(seconds=seconds))


# A failure and its consequence ---------------------------------------------------------------


def test_a_failure_callback_that_breaks_off_before_failing_the_run_leaves_the_task_awaiting(
    add_wait_then_b, submit, django_capture_on_commit_callbacks, monkeypatch
):
    add_wait_then_b()
    record = submit().record
    wait = task(record, "wait")
    assert wait.status == RunTask.Status.AWAITING

    monkeypatch.setattr("events.engine.failures.run_fail", die)
    with pytest.raises(ProcessDied):
        engine.task_callback(task_id=wait.pk, status="FAILURE")
    monkeypatch.undo()

    # Nothing of the callback stuck: the external system's retry is applied in full.
    wait.refresh_from_db()
    assert wait.status == RunTask.Status.AWAITING
    assert run_of(record).status == Run.Status.RUNNING
    with django_capture_on_commit_callbacks(execute=True):
        result = engine.task_callback(task_id=wait.pk, status="FAILURE")
    assert result.applied
    assert run_of(record).status == Run.Status.FAILED
    assert task(record, "b").status == RunTask.Status.CANCELLED
    record.refresh_from_db()
    assert record.data["trail"] == ""


def test_a_failure_callback_records_its_failure_kind_with_the_failure(
    add_wait_then_b, submit, django_capture_on_commit_callbacks
):
    add_wait_then_b()
    record = submit().record

    with django_capture_on_commit_callbacks(execute=True):
        engine.task_callback(task_id=task(record, "wait").pk, status="FAILURE")

    assert task(record, "wait").failure == RunTask.Failure.CALLBACK


def test_a_deadline_that_breaks_off_before_failing_the_run_leaves_the_task_awaiting(
    add_wait_then_b, submit, django_capture_on_commit_callbacks, monkeypatch
):
    add_wait_then_b()
    record = submit().record
    later = timezone.now() + timedelta(seconds=601)

    monkeypatch.setattr("events.engine.failures.run_fail", die)
    with pytest.raises(ProcessDied):
        engine.awaiting_expire(now=later)
    monkeypatch.undo()

    assert task(record, "wait").status == RunTask.Status.AWAITING
    with django_capture_on_commit_callbacks(execute=True):
        assert engine.awaiting_expire(now=later) == 1
    assert run_of(record).status == Run.Status.FAILED
    assert task(record, "b").status == RunTask.Status.CANCELLED


def test_a_step_given_up_by_the_sweep_fails_with_its_consequence_or_not_at_all(
    settings, trail_form, add_mark, submit_queued, sweep_now, monkeypatch
):
    settings.EVENTS_LEASE_RETRY_LIMIT = 1
    add_mark("A")
    add_mark("B")
    record = submit_queued().record
    # A's worker died holding it, at its last allowed attempt; B never ran.
    Run.objects.filter(record=record).update(status=Run.Status.RUNNING)
    RunTask.objects.filter(run__record=record, name="a").update(
        status=RunTask.Status.ACTIVE, attempt=1, lease_expires_at=timezone.now() - timedelta(seconds=1)
    )
    RunTask.objects.filter(run__record=record, name="b").update(status=RunTask.Status.PENDING)

    monkeypatch.setattr("events.engine.failures.run_fail", die)
    with pytest.raises(ProcessDied):
        sweep_now()
    monkeypatch.undo()
    assert task(record, "a").status == RunTask.Status.ACTIVE

    age(record)
    sweep_now()
    assert task(record, "a").status == RunTask.Status.FAILED
    assert run_of(record).status == Run.Status.FAILED
    assert task(record, "b").status == RunTask.Status.CANCELLED


def test_a_failure_inside_a_walk_that_breaks_off_leaves_no_failure_without_its_consequence(
    trail_form, add_mark, submit_queued, sweep_now, monkeypatch
):
    add_node(trail_form, "fail", name="boom", config={"message": "no"})
    add_mark("B")

    with monkeypatch.context() as patch:
        patch.setattr("events.engine.failures.run_fail", die)
        patch.setattr("forms_app.services.logger.exception", lambda *a, **k: None)
        record = submit_queued().record  # the request survives: its inline phase broke off

    # The walk's uncommitted work went with it: the step is not FAILED without its consequence.
    assert task(record, "boom").status in (RunTask.Status.PENDING, RunTask.Status.ACTIVE)
    assert task(record, "b").status == RunTask.Status.PENDING

    age(record)
    RunTask.objects.filter(run__record=record, status=RunTask.Status.ACTIVE).update(
        lease_expires_at=timezone.now() - timedelta(seconds=1)
    )
    sweep_now()
    sweep_now()

    assert task(record, "boom").status == RunTask.Status.FAILED
    assert run_of(record).status == Run.Status.FAILED
    assert task(record, "b").status == RunTask.Status.CANCELLED


# The sweep never walks past a failure nothing handled ----------------------------------------


def old_crash_state(record, name, *, failure=""):
    """What an older version left when it died between the two commits: a failed step, nothing else."""
    RunTask.objects.filter(run__record=record, name=name).update(
        status=RunTask.Status.FAILED,
        failure=failure,
        error="The external system reported FAILURE.",
        finished_at=timezone.now(),
    )


def test_the_sweep_fails_a_stalled_run_with_a_failure_nothing_handled_and_runs_nothing_after_it(
    add_wait_then_b, submit_queued, sweep_now
):
    add_wait_then_b()
    record = submit_queued().record
    old_crash_state(record, "wait")
    age(record)

    repairs = sweep_now()

    assert repairs["run_stalled_resumed"] == 1
    run = run_of(record)
    assert run.status == Run.Status.FAILED
    assert "Wait failed" in run.error
    assert task(record, "b").status == RunTask.Status.CANCELLED
    record.refresh_from_db()
    assert record.data["trail"] == ""
    assert record.is_complete is True


def test_the_sweep_runs_the_error_branch_of_such_a_failure_before_the_steps_after_it(
    add_wait_then_b, submit_queued, sweep_now
):
    add_wait_then_b(catch=True)
    record = submit_queued().record
    old_crash_state(record, "wait")
    age(record)

    sweep_now()

    record.refresh_from_db()
    assert record.data["trail"] == "EB"
    assert run_of(record).status == Run.Status.COMPLETE


def test_a_run_whose_tasks_all_ended_with_an_unhandled_failure_fails_instead_of_completing(
    trail_form, add_mark, submit_queued, sweep_now
):
    add_mark("A")
    add_mark("B")
    record = submit_queued().record
    Run.objects.filter(record=record).update(status=Run.Status.RUNNING, finished_at=None)
    old_crash_state(record, "a")

    assert sweep_now()["run_finished"] == 0
    assert run_of(record).status == Run.Status.FAILED


def test_a_walk_that_meets_a_failure_nothing_handled_fails_the_run_instead_of_walking_on(
    trail_form, add_mark, submit_queued, django_capture_on_commit_callbacks
):
    background = add_node(trail_form, "background", name="bg")
    add_mark("A", parent=background)
    add_mark("B", parent=background)
    record = submit_queued().record
    steps_created(record, "bg")  # an older version created them with the run
    old_crash_state(record, "a")

    with django_capture_on_commit_callbacks(execute=True):
        engine.task_job(task_id=task(record, "bg").pk)

    assert run_of(record).status == Run.Status.FAILED
    assert task(record, "b").status == RunTask.Status.CANCELLED
    record.refresh_from_db()
    assert record.data["trail"] == ""


# What follows a callback is handed off in the callback's transaction --------------------------


def test_a_success_callback_hands_off_the_next_step_in_its_own_transaction(
    add_wait_then_b, submit_queued, django_capture_on_commit_callbacks, monkeypatch
):
    add_wait_then_b()
    record = submit_queued().record
    wait = task(record, "wait")

    monkeypatch.setattr("events.queue._send", die)
    with pytest.raises(ProcessDied):
        engine.task_callback(task_id=wait.pk, status="SUCCESS")
    monkeypatch.undo()
    assert task(record, "wait").status == RunTask.Status.AWAITING  # all or nothing

    engine.task_callback(task_id=wait.pk, status="SUCCESS")
    b = task(record, "b")
    [job] = OrmQ.objects.all()
    assert (job.func(), job.args()) == ("events.tasks.task_job", (str(b.pk),))
    assert b.enqueued_at is not None and b.handoff_id == job.pk


def test_a_callback_completing_the_last_step_of_a_branch_completes_the_branch_and_the_run(
    trail_form, add_mark, callback_server, allow_local_http, submit, django_capture_on_commit_callbacks
):
    background = add_node(trail_form, "background", name="bg")
    add_mark("A", parent=background)
    add_node(
        trail_form,
        "http_request",
        parent=background,
        name="wait",
        config={
            "method": "POST",
            "url": callback_server.url + "/jobs",
            "timeout_seconds": 5,
            "wait_for_callback": True,
            "callback_timeout_seconds": 600,
        },
    )
    record = submit().record
    assert task(record, "bg").status == RunTask.Status.ACTIVE  # parked behind the waiting step

    with django_capture_on_commit_callbacks(execute=True):
        engine.task_callback(task_id=task(record, "wait").pk, status="SUCCESS")

    assert OrmQ.objects.count() == 0  # nothing left to walk: settled in the callback's transaction
    assert task(record, "bg").status == RunTask.Status.COMPLETE
    assert run_of(record).status == Run.Status.COMPLETE
    record.refresh_from_db()
    assert record.is_complete is True


# A child run is started once -------------------------------------------------------------------


def test_a_trigger_event_step_run_again_after_a_crash_starts_its_child_run_once(
    trail_form, add_mark, submit, django_capture_on_commit_callbacks
):
    add_mark("X", event="follow_up")
    add_node(trail_form, "trigger_event", name="fire", config={"event": "follow_up"})
    record = submit().record
    fire = task(record, "fire")
    assert Run.objects.filter(event="follow_up").count() == 1
    # Its worker died after the child run committed, before the step was marked complete.
    RunTask.objects.filter(pk=fire.pk).update(status=RunTask.Status.PENDING, finished_at=None)
    Run.objects.filter(pk=fire.run_id).update(status=Run.Status.RUNNING, finished_at=None)

    with django_capture_on_commit_callbacks(execute=True):
        queue.task_enqueue(task_id=fire.pk)

    assert Run.objects.filter(event="follow_up").count() == 1
    assert task(record, "fire").status == RunTask.Status.COMPLETE
    assert run_of(record).status == Run.Status.COMPLETE


# What a step produces can always be stored ----------------------------------------------------


@pytest.fixture
def odd_step(monkeypatch):
    """A node type (test only) that raises or returns what ``behaviour`` says."""
    from events.nodes import registry
    from events.nodes.base import NodeType

    behaviour = {}

    class Odd(NodeType):
        key, label, config_form = "odd_step", "Odd step", registry.get("go_async").config_form

        def execute(self, ctx):
            ctx.log("seen: a\x00b")
            if "raise" in behaviour:
                raise ValueError(behaviour["raise"])
            return behaviour["return"]

    monkeypatch.setitem(registry._types, "odd_step", Odd)
    return behaviour


@pytest.mark.parametrize("output", [{"text": "a\x00b"}, {"text": "a\ud800b"}, {"number": float("nan")}])
def test_a_step_whose_output_cannot_be_stored_fails_at_once_with_a_clear_error(
    trail_form, add_mark, submit_queued, odd_step, output
):
    odd_step["return"] = output
    add_node(trail_form, "odd_step", name="odd")
    add_mark("B")

    record = submit_queued().record

    odd = task(record, "odd")
    assert odd.status == RunTask.Status.FAILED
    assert odd.error.startswith("Its output cannot be stored: output.")
    assert run_of(record).status == Run.Status.FAILED
    assert task(record, "b").status == RunTask.Status.CANCELLED


def test_an_error_message_or_log_line_with_a_nul_is_stored_readably(trail_form, submit_queued, odd_step):
    odd_step["raise"] = "bad byte \x00 here"
    add_node(trail_form, "odd_step", name="odd")

    record = submit_queued().record

    odd = task(record, "odd")
    assert odd.status == RunTask.Status.FAILED
    assert odd.error == "ValueError: bad byte \ufffd here"
    assert any(entry["line"] == "seen: a\ufffdb" for entry in odd.logs)

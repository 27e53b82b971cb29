import datetime

import pytest
from django.utils import timezone
from django.utils.module_loading import import_string
from django_q.models import OrmQ

from events import engine
from events.models import Node, Run, RunTask
from events.nodes import registry
from events.nodes.base import ConfigForm, NodeType
from tests.factories import RecordFactory, add_node, publish


def task_of(record, node):
    return RunTask.objects.get(run__record=record, node_id=node.pk)


def statuses(record):
    return {task.label or task.type: task.status for task in RunTask.objects.filter(run__record=record)}


def run_queued_jobs():
    """What a worker does: take each queued job and call its function with its arguments."""
    for job in OrmQ.objects.all():
        job.delete()
        import_string(job.func())(*job.args(), **(job.kwargs() or {}))


def test_inline_actions_run_in_tree_order_before_the_submit_returns(add_mark, submit_queued):
    for letter in "ABC":
        add_mark(letter)

    record = submit_queued().record

    assert record.data["trail"] == "ABC"
    assert set(statuses(record).values()) == {RunTask.Status.COMPLETE}
    assert record.is_complete
    run = Run.objects.get(record=record)
    assert run.status == Run.Status.COMPLETE
    assert run.finished_at is not None
    assert not OrmQ.objects.exists()


def test_inline_tasks_record_attempt_timings_and_logs(add_mark, submit_queued):
    a = add_mark("A")

    record = submit_queued().record

    task = task_of(record, a)
    assert task.attempt == 1
    assert task.started_at <= task.finished_at
    assert task.output == {"field": "trail", "value": "A"}
    assert any("trail set to 'A'" in entry["line"] for entry in task.logs)


def test_background_and_delay_children_do_not_run_in_the_request(trail_form, add_mark, submit_queued):
    background = add_node(trail_form, "background", label="Soon")
    add_mark("B", parent=background)
    delay = add_node(trail_form, "delay", label="Later", config={"after_seconds": 600})
    add_mark("C", parent=delay)

    record = submit_queued().record

    assert record.data["trail"] == ""
    assert not record.is_complete
    # The containers' steps get their rows when a worker starts them.
    assert statuses(record) == {"Soon": RunTask.Status.PENDING, "Later": RunTask.Status.PENDING}
    assert Run.objects.get(record=record).status == Run.Status.RUNNING


def test_a_background_is_handed_to_the_queue_after_commit(trail_form, add_mark, submit_queued):
    background = add_node(trail_form, "background")
    add_mark("B", parent=background)

    record = submit_queued().record

    task = task_of(record, background)
    assert task.enqueued_at is not None
    assert task.due_at <= timezone.now()
    [job] = OrmQ.objects.all()
    assert job.func() == "events.tasks.task_job"
    assert job.args() == (str(task.pk),)


def test_a_delay_due_later_is_not_handed_to_the_queue_in_the_request(trail_form, add_mark, submit_queued):
    delay = add_node(trail_form, "delay", config={"after_seconds": 600})
    add_mark("B", parent=delay)

    record = submit_queued().record

    task = task_of(record, delay)
    assert task.enqueued_at is None
    assert task.due_at == record.created_at + datetime.timedelta(seconds=600)
    assert not OrmQ.objects.exists()


def test_a_delay_due_now_is_handed_to_the_queue_at_once(trail_form, add_mark, submit_queued):
    delay = add_node(trail_form, "delay", config={"rule": "now"})
    add_mark("B", parent=delay)

    record = submit_queued().record

    assert task_of(record, delay).enqueued_at is not None
    assert OrmQ.objects.count() == 1


def test_seed_example_runs_a_and_d_in_the_request_and_b_c_and_the_email_in_the_queued_job(
    seed_tree, submit_queued, mailoutbox
):
    record = submit_queued().record

    assert record.data["trail"] == "AD"
    assert task_of(record, seed_tree["A"]).status == RunTask.Status.COMPLETE
    assert task_of(record, seed_tree["D"]).status == RunTask.Status.COMPLETE
    assert task_of(record, seed_tree["background"]).status == RunTask.Status.PENDING
    assert set(statuses(record)) == {"A", "Confirm", "D"}  # B, C and the email: when the background starts
    assert mailoutbox == []
    assert not record.is_complete

    run_queued_jobs()

    record.refresh_from_db()
    assert record.data["trail"] == "ADBC"
    assert set(statuses(record).values()) == {RunTask.Status.COMPLETE}
    assert Run.objects.get(record=record).status == Run.Status.COMPLETE
    assert record.is_complete
    [mail] = mailoutbox
    assert mail.to == ["ann@example.com"]
    assert mail.body == "Trail ADBC"


def test_with_a_sync_queue_the_seed_example_finishes_within_the_submit(seed_tree, submit, mailoutbox):
    record = submit().record

    assert record.data["trail"] == "ADBC"
    assert record.is_complete
    assert Run.objects.get(record=record).status == Run.Status.COMPLETE
    assert len(mailoutbox) == 1


def test_nested_containers_defer_again_inside_the_queued_job(trail_form, add_mark, submit_queued):
    outer = add_node(trail_form, "background", label="Outer")
    add_mark("B", parent=outer)
    inner = add_node(trail_form, "delay", parent=outer, label="Inner", config={"after_seconds": 600})
    add_mark("C", parent=inner)
    add_mark("D", parent=outer)

    record = submit_queued().record
    run_queued_jobs()

    record.refresh_from_db()
    assert record.data["trail"] == "BD"
    assert statuses(record) == {
        "Outer": RunTask.Status.COMPLETE,
        "B": RunTask.Status.COMPLETE,
        "Inner": RunTask.Status.PENDING,  # C: when Inner starts
        "D": RunTask.Status.COMPLETE,
    }
    assert not record.is_complete
    assert task_of(record, inner).due_at == record.created_at + datetime.timedelta(seconds=600)


def test_a_failed_inline_node_fails_the_run_and_later_nodes_never_run(trail_form, add_mark, submit_queued, mailoutbox):
    add_mark("A")
    add_node(trail_form, "fail", label="Boom", config={"message": "No seats for {{ record.email }}"})
    background = add_node(trail_form, "background", label="Later background")
    add_node(
        trail_form,
        "send_email",
        parent=background,
        label="Mail",
        config={"to": "{{ record.email }}", "subject": "s", "body": "b"},
    )
    add_mark("D")

    record = submit_queued().record

    assert record.data["trail"] == "A"
    assert statuses(record) == {
        "A": RunTask.Status.COMPLETE,
        "Boom": RunTask.Status.FAILED,
        "Later background": RunTask.Status.CANCELLED,  # never started: Mail has no task
        "D": RunTask.Status.CANCELLED,
    }
    assert task_of(record, background).enqueued_at is None
    assert not OrmQ.objects.exists()
    run = Run.objects.get(record=record)
    assert run.status == Run.Status.FAILED
    assert run.error == "Boom failed: No seats for ann@example.com"
    assert RunTask.objects.get(run=run, label="Boom").error == "No seats for ann@example.com"
    assert record.is_complete
    assert mailoutbox == []


def test_a_failure_in_a_background_job_fails_the_run_and_cancels_what_is_still_pending(
    trail_form, add_mark, submit_queued
):
    background = add_node(trail_form, "background", label="Work")
    add_mark("B", parent=background)
    add_node(trail_form, "fail", parent=background, label="Boom", config={"message": "down"})
    add_mark("C", parent=background)
    delay = add_node(trail_form, "delay", label="Reminder", config={"after_seconds": 600})
    add_mark("D", parent=delay)

    record = submit_queued().record
    run_queued_jobs()

    record.refresh_from_db()
    assert record.data["trail"] == "B"
    assert statuses(record) == {
        "Work": RunTask.Status.FAILED,
        "B": RunTask.Status.COMPLETE,
        "Boom": RunTask.Status.FAILED,
        "C": RunTask.Status.CANCELLED,
        "Reminder": RunTask.Status.CANCELLED,  # never started: D has no task
    }
    assert Run.objects.get(record=record).status == Run.Status.FAILED
    assert record.is_complete


@pytest.mark.django_db(transaction=True)
def test_a_container_that_cannot_be_handed_to_the_queue_fails_the_run(trail_form, add_mark, submit_queued, monkeypatch):
    def broker_down(*args, **kwargs):
        raise ConnectionError("broker down")

    monkeypatch.setattr("events.queue._package", broker_down)
    background = add_node(trail_form, "background", label="Work")
    add_mark("B", parent=background)
    add_mark("C")

    record = submit_queued().record

    assert record.data["trail"] == ""
    task = task_of(record, background)
    assert task.status == RunTask.Status.FAILED
    assert task.error == "Could not schedule: ConnectionError: broker down"
    assert task.enqueued_at is None
    assert statuses(record)["C"] == RunTask.Status.CANCELLED
    assert Run.objects.get(record=record).status == Run.Status.FAILED
    assert record.is_complete


def test_a_delay_whose_due_time_cannot_be_computed_fails_the_run(trail_form, add_mark, submit_queued):
    delay = add_node(trail_form, "delay", label="On the date", config={"rule": "field", "field": "trail"})
    add_mark("B", parent=delay)
    add_mark("C")

    record = submit_queued(trail="not a date").record

    assert record.data["trail"] == "not a date"
    assert task_of(record, delay).status == RunTask.Status.FAILED
    assert Run.objects.get(record=record).status == Run.Status.FAILED
    assert not OrmQ.objects.exists()


def test_editing_the_tree_after_submit_does_not_change_what_the_run_executes(
    trail_form, seed_tree, add_mark, submit_queued
):
    record = submit_queued().record
    seed_tree["B"].config = {"field": "trail", "value": "{{ record.trail }}X"}
    seed_tree["B"].label = "Renamed"
    seed_tree["B"].save()
    Node.objects.get(pk=seed_tree["C"].pk).delete()
    add_mark("E", parent=Node.objects.get(pk=seed_tree["background"].pk))

    run_queued_jobs()

    record.refresh_from_db()
    assert record.data["trail"] == "ADBC"
    assert set(statuses(record)) == {"A", "Confirm", "B", "C", "mail", "D"}
    assert record.is_complete


def test_deleting_the_whole_tree_after_submit_does_not_stop_the_run(seed_tree, submit_queued, mailoutbox):
    record = submit_queued().record
    Node.objects.filter(form=record.form).delete()

    run_queued_jobs()

    record.refresh_from_db()
    assert record.data["trail"] == "ADBC"
    assert len(mailoutbox) == 1
    assert Run.objects.get(record=record).status == Run.Status.COMPLETE


def test_a_new_submit_runs_the_edited_tree_once_it_is_published(trail_form, seed_tree, submit):
    first = submit().record
    Node.objects.get(pk=seed_tree["C"].pk).delete()
    second = submit().record
    publish(trail_form)

    third = submit().record

    assert first.data["trail"] == "ADBC"
    assert second.data["trail"] == "ADBC"  # the edit is a draft until it is published
    assert third.data["trail"] == "ADB"


@pytest.fixture
def started_run(trail_form, add_mark):
    """A submission run of A and B, created but not walked."""
    add_mark("A")
    add_mark("B")
    record = RecordFactory(form=trail_form, data={"trail": ""})
    return engine.run_start(record=record, is_submission=True)


def finish(task, status=RunTask.Status.COMPLETE):
    assert task.claim()
    assert task.finish(status)


def test_run_finish_if_done_leaves_a_run_with_unfinished_tasks_running(started_run):
    first, second = started_run.tasks.all()
    finish(first)

    assert engine.run_finish_if_done(run=started_run) is False

    started_run.refresh_from_db()
    assert started_run.status == Run.Status.RUNNING
    assert started_run.finished_at is None
    assert not started_run.record.is_complete


def test_run_finish_if_done_waits_for_an_awaiting_task(started_run):
    first, second = started_run.tasks.all()
    finish(first)
    assert second.claim()
    RunTask.objects.filter(pk=second.pk).update(status=RunTask.Status.AWAITING)

    assert engine.run_finish_if_done(run=started_run) is False
    assert Run.objects.get(pk=started_run.pk).status == Run.Status.RUNNING


def test_run_finish_if_done_completes_once_when_every_task_is_terminal(started_run):
    first, second = started_run.tasks.all()
    finish(first)
    finish(second)

    assert engine.run_finish_if_done(run=started_run) is True
    finished_at = Run.objects.get(pk=started_run.pk).finished_at
    assert engine.run_finish_if_done(run=started_run) is False

    run = Run.objects.get(pk=started_run.pk)
    assert run.status == Run.Status.COMPLETE
    assert run.finished_at == finished_at
    run.record.refresh_from_db()
    assert run.record.is_complete


def test_run_finish_if_done_counts_cancelled_tasks_as_terminal(started_run):
    first, second = started_run.tasks.all()
    finish(first)
    RunTask.objects.filter(pk=second.pk).update(status=RunTask.Status.CANCELLED)

    assert engine.run_finish_if_done(run=started_run) is True


def test_run_finish_if_done_leaves_a_failed_run_failed(started_run):
    first, second = started_run.tasks.all()
    finish(first)
    finish(second, RunTask.Status.FAILED)
    engine.run_fail(run=started_run, error="B failed")

    assert engine.run_finish_if_done(run=started_run) is False
    assert Run.objects.get(pk=started_run.pk).status == Run.Status.FAILED


def test_finishing_a_run_that_is_not_the_submission_leaves_the_record_incomplete(trail_form, add_mark):
    add_mark("A")
    record = RecordFactory(form=trail_form, data={"trail": ""})
    run = engine.run_start(record=record, event="custom", is_submission=False)

    engine.run_inline(run=run)

    record.refresh_from_db()
    assert Run.objects.get(pk=run.pk).status == Run.Status.COMPLETE
    assert not record.is_complete


def test_run_cancel_cancels_pending_tasks_and_completes_the_record(seed_tree, submit_queued, mailoutbox):
    record = submit_queued().record
    run = Run.objects.get(record=record)

    assert engine.run_cancel(run=run, reason="Duplicate booking") is True

    run.refresh_from_db()
    record.refresh_from_db()
    assert run.status == Run.Status.CANCELLED
    assert run.error == "Duplicate booking"
    assert run.finished_at is not None
    assert statuses(record) == {
        "A": RunTask.Status.COMPLETE,
        "Confirm": RunTask.Status.CANCELLED,  # never started: B, C and the email have no tasks
        "D": RunTask.Status.COMPLETE,
    }
    assert record.is_complete


def test_a_queued_job_of_a_cancelled_run_does_nothing(seed_tree, submit_queued, mailoutbox):
    record = submit_queued().record
    engine.run_cancel(run=Run.objects.get(record=record))

    run_queued_jobs()

    record.refresh_from_db()
    assert record.data["trail"] == "AD"
    assert mailoutbox == []
    assert task_of(record, seed_tree["background"]).attempt == 0
    assert not RunTask.objects.filter(run__record=record, parent__isnull=False).exists()  # it never started
    assert Run.objects.get(record=record).status == Run.Status.CANCELLED


def test_run_cancel_of_a_finished_run_changes_nothing(add_mark, submit_queued):
    add_mark("A")
    record = submit_queued().record
    run = Run.objects.get(record=record)
    finished_at = run.finished_at

    assert engine.run_cancel(run=run) is False

    run.refresh_from_db()
    assert run.status == Run.Status.COMPLETE
    assert run.error == ""
    assert run.finished_at == finished_at


def test_run_cancel_twice_cancels_once(seed_tree, submit_queued):
    record = submit_queued().record
    run = Run.objects.get(record=record)

    assert engine.run_cancel(run=run, reason="first") is True
    assert engine.run_cancel(run=run, reason="second") is False
    assert Run.objects.get(pk=run.pk).error == "first"


class CancelRun(NodeType):
    """Test-only: an admin cancels the run while this step executes."""

    key = "test_cancel_run"
    label = "Cancel the run"
    config_form = ConfigForm

    def execute(self, ctx):
        engine.run_cancel(run=ctx.run, reason="Cancelled mid-way")


def test_a_run_cancelled_while_its_background_job_runs_stops_before_the_next_step(
    trail_form, add_mark, submit_queued, monkeypatch
):
    monkeypatch.setitem(registry._types, CancelRun.key, CancelRun)
    background = add_node(trail_form, "background", label="Work")
    add_mark("B", parent=background)
    add_node(trail_form, CancelRun.key, parent=background, label="Admin cancels")
    add_mark("C", parent=background)

    record = submit_queued().record
    run_queued_jobs()

    record.refresh_from_db()
    assert record.data["trail"] == "B"
    assert statuses(record) == {
        "Work": RunTask.Status.CANCELLED,
        "B": RunTask.Status.COMPLETE,
        "Admin cancels": RunTask.Status.COMPLETE,
        "C": RunTask.Status.CANCELLED,
    }
    assert Run.objects.get(record=record).status == Run.Status.CANCELLED

"""A deferred container's steps get their task rows when a worker first starts it (issue 9, figure 3).

A submit writes a row for each first-level node (DESIGN §5.1), not one for every step of every
branch: the steps' rows are inserted with the container's claim, at the positions kept free for
them, and the waiting page and admin show the steps of a container that has not started from the
run's snapshot.
"""

import threading
import time

import pytest
from django.db import IntegrityError, connection, transaction
from django.urls import reverse

from events import engine
from events.engine import reads
from events.models import Run, RunTask
from forms_app.services import record_submit
from forms_app.waiting import record_progress
from tests.factories import add_node, steps_created


def tasks_of(record):
    return {task.name: task for task in RunTask.objects.filter(run__record=record)}


@pytest.fixture
def nested_tree(trail_form, add_mark):
    """A, Background[B, Condition[C], Delay(1 h)[E], D], F: pre-order positions 0..8."""
    add_mark("A")
    background = add_node(trail_form, "background", name="bg")
    add_mark("B", parent=background)
    condition = add_node(
        trail_form,
        "condition",
        parent=background,
        name="cond",
        config={"match": "all", "rules": [{"field": "email", "operator": "is_set"}]},
    )
    add_mark("C", parent=condition)
    delay = add_node(trail_form, "delay", parent=background, name="later", config={"after_seconds": 3600})
    add_mark("E", parent=delay)
    add_mark("D", parent=background)
    add_mark("F")
    return background


def test_a_submit_writes_the_first_level_and_a_worker_s_first_start_the_steps_at_their_tree_positions(
    nested_tree, submit_queued, django_capture_on_commit_callbacks
):
    record = submit_queued().record

    assert {name: task.position for name, task in tasks_of(record).items()} == {"a": 0, "bg": 1, "f": 8}

    engine.task_job(task_id=tasks_of(record)["bg"].pk)

    tasks = tasks_of(record)
    # The condition's step with the condition; the delay's step waits for the delay's own start.
    assert {name: task.position for name, task in tasks.items()} == {
        "a": 0,
        "bg": 1,
        "b": 2,
        "cond": 3,
        "c": 4,
        "later": 5,
        "d": 7,
        "f": 8,
    }
    assert {tasks[name].parent_id for name in ("b", "cond", "later", "d")} == {tasks["bg"].pk}
    assert tasks["c"].parent_id == tasks["cond"].pk
    record.refresh_from_db()
    assert record.data["trail"] == "AFBCD"
    assert tasks["later"].status == RunTask.Status.PENDING


def test_a_delivery_that_read_no_steps_loses_its_claim_once_another_start_created_them(
    trail_form, add_mark, submit_queued
):
    """A worker reads the container (no steps yet); another starts it, creates its steps and is
    stopped (the container goes back to pending): the first worker's claim must not win and create
    them again."""
    background = add_node(trail_form, "background", name="bg")
    add_mark("B", parent=background)
    record = submit_queued().record
    container, stale_children = reads.job_task(tasks_of(record)["bg"].pk)
    assert stale_children == []
    created = steps_created(record, "bg")  # the other worker's first start, since put back

    node = engine.snapshot_node(container.run.snapshot, container.node_id)
    steps = engine.runs.container_steps(run=container.run, task=container, node=node)

    assert container.claim(require_due=True, steps=steps) is False
    assert list(RunTask.objects.filter(parent=container).values_list("pk", flat=True)) == [created[0].pk]
    assert RunTask.objects.get(pk=container.pk).status == RunTask.Status.PENDING


@pytest.mark.django_db(transaction=True)  # the walk's own transaction, not a test's: its rollback is real
def test_a_first_start_whose_steps_cannot_be_written_leaves_the_container_unclaimed(
    trail_form, add_mark, submit_queued, monkeypatch
):
    background = add_node(trail_form, "background", name="bg")
    add_mark("B", parent=background)
    record = submit_queued().record
    container = tasks_of(record)["bg"]

    def clashing(*, run, task, node):
        steps = engine.runs.tasks_for(run, node["children"], parent_id=task.pk, position=task.position + 1)
        steps[0].node_id = task.node_id  # the container's own node: the unique constraint refuses the row
        return steps

    monkeypatch.setattr("events.engine.walks.container_steps", clashing)
    with pytest.raises(IntegrityError):
        engine.task_job(task_id=container.pk)

    container.refresh_from_db()
    assert (container.status, container.attempt, container.started_at) == (RunTask.Status.PENDING, 0, None)
    assert not RunTask.objects.filter(parent=container).exists()


def test_the_waiting_page_counts_and_shows_the_steps_of_containers_that_have_not_started(form, submit_queued, client):
    form.poll_seconds = 2
    form.save()
    later = add_node(form, "delay", name="later", label="Later", visible=True, config={"after_seconds": 3600})
    add_node(form, "set_subtext", parent=later, label="Reminder sent", visible=True, config={"text": "x"})
    add_node(form, "set_flag", parent=later, label="Quiet step", config={"flag": "f"})
    record = submit_queued().record

    progress = record_progress(record)

    assert [(step.label, step.state) for step in progress.steps] == [("Later", "queued"), ("Reminder sent", "queued")]
    assert (progress.done_count, progress.total) == (0, 3)
    html = client.get(reverse("forms_app:record_status", args=[record.token]), HTTP_HX_REQUEST="true").content
    assert b"Reminder sent" in html

    engine.run_cancel(run=Run.objects.get(record=record))
    record.refresh_from_db()

    stopped = record_progress(record)
    assert [(step.label, step.state) for step in stopped.steps] == [
        ("Later", "cancelled"),
        ("Reminder sent", "cancelled"),
    ]
    assert (stopped.done_count, stopped.total) == (0, 3)


def test_the_steps_of_a_container_a_condition_skipped_are_shown_skipped(form, submit_queued):
    condition = add_node(
        form,
        "condition",
        name="cond",
        config={"match": "all", "rules": [{"field": "seats", "operator": "greater_than", "value": "2"}]},
    )
    background = add_node(form, "background", parent=condition, name="bg", label="Extras", visible=True)
    add_node(form, "set_flag", parent=background, label="Extra seat booked", visible=True, config={"flag": "x"})
    record = submit_queued({"email": "ann@example.com", "seats": 1}).record

    progress = record_progress(record)

    assert [(step.label, step.state) for step in progress.steps] == [
        ("Extras", "skipped"),
        ("Extra seat booked", "skipped"),
    ]
    assert progress.state == "done" and (progress.done_count, progress.total) == (3, 3)


def test_a_worker_that_is_stopping_creates_the_steps_unclaimed_and_hands_the_container_back(
    trail_form, add_mark, submit_queued, monkeypatch
):
    background = add_node(trail_form, "background", name="bg")
    add_mark("B", parent=background)
    record = submit_queued().record
    monkeypatch.setattr("events.queue.worker_stopping", lambda: True)

    assert engine.task_job(task_id=tasks_of(record)["bg"].pk) is engine.Outcome.ELSEWHERE

    tasks = tasks_of(record)
    assert (tasks["bg"].status, tasks["bg"].attempt) == (RunTask.Status.PENDING, 0)
    assert (tasks["b"].status, tasks["b"].attempt, tasks["b"].lease_owner) == (RunTask.Status.PENDING, 0, "")
    monkeypatch.undo()

    engine.task_job(task_id=tasks["bg"].pk)  # the next worker: the steps are there, nothing is created again

    tasks = tasks_of(record)
    assert (tasks["b"].status, tasks["b"].attempt) == (RunTask.Status.COMPLETE, 1)
    assert RunTask.objects.filter(run__record=record).count() == 2
    record.refresh_from_db()
    assert record.data["trail"] == "B" and record.is_complete


def test_a_first_step_that_is_a_delay_is_not_claimed_with_its_container_but_scheduled(
    trail_form, add_mark, submit_queued
):
    background = add_node(trail_form, "background", name="bg")
    delay = add_node(trail_form, "delay", parent=background, name="later", config={"after_seconds": 600})
    add_mark("L", parent=delay)
    add_mark("B", parent=background)
    record = submit_queued().record

    engine.task_job(task_id=tasks_of(record)["bg"].pk)

    tasks = tasks_of(record)
    assert (tasks["later"].status, tasks["later"].attempt) == (RunTask.Status.PENDING, 0)
    assert tasks["later"].due_at is not None and tasks["b"].status == RunTask.Status.COMPLETE
    assert "l" not in tasks


@pytest.mark.django_db(transaction=True)
def test_a_run_cancelled_while_a_container_first_starts_cancels_the_steps_that_start_created(trail_form, add_mark):
    """Two connections: a worker's first start of a container (its claim and its steps' rows, not
    committed yet) and an admin's cancel of the run. Whichever order the database gives them, no step
    of the cancelled run is left pending for the walk to run."""
    background = add_node(trail_form, "background", name="bg")
    add_mark("B", parent=background)
    add_mark("C", parent=background)
    record = record_submit(form=trail_form, data={"email": "ann@example.com", "trail": ""})
    container = RunTask.objects.select_related("run").get(run__record=record, name="bg")
    node = engine.snapshot_node(container.run.snapshot, container.node_id)
    claimed, results = threading.Event(), {}

    def start():
        try:
            with transaction.atomic():
                steps = engine.runs.container_steps(run=container.run, task=container, node=node)
                results["claimed"] = container.claim(require_due=True, steps=steps)
                claimed.set()
                time.sleep(0.5)  # the cancel is sent meanwhile
        finally:
            claimed.set()
            connection.close()

    def cancel():
        try:
            claimed.wait(10)
            results["cancelled"] = engine.run_cancel(run=Run.objects.get(pk=container.run_id))
        finally:
            connection.close()

    threads = [threading.Thread(target=start), threading.Thread(target=cancel)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert results == {"claimed": True, "cancelled": True}
    steps = RunTask.objects.filter(parent=container)
    assert sorted(steps.values_list("status", flat=True)) == [RunTask.Status.CANCELLED] * 2
    assert Run.objects.get(pk=container.run_id).status == Run.Status.CANCELLED


def test_a_container_whose_run_stopped_does_not_start_nor_create_its_steps(trail_form, add_mark, submit_queued):
    background = add_node(trail_form, "background", name="bg")
    add_mark("B", parent=background)
    record = submit_queued().record
    Run.objects.filter(record=record).update(status=Run.Status.FAILED)  # its container not cancelled yet

    assert engine.task_job(task_id=tasks_of(record)["bg"].pk) is engine.Outcome.ELSEWHERE

    assert set(tasks_of(record)) == {"bg"} and tasks_of(record)["bg"].status == RunTask.Status.PENDING


def test_an_error_branch_opened_before_a_container_started_is_numbered_after_that_container_s_steps(form, submit):
    step = add_node(form, "fail", name="boom", config={"message": "no"})
    add_node(form, "set_flag", parent=step, branch="on_error", name="caught", config={"flag": "caught"})
    background = add_node(form, "background", name="bg")
    for flag in ("x", "y"):
        add_node(form, "set_flag", parent=background, name=flag, config={"flag": flag})

    tasks = tasks_of(submit().record)  # sync queue: the error branch in the request, then the background

    assert tasks["caught"].branch == "on_error"
    positions = [task.position for task in tasks.values()]
    assert len(set(positions)) == len(positions) == 5
    assert tasks["caught"].position > max(tasks[name].position for name in ("boom", "bg", "x", "y"))


def test_the_steps_of_a_container_that_ended_before_the_run_stopped_stay_counted_when_it_stops(form, submit_queued):
    broken = add_node(form, "delay", name="broken", config={"rule": "field", "field": "seats"})
    add_node(form, "set_flag", parent=broken, label="Never", visible=True, config={"flag": "never"})
    add_node(form, "set_flag", parent=broken, branch="on_error", name="caught", config={"flag": "caught"})
    add_node(form, "delay", name="later", config={"after_seconds": 3600})
    record = submit_queued({"email": "ann@example.com"}).record  # no seats: the first delay cannot be scheduled
    assert tasks_of(record)["broken"].status == RunTask.Status.FAILED
    before = record_progress(record)

    engine.run_cancel(run=Run.objects.get(record=record))
    record.refresh_from_db()
    after = record_progress(record)

    assert ("Never", "cancelled") in [(step.label, step.state) for step in before.steps]
    assert before.done_count == after.done_count == 3  # broken, caught and its step that will never run

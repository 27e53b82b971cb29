import datetime
import re

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django_q.models import OrmQ

from events import engine
from events.models import Run, RunTask
from events.queue import container_enqueue, dispatch_due
from events.tasks import container_job
from tests.factories import RecordFactory, add_node


def task_of(record, node):
    return RunTask.objects.get(run__record=record, node_id=node.pk)


def test_a_leading_container_is_handed_off_in_the_transaction_that_stores_the_run(trail_form, add_mark):
    background = add_node(trail_form, "background")
    add_mark("B", parent=background)
    add_mark("C")

    with CaptureQueriesContext(connection) as queries:
        with transaction.atomic():
            record = RecordFactory(form=trail_form, data={"trail": ""})
            engine.run_start(record=record, is_submission=True)

    task = task_of(record, background)
    [job] = OrmQ.objects.all()
    assert (task.handoff_id, job.args()) == (job.pk, (str(task.pk),))
    assert task.enqueued_at is not None and task.due_at <= task.enqueued_at
    # An executemany is logged as "3 times: INSERT ...".
    statements = [re.sub(r"^\d+ times: ", "", q["sql"]) for q in queries.captured_queries]
    inserts = [sql.split('"')[1] for sql in statements if sql.startswith("INSERT")]
    assert sorted(inserts) == ["django_q_ormq", "events_run", "events_runtask", "forms_app_record"]


def test_a_hand_off_and_its_broker_row_are_written_in_one_transaction(trail_form, add_mark):
    background = add_node(trail_form, "background")
    add_mark("B", parent=background)

    with transaction.atomic():
        record = RecordFactory(form=trail_form, data={"trail": ""})
        run = engine.run_start(record=record, is_submission=True)
        engine.run_inline(run=run)
        # Workers read committed rows only: until this block commits, they see neither.
        [job] = OrmQ.objects.all()
        task = task_of(record, background)
        assert task.enqueued_at is not None and task.handoff_id == job.pk

    assert job.args() == (str(task.pk),)
    assert job.func() == "events.tasks.task_job"


def test_a_rolled_back_hand_off_never_reaches_the_queue(trail_form, add_mark, django_capture_on_commit_callbacks):
    add_mark("A")  # an inline step first: the background is handed off by the walk, not with the run
    background = add_node(trail_form, "background")
    add_mark("B", parent=background)
    record = RecordFactory(form=trail_form, data={"trail": ""})
    run = engine.run_start(record=record, is_submission=True)
    task = task_of(record, background)
    RunTask.objects.filter(pk=task.pk).update(due_at=timezone.now())

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        with pytest.raises(RuntimeError), transaction.atomic():
            assert container_enqueue(task_id=task.pk) is True
            raise RuntimeError("the submit failed after the hand-off")

    assert callbacks == []
    assert not OrmQ.objects.exists()
    task.refresh_from_db()
    assert task.enqueued_at is None
    assert run.status == Run.Status.RUNNING


def test_a_container_is_marked_enqueued_once(trail_form, add_mark, django_capture_on_commit_callbacks):
    add_mark("A")
    background = add_node(trail_form, "background")
    add_mark("B", parent=background)
    record = RecordFactory(form=trail_form, data={"trail": ""})
    engine.run_start(record=record, is_submission=True)
    task = task_of(record, background)

    with django_capture_on_commit_callbacks(execute=True):
        assert container_enqueue(task_id=task.pk) is True
        assert container_enqueue(task_id=task.pk) is False

    assert OrmQ.objects.count() == 1


def test_jobs_carry_the_task_id_only(seed_tree, submit_queued):
    record = submit_queued().record

    [job] = OrmQ.objects.all()
    assert job.func() == "events.tasks.task_job"
    assert job.args() == (str(task_of(record, seed_tree["background"]).pk),)
    assert all(isinstance(arg, str) for arg in job.args())
    assert not job.kwargs()


def test_a_duplicate_delivery_changes_nothing(seed_tree, submit_queued, mailoutbox):
    record = submit_queued().record
    task_id = str(task_of(record, seed_tree["background"]).pk)

    assert container_job(task_id) == "done"
    first = {task.pk: (task.status, task.attempt, task.logs, task.finished_at) for task in RunTask.objects.all()}
    record.refresh_from_db()
    trail = record.data["trail"]

    assert container_job(task_id) == "elsewhere"

    record.refresh_from_db()
    assert record.data["trail"] == trail == "ADBC"
    assert len(mailoutbox) == 1
    assert {
        task.pk: (task.status, task.attempt, task.logs, task.finished_at) for task in RunTask.objects.all()
    } == first
    assert task_of(record, seed_tree["background"]).attempt == 1
    assert task_of(record, seed_tree["B"]).attempt == 1


def test_a_delivery_while_another_worker_holds_the_task_runs_nothing(seed_tree, submit_queued, mailoutbox):
    record = submit_queued().record
    task = task_of(record, seed_tree["background"])
    assert task.claim()  # another worker has it

    assert container_job(str(task.pk)) == "elsewhere"

    record.refresh_from_db()
    assert record.data["trail"] == "AD"
    assert mailoutbox == []
    assert not RunTask.objects.filter(parent=task).exists()  # its steps: rows only when it starts here
    task.refresh_from_db()
    assert task.status == RunTask.Status.ACTIVE
    assert task.attempt == 1
    assert task.enqueued_at is not None


def test_a_delivery_for_an_unknown_task_does_nothing(db):
    assert container_job("00000000-0000-0000-0000-000000000000") == "stopped"


@pytest.fixture
def delay_tree(trail_form, add_mark):
    delay = add_node(trail_form, "delay", label="Later", config={"after_seconds": 600})
    add_mark("B", parent=delay)
    return delay


def test_an_early_delivery_of_a_delay_runs_nothing_and_clears_the_hand_off(delay_tree, submit_queued):
    record = submit_queued().record
    task = task_of(record, delay_tree)
    RunTask.objects.filter(pk=task.pk).update(enqueued_at=timezone.now())  # a stray or early message

    assert container_job(str(task.pk)) == "elsewhere"

    task.refresh_from_db()
    assert task.status == RunTask.Status.PENDING
    assert task.attempt == 0
    assert task.enqueued_at is None
    record.refresh_from_db()
    assert record.data["trail"] == ""


def test_dispatch_due_sends_an_early_delivered_delay_again_when_it_is_due(
    delay_tree, submit_queued, django_capture_on_commit_callbacks
):
    record = submit_queued().record
    task = task_of(record, delay_tree)
    RunTask.objects.filter(pk=task.pk).update(enqueued_at=timezone.now())
    container_job(str(task.pk))

    with django_capture_on_commit_callbacks(execute=True):
        assert dispatch_due() == 0
    assert not OrmQ.objects.exists()

    RunTask.objects.filter(pk=task.pk).update(due_at=timezone.now() - datetime.timedelta(seconds=1))
    with django_capture_on_commit_callbacks(execute=True):
        assert dispatch_due() == 1
    [job] = OrmQ.objects.all()
    assert job.args() == (str(task.pk),)

    assert container_job(str(task.pk)) == "done"
    record.refresh_from_db()
    assert record.data["trail"] == "B"
    assert record.is_complete


def test_dispatch_due_sends_the_due_tasks_no_one_handed_off_oldest_first(
    delay_tree, submit_queued, django_capture_on_commit_callbacks
):
    now = timezone.now()
    older, newer, handed_off, later = (task_of(submit_queued().record, delay_tree) for _ in range(4))
    for task, due, enqueued in [
        (older, now - datetime.timedelta(seconds=9), None),
        (newer, now - datetime.timedelta(seconds=1), None),
        (handed_off, now - datetime.timedelta(seconds=20), now),  # a backlog job waiting for a worker
        (later, now + datetime.timedelta(seconds=60), None),
    ]:
        RunTask.objects.filter(pk=task.pk).update(due_at=due, enqueued_at=enqueued)
    OrmQ.objects.all().delete()

    with django_capture_on_commit_callbacks(execute=True):
        first = dispatch_due(limit=1)
    sent_first = [job.args() for job in OrmQ.objects.all()]
    with django_capture_on_commit_callbacks(execute=True):
        rest = dispatch_due()

    assert (first, rest) == (1, 1)
    assert sent_first == [(str(older.pk),)]
    assert sorted(job.args() for job in OrmQ.objects.all()) == sorted([(str(older.pk),), (str(newer.pk),)])


@pytest.fixture
def delays(trail_form, add_mark):
    """Six delays of one run, created but not walked: tests set their due time and state directly."""
    names = ["due", "future", "already_sent", "cancelled", "never_deferred", "complete"]
    nodes = {}
    for name in names:
        nodes[name] = add_node(trail_form, "delay", name=name, label=name, config={"after_seconds": 600})
        add_mark(name[:2].upper(), parent=nodes[name])
    record = RecordFactory(form=trail_form, data={"trail": ""})
    engine.run_start(record=record, is_submission=True)
    tasks = {name: task_of(record, node) for name, node in nodes.items()}
    now = timezone.now()
    past, future = now - datetime.timedelta(seconds=5), now + datetime.timedelta(seconds=600)
    for name, changes in {
        "due": {"due_at": past},
        "future": {"due_at": future},
        "already_sent": {"due_at": past, "enqueued_at": past},
        "cancelled": {"due_at": past, "status": RunTask.Status.CANCELLED},
        "complete": {"due_at": past, "status": RunTask.Status.COMPLETE},
    }.items():
        RunTask.objects.filter(pk=tasks[name].pk).update(**changes)
    return tasks


def test_dispatch_due_sends_only_due_pending_containers_not_yet_sent(delays, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        sent = dispatch_due()

    assert sent == 1
    assert [job.args() for job in OrmQ.objects.all()] == [(str(delays["due"].pk),)]
    assert RunTask.objects.get(pk=delays["due"].pk).enqueued_at is not None
    assert RunTask.objects.get(pk=delays["future"].pk).enqueued_at is None


def test_a_second_dispatch_due_sends_nothing(delays, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        dispatch_due()
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        assert dispatch_due() == 0

    assert callbacks == []
    assert OrmQ.objects.count() == 1


def test_dispatch_due_never_sends_actions_that_have_no_due_time(
    trail_form, add_mark, django_capture_on_commit_callbacks
):
    # Actions run where their sequence is walked; only a retry or a repair gives one a due time.
    add_mark("A")
    record = RecordFactory(form=trail_form, data={"trail": ""})
    engine.run_start(record=record)

    with django_capture_on_commit_callbacks(execute=True):
        assert dispatch_due() == 0
    assert not OrmQ.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_a_failed_hand_off_is_unmarked_so_the_next_dispatch_tries_again(delay_tree, submit_queued, monkeypatch):
    record = submit_queued().record
    task = task_of(record, delay_tree)
    RunTask.objects.filter(pk=task.pk).update(due_at=timezone.now() - datetime.timedelta(seconds=1))

    def broker_down(*args, **kwargs):
        raise ConnectionError("broker down")

    monkeypatch.setattr("events.queue._package", broker_down)
    assert dispatch_due() == 0
    task.refresh_from_db()
    assert task.enqueued_at is None
    assert task.status == RunTask.Status.PENDING

    monkeypatch.undo()
    assert dispatch_due() == 1
    assert OrmQ.objects.count() == 1

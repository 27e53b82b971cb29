"""The sweep: work the queue lost is handed back, finished runs are finished, each repair counted once."""

from datetime import timedelta

import pytest
from django.db import transaction
from django.utils import timezone
from django_q.conf import Conf
from django_q.models import OrmQ

from events import engine, queue, tasks
from events.models import Repair, Replay, Run, RunTask, lease_owner
from events.sweep import sweep
from tests.factories import RecordFactory, add_node, steps_created

NOTHING = {
    "lease_expired_retried": 0,
    "lease_expired_failed": 0,
    "handoff_lost_requeued": 0,
    "run_stalled_resumed": 0,
    "deadline_expired": 0,
    "run_finished": 0,
    "replay_resumed": 0,
}


@pytest.fixture
def start(trail_form):
    """A run of the trail form's tree, stored as a submit stores it, with nothing run yet."""

    def start():
        with transaction.atomic():
            record = RecordFactory(form=trail_form, data={"email": "ann@example.com", "trail": ""})
            return engine.run_start(record=record, is_submission=True)

    return start


def row(run, node):
    return RunTask.objects.get(run=run, node_id=node.pk)


def held_by_a_dead_worker(run, node, *, attempt=None, expired_ago=5):
    """The task was claimed (attempt counted, lease given) and its worker died: the lease has run out."""
    task = row(run, node)
    assert task.claim()
    changes = {"lease_expires_at": timezone.now() - timedelta(seconds=expired_ago)}
    if attempt is not None:
        changes["attempt"] = attempt
    RunTask.objects.filter(pk=task.pk).update(**changes)
    return task


def trail(run):
    run.record.refresh_from_db()
    return run.record.data.get("trail")


def repairs():
    return dict(Repair.objects.values_list("kind", "count"))


# Expired leases ---------------------------------------------------------------------------------


def test_a_top_level_action_whose_worker_died_is_pending_again_and_due_then_dispatch_completes_the_run(
    add_mark, start, dispatch
):
    a = add_mark("A")
    add_mark("D")
    run = start()
    held_by_a_dead_worker(run, a)
    now = timezone.now()

    assert sweep(now=now)["lease_expired_retried"] == 1

    task = row(run, a)
    assert task.status == RunTask.Status.PENDING
    assert task.due_at == now
    assert task.lease_expires_at is None and task.enqueued_at is None
    assert "lease expired" in task.logs[-1]["line"]

    assert dispatch() == 1
    run.refresh_from_db()
    assert run.status == Run.Status.COMPLETE
    assert trail(run) == "AD"
    task.refresh_from_db()
    assert task.status == RunTask.Status.COMPLETE
    assert task.attempt == 2


def test_a_step_inside_a_dead_container_waits_for_the_containers_walk_which_completes_the_run(
    trail_form, add_mark, start, dispatch
):
    background = add_node(trail_form, "background", name="bg")
    b = add_mark("B", parent=background)
    add_mark("C", parent=background)
    run = start()
    steps_created(run.record, "bg")  # it started: its steps have rows
    held_by_a_dead_worker(run, background)
    held_by_a_dead_worker(run, b)
    now = timezone.now()

    assert sweep(now=now)["lease_expired_retried"] == 2

    container, step = row(run, background), row(run, b)
    assert container.status == step.status == RunTask.Status.PENDING
    assert container.due_at == now
    assert step.due_at is None  # not dispatched on its own: the container's walk reaches it

    assert dispatch() == 1
    run.refresh_from_db()
    assert run.status == Run.Status.COMPLETE
    assert trail(run) == "BC"
    assert row(run, b).attempt == 2
    assert OrmQ.objects.count() == 0  # sync queue: nothing left behind


def test_a_task_past_the_lease_retry_limit_fails_and_fails_the_run(settings, add_mark, start, sweep_now):
    settings.EVENTS_LEASE_RETRY_LIMIT = 2
    a = add_mark("A")
    d = add_mark("D")
    run = start()
    held_by_a_dead_worker(run, a, attempt=2)

    result = sweep_now()

    assert result["lease_expired_failed"] == 1
    assert result["lease_expired_retried"] == 0
    task = row(run, a)
    assert task.status == RunTask.Status.FAILED
    assert task.failure == RunTask.Failure.RAISED
    assert "lease expired" in task.error and "2 times" in task.error
    assert task.lease_expires_at is None
    run.refresh_from_db()
    assert run.status == Run.Status.FAILED
    assert "Its worker stopped" in run.error
    assert row(run, d).status == RunTask.Status.CANCELLED
    run.record.refresh_from_db()
    assert run.record.is_complete


def test_a_task_past_the_lease_retry_limit_runs_its_error_branch_and_the_run_goes_on(
    settings, trail_form, add_mark, start, sweep_now
):
    settings.EVENTS_LEASE_RETRY_LIMIT = 2
    a = add_mark("A")
    add_node(
        trail_form,
        "update_field",
        parent=a,
        branch="on_error",
        name="e",
        label="E",
        config={"field": "trail", "value": "{{ record.trail }}E"},
    )
    add_mark("D")
    run = start()
    held_by_a_dead_worker(run, a, attempt=2)

    assert sweep_now()["lease_expired_failed"] == 1

    assert row(run, a).status == RunTask.Status.FAILED
    run.refresh_from_db()
    assert run.status == Run.Status.COMPLETE
    assert trail(run) == "ED"


def test_a_node_with_more_attempts_than_the_limit_is_retried_up_to_its_own_attempts(settings, trail_form, start):
    settings.EVENTS_LEASE_RETRY_LIMIT = 2
    a = add_node(trail_form, "set_flag", name="a", config={"flag": "a"}, max_attempts=4)
    run = start()
    held_by_a_dead_worker(run, a, attempt=3)

    assert sweep()["lease_expired_retried"] == 1

    assert row(run, a).status == RunTask.Status.PENDING


def test_a_lease_not_yet_expired_is_left_alone(add_mark, start):
    a = add_mark("A")
    run = start()
    task = row(run, a)
    assert task.claim()

    assert sweep() == NOTHING

    after = row(run, a)
    assert after.status == RunTask.Status.ACTIVE
    assert after.lease_expires_at == task.lease_expires_at
    assert after.due_at is None
    assert not Repair.objects.exists()


def test_a_step_whose_lease_runs_out_after_its_containers_is_re_run_on_its_own_and_completes_the_run(
    trail_form, add_mark, start, dispatch
):
    background = add_node(trail_form, "background", name="bg")
    add_mark("B", parent=background)
    c = add_mark("C", parent=background)
    run = start()
    steps_created(run.record, "bg")  # it started: its steps have rows
    held_by_a_dead_worker(run, background)
    step = row(run, c)
    assert step.claim()  # claimed later than its container: its lease has not run out yet

    assert sweep()["lease_expired_retried"] == 1
    dispatch()  # the container's walk runs B and finds C held
    assert trail(run) == "B"
    assert row(run, c).status == RunTask.Status.ACTIVE

    RunTask.objects.filter(pk=step.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    assert sweep()["lease_expired_retried"] == 1
    assert dispatch() == 1

    run.refresh_from_db()
    assert run.status == Run.Status.COMPLETE
    assert trail(run) == "BC"
    assert row(run, background).status == RunTask.Status.COMPLETE


# Lost hand-offs ---------------------------------------------------------------------------------


def handed_off(run, node, *, seconds_ago, in_broker=False, taken=False, taken_seconds_ago=None):
    """The container was handed to the queue ``seconds_ago``; its job is gone from the broker unless ``in_broker``.

    ``taken``: a worker took the job from the broker ``taken_seconds_ago`` (by default when it was
    handed off) and, say, died before it started it.
    """
    task = row(run, node)
    if task.handoff_id is None:  # a leading container is handed off with its run; a later one by the walk
        assert queue.container_enqueue(task_id=task.pk)
    RunTask.objects.filter(pk=task.pk).update(
        due_at=timezone.now() - timedelta(seconds=seconds_ago),
        enqueued_at=timezone.now() - timedelta(seconds=seconds_ago),
    )
    job = OrmQ.objects.get(pk=row(run, node).handoff_id)
    if not in_broker:
        job.delete()  # it ran and failed before it could claim (the database was down, say)
    elif taken:
        # django-q2 marks a taken row with a lock of "taken at + retry".
        taken_at = timezone.now() - timedelta(seconds=seconds_ago if taken_seconds_ago is None else taken_seconds_ago)
        OrmQ.objects.filter(pk=job.pk).update(lock=taken_at + timedelta(seconds=Conf.RETRY))
    return row(run, node)


def run_the_queue(django_capture_on_commit_callbacks):
    """What a worker would do with every job in the broker, one by one."""
    ran = 0
    while job := OrmQ.objects.order_by("pk").first():
        job.delete()
        with django_capture_on_commit_callbacks(execute=True):
            tasks.task_job(*job.args())
        ran += 1
    return ran


def test_a_hand_off_whose_job_is_gone_from_the_broker_is_sent_again(
    settings, trail_form, add_mark, start, django_capture_on_commit_callbacks
):
    settings.EVENTS_HANDOFF_CHECK_SECONDS = 10
    background = add_node(trail_form, "background", name="bg")
    add_mark("B", parent=background)
    run = start()
    lost = handed_off(run, background, seconds_ago=30)
    assert not OrmQ.objects.exists()

    assert sweep()["handoff_lost_requeued"] == 1

    task = row(run, background)
    [job] = OrmQ.objects.all()
    assert task.handoff_id == job.pk and job.args() == (str(task.pk),)
    assert task.enqueued_at > lost.enqueued_at
    assert task.due_at == lost.due_at  # a container keeps its due time
    assert run_the_queue(django_capture_on_commit_callbacks) == 1
    run.refresh_from_db()
    assert run.status == Run.Status.COMPLETE
    assert trail(run) == "B"


def test_a_lost_hand_off_of_a_step_is_sent_again_as_it_was(
    settings, add_mark, start, django_capture_on_commit_callbacks
):
    settings.EVENTS_HANDOFF_CHECK_SECONDS = 10
    a = add_mark("A")
    add_mark("B")
    run = start()
    RunTask.objects.filter(pk=row(run, a).pk).update(enqueued_at=timezone.now() - timedelta(seconds=300), due_at=None)

    assert sweep()["handoff_lost_requeued"] == 1

    assert row(run, a).due_at is None  # still "walk on from here", not a retry
    assert run_the_queue(django_capture_on_commit_callbacks) == 1
    run.refresh_from_db()
    assert (run.status, trail(run)) == (Run.Status.COMPLETE, "AB")


def test_a_hand_off_still_waiting_in_the_broker_is_never_sent_again(settings, trail_form, add_mark, start):
    settings.EVENTS_REQUEUE_AFTER_SECONDS = 120
    background = add_node(trail_form, "background", name="bg")
    add_mark("B", parent=background)
    run = start()
    sent = handed_off(run, background, seconds_ago=3600, in_broker=True)  # a long backlog

    assert sweep() == NOTHING

    assert row(run, background).enqueued_at == sent.enqueued_at
    assert OrmQ.objects.count() == 1


def test_a_hand_off_a_worker_took_but_never_started_is_sent_again_after_the_requeue_time(
    settings, trail_form, add_mark, start
):
    settings.EVENTS_REQUEUE_AFTER_SECONDS = 120
    background = add_node(trail_form, "background", name="bg")
    add_mark("B", parent=background)
    recent, old = start(), start()
    handed_off(recent, background, seconds_ago=60, in_broker=True, taken=True)
    handed_off(old, background, seconds_ago=300, in_broker=True, taken=True)

    assert sweep()["handoff_lost_requeued"] == 1

    assert OrmQ.objects.filter(pk=row(old, background).handoff_id).exists()
    assert OrmQ.objects.count() == 3


def test_a_job_that_waited_long_in_the_broker_and_was_just_taken_is_not_sent_again(
    settings, trail_form, add_mark, start
):
    settings.EVENTS_REQUEUE_AFTER_SECONDS = 30
    background = add_node(trail_form, "background", name="bg")
    add_mark("B", parent=background)
    run = start()
    handed_off(run, background, seconds_ago=600, in_broker=True, taken=True, taken_seconds_ago=1)  # a backlog

    assert sweep() == NOTHING
    assert OrmQ.objects.count() == 1


def test_a_recent_hand_off_is_left_alone(settings, trail_form, add_mark, start):
    settings.EVENTS_HANDOFF_CHECK_SECONDS = 10
    background = add_node(trail_form, "background", name="bg")
    add_mark("B", parent=background)
    run = start()
    sent = handed_off(run, background, seconds_ago=2)

    assert sweep() == NOTHING

    assert row(run, background).enqueued_at == sent.enqueued_at
    run.refresh_from_db()
    assert run.status == Run.Status.RUNNING


# Stalled runs -----------------------------------------------------------------------------------


def stalled_since(run, seconds):
    Run.objects.filter(pk=run.pk).update(created_at=timezone.now() - timedelta(seconds=seconds))


def test_a_run_whose_inline_phase_never_ran_is_resumed_from_its_first_step(
    settings, trail_form, add_mark, start, sweep_now
):
    settings.EVENTS_REQUEUE_AFTER_SECONDS = 120
    a = add_mark("A")
    background = add_node(trail_form, "background", name="bg")
    add_mark("B", parent=background)
    add_mark("D")
    run = start()  # committed; the request died before run_inline
    stalled_since(run, 300)

    # The sweep hands the run to a worker (here, the sync queue), which walks on from A.
    assert sweep_now()["run_stalled_resumed"] == 1

    run.refresh_from_db()
    assert run.status == Run.Status.COMPLETE
    assert trail(run) == "ADB"
    assert row(run, a).attempt == 1


def test_a_recent_run_that_has_not_started_yet_is_left_alone(settings, add_mark, start):
    settings.EVENTS_REQUEUE_AFTER_SECONDS = 120
    a = add_mark("A")
    run = start()
    stalled_since(run, 30)

    assert sweep() == NOTHING

    assert row(run, a).due_at is None


def test_a_run_waiting_for_a_callback_or_a_delay_is_not_stalled(settings, trail_form, add_mark, start):
    settings.EVENTS_REQUEUE_AFTER_SECONDS = 120
    waiting_step = add_mark("A")
    delay = add_node(trail_form, "delay", name="later", config={"after_seconds": 600})
    add_mark("B", parent=delay)
    waiting, delayed = start(), start()
    RunTask.objects.filter(pk=row(waiting, waiting_step).pk).update(
        status=RunTask.Status.AWAITING, deadline_at=timezone.now() + timedelta(hours=1)
    )
    RunTask.objects.filter(pk=row(delayed, waiting_step).pk).update(status=RunTask.Status.COMPLETE)
    RunTask.objects.filter(pk=row(delayed, delay).pk).update(due_at=timezone.now() + timedelta(seconds=600))
    stalled_since(waiting, 300)
    stalled_since(delayed, 300)

    assert sweep() == NOTHING


# Finished runs and deadlines --------------------------------------------------------------------


def test_a_running_run_whose_tasks_are_all_terminal_is_finished(add_mark, start):
    add_mark("A")
    add_mark("D")
    run = start()
    run.tasks.update(status=RunTask.Status.COMPLETE, finished_at=timezone.now())

    assert sweep()["run_finished"] == 1

    run.refresh_from_db()
    assert run.status == Run.Status.COMPLETE
    assert run.finished_at is not None
    run.record.refresh_from_db()
    assert run.record.is_complete


def test_an_awaiting_task_past_its_deadline_fails_and_fails_the_run(add_mark, start, sweep_now):
    a = add_mark("A")
    run = start()
    RunTask.objects.filter(pk=row(run, a).pk).update(
        status=RunTask.Status.AWAITING, deadline_at=timezone.now() - timedelta(seconds=1)
    )

    assert sweep_now()["deadline_expired"] == 1

    task = row(run, a)
    assert task.status == RunTask.Status.FAILED
    assert task.failure == RunTask.Failure.TIMEOUT
    run.refresh_from_db()
    assert run.status == Run.Status.FAILED
    assert "timed out" in run.error


def test_an_awaiting_task_before_its_deadline_is_left_alone(add_mark, start):
    a = add_mark("A")
    run = start()
    RunTask.objects.filter(pk=row(run, a).pk).update(
        status=RunTask.Status.AWAITING, deadline_at=timezone.now() + timedelta(minutes=5)
    )

    assert sweep() == NOTHING

    assert row(run, a).status == RunTask.Status.AWAITING


# Counting ---------------------------------------------------------------------------------------


@pytest.fixture
def one_of_each(settings, trail_form, add_mark, start):
    """Six runs and a replay, each needing one kind of repair."""
    settings.EVENTS_LEASE_RETRY_LIMIT = 2
    settings.EVENTS_REQUEUE_AFTER_SECONDS = 120
    a = add_mark("A")
    background = add_node(trail_form, "background", name="bg")
    add_mark("B", parent=background)

    retried, failed, lost, stalled, finished, late = (start() for _ in range(6))
    held_by_a_dead_worker(retried, a)
    held_by_a_dead_worker(failed, a, attempt=2)
    RunTask.objects.filter(pk=row(lost, a).pk).update(status=RunTask.Status.COMPLETE)
    handed_off(lost, background, seconds_ago=300)
    stalled_since(stalled, 300)
    finished.tasks.update(status=RunTask.Status.COMPLETE)
    RunTask.objects.filter(pk=row(late, a).pk).update(
        status=RunTask.Status.AWAITING, deadline_at=timezone.now() - timedelta(seconds=1)
    )
    # And a replay whose worker died holding it (no run: replays are test runs, nothing is kept).
    Replay.objects.create(
        form=trail_form,
        baseline_label="version 1",
        candidate_label="draft",
        status=Replay.Status.RUNNING,
        claimed_until=timezone.now() - timedelta(seconds=1),
    )
    return {"retried": retried, "failed": failed, "lost": lost, "stalled": stalled, "finished": finished, "late": late}


def test_each_kind_of_repair_is_counted_in_the_repair_table(one_of_each, sweep_now):
    before = timezone.now()

    result = sweep_now()

    assert result == dict.fromkeys(NOTHING, 1)
    assert repairs() == dict.fromkeys(NOTHING, 1)
    assert all(r.last_at >= before for r in Repair.objects.all())
    statuses = {name: Run.objects.get(pk=run.pk).status for name, run in one_of_each.items()}
    assert statuses == {
        "retried": Run.Status.RUNNING,
        "failed": Run.Status.FAILED,
        "lost": Run.Status.COMPLETE,
        "stalled": Run.Status.COMPLETE,
        "finished": Run.Status.COMPLETE,
        "late": Run.Status.FAILED,
    }


def test_two_sweeps_repair_each_thing_once_and_counts_are_not_doubled(one_of_each, sweep_now):
    now = timezone.now()

    first = sweep_now(now)
    second = sweep_now(now)

    assert first == dict.fromkeys(NOTHING, 1)
    assert second == NOTHING
    assert repairs() == dict.fromkeys(NOTHING, 1)


def test_counts_add_up_across_sweeps(add_mark, start):
    a = add_mark("A")
    for _ in range(2):
        run = start()
        held_by_a_dead_worker(run, a)
        sweep()

    assert repairs() == {"lease_expired_retried": 2}


def test_a_sweep_with_nothing_to_do_records_nothing(db):
    assert sweep() == NOTHING
    assert not Repair.objects.exists()


# A resumed step that is not a plain action ----------------------------------------------------
# Each is walked as a walk would: a delay computes its due time, a condition is tested.

NEVER = {"match": "all", "rules": [{"field": "email", "operator": "equals", "value": "nobody@example.com"}]}


def test_a_stalled_run_that_starts_with_a_background_completes_its_later_steps_too(
    settings, trail_form, add_mark, start, sweep_now
):
    settings.EVENTS_REQUEUE_AFTER_SECONDS = 120
    background = add_node(trail_form, "background", name="bg")
    add_mark("B", parent=background)
    add_mark("D")
    run = start()  # committed, its leading background handed off with it; the request died there
    stalled_since(run, 300)
    # ... and the background's job was lost too.
    RunTask.objects.filter(pk=row(run, background).pk).update(enqueued_at=timezone.now() - timedelta(seconds=300))

    assert sweep_now()["handoff_lost_requeued"] == 1  # the background runs (B) ...
    assert sweep_now()["run_stalled_resumed"] == 1  # ... and the next pass walks on from D
    run.refresh_from_db()
    assert run.status == Run.Status.COMPLETE
    assert sorted(trail(run)) == ["B", "D"]


def test_a_stalled_run_that_starts_with_a_delay_does_not_fire_the_delay_early(
    settings, trail_form, add_mark, start, sweep_now, dispatch
):
    settings.EVENTS_REQUEUE_AFTER_SECONDS = 120
    delay = add_node(trail_form, "delay", name="later", config={"after_seconds": 600})
    add_mark("B", parent=delay)
    run = start()
    stalled_since(run, 300)

    sweep_now()
    dispatch()

    assert trail(run) == ""
    assert row(run, delay).due_at > timezone.now() + timedelta(seconds=500)


def test_a_stalled_run_that_starts_with_a_false_condition_skips_its_steps(
    settings, trail_form, add_mark, start, sweep_now
):
    settings.EVENTS_REQUEUE_AFTER_SECONDS = 120
    condition = add_node(trail_form, "condition", name="cond", config=NEVER)
    add_mark("B", parent=condition)
    add_mark("D")
    run = start()
    stalled_since(run, 300)

    sweep_now()

    assert trail(run) == "D"


def test_a_false_condition_whose_worker_died_skips_its_steps_when_re_run(trail_form, add_mark, start, dispatch):
    condition = add_node(trail_form, "condition", name="cond", config=NEVER)
    add_mark("B", parent=condition)
    add_mark("D")
    run = start()
    held_by_a_dead_worker(run, condition)

    sweep()
    dispatch()

    assert trail(run) == "D"


def test_the_heartbeat_renews_the_leases_its_process_holds_and_no_others(settings, add_mark, start):
    settings.EVENTS_TASK_LEASE_SECONDS = 60
    a, b = add_mark("A"), add_mark("B")
    run = start()
    soon = timezone.now() + timedelta(seconds=5)
    RunTask.objects.filter(pk=row(run, a).pk).update(
        status=RunTask.Status.ACTIVE, lease_expires_at=soon, lease_owner=lease_owner()
    )
    RunTask.objects.filter(pk=row(run, b).pk).update(
        status=RunTask.Status.ACTIVE, lease_expires_at=soon, lease_owner="elsewhere:1:x/2"
    )

    assert queue.leases_renew(owner=lease_owner()) == 1

    assert row(run, a).lease_expires_at > timezone.now() + timedelta(seconds=55)
    assert row(run, b).lease_expires_at == soon

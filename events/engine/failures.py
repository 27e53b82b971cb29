"""Failures and retries: what follows a failed step, decided in the transaction that records it."""

import uuid
from datetime import datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Max, QuerySet

from .. import effects, queue
from ..models import Run, RunTask, record_model
from .runs import Outcome, failure_message, run_fail, steps_count, tasks_for
from .snapshot import snapshot_node, subtree_node_ids


def failure_consequence(*, run, task, node, hand_off=False):
    """Decide what follows a failure, inside the transaction that records it. True if an error branch handles it.

    A failed container's own steps will never run: they are cancelled, so that
    a handled failure still lets the run complete. With an error branch, its
    tasks are created (pending) now; with ``hand_off`` (a failure outside any
    walk: a callback, a deadline, a worker lost for good) its first step is
    handed to the queue in the same transaction. Without one, the run fails.
    """
    if node.get("children"):
        run.tasks.filter(node_id__in=subtree_node_ids(node["children"]), status=RunTask.Status.PENDING).update(
            status=RunTask.Status.CANCELLED, finished_at=effects.now()
        )
    if not node.get("on_error"):
        run_fail(run=run, error=failure_message(task))
        return False
    first = error_branch_open(run=run, task=task, node=node)
    if hand_off:
        queue.task_enqueue(task_id=first.pk)
    return True


def error_branch_open(*, run, task, node):
    """Create the error branch's tasks, once. Returns the task of the branch's first step."""
    first_node_id = node["on_error"][0]["id"]
    first = run.tasks.filter(node_id=first_node_id).first()
    if first is not None:
        return first
    # After every task's position, and after those kept for the steps of containers not started yet.
    start = max((run.tasks.aggregate(last=Max("position"))["last"] or 0) + 1, steps_count(run.snapshot))
    branch = tasks_for(
        run, node["on_error"], parent_id=task.pk, branch="on_error", debug=task.collect_debug, position=start
    )
    try:
        with transaction.atomic():
            RunTask.objects.bulk_create(branch)
    except IntegrityError:
        return run.tasks.get(node_id=first_node_id)  # opened by someone else just now
    RunTask.objects.filter(pk=task.pk).update(
        logs=RunTask.capped_logs(task.logs, [RunTask.log_line("the error branch handles this failure")])
    )
    return branch[0]


def task_retry_later(*, task, policy, error, logs=(), debug=None):
    """Put a failed attempt back to pending, due after the policy's backoff."""
    due = effects.now() + timedelta(seconds=policy.next_delay(task.attempt))
    next_at = due.isoformat(timespec="seconds")
    line = f"attempt {task.attempt} of {task.max_attempts} failed: {error}; next attempt at {next_at}"
    changes = {
        "status": RunTask.Status.PENDING,
        "due_at": due,
        "enqueued_at": None,
        "lease_expires_at": None,
        "error": error,
        "logs": RunTask.capped_logs(task.logs, [*logs, RunTask.log_line(line)]),
    }
    if debug is not None:
        changes["debug"] = task.debug + [debug]
    RunTask.objects.filter(pk=task.pk, status=RunTask.Status.ACTIVE).update(**changes)
    return Outcome.SUSPENDED


def task_redrive(*, task_id: uuid.UUID | str) -> bool:
    """Re-run a failed task (an admin's "retry"): the run goes on from that step; the failure stays on record.

    The run and what its failure cancelled come back: the task is pending again
    (one more attempt), the containers around it wait for it again, and the
    tasks cancelled by the failure are pending again. Returns False when the
    task is not failed or its run has moved on.
    """
    now = effects.now()
    with transaction.atomic():
        task = RunTask.objects.select_for_update().select_related("run").get(pk=task_id)
        run = task.run
        if task.status != RunTask.Status.FAILED or run.status not in (Run.Status.FAILED, Run.Status.RUNNING):
            return False
        ancestors, parent_id = [], task.parent_id
        while parent_id:
            parent = RunTask.objects.get(pk=parent_id)
            ancestors.append(parent.pk)
            parent_id = parent.parent_id
        if run.status == Run.Status.FAILED:
            cancelled_by_failure = run.tasks.filter(status=RunTask.Status.CANCELLED, finished_at__gte=run.finished_at)
            cancelled_by_failure.exclude(pk__in=ancestors).update(
                status=RunTask.Status.PENDING, finished_at=None, enqueued_at=None
            )
            Run.objects.filter(pk=run.pk).update(status=Run.Status.RUNNING, error="", finished_at=None)
            if run.is_submission:
                record_model().objects.filter(pk=run.record_id).update(is_complete=False)
        RunTask.objects.filter(pk__in=ancestors, is_container=True).exclude(status=RunTask.Status.COMPLETE).update(
            status=RunTask.Status.ACTIVE, finished_at=None, lease_expires_at=None, error=""
        )
        RunTask.objects.filter(pk=task.pk).update(
            status=RunTask.Status.PENDING,
            due_at=now,
            enqueued_at=None,
            finished_at=None,
            attempt=F("attempt") if task.attempt else 1,
            max_attempts=max(task.attempt, 1) + 1,
            logs=RunTask.capped_logs(
                task.logs, [RunTask.log_line("re-run by an admin; the failure above stays on record")]
            ),
        )
        queue.container_enqueue(task_id=task.pk)
    return True


def leases_release(*, tasks: QuerySet[RunTask], reason: str, now: datetime | None = None) -> tuple[int, int]:
    """Put back steps whose worker no longer holds them: pending again (bounded), or failed past the bound.

    ``tasks``: active tasks whose lease ran out (the sweep), or whose holder is
    gone (a stopped worker, a job that lost the database). A step inside a
    container that is itself put back waits for that container's walk; any
    other step is due now and runs again on its own, then its sequence goes on.
    Past max(its attempts, EVENTS_LEASE_RETRY_LIMIT) it fails, and the failure's
    consequence commits with it. Returns (put back, failed).
    """
    now = now or effects.now()
    retried = failed = 0
    held = list(tasks.filter(status=RunTask.Status.ACTIVE, lease_expires_at__isnull=False).select_related("run")[:200])
    held_ids = {task.pk for task in held}
    for task in held:
        limit = max(task.max_attempts, settings.EVENTS_LEASE_RETRY_LIMIT)
        still = RunTask.objects.filter(pk=task.pk, status=RunTask.Status.ACTIVE, lease_expires_at=task.lease_expires_at)
        if task.attempt >= limit:
            error = f"Its worker stopped while running it ({reason}), {task.attempt} times; given up."
            with transaction.atomic():
                if still.update(
                    status=RunTask.Status.FAILED,
                    finished_at=now,
                    lease_expires_at=None,
                    error=error,
                    failure=RunTask.Failure.RAISED,
                    logs=RunTask.capped_logs(task.logs, [RunTask.log_line(error)]),
                ):
                    failed += 1
                    task.status, task.error, task.failure = RunTask.Status.FAILED, error, RunTask.Failure.RAISED
                    failure_consequence(
                        run=task.run,
                        task=task,
                        hand_off=True,
                        node=snapshot_node(task.run.snapshot, task.node_id) or {},
                    )
            continue
        walked_by_parent = task.parent_id in held_ids and task.branch == "main"
        if still.update(
            status=RunTask.Status.PENDING,
            lease_expires_at=None,
            lease_owner="",
            enqueued_at=None,
            due_at=None if walked_by_parent else now,
            logs=RunTask.capped_logs(task.logs, [RunTask.log_line(f"{reason}: it will run again")]),
        ):
            retried += 1
    return retried, failed

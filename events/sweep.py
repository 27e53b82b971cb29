"""The sweep: find work the queue lost and hand it back; finish what is finished.

Runs inside every ``manage.py worker`` every EVENTS_SWEEP_INTERVAL seconds.
Every repair is a compare-and-set update, so many workers may sweep at once:
for each piece of work, one of them wins and the others find nothing to do.
Each repair is counted in the Repair table (``manage.py events_health`` prints them).
"""

import logging
from datetime import timedelta

from django.conf import settings
from django.db.models import Exists, OuterRef
from django.utils import timezone

from . import engine, tasks
from .models import Repair, Run, RunTask

logger = logging.getLogger("events.sweep")
BATCH = 200


def sweep(*, now=None):
    """One pass. Returns {kind: count} of the repairs it made."""
    now = now or timezone.now()
    repairs = {
        "lease_expired_retried": 0,
        "lease_expired_failed": 0,
        "handoff_lost_requeued": 0,
        "run_stalled_resumed": 0,
        "deadline_expired": engine.awaiting_expire(now=now),
        "run_finished": 0,
    }
    repairs["lease_expired_retried"], repairs["lease_expired_failed"] = _expired_leases(now)
    repairs["handoff_lost_requeued"] = _lost_handoffs(now)
    repairs["run_stalled_resumed"] = _stalled_runs(now)
    repairs["run_finished"] = _finished_runs()
    for kind, count in repairs.items():
        if count:
            Repair.record(kind, count)
            logger.warning("sweep: %s × %s", kind, count)
    return repairs


def _expired_leases(now):
    """Tasks whose worker died holding them: back to pending (bounded), or failed past the bound.

    A step inside a container that is itself being re-run waits for that
    container's walk; any other step is re-run on its own, then its sequence
    goes on.
    """
    retried = failed = 0
    expired = list(RunTask.objects.filter(status=RunTask.Status.ACTIVE, lease_expires_at__lt=now)
                   .select_related("run")[:BATCH])
    expired_ids = {task.pk for task in expired}
    for task in expired:
        limit = max(task.max_attempts, settings.EVENTS_LEASE_RETRY_LIMIT)
        still = RunTask.objects.filter(pk=task.pk, status=RunTask.Status.ACTIVE, lease_expires_at=task.lease_expires_at)
        if task.attempt >= limit:
            error = f"Its worker stopped while running it, {task.attempt} times (lease expired); given up."
            if still.update(status=RunTask.Status.FAILED, finished_at=now, lease_expires_at=None, error=error,
                            failure=RunTask.Failure.RAISED,
                            logs=task.logs + [RunTask.log_line(f"lease expired: {error}")]):
                failed += 1
                engine.failed_outside_a_walk(task)
            continue
        walked_by_parent = task.parent_id in expired_ids and task.branch == "main"
        if still.update(status=RunTask.Status.PENDING, lease_expires_at=None, enqueued_at=None,
                        due_at=None if walked_by_parent else now,
                        logs=task.logs + [RunTask.log_line("its worker stopped (lease expired): it will run again")]):
            retried += 1
    return retried, failed


def _lost_handoffs(now):
    """Handed to the queue long ago and still pending: the message was lost. Send it again.

    A container is sent again as soon as its hand-off mark is cleared; an
    action (a retry, or a repaired step) also needs its due time.
    """
    cutoff = now - timedelta(seconds=settings.EVENTS_REQUEUE_AFTER_SECONDS)
    lost = RunTask.objects.filter(status=RunTask.Status.PENDING, enqueued_at__lt=cutoff)
    requeued = 0
    for task_id, enqueued_at, is_container in lost.values_list("pk", "enqueued_at", "is_container")[:BATCH]:
        changes = {"enqueued_at": None} if is_container else {"enqueued_at": None, "due_at": now}
        requeued += RunTask.objects.filter(
            pk=task_id, status=RunTask.Status.PENDING, enqueued_at=enqueued_at
        ).update(**changes)
    return requeued


def _stalled_runs(now):
    """Runs whose request died between its commit and its inline phase: nothing holds, waits or is due.

    A worker walks on from the first pending top-level step, as the request would have.
    """
    cutoff = now - timedelta(seconds=settings.EVENTS_REQUEUE_AFTER_SECONDS)
    moving = RunTask.objects.filter(run=OuterRef("pk")).filter(
        status__in=[RunTask.Status.ACTIVE, RunTask.Status.AWAITING]
    )
    scheduled = RunTask.objects.filter(run=OuterRef("pk"), status=RunTask.Status.PENDING).exclude(
        due_at__isnull=True, enqueued_at__isnull=True
    )
    stalled = Run.objects.running().filter(created_at__lt=cutoff).exclude(Exists(moving)).exclude(Exists(scheduled))
    resumed = 0
    for run in stalled[:BATCH]:
        first = run.tasks.filter(status=RunTask.Status.PENDING, parent__isnull=True, branch="main").order_by("position").first()
        if first is not None:
            resumed += tasks.walk_from_enqueue(task_id=first.pk)
    return resumed


def _finished_runs():
    """Runs still marked running although every task is terminal (a finisher died in between)."""
    unfinished = RunTask.objects.filter(run=OuterRef("pk")).exclude(status__in=RunTask.TERMINAL)
    finished = 0
    for run in Run.objects.running().exclude(Exists(unfinished))[:BATCH]:
        finished += engine.run_finish_if_done(run=run)
    return finished

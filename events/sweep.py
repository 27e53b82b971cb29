"""The sweep: find work the queue lost and hand it back; finish what is finished.

Runs inside every ``manage.py worker`` every EVENTS_SWEEP_INTERVAL seconds.
Every repair is a compare-and-set update, so many workers may sweep at once:
for each piece of work, one of them wins and the others find nothing to do.
Each repair is counted in the Repair table (``manage.py events_health`` prints them).
"""

import logging
from datetime import timedelta

from django.conf import settings
from django.db.models import Exists, OuterRef, Q
from django.utils import timezone

from . import engine, queue
from .models import Repair, Run, RunTask
from .testrun.replay import replays_resume

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
    repairs["lease_expired_retried"], repairs["lease_expired_failed"] = engine.leases_release(
        tasks=RunTask.objects.filter(lease_expires_at__lt=now), reason="its worker stopped (lease expired)", now=now
    )
    repairs["handoff_lost_requeued"] = _lost_handoffs(now)
    repairs["run_stalled_resumed"] = _stalled_runs(now)
    repairs["run_finished"] = _finished_runs()
    repairs["replay_resumed"] = replays_resume(now=now)
    record_repairs(repairs)
    return repairs


def record_repairs(repairs):
    for kind, count in repairs.items():
        if count:
            Repair.record(kind, count)
            logger.warning("sweep: %s × %s", kind, count)


def _lost_handoffs(now):
    """Handed to the queue and still pending, but the queue no longer has the job: send it again.

    The broker row of each hand-off is looked up first. A job still waiting in
    the broker is left alone however long the backlog; one whose row is gone
    (it ran and failed before it could claim, say while the database was down)
    is sent again after EVENTS_HANDOFF_CHECK_SECONDS; one a worker took but did not
    start EVENTS_REQUEUE_AFTER_SECONDS after taking it (its worker died holding it)
    is sent again.
    """
    check = now - timedelta(seconds=settings.EVENTS_HANDOFF_CHECK_SECONDS)
    taken_cutoff = now - timedelta(seconds=settings.EVENTS_REQUEUE_AFTER_SECONDS)
    candidates = list(
        RunTask.objects.filter(status=RunTask.Status.PENDING, enqueued_at__lt=check)
        .order_by("enqueued_at")
        .values_list("pk", "enqueued_at", "handoff_id")[:BATCH]
    )
    in_broker = queue.handoffs_in_broker([handoff_id for _, _, handoff_id in candidates], now=now)
    requeued = 0
    for task_id, enqueued_at, handoff_id in candidates:
        state, taken_at = in_broker.get(handoff_id, (None, None))
        if state == "ready" or (state == "taken" and taken_at >= taken_cutoff):
            continue  # waiting in the broker, or taken by a worker only a moment ago
        requeued += queue.task_resend(task_id=task_id, enqueued_at=enqueued_at)
    return requeued


def _stalled_runs(now):
    """Runs that nothing moves on: no step runs (with a lease), waits for a callback, or is handed off or due.

    Say the request died between its commit and its inline phase, or a worker
    between two steps. The engine decides how each goes on (``run_repair``):
    never past a failure nothing handled.
    """
    cutoff = now - timedelta(seconds=settings.EVENTS_REQUEUE_AFTER_SECONDS)
    moving = RunTask.objects.filter(run=OuterRef("pk")).filter(
        Q(status=RunTask.Status.AWAITING) | Q(status=RunTask.Status.ACTIVE, lease_expires_at__isnull=False)
    )
    scheduled = RunTask.objects.filter(run=OuterRef("pk"), status=RunTask.Status.PENDING).exclude(
        due_at__isnull=True, enqueued_at__isnull=True
    )
    stalled = Run.objects.running().filter(created_at__lt=cutoff).exclude(Exists(moving)).exclude(Exists(scheduled))
    resumed = 0
    for run in stalled[:BATCH]:
        resumed += engine.run_repair(run=run) != "nothing"
    return resumed


def _finished_runs():
    """Runs still marked running although every task is terminal (a finisher died in between)."""
    unfinished = RunTask.objects.filter(run=OuterRef("pk")).exclude(status__in=RunTask.TERMINAL)
    finished = 0
    for run in Run.objects.running().exclude(Exists(unfinished))[:BATCH]:
        finished += engine.run_finish_if_done(run=run, check_failures=True)
    return finished

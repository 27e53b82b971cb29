"""The queue boundary: the only package that imports django_q (this module and ``cluster.py``).

What of django-q2 we rely on beyond ``async_task``, and why (check these when upgrading it):

- the database broker's table ``OrmQ`` and ``get_broker().enqueue``: a hand-off inserts its row in
  the caller's transaction (inside an atomic block the broker keeps our connection) and keeps its id;
  a submit's rows are written by ``hotsql.insert`` with the key the database broker gives its queue,
  ``Conf.CLUSTER_NAME``, without building a broker (outside an atomic block it checks the connection);
- ``SignedPackage`` and the package's keys (id, name, func, args, kwargs, started, ack_failure):
  our rows must be what its pusher unpacks;
- a taken row's ``lock`` is "taken at + Conf.RETRY": the sweep reads when a worker took a job;
- ``Conf.SYNC`` (tests), ``Conf.RETRY``, ``Conf.ACK_FAILURES``;
- in ``cluster.py``: ``Cluster.start`` looks ``Sentinel`` up in its module, ``Cluster.sentinel``
  and ``Cluster.stop_event`` (the worker stops, watches and replaces its cluster).

The engine's jobs carry ids only; what a worker runs is in ``events.tasks``, which
loads each task by id and lets the engine claim it with a compare-and-set, so a
duplicate delivery does nothing. The queue is a doorbell; our RunTask table is
the truth. ``job_send`` sends any other job (the demo's) by dotted path.

A hand-off is written in the caller's transaction: the task's mark
(``enqueued_at``, ``handoff_id``) and django-q2's broker row (the database
broker, ``OrmQ``) commit or roll back together, so a committed hand-off is
never lost before a worker sees it, and a rolled-back one never reaches a
worker. The sweep checks ``handoff_id`` against the broker before it sends a
hand-off again.
"""

import logging
import multiprocessing
import os
import threading
import time
import uuid
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Literal

from django.conf import settings
from django.db import close_old_connections, connection, transaction
from django.utils import timezone
from django_q.brokers import get_broker
from django_q.conf import Conf
from django_q.models import OrmQ, Task
from django_q.signing import SignedPackage
from django_q.tasks import async_task

from .. import effects, hotsql
from ..models import RunTask, lease_owner

logger = logging.getLogger("events.tasks")

TASK_JOB = "events.tasks.task_job"  # the one job entry (events/tasks.py)


# --- Sending -------------------------------------------------------------------------------


def task_enqueue(*, task_id: uuid.UUID | str, due_at: datetime | None = None, only_unsent: bool = True) -> bool:
    """Hand a pending task to the queue, as part of the current transaction (one is opened if none is).

    What the worker does with it depends on the task (``engine.task_job``): a
    deferred container that has a due time runs its children; anything else is
    walked from, with its sequence. ``due_at``, when given, is stored in the same
    update. ``only_unsent``: leave alone a task someone already handed off.
    Returns False when the task is not pending (or was already handed off).
    """
    with transaction.atomic():
        changes = {"enqueued_at": effects.now()}
        if due_at is not None:
            changes["due_at"] = due_at
        pending = RunTask.objects.filter(pk=task_id, status=RunTask.Status.PENDING)
        if only_unsent:
            pending = pending.filter(enqueued_at__isnull=True)
        if Conf.SYNC:  # the job runs on commit: send it only once the mark is ours
            if not pending.update(**changes):
                return False
            _send(TASK_JOB, str(task_id), name=f"task-{task_id}")
            return True
        # The broker row first, so that the mark and its id are one write; a lost race takes the row back.
        changes["handoff_id"] = _send(TASK_JOB, str(task_id), name=f"task-{task_id}")
        if not pending.update(**changes):
            OrmQ.objects.filter(pk=changes["handoff_id"]).delete()
            return False
    return True


def task_jobs_send(*, task_ids: list[uuid.UUID | str]) -> dict[uuid.UUID | str, int | None]:
    """Hand off tasks being created in this transaction: {task id: its broker row's id} for those sent.

    For ``run_start``, which hands off a run's leading containers in the
    transaction that inserts them (their ``enqueued_at`` and ``handoff_id`` go in
    with the rows). The first gets a broker row; the others stay due and unsent,
    and the dispatcher (``dispatch_due``, every EVENTS_DISPATCH_INTERVAL in each
    worker) hands them off at its next pass, as it does a delay that came due: a
    submit writes one broker row, whatever the number of branches it starts. A
    broker row is a signed pickle and an insert, the largest part of a submit's
    cost per branch. In django-q2's sync mode (tests) and a test run's sandbox there is no
    dispatcher: every task is sent.
    """
    if Conf.SYNC:  # each job runs when the transaction commits: there must be one
        hotsql.outside_one_statement(connection, "django-q2's sync mode runs a job on commit")
    if Conf.SYNC or effects.sandbox() is not None:
        return {task_id: _send(TASK_JOB, str(task_id), name=f"task-{task_id}") for task_id in task_ids}
    if not task_ids:
        return {}
    first = task_ids[0]
    (row,) = hotsql.insert(
        [
            hotsql.new(
                OrmQ,
                # The queue get_broker() would name (not built here: in autocommit, as in one_statement, its
                # ORM broker closes the connection if it is old, and then checks it with a round trip).
                key=Conf.CLUSTER_NAME,
                payload=_package(TASK_JOB, str(first), name=f"task-{first}"),
                lock=timezone.now(),
            )
        ],
        connection,
    )
    return {first: row.pk}


def task_resend(*, task_id: uuid.UUID | str, enqueued_at: datetime) -> bool:
    """The sweep: send a hand-off again (compare-and-set on the hand-off it saw). True if sent."""
    with transaction.atomic():
        if not RunTask.objects.filter(pk=task_id, status=RunTask.Status.PENDING, enqueued_at=enqueued_at).update(
            enqueued_at=None
        ):
            return False
        return task_enqueue(task_id=task_id)


# Older names of the one job entry (messages sent by earlier versions may still be queued).
def container_enqueue(*, task_id: uuid.UUID | str, due_at: datetime | None = None) -> bool:
    return task_enqueue(task_id=task_id, due_at=due_at)


def walk_from_enqueue(*, task_id: uuid.UUID | str) -> bool:
    return task_enqueue(task_id=task_id)


def _send(func, *args, name):
    """Put one job in django-q2's database broker, inside the current transaction. Returns its row id.

    In django-q2's sync mode (tests) the job runs in this process once the
    transaction commits, as ``async_task`` would run it; there is no row then.
    In a test run's sandbox (``events.effects``) the sandbox collects the job instead: nothing
    reaches the broker.
    """
    active = effects.sandbox()
    if active is not None:
        active.job_sent(func, args)
        return None
    if Conf.SYNC:
        transaction.on_commit(lambda: async_task(func, *args, task_name=name))
        return None
    # Inside an atomic block django-q2's database broker writes with our
    # connection and leaves it open (outside one, it would close it first).
    return get_broker().enqueue(_package(func, *args, name=name))


def _package(func, *args, name):
    """A job as django-q2's workers read it: signed, with our function's dotted path and the task id."""
    return SignedPackage.dumps(
        {
            "id": uuid.uuid4().hex,
            "name": name,
            "func": func,
            "args": args,
            "kwargs": {},
            "started": timezone.now(),
            "ack_failure": Conf.ACK_FAILURES,
        }
    )


def handoffs_in_broker(
    handoff_ids: Iterable[int | None], *, now: datetime | None = None
) -> dict[int, tuple[Literal["ready", "taken"], datetime | None]]:
    """{row id: ("ready", None) | ("taken", when a worker took it)} for the rows among ``handoff_ids`` that exist.

    django-q2's database broker marks a row taken by setting its lock to the time
    of taking plus ``retry`` seconds (then re-delivers it if it is not
    acknowledged by then); the time of taking is read back from that.
    """
    now = now or timezone.now()
    rows = OrmQ.objects.filter(pk__in=[pk for pk in handoff_ids if pk is not None]).values_list("pk", "lock")
    return {
        pk: ("taken", lock - timedelta(seconds=Conf.RETRY)) if lock and lock > now else ("ready", None)
        for pk, lock in rows
    }


# RunTaskQuerySet.due_for_dispatch as the dispatcher asks it, several times a second: its constant
# conditions written out, for only then can a database use task_due_unsent_idx, whose condition they
# are (a parameter proves nothing to SQLite, nor to PostgreSQL's generic plan of a prepared statement).
# So a backlog of jobs handed off and waiting for a worker costs the question nothing. Oldest due first.
DUE_ID = hotsql.Columns(RunTask, "t", ["id"])
DUE_UNSENT = hotsql.Statement(
    lambda c: (
        f"SELECT {DUE_ID.sql(c)} FROM {hotsql.table(RunTask, c)} t"
        # SQLite's planner, without statistics, would take task_dispatch_idx and read every pending task.
        + (" INDEXED BY task_due_unsent_idx" if c.vendor == "sqlite" else "")
        + f" WHERE t.status = '{RunTask.Status.PENDING}' AND t.enqueued_at IS NULL AND t.due_at <= %s"
        " ORDER BY t.due_at LIMIT %s"
    )
)


def dispatch_due(*, limit: int = 200) -> int:
    """Hand every container or retry whose due time has come to the queue. Returns how many were sent.

    Runs in ``manage.py worker`` several times a second: this, not the broker, is
    what makes a delay fire on time.
    """
    sent = 0
    now = hotsql.db_value(RunTask, "due_at", effects.now(), connection)
    for (task_id,) in (DUE_ID.values(row, connection) for row in DUE_UNSENT.rows(connection, [now, limit])):
        try:
            sent += task_enqueue(task_id=task_id)
        except Exception:
            logger.exception("Could not hand task %s to the queue; will try again", task_id)
    return sent


# --- Worker lifecycle: the stop flag and the lease heartbeat -------------------------------

_stopping = None
_heartbeat = {"pid": None}


def worker_prepare() -> None:
    """In ``manage.py worker``, before its cluster forks: a stop flag every cluster process shares."""
    global _stopping
    _stopping = multiprocessing.get_context("fork").Event()


def worker_stop_claiming() -> None:
    """From now on no step is claimed in this worker's processes; walks hand the rest back."""
    if _stopping is not None:
        _stopping.set()


def worker_stopping() -> bool:
    """This worker was told to stop (never inside a test run: its walk plays every step, in this process)."""
    return _stopping is not None and _stopping.is_set() and effects.sandbox() is None


def heartbeat_start() -> None:
    """In a cluster process: renew the leases this process holds, every third of a lease, until it exits.

    So a single step may run longer than the lease (up to EVENTS_JOB_TIMEOUT)
    without the sweep taking it for abandoned, and the lease can be short: a
    step whose worker was killed is run again within about one lease.
    """
    if _stopping is None or _heartbeat["pid"] == os.getpid():
        return  # not in a worker (the request, tests), or already beating in this process
    _heartbeat["pid"] = os.getpid()
    threading.Thread(target=_heartbeat_loop, args=(lease_owner(),), name="lease-heartbeat", daemon=True).start()


def _heartbeat_loop(owner):
    while True:
        time.sleep(max(0.5, settings.EVENTS_TASK_LEASE_SECONDS / 3))
        try:
            leases_renew(owner=owner)
        except Exception:
            logger.warning("lease heartbeat: the database did not answer; trying again", exc_info=True)
        finally:
            close_old_connections()


def leases_renew(*, owner: str) -> int:
    """One heartbeat: a full lease again for every running step ``owner`` holds. Returns how many."""
    return RunTask.objects.filter(
        status=RunTask.Status.ACTIVE, lease_owner=owner, lease_expires_at__isnull=False
    ).update(lease_expires_at=timezone.now() + timedelta(seconds=settings.EVENTS_TASK_LEASE_SECONDS))


# --- Other jobs, and what the operator's commands read -------------------------------------


def job_send(func: str, *args: object, name: str) -> None:
    """Send one job, ``func(*args)`` by its dotted path, as part of the current transaction.

    For jobs outside the engine (the demo's stand-in service sends its reply this
    way). The job runs in a worker once the transaction commits, and never if it
    rolls back; one transaction is opened if none is. ``args`` are pickled into
    the broker row: pass only what the job needs, as plain values. A job may be
    delivered twice (django-q2 re-delivers after ``retry``): make it idempotent.
    """
    with transaction.atomic():
        _send(func, *args, name=name)


def queue_stats(*, now: datetime | None = None) -> dict[str, float]:
    """What the broker holds: jobs ready to run, and how long the oldest ready one has waited (seconds)."""
    now = now or timezone.now()
    ready = OrmQ.objects.filter(lock__lt=now)
    oldest = ready.order_by("lock").values_list("lock", flat=True).first()
    return {
        "ready": ready.count(),
        "taken": OrmQ.objects.filter(lock__gte=now).count(),
        "oldest_ready_age": (now - oldest).total_seconds() if oldest else 0.0,
    }


def prune_queue_results(*, before: datetime) -> int:
    """Delete django-q2's stored results older than ``before`` (we keep our own in RunTask)."""
    deleted, _ = Task.objects.filter(stopped__lt=before).delete()
    return deleted

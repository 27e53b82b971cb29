"""The queue's entry points: what a django-q2 worker runs, by dotted path, with a task id.

Each loads its task by id and hands it to the engine; the engine claims it with
a compare-and-set, so a duplicate or stray delivery does nothing. Sending lives
in ``events.queue``.
"""

import logging
import time

from django.conf import settings
from django.db import DatabaseError, InterfaceError, OperationalError, connection

from . import engine
from .models import RunTask, lease_owner
from .queue import heartbeat_start, task_enqueue, worker_stopping

logger = logging.getLogger("events.tasks")


def task_job(task_id):
    """Queue entrypoint: run one container's children, or walk a sequence on from one step."""
    return _job(engine.task_job, task_id)


def container_job(task_id):
    return task_job(task_id)


def walk_from_job(task_id):
    return task_job(task_id)


def resume_job(task_id):
    """Queue entrypoint of earlier versions: walk on after a completed waiting step."""
    return _job(engine.sequence_resume, task_id)


def error_branch_job(task_id):
    """Queue entrypoint of earlier versions: a failed task's error branch, then the rest of its sequence."""
    return _job(engine.error_branch_job, task_id)


def _job(entry, task_id):
    """Run one job in a worker: hand it back if the worker is stopping; survive the database going away.

    A job that loses the database mid-way waits for it to answer again (within
    EVENTS_DATABASE_WAIT_SECONDS), puts back what this process held (its leases)
    and sends its hand-off again, so the work resumes as soon as the database
    is back instead of after a lease or re-queue timeout.
    """
    if worker_stopping():
        return "handed back" if task_enqueue(task_id=task_id, only_unsent=False) else "stopping"
    heartbeat_start()
    try:
        return entry(task_id=task_id).value
    except (OperationalError, InterfaceError) as exc:
        logger.warning("Job for task %s lost the database (%s); waiting for it to come back", task_id, exc)
        database_wait(deadline=time.monotonic() + settings.EVENTS_DATABASE_WAIT_SECONDS)
        engine.leases_release(
            tasks=RunTask.objects.filter(lease_owner=lease_owner()), reason="its worker lost the database"
        )
        task_enqueue(task_id=task_id, only_unsent=False)
        return "database lost; handed back"


def database_wait(*, deadline):
    """Block until the database answers or ``deadline`` (time.monotonic) passes, then raise its error."""
    pause = 0.2
    while True:
        try:
            connection.close()
            connection.ensure_connection()
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
            return
        except DatabaseError:
            if time.monotonic() + pause > deadline:
                raise
            time.sleep(pause)
            pause = min(pause * 2, 2.0)


def replay_job(replay_id):
    """Queue entrypoint: the next slice of a replay (events.testrun.replay)."""
    from .testrun.replay import replay_send, replay_work

    if worker_stopping():
        replay_send(replay_id)  # for the next worker: this one's acknowledgement would lose the job
        return "handed back"
    return replay_work(replay_id)

"""The queue boundary: the only module that imports django_q.

Jobs carry ids only. Every entrypoint loads its task by id and lets the
engine claim it with a compare-and-set, so a duplicate delivery does nothing.
The queue is a doorbell; our RunTask table is the truth.
"""

import logging

from django.db import transaction
from django.utils import timezone
from django_q.models import OrmQ, Task
from django_q.tasks import async_task

from .models import RunTask

logger = logging.getLogger("events.tasks")


def container_enqueue(*, task_id, due_at=None):
    """Mark a due container as handed off and ring the queue once the current transaction commits.

    ``due_at``, when given, is stored in the same update. Returns False when
    someone else already handed it off.
    """
    changes = {"enqueued_at": timezone.now()}
    if due_at is not None:
        changes["due_at"] = due_at
    marked = RunTask.objects.filter(pk=task_id, status=RunTask.Status.PENDING, enqueued_at__isnull=True).update(
        **changes
    )
    if marked:
        transaction.on_commit(lambda: _send(task_id))
    return bool(marked)


def _send(task_id):
    try:
        async_task("events.tasks.container_job", str(task_id), task_name=f"container-{task_id}")
    except Exception:
        # Un-mark so that the dispatcher tries again, then let the caller decide.
        RunTask.objects.filter(pk=task_id, status=RunTask.Status.PENDING).update(enqueued_at=None)
        raise


def container_job(task_id):
    """Queue entrypoint: run one container's children, or the next attempt of a retried action."""
    from . import engine

    outcome = engine.container_execute(task_id=task_id)
    return outcome.value


def sequence_resume_enqueue(*, task_id):
    """After a callback completed a waiting task: resume its sequence in a worker, once committed."""
    transaction.on_commit(
        lambda: async_task("events.tasks.resume_job", str(task_id), task_name=f"resume-{task_id}")
    )


def error_branch_enqueue(*, task_id):
    """A task failed outside a walk (callback FAILURE, deadline): run its error branch in a worker."""
    transaction.on_commit(
        lambda: async_task("events.tasks.error_branch_job", str(task_id), task_name=f"error-branch-{task_id}")
    )


def error_branch_job(task_id):
    """Queue entrypoint: a failed task's error branch, then the rest of its sequence."""
    from . import engine

    return engine.error_branch_job(task_id=task_id).value


def walk_from_enqueue(*, task_id):
    """The sweep found a stalled run: walk on from this step in a worker (marked as handed off)."""
    marked = RunTask.objects.filter(pk=task_id, status=RunTask.Status.PENDING, enqueued_at__isnull=True).update(
        enqueued_at=timezone.now()
    )
    if marked:
        transaction.on_commit(
            lambda: async_task("events.tasks.walk_from_job", str(task_id), task_name=f"walk-from-{task_id}")
        )
    return bool(marked)


def walk_from_job(task_id):
    """Queue entrypoint: a stalled run goes on from its first pending step."""
    from . import engine

    return engine.sequence_walk_from_job(task_id=task_id).value


def resume_job(task_id):
    """Queue entrypoint: walk on after a completed waiting step."""
    from . import engine

    return engine.sequence_resume(task_id=task_id).value


def dispatch_due(*, limit=200):
    """Hand every container whose due time has come to the queue. Returns how many were sent.

    Runs in ``manage.py worker`` several times a second: this, not the broker, is
    what makes a delay fire on time.
    """
    sent = 0
    for task_id in RunTask.objects.due_for_dispatch().values_list("pk", flat=True)[:limit]:
        try:
            sent += container_enqueue(task_id=task_id)
        except Exception:
            logger.exception("Could not hand task %s to the queue; will try again", task_id)
    return sent


def standin_enqueue(*, task_id, callback_url, callback_token, progress_url, step_seconds):
    """Hand the demo stand-in service's work for one waiting task to the queue, once committed.

    The job's arguments include the task's callback token: the stand-in plays an
    external system, which holds that token too (demo only, see events/standin.py).
    """
    transaction.on_commit(
        lambda: async_task(
            "events.tasks.standin_job", task_id, callback_url, callback_token, progress_url, step_seconds,
            task_name=f"standin-{task_id}",
        )
    )


def standin_job(task_id, callback_url, callback_token, progress_url, step_seconds):
    """Queue entrypoint: simulate the demo's external system answering one request.

    Sends two progress updates, then the SUCCESS callback, over HTTP (events/standin.py).
    """
    from . import standin

    return standin.standin_reply(
        task_id=task_id, callback_url=callback_url, callback_token=callback_token,
        progress_url=progress_url, step_seconds=step_seconds,
    )


def queue_stats(*, now=None):
    """What the broker holds: jobs ready to run, and how long the oldest ready one has waited (seconds)."""
    now = now or timezone.now()
    ready = OrmQ.objects.filter(lock__lt=now)
    oldest = ready.order_by("lock").values_list("lock", flat=True).first()
    return {
        "ready": ready.count(),
        "taken": OrmQ.objects.filter(lock__gte=now).count(),
        "oldest_ready_age": (now - oldest).total_seconds() if oldest else 0.0,
    }


def prune_queue_results(*, before):
    """Delete django-q2's stored results older than ``before`` (we keep our own in RunTask)."""
    deleted, _ = Task.objects.filter(stopped__lt=before).delete()
    return deleted

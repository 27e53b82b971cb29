"""The engine: start a run, walk a sequence of nodes, defer containers, finish or fail the run.

A *sequence* is an ordered list of sibling nodes from a run's snapshot: the
top level (walked inline, in the request) or a container's children (walked
by a worker). Walking a sequence ends in one of three ways: every node was
handled (DONE), a node failed and nothing caught it (FAILED), or a node is
waiting for something outside (SUSPENDED; the sequence resumes later at the
next sibling).
"""

import enum
import hashlib
import json
import logging
import secrets
import traceback
import uuid
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from forms_app.models import RECORD_UPDATE, Record

from . import tasks as queue
from .models import Node, Run, RunTask, secret_hash
from .nodes import registry
from .nodes.base import NodeContext, NodeError, Waiting

CALLBACK_PATH = "/api/external-events/callback/"

logger = logging.getLogger("events.engine")


class Outcome(enum.Enum):
    DONE = "done"
    FAILED = "failed"
    SUSPENDED = "suspended"  # a step waits for a callback; the sequence resumes after it
    STOPPED = "stopped"  # the run ended elsewhere (failed or cancelled) while we walked
    ELSEWHERE = "elsewhere"  # another walker holds this sequence (a duplicate delivery)


def run_start(*, record, event=RECORD_UPDATE, properties=None, parent_run=None, is_submission=False):
    """Create a run pinned to the current tree of (form, event) and a pending task per node.

    Call it inside the caller's transaction: the record, the run and its tasks
    commit together. Nothing here has a side effect outside the database.
    """
    snapshot = Node.objects.snapshot(record.form, event)
    run = Run.objects.create(
        form_id=record.form_id,
        record=record,
        event=event,
        is_submission=is_submission,
        parent_run=parent_run,
        snapshot=snapshot,
        properties=properties or {},
    )
    RunTask.objects.bulk_create(_tasks_for(run, snapshot))
    return run


def _tasks_for(run, snapshot):
    tasks = []

    def add(nodes, parent_id):
        for node in nodes:
            node_type = registry.get(node["type"])
            task = RunTask(
                id=uuid.uuid4(),
                run=run,
                parent_id=parent_id,
                node_id=node["id"],
                position=len(tasks),
                type=node["type"],
                name=node.get("name", ""),
                label=node.get("label", "")[:200],
                visible=node.get("visible", False),
                is_container=node_type.is_container,
            )
            tasks.append(task)
            add(node.get("children", []), task.id)

    add(snapshot, None)
    return tasks


def run_inline(*, run):
    """The inline phase: walk the top level of the run in the request, then finish if nothing is left."""
    outcome = sequence_walk(run=run, nodes=run.snapshot)
    if outcome is Outcome.DONE:
        run_finish_if_done(run=run)
    return outcome


def sequence_walk(*, run, nodes, start=0):
    """Handle ``nodes[start:]`` in order: run actions now, hand containers to the queue."""
    tasks = {task.node_id: task for task in run.tasks.filter(node_id__in=[node["id"] for node in nodes])}
    for node in nodes[start:]:
        if not Run.objects.filter(pk=run.pk, status=Run.Status.RUNNING).exists():
            return Outcome.STOPPED
        task = tasks[node["id"]]
        if registry.get(node["type"]).is_container:
            outcome = container_defer(run=run, task=task, node=node)
        else:
            outcome = action_execute(run=run, task=task, node=node)
        if outcome is not Outcome.DONE:
            return outcome
    return Outcome.DONE


def _context(run, task, node):
    record = Record.objects.select_related("form").get(pk=run.record_id)
    outputs = {
        row["name"]: {"output": row["output"], "status": row["status"]}
        for row in run.tasks.exclude(name="").values("name", "output", "status")
    }
    return NodeContext(run=run, task=task, record=record, node=node, outputs=outputs)


def action_execute(*, run, task, node):
    """Claim the task, run the action, record its outcome. A lost claim means someone else has it."""
    if not task.claim():
        task.refresh_from_db(fields=["status"])
        if task.status == RunTask.Status.COMPLETE:
            return Outcome.DONE
        if task.status in (RunTask.Status.ACTIVE, RunTask.Status.AWAITING):
            return Outcome.ELSEWHERE
        return Outcome.STOPPED
    ctx = _context(run, task, node)
    ctx.awaiter = lambda *, timeout_seconds: task_await(task=task, timeout_seconds=timeout_seconds)
    try:
        result = registry.get(node["type"])().execute(ctx)
    except NodeError as exc:
        return task_fail(run=run, task=task, error=str(exc), logs=ctx.logs)
    except Exception as exc:
        logger.exception("Task %s (%s) raised", task.pk, node["type"])
        ctx.log(traceback.format_exc(limit=5))
        return task_fail(run=run, task=task, error=f"{exc.__class__.__name__}: {exc}", logs=ctx.logs)
    if isinstance(result, Waiting):
        task_store_waiting(task=task, output=result.output, logs=ctx.logs)
        return Outcome.SUSPENDED
    task.finish(RunTask.Status.COMPLETE, logs=ctx.logs, output=result or {})
    return Outcome.DONE


def task_await(*, task, timeout_seconds):
    """active → awaiting with a deadline and a fresh callback token (only its hash is kept)."""
    token = secrets.token_urlsafe(24)
    deadline = timezone.now() + timedelta(seconds=timeout_seconds)
    RunTask.objects.filter(pk=task.pk, status=RunTask.Status.ACTIVE).update(
        status=RunTask.Status.AWAITING,
        deadline_at=deadline,
        callback_token_hash=secret_hash(token),
        lease_expires_at=None,
    )
    task.status, task.deadline_at = RunTask.Status.AWAITING, deadline
    return {
        "task_id": str(task.pk),
        "url": settings.EVENTS_PUBLIC_URL.rstrip("/") + CALLBACK_PATH,
        "token": token,
        "deadline": deadline.isoformat(),
    }


def task_store_waiting(*, task, output, logs):
    """Keep what the waiting action produced, under any callback output that already arrived."""
    with transaction.atomic():
        row = RunTask.objects.select_for_update().only("output", "logs").get(pk=task.pk)
        RunTask.objects.filter(pk=task.pk).update(
            output={**(output or {}), **row.output}, logs=row.logs + list(logs)
        )


def container_defer(*, run, task, node):
    """Give a container its due time and, if it is due now, hand it to the queue after commit."""
    record = Record.objects.get(pk=run.record_id)
    ctx = NodeContext(run=run, task=task, record=record, node=node)
    try:
        due = registry.get(node["type"])().due_at(ctx)
    except NodeError as exc:
        task.claim()
        return task_fail(run=run, task=task, error=str(exc))
    except Exception as exc:
        logger.exception("Task %s (%s) could not compute its due time", task.pk, node["type"])
        task.claim()
        return task_fail(run=run, task=task, error=f"{exc.__class__.__name__}: {exc}")
    task.due_at = due
    if due > timezone.now():
        RunTask.objects.filter(pk=task.pk, status=RunTask.Status.PENDING).update(due_at=due)
        return Outcome.DONE
    try:
        queue.container_enqueue(task_id=task.pk, due_at=due)
    except Exception as exc:
        logger.exception("Could not hand task %s to the queue", task.pk)
        task.claim()
        return task_fail(run=run, task=task, error=f"Could not schedule: {exc.__class__.__name__}: {exc}")
    return Outcome.DONE


def container_execute(*, task_id):
    """A worker's part: claim a due container, walk its children, complete it, maybe finish the run.

    A duplicate or early delivery loses the claim and returns without effect.
    """
    task = RunTask.objects.select_related("run").filter(pk=task_id).first()
    if task is None:
        return Outcome.STOPPED
    if not task.claim(require_due=True):
        # Early delivery: forget the hand-off so the dispatcher sends it again when due.
        RunTask.objects.filter(pk=task_id, status=RunTask.Status.PENDING, due_at__gt=timezone.now()).update(
            enqueued_at=None
        )
        return Outcome.ELSEWHERE
    run = task.run
    node = snapshot_node(run.snapshot, task.node_id)
    task.logs.append(RunTask.log_line(f"attempt {task.attempt} started"))
    outcome = sequence_walk(run=run, nodes=node.get("children", []))
    return container_conclude(run=run, task=task, outcome=outcome)


def container_conclude(*, run, task, outcome):
    """Record how a container's walk ended: done, failed, stopped, or parked while a step waits."""
    if outcome is Outcome.DONE:
        task.finish(RunTask.Status.COMPLETE, logs=[RunTask.log_line("all steps handled")])
        run_finish_if_done(run=run)
    elif outcome is Outcome.FAILED:
        task.finish(RunTask.Status.FAILED, logs=[RunTask.log_line("a step failed")], error="A step inside failed.")
    elif outcome is Outcome.STOPPED:
        task.finish(RunTask.Status.CANCELLED, logs=[RunTask.log_line("the run ended before this branch finished")])
    elif outcome is Outcome.SUSPENDED:
        # Parked: no lease (no worker holds it); the callback's resume job finishes it.
        RunTask.objects.filter(pk=task.pk, status=RunTask.Status.ACTIVE).update(
            lease_expires_at=None, logs=task.logs + [RunTask.log_line("a step waits for a callback")]
        )
    return outcome


def sequence_resume(*, task_id):
    """After a waiting step completed: walk its sequence on from the next sibling (in a worker).

    Duplicates are harmless: later steps are claimed one by one, and a step
    someone else holds ends this walk without touching anything.
    """
    task = RunTask.objects.select_related("run").filter(pk=task_id).first()
    if task is None or task.status != RunTask.Status.COMPLETE:
        return Outcome.STOPPED
    run = task.run
    parent = RunTask.objects.filter(pk=task.parent_id).first() if task.parent_id else None
    nodes = snapshot_node(run.snapshot, parent.node_id).get("children", []) if parent else run.snapshot
    index = next(i for i, node in enumerate(nodes) if node["id"] == task.node_id)
    outcome = sequence_walk(run=run, nodes=nodes, start=index + 1)
    if parent is not None:
        if outcome is Outcome.ELSEWHERE:
            return outcome
        return container_conclude(run=run, task=parent, outcome=outcome)
    if outcome is Outcome.DONE:
        run_finish_if_done(run=run)
    return outcome


@dataclass
class CallbackResult:
    applied: bool
    status: str
    duplicate: bool = False


def callback_digest(*, status, logs, output, subtext):
    canonical = json.dumps({"status": status, "logs": logs, "output": output, "subtext": subtext}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def task_callback(*, task_id, status, logs=(), output=None, subtext=None, note="", error=""):
    """Apply an external system's answer to an awaiting task. The first valid one wins.

    SUCCESS completes the task and resumes its sequence in the background;
    FAILURE fails it (and, with nothing to catch it, the run). A repeat of the
    applied callback changes nothing and says so; anything else on a task that
    is no longer awaiting is refused with the task's current status. ``note``
    (a log line) and ``error`` serve callers other than the external system, such
    as an admin completing or failing a task by hand.
    """
    digest = callback_digest(status=status, logs=list(logs) + ([note] if note else []), output=output, subtext=subtext)
    now = timezone.now()
    with transaction.atomic():
        row = RunTask.objects.select_for_update().select_related("run").get(pk=task_id)
        if row.status != RunTask.Status.AWAITING:
            return CallbackResult(applied=False, status=row.status, duplicate=row.callback_digest == digest)
        succeeded = status == "SUCCESS"
        lines = [RunTask.log_line(line, at=now) for line in logs]
        if note:
            lines.append(RunTask.log_line(note, at=now))
        changes = {
            "status": RunTask.Status.COMPLETE if succeeded else RunTask.Status.FAILED,
            "finished_at": now,
            "output": {**row.output, **(output or {})},
            "logs": row.logs + lines,
            "callback_digest": digest,
            "error": "" if succeeded else (error or f"The external system reported FAILURE{': ' + subtext if subtext else ''}."),
        }
        if subtext is not None:
            changes["subtext"] = subtext[:500]
            Run.objects.filter(pk=row.run_id).update(subtext=subtext[:500])
        if not RunTask.objects.filter(pk=row.pk, status=RunTask.Status.AWAITING).update(**changes):
            row.refresh_from_db(fields=["status", "callback_digest"])
            return CallbackResult(applied=False, status=row.status, duplicate=row.callback_digest == digest)
        if succeeded:
            queue.sequence_resume_enqueue(task_id=row.pk)
    if not succeeded:
        run_fail(run=row.run, error=f"{row.label or row.type} failed: {changes['error']}")
    return CallbackResult(applied=True, status=changes["status"])


def task_progress(*, task_id, subtext, logs=()):
    """Progress from outside while a task runs or awaits: its subtext (and its run's), more log lines.

    Returns the task's status; nothing changes unless it is active or awaiting.
    """
    with transaction.atomic():
        row = RunTask.objects.select_for_update().get(pk=task_id)
        if row.status not in (RunTask.Status.ACTIVE, RunTask.Status.AWAITING):
            return False, row.status
        changes = {"logs": row.logs + [RunTask.log_line(line) for line in logs]}
        if subtext is not None:
            changes["subtext"] = subtext[:500]
            Run.objects.filter(pk=row.run_id).update(subtext=subtext[:500])
        RunTask.objects.filter(pk=row.pk).update(**changes)
    return True, row.status


def awaiting_expire(*, now=None):
    """Fail every awaiting task whose deadline has passed (timed out). Returns how many."""
    expired = 0
    for task in RunTask.objects.awaiting_past_deadline(now).select_related("run"):
        won = RunTask.objects.filter(pk=task.pk, status=RunTask.Status.AWAITING).update(
            status=RunTask.Status.FAILED,
            finished_at=timezone.now(),
            error="Timed out: no callback arrived before the deadline.",
            logs=task.logs + [RunTask.log_line(f"timed out waiting for a callback (deadline {task.deadline_at.isoformat()})")],
        )
        if won:
            expired += 1
            run_fail(run=task.run, error=f"{task.label or task.type} timed out waiting for a callback.")
    return expired


def snapshot_node(nodes, node_id):
    for node in nodes:
        if node["id"] == node_id:
            return node
        found = snapshot_node(node.get("children", []) + node.get("on_error", []), node_id)
        if found is not None:
            return found
    return None


def task_fail(*, run, task, error, logs=()):
    """Fail a claimed task. With nothing to catch it, the run fails too."""
    if not task.finish(RunTask.Status.FAILED, logs=list(logs) + [RunTask.log_line(f"failed: {error}")], error=error):
        # Already settled elsewhere (a callback answered while the request was in flight):
        # the first outcome stands, and whoever settled it carries the sequence on.
        return Outcome.ELSEWHERE
    run_fail(run=run, error=f"{task.label or task.type} failed: {error}")
    return Outcome.FAILED


def run_fail(*, run, error):
    """running → failed: cancel every task still pending or awaiting; the record is complete."""
    now = timezone.now()
    with transaction.atomic():
        won = Run.objects.filter(pk=run.pk, status=Run.Status.RUNNING).update(
            status=Run.Status.FAILED, error=error, finished_at=now
        )
        if won:
            _cancel_open_tasks(run, now)
            if run.is_submission:
                Record.objects.filter(pk=run.record_id).update(is_complete=True)
    return bool(won)


def _cancel_open_tasks(run, now):
    """Cancel what never ran or still waits, and containers parked behind a waiting step."""
    run.tasks.filter(
        Q(status__in=[RunTask.Status.PENDING, RunTask.Status.AWAITING])
        | Q(status=RunTask.Status.ACTIVE, is_container=True, lease_expires_at__isnull=True)
    ).update(status=RunTask.Status.CANCELLED, finished_at=now)


def run_finish_if_done(*, run):
    """running → complete once every task is terminal. Safe when two last tasks finish at once."""
    with transaction.atomic():
        # The row lock (PostgreSQL) or the IMMEDIATE write lock (SQLite) serialises the check.
        Run.objects.select_for_update().filter(pk=run.pk).values_list("pk", flat=True).first()
        if run.tasks.unfinished().exists():
            return False
        won = Run.objects.filter(pk=run.pk, status=Run.Status.RUNNING).update(
            status=Run.Status.COMPLETE, finished_at=timezone.now()
        )
        if won and run.is_submission:
            Record.objects.filter(pk=run.record_id).update(is_complete=True)
    return bool(won)


def run_cancel(*, run, reason="Cancelled by an admin."):
    """Stop a run: pending and awaiting tasks are cancelled; active ones stop before their next step."""
    now = timezone.now()
    with transaction.atomic():
        won = Run.objects.filter(pk=run.pk, status=Run.Status.RUNNING).update(
            status=Run.Status.CANCELLED, error=reason, finished_at=now
        )
        if won:
            _cancel_open_tasks(run, now)
            if run.is_submission:
                Record.objects.filter(pk=run.record_id).update(is_complete=True)
    return bool(won)

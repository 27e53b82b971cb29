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
import random
import secrets
import time
import traceback
import uuid
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import IntegrityError, transaction
from django.db.models import Exists, F, Max, OuterRef, Q
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


def run_start(*, record, event=RECORD_UPDATE, properties=None, parent_run=None, parent_task=None,
              is_submission=False, snapshot=None, debug=False):
    """Create a run pinned to the current tree of (form, event) and a pending task per node.

    Call it inside the caller's transaction: the record, the run and its tasks
    commit together. Nothing here has a side effect outside the database.
    ``snapshot`` replaces the event's tree (a container's branch run as its own run).
    ``debug``: every task collects a debug trace (the container's collect_debug), as the form's switch does.
    """
    depth = parent_run.depth + 1 if parent_run is not None else 0
    if depth > settings.EVENTS_MAX_EVENT_DEPTH:
        raise NodeError(
            f"Stopped a runaway chain of events: “{event}” would be run number {depth + 1} in one chain "
            f"(EVENTS_MAX_EVENT_DEPTH is {settings.EVENTS_MAX_EVENT_DEPTH})."
        )
    if snapshot is None:
        snapshot = Node.objects.snapshot(record.form, event)
    run = Run.objects.create(
        form_id=record.form_id,
        record=record,
        event=event,
        is_submission=is_submission,
        parent_run=parent_run,
        parent_task=parent_task,
        depth=depth,
        snapshot=snapshot,
        properties=properties or {},
    )
    RunTask.objects.bulk_create(_tasks_for(run, snapshot, debug=debug or record.form.collect_debug))
    return run


def _tasks_for(run, nodes, *, parent_id=None, branch="main", debug=False, position=0):
    """Task rows for ``nodes`` and their main-branch descendants (error branches wait until needed)."""
    tasks = []

    def add(nodes, parent_id, branch, debug):
        for node in nodes:
            node_type = registry.get(node["type"])
            task = RunTask(
                id=uuid.uuid4(),
                run=run,
                parent_id=parent_id,
                node_id=node["id"],
                position=position + len(tasks),
                type=node["type"],
                name=node.get("name", ""),
                label=node.get("label", "")[:200],
                visible=node.get("visible", False),
                is_container=node_type.is_container,
                branch=branch,
                max_attempts=max(1, int(node.get("retry", {}).get("max_attempts", 1))),
                collect_debug=debug or bool(node.get("config", {}).get("collect_debug")),
            )
            tasks.append(task)
            if not _runs_as_own_run(node):
                add(node.get("children", []), task.id, "main", task.collect_debug)

    add(nodes, parent_id, branch, debug)
    return tasks


def _runs_as_own_run(node):
    """A container with event_type or event_properties records its branch as a run of its own."""
    config = node.get("config", {})
    return registry.get(node["type"]).is_deferred and bool(config.get("event_type") or config.get("event_properties"))


def run_inline(*, run):
    """The inline phase: walk the top level of the run in the request, then finish if nothing is left."""
    outcome = sequence_walk(run=run, nodes=run.snapshot, inline=True)
    return sequence_finish(run=run, owner=None, branch="main", outcome=outcome, inline=True)


def sequence_walk(*, run, nodes, start=0, inline=False, holders=()):
    """Handle ``nodes[start:]`` in order: run actions now, hand deferred containers to the queue.

    ``inline`` is true in the request: a go_async marker then hands the rest
    of the sequence to the queue and ends the walk. ``holders`` are the ids of
    the containers this walk holds (a worker's heartbeat renews their leases):
    when the worker stops, they are put back and the walk ends before its next step.
    """
    tasks = {task.node_id: task for task in run.tasks.filter(node_id__in=[node["id"] for node in nodes])}
    for node in nodes[start:]:
        if not Run.objects.filter(pk=run.pk, status=Run.Status.RUNNING).exists():
            return Outcome.STOPPED
        task = tasks[node["id"]]
        node_type = registry.get(node["type"])
        if task.status == RunTask.Status.PENDING and not inline and queue.worker_stopping():
            return walk_hand_back(task=task, holders=holders)
        if task.status == RunTask.Status.FAILED:
            # Met again by a later walk (a duplicate, a repair): the failure's consequence stands.
            outcome = failure_walk_on(run=run, task=task, node=node, inline=inline)
        elif node_type.is_deferred:
            outcome = container_defer(run=run, task=task, node=node, inline=inline)
        elif node_type.is_container:
            outcome = condition_execute(run=run, task=task, node=node, inline=inline, holders=holders)
        elif node_type.is_marker:
            outcome = marker_pass(run=run, task=task, inline=inline)
        else:
            outcome = action_execute(run=run, task=task, node=node, inline=inline)
        if outcome is not Outcome.DONE:
            return outcome
    return Outcome.DONE


def sequence_finish(*, run, owner, branch, outcome, inline=False):
    """A sequence ended with ``outcome``: tell whoever owns it, and go on where that leads.

    The top level finishes the run; a deferred container completes (its parent
    sequence never waited for it); a condition completes and its own sequence
    goes on; a failed step whose error branch is done goes on after the step.
    """
    if owner is None:
        if outcome is Outcome.DONE:
            run_finish_if_done(run=run)
        return outcome
    if branch == "on_error":
        if outcome is Outcome.DONE:
            return sequence_continue_after(run=run, task=owner, inline=inline)
        return outcome
    if registry.get(owner.type).is_deferred:
        return container_conclude(run=run, task=owner, outcome=outcome)
    outcome = _container_settle(owner, outcome, output={"matched": True})
    if outcome is Outcome.DONE:
        return sequence_continue_after(run=run, task=owner, inline=inline)
    return outcome


def _sequence_of(run, task):
    """(owner task or None, branch, the snapshot nodes of the sequence ``task`` belongs to)."""
    if task.parent_id is None:
        return None, "main", run.snapshot
    owner = RunTask.objects.get(pk=task.parent_id)
    node = snapshot_node(run.snapshot, owner.node_id)
    branch = "on_error" if task.branch == "on_error" else "main"
    return owner, branch, node.get("on_error" if branch == "on_error" else "children", [])


def sequence_continue_after(*, run, task, inline=False):
    """Walk the rest of ``task``'s sequence, after it, and then tell the sequence's owner."""
    owner, branch, nodes = _sequence_of(run, task)
    index = next(i for i, node in enumerate(nodes) if node["id"] == task.node_id)
    outcome = sequence_walk(run=run, nodes=nodes, start=index + 1, inline=inline)
    if outcome is Outcome.ELSEWHERE:
        return outcome
    return sequence_finish(run=run, owner=owner, branch=branch, outcome=outcome, inline=inline)


def _context(run, task, node):
    record = Record.objects.select_related("form").get(pk=run.record_id)
    outputs = {
        row["name"]: {"output": row["output"], "status": row["status"]}
        for row in run.tasks.exclude(name="").values("name", "output", "status")
    }
    ctx = NodeContext(run=run, task=task, record=record, node=node, outputs=outputs)
    if task.branch == "on_error" and task.parent_id:
        ctx.error = _error_context(run, RunTask.objects.get(pk=task.parent_id))
    return ctx


def _error_context(run, failed):
    node = snapshot_node(run.snapshot, failed.node_id) or {}
    return {
        "message": failed.error,
        "type": failed.failure or RunTask.Failure.RAISED,
        "node": failed.name or failed.label or failed.type,
        "payload": {"config": node.get("config", {}), "output": failed.output},
    }


def _claim_or_report(task, require_due=False):
    """Claim a pending task, or say why not: done already, held elsewhere, or stopped."""
    if task.claim(require_due=require_due):
        return None
    task.refresh_from_db(fields=["status", "due_at"])
    if task.status in (RunTask.Status.COMPLETE, RunTask.Status.SKIPPED):
        return Outcome.DONE
    if task.status in (RunTask.Status.ACTIVE, RunTask.Status.AWAITING, RunTask.Status.PENDING):
        return Outcome.ELSEWHERE
    return Outcome.STOPPED


def action_execute(*, run, task, node, inline=False, require_due=False):
    """Claim the task, run the action, record its outcome. A lost claim means someone else has it."""
    lost = _claim_or_report(task, require_due=require_due)
    if lost is not None:
        return lost
    ctx = _context(run, task, node)
    ctx.awaiter = lambda *, timeout_seconds: task_await(task=task, timeout_seconds=timeout_seconds)
    ctx.trigger = lambda *, event, properties: run_trigger(
        run=run, task=task, record=ctx.record, event=event, properties=properties
    )
    started = time.monotonic()
    try:
        result = registry.get(node["type"])().execute(ctx)
    except NodeError as exc:
        return task_fail(run=run, task=task, node=node, error=str(exc), logs=ctx.logs, inline=inline,
                         debug=_trace(task, ctx, started, error=str(exc)))
    except Exception as exc:
        logger.exception("Task %s (%s) raised", task.pk, node["type"])
        ctx.log(traceback.format_exc(limit=5))
        error = f"{exc.__class__.__name__}: {exc}"
        return task_fail(run=run, task=task, node=node, error=error, logs=ctx.logs, inline=inline,
                         debug=_trace(task, ctx, started, error=error))
    problem = RunTask.storage_problem(result.output if isinstance(result, Waiting) else result, "output")
    if problem:
        error = f"Its output cannot be stored: {problem}."
        return task_fail(run=run, task=task, node=node, error=error, logs=ctx.logs, inline=inline,
                         debug=_trace(task, ctx, started, error=error))
    if isinstance(result, Waiting):
        task_store_waiting(task=task, output=result.output, logs=ctx.logs,
                           debug=_trace(task, ctx, started, output=result.output))
        return Outcome.SUSPENDED
    task.finish(RunTask.Status.COMPLETE, logs=ctx.logs, output=result or {},
                debug=_trace(task, ctx, started, output=result or {}))
    return Outcome.DONE


def _trace(task, ctx, started, *, output=None, error=""):
    """With collect_debug: what one attempt saw and did. None otherwise (it costs storage)."""
    if not task.collect_debug:
        return None
    try:
        rendered = ctx.render(ctx.config)
    except Exception as exc:
        rendered = {"(could not render)": str(exc)}
    trace = {
        "attempt": task.attempt,
        "at": timezone.now().isoformat(timespec="milliseconds"),
        "duration_ms": round((time.monotonic() - started) * 1000, 1),
        "rendered_config": rendered,
        "inputs": ctx.template_context(),
        "output": output,
        "error": error,
    }
    trace = json.loads(json.dumps(trace, cls=DjangoJSONEncoder, default=str))
    problem = RunTask.storage_problem(trace, "trace")
    return trace if problem is None else {**trace, "inputs": None, "output": None, "rendered_config": None,
                                          "note": f"Part of this trace cannot be stored ({problem})."}


def marker_pass(*, run, task, inline):
    """go_async: in the request, the rest of the sequence goes to the queue as one job."""
    lost = _claim_or_report(task)
    if lost is not None:
        return lost
    if not inline:
        task.finish(RunTask.Status.COMPLETE, logs=[RunTask.log_line("already in the background")])
        return Outcome.DONE
    with transaction.atomic():
        task.finish(RunTask.Status.COMPLETE, logs=[RunTask.log_line("the rest of the sequence goes to the background")])
        sequence_hand_on(run=run, task=task)
    return Outcome.SUSPENDED


def condition_execute(*, run, task, node, inline, holders=()):
    """A condition: when its test holds, walk its children now, in this walk; else skip them."""
    lost = _claim_or_report(task)
    if lost is not None:
        return lost
    ctx = _context(run, task, node)
    try:
        holds = registry.get(node["type"])().holds(ctx)
    except Exception as exc:
        logger.exception("Condition %s raised", task.pk)
        return task_fail(run=run, task=task, node=node, error=f"{exc.__class__.__name__}: {exc}", inline=inline)
    logs = ctx.logs
    if not holds:
        skipped = _subtree_node_ids(node.get("children", []))
        run.tasks.filter(node_id__in=skipped, status=RunTask.Status.PENDING).update(
            status=RunTask.Status.SKIPPED, finished_at=timezone.now()
        )
        task.finish(RunTask.Status.COMPLETE, logs=logs + [RunTask.log_line("steps skipped")],
                    output={"matched": False})
        return Outcome.DONE
    task.logs = RunTask.capped_logs(task.logs, logs)
    RunTask.objects.filter(pk=task.pk).update(logs=task.logs)
    outcome = sequence_walk(run=run, nodes=node.get("children", []), inline=inline, holders=(*holders, task.pk))
    return _container_settle(task, outcome, output={"matched": True})


def _container_settle(task, outcome, *, output=None):
    """Record how a walk of a container's children ended (without finishing the run)."""
    if outcome is Outcome.DONE:
        task.finish(RunTask.Status.COMPLETE, logs=[RunTask.log_line("all steps handled")], output=output)
    elif outcome is Outcome.FAILED:
        task.finish(RunTask.Status.FAILED, logs=[RunTask.log_line("a step failed")], error="A step inside failed.")
    elif outcome is Outcome.STOPPED:
        task.finish(RunTask.Status.CANCELLED, logs=[RunTask.log_line("the run ended before this branch finished")])
    elif outcome is Outcome.SUSPENDED:
        # Parked: no lease (no worker holds it); whoever resumes the waiting step finishes it.
        RunTask.objects.filter(pk=task.pk, status=RunTask.Status.ACTIVE).update(
            lease_expires_at=None,
            logs=RunTask.capped_logs(task.logs, [RunTask.log_line("a step waits; this branch goes on later")]),
        )
    return outcome


def _subtree_node_ids(nodes):
    ids = []
    for node in nodes:
        ids.append(node["id"])
        ids.extend(_subtree_node_ids(node.get("children", [])))
    return ids


def run_trigger(*, run, task, record, event, properties, snapshot=None, debug=False):
    """trigger_event: fire ``event`` for the same record as a child run, and walk its inline phase now.

    ``snapshot``: the steps the child run executes instead of the event's tree
    (a container's branch recorded as a run of its own); ``debug``: its tasks collect debug traces.
    """
    with transaction.atomic():
        child = run_child_start(run=run, task=task, record=record, event=event, properties=properties,
                                snapshot=snapshot, debug=debug)
    outcome = run_inline(run=child)
    child.refresh_from_db(fields=["status"])
    return {"run_id": str(child.pk), "event": event, "status": child.status, "outcome": outcome.value}


def run_child_start(*, run, task, record, event, properties, snapshot=None, debug=False):
    """The child run ``task`` fires, created once: an attempt run again after a crash finds the first one."""
    child = Run.objects.filter(parent_task=task).first()
    if child is None:
        child = run_start(record=record, event=event, properties=properties, parent_run=run, parent_task=task,
                          snapshot=snapshot, debug=debug)
    return child


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


def task_store_waiting(*, task, output, logs, debug=None):
    """Keep what the waiting action produced, under any callback output that already arrived."""
    with transaction.atomic():
        row = RunTask.objects.select_for_update().only("output", "logs", "debug").get(pk=task.pk)
        changes = {"output": {**(output or {}), **row.output}, "logs": RunTask.capped_logs(row.logs, logs)}
        if debug is not None:
            changes["debug"] = row.debug + [debug]
        RunTask.objects.filter(pk=task.pk).update(**changes)


def container_defer(*, run, task, node, inline=False):
    """Give a container its due time and, if it is due now, hand it to the queue after commit."""
    if task.due_at is not None:
        # Deferred before (a repair walks past it again): its due time stands.
        if task.due_at <= timezone.now():
            queue.task_enqueue(task_id=task.pk)
        return Outcome.DONE
    record = Record.objects.get(pk=run.record_id)
    ctx = NodeContext(run=run, task=task, record=record, node=node)
    try:
        due = registry.get(node["type"])().due_at(ctx)
    except Exception as exc:
        if not isinstance(exc, NodeError):
            logger.exception("Task %s (%s) could not compute its due time", task.pk, node["type"])
        task.claim()
        error = str(exc) if isinstance(exc, NodeError) else f"{exc.__class__.__name__}: {exc}"
        return task_fail(run=run, task=task, node=node, error=error, failure=RunTask.Failure.SCHEDULE, inline=inline)
    task.due_at = due
    if due > timezone.now():
        RunTask.objects.filter(pk=task.pk, status=RunTask.Status.PENDING).update(due_at=due)
        return Outcome.DONE
    try:
        queue.container_enqueue(task_id=task.pk, due_at=due)
    except Exception as exc:
        logger.exception("Could not hand task %s to the queue", task.pk)
        task.claim()
        return task_fail(run=run, task=task, node=node, error=f"Could not schedule: {exc.__class__.__name__}: {exc}",
                         failure=RunTask.Failure.SCHEDULE, inline=inline)
    return Outcome.DONE


def task_job(*, task_id):
    """A worker's part for one handed-off task: what it does follows from the task's state.

    A deferred container with a due time: claim it, walk its children (or start
    its branch as a run of its own), complete it, maybe finish the run. Anything
    else (an action's next attempt, a step a walk or the sweep handed back, the
    first step of an error branch, the step after a callback): walk its sequence
    from it. A duplicate or early delivery loses the claim and returns without effect.
    """
    task = RunTask.objects.select_related("run").filter(pk=task_id).first()
    if task is None:
        return Outcome.STOPPED
    run = task.run
    node = snapshot_node(run.snapshot, task.node_id)
    if not registry.get(task.type).is_deferred or task.due_at is None:
        if task.status != RunTask.Status.PENDING or task.enqueued_at is None:
            return Outcome.ELSEWHERE  # done, held elsewhere, or never handed off (a stray delivery)
        if task.due_at and task.due_at > timezone.now():
            _forget_early_delivery(task_id)
            return Outcome.ELSEWHERE
        return sequence_walk_from(run=run, task=task)
    if not task.claim(require_due=True):
        _forget_early_delivery(task_id)
        return Outcome.ELSEWHERE
    task.logs.append(RunTask.log_line(f"attempt {task.attempt} started"))
    if _runs_as_own_run(node):
        return container_run_branch(run=run, task=task, node=node)
    outcome = sequence_walk(run=run, nodes=node.get("children", []), holders=(task.pk,))
    return container_conclude(run=run, task=task, outcome=outcome)


container_execute = task_job


def sequence_walk_from(*, run, task):
    """Walk ``task``'s sequence starting at ``task`` itself, then tell the sequence's owner.

    For a step handed back to a worker: an action's next attempt, or a step the
    sweep found abandoned (its worker died, or the request died before its
    inline phase). Each step is handled as in any walk: a delay computes its due
    time, a condition is tested, an action is claimed (a duplicate loses).
    """
    if registry.get(task.type).is_deferred:
        # Not deferred yet: the walk gives it a due time and hands it off as a container.
        RunTask.objects.filter(pk=task.pk, status=RunTask.Status.PENDING).update(enqueued_at=None)
    owner, branch, nodes = _sequence_of(run, task)
    index = next(i for i, node in enumerate(nodes) if node["id"] == task.node_id)
    outcome = sequence_walk(run=run, nodes=nodes, start=index)
    if outcome is Outcome.ELSEWHERE:
        return outcome
    return sequence_finish(run=run, owner=owner, branch=branch, outcome=outcome)


def _forget_early_delivery(task_id):
    """An early delivery: forget the hand-off so the dispatcher sends it again when due."""
    RunTask.objects.filter(pk=task_id, status=RunTask.Status.PENDING, due_at__gt=timezone.now()).update(
        enqueued_at=None
    )


def container_run_branch(*, run, task, node):
    """event_type / event_properties: the container's children run as a run of their own."""
    config = node.get("config", {})
    record = Record.objects.select_related("form").get(pk=run.record_id)
    ctx = NodeContext(run=run, task=task, record=record, node=node)
    try:
        properties = ctx.render(config["event_properties"]) if config.get("event_properties") else run.properties
        event = config.get("event_type") or run.event
        # The child run and this container's completion commit together: a crash can neither
        # lose the branch nor start it twice. The child's inline phase runs after the commit.
        with transaction.atomic():
            child = run_child_start(run=run, task=task, record=record, event=event, properties=properties,
                                    snapshot=node.get("children", []), debug=task.collect_debug)
            task.finish(RunTask.Status.COMPLETE, output={"run_id": str(child.pk), "event": event},
                        logs=[RunTask.log_line(f"branch recorded as run {child.pk} of “{event}”")])
    except Exception as exc:
        error = str(exc) if isinstance(exc, NodeError) else f"{exc.__class__.__name__}: {exc}"
        return task_fail(run=run, task=task, node=node, error=error, failure=RunTask.Failure.SCHEDULE)
    try:
        run_inline(run=child)
    except Exception:
        logger.exception("The inline phase of run %s broke off; the sweep will resume it", child.pk)
    run_finish_if_done(run=run)
    return Outcome.DONE


def container_conclude(*, run, task, outcome):
    """Record how a deferred container's walk ended; when it is done, the run may be too."""
    _container_settle(task, outcome)
    if outcome is Outcome.DONE:
        run_finish_if_done(run=run)
    return outcome


def sequence_resume(*, task_id):
    """After a waiting step completed (or a go_async marker): walk its sequence on from the next sibling.

    Runs in a worker. Duplicates are harmless: later steps are claimed one by
    one, and a step someone else holds ends this walk without touching anything.
    """
    task = RunTask.objects.select_related("run").filter(pk=task_id).first()
    if task is None or task.status != RunTask.Status.COMPLETE:
        return Outcome.STOPPED
    return sequence_continue_after(run=task.run, task=task)


def task_fail(*, run, task, node=None, error, logs=(), failure=RunTask.Failure.RAISED, inline=False, debug=None):
    """A claimed step failed: retry it, run its error branch, or fail the run.

    The failure and what follows from it (the run failing, or the error branch's
    tasks existing) commit in one transaction, so no crash can leave a failed
    step that a later walk or the sweep would walk past. Returns DONE when an
    error branch handled it (the sequence goes on), SUSPENDED when a retry or the
    error branch will go on later, FAILED when the run failed.
    """
    node = node or snapshot_node(run.snapshot, task.node_id) or {}
    if failure == RunTask.Failure.RAISED and task.attempt < task.max_attempts and task.status == RunTask.Status.ACTIVE:
        return task_retry_later(task=task, node=node, error=error, logs=logs, debug=debug)
    if failure == RunTask.Failure.RAISED and task.max_attempts > 1:
        failure = RunTask.Failure.RETRIES
        error = f"{error} (after {task.attempt} attempts)"
    with transaction.atomic():
        if not task.finish(RunTask.Status.FAILED, logs=list(logs) + [RunTask.log_line(f"failed: {error}")],
                           error=error, failure=failure, debug=debug):
            # Already settled elsewhere (a callback answered while the request was in flight):
            # the first outcome stands, and whoever settled it carries the sequence on.
            return Outcome.ELSEWHERE
        handled = failure_consequence(run=run, task=task, node=node)
    if not handled:
        return Outcome.FAILED
    return error_branch_walk(run=run, task=task, node=node, inline=inline)


def failure_consequence(*, run, task, node, hand_off=False):
    """Decide what follows a failure, inside the transaction that records it. True if an error branch handles it.

    A failed container's own steps will never run: they are cancelled, so that
    a handled failure still lets the run complete. With an error branch, its
    tasks are created (pending) now; with ``hand_off`` (a failure outside any
    walk: a callback, a deadline, a worker lost for good) its first step is
    handed to the queue in the same transaction. Without one, the run fails.
    """
    if node.get("children"):
        run.tasks.filter(node_id__in=_subtree_node_ids(node["children"]), status=RunTask.Status.PENDING).update(
            status=RunTask.Status.CANCELLED, finished_at=timezone.now()
        )
    if not node.get("on_error"):
        run_fail(run=run, error=_failure_message(task))
        return False
    first = error_branch_open(run=run, task=task, node=node)
    if hand_off:
        queue.task_enqueue(task_id=first.pk)
    return True


def _failure_message(task):
    if task.failure == RunTask.Failure.TIMEOUT:
        return f"{task.label or task.type} timed out waiting for a callback."
    return f"{task.label or task.type} failed: {task.error}"


def error_branch_open(*, run, task, node):
    """Create the error branch's tasks, once. Returns the task of the branch's first step."""
    first_node_id = node["on_error"][0]["id"]
    first = run.tasks.filter(node_id=first_node_id).first()
    if first is not None:
        return first
    start = (run.tasks.aggregate(last=Max("position"))["last"] or 0) + 1
    branch = _tasks_for(run, node["on_error"], parent_id=task.pk, branch="on_error",
                        debug=task.collect_debug, position=start)
    try:
        with transaction.atomic():
            RunTask.objects.bulk_create(branch)
    except IntegrityError:
        return run.tasks.get(node_id=first_node_id)  # opened by someone else just now
    RunTask.objects.filter(pk=task.pk).update(
        logs=RunTask.capped_logs(task.logs, [RunTask.log_line("the error branch handles this failure")])
    )
    return branch[0]


def error_branch_walk(*, run, task, node, inline=False):
    """Walk a failed step's error branch (created if need be). DONE means the failure is handled."""
    error_branch_open(run=run, task=task, node=node)
    return sequence_walk(run=run, nodes=node["on_error"], inline=inline)


def failure_walk_on(*, run, task, node, inline=False):
    """A walk met a step that failed before: its error branch runs (once) and the walk goes on, or the run fails."""
    if node.get("on_error"):
        return error_branch_walk(run=run, task=task, node=node, inline=inline)
    run_fail(run=run, error=_failure_message(task))
    return Outcome.FAILED


def error_branch_job(*, task_id):
    """In a worker (a job of earlier versions): a failed task's error branch, then the rest of its sequence."""
    task = RunTask.objects.select_related("run").filter(pk=task_id).first()
    if task is None or task.status != RunTask.Status.FAILED:
        return Outcome.STOPPED
    run = task.run
    outcome = failure_walk_on(run=run, task=task, node=snapshot_node(run.snapshot, task.node_id) or {})
    if outcome is Outcome.DONE:
        return sequence_continue_after(run=run, task=task)
    return outcome


def sequence_hand_on(*, run, task):
    """A step finished outside any walk (its callback came, a go_async marker passed): decide what follows.

    Call it in the transaction that finished the step. The next step of its
    sequence is handed to the queue; at the end of a sequence, its owner is
    settled as a walk would settle it (a deferred container completes and,
    with it, maybe the run; a condition completes; an error branch lets the
    sequence of the step it handled go on) and the climb goes on from there.
    """
    while True:
        owner, branch, nodes = _sequence_of(run, task)
        index = next((i for i, node in enumerate(nodes) if node["id"] == task.node_id), None)
        if index is None:
            logger.error("Task %s has no node %s in its run's snapshot; nothing follows it", task.pk, task.node_id)
            run_finish_if_done(run=run)
            return
        if index + 1 < len(nodes):
            following = run.tasks.filter(node_id=nodes[index + 1]["id"]).values_list("pk", flat=True).first()
            if following is not None:
                queue.task_enqueue(task_id=following, only_unsent=False)
            return
        if owner is None:
            run_finish_if_done(run=run)
            return
        if branch != "on_error":
            if registry.get(owner.type).is_deferred:
                container_conclude(run=run, task=owner, outcome=Outcome.DONE)
                return
            _container_settle(owner, Outcome.DONE, output={"matched": True})
        task = owner


def walk_hand_back(*, task, holders):
    """The worker is stopping: put back the containers this walk holds and hand the rest of the walk to the queue.

    The containers go back to pending without counting the attempt (nothing
    failed); the outermost is handed off and walks its children again (what is
    done is skipped). A walk that holds nothing hands off its next step.
    """
    with transaction.atomic():
        if holders:
            RunTask.objects.filter(pk__in=holders, status=RunTask.Status.ACTIVE).update(
                status=RunTask.Status.PENDING, lease_expires_at=None, lease_owner="", enqueued_at=None,
                attempt=F("attempt") - 1,
            )
            queue.task_enqueue(task_id=holders[0], only_unsent=False)
        else:
            queue.task_enqueue(task_id=task.pk, only_unsent=False)
    return Outcome.ELSEWHERE


def leases_release(*, tasks, reason, now=None):
    """Put back steps whose worker no longer holds them: pending again (bounded), or failed past the bound.

    ``tasks``: active tasks whose lease ran out (the sweep), or whose holder is
    gone (a stopped worker, a job that lost the database). A step inside a
    container that is itself put back waits for that container's walk; any
    other step is due now and runs again on its own, then its sequence goes on.
    Past max(its attempts, EVENTS_LEASE_RETRY_LIMIT) it fails, and the failure's
    consequence commits with it. Returns (put back, failed).
    """
    now = now or timezone.now()
    retried = failed = 0
    held = list(tasks.filter(status=RunTask.Status.ACTIVE, lease_expires_at__isnull=False).select_related("run")[:200])
    held_ids = {task.pk for task in held}
    for task in held:
        limit = max(task.max_attempts, settings.EVENTS_LEASE_RETRY_LIMIT)
        still = RunTask.objects.filter(pk=task.pk, status=RunTask.Status.ACTIVE, lease_expires_at=task.lease_expires_at)
        if task.attempt >= limit:
            error = f"Its worker stopped while running it ({reason}), {task.attempt} times; given up."
            with transaction.atomic():
                if still.update(status=RunTask.Status.FAILED, finished_at=now, lease_expires_at=None, error=error,
                                failure=RunTask.Failure.RAISED,
                                logs=RunTask.capped_logs(task.logs, [RunTask.log_line(error)])):
                    failed += 1
                    task.status, task.error, task.failure = RunTask.Status.FAILED, error, RunTask.Failure.RAISED
                    failure_consequence(run=task.run, task=task, hand_off=True,
                                        node=snapshot_node(task.run.snapshot, task.node_id) or {})
            continue
        walked_by_parent = task.parent_id in held_ids and task.branch == "main"
        if still.update(status=RunTask.Status.PENDING, lease_expires_at=None, lease_owner="", enqueued_at=None,
                        due_at=None if walked_by_parent else now,
                        logs=RunTask.capped_logs(task.logs, [RunTask.log_line(f"{reason}: it will run again")])):
            retried += 1
    return retried, failed


def tree_order(nodes):
    """The snapshot's nodes in the order they run: each node, its children, then its error branch."""
    for node in nodes:
        yield node
        yield from tree_order(node.get("children", []))
        yield from tree_order(node.get("on_error", []))


def run_repair(*, run):
    """The sweep found ``run`` stalled: nothing runs, waits or is handed off. Decide how it goes on.

    Never past an unhandled failure: a failed step without an error branch
    fails the run, one with an error branch gets its branch (once). Then the
    first pending step in tree order (one whose container is not itself
    pending) is handed to the queue; with none, a container left waiting for a
    step that is done is settled, or the run is finished. Returns what it did.
    """
    with transaction.atomic():
        Run.objects.select_for_update().filter(pk=run.pk).values_list("pk", flat=True).first()
        if not Run.objects.filter(pk=run.pk, status=Run.Status.RUNNING).exists():
            return "nothing"
        order = list(tree_order(run.snapshot))
        tasks = {task.node_id: task for task in run.tasks.all()}
        for node in order:
            task = tasks.get(node["id"])
            if task is not None and task.status == RunTask.Status.FAILED:
                if not node.get("on_error"):
                    run_fail(run=run, error=_failure_message(task))
                    return "failed"
                error_branch_open(run=run, task=task, node=node)
        tasks = {task.node_id: task for task in run.tasks.all()}
        by_id = {task.pk: task for task in tasks.values()}
        for node in order:
            task = tasks.get(node["id"])
            parent = by_id.get(task.parent_id) if task is not None else None
            if task is not None and task.status == RunTask.Status.PENDING and (
                parent is None or parent.status != RunTask.Status.PENDING
            ):
                queue.task_enqueue(task_id=task.pk, only_unsent=False)
                return "resumed"
        for node in reversed(order):
            task = tasks.get(node["id"])
            if task is None or not (task.is_container and task.status == RunTask.Status.ACTIVE):
                continue
            children = [tasks[child["id"]] for child in node.get("children", []) if child["id"] in tasks]
            if children and all(child.is_finished for child in children):
                sequence_hand_on(run=run, task=children[-1])
                return "resumed"
        return "finished" if run_finish_if_done(run=run) else "nothing"


def task_retry_later(*, task, node, error, logs=(), debug=None):
    """Put a failed attempt back to pending, due after an exponential backoff with jitter."""
    retry = node.get("retry", {})
    base = float(retry.get("backoff_seconds", 10))
    cap = float(retry.get("backoff_max_seconds", 600))
    delay = min(cap, base * (2 ** (task.attempt - 1))) * random.uniform(0.5, 1.0)
    due = timezone.now() + timedelta(seconds=delay)
    line = f"attempt {task.attempt} of {task.max_attempts} failed: {error}; next attempt at {due.isoformat(timespec='seconds')}"
    changes = {
        "status": RunTask.Status.PENDING, "due_at": due, "enqueued_at": None, "lease_expires_at": None,
        "error": error, "logs": RunTask.capped_logs(task.logs, [*logs, RunTask.log_line(line)]),
    }
    if debug is not None:
        changes["debug"] = task.debug + [debug]
    RunTask.objects.filter(pk=task.pk, status=RunTask.Status.ACTIVE).update(**changes)
    return Outcome.SUSPENDED


def retry_delay_bounds(*, attempt, backoff_seconds, backoff_max_seconds):
    """The (shortest, longest) wait before the attempt after ``attempt`` (for docs and tests)."""
    longest = min(backoff_max_seconds, backoff_seconds * (2 ** (attempt - 1)))
    return longest * 0.5, longest


def task_redrive(*, task_id):
    """Re-run a failed task (an admin's "retry"): the run goes on from that step; the failure stays on record.

    The run and what its failure cancelled come back: the task is pending again
    (one more attempt), the containers around it wait for it again, and the
    tasks cancelled by the failure are pending again. Returns False when the
    task is not failed or its run has moved on.
    """
    now = timezone.now()
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
                Record.objects.filter(pk=run.record_id).update(is_complete=False)
        RunTask.objects.filter(pk__in=ancestors, is_container=True).exclude(status=RunTask.Status.COMPLETE).update(
            status=RunTask.Status.ACTIVE, finished_at=None, lease_expires_at=None, error=""
        )
        RunTask.objects.filter(pk=task.pk).update(
            status=RunTask.Status.PENDING, due_at=now, enqueued_at=None, finished_at=None,
            attempt=F("attempt") if task.attempt else 1, max_attempts=max(task.attempt, 1) + 1,
            logs=RunTask.capped_logs(task.logs, [RunTask.log_line("re-run by an admin; the failure above stays on record")]),
        )
        queue.container_enqueue(task_id=task.pk)
    return True


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
            "logs": RunTask.capped_logs(row.logs, lines),
            "callback_digest": digest,
            "error": "" if succeeded else (error or f"The external system reported FAILURE{': ' + subtext if subtext else ''}."),
            "failure": "" if succeeded else RunTask.Failure.CALLBACK,
        }
        if subtext is not None:
            changes["subtext"] = subtext[:500]
            Run.objects.filter(pk=row.run_id).update(subtext=subtext[:500])
        if not RunTask.objects.filter(pk=row.pk, status=RunTask.Status.AWAITING).update(**changes):
            row.refresh_from_db(fields=["status", "callback_digest"])
            return CallbackResult(applied=False, status=row.status, duplicate=row.callback_digest == digest)
        for key, value in changes.items():
            setattr(row, key, value)
        # What follows commits with the answer: the next step handed off, or the failure's consequence.
        if succeeded:
            sequence_hand_on(run=row.run, task=row)
        else:
            failure_consequence(run=row.run, task=row, node=snapshot_node(row.run.snapshot, row.node_id) or {},
                                hand_off=True)
    return CallbackResult(applied=True, status=changes["status"])


def task_progress(*, task_id, subtext, logs=()):
    """Progress from outside while a task runs or awaits: its subtext (and its run's), more log lines.

    Returns the task's status; nothing changes unless it is active or awaiting.
    """
    with transaction.atomic():
        row = RunTask.objects.select_for_update().get(pk=task_id)
        if row.status not in (RunTask.Status.ACTIVE, RunTask.Status.AWAITING):
            return False, row.status
        changes = {"logs": RunTask.capped_logs(row.logs, [RunTask.log_line(line) for line in logs])}
        if subtext is not None:
            changes["subtext"] = subtext[:500]
            Run.objects.filter(pk=row.run_id).update(subtext=subtext[:500])
        RunTask.objects.filter(pk=row.pk).update(**changes)
    return True, row.status


def awaiting_expire(*, now=None):
    """Fail every awaiting task whose deadline has passed (timed out). Returns how many."""
    expired = 0
    for task in RunTask.objects.awaiting_past_deadline(now).select_related("run")[:200]:
        error = "Timed out: no callback arrived before the deadline."
        with transaction.atomic():
            won = RunTask.objects.filter(pk=task.pk, status=RunTask.Status.AWAITING).update(
                status=RunTask.Status.FAILED,
                finished_at=timezone.now(),
                error=error,
                failure=RunTask.Failure.TIMEOUT,
                logs=RunTask.capped_logs(task.logs, [
                    RunTask.log_line(f"timed out waiting for a callback (deadline {task.deadline_at.isoformat()})")]),
            )
            if won:
                expired += 1
                task.status, task.error, task.failure = RunTask.Status.FAILED, error, RunTask.Failure.TIMEOUT
                failure_consequence(run=task.run, task=task, hand_off=True,
                                    node=snapshot_node(task.run.snapshot, task.node_id) or {})
    return expired


def snapshot_node(nodes, node_id):
    for node in nodes:
        if node["id"] == node_id:
            return node
        found = snapshot_node(node.get("children", []) + node.get("on_error", []), node_id)
        if found is not None:
            return found
    return None


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
        unhandled = run.tasks.filter(status=RunTask.Status.FAILED).exclude(
            Exists(RunTask.objects.filter(parent=OuterRef("pk"), branch="on_error"))
        ).first()
        if unhandled is not None:
            # Never complete past a failure nothing handled (a crash between two commits of an older version).
            run_fail(run=run, error=_failure_message(unhandled))
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

"""Walking sequences: run actions, test conditions, defer containers, follow failures.

A *sequence* is an ordered list of sibling nodes from a run's snapshot: the
top level (walked inline, in the request) or a container's children (walked
by a worker). Walking a sequence ends in one of three ways: every node was
handled (DONE), a node failed and nothing caught it (FAILED), or a node is
waiting for something outside (SUSPENDED; the sequence resumes later at the
next sibling).
"""

import copy
import json
import logging
import threading
import time
import traceback
import uuid
from collections.abc import Mapping
from contextlib import contextmanager
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection, models, transaction

from .. import effects, hotsql, queue
from ..models import Run, RunTask, record_model
from ..nodes import registry
from ..nodes.base import NodeContext, NodeError, Waiting
from ..retry import RetryPolicy
from .callbacks import task_await, task_store_waiting
from .failures import error_branch_open, failure_consequence, task_retry_later
from .reads import job_task, run_tasks_of_nodes
from .runs import (
    Outcome,
    container_steps,
    failure_message,
    run_fail,
    run_finish_if_done,
    run_start,
    runs_as_own_run,
)
from .sequences import container_conclude, container_settle, sequence_hand_on, sequence_of, walk_hand_back
from .snapshot import snapshot_node, subtree_node_ids

logger = logging.getLogger("events.engine")


class WalkWrites(threading.local):
    """The transaction a walk keeps open between its steps (one per thread).

    A walk writes as much as it can in one transaction: claims, steps that only
    write our database (their type's ``reaches_outside`` is false), outcomes, a
    container's conclusion and the run's end. Before a step whose effects leave
    the database it commits (the step's claim, and so its attempt, included), so
    nothing irreversible happens while a transaction that could roll back is
    open; after it, the next transaction begins with the step's outcome.
    """

    def __init__(self):
        self.atomic = None
        self.walking = False

    def begin(self):
        if self.walking and self.atomic is None:
            self.atomic = transaction.atomic()
            self.atomic.__enter__()
            # On PostgreSQL a step's end and its write to the record go with the next statement (hotsql.later).
            hotsql.stage_begin(connection, self.atomic)

    def commit(self):
        if self.atomic is not None:
            atomic, self.atomic = self.atomic, None
            try:
                hotsql.stage_end(connection, send=True)
            except BaseException as exc:
                atomic.__exit__(type(exc), exc, exc.__traceback__)
                raise
            atomic.__exit__(None, None, None)

    def roll_back(self, exc):
        if self.atomic is not None:
            atomic, self.atomic = self.atomic, None
            try:
                hotsql.stage_end(connection, send=False)
            finally:
                atomic.__exit__(type(exc), exc, exc.__traceback__)


writes = WalkWrites()


@contextmanager
def walking():
    """Around a walk's entry point: its writes are batched, committed at the end, rolled back on an error."""
    if writes.walking:  # a walk inside a walk (a child run's inline phase) shares it
        yield
        return
    writes.walking = True
    try:
        yield
    except BaseException as exc:
        writes.roll_back(exc)
        raise
    else:
        writes.commit()
    finally:
        writes.walking = False


def walk_record(run):
    """The run's record, read once per walk; the steps that change it keep this copy current."""
    if "_walk_record" not in run.__dict__:
        if Run.record.is_cached(run):
            run._walk_record = run.record
        else:
            run._walk_record = record_model().objects.select_related("form").get(pk=run.record_id)
    return run._walk_record


class Outputs(Mapping):
    """``tasks.<name>`` of the templates: the named tasks' outputs and statuses, read from the
    database the first time a template asks (most steps never do), then kept for the walk."""

    def __init__(self, run):
        self.run, self.loaded = run, None

    def _rows(self):
        if self.loaded is None:
            self.loaded = {
                row["name"]: {"output": row["output"], "status": row["status"]}
                for row in self.run.tasks.exclude(name="").values("name", "output", "status")
            }
        return self.loaded

    def __getitem__(self, name):
        return self._rows()[name]

    def __iter__(self):
        return iter(self._rows())

    def __len__(self):
        return len(self._rows())

    def note(self, task):
        """A task of this walk ended: later steps of the walk see its output."""
        if task.name and self.loaded is not None:
            self.loaded[task.name] = {"output": task.output, "status": task.status}


def walk_outputs(run):
    if "_walk_outputs" not in run.__dict__:
        run._walk_outputs = Outputs(run)
    return run._walk_outputs


def walk_outputs_note(run, task):
    if "_walk_outputs" in run.__dict__:
        run._walk_outputs.note(task)


def run_inline(*, run: Run) -> Outcome:
    """The inline phase: walk the top level of the run in the request, then finish if nothing is left.

    Deferred containers that ``run_start`` already handed off (those before the
    first step that must run here) are skipped; a run with nothing left to walk
    costs no query at all.
    """
    start = getattr(run, "planned", 0)
    if start >= len(run.snapshot):
        if not run.snapshot and run.status == Run.Status.RUNNING:
            run_finish_if_done(run=run)
        return Outcome.DONE
    with walking():
        outcome = sequence_walk(run=run, nodes=run.snapshot, start=start, inline=True)
        return sequence_finish(run=run, owner=None, branch="main", outcome=outcome, inline=True)


def sequence_walk(*, run, nodes, start=0, inline=False, holders=(), known=None):
    """Handle ``nodes[start:]`` in order: run actions now, hand deferred containers to the queue.

    ``inline`` is true in the request: a go_async marker then hands the rest
    of the sequence to the queue and ends the walk. ``holders`` are the ids of
    the containers this walk holds (a worker's heartbeat renews their leases):
    when the worker stops, they are put back and the walk ends before its next step.
    ``known``: the nodes' tasks, read already (a queue job reads its container's with the container).
    """
    writes.begin()
    node_ids = [node["id"] for node in nodes[start:]]
    tasks = {task.node_id: task for task in known or ()}
    if any(node_id not in tasks for node_id in node_ids):
        tasks = {task.node_id: task for task in run_tasks_of_nodes(run, node_ids)}
    for node in nodes[start:]:
        # No look at the run's status here: a stopped run's pending tasks are cancelled, so
        # the next claim (or hand-off) fails and reports it.
        writes.begin()
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
    outcome = container_settle(owner, outcome, output=registry.get(owner.type).settled_output(held=True))
    if outcome is Outcome.DONE:
        return sequence_continue_after(run=run, task=owner, inline=inline)
    return outcome


def sequence_continue_after(*, run, task, inline=False):
    """Walk the rest of ``task``'s sequence, after it, and then tell the sequence's owner."""
    owner, branch, nodes = sequence_of(run, task)
    index = next(i for i, node in enumerate(nodes) if node["id"] == task.node_id)
    outcome = sequence_walk(run=run, nodes=nodes, start=index + 1, inline=inline)
    if outcome is Outcome.ELSEWHERE:
        return outcome
    return sequence_finish(run=run, owner=owner, branch=branch, outcome=outcome, inline=inline)


def _context(run, task, node):
    ctx = NodeContext(run=run, task=task, record=walk_record(run), node=node, outputs=walk_outputs(run))
    if task.branch == "on_error" and task.parent_id:
        ctx.error = _error_context(run, RunTask.objects.get(pk=task.parent_id))
    return ctx


def _error_context(run, failed):
    node = snapshot_node(run.snapshot, failed.node_id) or {}
    return {
        "message": failed.error,
        "type": failed.failure or RunTask.Failure.RAISED,
        "node": failed.name or failed.label or failed.type,
        # A copy: a template can call a dict's methods ({{ error.payload.config.clear }}), and the
        # snapshot is shared (forms_app.definitions gives the same one to every submit of a version).
        "payload": {"config": copy.deepcopy(node.get("config", {})), "output": failed.output},
    }


def _claim_or_report(task, require_due=False):
    """Claim a pending task, or say why not: done already, held elsewhere, or stopped."""
    if task.__dict__.pop("claimed_here", False):
        return None  # inserted claimed, with its container's first start (RunTask.claim)
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
    node_type = registry.get(node["type"])
    ctx = _context(run, task, node)
    if node_type.reaches_outside:
        writes.commit()  # the claim (its attempt counted) commits before anything leaves the database
    ctx.awaiter = lambda *, timeout_seconds: task_await(task=task, timeout_seconds=timeout_seconds)
    ctx.trigger = lambda *, event, properties: run_trigger(
        run=run, task=task, record=ctx.record, event=event, properties=properties
    )
    seen = _seen(task, ctx)
    started = time.monotonic()
    try:
        result = node_type().execute(ctx)
    except NodeError as exc:
        writes.begin()
        return task_fail(
            run=run,
            task=task,
            node=node,
            error=str(exc),
            logs=ctx.logs,
            inline=inline,
            debug=_trace(task, seen, started, error=str(exc)),
            retryable=exc.retryable,
        )
    except Exception as exc:
        writes.begin()
        logger.exception("Task %s (%s) raised", task.pk, node["type"])
        ctx.log(traceback.format_exc(limit=5))
        error = f"{exc.__class__.__name__}: {exc}"
        return task_fail(
            run=run,
            task=task,
            node=node,
            error=error,
            logs=ctx.logs,
            inline=inline,
            debug=_trace(task, seen, started, error=error),
        )
    writes.begin()
    problem = RunTask.storage_problem(result.output if isinstance(result, Waiting) else result, "output")
    if problem:
        error = f"Its output cannot be stored: {problem}."
        return task_fail(
            run=run,
            task=task,
            node=node,
            error=error,
            logs=ctx.logs,
            inline=inline,
            debug=_trace(task, seen, started, error=error),
        )
    if isinstance(result, Waiting):
        task_store_waiting(
            task=task, output=result.output, logs=ctx.logs, debug=_trace(task, seen, started, output=result.output)
        )
        return Outcome.SUSPENDED
    task.finish(
        RunTask.Status.COMPLETE,
        logs=ctx.logs,
        output=result or {},
        debug=_trace(task, seen, started, output=result or {}),
        later=True,
    )
    walk_outputs_note(run, task)
    return Outcome.DONE


def _seen(task, ctx):
    """With collect_debug: what a step sees before it runs (its config rendered, its inputs). None otherwise."""
    if not task.collect_debug:
        return None
    try:
        rendered = ctx.render(ctx.config)
    except Exception as exc:
        rendered = {"(could not render)": str(exc)}
    seen = {"rendered_config": rendered, "inputs": {**ctx.template_context(), "tasks": dict(ctx.outputs)}}
    return json.loads(json.dumps(seen, cls=DjangoJSONEncoder, default=str))  # a copy: the step may change the record


def _trace(task, seen, started, *, output=None, error=""):
    """With collect_debug: what one attempt saw (``_seen``, before it ran) and did; None otherwise (it costs room)."""
    if not task.collect_debug or seen is None:
        return None
    trace = {
        "attempt": task.attempt,
        "at": effects.now().isoformat(timespec="milliseconds"),
        "duration_ms": round((time.monotonic() - started) * 1000, 1),
        **seen,
        "output": output,
        "error": error,
    }
    trace = json.loads(json.dumps(trace, cls=DjangoJSONEncoder, default=str))
    problem = RunTask.storage_problem(trace, "trace")
    return (
        trace
        if problem is None
        else {
            **trace,
            "inputs": None,
            "output": None,
            "rendered_config": None,
            "note": f"Part of this trace cannot be stored ({problem}).",
        }
    )


def marker_pass(*, run, task, inline):
    """A marker: one that backgrounds its later siblings (go_async) hands, in the request, the rest of
    the sequence to the queue as one job; otherwise, and in a worker, it just passes."""
    lost = _claim_or_report(task)
    if lost is not None:
        return lost
    if not (inline and registry.get(task.type).backgrounds_later_siblings):
        task.finish(
            RunTask.Status.COMPLETE, logs=[RunTask.log_line("already in the background" if not inline else "passed")]
        )
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
        skipped = subtree_node_ids(node.get("children", []))
        run.tasks.filter(node_id__in=skipped, status=RunTask.Status.PENDING).update(
            status=RunTask.Status.SKIPPED, finished_at=effects.now()
        )
        task.finish(
            RunTask.Status.COMPLETE,
            logs=logs + [RunTask.log_line("steps skipped")],
            output=registry.get(node["type"]).settled_output(held=False),
        )
        return Outcome.DONE
    task.logs = RunTask.capped_logs(task.logs, logs)
    RunTask.objects.filter(pk=task.pk).update(logs=task.logs)
    outcome = sequence_walk(run=run, nodes=node.get("children", []), inline=inline, holders=(*holders, task.pk))
    return container_settle(task, outcome, output=registry.get(node["type"]).settled_output(held=True))


def run_trigger(
    *,
    run: Run,
    task: RunTask,
    record: models.Model,
    event: str,
    properties: dict[str, Any] | None,
    snapshot: list[dict[str, Any]] | None = None,
    debug: bool = False,
) -> dict[str, str]:
    """trigger_event: fire ``event`` for the same record as a child run, and walk its inline phase now.

    ``snapshot``: the steps the child run executes instead of the event's tree
    (a container's branch recorded as a run of its own); ``debug``: its tasks collect debug traces.
    """
    with transaction.atomic():
        child = run_child_start(
            run=run, task=task, record=record, event=event, properties=properties, snapshot=snapshot, debug=debug
        )
    outcome = run_inline(run=child)
    child.refresh_from_db(fields=["status"])
    return {"run_id": str(child.pk), "event": event, "status": child.status, "outcome": outcome.value}


def run_child_start(*, run, task, record, event, properties, snapshot=None, debug=False):
    """The child run ``task`` fires, created once: an attempt run again after a crash finds the first one."""
    child = Run.objects.filter(parent_task=task).first()
    if child is None:
        child = run_start(
            record=record,
            event=event,
            properties=properties,
            parent_run=run,
            parent_task=task,
            snapshot=snapshot,
            debug=debug,
        )
    return child


def container_defer(*, run, task, node, inline=False):
    """Give a container its due time and, if it is due now, hand it to the queue after commit."""
    if task.due_at is not None:
        # Deferred before (a repair walks past it again): its due time stands.
        if task.due_at <= effects.now():
            queue.task_enqueue(task_id=task.pk)
        return Outcome.DONE
    record = record_model().objects.get(pk=run.record_id)
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
    if due > effects.now():
        RunTask.objects.filter(pk=task.pk, status=RunTask.Status.PENDING).update(due_at=due)
        return Outcome.DONE
    try:
        queue.container_enqueue(task_id=task.pk, due_at=due)
    except Exception as exc:
        logger.exception("Could not hand task %s to the queue", task.pk)
        task.claim()
        return task_fail(
            run=run,
            task=task,
            node=node,
            error=f"Could not schedule: {exc.__class__.__name__}: {exc}",
            failure=RunTask.Failure.SCHEDULE,
            inline=inline,
        )
    return Outcome.DONE


def task_job(*, task_id: uuid.UUID | str) -> Outcome:
    """A worker's part for one handed-off task: what it does follows from the task's state.

    A deferred container with a due time: claim it, walk its children (or start
    its branch as a run of its own), complete it, maybe finish the run. Anything
    else (an action's next attempt, a step a walk or the sweep handed back, the
    first step of an error branch, the step after a callback): walk its sequence
    from it. A duplicate or early delivery loses the claim and returns without effect.
    """
    with walking():
        return _task_job(task_id)


def _task_job(task_id):
    # The run, its record and form come with the task, and a container's steps with it: the walk needs
    # them. Read before the walk's transaction begins: on SQLite that takes the write lock, which the
    # queue's own writes wait for.
    task, children = job_task(task_id)
    writes.begin()
    if task is None:
        return Outcome.STOPPED
    run = task.run
    node = snapshot_node(run.snapshot, task.node_id)
    if not registry.get(task.type).is_deferred or task.due_at is None:
        if task.status != RunTask.Status.PENDING or task.enqueued_at is None:
            return Outcome.ELSEWHERE  # done, held elsewhere, or never handed off (a stray delivery)
        if task.due_at and task.due_at > effects.now():
            _forget_early_delivery(task_id)
            return Outcome.ELSEWHERE
        return sequence_walk_from(run=run, task=task)
    # A container's steps get their rows at its first start, with its claim (a crash leaves both or
    # neither). None read: this must be that first start, or the claim is lost (a start since the read).
    first = not children and bool(node.get("children")) and not runs_as_own_run(node)
    steps = container_steps(run=run, task=task, node=node) if first else None
    # Its first step goes in claimed by this walk, which claims it next anyway (a deferred one is not
    # claimed: it gets a due time), unless the worker is stopping: then the walk hands it back unclaimed.
    first_step_claimed = bool(steps) and not registry.get(steps[0].type).is_deferred and not queue.worker_stopping()
    if not task.claim(require_due=True, steps=steps, first_step_claimed=first_step_claimed):
        _forget_early_delivery(task_id)
        return Outcome.ELSEWHERE
    task.logs.append(RunTask.log_line(f"attempt {task.attempt} started"))
    if runs_as_own_run(node):
        return container_run_branch(run=run, task=task, node=node)
    if first:
        children = steps
    outcome = sequence_walk(run=run, nodes=node.get("children", []), holders=(task.pk,), known=children)
    return container_conclude(run=run, task=task, outcome=outcome)


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
    owner, branch, nodes = sequence_of(run, task)
    index = next(i for i, node in enumerate(nodes) if node["id"] == task.node_id)
    outcome = sequence_walk(run=run, nodes=nodes, start=index)
    if outcome is Outcome.ELSEWHERE:
        return outcome
    return sequence_finish(run=run, owner=owner, branch=branch, outcome=outcome)


def _forget_early_delivery(task_id):
    """An early delivery: forget the hand-off so the dispatcher sends it again when due."""
    RunTask.objects.filter(pk=task_id, status=RunTask.Status.PENDING, due_at__gt=effects.now()).update(enqueued_at=None)


def container_run_branch(*, run, task, node):
    """event_type / event_properties: the container's children run as a run of their own."""
    config = node.get("config", {})
    record = record_model().objects.select_related("form").get(pk=run.record_id)
    ctx = NodeContext(run=run, task=task, record=record, node=node)
    try:
        properties = ctx.render(config["event_properties"]) if config.get("event_properties") else run.properties
        event = config.get("event_type") or run.event
        # The child run and this container's completion commit together: a crash can neither
        # lose the branch nor start it twice. The child's inline phase runs after the commit.
        with transaction.atomic():
            child = run_child_start(
                run=run,
                task=task,
                record=record,
                event=event,
                properties=properties,
                snapshot=node.get("children", []),
                debug=task.collect_debug,
            )
            task.finish(
                RunTask.Status.COMPLETE,
                output={"run_id": str(child.pk), "event": event},
                logs=[RunTask.log_line(f"branch recorded as run {child.pk} of “{event}”")],
            )
    except Exception as exc:
        error = str(exc) if isinstance(exc, NodeError) else f"{exc.__class__.__name__}: {exc}"
        return task_fail(run=run, task=task, node=node, error=error, failure=RunTask.Failure.SCHEDULE)
    try:
        run_inline(run=child)
    except Exception:
        logger.exception("The inline phase of run %s broke off; the sweep will resume it", child.pk)
    run_finish_if_done(run=run)
    return Outcome.DONE


def sequence_resume(*, task_id: uuid.UUID | str) -> Outcome:
    """After a waiting step completed (or a go_async marker): walk its sequence on from the next sibling.

    Runs in a worker. Duplicates are harmless: later steps are claimed one by
    one, and a step someone else holds ends this walk without touching anything.
    """
    task = RunTask.objects.select_related("run").filter(pk=task_id).first()
    if task is None or task.status != RunTask.Status.COMPLETE:
        return Outcome.STOPPED
    with walking():
        return sequence_continue_after(run=task.run, task=task)


def task_fail(
    *, run, task, node=None, error, logs=(), failure=RunTask.Failure.RAISED, inline=False, debug=None, retryable=True
):
    """A claimed step failed: retry it, run its error branch, or fail the run.

    The failure and what follows from it (the run failing, or the error branch's
    tasks existing) commit in one transaction, so no crash can leave a failed
    step that a later walk or the sweep would walk past. Returns DONE when an
    error branch handled it (the sequence goes on), SUSPENDED when a retry or the
    error branch will go on later, FAILED when the run failed.
    """
    node = node or snapshot_node(run.snapshot, task.node_id) or {}
    policy = RetryPolicy.of_document(node.get("retry"))
    if (
        failure == RunTask.Failure.RAISED
        and task.status == RunTask.Status.ACTIVE
        and policy.retries(attempt=task.attempt, error=error, retryable=retryable)
    ):
        return task_retry_later(task=task, policy=policy, error=error, logs=logs, debug=debug)
    if failure == RunTask.Failure.RAISED and task.max_attempts > 1 and task.attempt > 1:
        failure = RunTask.Failure.RETRIES
        error = f"{error} (after {task.attempt} attempts)"
    with transaction.atomic():
        if not task.finish(
            RunTask.Status.FAILED,
            logs=list(logs) + [RunTask.log_line(f"failed: {error}")],
            error=error,
            failure=failure,
            debug=debug,
        ):
            # Already settled elsewhere (a callback answered while the request was in flight):
            # the first outcome stands, and whoever settled it carries the sequence on.
            return Outcome.ELSEWHERE
        handled = failure_consequence(run=run, task=task, node=node)
    if not handled:
        return Outcome.FAILED
    return error_branch_walk(run=run, task=task, node=node, inline=inline)


def error_branch_walk(*, run, task, node, inline=False):
    """Walk a failed step's error branch (created if need be). DONE means the failure is handled."""
    error_branch_open(run=run, task=task, node=node)
    return sequence_walk(run=run, nodes=node["on_error"], inline=inline)


def failure_walk_on(*, run, task, node, inline=False):
    """A walk met a step that failed before: its error branch runs (once) and the walk goes on, or the run fails."""
    if node.get("on_error"):
        return error_branch_walk(run=run, task=task, node=node, inline=inline)
    run_fail(run=run, error=failure_message(task))
    return Outcome.FAILED


def error_branch_job(*, task_id: uuid.UUID | str) -> Outcome:
    """In a worker (a job of earlier versions): a failed task's error branch, then the rest of its sequence."""
    task = RunTask.objects.select_related("run").filter(pk=task_id).first()
    if task is None or task.status != RunTask.Status.FAILED:
        return Outcome.STOPPED
    run = task.run
    with walking():
        outcome = failure_walk_on(run=run, task=task, node=snapshot_node(run.snapshot, task.node_id) or {})
        if outcome is Outcome.DONE:
            return sequence_continue_after(run=run, task=task)
        return outcome

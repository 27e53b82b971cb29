"""Sequences settled without a walk: what follows a step finished outside one, and the sweep's repair.

Everything here writes to the database only (and hands work to the queue in the
same transaction): no step is executed.
"""

import logging
from typing import Literal

from django.db import transaction
from django.db.models import F

from .. import queue
from ..models import Run, RunTask
from ..nodes import registry
from .failures import error_branch_open
from .runs import Outcome, failure_message, run_fail, run_finish_if_done
from .snapshot import snapshot_node, tree_order

logger = logging.getLogger("events.engine")


def sequence_of(run, task):
    """(owner task or None, branch, the snapshot nodes of the sequence ``task`` belongs to)."""
    if task.parent_id is None:
        return None, "main", run.snapshot
    owner = RunTask.objects.get(pk=task.parent_id)
    node = snapshot_node(run.snapshot, owner.node_id)
    branch = "on_error" if task.branch == "on_error" else "main"
    return owner, branch, node.get("on_error" if branch == "on_error" else "children", [])


def _all_steps_handled():
    """The log line of a container whose steps are all done (stamped when written)."""
    return RunTask.log_line("all steps handled")


def container_settle(task, outcome, *, output=None):
    """Record how a walk of a container's children ended (without finishing the run)."""
    if outcome is Outcome.DONE:
        task.finish(RunTask.Status.COMPLETE, logs=[_all_steps_handled()], output=output)
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


def container_conclude(*, run, task, outcome):
    """Record how a deferred container's walk ended; when it is done, the run may be too."""
    if outcome is Outcome.DONE:
        # The container's completion goes with the run's lock: one statement (see run_finish_if_done).
        sql, params, changes = task.finish_statement(RunTask.Status.COMPLETE, logs=[_all_steps_handled()])
        run_finish_if_done(run=run, first=(sql, params, lambda: task.finished(changes), (RunTask, task.pk)))
        return outcome
    container_settle(task, outcome)
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
        owner, branch, nodes = sequence_of(run, task)
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
            container_settle(owner, Outcome.DONE, output=registry.get(owner.type).settled_output(held=True))
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
                status=RunTask.Status.PENDING,
                lease_expires_at=None,
                lease_owner="",
                enqueued_at=None,
                attempt=F("attempt") - 1,
            )
            queue.task_enqueue(task_id=holders[0], only_unsent=False)
        else:
            queue.task_enqueue(task_id=task.pk, only_unsent=False)
    return Outcome.ELSEWHERE


def run_repair(*, run: Run) -> Literal["nothing", "failed", "resumed", "finished"]:
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
                    run_fail(run=run, error=failure_message(task))
                    return "failed"
                error_branch_open(run=run, task=task, node=node)
        tasks = {task.node_id: task for task in run.tasks.all()}
        by_id = {task.pk: task for task in tasks.values()}
        for node in order:
            task = tasks.get(node["id"])
            parent = by_id.get(task.parent_id) if task is not None else None
            if (
                task is not None
                and task.status == RunTask.Status.PENDING
                and (parent is None or parent.status != RunTask.Status.PENDING)
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
        return "finished" if run_finish_if_done(run=run, check_failures=True) else "nothing"

"""Runs: start one pinned to a snapshot, and end it (complete, failed, cancelled)."""

import enum
from typing import Any

from django.conf import settings
from django.db import connection, models, transaction
from django.db.models import Exists, OuterRef, Q
from django.utils import timezone

from .. import effects, hotsql, queue
from ..ids import uuid7
from ..models import RECORD_UPDATE, Run, RunTask, TreeVersion, record_model
from ..nodes import registry
from ..nodes.base import NodeContext, NodeError
from ..retry import RetryPolicy

LIVE = object()  # run_start's default version: the live one, which it reads


class Outcome(enum.Enum):
    DONE = "done"
    FAILED = "failed"
    SUSPENDED = "suspended"  # a step waits for a callback; the sequence resumes after it
    STOPPED = "stopped"  # the run ended elsewhere (failed or cancelled) while we walked
    ELSEWHERE = "elsewhere"  # another walker holds this sequence (a duplicate delivery)


def run_start(
    *,
    record: models.Model,
    event: str = RECORD_UPDATE,
    properties: dict[str, Any] | None = None,
    parent_run: Run | None = None,
    parent_task: RunTask | None = None,
    is_submission: bool = False,
    snapshot: list[dict[str, Any]] | None = None,
    version: TreeVersion | None | object = LIVE,
    debug: bool = False,
) -> Run:
    """Create a run pinned to the live version of the tree of (form, event) and a pending task per node.

    Call it inside the caller's transaction: the record, the run and its tasks
    commit together. Nothing here has a side effect outside the database.
    The run executes ``version``'s snapshot (default ``LIVE``: the latest published version of (form,
    event), read here; None: none is published, an empty tree) and records that version.
    ``snapshot`` replaces the event's tree (a container's branch run as its own run): such a run
    records ``version``, or else its parent run's, the version its steps come from.
    ``debug``: every task collects a debug trace (the container's collect_debug), as the form's switch does.
    """
    depth = parent_run.depth + 1 if parent_run is not None else 0
    if depth > settings.EVENTS_MAX_EVENT_DEPTH:
        raise NodeError(
            f"Stopped a runaway chain of events: “{event}” would be run number {depth + 1} in one chain "
            f"(EVENTS_MAX_EVENT_DEPTH is {settings.EVENTS_MAX_EVENT_DEPTH})."
        )
    if snapshot is None and (version is LIVE or version is None):
        snapshot = effects.tree_override(record.form_id, event)  # a test run of drafts: the event's draft
    if snapshot is None:
        if version is LIVE:
            version = TreeVersion.objects.live(record.form_id, event)
        snapshot = version.snapshot if version is not None else []
        version_id = version.pk if version is not None else None
    else:
        version = None if version is LIVE else version
        version_id = version.pk if version is not None else getattr(parent_run, "version_id", None)
    now = effects.now()
    plan = _StartPlan.of(snapshot, version, debug or record.form.collect_debug)
    # hotsql.new, not Run(...): Model.__init__ of the record, the run and the broker rows was 3 % of a submit.
    run = hotsql.new(
        Run,
        form_id=record.form_id,
        record_id=record.pk,
        event=event,
        is_submission=is_submission,
        parent_run_id=parent_run.pk if parent_run is not None else None,
        parent_task_id=parent_task.pk if parent_task is not None else None,
        depth=depth,
        version_id=version_id,
        snapshot=plan.snapshot_saved or snapshot,
        properties=properties or {},
        # Nothing to do: complete at once (a submission's record is stored complete by its caller).
        status=Run.Status.RUNNING if snapshot else Run.Status.COMPLETE,
        finished_at=None if snapshot else now,
    )
    Run.record.field.set_cached_value(run, record)
    Run.parent_run.field.set_cached_value(run, parent_run)
    Run.parent_task.field.set_cached_value(run, parent_task)
    try:
        hotsql.insert([run], connection)  # a hot statement (every submit): written as SQL, not compiled per call
    finally:
        run.snapshot = snapshot
    if not snapshot and is_submission and not record.is_complete:
        record_model().objects.filter(pk=record.pk).update(is_complete=True)
        record.is_complete = True
    run.planned = plan.start(run, record)
    return run


class _StartPlan:
    """What every run of one snapshot starts with, worked out once per published version.

    Its first tasks (``tasks_for``) are the same rows for every run of a tree version but for their
    ids, their run, their times and their hand-off: those rows are prepared once (``hotsql.Rows``),
    and so is the snapshot's JSON (SQLite). Building and preparing five tasks' rows was a fifth of a
    submit of five background branches. A plan is kept on the version (``published_form`` gives the
    same version to every request while it is live), one per database and debug switch; a run of a
    snapshot that is not a version's (a branch run as its own run, a test run's draft) makes its own.
    """

    VARYING = ("id", "run_id", "parent_id", "created_at", "due_at", "enqueued_at", "handoff_id")

    @classmethod
    def of(cls, snapshot, version, debug):
        if not snapshot:
            return _NOTHING_TO_START
        if version is None or version.snapshot is not snapshot:
            return cls(snapshot, debug, cached=False)
        plans = version.__dict__.setdefault("_start_plans", {})
        key = (connection.alias, connection.vendor, debug)
        if key not in plans:
            plans[key] = cls(snapshot, debug, cached=True)
        return plans[key]

    def __init__(self, snapshot, debug, *, cached):
        # The JSON of a snapshot many runs share, once; not for a run's own (it is written once anyway).
        self.snapshot_saved = hotsql.Saved.of(Run, "snapshot", snapshot, connection) if cached and snapshot else None
        self.prototypes = tasks_for(hotsql.new(Run, id=uuid7()), snapshot, debug=debug) if snapshot else []
        self.rows = hotsql.Rows(self.prototypes, self.VARYING, connection) if self.prototypes else None
        index = {task.id: number for number, task in enumerate(self.prototypes)}
        self.parents = [index.get(task.parent_id) for task in self.prototypes]
        top = {task.node_id: number for number, task in enumerate(self.prototypes) if task.parent_id is None}
        # The deferred containers before the first step that must run inline: handed to the queue here.
        self.leading, self.planned = [], len(snapshot)
        for position, node in enumerate(snapshot):
            node_type = registry.get(node["type"])
            if not node_type.is_deferred:
                self.planned = position
                break
            self.leading.append((position, top[node["id"]], node, node_type))

    def start(self, run, record):
        """Insert the run's first tasks, its leading containers handed off; returns how many top-level
        nodes are settled that way (``run_inline`` starts after them)."""
        if not self.prototypes:
            return self.planned
        ids = [uuid7() for _ in self.prototypes]
        due, handed, planned = self._hand_off_leading(run, record, ids)
        # Prepared once for every row: the run, the time (auto_now_add's pre_save: one for the whole insert).
        run_id = self.rows.saved("run_id", run.pk)
        created = self.rows.saved("created_at", timezone.now())
        rows = []
        for number, parent in enumerate(self.parents):
            sent = handed.get(number)
            values = {
                "id": ids[number],
                "run_id": run_id,
                "parent_id": None if parent is None else ids[parent],
                "created_at": created,
                "due_at": due.get(number),
                "enqueued_at": None if sent is None else sent[0],
                "handoff_id": None if sent is None else sent[1],
            }
            rows.append(self.rows.row(number, values))
        hotsql.insert_rows(rows, connection)
        return planned

    def _hand_off_leading(self, run, record, ids):
        """Give the leading containers their due time; hand those due now to the queue.

        Those due now are handed to the queue in the caller's transaction (the
        first one's broker row commits with the run; the dispatcher sends the others
        at its next pass, as ``queue.task_jobs_send`` says), so the inline phase
        starts after them. Returns ({task number: due time}, {task number: (handed at,
        broker row id)}, how many top-level nodes are settled). A container whose due
        time cannot be computed stops the planning: the walk meets it and fails it.
        """
        due, planned = {}, self.planned
        for position, number, node, node_type in self.leading:
            # Its own lists and dicts: the prototype's are shared by every run of the version.
            task = hotsql.copy(self.prototypes[number], id=ids[number], run_id=run.pk, logs=[], output={}, debug=[])
            RunTask.run.field.set_cached_value(task, run)
            try:
                due[number] = node_type().due_at(NodeContext(run=run, task=task, record=record, node=node))
            except Exception:
                planned = position
                break
        now = effects.now()
        due_now = [number for number, due_at in due.items() if due_at <= now]
        if not due_now:
            return due, {}, planned
        try:
            sent = queue.task_jobs_send(task_ids=[ids[number] for number in due_now])
        except Exception:
            return {}, {}, 0  # the walk meets them again, and fails each that still cannot be handed off
        handed_at = effects.now()
        # The others stay due and unsent: the dispatcher sends them.
        return due, {number: (handed_at, sent[ids[number]]) for number in due_now if ids[number] in sent}, planned


_NOTHING_TO_START = _StartPlan([], False, cached=False)


def tasks_for(run, nodes, *, parent_id=None, branch="main", debug=False, position=0):
    """Task rows for ``nodes`` and their main-branch steps, numbered in tree order from ``position``.

    A deferred container's steps are not among them: they get their rows when a worker starts the
    container (``container_steps``), at the positions kept free for them here, so a submit writes a
    row for each first-level node and the steps of those that run inline (a condition's), not for
    every step of every branch. Error branches wait until needed.
    """
    tasks = []

    def add(nodes, parent_id, branch, debug, position):
        for node in nodes:
            node_type = registry.get(node["type"])
            task = hotsql.new(
                RunTask,
                id=uuid7(),
                run_id=run.pk,
                parent_id=parent_id,
                node_id=node["id"],
                position=position,
                type=node["type"],
                name=node.get("name", ""),
                label=node.get("label", "")[:200],
                visible=node.get("visible", False),
                is_container=node_type.is_container,
                branch=branch,
                max_attempts=RetryPolicy.attempts_of_document(node.get("retry")),
                collect_debug=debug or bool(node.get("config", {}).get("collect_debug")),
            )
            RunTask.run.field.set_cached_value(task, run)
            tasks.append(task)
            position += 1
            if runs_as_own_run(node):
                continue
            if node_type.is_deferred:
                position += steps_count(node.get("children", []))
            else:
                position = add(node.get("children", []), task.id, "main", task.collect_debug, position)
        return position

    add(nodes, parent_id, branch, debug, position)
    return tasks


def steps_count(nodes):
    """How many tasks ``nodes`` and their main-branch steps have, once every one of them has started."""
    return sum(1 for _ in _main_tree(nodes))


def steps_not_started(snapshot, tasks):
    """The steps whose rows a deferred container creates when it starts, for the containers among
    ``tasks`` (a run's tasks: objects or rows with node_id and position) that have not started:
    [(step's node, its container's task, the position its task will have)], in tree order."""
    by_node = {task.node_id: task for task in tasks}
    found = []

    def visit(nodes):
        for node in nodes:
            task = by_node.get(node["id"])
            children = node.get("children") or ()
            if task is None or runs_as_own_run(node):
                continue
            for branch in (children, node.get("on_error") or ()):
                if branch and branch[0]["id"] in by_node:
                    visit(branch)
            if children and children[0]["id"] not in by_node and registry.get(node["type"]).is_deferred:
                position = task.position + 1
                for step in _main_tree(children):
                    found.append((step, task, position))
                    position += 1

    visit(snapshot)
    return found


def _main_tree(nodes):
    """``nodes`` and their main-branch steps in tree order, as ``tasks_for`` numbers them."""
    for node in nodes:
        yield node
        if not runs_as_own_run(node):
            yield from _main_tree(node.get("children", []))


def container_steps(*, run, task, node):
    """The task rows (unsaved) of a deferred container's steps, at the positions ``tasks_for`` kept free
    for them: its first start inserts them with its claim (``RunTask.claim(steps=...)``)."""
    return tasks_for(
        run, node.get("children", []), parent_id=task.pk, debug=task.collect_debug, position=task.position + 1
    )


def runs_as_own_run(node):
    """A container with event_type or event_properties records its branch as a run of its own."""
    config = node.get("config", {})
    return registry.get(node["type"]).is_deferred and bool(config.get("event_type") or config.get("event_properties"))


def run_fail(*, run: Run, error: str) -> bool:
    """running → failed: cancel every task still pending or awaiting; the record is complete."""
    now = effects.now()
    with transaction.atomic():
        won = Run.objects.filter(pk=run.pk, status=Run.Status.RUNNING).update(
            status=Run.Status.FAILED, error=error, finished_at=now
        )
        if won:
            _cancel_open_tasks(run, now)
            if run.is_submission:
                record_model().objects.filter(pk=run.record_id).update(is_complete=True)
    return bool(won)


def _cancel_open_tasks(run, now):
    """Cancel what never ran or still waits, and containers parked behind a waiting step."""
    run.tasks.filter(
        Q(status__in=[RunTask.Status.PENDING, RunTask.Status.AWAITING])
        | Q(status=RunTask.Status.ACTIVE, is_container=True, lease_expires_at__isnull=True)
    ).update(status=RunTask.Status.CANCELLED, finished_at=now)


RUN_LOCK = hotsql.Statement(
    lambda connection: f"SELECT id FROM {hotsql.table(Run, connection)} WHERE id = %s FOR UPDATE"
)


def run_finish_if_done(*, run: Run, check_failures: bool = False, first=None) -> bool:
    """running → complete once no task is open any more. Safe when two last tasks finish at once.

    A running run never holds a failure that nothing handled: a failure commits
    with its consequence (the run failing, or its error branch created). An older
    version's crash between two commits could leave one: ``check_failures`` (the
    sweep) looks for it first and fails the run instead.
    ``first``: (UPDATE, parameters, a function called if it changed a row, (model, key) of that row) to
    run before, in the statement that locks the run where the database has row locks (a container's
    finish: one round trip fewer), else on its own.
    """
    # No savepoint inside a caller's transaction (a walk's, a callback's): its statements commit or roll
    # back with the caller's, and SAVEPOINT/RELEASE would be two more round trips at every run's end.
    with transaction.atomic(savepoint=False):
        run_id = hotsql.db_value(Run, "id", run.pk, connection)
        if connection.features.has_select_for_update:
            # The row lock serialises two last tasks finishing at once (SQLite's write lock already does).
            # Writes that ride along are in the same statement (a container's end, and what the walk kept
            # back: its last step's end, a step's write to the record): the run's end, a statement later,
            # sees them.
            kept, kept_params, kept_first = hotsql.with_later(connection, rows=[first[3]] if first is not None else [])
            gate = f" AND {kept_first}" if kept else ""
            if first is not None:
                sql, params, changed, _ = first
                parts = f"{kept}, first AS ({sql} RETURNING 1)" if kept else f"first AS ({sql} RETURNING 1)"
                locked = hotsql.rows(
                    connection,
                    f"WITH {parts} SELECT (SELECT count(*) FROM first)"
                    f" FROM {hotsql.table(Run, connection)} WHERE id = %s{gate} FOR UPDATE",
                    [*kept_params, *params, run_id],
                )
                if locked and locked[0][0]:
                    changed()
            elif kept:
                hotsql.rows(
                    connection,
                    f"WITH {kept} SELECT id FROM {hotsql.table(Run, connection)} WHERE id = %s{gate} FOR UPDATE",
                    [*kept_params, run_id],
                )
            else:
                RUN_LOCK.rows(connection, [run_id])
        elif first is not None:
            sql, params, changed, _ = first
            with connection.cursor() as cursor:
                cursor.execute(sql, params)
                if cursor.rowcount:
                    changed()
        if check_failures:
            unhandled = (
                run.tasks.filter(status=RunTask.Status.FAILED)
                .exclude(Exists(RunTask.objects.filter(parent=OuterRef("pk"), branch="on_error")))
                .first()
            )
            if unhandled is not None:
                run_fail(run=run, error=failure_message(unhandled))
                return False
        # Hot statements (the end of every run): written as SQL, not compiled per call (events.hotsql).
        finish, finish_params = hotsql.update_statement(
            Run,
            connection,
            {"status": Run.Status.COMPLETE, "finished_at": effects.now()},
            where=(
                f"id = %s AND status = %s AND NOT EXISTS (SELECT 1 FROM {hotsql.table(RunTask, connection)}"
                f" WHERE run_id = %s AND status IN ({', '.join(['%s'] * len(RunTask.OPEN))}))"
            ),
            params=[run_id, Run.Status.RUNNING, run_id, *RunTask.OPEN],
        )
        if run.is_submission and connection.vendor == "postgresql":
            # The run and its record's flag in one statement: one round trip fewer at every submission's end.
            record_done, record_params = hotsql.update_statement(
                record_model(), connection, {"is_complete": True}, where="id IN (SELECT record_id FROM won)", params=[]
            )
            won = hotsql.rows(
                connection,
                f"WITH won AS ({finish} RETURNING record_id), done AS ({record_done}) SELECT count(*) FROM won",
                [*finish_params, *record_params],
            )[0][0]
        else:
            with connection.cursor() as cursor:
                cursor.execute(finish, finish_params)
                won = cursor.rowcount
            if won and run.is_submission:
                hotsql.update(
                    record_model(), connection, {"is_complete": True}, where="id = %s", params=[run.record_id]
                )
    return bool(won)


def run_cancel(*, run: Run, reason: str = "Cancelled by an admin.") -> bool:
    """Stop a run: pending and awaiting tasks are cancelled; active ones stop before their next step."""
    now = effects.now()
    with transaction.atomic():
        won = Run.objects.filter(pk=run.pk, status=Run.Status.RUNNING).update(
            status=Run.Status.CANCELLED, error=reason, finished_at=now
        )
        if won:
            _cancel_open_tasks(run, now)
            if run.is_submission:
                record_model().objects.filter(pk=run.record_id).update(is_complete=True)
    return bool(won)


def failure_message(task):
    if task.failure == RunTask.Failure.TIMEOUT:
        return f"{task.label or task.type} timed out waiting for a callback."
    return f"{task.label or task.type} failed: {task.error}"

"""Test runs: a tree run against a submission's data by the real engine, with nothing sent and nothing kept.

``tree_test_run`` runs a tree (the draft, a published version, or any snapshot) over a scratch
copy of a record, by the same engine code a real submission uses, inside a transaction that is
rolled back at the end: the run, its tasks and the scratch record are never committed, and the
record it was copied from is never written. While it runs, ``events.effects`` points at a
``Capture`` (capture.py): emails are collected, HTTP requests are answered by canned responses
(canned.py) and never leave the machine, queue hand-offs are collected instead of reaching the
broker, and the clock is the test run's own. The runner then plays the worker's part: it runs each
collected hand-off, fast-forwards the clock to the next delay, retry or deadline, and answers
each step that waits for a callback with its canned callback, until every run has ended.

What it returns (result.py) is the timeline a real run would have had, with its would-be times,
the captured emails and requests, the record's final data and flags, and how the waiting page
would end.
"""

import copy
import time
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Min
from django.utils import timezone

from .. import effects, engine, queue
from ..models import RECORD_UPDATE, Node, Run, RunTask, TreeVersion, failures_handled, record_model
from ..nodes import registry
from ..nodes.base import steps_in_web_request
from ..storable import storage_problem
from ..versions import snapshot_index
from .canned import Canned, CannedError, canned_parse
from .capture import Capture, TestRunStopped
from .result import SimulatedRun, Step, TestRunResult, WaitingEnd

__all__ = ["CannedError", "TestRunError", "TestRunResult", "tree_test_run"]


class TestRunError(ValueError):
    """A test run that cannot start (bad data or canned answers): ``problems`` lists (path, message)."""

    __test__ = False

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{path}: {message}" if path else message for path, message in problems))


def tree_test_run(
    *,
    form,
    data: dict[str, Any] | None = None,
    record=None,
    event: str = RECORD_UPDATE,
    version: TreeVersion | None = None,
    snapshot: list[dict[str, Any]] | None = None,
    label: str = "",
    flags: dict[str, Any] | None = None,
    properties: dict[str, Any] | None = None,
    canned: Any = None,
    start=None,
) -> TestRunResult:
    """Run the tree of (form, event) as if the submission were made now; nothing is sent or kept.

    The submission: a past ``record`` of the form (its data and flags; templates see its own id,
    and the row itself is what the steps change, inside the transaction that is rolled back), or
    ``data`` typed in (and ``flags``), which must name fields the form has.
    ``version``: the published version to run (the events its steps fire run their live versions, as
    in a real run); None runs the draft (the tree as the builder shows it), and the events its steps
    fire run their drafts too;
    ``snapshot`` (with its ``label``) runs that tree instead (a replay's kept copy of a draft).
    ``canned``: the canned answers (a dict, its JSON text, or parsed Canned values). ``start``: the
    test run's clock at the submit (default: now). Raises TestRunError for bad input.
    """
    if record is not None:
        data, flags = record.data, record.flags  # a stored record keeps values of fields removed since
    elif not isinstance(data, dict):
        raise TestRunError([("data", "give the submission as a JSON object: {field name: value}")])
    else:
        known = {row.name for row in form.fields.all()}
        unknown = sorted(set(data) - known)
        if unknown:
            fields = ", ".join(sorted(known)) or "none"
            raise TestRunError([("data", f"the form has no field {', '.join(unknown)} (its fields: {fields})")])
        problem = storage_problem(data, "data")
        if problem:
            raise TestRunError([("data", problem)])
    try:
        answers = canned if _is_parsed(canned) else canned_parse(canned)
    except CannedError as exc:
        problems = [(f"canned.{path}" if path else "canned", message) for path, message in exc.problems]
        raise TestRunError(problems) from None
    if snapshot is not None:
        label = label or "the tree given"
    elif version is not None:
        snapshot, label = version.snapshot, f"version {version.number}"
    else:
        snapshot, label = Node.objects.snapshot(form, event), "draft"
    capture = Capture(
        start=start or timezone.now(),
        canned=answers,
        deadline=time.monotonic() + settings.EVENTS_TEST_RUN_MAX_SECONDS,
        drafts=label == "draft",  # the draft's trigger_event steps fire the drafts of their events too
    )
    with transaction.atomic():
        try:
            with effects.sandboxed(capture):
                result = _run(
                    form=form,
                    event=event,
                    version=version,
                    label=label,
                    snapshot=snapshot,
                    record=record,
                    data=copy.deepcopy(data),
                    flags=copy.deepcopy(flags or {}),
                    properties=properties,
                    capture=capture,
                )
        finally:
            transaction.set_rollback(True)  # the runs, their tasks and the record's changes are never committed
    return result


def _is_parsed(canned):
    return isinstance(canned, dict) and all(isinstance(value, Canned) for value in canned.values())


def _run(*, form, event, version, label, snapshot, record, data, flags, properties, capture):
    start = capture.now()
    Record = record_model()
    if record is None:  # data typed in: a record of its own, as a submit would store it
        record = Record.objects.create(form=form, data=copy.deepcopy(data), flags=copy.deepcopy(flags))
        before = set()
    else:  # the record itself, as it was submitted (its runs so far are not the test run's)
        record = Record.objects.select_related("form").get(pk=record.pk)
        before = set(Run.objects.filter(record=record).values_list("pk", flat=True))
    # Submitted now, by the test run's clock: delays count from here.
    Record.objects.filter(pk=record.pk).update(
        data=copy.deepcopy(data), flags=copy.deepcopy(flags), created_at=start, is_complete=not snapshot
    )
    record.data, record.flags, record.created_at = copy.deepcopy(data), copy.deepcopy(flags), start
    runs = Run.objects.filter(record=record).exclude(pk__in=before)
    stopped, inline = "", set()
    try:
        run = engine.run_start(
            record=record,
            event=event,
            is_submission=event == RECORD_UPDATE,
            snapshot=snapshot,
            version=version,
            properties=properties,
            debug=True,  # every step keeps its rendered config, as a run with collect_debug does
        )
        with steps_in_web_request():
            engine.run_inline(run=run)
        # What ended in the submit request (the inline phase); the rest a worker would run.
        inline = set(
            RunTask.objects.filter(run__in=runs).exclude(status=RunTask.Status.PENDING).values_list("pk", flat=True)
        )
        stopped = _drive(capture, runs)
    except TestRunStopped:
        stopped = (
            f"The test run was stopped after {settings.EVENTS_TEST_RUN_MAX_SECONDS:g} s "
            "(EVENTS_TEST_RUN_MAX_SECONDS): this is what had happened by then."
        )
    capture.deadline = None  # reading what happened is not bounded
    if not runs.exists():
        raise TestRunError([("", stopped or "The test run could not start a run.")])
    record.refresh_from_db()
    return _result(
        form=form,
        event=event,
        label=label,
        record=record,
        runs=list(runs.order_by("created_at", "depth")),
        data_before=data,
        flags_before=flags,
        capture=capture,
        inline=inline,
        stopped=stopped,
    )


def _drive(capture, runs):
    """Play the worker's part until every run of the test run has ended. Returns why it stopped early, or ""."""
    max_steps = settings.EVENTS_TEST_RUN_MAX_STEPS
    tasks = RunTask.objects.filter(run__in=runs.filter(status=Run.Status.RUNNING))
    for _ in range(max_steps):
        if capture.jobs:
            engine.task_job(task_id=capture.jobs.popleft())  # a hand-off: what a worker would run now
            continue
        if not runs.filter(status=Run.Status.RUNNING).exists():
            return ""
        due = list(tasks.due_for_dispatch().values_list("pk", flat=True))
        if due:
            for task_id in due:  # what the worker's dispatcher would hand off now
                queue.task_enqueue(task_id=task_id)
            continue
        timeouts = []
        answered = False
        for task in tasks.filter(status=RunTask.Status.AWAITING).order_by("started_at", "position"):
            answer = capture.canned_for({"name": task.name, "node_id": task.node_id})[0].callback
            if answer.status == "TIMEOUT":
                timeouts.append(task.deadline_at)
                continue
            engine.task_callback(
                task_id=task.pk,
                status=answer.status,
                output=answer.output,
                subtext=answer.subtext,
                note="test run: the canned callback answered",
            )
            answered = True
            break
        if answered:
            continue
        later = tasks.filter(status=RunTask.Status.PENDING, due_at__gt=capture.now()).aggregate(at=Min("due_at"))["at"]
        moments = [moment for moment in [later, *timeouts] if moment is not None]
        if not moments:
            return "The test run stopped: a run still runs, but nothing of it is due or waiting."
        capture.advance_to(min(moments))  # fast-forward to the next delay, retry or deadline
        engine.awaiting_expire(tasks=tasks)
    return f"The test run stopped after {max_steps} steps (EVENTS_TEST_RUN_MAX_STEPS)."


def _result(*, form, event, label, record, runs, data_before, flags_before, capture, inline, stopped):
    index = {run.pk: position for position, run in enumerate(runs)}
    started_by = {run.parent_task_id: index[run.pk] for run in runs if run.parent_task_id}
    simulated = []
    for run in runs:
        rows = run.in_tree_order(list(run.tasks.all()))
        handled = failures_handled(rows)
        places = snapshot_index(run.snapshot)
        steps = []
        for row in rows:
            try:
                node = places[row.node_id].node if row.node_id in places else {}
                answers = registry.get(row.type).test_run_answers(node.get("config") or {})
            except registry.UnknownNodeType:
                answers = ()
            traces = row.debug or []
            steps.append(
                Step(
                    id=row.pk,
                    node_id=row.node_id,
                    type=row.type,
                    name=row.name,
                    label=row.label,
                    visible=row.visible,
                    branch=row.branch,
                    depth=places[row.node_id].depth if row.node_id in places else 0,
                    is_container=row.is_container,
                    status=row.status,
                    phase="request" if row.pk in inline else "worker",
                    attempt=row.attempt,
                    max_attempts=row.max_attempts,
                    due_at=row.due_at,
                    deadline_at=row.deadline_at,
                    started_at=row.started_at,
                    finished_at=row.finished_at,
                    rendered_config=traces[-1].get("rendered_config") if traces else None,
                    output=row.output,
                    error=row.error,
                    failure=row.failure,
                    subtext=row.subtext,
                    logs=[entry.get("line", "") if isinstance(entry, dict) else str(entry) for entry in row.logs],
                    error_branch_taken=bool(handled.get(row.pk)),
                    canned=capture.canned_for({"name": row.name, "node_id": row.node_id})[0].as_document()
                    if answers
                    else None,
                    child_run=started_by.get(row.pk),
                )
            )
        simulated.append(
            SimulatedRun(
                index=index[run.pk],
                event=run.event,
                depth=run.depth,
                status=run.status,
                error=run.error,
                subtext=run.subtext,
                properties=run.properties,
                parent_index=index.get(run.parent_run_id),
                finished_at=run.finished_at,
                steps=steps,
            )
        )
    submission = runs[0]
    handled_failures = [
        {"label": step.label, "name": step.name} for step in simulated[0].steps if step.error_branch_taken
    ]
    if hasattr(form, "waiting_outcome"):
        state, message, redirect_url = form.waiting_outcome(
            record, run_status=submission.status, handled_failures=handled_failures
        )
    else:  # a form model of its own, without a waiting page
        state, message, redirect_url = submission.status, "", ""
    for captured in [*capture.emails, *capture.requests]:
        captured.run = index.get(captured.run, 0)
    named = {str(step.node_id) for run in simulated for step in run.steps} | {
        step.name for run in simulated for step in run.steps if step.name
    }
    return TestRunResult(
        form=form.slug,
        event=event,
        version=label,
        submitted_at=record.created_at,
        finished_at=capture.now(),
        data_before=data_before,
        flags_before=flags_before,
        data=record.data,
        flags=record.flags,
        runs=simulated,
        emails=capture.emails,
        http_calls=capture.requests,
        waiting=WaitingEnd(state=state, message=message, redirect_url=redirect_url, subtext=submission.subtext),
        unused_canned=sorted(key for key in capture.canned if key not in named),
        stopped=stopped,
        run_ids={text: f"‹run {index[run.pk]}›" for run in runs for text in (str(run.pk), run.pk.hex, run.reference)},
    )

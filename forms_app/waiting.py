"""What the waiting page shows for a record: one query, however many tasks the run has."""

import hashlib
from collections import namedtuple
from dataclasses import dataclass, field

from django.db import connection
from django.utils import timezone
from django.utils.text import slugify
from django.utils.translation import gettext_lazy as _

from events.engine import steps_not_started
from events.hotsql import Columns, HeadAndRows, Statement, db_value, split, table
from events.models import Node, Run, RunTask, failures_handled

from .messages import render_message  # noqa: F401  (where the waiting page's words were always found)
from .models import Form, Record

STEP_STATES = {
    RunTask.Status.PENDING: "queued",
    RunTask.Status.ACTIVE: "running",
    RunTask.Status.AWAITING: "waiting for a reply",
    RunTask.Status.COMPLETE: "done",
    RunTask.Status.FAILED: "failed",
    RunTask.Status.CANCELLED: "cancelled",
    RunTask.Status.SKIPPED: "skipped",
}
# A failed step whose error branch took care of it (or is taking care of it): it failed, and that is
# what the page says, but the run goes on.
HANDLED_STATE = "failed — handled"
HANDLING_STATE = "failed — being handled"
# What the page says for each step state. The states themselves stay as they are (the page's CSS
# classes are made of them); only these words are translated.
STEP_STATE_TEXTS = {
    "queued": _("queued"),
    "running": _("running"),
    "waiting for a reply": _("waiting for a reply"),
    "done": _("done"),
    "failed": _("failed"),
    "cancelled": _("cancelled"),
    "skipped": _("skipped"),
    HANDLED_STATE: _("failed — handled"),
    HANDLING_STATE: _("failed — being handled"),
}
# Computed once: slugify in the template was called for every step of every poll.
STEP_STATE_CLASSES = {state: slugify(state) for state in STEP_STATE_TEXTS}
CANCELLED_MESSAGE = _("The processing of your submission was cancelled before it finished.")
# The page's title and heading once the run is over (while it works: the form's waiting title).
FINISHED_TITLES = {
    "done": _("Your submission has been processed"),
    "failed": _("Your submission could not be processed"),
    "cancelled": _("The processing of your submission was cancelled"),
}
SLOW_POLL_FACTOR = 5
SLOW_POLL_MAX_SECONDS = 30


@dataclass
class Step:
    label: str
    state: str  # a key of STEP_STATE_TEXTS
    subtext: str = ""

    @property
    def state_text(self):
        return STEP_STATE_TEXTS[self.state]

    @property
    def state_class(self):
        """The state as a CSS class name (``step-{{ step.state_class }}``): "failed — handled" → "failed-handled"."""
        return STEP_STATE_CLASSES[self.state]


@dataclass
class Progress:
    state: str  # "working", "done", "failed" or "cancelled"
    steps: list = field(default_factory=list)
    done_count: int = 0  # tasks that are finished; for a stopped run, those that finished before it stopped
    total: int = 0
    subtext: str = ""
    reference: str = ""
    message: str = ""
    redirect_url: str = ""
    overdue: bool = False
    poll_seconds: int = 2
    handled_failures: list = field(default_factory=list)
    title: str = ""  # the page's title and heading

    def fingerprint(self):
        """A short digest of everything the status partial shows: the same digest, the same markup.

        The page sends it back with each poll; a poll that would show the same thing is answered
        204 and swaps nothing, so the live region is not read out again every few seconds.
        """
        shown = [self.state, self.done_count, self.total, self.subtext, self.reference, str(self.message)]
        shown += [self.overdue, self.poll_seconds, str(self.title)]
        shown += [(step.label, step.state, step.subtext) for step in self.steps]
        return hashlib.sha256(repr(shown).encode()).hexdigest()[:16]

    @property
    def finished(self):
        return self.state != "working"

    @property
    def stopped(self):
        """Failed or cancelled: the bar stays where the run stopped."""
        return self.state in ("failed", "cancelled")

    @property
    def percent(self):
        if self.state == "done":
            return 100
        if not self.total:
            return 0
        return round(100 * self.done_count / self.total)


def step_state(row, handled):
    if row.status == RunTask.Status.FAILED and row.id in handled:
        return HANDLED_STATE if handled[row.id] else HANDLING_STATE
    return STEP_STATES[row.status]


def is_done_before(row, stopped_at):
    """A finished task; once the run stopped, not one of those the stop cancelled (they never ran)."""
    if row.status not in RunTask.TERMINAL:
        return False
    cancelled_by_stop = (
        stopped_at is not None
        and row.status == RunTask.Status.CANCELLED
        and (row.finished_at is None or row.finished_at >= stopped_at)
    )
    return not cancelled_by_stop


# The state of a step that has no row yet, by its container's: waiting for it, skipped with it, or never
# to run (the container was cancelled, or failed before it started).
NOT_STARTED_STATUS = {
    RunTask.Status.PENDING: RunTask.Status.PENDING,
    RunTask.Status.ACTIVE: RunTask.Status.PENDING,
    RunTask.Status.AWAITING: RunTask.Status.PENDING,
    RunTask.Status.SKIPPED: RunTask.Status.SKIPPED,
}

RECORD_COLUMNS = Columns(Record, "rec")
FORM_COLUMNS = Columns(Form, "f")
RUN_COLUMNS = Columns(Run, "r")
TASK_COLUMNS = Columns(
    RunTask,
    "t",
    ["id", "parent", "branch", "node_id", "position", "name", "label", "status", "visible", "subtext", "finished_at"],
)
TaskRow = namedtuple("TaskRow", TASK_COLUMNS.attnames)  # id, parent_id, branch, ...

# The record of a token, its form, its submission run (NULLs without one) and the run's tasks: one
# statement, one round trip. Both halves are indexed reads: the token, then the run by its record and
# the tasks by their run.
SUBMISSION = HeadAndRows(
    (RECORD_COLUMNS, FORM_COLUMNS, RUN_COLUMNS),
    lambda connection: (
        f"FROM {table(Record, connection)} rec"
        f" INNER JOIN {table(Form, connection)} f ON f.id = rec.form_id"
        f" LEFT OUTER JOIN {table(Run, connection)} r ON r.record_id = rec.id AND r.is_submission = %s"
        " WHERE rec.token = %s"
    ),
    (TASK_COLUMNS,),
    lambda connection: (
        f"FROM {table(RunTask, connection)} t"
        f" INNER JOIN {table(Run, connection)} r ON r.id = t.run_id"
        f" INNER JOIN {table(Record, connection)} rec ON rec.id = r.record_id"
        " WHERE rec.token = %s AND r.is_submission = %s"
    ),
)
# A run's tasks, as the page shows them: one read by the run's index.
TASKS = Statement(
    lambda connection: f"SELECT {TASK_COLUMNS.sql(connection)} FROM {table(RunTask, connection)} t WHERE t.run_id = %s"
)


def submission_of(token):
    """(record with its form, its submission run or None, the run's task rows) for a record token: one query.

    The task rows are named rows (``TaskRow``) in no particular order. Raises Record.DoesNotExist for
    an unknown token.
    """
    head, task_rows = SUBMISSION.read(connection, [True, token, token, True])
    if head is None:
        raise Record.DoesNotExist(f"No record has the token {token!r}.")
    record_row, form_row, run_row = split(head, *SUBMISSION.head)
    record = RECORD_COLUMNS.load(record_row, connection)
    Record.form.field.set_cached_value(record, FORM_COLUMNS.load(form_row, connection))
    run = RUN_COLUMNS.load(run_row, connection)
    if run is not None:
        Run.record.field.set_cached_value(run, record)
    rows = [TaskRow(*TASK_COLUMNS.values(row, connection)) for row in task_rows]
    return record, run, rows


def run_task_rows(run):
    """The run's tasks as the waiting page reads them (named rows), in no particular order."""
    return [
        TaskRow(*TASK_COLUMNS.values(row, connection))
        for row in TASKS.rows(connection, [db_value(RunTask, "run", run.pk, connection)])
    ]


def record_progress(record, run=False, rows=None):
    """The state of a record's submission run, as the waiting page shows it (``run`` and its task
    ``rows``: already read, as ``submission_of`` reads them)."""
    form = record.form
    if run is False:
        run = (
            Run.objects.filter(record=record, is_submission=True)
            .only("id", "status", "subtext", "snapshot", "finished_at")
            .first()
        )
    if run is None:
        rows = []
    else:
        rows = list(rows) if rows is not None else run_task_rows(run)  # sorted here, below
        # A deferred container's steps have rows once it starts; until then the snapshot says what they are.
        rows += [
            TaskRow(
                None,
                container.id,
                Node.Branch.MAIN,
                node["id"],
                position,
                node.get("name", ""),
                node.get("label", "")[:200],
                NOT_STARTED_STATUS.get(container.status, RunTask.Status.CANCELLED),
                node.get("visible", False),
                "",
                container.finished_at,  # ended with it: before the run stopped, or by the stop
            )
            for node, container, position in steps_not_started(run.snapshot, rows)
        ]
        if any(row.branch == Node.Branch.ON_ERROR for row in rows):
            # Error-branch tasks are created when their step fails, after every other: the snapshot
            # says where they go.
            rows = run.in_tree_order(rows, key=lambda row: (row.node_id, row.position))
        else:
            rows.sort(key=lambda row: row.position)  # created in tree order, top to bottom, at the start
    stopped = run is not None and run.status in (Run.Status.FAILED, Run.Status.CANCELLED)
    stopped_at = run.finished_at if stopped else None
    handled = failures_handled(rows)
    progress = Progress(
        state="working",
        steps=[Step(row.label, step_state(row, handled), row.subtext) for row in rows if row.visible],
        done_count=sum(1 for row in rows if is_done_before(row, stopped_at)),
        total=len(rows),
        subtext=run.subtext if run else "",
        reference=run.reference if run else "",
        poll_seconds=max(1, form.poll_seconds),
        handled_failures=[{"label": row.label, "name": row.name} for row in rows if handled.get(row.id)],
        title=form.waiting_title,
    )
    state, message, redirect_url = form.waiting_outcome(
        record, run_status=run.status if run is not None else None, handled_failures=progress.handled_failures
    )
    if state != "working":
        progress.state, progress.message, progress.redirect_url = state, message, redirect_url
    elif run is not None and run.status == Run.Status.CANCELLED:
        progress.state = "cancelled"
        progress.message = CANCELLED_MESSAGE
    elif (timezone.now() - record.created_at).total_seconds() > form.max_wait_seconds:
        progress.overdue = True
        progress.poll_seconds = min(SLOW_POLL_MAX_SECONDS, progress.poll_seconds * SLOW_POLL_FACTOR)
    if progress.finished:
        progress.title = FINISHED_TITLES[progress.state]
    return progress

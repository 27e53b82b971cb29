"""What the waiting page shows for a record: a constant three queries, however many tasks the run has."""

from dataclasses import dataclass, field

from django.template import Context, Engine, TemplateSyntaxError
from django.utils import timezone

from events.models import Run, RunTask

STEP_STATES = {
    RunTask.Status.PENDING: "queued",
    RunTask.Status.ACTIVE: "running",
    RunTask.Status.AWAITING: "waiting for a reply",
    RunTask.Status.COMPLETE: "done",
    RunTask.Status.FAILED: "failed",
    RunTask.Status.CANCELLED: "cancelled",
    RunTask.Status.SKIPPED: "skipped",
}
HANDLED_STATE = "skipped"
SLOW_POLL_FACTOR = 5
SLOW_POLL_MAX_SECONDS = 30
_page_engine = Engine(builtins=["django.template.defaulttags", "django.template.defaultfilters"])


@dataclass
class Step:
    label: str
    state: str
    subtext: str = ""


@dataclass
class Progress:
    state: str  # "working", "done" or "failed"
    steps: list = field(default_factory=list)
    done_count: int = 0
    total: int = 0
    subtext: str = ""
    reference: str = ""
    message: str = ""
    redirect_url: str = ""
    overdue: bool = False
    poll_seconds: int = 2

    @property
    def finished(self):
        return self.state != "working"

    @property
    def percent(self):
        if self.state == "done" or not self.total:
            return 100 if self.state == "done" else 0
        return round(100 * self.done_count / self.total)


def render_message(template_text, record):
    """The admin's message, rendered over the record with autoescaping (submitted values are escaped)."""
    try:
        template = _page_engine.from_string(template_text)
    except TemplateSyntaxError:
        return template_text
    return template.render(Context({"record": record.data, "flags": record.flags}))


def record_progress(record):
    """The state of a record's submission run, as the waiting page shows it."""
    form = record.form
    run = Run.objects.filter(record=record, is_submission=True).only("id", "status", "subtext").first()
    rows = list(run.tasks.values_list("id", "parent_id", "branch", "label", "status", "visible", "subtext")) if run else []
    finished_tasks = sum(1 for row in rows if row[4] in RunTask.TERMINAL)
    # A failure that an error branch took care of is not the user's problem.
    handled = {parent_id for _, parent_id, branch, *_ in rows if branch == "on_error"}
    progress = Progress(
        state="working",
        steps=[
            Step(label, HANDLED_STATE if task_id in handled and status == RunTask.Status.FAILED else STEP_STATES[status],
                 subtext)
            for task_id, _, _, label, status, visible, subtext in rows if visible
        ],
        done_count=finished_tasks,
        total=len(rows),
        subtext=run.subtext if run else "",
        reference=run.reference if run else "",
        poll_seconds=max(1, form.poll_seconds),
    )
    failed = run is not None and run.status in (Run.Status.FAILED, Run.Status.CANCELLED)
    if form.wait_for == form.WaitFor.FLAG:
        done = bool(record.flags.get(form.wait_flag))
    else:
        done = run is None or run.status == Run.Status.COMPLETE
    if done:
        progress.state = "done"
        progress.redirect_url = form.done_redirect_url
        progress.message = render_message(form.done_message, record)
    elif failed:
        progress.state = "failed"
        progress.message = form.failed_message
    elif (timezone.now() - record.created_at).total_seconds() > form.max_wait_seconds:
        progress.overdue = True
        progress.poll_seconds = min(SLOW_POLL_MAX_SECONDS, progress.poll_seconds * SLOW_POLL_FACTOR)
    return progress

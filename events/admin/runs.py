"""Runs and tasks: read-only, but for settling an awaiting task by hand, re-running a failed one, cancelling a run."""

import json
import re
import uuid
from urllib.parse import urlencode

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.views.main import ORDER_VAR
from django.core.exceptions import PermissionDenied
from django.db.models import Q
from django.http import Http404, HttpResponseBadRequest, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.formats import date_format
from django.utils.html import format_html, format_html_join
from django.views.decorators.http import require_POST

from .. import engine
from ..engine.runs import runs_as_own_run
from ..models import (
    Node,
    Run,
    RunTask,
    failures_handled,
)
from ..storable import SUBTEXT_MAX_LENGTH, storage_problem
from .common import pretty_json, tree_editor_url, tree_overview_url  # noqa: F401

# Runs and tasks --------------------------------------------------------------------------------


def duration(task):
    if task.started_at is None:
        return ""
    end = task.finished_at or timezone.now()
    seconds = (end - task.started_at).total_seconds()
    text = f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.1f} s"
    return text if task.finished_at else f"{text} so far"


def is_overdue(task, now=None):
    """An awaiting task whose deadline has passed (the worker will soon fail it as timed out)."""
    return (
        task.status == RunTask.Status.AWAITING
        and task.deadline_at is not None
        and task.deadline_at <= (now or timezone.now())
    )


def deadline_text(task):
    if task.deadline_at is None:
        return ""
    return date_format(timezone.localtime(task.deadline_at), "Y-m-d H:i:s")


def json_text(value):
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=str)


# The run page shows each task's last lines only (a run may have many tasks, each with up to
# EVENTS_TASK_LOG_MAX_LINES lines); the task's own page shows them all.
RUN_PAGE_LOG_LINES = 50


def log_rows(task, last=None):
    """{"logs": the task's log lines as {"at", "line"} (only the ``last`` ones), "logs_left_out": how many earlier}."""
    logs = task.logs or []
    shown = logs[-last:] if last is not None else logs
    rows = [entry if isinstance(entry, dict) else {"at": "", "line": str(entry)} for entry in shown]
    return {"logs": rows, "logs_left_out": len(logs) - len(shown)}


def debug_traces(task):
    """The task's debug trace, one (title, pretty JSON) per attempt."""
    traces = []
    for index, trace in enumerate(task.debug or [], start=1):
        attempt = trace.get("attempt", index) if isinstance(trace, dict) else index
        traces.append({"title": f"attempt {attempt}", "json": json_text(trace)})
    return traces


def status_text(task, handled):
    """(CSS class suffix, words) of a task's status; a failure its error branch took care of says so."""
    if task.pk in handled:
        if handled[task.pk]:
            return "handled", f"{task.get_status_display()} — handled by its error branch"
        return "handling", f"{task.get_status_display()} — its error branch is running"
    return task.status, task.get_status_display()


def task_row(task, *, depth, node, handled, child_runs, now):
    """One step of the timeline that has a task: what the task did."""
    status_class, status_label = status_text(task, handled)
    return {
        "task": task,
        "node": node,
        "config": json_text(node["config"]) if node and node.get("config") else "",
        "depth": depth,
        "indent": depth * 2,
        "status_class": status_class,
        "status_label": status_label,
        "duration": duration(task),
        "deadline": deadline_text(task),
        "overdue": is_overdue(task, now),
        "is_error_step": task.branch == Node.Branch.ON_ERROR,
        "failure": task.get_failure_display() if task.failure else "",
        "can_redrive": task.status == RunTask.Status.FAILED,
        "child_runs": child_runs.get(task.pk, []),
        "debug": debug_traces(task),
        "output": json_text(task.output) if task.output else "",
        **log_rows(task, last=RUN_PAGE_LOG_LINES),
    }


def node_row(node, *, depth, is_error_step, why):
    """One node of the snapshot that has no task in this run: it did not run, and ``why`` says why if known."""
    return {
        "task": None,
        "node": node,
        "config": json_text(node["config"]) if node.get("config") else "",
        "depth": depth,
        "indent": depth * 2,
        "status_class": "not-run",
        "status_label": "Not started" if (why or {}).get("waiting") else "Did not run",
        "is_error_step": is_error_step,
        "why": why or {},
    }


def why_not_run(node, task, *, branch, child_runs):
    """Why the nodes in ``branch`` ("children" or "on_error") of ``node`` have no task in this run, or None.

    ``task`` is the node's task. A deferred container's steps (background, delay) get their tasks when
    it starts, unless it records them as a run of its own (event_type): then they are that run's
    tasks. An error branch's steps get theirs only when their step fails.
    """
    if branch == "children":
        if runs_as_own_run(node):
            return {"kind": "own_run", "container": task, "runs": child_runs.get(task.pk, [])}
        if task.is_container:  # a deferred one: a condition's steps have their tasks with it
            return {"kind": "not_started", "container": task, "waiting": not task.is_finished}
        return None
    if task.status == RunTask.Status.FAILED:
        return None
    return {"kind": "error_branch", "step": task}


def timeline(run, tasks, *, child_runs=None):
    """Every node of the run's snapshot in tree order, each with its task (or as not run) and its depth.

    A node comes before its steps, its steps before its error branch: the order in which they run,
    not the order tasks were created in (an error branch's tasks are created when it runs). A node
    with no task in this run (an error branch whose step did not fail, the steps of a container
    recorded as a run of its own) is a row that says it did not run. Tasks whose node is not in the
    snapshot come last, each under its parent task. ``child_runs`` maps a task id to the runs it
    started (trigger_event, a container with event_type).
    """
    child_runs = child_runs or {}
    tasks = list(tasks)
    now = timezone.now()
    handled = failures_handled(tasks)
    task_of = {task.node_id: task for task in tasks}
    depth_of = {}
    rows = []

    def visit(nodes, depth, *, is_error_step, why):
        for node in nodes:
            task = task_of.pop(node["id"], None)
            if task is None:
                rows.append(node_row(node, depth=depth, is_error_step=is_error_step, why=why))
            else:
                depth_of[task.pk] = depth
                rows.append(task_row(task, depth=depth, node=node, handled=handled, child_runs=child_runs, now=now))
            for branch in ("children", "on_error"):
                inner_why = why_not_run(node, task, branch=branch, child_runs=child_runs) if task else why
                visit(node.get(branch, []), depth + 1, is_error_step=branch == "on_error", why=inner_why)

    visit(run.snapshot or [], 0, is_error_step=False, why=None)
    for task in run.in_tree_order(task_of.values()):
        depth = depth_of.get(task.parent_id, -1) + 1 if task.parent_id else 0
        depth_of[task.pk] = depth
        rows.append(task_row(task, depth=depth, node=None, handled=handled, child_runs=child_runs, now=now))
    return rows


def runs_by_parent_task(run):
    grouped = {}
    for child in run.child_runs.order_by("created_at"):
        grouped.setdefault(child.parent_task_id, []).append(child)
    return grouped


def redrive_message(task, redriven):
    """(level, text) telling an admin what a re-run did."""
    if redriven:
        return messages.SUCCESS, (
            f"Re-running “{task}” (run {task.run.reference}): the run goes on from this step; "
            "the failure stays on record in its log."
        )
    return messages.WARNING, (
        f"“{task}” (run {task.run.reference}) was not re-run: it is no longer failed, or its run has moved on."
    )


# Finding a run from what a user or a log quotes -----------------------------------------------------

REFERENCE_DIGITS = re.compile(r"[0-9a-f]{8,32}")
TOKEN = re.compile(r"[A-Za-z0-9_-]{16,64}")


def reference_range(term):
    """(lowest, highest) run id that ``term`` names, or None: a run's reference or a longer start of its id.

    The reference is the id's first 8 hex digits, upper case (``Run.reference``); a whole id, with or
    without its dashes, works too. A range on the primary key rather than a text match: the id's text
    differs between PostgreSQL (a uuid, with dashes) and SQLite (32 hex digits), its order does not,
    and the range uses the index.
    """
    digits = term.strip().lstrip("#").lower().replace("-", "")
    if not REFERENCE_DIGITS.fullmatch(digits):
        return None
    return uuid.UUID(digits.ljust(32, "0")), uuid.UUID(digits.ljust(32, "f"))


def tokens_in(term):
    """The record tokens ``term`` may hold: itself, or a segment of a URL's path (the waiting page's)."""
    return [part for part in term.strip().split("/") if TOKEN.fullmatch(part)]


def runs_named_by(term, *, prefix=""):
    """A filter for the runs ``term`` names by reference or by their record's token, or None.

    ``prefix`` leads to the run from another model ("run__" from a task).
    """
    named = Q()
    span = reference_range(term)
    if span is not None:
        named |= Q(**{f"{prefix}id__range": span})
    tokens = tokens_in(term)
    if tokens:
        named |= Q(**{f"{prefix}record__token__in": tokens})
    return named or None


class FindsRunsByReference:
    """Admin search that also finds runs by reference (as the failure page shows it) or record token.

    The whole search text is tried as one reference or token, besides the admin's word-by-word search
    over ``search_fields``.
    """

    run_path = ""

    def get_search_results(self, request, queryset, search_term):
        results, may_have_duplicates = super().get_search_results(request, queryset, search_term)
        named = runs_named_by(search_term, prefix=self.run_path) if search_term else None
        if named is not None:
            results |= queryset.filter(named)
        return results, may_have_duplicates


class ReadOnlyAdmin(admin.ModelAdmin):
    """Rows written by the engine only: nothing to add, change or delete by hand."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


def child_runs_html(started_by):
    """Links to the runs a run or a step started, with their status."""
    children = list(started_by.child_runs.order_by("created_at"))
    if not children:
        return "—"
    return format_html_join(
        ", ",
        '<a href="{}">{}</a> ({})',
        (
            (reverse("admin:events_run_change", args=[child.pk]), child, child.get_status_display())
            for child in children
        ),
    )


@admin.register(Run)
class RunAdmin(FindsRunsByReference, ReadOnlyAdmin):
    list_display = ("reference", "form", "record_link", "event", "status", "created_at", "finished_at")
    list_filter = ("form", "event", "status", "is_submission", "created_at")
    search_fields = ("form__title", "form__slug", "event")
    search_help_text = (
        "A run's reference (the failure page shows it to the user, e.g. 1A2B3C4D) or id, a record's token or "
        "waiting-page URL, a form's title or slug, an event."
    )
    list_select_related = ("form", "record__form")
    date_hierarchy = "created_at"
    actions = ["cancel_runs"]
    change_form_template = "admin/events/run/change_form.html"
    fieldsets = [
        (
            None,
            {
                "fields": [
                    "reference",
                    "form",
                    "record_link",
                    "event",
                    "status",
                    "is_submission",
                    "parent_run_link",
                    "depth",
                    "child_runs_links",
                    "subtext",
                    "error",
                    "created_at",
                    "finished_at",
                ]
            },
        ),
        ("Data", {"fields": ["properties_json", "record_data_json"]}),
        ("Snapshot of the tree", {"fields": ["snapshot_json"], "classes": ["collapse"]}),
    ]
    readonly_fields = [
        "reference",
        "record_link",
        "parent_run_link",
        "child_runs_links",
        "properties_json",
        "record_data_json",
        "snapshot_json",
    ]

    @admin.display(description="reference")
    def reference(self, run):
        return run.reference

    @admin.display(description="record", ordering="record")
    def record_link(self, run):
        url = reverse("admin:forms_app_record_change", args=[run.record_id])
        return format_html('<a href="{}">{}</a>', url, run.record)

    @admin.display(description="parent run")
    def parent_run_link(self, run):
        if run.parent_run_id is None:
            return "—"
        url = reverse("admin:events_run_change", args=[run.parent_run_id])
        link = format_html('<a href="{}">{}</a>', url, run.parent_run)
        if run.parent_task_id is None:
            return link
        step = reverse("admin:events_runtask_change", args=[run.parent_task_id])
        return format_html('{}, started by its step <a href="{}">{}</a>', link, step, run.parent_task)

    @admin.display(description="child runs")
    def child_runs_links(self, run):
        return child_runs_html(run)

    @admin.display(description="properties")
    def properties_json(self, run):
        return pretty_json(run.properties)

    @admin.display(description="record data")
    def record_data_json(self, run):
        return pretty_json({"data": run.record.data, "flags": run.record.flags})

    @admin.display(description="snapshot")
    def snapshot_json(self, run):
        return pretty_json(run.snapshot)

    def has_cancel_permission(self, request):
        return request.user.has_perm("events.change_run")

    @admin.action(description="Cancel the selected running runs", permissions=["cancel"])
    def cancel_runs(self, request, queryset):
        """First a confirmation page (like delete) listing what will stop and what is left, then the cancels."""
        runs = list(queryset.select_related("form", "record__form"))
        running = [run for run in runs if run.status == Run.Status.RUNNING]
        if running and request.POST.get("post") != "yes":
            return self.cancel_confirmation(request, runs, running)
        cancelled = sum(engine.run_cancel(run=run) for run in running)
        skipped = len(runs) - cancelled
        if cancelled:
            messages.success(request, f"Cancelled {cancelled} run(s).")
        if skipped:
            messages.warning(request, f"{skipped} run(s) had already finished and were left as they were.")
        return None

    def cancel_confirmation(self, request, runs, running):
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": "Cancel runs: are you sure?",
            "running": running,
            "finished": [run for run in runs if run.status != Run.Status.RUNNING],
            "runs": runs,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        }
        return TemplateResponse(request, "admin/events/run/cancel_confirmation.html", context)

    def get_urls(self):
        return [
            path("<path:object_id>/cancel/", self.admin_site.admin_view(self.cancel_view), name="events_run_cancel"),
            *super().get_urls(),
        ]

    def cancel_view(self, request, object_id):
        return require_POST(self._cancel)(request, object_id)

    def _cancel(self, request, object_id):
        if not self.has_cancel_permission(request):
            raise PermissionDenied
        run = get_object_or_404(Run, pk=object_id)
        if engine.run_cancel(run=run):
            messages.success(request, f"Run {run.reference} cancelled.")
        else:
            messages.warning(request, f"Run {run.reference} had already finished; nothing was changed.")
        return HttpResponseRedirect(reverse("admin:events_run_change", args=[run.pk]))

    def change_view(self, request, object_id, form_url="", extra_context=None):
        run = self.get_object(request, object_id)
        extra_context = {**(extra_context or {})}
        if run is not None:
            rows = timeline(run, run.tasks.all(), child_runs=runs_by_parent_task(run))
            extra_context.update(
                timeline=rows,
                handled_count=sum(1 for row in rows if row["status_class"] == "handled"),
                not_run_count=sum(1 for row in rows if row["task"] is None),
                can_cancel=run.status == Run.Status.RUNNING and self.has_cancel_permission(request),
                can_settle=request.user.has_perm("events.change_runtask"),
                can_redrive=request.user.has_perm("events.change_runtask"),
                cancel_url=reverse("admin:events_run_cancel", args=[run.pk]),
                tasks_url=reverse("admin:events_runtask_changelist") + "?" + urlencode({"run__id__exact": run.pk}),
            )
        return super().change_view(request, object_id, form_url, extra_context)


class AwaitingFilter(admin.SimpleListFilter):
    """Tasks waiting for a callback, all of them or by where they stand against their deadline."""

    title = "waiting for a callback"
    parameter_name = "awaiting"

    def lookups(self, request, model_admin):
        return [("all", "All awaiting"), ("overdue", "Past their deadline"), ("on_time", "Before their deadline")]

    def queryset(self, request, queryset):
        now = timezone.now()
        awaiting = queryset.filter(status=RunTask.Status.AWAITING)
        if self.value() == "all":
            return awaiting
        if self.value() == "overdue":
            return queryset.awaiting_past_deadline(now)
        if self.value() == "on_time":
            return awaiting.exclude(deadline_at__lte=now)
        return queryset


# What "by hand" sends to the engine, per outcome: the callback status, the log note, the wording.
BY_HAND = {
    "complete": {"status": "SUCCESS", "note": "completed by hand by {user}", "verb": "Complete", "done": "Completed"},
    "fail": {"status": "FAILURE", "note": "failed by hand by {user}", "verb": "Fail", "done": "Failed"},
}


class ByHandForm(forms.Form):
    """What an admin may send with a by-hand answer, as a callback may: output, subtext, a log line."""

    output = forms.JSONField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 4, "cols": 60, "placeholder": '{"zipFileLocation": "…"}'}),
        help_text="A JSON object merged into the step's output, as a callback's output is: later steps read it "
        "as tasks.<name>.output. Leave empty to keep the output as it is.",
    )
    subtext = forms.CharField(
        required=False,
        max_length=SUBTEXT_MAX_LENGTH,
        help_text="The step's and the run's progress text (the waiting page shows it). Leave empty to keep it.",
    )
    log = forms.CharField(
        required=False,
        label="Log line",
        help_text="A line for the step's log, before the one that says who answered by hand (a very long line "
        "is cut, as any log line is).",
    )

    def clean_output(self):
        output = self.cleaned_data["output"]
        if output is None:
            return None
        if not isinstance(output, dict):
            raise forms.ValidationError('The output must be a JSON object, such as {"id": 42}.')
        problem = storage_problem(output, "output")
        if problem:
            raise forms.ValidationError(f"The output cannot be stored: {problem}.")
        return output

    def clean_subtext(self):
        return self._storable("subtext")

    def clean_log(self):
        return self._storable("log")

    def _storable(self, name):
        text = self.cleaned_data[name]
        problem = storage_problem(text, name)
        if problem:
            raise forms.ValidationError(f"This text cannot be stored: {problem}.")
        return text


def tasks_settle_by_hand(tasks, *, outcome, user, output=None, subtext="", log=""):
    """Answer each awaiting task as its callback would; first answer wins, as for a real callback.

    ``output`` (merged into each task's output), ``subtext`` (the task's and its run's) and ``log``
    (a line before the note naming ``user``) go with the answer; empty ones change nothing.
    Returns (applied, skipped): the tasks this call settled, and the others with their current status.
    """
    how = BY_HAND[outcome]
    applied, skipped = [], []
    for task in tasks:
        result = engine.task_callback(
            task_id=task.pk,
            status=how["status"],
            logs=[log] if log else [],
            output=output or None,
            subtext=subtext or None,
            note=how["note"].format(user=user),
            error=(f"Failed by hand by {user}" + (f": {subtext}" if subtext else ".")) if outcome == "fail" else "",
        )
        if result.applied:
            applied.append(task)
        else:
            skipped.append((task, RunTask.Status(result.status).label))
    return applied, skipped


@admin.register(RunTask)
class RunTaskAdmin(FindsRunsByReference, ReadOnlyAdmin):
    """Tasks are the engine's rows; an admin may only answer an awaiting one by hand, or re-run a failed one."""

    # New columns go last: a column's number is in sort links (o=7 is the deadline).
    list_display = (
        "__str__",
        "run_link",
        "type",
        "status",
        "attempts",
        "due_at",
        "deadline",
        "started_at",
        "finished_at",
        "failure",
        "branch_text",
    )
    list_filter = (AwaitingFilter, "status", "failure", "branch", "type", "is_container", "run__form")
    list_select_related = ("run",)
    search_fields = ("name", "label", "type", "run__form__title", "run__form__slug")
    search_help_text = (
        "A step's name, label or type, a form's title or slug, or its run's reference or record token "
        "(the tasks of that run)."
    )
    run_path = "run__"
    actions = ["redrive_tasks", "complete_by_hand", "fail_by_hand"]
    change_form_template = "admin/events/runtask/change_form.html"
    fieldsets = [
        (
            None,
            {
                "fields": [
                    "run_link",
                    "parent",
                    "node_id",
                    "position",
                    "type",
                    "name",
                    "label",
                    "visible",
                    "is_container",
                    "branch_text",
                    "status",
                    "attempts",
                    "failure",
                    "subtext",
                    "error",
                    "child_runs_links",
                ]
            },
        ),
        (
            "Timing",
            {
                "fields": [
                    "created_at",
                    "due_at",
                    "deadline",
                    "enqueued_at",
                    "lease_expires_at",
                    "started_at",
                    "finished_at",
                    "duration",
                ]
            },
        ),
        ("Logs and output", {"fields": ["logs_text", "output_json"]}),
        ("Debug trace", {"fields": ["collect_debug", "debug_json"]}),
    ]
    readonly_fields = [
        "run_link",
        "branch_text",
        "attempts",
        "deadline",
        "duration",
        "logs_text",
        "output_json",
        "child_runs_links",
        "debug_json",
    ]

    def get_ordering(self, request):
        """Awaiting tasks come soonest deadline first (a column header click still wins)."""
        if request.GET.get(AwaitingFilter.parameter_name) and ORDER_VAR not in request.GET:
            return ["deadline_at"]
        return super().get_ordering(request)

    @admin.display(description="run", ordering="run")
    def run_link(self, task):
        url = reverse("admin:events_run_change", args=[task.run_id])
        return format_html('<a href="{}">{}</a>', url, task.run.reference)

    @admin.display(description="attempts")
    def attempts(self, task):
        return f"{task.attempt}/{task.max_attempts}"

    @admin.display(description="branch", ordering="branch")
    def branch_text(self, task):
        if task.branch == Node.Branch.ON_ERROR:
            return format_html('<strong class="events-error-step">{}</strong>', "error branch")
        return "main"

    @admin.display(description="runs it started")
    def child_runs_links(self, task):
        return child_runs_html(task)

    @admin.display(description="debug trace")
    def debug_json(self, task):
        traces = debug_traces(task)
        if not traces:
            return "—" if task.collect_debug else "— (off: collect_debug on the form or a container records one)"
        return format_html_join(
            "",
            '<h4 class="events-debug-title">{}</h4><pre class="events-json events-debug">{}</pre>',
            ((trace["title"], trace["json"]) for trace in traces),
        )

    @admin.display(description="deadline", ordering="deadline_at")
    def deadline(self, task):
        text = deadline_text(task)
        if not text:
            return "—"
        if is_overdue(task):
            return format_html('{} <strong class="events-overdue">overdue</strong>', text)
        return text

    @admin.display(description="duration")
    def duration(self, task):
        return duration(task) or "—"

    @admin.display(description="logs")
    def logs_text(self, task):
        rows = log_rows(task)["logs"]
        if not rows:
            return "—"
        return format_html(
            '<pre class="events-logs">{}</pre>',
            format_html_join("\n", "{}  {}", ((row.get("at", ""), row.get("line", "")) for row in rows)),
        )

    @admin.display(description="output")
    def output_json(self, task):
        return pretty_json(task.output)

    # Settling an awaiting task by hand, re-running a failed one -----------------------------------

    def has_settle_permission(self, request):
        return request.user.has_perm("events.change_runtask")

    def has_redrive_permission(self, request):
        return request.user.has_perm("events.change_runtask")

    @admin.action(description="Re-run the selected failed tasks (the run goes on from there)", permissions=["redrive"])
    def redrive_tasks(self, request, queryset):
        for task in queryset.select_related("run"):
            self.redrive(request, task)

    def redrive(self, request, task):
        level, text = redrive_message(task, engine.task_redrive(task_id=task.pk))
        messages.add_message(request, level, text)

    def redrive_view(self, request, object_id):
        return require_POST(self._redrive)(request, object_id)

    def task_or_404(self, request, object_id, *, allowed):
        """The task of a per-task action view, for a user ``allowed`` to act on it."""
        if not allowed:
            raise PermissionDenied
        task = self.get_object(request, object_id)
        if task is None:
            raise Http404("No such task.")
        return task

    def _redrive(self, request, object_id):
        """POST: re-run the failed task; back to its run's timeline when asked from there, else to the task."""
        task = self.task_or_404(request, object_id, allowed=self.has_redrive_permission(request))
        self.redrive(request, task)
        if request.POST.get("back_to") == "run":
            return HttpResponseRedirect(reverse("admin:events_run_change", args=[task.run_id]) + f"#task-{task.pk}")
        return HttpResponseRedirect(reverse("admin:events_runtask_change", args=[task.pk]))

    @admin.action(description="Complete by hand (as a SUCCESS callback)", permissions=["settle"])
    def complete_by_hand(self, request, queryset):
        return self.settle_action(request, queryset, "complete")

    @admin.action(description="Fail by hand (as a FAILURE callback)", permissions=["settle"])
    def fail_by_hand(self, request, queryset):
        return self.settle_action(request, queryset, "fail")

    def settle_action(self, request, queryset, outcome):
        """First a confirmation page (like delete) that takes output, subtext and a log line, then the callbacks."""
        tasks = list(queryset.select_related("run"))
        if not any(task.status == RunTask.Status.AWAITING for task in tasks):
            self.settle(request, tasks, outcome)  # nothing to answer: says so
            return None
        if request.POST.get("post") != "yes":
            return self.settle_confirmation(request, tasks, outcome, ByHandForm(), action=f"{outcome}_by_hand")
        form = ByHandForm(request.POST)
        if not form.is_valid():
            return self.settle_confirmation(request, tasks, outcome, form, action=f"{outcome}_by_hand")
        self.settle(request, tasks, outcome, **form.cleaned_data)
        return None

    def settle(self, request, tasks, outcome, **sent):
        """Answer ``tasks`` by hand with what was ``sent`` along (ByHandForm's fields), and report."""
        applied, skipped = tasks_settle_by_hand(tasks, outcome=outcome, user=request.user, **sent)
        how = BY_HAND[outcome]
        if applied:
            messages.success(
                request,
                f"{how['done']} {len(applied)} task(s) by hand: "
                + ", ".join(f"{task} (run {task.run.reference})" for task in applied)
                + ".",
            )
        if skipped:
            messages.warning(
                request,
                f"{len(skipped)} task(s) were no longer awaiting and were left as they were: "
                + ", ".join(f"{task} ({status})" for task, status in skipped)
                + ".",
            )

    def settle_confirmation(self, request, tasks, outcome, form, *, action=None, back_url=None):
        how = BY_HAND[outcome]
        if back_url is None:
            back_url = (
                reverse("admin:events_runtask_change", args=[tasks[0].pk])
                if len(tasks) == 1
                else reverse("admin:events_runtask_changelist")
            )
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": f"{how['verb']} by hand: are you sure?",
            "how": how,
            "outcome": outcome,
            "awaiting": [task for task in tasks if task.status == RunTask.Status.AWAITING],
            "not_awaiting": [task for task in tasks if task.status != RunTask.Status.AWAITING],
            "tasks": tasks,
            "form": form,
            "back_url": back_url,
            "action": action,  # None: the per-task page posts back to itself
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "note": how["note"].format(user=request.user),
        }
        return TemplateResponse(request, "admin/events/runtask/by_hand_confirmation.html", context)

    def get_urls(self):
        return [
            path(
                "<path:object_id>/by-hand/<str:outcome>/",
                self.admin_site.admin_view(self.by_hand_view),
                name="events_runtask_by_hand",
            ),
            path(
                "<path:object_id>/redrive/",
                self.admin_site.admin_view(self.redrive_view),
                name="events_runtask_redrive",
            ),
            *super().get_urls(),
        ]

    def by_hand_view(self, request, object_id, outcome):
        """GET asks for confirmation (and what to send along); POST answers the task and goes back.

        Back to the task's page, or to its row in the run's timeline when asked from there (?back_to=run).
        """
        task = self.task_or_404(request, object_id, allowed=self.has_settle_permission(request))
        if outcome not in BY_HAND or request.method not in ("GET", "POST"):
            return HttpResponseBadRequest("Unknown outcome.")
        back_url = reverse("admin:events_runtask_change", args=[task.pk])
        if request.GET.get("back_to") == "run":
            back_url = reverse("admin:events_run_change", args=[task.run_id]) + f"#task-{task.pk}"
        form = ByHandForm(request.POST if request.method == "POST" else None)
        if not form.is_valid():  # an unbound form (GET) is not valid either
            return self.settle_confirmation(request, [task], outcome, form, back_url=back_url)
        self.settle(request, [task], outcome, **form.cleaned_data)
        return HttpResponseRedirect(back_url)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        task = self.get_object(request, object_id)
        extra_context = {**(extra_context or {})}
        if task is not None and task.status == RunTask.Status.AWAITING and self.has_settle_permission(request):
            extra_context["by_hand_urls"] = {
                outcome: reverse("admin:events_runtask_by_hand", args=[task.pk, outcome]) for outcome in BY_HAND
            }
        if task is not None and task.status == RunTask.Status.FAILED and self.has_redrive_permission(request):
            extra_context["redrive_url"] = reverse("admin:events_runtask_redrive", args=[task.pk])
        return super().change_view(request, object_id, form_url, extra_context)

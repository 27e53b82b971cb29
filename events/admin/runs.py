"""Runs and tasks: read-only, but for settling an awaiting task by hand, re-running a failed one, cancelling a run."""

import json
from urllib.parse import urlencode

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.views.main import ORDER_VAR
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponseBadRequest, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.formats import date_format
from django.utils.html import format_html, format_html_join
from django.views.decorators.http import require_POST

from .. import engine
from ..models import (
    Node,
    Run,
    RunTask,
    failures_handled,
)
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


def timeline(tasks, *, child_runs=None):
    """The run's tasks, in the order given (the run's tree order), each with its depth (indent by parent).

    ``child_runs`` maps a task id to the runs it started (trigger_event, a container with event_type).
    """
    tasks = list(tasks)
    now = timezone.now()
    handled = failures_handled(tasks)
    depth_of = {}
    rows = []
    for task in tasks:
        depth = depth_of.get(task.parent_id, -1) + 1 if task.parent_id else 0
        depth_of[task.pk] = depth
        status_class, status_label = status_text(task, handled)
        rows.append(
            {
                "task": task,
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
                "child_runs": (child_runs or {}).get(task.pk, []),
                "debug": debug_traces(task),
                "output": json_text(task.output) if task.output else "",
                **log_rows(task, last=RUN_PAGE_LOG_LINES),
            }
        )
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
class RunAdmin(ReadOnlyAdmin):
    list_display = ("reference", "form", "record_link", "event", "status", "created_at", "finished_at")
    list_filter = ("form", "event", "status", "is_submission")
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
        cancelled = sum(engine.run_cancel(run=run) for run in queryset.running())
        skipped = queryset.count() - cancelled
        messages.success(request, f"Cancelled {cancelled} run(s).")
        if skipped:
            messages.warning(request, f"{skipped} run(s) had already finished and were left as they were.")

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
            rows = timeline(run.in_tree_order(run.tasks.all()), child_runs=runs_by_parent_task(run))
            extra_context.update(
                timeline=rows,
                handled_count=sum(1 for row in rows if row["status_class"] == "handled"),
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


def tasks_settle_by_hand(tasks, *, outcome, user):
    """Answer each awaiting task as its callback would; first answer wins, as for a real callback.

    Returns (applied, skipped): the tasks this call settled, and the others with their current status.
    """
    how = BY_HAND[outcome]
    applied, skipped = [], []
    for task in tasks:
        note = how["note"].format(user=user)
        result = engine.task_callback(
            task_id=task.pk,
            status=how["status"],
            logs=[],
            note=note,
            error=f"Failed by hand by {user}." if outcome == "fail" else "",
        )
        if result.applied:
            applied.append(task)
        else:
            skipped.append((task, RunTask.Status(result.status).label))
    return applied, skipped


@admin.register(RunTask)
class RunTaskAdmin(ReadOnlyAdmin):
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
    list_filter = (AwaitingFilter, "status", "failure", "branch", "type", "is_container")
    list_select_related = ("run",)
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
        """First a confirmation page (like delete), then the callbacks."""
        tasks = list(queryset.select_related("run"))
        if request.POST.get("post") != "yes" and any(task.status == RunTask.Status.AWAITING for task in tasks):
            return self.settle_confirmation(request, tasks, outcome, action=f"{outcome}_by_hand")
        self.settle(request, tasks, outcome)
        return None

    def settle(self, request, tasks, outcome):
        applied, skipped = tasks_settle_by_hand(tasks, outcome=outcome, user=request.user)
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

    def settle_confirmation(self, request, tasks, outcome, *, action=None):
        how = BY_HAND[outcome]
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": f"{how['verb']} by hand: are you sure?",
            "how": how,
            "outcome": outcome,
            "awaiting": [task for task in tasks if task.status == RunTask.Status.AWAITING],
            "not_awaiting": [task for task in tasks if task.status != RunTask.Status.AWAITING],
            "tasks": tasks,
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
        """GET asks for confirmation; POST answers the task and goes back to it."""
        task = self.task_or_404(request, object_id, allowed=self.has_settle_permission(request))
        if outcome not in BY_HAND or request.method not in ("GET", "POST"):
            return HttpResponseBadRequest("Unknown outcome.")
        if request.method == "GET":
            return self.settle_confirmation(request, [task], outcome)
        self.settle(request, [task], outcome)
        return HttpResponseRedirect(reverse("admin:events_runtask_change", args=[task.pk]))

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

"""Admin: the event-tree editor and its overview, runs and tasks (read-only, but for settling an
awaiting task by hand and re-running a failed one), and API keys (shown once, stored hashed)."""

import json
from urllib.parse import urlencode

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.views.main import IGNORED_PARAMS, ORDER_VAR, PAGE_VAR, SEARCH_VAR
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.http import Http404, HttpResponseBadRequest, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.cache import add_never_cache_headers
from django.utils.formats import date_format
from django.utils.html import format_html, format_html_join
from django.views.decorators.http import require_POST
from treebeard.admin import TreeAdmin

from . import engine
from .admin_forms import config_field_name, node_form_for, node_type_or_none
from .models import (
    RECORD_UPDATE,
    ApiKey,
    InvalidTreeOperation,
    Node,
    Run,
    RunTask,
    failures_handled,
    form_model,
    tree_nest,
)
from .nodes import registry

# Query parameters that choose *which* tree the editor shows; they keep the tree view (drag and drop).
TREE_PARAMS = {"form__id__exact", "event", "event__exact"}


def pretty_json(value):
    """JSON as an escaped, indented <pre> block."""
    text = json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=str)
    return format_html('<pre class="events-json">{}</pre>', text)


def tree_editor_url(form_id, event=RECORD_UPDATE):
    return reverse("admin:events_node_changelist") + "?" + urlencode({"form__id__exact": form_id, "event": event})


def tree_overview_url(form_id, event=RECORD_UPDATE):
    return reverse("admin:events_node_overview", kwargs={"form_id": form_id, "event": event})


# The event-tree editor -------------------------------------------------------------------------


def node_mode(node_type, config, *, in_background):
    """How a node runs, in the words of the overview: inline, background, in background, delay: …"""
    if node_type is None:
        return "unknown type"
    try:
        return node_type.mode(config or {}, in_background=in_background)
    except Exception as exc:  # a stored config the type no longer understands
        return f"(cannot describe: {exc.__class__.__name__})"


def safe_describe(node_type, config):
    try:
        return node_type.describe(config or {})
    except Exception as exc:  # a stored config the type no longer understands
        return f"(cannot describe: {exc.__class__.__name__})"


def node_markers(node, node_type, config):
    """The short notes the overview shows beside a node: retries, own runs, debug traces, waiting."""
    markers = []
    retry = node.retry_policy.describe()
    if retry:
        markers.append(retry)
    if node_type is not None and node_type.is_deferred and (config.get("event_type") or config.get("event_properties")):
        event = config.get("event_type") or node.event
        markers.append(
            f"as its own run of “{event}”" + (" with its own properties" if config.get("event_properties") else "")
        )
    if config.get("collect_debug"):
        markers.append("collects debug traces")
    if config.get("wait_for_callback"):
        markers.append("waits for callback")
    if node.visible:
        markers.append("visible on the waiting page")
    return markers


def overview_tree(nodes):
    """Nest the nodes of one tree (ordered by path) into items for the overview template.

    An item's ``children`` are its steps; ``on_error`` its error branch. A node runs in the
    background under a deferred container, after a go_async marker in its sequence, or in the
    error branch of a node that does.
    """
    async_after = set()  # (item id or None for the top level, branch) of sequences past a go_async

    def item_for(node, parent):
        node_type = node_type_or_none(node.type)
        config = node.config or {}
        is_error_step = parent is not None and node.branch == Node.Branch.ON_ERROR
        sequence = (id(parent) if parent else None, node.branch)
        in_background = sequence in async_after or bool(
            parent and (parent["in_background"] or (not is_error_step and parent["is_deferred"]))
        )
        if node_type is not None and node_type.backgrounds_later_siblings:
            async_after.add(sequence)
        mode = node_mode(node_type, config, in_background=in_background)
        summary = safe_describe(node_type, config) if node_type else ""
        return {
            "node": node,
            "label": node.display_label(),
            "type_label": node.type_label,
            "summary": "" if mode.endswith(summary) else summary,  # a delay's rule is already its mode
            "mode": mode,
            "is_container": bool(node_type and node_type.is_container),
            "is_deferred": bool(node_type and node_type.is_deferred),
            "in_background": in_background,
            "markers": node_markers(node, node_type, config),
            "children": [],
            "on_error": [],
        }

    return tree_nest(nodes, item_for)


@admin.register(Node)
class NodeAdmin(TreeAdmin):
    """Add, nest, reorder and move nodes; each type's config as real form fields."""

    form = node_form_for(None)
    list_display = ("display_label", "type_label", "summary", "visible", "form", "event")
    list_display_links = ("display_label",)
    list_filter = ("form", "event", "type")
    search_fields = ("name", "label")
    list_select_related = ("form",)
    change_list_template = "admin/events/node/change_list.html"

    @admin.display(description="node")
    def display_label(self, node):
        return node.display_label()

    @admin.display(description="type")
    def type_label(self, node):
        return node.type_label

    @admin.display(description="does")
    def summary(self, node):
        node_type = node_type_or_none(node.type)
        return safe_describe(node_type, node.config) if node_type else ""

    @admin.display(description="event tree")
    def tree_links(self, node):
        return format_html(
            '{} · {} · <a href="{}">editor</a> · <a href="{}">overview</a>',
            node.form,
            node.event,
            tree_editor_url(node.form_id, node.event),
            tree_overview_url(node.form_id, node.event),
        )

    @admin.display(description="stored config")
    def config_json(self, node):
        return pretty_json(node.config)

    # Which type a page is about -----------------------------------------------------------

    def node_type_for(self, request, obj=None):
        if obj is not None:
            return node_type_or_none(obj.type)
        return node_type_or_none(request.GET.get("type", ""))

    def get_form(self, request, obj=None, change=False, **kwargs):
        kwargs["form"] = node_form_for(self.node_type_for(request, obj))
        return super().get_form(request, obj, change=change, **kwargs)

    def get_fieldsets(self, request, obj=None):
        node_type = self.node_type_for(request, obj)
        tree = ["form", "event"] if obj is None else ["tree_links"]
        fieldsets = [(None, {"fields": [*tree, "type_label", "name", "label", "visible", "branch"]})]
        if node_type is None:
            fieldsets.append(("Configuration (unknown type: kept as is)", {"fields": ["config_json"]}))
        elif node_type.config_form.base_fields:
            fieldsets.append(
                (
                    f"{node_type.label} settings",
                    {
                        "fields": [config_field_name(name) for name in node_type.config_form.base_fields],
                        "description": (node_type.__doc__ or "").strip().split("\n")[0],
                    },
                )
            )
        fieldsets.append(
            (
                "Retries",
                {
                    "fields": [
                        "max_attempts",
                        "retry_backoff_seconds",
                        "retry_backoff_max_seconds",
                        "retry_non_retryable",
                    ],
                    "description": "When the step raises an error, try it again after a wait that doubles each time "
                    "(with jitter), up to the longest wait. When every attempt failed, the error branch "
                    "runs, or else the run fails.",
                },
            )
        )
        fieldsets.append(("Place in the tree", {"fields": ["treebeard_position", "treebeard_ref_node"]}))
        return fieldsets

    def get_readonly_fields(self, request, obj=None):
        readonly = ["type_label", "config_json"]
        if obj is not None:
            readonly.append("tree_links")
        return readonly

    # Views -----------------------------------------------------------------------------------

    def get_urls(self):
        return [
            path(
                "overview/<int:form_id>/<path:event>/",
                self.admin_site.admin_view(self.overview_view),
                name="events_node_overview",
            ),
            *super().get_urls(),
        ]

    def is_filtered(self, request):
        """Choosing one (form, event) tree keeps the tree view; any other filter or a search lists matches."""
        if request.GET.get(SEARCH_VAR):
            return True
        ignored = {*IGNORED_PARAMS, PAGE_VAR, SEARCH_VAR, *TREE_PARAMS}
        return any(param not in ignored for param in request.GET)

    def add_view(self, request, form_url="", extra_context=None):
        if self.node_type_for(request) is None:
            return self.choose_type_view(request)
        return super().add_view(request, form_url, extra_context)

    def choose_type_view(self, request):
        """The first step of adding a node: pick its type (the rest of the query string is kept)."""
        if not self.has_add_permission(request):
            raise PermissionDenied
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": "Add a node: choose its type",
            "type_links": self.add_links(request.GET),
        }
        return TemplateResponse(request, "admin/events/node/choose_type.html", context)

    def add_links(self, params):
        """One add link per node type, keeping the tree (form, event) and any position already chosen."""
        keep = {key: value for key, value in params.items() if key != "type"}
        if "form__id__exact" in keep:
            keep["form"] = keep.pop("form__id__exact")
        keep.pop("event__exact", None)
        url = reverse("admin:events_node_add")
        return [
            {
                "label": node_type.label,
                "is_container": node_type.is_container,
                "description": (node_type.__doc__ or "").strip().split("\n")[0],
                "url": url + "?" + urlencode({**keep, "type": node_type.key}),
            }
            for node_type in registry.all_types()
        ]

    def changelist_view(self, request, extra_context=None):
        form_id = request.GET.get("form__id__exact", "")
        event = request.GET.get("event") or request.GET.get("event__exact") or RECORD_UPDATE
        tree_params = {"form": form_id, "event": event} if form_id.isdigit() else {}
        extra_context = {
            **(extra_context or {}),
            "type_links": self.add_links(tree_params),
            "add_url": reverse("admin:events_node_add") + ("?" + urlencode(tree_params) if tree_params else ""),
            "overview_url": tree_overview_url(int(form_id), event) if form_id.isdigit() else "",
        }
        return super().changelist_view(request, extra_context)

    def overview_view(self, request, form_id, event):
        """A read-only drawing of one tree: each node's label, type, what it does and how it runs."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        form = get_object_or_404(form_model(), pk=form_id)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": f"Event tree of “{form}”: {event}",
            "tree_form": form,
            "event": event,
            "roots": overview_tree(Node.objects.of_tree(form, event)),
            "editor_url": tree_editor_url(form.pk, event),
            "add_url": reverse("admin:events_node_add") + "?" + urlencode({"form": form.pk, "event": event}),
            "add_inside_params": urlencode({"form": form.pk, "event": event, "treebeard_position": "first-child"}),
        }
        return TemplateResponse(request, "admin/events/node/overview.html", context)

    def response_post_save_add(self, request, obj):
        return HttpResponseRedirect(tree_editor_url(obj.form_id, obj.event))

    def response_post_save_change(self, request, obj):
        return HttpResponseRedirect(tree_editor_url(obj.form_id, obj.event))

    def response_add(self, request, obj, post_url_continue=None):
        return self.add_another_in_same_tree(request, obj, super().response_add(request, obj, post_url_continue))

    def response_change(self, request, obj):
        return self.add_another_in_same_tree(request, obj, super().response_change(request, obj))

    def add_another_in_same_tree(self, request, obj, response):
        """Save and add another: ask for the next node's type, in the same tree."""
        if "_addanother" in request.POST and isinstance(response, HttpResponseRedirect):
            response["Location"] = (
                reverse("admin:events_node_add") + "?" + urlencode({"form": obj.form_id, "event": obj.event})
            )
        return response

    def move_node(self, request):
        """Drag and drop. A move the tree rules refuse answers 400 with a message and changes nothing."""
        try:
            with transaction.atomic():
                return super().move_node(request)
        except InvalidTreeOperation as exc:
            message = " ".join(exc.messages)
            messages.error(request, message)
            return HttpResponseBadRequest(message)


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


# API keys ------------------------------------------------------------------------------------------


class ApiKeyStateFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request, model_admin):
        return [("active", "Active"), ("revoked", "Revoked")]

    def queryset(self, request, queryset):
        if self.value() == "active":
            return queryset.active()
        if self.value() == "revoked":
            return queryset.filter(revoked_at__isnull=False)
        return queryset


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    """Adding a key asks only for a name; the key is shown once, on the page after saving, and never again.

    Only its hash is stored, so no page can show it later: a lost key is revoked and replaced.
    """

    list_display = ("name", "prefix_display", "state", "created_at", "last_used_at", "revoked_at")
    list_filter = (ApiKeyStateFilter,)
    search_fields = ("name", "prefix")
    actions = ["revoke_keys"]
    change_form_template = "admin/events/apikey/change_form.html"
    shown_fields = ["name", "prefix_display", "state", "created_at", "last_used_at", "revoked_at"]

    @admin.display(description="key starts with", ordering="prefix")
    def prefix_display(self, key):
        return f"{key.prefix}…"

    @admin.display(description="state", ordering="revoked_at")
    def state(self, key):
        if key.is_active:
            return "active"
        return format_html('<strong class="events-revoked">{}</strong>', "revoked")

    def get_fields(self, request, obj=None):
        return ["name"] if obj is None else self.shown_fields

    def get_readonly_fields(self, request, obj=None):
        return [] if obj is None else self.shown_fields[1:]

    def save_model(self, request, obj, form, change):
        if change:
            return super().save_model(request, obj, form, change)
        issued, raw = ApiKey.issue(name=obj.name)
        for field in ApiKey._meta.concrete_fields:
            setattr(obj, field.attname, getattr(issued, field.attname))
        obj._state.adding, obj._state.db = False, issued._state.db
        obj.issued_key = raw  # lives for this request only; response_add shows it
        return None

    def response_add(self, request, obj, post_url_continue=None):
        """The one page that ever shows the key: rendered in answer to the POST, not stored, not cached."""
        raw = getattr(obj, "issued_key", None)
        if raw is None:
            return super().response_add(request, obj, post_url_continue)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": "API key created",
            "key": obj,
            "raw_key": raw,
            "change_url": reverse("admin:events_apikey_change", args=[obj.pk]),
            "changelist_url": reverse("admin:events_apikey_changelist"),
        }
        response = TemplateResponse(request, "admin/events/apikey/created.html", context)
        add_never_cache_headers(response)
        return response

    @admin.action(description="Revoke selected keys", permissions=["change"])
    def revoke_keys(self, request, queryset):
        active = list(queryset.active())
        for key in active:
            key.revoke()
        messages.success(request, f"Revoked {len(active)} key(s).")
        already = queryset.count() - len(active)
        if already:
            messages.warning(request, f"{already} key(s) were already revoked.")

    def get_urls(self):
        return [
            path("<path:object_id>/revoke/", self.admin_site.admin_view(self.revoke_view), name="events_apikey_revoke"),
            *super().get_urls(),
        ]

    def revoke_view(self, request, object_id):
        return require_POST(self._revoke)(request, object_id)

    def _revoke(self, request, object_id):
        key = self.get_object(request, object_id)
        if key is None:
            raise Http404("No such key.")
        if not self.has_change_permission(request, key):
            raise PermissionDenied
        if key.is_active:
            key.revoke()
            messages.success(request, f"API key {key} revoked: it no longer authenticates.")
        else:
            messages.warning(request, f"API key {key} was already revoked.")
        return HttpResponseRedirect(reverse("admin:events_apikey_change", args=[key.pk]))

    def change_view(self, request, object_id, form_url="", extra_context=None):
        key = self.get_object(request, object_id)
        extra_context = {**(extra_context or {})}
        if key is not None and key.is_active and self.has_change_permission(request, key):
            extra_context["revoke_url"] = reverse("admin:events_apikey_revoke", args=[key.pk])
        return super().change_view(request, object_id, form_url, extra_context)

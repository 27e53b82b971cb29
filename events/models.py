import hashlib
import hmac
import os
import secrets
import socket
import uuid
from datetime import timedelta

from django.apps import apps
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection, models, transaction
from django.db.models import F
from django.utils import timezone
from treebeard.mp_tree import MP_Node, MP_NodeManager, MP_NodeQuerySet

from . import effects, hotsql, storable
from .ids import uuid7
from .nodes import registry
from .retry import RetryPolicy
from .storable import (
    SUBTEXT_MAX_LENGTH,
    storable_text,  # noqa: F401  (for callers that import it from here)
)

RECORD_UPDATE = "record_update"  # the event every submission fires

# forms_app imports events (its submit calls the engine, its waiting page reads runs), so events
# names forms_app's models and never imports them: the two apps depend one way
# (tests/test_import_graph.py).
FORM_MODEL = "forms_app.Form"
FIELD_MODEL = "forms_app.Field"
RECORD_MODEL = "forms_app.Record"


def form_model():
    return apps.get_model(FORM_MODEL)


def field_model():
    return apps.get_model(FIELD_MODEL)


def record_model():
    return apps.get_model(RECORD_MODEL)


def node_type_choices():
    return registry.choices()


class InvalidTreeOperation(ValidationError):
    """A move or insert that would break the rules of an event tree."""


class NodeQuerySet(MP_NodeQuerySet):
    def of_tree(self, form, event=RECORD_UPDATE):
        return self.filter(form=form, event=event).order_by("path")


def tree_nest(nodes, make_item):
    """Nest the nodes of a tree, in tree order (by path), as items: the one nesting of event trees.

    ``make_item(node, parent_item)`` makes a dict for each node (its parent's item is already made,
    or None for a root); a node's item goes into its parent item's ``children`` or, for an
    error-branch node, ``on_error`` list (created when the item has none). Returns the root items.
    """
    roots, stack = [], []
    for node in nodes:
        while stack and stack[-1][0] >= node.depth:
            stack.pop()
        parent = stack[-1][1] if stack else None
        item = make_item(node, parent)
        if parent is None:
            roots.append(item)
        else:
            parent.setdefault("on_error" if node.branch == Node.Branch.ON_ERROR else "children", []).append(item)
        stack.append((node.depth, item))
    return roots


class NodeManager(MP_NodeManager):
    """Tree operations that also enforce the rules of event trees.

    treebeard's admin drag and drop calls ``move`` directly, skipping form
    validation, so the rules live here: only containers have children, and a
    node never leaves its own (form, event) tree.
    """

    def get_queryset(self):
        return NodeQuerySet(self.model).order_by("path")

    def of_tree(self, form, event=RECORD_UPDATE):
        return self.get_queryset().of_tree(form, event)

    def check_parent(self, node, parent):
        if parent is None:
            if node.branch == Node.Branch.ON_ERROR:
                raise InvalidTreeOperation(
                    "An error-branch node must be placed under the node whose failure it handles."
                )
            return
        if (parent.form_id, parent.event) != (node.form_id, node.event):
            raise InvalidTreeOperation("A node can only move within its own form's event tree.")
        if node.branch == Node.Branch.ON_ERROR:
            if parent.branch == Node.Branch.ON_ERROR:
                raise InvalidTreeOperation(
                    f"“{parent}” is an error step: an error step has no error branch of its own. "
                    "Put the step after it in the same error branch, or in the error branch of the step that fails."
                )
            moved = Node.objects.filter(pk=node.pk).only("path", "depth").first() if node.pk else None
            if (
                moved is not None
                and Node.objects.filter(
                    path__startswith=moved.path, depth=moved.depth + 1, branch=Node.Branch.ON_ERROR
                ).exists()
            ):
                raise InvalidTreeOperation(
                    f"“{moved}” has error steps of its own: as an error step it could not have them. "
                    "Move or delete its error steps first."
                )
            return  # every other node may have an error branch
        if not registry.get(parent.type).is_container:
            raise InvalidTreeOperation(
                f"“{parent}” is a {registry.get(parent.type).label} action; only containers "
                f"({registry.container_labels()}) hold steps. Put it in the error branch to handle its failure."
            )

    def move(self, node, target, pos=None):
        pos = pos or "last-sibling"
        if pos.endswith("child"):
            parent = target
        else:
            parent = self.get_parent(target)
            if (target.form_id, target.event) != (node.form_id, node.event):
                raise InvalidTreeOperation("A node can only move within its own form's event tree.")
        self.check_parent(node, parent)
        return super().move(node, target, pos)

    def add_child(self, target, create_kwargs=None, *, instance=None):
        node = instance if instance is not None else self.model(**(create_kwargs or {}))
        self.check_parent(node, target)
        return super().add_child(target, instance=node)

    def add_sibling(self, target, pos=None, create_kwargs=None, *, instance=None):
        node = instance if instance is not None else self.model(**(create_kwargs or {}))
        if (target.form_id, target.event) != (node.form_id, node.event):
            raise InvalidTreeOperation("A node can only be added to its own form's event tree.")
        self.check_parent(node, self.get_parent(target))
        return super().add_sibling(target, pos, instance=node)

    def snapshot(self, form, event=RECORD_UPDATE):
        """The tree of (form, event) as nested plain data: what a run is pinned to."""
        return tree_nest(self.of_tree(form, event), lambda node, parent: node.as_snapshot())


class Node(MP_Node):
    """One element of an event tree: an action, a container or a marker.

    The tree of a (form, event) is the forest of its root nodes. ``type`` is a
    registry key; ``config`` is validated by that type's config form.
    """

    class Branch(models.TextChoices):
        MAIN = "main", "runs in order"
        ON_ERROR = "on_error", "runs when the parent fails"

    form = models.ForeignKey(FORM_MODEL, on_delete=models.CASCADE, related_name="nodes")
    event = models.CharField(max_length=100, default=RECORD_UPDATE)
    type = models.CharField(max_length=50, choices=node_type_choices)
    name = models.SlugField(
        max_length=100, blank=True, help_text="Identifies the node in its tree: later steps read tasks.<name>.output."
    )
    label = models.CharField(max_length=200, blank=True, help_text="Shown in admin and on the waiting page.")
    visible = models.BooleanField(default=False, help_text="Show this step on the waiting page.")
    branch = models.CharField(max_length=10, choices=Branch, default=Branch.MAIN)
    config = models.JSONField(default=dict, blank=True)
    max_attempts = models.PositiveSmallIntegerField(
        default=1, help_text="Attempts before the step counts as failed (1 = no retry)."
    )
    retry_backoff_seconds = models.PositiveIntegerField(
        default=10, help_text="Wait before the 2nd attempt; doubles for each further one, with jitter."
    )
    retry_backoff_max_seconds = models.PositiveIntegerField(default=600, help_text="The longest wait between attempts.")
    retry_non_retryable = models.JSONField(
        default=list,
        blank=True,
        help_text="Errors not to retry: an error whose message starts with one of these texts fails at once.",
    )

    node_order_by = []
    objects = NodeManager()

    class Meta:
        verbose_name = "event-tree node"

    def __str__(self):
        return self.label or self.name or f"{self.type_label} #{self.pk}"

    @property
    def node_type(self):
        return registry.get(self.type)

    @property
    def type_label(self):
        try:
            return self.node_type.label
        except registry.UnknownNodeType:
            return self.type

    def display_label(self):
        return self.label or self.name or self.type_label

    def as_snapshot(self):
        return {
            "id": self.pk,
            "type": self.type,
            "name": self.name,
            "label": self.display_label(),
            "visible": self.visible,
            "config": self.config,
            "retry": self.retry_policy.as_document(),
            "children": [],
            "on_error": [],
        }

    @property
    def retry_policy(self):
        return RetryPolicy.of_node(self)

    def clean(self):
        problems = self.retry_policy.problems()
        if problems:
            columns = {RetryPolicy.DOCUMENT_KEYS[attr]: column for attr, column in RetryPolicy.NODE_FIELDS.items()}
            raise ValidationError({columns[key]: message for key, message in problems.items()})
        if self.name:
            clash = Node.objects.filter(form_id=self.form_id, event=self.event, name=self.name).exclude(pk=self.pk)
            if clash.exists():
                raise ValidationError({"name": f"Another node of this tree is already named “{self.name}”."})


class TreeVersionQuerySet(models.QuerySet):
    def of_tree(self, form, event=RECORD_UPDATE):
        """The published versions of (form, event), the latest first."""
        return self.filter(form=form, event=event).order_by("-number")

    def live(self, form, event=RECORD_UPDATE):
        """The latest published version of (form, event): what submissions run. None before the first publish."""
        return self.of_tree(form, event).first()


class TreeVersion(models.Model):
    """One published version of the event tree of a (form, event): a snapshot, numbered 1, 2, 3, …

    The Node rows of a tree are its draft: the builder edits them. Publishing copies the draft's
    snapshot (``Node.objects.snapshot``) into a new version; the latest version is what submissions,
    trigger_event steps and custom events run, and each run records the version it ran. Versions are
    never changed or deleted (only with their form).
    """

    form = models.ForeignKey(FORM_MODEL, on_delete=models.CASCADE, related_name="tree_versions")
    event = models.CharField(max_length=100, default=RECORD_UPDATE)
    number = models.PositiveIntegerField(help_text="1 for a tree's first version, then 2, 3, …")
    snapshot = models.JSONField(default=list, help_text="The tree as Node.objects.snapshot gives it.")
    published_at = models.DateTimeField(default=timezone.now)
    published_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    note = models.CharField(max_length=500, blank=True)

    objects = TreeVersionQuerySet.as_manager()

    class Meta:
        ordering = ["form", "event", "-number"]
        constraints = [models.UniqueConstraint(fields=["form", "event", "number"], name="one_number_per_tree_version")]

    def __str__(self):
        return f"{self.event} version {self.number}"

    @classmethod
    def publish(cls, *, form, event, snapshot, user=None, note=""):
        """Create the next version of (form, event) holding ``snapshot``. Two publishing at once both get one."""
        for _ in range(5):
            number = (cls.objects.of_tree(form, event).values_list("number", flat=True).first() or 0) + 1
            try:
                with transaction.atomic():
                    return cls.objects.create(
                        form=form,
                        event=event,
                        number=number,
                        snapshot=snapshot,
                        published_by=user if user is not None and user.is_authenticated else None,
                        note=note[:500],
                    )
            except IntegrityError:
                continue  # someone else took this number a moment ago
        raise IntegrityError(f"Could not number a new version of {event}: too many publishing at once.")


class RunQuerySet(models.QuerySet):
    def running(self):
        return self.filter(status=Run.Status.RUNNING)


class Run(models.Model):
    """One firing of one event for one record, pinned to a snapshot of the tree."""

    class Status(models.TextChoices):
        RUNNING = "running", "Running"  # tasks are being executed or wait their turn
        COMPLETE = "complete", "Complete"  # every task terminal, none failed unhandled
        FAILED = "failed", "Failed"  # a task failed without an error branch
        CANCELLED = "cancelled", "Cancelled"  # stopped by an admin

    TERMINAL = (Status.COMPLETE, Status.FAILED, Status.CANCELLED)

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    form = models.ForeignKey(FORM_MODEL, on_delete=models.CASCADE, related_name="runs")
    record = models.ForeignKey(RECORD_MODEL, on_delete=models.CASCADE, related_name="runs")
    event = models.CharField(max_length=100, default=RECORD_UPDATE)
    is_submission = models.BooleanField(
        default=False, help_text="The run the submit fired; the record's completion flag follows it."
    )
    # Their indexes hold only the runs another started (Meta.indexes): a submission's run adds no entry.
    parent_run = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="child_runs", db_index=False
    )
    parent_task = models.ForeignKey(
        "RunTask",
        null=True,
        blank=True,
        db_index=False,
        on_delete=models.SET_NULL,
        related_name="child_runs",
        help_text="The step (trigger_event or a container with event_type) that started this run.",
    )
    depth = models.PositiveSmallIntegerField(default=0, help_text="How many runs started this one, in a chain.")
    version = models.ForeignKey(
        TreeVersion,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="runs",
        help_text="The published version of the tree this run executes (its snapshot is that version's).",
    )
    status = models.CharField(max_length=20, choices=Status, default=Status.RUNNING)
    snapshot = models.JSONField(default=list)
    properties = models.JSONField(default=dict, blank=True)
    subtext = models.CharField(max_length=SUBTEXT_MAX_LENGTH, blank=True)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    objects = RunQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        # A plain index: db_index on a CharField adds, on PostgreSQL, a second one for LIKE that nothing
        # asks for and every run's end (a status change) would write as well.
        indexes = [
            models.Index(fields=["status"], name="run_status_idx"),
            models.Index(
                fields=["parent_run"], condition=models.Q(parent_run__isnull=False), name="run_parent_run_idx"
            ),
            models.Index(
                fields=["parent_task"], condition=models.Q(parent_task__isnull=False), name="run_parent_task_idx"
            ),
        ]

    def __str__(self):
        return f"{self.event} run {self.reference}"

    @property
    def reference(self):
        """A short reference an end user can quote to support."""
        return self.id.hex[:8].upper()

    @property
    def is_finished(self):
        return self.status in self.TERMINAL

    def set_subtext(self, text):
        Run.objects.filter(pk=self.pk).update(subtext=text[:SUBTEXT_MAX_LENGTH])
        self.subtext = text[:SUBTEXT_MAX_LENGTH]

    def tree_order(self):
        """Each node of the snapshot (by id) → its place in the tree read from top to bottom.

        A node comes before its steps, its steps before its error branch, and its error branch
        before the node's next sibling: the order in which they run.
        """
        order = {}

        def visit(nodes):
            for node in nodes:
                order[node["id"]] = len(order)
                visit(node.get("children", []))
                visit(node.get("on_error", []))

        visit(self.snapshot or [])
        return order

    def in_tree_order(self, tasks, *, key=lambda task: (task.node_id, task.position)):
        """``tasks`` of this run (objects, or rows: ``key`` gives their node id and position), in tree order.

        Not by ``position``: an error branch's tasks are created when it runs, so their positions
        come after every other task's. A task whose node is not in the snapshot comes last.
        """
        order = self.tree_order()

        def place(task):
            node_id, position = key(task)
            return order.get(node_id, len(order)), position

        return sorted(tasks, key=place)


class RunTaskQuerySet(models.QuerySet):
    def unfinished(self):
        return self.exclude(status__in=RunTask.TERMINAL)

    def awaiting_past_deadline(self, now=None):
        return self.filter(status=RunTask.Status.AWAITING, deadline_at__lte=now or effects.now())

    def due_for_dispatch(self, now=None):
        """Containers and retries whose time has come and that no one has handed to the queue yet.

        (The worker's dispatcher asks this as SQL, ``events.queue.DUE_UNSENT``: keep the two alike.)
        """
        now = now or effects.now()
        # Actions get a due time only to be re-run by a worker (a retry, or a repair by the sweep).
        return self.filter(status=RunTask.Status.PENDING, due_at__lte=now, enqueued_at__isnull=True)


class RunTask(models.Model):
    """One execution of one node within a run.

    Status changes are compare-and-set updates, so a duplicate queue delivery
    or a second worker finds nothing to do. ``attempt`` is counted in the same
    update that claims the task, before any side effect.
    """

    class Status(models.TextChoices):
        PENDING = "pending", "Queued"  # created, waiting for its turn or its due time
        ACTIVE = "active", "Running"  # claimed by the request or a worker
        AWAITING = "awaiting", "Waiting for a reply"  # sent; waits for an external callback
        COMPLETE = "complete", "Done"  # finished successfully
        FAILED = "failed", "Failed"  # raised, timed out or was failed by a callback
        CANCELLED = "cancelled", "Cancelled"  # never ran: its run stopped first
        SKIPPED = "skipped", "Skipped"  # never ran: its condition did not hold

    TERMINAL = (Status.COMPLETE, Status.FAILED, Status.CANCELLED, Status.SKIPPED)
    OPEN = (Status.PENDING, Status.ACTIVE, Status.AWAITING)

    class Failure(models.TextChoices):
        RAISED = "raised", "the step raised an error"
        CALLBACK = "callback", "the callback reported FAILURE"
        TIMEOUT = "timeout", "no callback before the deadline"
        RETRIES = "retries", "every attempt failed"
        SCHEDULE = "schedule", "could not be scheduled"

    id = models.UUIDField(primary_key=True, default=uuid7, editable=False)
    # No index of its own: one_task_per_node_per_run and task_run_status_idx both begin with the run.
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="tasks", db_index=False)
    # Indexed for the steps only (Meta.indexes): a top-level task adds no entry.
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.CASCADE, related_name="children", db_index=False
    )
    node_id = models.BigIntegerField(help_text="The node's id in the run's snapshot.")
    position = models.PositiveIntegerField(help_text="Order of the node in the tree (pre-order).")
    type = models.CharField(max_length=50)
    name = models.CharField(max_length=100, blank=True)
    label = models.CharField(max_length=200, blank=True)
    visible = models.BooleanField(default=False)
    is_container = models.BooleanField(default=False)
    branch = models.CharField(max_length=10, default="main", help_text="“on_error” for a step of an error branch.")
    # No index of its own: task_dispatch_idx begins with the status. (Each index is written again by
    # every claim and finish, which change the status: fewer indexes, cheaper steps.)
    status = models.CharField(max_length=20, choices=Status, default=Status.PENDING)
    attempt = models.PositiveIntegerField(default=0)
    max_attempts = models.PositiveIntegerField(default=1)
    # No index of its own: the questions about due times begin with a status (task_dispatch_idx), or are
    # the dispatcher's (task_due_unsent_idx).
    due_at = models.DateTimeField(null=True, blank=True)
    enqueued_at = models.DateTimeField(null=True, blank=True)
    handoff_id = models.BigIntegerField(
        null=True,
        blank=True,
        editable=False,
        help_text="The broker row of the job this pending task was handed to (the sweep checks it before re-sending).",
    )
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    lease_owner = models.CharField(
        max_length=120, blank=True, editable=False, help_text="The process that holds the lease (worker id / pid)."
    )
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    logs = models.JSONField(default=list, blank=True)
    output = models.JSONField(default=dict, blank=True)
    subtext = models.CharField(max_length=SUBTEXT_MAX_LENGTH, blank=True)
    error = models.TextField(blank=True)
    failure = models.CharField(max_length=20, choices=Failure, blank=True)
    collect_debug = models.BooleanField(default=False)
    debug = models.JSONField(
        default=list, blank=True, help_text="Per attempt: rendered config, inputs, output, timing."
    )
    # Waiting for a callback: the deadline, the hash of the per-task callback
    # token, and a digest of the callback that was applied (to recognise repeats).
    # No index of its own: the sweep asks for awaiting tasks past their deadline (task_dispatch_idx).
    deadline_at = models.DateTimeField(null=True, blank=True)
    callback_token_hash = models.CharField(max_length=64, blank=True, editable=False)
    callback_digest = models.CharField(max_length=64, blank=True, editable=False)

    objects = RunTaskQuerySet.as_manager()

    class Meta:
        ordering = ["position"]
        constraints = [models.UniqueConstraint(fields=["run", "node_id"], name="one_task_per_node_per_run")]
        indexes = [
            models.Index(fields=["status", "is_container", "due_at"], name="task_dispatch_idx"),
            # The sweep asks, per run, whether anything is still moving.
            models.Index(fields=["run", "status"], name="task_run_status_idx"),
            # The dispatcher's question, several times a second (RunTaskQuerySet.due_for_dispatch): only
            # tasks not handed off yet are in it, so a backlog of jobs waiting for a worker costs nothing.
            models.Index(
                fields=["due_at"],
                condition=models.Q(status="pending", enqueued_at__isnull=True, due_at__isnull=False),
                name="task_due_unsent_idx",
            ),
            # A task's steps, for the steps only. (An index entry is written for every row in an index,
            # a NULL one too: a submit's rows now go into four or five indexes, not eight.)
            models.Index(fields=["parent"], condition=models.Q(parent__isnull=False), name="task_parent_idx"),
        ]

    def __str__(self):
        return self.label or self.name or self.type

    @property
    def is_finished(self):
        return self.status in self.TERMINAL

    log_line = staticmethod(storable.log_line)

    @staticmethod
    def capped_logs(logs, added):
        """``logs`` followed by the lines ``added``, within the caps: every append to a task's logs goes here.

        A line longer than EVENTS_TASK_LOG_MAX_LINE_CHARS is cut there, with a marker saying how
        much was cut. Past EVENTS_TASK_LOG_MAX_LINES lines in all, the oldest lines are dropped
        and the first line becomes one marker counting every line dropped so far (it carries
        ``"dropped": n``). Refusing a caller that sends too many lines at once
        (EVENTS_TASK_LOG_MAX_LINES_PER_CALL) is the API's part.
        """
        max_chars = settings.EVENTS_TASK_LOG_MAX_LINE_CHARS
        max_lines = max(2, settings.EVENTS_TASK_LOG_MAX_LINES)
        lines = list(logs or [])
        marker = lines.pop(0) if lines and isinstance(lines[0], dict) and "dropped" in lines[0] else None
        dropped = marker["dropped"] if marker else 0
        added = list(added)
        if len(added) > max_lines:  # only the newest of them could stay anyway
            dropped += len(added) - max_lines
            added = added[-max_lines:]
        lines.extend(RunTask._cut_line(entry, max_chars) for entry in added)
        if len(lines) > max_lines - (1 if dropped else 0):  # the marker line counts too
            keep = max_lines - 1
            dropped += len(lines) - keep
            lines = lines[-keep:]
        if marker is None or dropped != marker["dropped"]:
            marker = (
                None
                if not dropped
                else {
                    **RunTask.log_line(
                        f"[{dropped} earlier log lines dropped: a task keeps its last {max_lines - 1} "
                        "lines (EVENTS_TASK_LOG_MAX_LINES)]"
                    ),
                    "dropped": dropped,
                }
            )
        return [marker, *lines] if marker else lines

    storage_problem = staticmethod(storable.storage_problem)

    @staticmethod
    def _cut_line(entry, max_chars):
        text = entry.get("line") if isinstance(entry, dict) else entry
        if not isinstance(text, str) or len(text) <= max_chars:
            return entry
        cut = f"{text[:max_chars]} … [line cut: {len(text) - max_chars} more characters]"
        return {**entry, "line": cut} if isinstance(entry, dict) else cut

    def claim(self, *, now=None, require_due=False, steps=None, first_step_claimed=False):
        """Move pending → active and count the attempt. True for the one caller that wins.

        ``steps``: the unsaved rows of a deferred container's steps, which its first start creates: the
        claim wins only while the container has none (the caller read none before, and a start since
        would have created them), and inserts them with it (on PostgreSQL in the same statement).
        ``first_step_claimed``: the first of them goes in claimed by this caller as well (active, its
        first attempt counted: ``claimed_here``), for the walk that runs it next: one statement fewer.
        """
        now = now or effects.now()
        lease = now + timedelta(seconds=settings.EVENTS_TASK_LEASE_SECONDS)
        owner = lease_owner()
        if steps and first_step_claimed:
            first = steps[0]
            first.status, first.attempt, first.started_at = self.Status.ACTIVE, first.attempt + 1, now
            first.lease_expires_at, first.lease_owner, first.claimed_here = lease, owner, True
        # A hot statement (every step of every run): written as SQL, not compiled per call (events.hotsql).
        where, params = (
            "id = %s AND status = %s",
            [hotsql.db_value(RunTask, "id", self.pk, connection), self.Status.PENDING],
        )
        if require_due:
            where += " AND (due_at IS NULL OR due_at <= %s)"
            params.append(hotsql.db_value(RunTask, "due_at", now, connection))
        if steps is not None:
            # And only while its run is running, its row share-locked until this start commits: a run
            # failing or cancelled meanwhile either comes first (the claim loses) or waits, and then
            # cancels the steps' rows it can see. (Without the lock, a cancel's UPDATE, blocked on the
            # container's row, would find it active and never see the steps being inserted: they would
            # stay pending, and this walk would run them.)
            share = " FOR SHARE" if connection.features.has_select_for_update else ""
            where += (
                f" AND NOT EXISTS (SELECT 1 FROM {hotsql.table(RunTask, connection)} c"
                f" WHERE c.parent_id = %s AND c.branch = '{Node.Branch.MAIN}')"
                f" AND EXISTS (SELECT 1 FROM {hotsql.table(Run, connection)} r"
                f" WHERE r.id = %s AND r.status = '{Run.Status.RUNNING}'{share})"
            )
            params += [params[0], hotsql.db_value(Run, "id", self.run_id, connection)]
        sql, params = hotsql.update_statement(
            RunTask,
            connection,
            {"status": self.Status.ACTIVE, "started_at": now, "lease_expires_at": lease, "lease_owner": owner},
            increment=["attempt"],
            where=where,
            params=params,
        )
        together = None
        if steps and connection.vendor == "postgresql":
            try:
                together = hotsql.insert_where(steps, connection, "EXISTS (SELECT 1 FROM claimed)")
            except hotsql.NotOneStatement:
                pass  # a value JSON does not carry: the steps go in on their own, after the claim
        if together is not None:
            # The claim and its steps' rows in one statement: one round trip fewer at every container's start.
            insert_sql, insert_params = together
            won = hotsql.rows(
                connection,
                f"WITH claimed AS ({sql} RETURNING 1), steps AS ({insert_sql}) SELECT count(*) FROM claimed",
                [*params, *insert_params],
            )[0][0]
            if won:
                hotsql.inserted(steps, connection)
        else:
            with connection.cursor() as cursor:
                cursor.execute(sql, params)
                won = cursor.rowcount
            if won and steps:
                hotsql.insert(steps, connection)
        if won:
            # Nothing changes a pending task's attempt count, so this copy's count plus one is the row's.
            self.status, self.attempt, self.started_at = self.Status.ACTIVE, self.attempt + 1, now
            self.lease_expires_at, self.lease_owner = lease, owner
        return bool(won)

    def finish(self, status, *, logs=(), output=None, error="", failure="", debug=None, later=False):
        """active | awaiting → complete | failed | cancelled, appending logs. True if this call made the change.

        ``later``: the caller does not need to know; in a walk's transaction on PostgreSQL the update
        then goes with the next statement (``hotsql.later``), this copy takes the changes, and True is
        returned. (Were the task no longer active or awaiting, the update would change nothing, as it
        would now: a walk goes on either way, and its next claim finds the run stopped.)
        """
        sql, params, changes = self.finish_statement(
            status, logs=logs, output=output, error=error, failure=failure, debug=debug
        )
        if later and hotsql.later(connection, sql, params, (RunTask, self.pk)):
            self.finished(changes)
            return True
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            won = cursor.rowcount
        if won:
            self.finished(changes)
        return bool(won)

    def finish_statement(self, status, *, logs=(), output=None, error="", failure="", debug=None):
        """``finish`` as (its UPDATE, its parameters, the changes): to run inside another statement
        (a PostgreSQL ``WITH``); when it changed the row, ``finished(changes)`` brings this copy along."""
        now = effects.now()
        changes = {
            "status": status,
            "finished_at": now,
            "lease_expires_at": None,
            "error": storable_text(error),
            "failure": failure,
        }
        if output is not None:
            changes["output"] = output
        if logs:
            changes["logs"] = RunTask.capped_logs(self.logs, logs)
        if debug is not None:
            changes["debug"] = self.debug + [debug]
        sql, params = hotsql.update_statement(
            RunTask,
            connection,
            changes,
            where="id = %s AND status IN (%s, %s)",
            params=[hotsql.db_value(RunTask, "id", self.pk, connection), self.Status.ACTIVE, self.Status.AWAITING],
        )
        return sql, params, changes

    def finished(self, changes):
        for key, value in changes.items():
            setattr(self, key, value)

    def set_subtext(self, text):
        RunTask.objects.filter(pk=self.pk).update(subtext=text[:SUBTEXT_MAX_LENGTH])
        self.subtext = text[:SUBTEXT_MAX_LENGTH]


def failures_handled(tasks):
    """Of one run's ``tasks`` (objects or rows with id, parent_id, branch and status), the failed ones
    that have an error branch: task id → True once the branch is done, False while it still runs.

    A failure whose branch failed too (unhandled) or was cancelled is not handled, and is left out.
    """
    branches = {}
    for task in tasks:
        if task.branch == Node.Branch.ON_ERROR and task.parent_id is not None:
            branches.setdefault(task.parent_id, []).append(task)
    handled = {}

    def settle(task):
        if task.id not in branches:
            return None
        if task.id in handled:
            return handled[task.id]
        done = True
        for step in branches[task.id]:
            if step.status == RunTask.Status.CANCELLED:
                return None
            if step.status == RunTask.Status.FAILED:
                inner = settle(step)
                if inner is None:
                    return None
                done = done and inner
            elif step.status not in RunTask.TERMINAL:
                done = False
        handled[task.id] = done
        return done

    for task in tasks:
        if task.status == RunTask.Status.FAILED:
            settle(task)
    return handled


def lease_owner():
    """Who holds a lease taken now: this process, named under the worker that started it.

    ``manage.py worker`` sets EVENTS_WORKER_ID before it starts its cluster, so
    on a stop it can find and release every lease its processes still hold.
    """
    return f"{os.environ.get('EVENTS_WORKER_ID') or socket.gethostname()}/{os.getpid()}"[:120]


def secret_hash(secret):
    """SHA-256 of a high-entropy secret (an API key or a callback token): what we store."""
    return hashlib.sha256(secret.encode()).hexdigest()


class ApiKeyQuerySet(models.QuerySet):
    def active(self):
        return self.filter(revoked_at__isnull=True)


class ApiKey(models.Model):
    """A key for the JSON API. Only its hash is stored; the key itself is shown once, at creation."""

    PREFIX_LENGTH = 12
    LAST_USED_PRECISION = 60  # seconds

    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=PREFIX_LENGTH, db_index=True, editable=False)
    key_hash = models.CharField(max_length=64, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = ApiKeyQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        verbose_name = "API key"

    def __str__(self):
        return f"{self.name} ({self.prefix}…)"

    @classmethod
    def issue(cls, *, name):
        """Create a key; returns (ApiKey, the key in clear). The clear key is never stored."""
        raw = "fe_" + secrets.token_urlsafe(32)
        key = cls.objects.create(name=name, prefix=raw[: cls.PREFIX_LENGTH], key_hash=secret_hash(raw))
        return key, raw

    @classmethod
    def authenticate(cls, raw):
        """The active key matching ``raw``, compared in constant time, or None. Records its use."""
        if not raw or len(raw) > 200:
            return None
        digest = secret_hash(raw)
        match = None
        # A hot statement (every API call): the active keys of the prefix, written as SQL (events.hotsql).
        candidates = [
            API_KEY_COLUMNS.load(row, connection)
            for row in ACTIVE_KEYS_OF_PREFIX.rows(connection, [raw[: cls.PREFIX_LENGTH]])
        ]
        for candidate in candidates:
            if hmac.compare_digest(candidate.key_hash, digest):
                match = candidate
        if match is not None:
            now = timezone.now()
            # Kept to the minute: a busy caller does not add a write to every request.
            if match.last_used_at is None or now - match.last_used_at > timedelta(seconds=cls.LAST_USED_PRECISION):
                cls.objects.filter(pk=match.pk).update(last_used_at=now)
                match.last_used_at = now
        return match

    @property
    def is_active(self):
        return self.revoked_at is None

    def revoke(self):
        ApiKey.objects.filter(pk=self.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
        self.refresh_from_db(fields=["revoked_at"])


API_KEY_COLUMNS = hotsql.Columns(ApiKey, "k")
ACTIVE_KEYS_OF_PREFIX = hotsql.Statement(
    lambda c: (
        f"SELECT {API_KEY_COLUMNS.sql(c)} FROM {hotsql.table(ApiKey, c)} k WHERE k.revoked_at IS NULL AND k.prefix = %s"
    )
)


class Repair(models.Model):
    """How many times the sweep repaired something, per kind: what an operator watches."""

    kind = models.CharField(max_length=50, unique=True)
    count = models.PositiveBigIntegerField(default=0)
    last_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["kind"]

    def __str__(self):
        return f"{self.kind}: {self.count}"

    @classmethod
    def record(cls, kind, n=1):
        if not n:
            return
        now = timezone.now()
        if not cls.objects.filter(kind=kind).update(count=F("count") + n, last_at=now):
            try:
                with transaction.atomic():
                    cls.objects.create(kind=kind, count=n, last_at=now)
            except IntegrityError:
                cls.objects.filter(kind=kind).update(count=F("count") + n, last_at=now)


class Replay(models.Model):
    """Past records of a form test-run through two versions of a tree, and what differs per record.

    ``baseline`` and ``candidate`` are snapshots kept as they were when the replay started (the
    candidate is usually the draft, which goes on changing). A worker plays it in slices
    (``events.testrun.replay``), one ReplayItem per record; ``claimed_until`` is its lease, so a
    duplicate delivery finds it held and the sweep sends it again when a worker died holding it.
    """

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    form = models.ForeignKey(FORM_MODEL, on_delete=models.CASCADE, related_name="replays")
    event = models.CharField(max_length=100, default=RECORD_UPDATE)
    baseline_label = models.CharField(max_length=100, help_text="What the records ran through first: “version 3”.")
    baseline = models.JSONField(default=list)
    candidate_label = models.CharField(max_length=100, help_text="What they ran through then: “draft”.")
    candidate = models.JSONField(default=list)
    canned = models.JSONField(default=dict, blank=True, help_text="The canned answers both test runs got.")
    record_ids = models.JSONField(default=list, help_text="The records to replay, in order.")
    status = models.CharField(max_length=20, choices=Status, default=Status.QUEUED, db_index=True)
    total = models.PositiveIntegerField(default=0)
    done = models.PositiveIntegerField(default=0)
    differing = models.PositiveIntegerField(default=0, help_text="Records with any difference.")
    error = models.TextField(blank=True)
    claimed_until = models.DateTimeField(null=True, blank=True, help_text="The lease of the worker playing it.")
    sent_at = models.DateTimeField(null=True, blank=True, help_text="When its job was last sent to the queue.")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self):
        return f"Replay of {self.total} records: {self.baseline_label} → {self.candidate_label}"

    @property
    def is_finished(self):
        return self.status in (self.Status.DONE, self.Status.FAILED)

    @property
    def percent(self):
        return round(100 * self.done / self.total) if self.total else 100


class ReplayItem(models.Model):
    """One record of a replay: how each version ended for it, and what differs."""

    replay = models.ForeignKey(Replay, on_delete=models.CASCADE, related_name="items")
    position = models.PositiveIntegerField()
    record_id = models.BigIntegerField(help_text="The record's id (it may since have been deleted).")
    record_token = models.CharField(max_length=64, blank=True)
    submitted_at = models.DateTimeField(null=True, blank=True)
    baseline_status = models.CharField(max_length=20, blank=True)
    candidate_status = models.CharField(max_length=20, blank=True)
    differences = models.JSONField(default=list, help_text="[{what, before, after}]; empty when both ended alike.")
    error = models.TextField(blank=True, help_text="Why this record could not be replayed.")

    class Meta:
        ordering = ["replay", "position"]
        constraints = [models.UniqueConstraint(fields=["replay", "position"], name="one_item_per_replay_position")]

    def __str__(self):
        return f"record {self.record_id}: {len(self.differences)} differences"

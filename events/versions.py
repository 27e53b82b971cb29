"""Versions of an event tree: the draft, publishing it, what a publish would touch, and diffs.

The Node rows of a (form, event) are its **draft**: the builder edits them. Publishing copies the
draft's snapshot (``Node.objects.snapshot``) into a new ``TreeVersion``; the latest version is the
**live** one, what submissions, trigger_event steps and custom events run (``engine.run_start``).
A tree has unpublished changes when its draft's snapshot differs from its live version's. A run
executes the snapshot it started with to its end, whatever is published later (DESIGN.md §5.7).

Snapshots are compared node by node, by node id: ids are kept by the builder (an edit changes a row
in place), by the form file's import (a node is matched by its name) and by restoring a version.
The form file's export and import of versions, and restoring a version as the draft, are
events/formfile.py's (they write Node rows); the admin pages are events/admin/versions.py's.
"""

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from .models import RECORD_UPDATE, Node, Run, RunTask, TreeVersion, form_model
from .nodes import registry
from .retry import RetryPolicy

Snapshot = list[dict[str, Any]]


class DraftChanged(Exception):
    """The draft (or the live version) is no longer the one the admin reviewed before publishing."""


def snapshot_digest(snapshot: Snapshot) -> str:
    """A short fingerprint of a snapshot: what a publish confirmation carries, to publish what was reviewed."""
    text = json.dumps(snapshot, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass
class TreeStatus:
    """Where the tree of (form, event) stands: its live version (None before the first publish) and its draft."""

    form: Any
    event: str
    live: TreeVersion | None
    draft: Snapshot

    @property
    def live_snapshot(self) -> Snapshot:
        return self.live.snapshot if self.live is not None else []

    @property
    def has_changes(self) -> bool:
        """The draft differs from the live version (a never-published tree: it has nodes)."""
        return self.draft != self.live_snapshot

    @property
    def is_live(self) -> bool:
        return self.live is not None

    @property
    def token(self) -> str:
        """What "publish" must find unchanged: the draft and the live version the admin looked at."""
        return f"{self.live.number if self.live else 0}-{snapshot_digest(self.draft)}"


def tree_status(*, form, event: str = RECORD_UPDATE) -> TreeStatus:
    return TreeStatus(
        form=form,
        event=event,
        live=TreeVersion.objects.live(form, event),
        draft=Node.objects.snapshot(form, event),
    )


def form_events(form) -> list[str]:
    """The events of ``form`` that have a tree: a draft with nodes, or a published version (record_update first)."""
    events = set(Node.objects.filter(form=form).values_list("event", flat=True).distinct())
    events |= set(TreeVersion.objects.filter(form=form).values_list("event", flat=True).distinct())
    return sorted(events, key=lambda event: (event != RECORD_UPDATE, event))


def tree_publish(
    *, form, event: str = RECORD_UPDATE, user=None, note: str = "", expect: str | None = None
) -> TreeVersion | None:
    """Publish the draft of (form, event) as its next version; None when it is the live version already.

    ``expect``: the ``TreeStatus.token`` the admin reviewed (the impact preview); when the draft or
    the live version changed since, DraftChanged is raised and nothing is published. Runs in flight
    keep the snapshot they started with; only runs started after this publish run the new version.
    Publishes of one form take turns (its row is locked), so two admins who reviewed the same draft
    cannot both publish it: the second is told the live version changed.
    """
    with transaction.atomic():
        form_model().objects.select_for_update().filter(pk=form.pk).exists()
        status = tree_status(form=form, event=event)
        if expect is not None and expect != status.token:
            raise DraftChanged("The draft or the live version changed since you reviewed it: review the changes again.")
        if not status.has_changes:
            return None  # the live version is the draft already (or both are empty)
        return TreeVersion.publish(form=form, event=event, snapshot=status.draft, user=user, note=note)


def form_publish(*, form, user=None, note: str = "") -> dict[str, TreeVersion]:
    """Publish every tree of ``form`` whose draft has changes: {event: the new version}."""
    published = {}
    for event in form_events(form):
        version = tree_publish(form=form, event=event, user=user, note=note)
        if version is not None:
            published[event] = version
    return published


# The nodes of a snapshot, by id ------------------------------------------------------------------


@dataclass
class Place:
    """Where a node sits in its snapshot: its parent's id (None at the top), branch, and the node itself."""

    node: dict
    parent: int | None
    branch: str
    depth: int


def snapshot_index(snapshot: Snapshot) -> dict[int, Place]:
    """Every node of a snapshot by id, in tree order (a node, its steps, then its error branch)."""
    index = {}

    def visit(nodes, parent, branch, depth):
        for node in nodes:
            index[node["id"]] = Place(node=node, parent=parent, branch=branch, depth=depth)
            visit(node.get("children", []), node["id"], "main", depth + 1)
            visit(node.get("on_error", []), node["id"], "on_error", depth + 1)

    visit(snapshot or [], None, "main", 0)
    return index


def _ids(nodes):
    return [node["id"] for node in nodes or []]


def _what_runs(node):
    """What a node does when it runs: a waiting step that reaches it runs exactly this."""
    return (
        node.get("type"),
        node.get("config"),
        RetryPolicy.of_document(node.get("retry")).as_document(),
        _ids(node.get("children")),
        _ids(node.get("on_error")),
    )


def nodes_touched(before: Snapshot, after: Snapshot) -> dict[int, str]:
    """The nodes of ``before`` that ``after`` removes or changes: {id: "removed" | "changed"}.

    Changed: its type, config or retries, or which steps (children) or error steps it holds, in
    which order. A new name, label or visibility does not change what a waiting step will do.
    """
    old, new = snapshot_index(before), snapshot_index(after)
    touched = {}
    for node_id, place in old.items():
        if node_id not in new:
            touched[node_id] = "removed"
        elif _what_runs(place.node) != _what_runs(new[node_id].node):
            touched[node_id] = "changed"
    return touched


def subtree(node: dict) -> list[dict]:
    """The node and every node under it (its steps and error branches), in tree order."""
    found = [node]
    for child in node.get("children", []) + node.get("on_error", []):
        found.extend(subtree(child))
    return found


def runs_after(snapshot: Snapshot, node_id: int) -> list[dict]:
    """The nodes a sequence goes on with once the step ``node_id`` is done (a callback resumes it there).

    Its later siblings, then, when its sequence ends, what follows the node that holds it: after an
    error branch, the failed step's later siblings; after a condition's steps, the condition's. A
    deferred container's steps (background, delay) end with the container: nothing follows them.
    """
    index = snapshot_index(snapshot)
    found, current = [], node_id
    while current in index:
        place = index[current]
        holder = index[place.parent].node if place.parent is not None else None
        siblings = (
            snapshot if holder is None else holder.get("on_error" if place.branch == "on_error" else "children", [])
        )
        ids = _ids(siblings)
        for sibling in siblings[ids.index(current) + 1 :]:
            found.extend(subtree(sibling))
        if holder is None:
            break
        if place.branch == "main":
            try:
                if registry.get(holder.get("type", "")).is_deferred:
                    break
            except registry.UnknownNodeType:
                break
        current = place.parent
    return found


def nodes_affected(
    before: Snapshot, after: Snapshot, *, resuming: bool = False
) -> dict[int, list[tuple[dict, str, str]]]:
    """Nodes of ``before`` that would run differently in ``after``: {id: [(node touched, how, where)]}.

    ``how``: "removed" or "changed"; ``where``: "itself", "inside" (a step of it) or "after" (a step
    its sequence goes on with).

    A node is affected when it, or a step inside it, is removed or changed: a delay waiting in a run
    of ``before`` will run its old steps when it fires. ``resuming``: for a step waiting for a
    callback, which goes on with the rest of its sequence when it is answered (``runs_after``),
    a change there counts too.
    """
    touched = nodes_touched(before, after)
    affected = {}
    for node_id, place in snapshot_index(before).items():
        inside = subtree(place.node)
        scope = [(node, "itself" if node is place.node else "inside") for node in inside]
        scope += [(node, "after") for node in (runs_after(before, node_id) if resuming else [])]
        reasons = [(inner, touched[inner["id"]], where) for inner, where in scope if inner["id"] in touched]
        if reasons:
            affected[node_id] = reasons
    return affected


# Diff ---------------------------------------------------------------------------------------------


@dataclass
class Change:
    """One attribute of a node, before and after (None: it had none)."""

    what: str
    before: Any
    after: Any

    @staticmethod
    def text(value):
        if value is None:
            return "—"
        return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True)

    @property
    def before_text(self):
        return self.text(self.before)

    @property
    def after_text(self):
        return self.text(self.after)


@dataclass
class NodeDiff:
    """A node that a diff adds, removes or changes, shown by id, label, name and type."""

    id: int
    label: str
    name: str
    type: str
    depth: int
    changes: list[Change] = field(default_factory=list)

    @property
    def type_label(self):
        try:
            return registry.get(self.type).label
        except registry.UnknownNodeType:
            return self.type

    @classmethod
    def of(cls, place, changes=()):
        node = place.node
        return cls(
            id=node["id"],
            label=node.get("label") or node.get("name") or node.get("type", ""),
            name=node.get("name", ""),
            type=node.get("type", ""),
            depth=place.depth,
            changes=list(changes),
        )


@dataclass
class TreeDiff:
    """What turns ``before`` into ``after``: nodes added, removed and changed (by node id)."""

    added: list[NodeDiff]
    removed: list[NodeDiff]
    changed: list[NodeDiff]

    @property
    def is_empty(self):
        return not (self.added or self.removed or self.changed)

    def count(self):
        return len(self.added) + len(self.removed) + len(self.changed)


def _place_text(place, index, rank):
    """Where a node stands, in words: "step 2 at the top level", "error step 1 of “Call CRM”"."""
    position, of = rank
    kind = "error step" if place.branch == "on_error" else "step"
    if place.parent is None:
        where = "at the top level"
    else:
        parent = index[place.parent].node
        label = parent.get("label") or parent.get("name") or parent.get("type")
        where = f"of “{label}”" if place.branch == "on_error" else f"in “{label}”"
    return f"{kind} {position} of {of} {where}"


def _ranks(index, common):
    """Each common node's (position, count) among the siblings that both snapshots have, in that snapshot."""
    sequences = {}
    for node_id, place in index.items():
        if node_id in common:
            sequences.setdefault((place.parent, place.branch), []).append(node_id)
    return {
        node_id: (position + 1, len(sequence))
        for sequence in sequences.values()
        for position, node_id in enumerate(sequence)
    }


def tree_diff(before: Snapshot, after: Snapshot) -> TreeDiff:
    """Compare two snapshots node by node: what was added, removed and changed (config key by key).

    A node counts as moved when its parent or branch changed, or its order among the siblings both
    snapshots share (adding a sibling before it does not move it).
    """
    old, new = snapshot_index(before), snapshot_index(after)
    common = old.keys() & new.keys()
    old_ranks, new_ranks = _ranks(old, common), _ranks(new, common)
    changed = []
    for node_id, place in new.items():
        if node_id not in common:
            continue
        was, now = old[node_id].node, place.node
        changes = [
            Change(what, was.get(key), now.get(key))
            for what, key in (("type", "type"), ("name", "name"), ("label", "label"), ("visible", "visible"))
            if was.get(key) != now.get(key)
        ]
        old_config, new_config = was.get("config") or {}, now.get("config") or {}
        for key in sorted(old_config.keys() | new_config.keys()):
            if old_config.get(key) != new_config.get(key):
                changes.append(Change(f"config: {key}", old_config.get(key), new_config.get(key)))
        old_retry = RetryPolicy.of_document(was.get("retry")).as_document()
        new_retry = RetryPolicy.of_document(now.get("retry")).as_document()
        for key in sorted(old_retry.keys() | new_retry.keys()):
            if old_retry.get(key) != new_retry.get(key):
                changes.append(Change(f"retry: {key}", old_retry.get(key), new_retry.get(key)))
        old_parent = (old[node_id].parent, old[node_id].branch)
        if old_parent != (place.parent, place.branch) or old_ranks[node_id] != new_ranks[node_id]:
            changes.append(
                Change(
                    "place",
                    _place_text(old[node_id], old, old_ranks[node_id]),
                    _place_text(place, new, new_ranks[node_id]),
                )
            )
        if changes:
            changed.append(NodeDiff.of(place, changes))
    return TreeDiff(
        added=[NodeDiff.of(place) for node_id, place in new.items() if node_id not in common],
        removed=[NodeDiff.of(place) for node_id, place in old.items() if node_id not in common],
        changed=changed,
    )


# The impact of publishing ------------------------------------------------------------------------


@dataclass
class WaitingStep:
    """A task of a run in flight that waits (a delay, or a callback) on a node the draft removes or changes."""

    task: RunTask
    version: TreeVersion | None
    reasons: list[tuple[dict, str, str]]  # (the node touched, "removed" | "changed", where): its own node first

    @property
    def is_awaiting(self):
        return self.task.status == RunTask.Status.AWAITING

    def reason_text(self):
        parts = []
        for node, kind, where in self.reasons:
            label = node.get("label") or node.get("name") or node.get("type")
            if where == "itself":
                parts.append(f"{kind} in the draft")
            elif where == "inside":
                parts.append(f"the step “{label}” inside it is {kind}")
            else:
                parts.append(f"the step “{label}” after it is {kind}")
        return "; ".join(parts)


@dataclass
class Impact:
    """What publishing the draft of (form, event) would touch: runs in flight and the work they wait on.

    ``delays`` and ``callbacks`` list at most ``limit`` steps each; ``delay_count`` and
    ``callback_count`` count them all.
    """

    status: TreeStatus
    runs_on_live: int
    runs_on_older: int
    delays: list[WaitingStep]
    callbacks: list[WaitingStep]
    delay_count: int
    callback_count: int
    limit: int

    @property
    def runs_in_flight(self):
        return self.runs_on_live + self.runs_on_older


def _in_flight(form, event):
    """The runs in flight on a version of this tree (a container's branch run included), or from before versions."""
    return Run.objects.running().filter(
        Q(version__form=form, version__event=event) | Q(version__isnull=True, form=form, event=event)
    )


def tree_impact(*, form, event: str = RECORD_UPDATE, limit: int = 200, now=None) -> Impact:
    """What publishing the draft now would touch (see ``nodes_affected``); nothing is changed.

    Each version that runs in flight are on is compared with the draft once; runs from before
    versions existed (no version recorded) are compared one by one, with their own snapshots.
    """
    now = now or timezone.now()
    status = tree_status(form=form, event=event)
    in_flight = _in_flight(form, event)
    live_id = status.live.pk if status.live else None
    runs_on_live = in_flight.filter(version_id=live_id).count() if live_id else 0
    waiting = Q(status=RunTask.Status.PENDING, due_at__gt=now) | Q(status=RunTask.Status.AWAITING)

    groups = []  # (kind, version or None, affected nodes, task filter)
    kinds = (
        ("delays", Q(status=RunTask.Status.PENDING), False),
        ("callbacks", Q(status=RunTask.Status.AWAITING), True),  # a callback resumes its sequence
    )
    versions = TreeVersion.objects.filter(pk__in=in_flight.exclude(version=None).values("version_id"))
    for version in versions:
        for kind, condition, resuming in kinds:
            affected = nodes_affected(version.snapshot, status.draft, resuming=resuming)
            if affected:
                groups.append(
                    (kind, version, affected, condition & Q(run__version=version, node_id__in=list(affected)))
                )
    for run in in_flight.filter(version=None).only("pk", "snapshot"):
        for kind, condition, resuming in kinds:
            affected = nodes_affected(run.snapshot, status.draft, resuming=resuming)
            if affected:
                groups.append((kind, None, affected, condition & Q(run=run, node_id__in=list(affected))))

    found = {"delays": [], "callbacks": []}
    counts = {"delays": 0, "callbacks": 0}
    for kind, version, affected, which in groups:
        chosen = RunTask.objects.filter(which, run__status=Run.Status.RUNNING).filter(waiting)
        counts[kind] += chosen.count()
        room = limit - len(found[kind])
        if room > 0:
            for task in chosen.select_related("run", "run__record").order_by("due_at", "deadline_at")[:room]:
                found[kind].append(WaitingStep(task=task, version=version, reasons=affected[task.node_id]))
    for kind in found:
        found[kind].sort(key=lambda step: step.task.due_at or step.task.deadline_at or now)
    return Impact(
        status=status,
        runs_on_live=runs_on_live,
        runs_on_older=in_flight.count() - runs_on_live,
        delays=found["delays"],
        callbacks=found["callbacks"],
        delay_count=counts["delays"],
        callback_count=counts["callbacks"],
        limit=limit,
    )

"""The event-tree editor: the tree page (the builder, one page with htmx), and treebeard's change list."""

from dataclasses import dataclass
from urllib.parse import urlencode

from django.contrib import admin, messages
from django.contrib.admin.views.main import IGNORED_PARAMS, PAGE_VAR, SEARCH_VAR
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.http import HttpResponseBadRequest, HttpResponseNotAllowed, HttpResponseRedirect, QueryDict
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import conditional_escape, format_html
from django_htmx.http import reswap, retarget, trigger_client_event
from treebeard.admin import TreeAdmin, TreeChangeList

from ..admin_forms import NodeMoveForm, config_field_name, node_form_for, node_sequence, node_type_or_none
from ..models import (
    RECORD_UPDATE,
    InvalidTreeOperation,
    Node,
    form_model,
    tree_nest,
)
from ..nodes import registry
from .common import pretty_json, tree_editor_url, tree_overview_url  # noqa: F401
from .versions import TreeVersionViews

# Query parameters that choose *which* tree the editor shows; they keep the tree view (drag and drop).
TREE_PARAMS = {"form__id__exact", "event", "event__exact"}

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


# The builder: the tree page is the editor ---------------------------------------------------------

PLACE_FIELDS = ("form", "event", "branch", "treebeard_position", "treebeard_ref_node")


def insert_query(event, *, ref=None, position="first-child", branch=Node.Branch.MAIN):
    """The query of an add link: where the new node goes (as the node form's position fields take it)."""
    return urlencode({"event": event, "ref": ref or "", "position": position, "branch": branch})


def builder_tree(nodes, *, event):
    """The overview's items, each with what the builder's buttons need.

    Per item: ``is_first`` / ``is_last`` in its sequence, ``into`` (the label of the container just
    above it, which it may move into), ``out`` (its parent's label, when it has one), ``after`` (the
    "+" after it) and, for its steps and error branch, ``steps_start`` / ``error_start`` (the "+" that
    opens each sequence). Returns (root items, the "+" opening the top level).
    """
    roots = overview_tree(nodes)

    def slot(label, **where):
        return {"label": label, "query": insert_query(event, **where)}

    def start_of(sequence, *, parent, branch):
        first = sequence[0]["node"] if sequence else None
        if parent is None:
            where = {"ref": first.pk, "position": "left"} if first else {}
            return slot("Add a step at the top" if first else "Add the first step", **where, branch=branch)
        label = f"“{parent['label']}”"
        if branch == Node.Branch.ON_ERROR:
            text = f"Add an error step to {label}" if not first else f"Add an error step at the start of {label}"
        else:
            text = f"Add a step into {label}" if not first else f"Add a step at the start of {label}"
        where = {"ref": first.pk, "position": "left"} if first else {"ref": parent["node"].pk}
        return slot(text, **where, branch=branch)

    def annotate(sequence, parent):
        for index, item in enumerate(sequence):
            node = item["node"]
            before = sequence[index - 1] if index else None
            item["is_first"], item["is_last"] = index == 0, index == len(sequence) - 1
            item["into"] = before["label"] if before and before["is_container"] else ""
            item["out"] = parent["label"] if parent else ""
            kind = "an error step" if node.branch == Node.Branch.ON_ERROR else "a step"
            item["after"] = slot(
                f"Add {kind} after “{item['label']}”", ref=node.pk, position="right", branch=node.branch
            )
            item["steps_start"] = start_of(item["children"], parent=item, branch=Node.Branch.MAIN)
            item["error_start"] = start_of(item["on_error"], parent=item, branch=Node.Branch.ON_ERROR)
            annotate(item["children"], item)
            annotate(item["on_error"], item)

    annotate(roots, None)
    return roots, {**start_of(roots, parent=None, branch=Node.Branch.MAIN), "id": "events-top-add"}


def tree_counts(nodes):
    """What the tree page counts: this tree's nodes only."""
    kinds = [node_type_or_none(node.type) for node in nodes]
    return {
        "nodes": len(nodes),
        "containers": sum(1 for kind in kinds if kind is not None and kind.is_container),
        "error_steps": sum(1 for node in nodes if node.branch == Node.Branch.ON_ERROR),
        "visible": sum(1 for node in nodes if node.visible),
    }


def type_groups():
    """The node types for the "+" menu: actions, containers, markers."""
    groups = {"Actions": [], "Containers": [], "Markers": []}
    for node_type in registry.all_types():
        group = "Containers" if node_type.is_container else "Markers" if node_type.is_marker else "Actions"
        groups[group].append(
            {"key": node_type.key, "label": node_type.label, "description": type_description(node_type)}
        )
    return [(name, types) for name, types in groups.items() if types]


def type_description(node_type):
    return (node_type.__doc__ or "").strip().split("\n")[0]


@dataclass
class InsertPoint:
    """Where a "+" adds a node: before or after ``ref``, or first among its steps or its error steps.

    No ``ref``: last at the tree's top level (its first node, when the tree is empty).
    """

    ref: Node | None
    position: str  # "left", "right" or "first-child", as treebeard's position fields take it
    branch: str

    @classmethod
    def from_query(cls, params, form, event):
        """The point a "+" link names (``ref``, ``position``, ``branch``), in this tree only."""
        ref = Node.objects.filter(pk=params.get("ref") or None, form=form, event=event).first()
        position = params.get("position") if ref is not None else "first-child"
        branch = params.get("branch") if params.get("branch") in Node.Branch else Node.Branch.MAIN
        return cls(ref, position if position in ("first-child", "left", "right") else "right", branch)

    def node_form_fields(self, form, event):
        """The node form's tree and position fields for a node added here."""
        return {
            "form": form.pk,
            "event": event,
            "branch": self.branch,
            "treebeard_position": self.position,
            "treebeard_ref_node": self.ref.pk if self.ref is not None else "",
        }

    def __str__(self):
        """In words: "after “Mark received”", "as an error step of “Call CRM”"."""
        if self.ref is None:
            return "at the top level"
        label = f"“{self.ref.display_label()}”"
        if self.position == "first-child":
            return f"as an error step of {label}" if self.branch == Node.Branch.ON_ERROR else f"into {label}"
        where = "before" if self.position == "left" else "after"
        return f"{where} {label}" + (", in the error branch" if self.branch == Node.Branch.ON_ERROR else "")


def node_change_url(node):
    """A node's change page, remembering its tree: after a delete, a stale link still finds the tree."""
    tree = urlencode({"form__id__exact": node.form_id, "event": node.event})
    return reverse("admin:events_node_change", args=[node.pk]) + "?" + urlencode({"_changelist_filters": tree})


def delete_neighbours(node):
    """Where the focus goes once ``node`` is gone: the step after it, the one before, its parent."""
    sequence = node_sequence(node)
    index = next(index for index, each in enumerate(sequence) if each.pk == node.pk)
    around = sequence[index + 1 : index + 2] + sequence[max(index - 1, 0) : index]
    parent = Node.objects.get_parent(node)
    return around + ([parent] if parent is not None else [])


def move_refusal(move):
    return " ".join(str(message) for messages_ in move.errors.values() for message in messages_)


def subtree_of(node):
    """The node and every node under it (steps and error branches), in tree order."""
    return list(Node.objects.get_descendants(node, include_self=True))


def tree_named_by(params):
    """(form, event) of the tree that change-list parameters choose (form__id__exact, event), or None."""
    form_id = params.get("form__id__exact", "")
    form = form_model().objects.filter(pk=form_id).first() if form_id.isdigit() else None
    if form is None:
        return None
    return form, params.get("event") or params.get("event__exact") or RECORD_UPDATE


class NodeChangeList(TreeChangeList):
    def get_results(self, request):
        super().get_results(request)
        if tree_named_by(request.GET) and not self.model_admin.is_filtered(request):
            # The tree's own nodes are counted on the page; "(7 total)" would count every tree's roots.
            self.full_result_count = self.result_count


@admin.register(Node)
class NodeAdmin(TreeVersionViews, TreeAdmin):
    """Add, nest, reorder and move nodes; each type's config as real form fields.

    The Node rows are each tree's draft; publishing it, its history and restoring a version are
    TreeVersionViews' pages (events/admin/versions.py), and the tree page shows where the tree stands.
    """

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
                        "description": conditional_escape(type_description(node_type)),
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
        def view(function, route, name):
            return path(route, self.admin_site.admin_view(function), name=f"events_node_{name}")

        return [
            view(self.overview_view, "overview/<int:form_id>/<path:event>/", "overview"),
            view(self.builder_add_view, "builder/<int:form_id>/add/", "builder_add"),
            view(self.builder_edit_view, "builder/<int:form_id>/<int:node_id>/edit/", "builder_edit"),
            view(self.builder_move_view, "builder/<int:form_id>/<int:node_id>/move/", "builder_move"),
            view(self.builder_delete_view, "builder/<int:form_id>/<int:node_id>/delete/", "builder_delete"),
            *self.version_urls(),
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
        tree = tree_named_by(request.GET)
        tree_params = {"form": tree[0].pk, "event": tree[1]} if tree else {}
        extra_context = {
            **(extra_context or {}),
            "type_links": self.add_links(tree_params),
            "add_url": reverse("admin:events_node_add") + ("?" + urlencode(tree_params) if tree_params else ""),
            "overview_url": tree_overview_url(tree[0].pk, tree[1]) if tree else "",
        }
        if tree and not self.is_filtered(request):
            extra_context["title"] = f"Event tree of “{tree[0]}”: {tree[1]}"
            extra_context["subtitle"] = "Change list: drag a node to move it, or open the tree page to edit in place"
            extra_context["tree_counts"] = tree_counts(list(Node.objects.of_tree(*tree)))
        return super().changelist_view(request, extra_context)

    def get_changelist(self, request, **kwargs):
        return NodeChangeList

    # A deleted node's links lead back to its tree ------------------------------------------------

    def _get_obj_does_not_exist_redirect(self, request, opts, object_id):
        """A link to a node that is gone lands on the tree it belonged to, when the link names the tree.

        The builder's links to change pages carry it (as admin's preserved change-list filters, which
        the change and delete pages keep), and so do the change list's links in a tree's view.
        """
        response = super()._get_obj_does_not_exist_redirect(request, opts, object_id)
        tree = tree_named_by(QueryDict(request.GET.get("_changelist_filters", "")))
        if tree is not None:
            response["Location"] = tree_overview_url(tree[0].pk, tree[1])
        return response

    def response_delete(self, request, obj_display, obj_id):
        response = super().response_delete(request, obj_display, obj_id)
        tree = tree_named_by(QueryDict(request.GET.get("_changelist_filters", "")))
        if tree is not None and isinstance(response, HttpResponseRedirect):
            response["Location"] = tree_overview_url(tree[0].pk, tree[1])
        return response

    # The tree page: the builder ---------------------------------------------------------------

    def overview_view(self, request, form_id, event):
        """The tree of one (form, event), drawn with each node's mode, and edited in place (htmx)."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        form = get_object_or_404(form_model(), pk=form_id)
        context = {
            **self.admin_site.each_context(request),
            **self.tree_context(request, form, event),
            "opts": self.model._meta,
            "title": f"Event tree of “{form}”: {event}",
            "editor_url": tree_editor_url(form.pk, event),
            "type_groups": type_groups(),
        }
        return TemplateResponse(request, "admin/events/node/overview.html", context)

    def tree_context(self, request, form, event):
        nodes = list(Node.objects.of_tree(form, event))
        roots, top = builder_tree(nodes, event=event)
        return {
            "tree_form": form,
            "event": event,
            "roots": roots,
            "top": top,
            "counts": tree_counts(nodes),
            "can_add": self.has_add_permission(request),
            "can_change": self.has_change_permission(request),
            "can_delete": self.has_delete_permission(request),
            "add_base_url": reverse("admin:events_node_builder_add", args=[form.pk]),
            "versions": self.version_bar(request, form, event),
        }

    def tree_response(self, request, form, event, *, message, focus=(), error=False):
        """After a builder action: the tree again, with a message, and where the keyboard focus goes.

        With htmx, only the tree is swapped (the page keeps its scroll and the dialog closes), and the
        versions bar with it (out of band: the draft changed); the message and the ids to focus (the
        first that exists) go in the events:treeChanged event.
        Without it, back to the tree page, at the node.
        """
        if not request.htmx:
            messages.add_message(request, messages.ERROR if error else messages.SUCCESS, message)
            anchor = next((f"#{name.rsplit('-', 1)[0]}" for name in focus if name.startswith("node-")), "")
            return HttpResponseRedirect(tree_overview_url(form.pk, event) + anchor)
        response = TemplateResponse(
            request, "admin/events/node/overview.html#tree_changed", self.tree_context(request, form, event)
        )
        retarget(response, "#events-tree")
        reswap(response, "outerHTML")
        details = {"message": message, "level": "error" if error else "success", "focus": list(focus)}
        return trigger_client_event(response, "events:treeChanged", details, after="settle")

    def builder_render(self, request, part, context):
        """A builder dialog's content: alone for htmx (into the page's dialog), else as a page of its own."""
        template = f"admin/events/node/builder_dialog.html#{part}"
        if request.htmx:
            return TemplateResponse(request, template, context)
        page = {**self.admin_site.each_context(request), "opts": self.model._meta, "part": template, **context}
        page["title"] = context["heading"]
        return TemplateResponse(request, "admin/events/node/builder_page.html", page)

    def back_url(self, form, event, node=None):
        return tree_overview_url(form.pk, event) + (f"#node-{node.pk}" if node is not None else "")

    def builder_tree_of(self, request, form_id, node_id=None):
        """(form, event, node or None) of a builder request; the node must belong to that tree."""
        form = get_object_or_404(form_model(), pk=form_id)
        event = request.GET.get("event") or RECORD_UPDATE
        node = None
        if node_id is not None:
            node = Node.objects.filter(pk=node_id, form=form, event=event).first()
        return form, event, node

    def node_gone(self, request, form, event):
        return self.tree_response(
            request,
            form,
            event,
            message="That node is not in this tree any more (it was deleted or moved away): "
            "here is the tree as it is now.",
            error=True,
        )

    def builder_add_view(self, request, form_id):
        """Add a node where the "+" was: choose its type, then fill in its form (in the dialog)."""
        if not self.has_add_permission(request):
            raise PermissionDenied
        form, event, _ = self.builder_tree_of(request, form_id)
        point = InsertPoint.from_query(request.GET, form, event)
        node_type = node_type_or_none(request.GET.get("type", ""))
        if node_type is None:
            return self.builder_choose_type(request, form, event, point)
        form_class = node_form_for(node_type)
        if request.method != "POST":
            node_form = form_class(initial=point.node_form_fields(form, event))
            return self.builder_form(
                request, form, event, node_form, heading=f"New {node_type.label.lower()} step {point}"
            )
        data = request.POST.copy()
        for key, value in point.node_form_fields(form, event).items():
            data[key] = value  # the tree and the place are the "+"'s, whatever was posted
        with transaction.atomic():
            node_form = form_class(data)
            if not node_form.is_valid():
                return self.builder_form(
                    request, form, event, node_form, heading=f"New {node_type.label.lower()} step {point}"
                )
            node = node_form.save()
        message = f"Added “{node.display_label()}” ({node_type.label}) {point}."
        return self.tree_response(request, form, event, message=message, focus=[f"node-{node.pk}-edit"])

    def builder_choose_type(self, request, form, event, point):
        query = request.GET.copy()
        query.pop("type", None)
        context = {
            "tree_form": form,
            "event": event,
            "where": str(point),
            "type_groups": type_groups(),
            "heading": f"Add a step {point}",
            "query": query.urlencode(),
            "back_url": self.back_url(form, event, point.ref),
        }
        return self.builder_render(request, "choose_type", context)

    def builder_edit_view(self, request, form_id, node_id):
        """Edit a node where it is: its name, label, visibility, config and retries (in the dialog)."""
        if not self.has_change_permission(request):
            raise PermissionDenied
        form, event, node = self.builder_tree_of(request, form_id, node_id)
        if node is None:
            return self.node_gone(request, form, event)
        form_class = node_form_for(node_type_or_none(node.type))
        heading = f"Edit “{node.display_label()}” ({node.type_label})"
        if request.method != "POST":
            return self.builder_form(request, form, event, form_class(instance=node, place=False), heading=heading)
        with transaction.atomic():
            node_form = form_class(request.POST, instance=node, place=False)
            if not node_form.is_valid():
                return self.builder_form(request, form, event, node_form, heading=heading)
            node = node_form.save()
        message = f"Saved “{node.display_label()}”."
        return self.tree_response(request, form, event, message=message, focus=[f"node-{node.pk}-edit"])

    def builder_form(self, request, form, event, node_form, *, heading):
        """A node's form, to add or edit it (``node_form.instance`` is saved already when editing)."""
        node_type = node_form.node_type
        node = None if node_form.instance._state.adding else node_form.instance
        retry_names = ["max_attempts", "retry_backoff_seconds", "retry_backoff_max_seconds", "retry_non_retryable"]
        config = node_form.config_layout()
        context = {
            "tree_form": form,
            "event": event,
            "node_form": node_form,
            "node": node,
            "heading": heading,
            "node_type": node_type,
            "type_description": type_description(node_type) if node_type else "",
            "basics": [node_form[name] for name in ("label", "name", "visible")],
            "config": config,
            "advanced_open": any(
                field.errors or field.value() not in (None, "", False) for field in config["advanced"]
            ),
            "retries": [node_form[name] for name in retry_names],
            "retries_open": any(node_form[name].errors for name in retry_names)
            or bool(node is not None and node.retry_policy.describe()),
            # The place comes from the "+" (the URL), so its fields are not shown: their errors are.
            "place_errors": [
                error for name in PLACE_FIELDS if name in node_form.fields for error in node_form[name].errors
            ],
            "action_url": request.get_full_path(),
            "back_url": self.back_url(form, event, node),
            "page_url": node_change_url(node) if node is not None else "",
        }
        return self.builder_render(request, "node_form", context)

    def builder_move_view(self, request, form_id, node_id):
        """Move a node one step: up, down, into the container above, out of its container."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        if not self.has_change_permission(request):
            raise PermissionDenied
        form, event, node = self.builder_tree_of(request, form_id, node_id)
        if node is None:
            return self.node_gone(request, form, event)
        move = NodeMoveForm(request.POST, node=node)
        direction = request.POST.get("direction", "")
        focus = [f"node-{node.pk}-{direction}", f"node-{node.pk}-edit"]
        if not move.is_valid():
            return self.tree_response(request, form, event, message=move_refusal(move), focus=focus, error=True)
        try:
            node = move.save()
        except InvalidTreeOperation as exc:
            return self.tree_response(request, form, event, message=" ".join(exc.messages), focus=focus, error=True)
        return self.tree_response(request, form, event, message=move.done_message(), focus=focus)

    def builder_delete_view(self, request, form_id, node_id):
        """Delete a node with everything under it, once the admin confirmed (the dialog lists what goes)."""
        if not self.has_delete_permission(request):
            raise PermissionDenied
        form, event, node = self.builder_tree_of(request, form_id, node_id)
        if node is None:
            return self.node_gone(request, form, event)
        subtree = subtree_of(node)
        if request.method != "POST":
            context = {
                "tree_form": form,
                "event": event,
                "node": node,
                "subtree": [
                    {
                        "label": each.display_label(),
                        "type_label": each.type_label,
                        "depth": each.depth - node.depth,
                        "is_error_step": each.branch == Node.Branch.ON_ERROR,
                    }
                    for each in subtree
                ],
                "heading": f"Delete “{node.display_label()}”?",
                "action_url": request.get_full_path(),
                "back_url": self.back_url(form, event, node),
            }
            return self.builder_render(request, "confirm_delete", context)
        focus = [f"node-{neighbour.pk}-edit" for neighbour in delete_neighbours(node)] + ["events-top-add"]
        label = node.display_label()
        with transaction.atomic():
            node.delete()
        inside = len(subtree) - 1
        message = f"Deleted “{label}”" + (
            f" and the {inside} node{'s' if inside != 1 else ''} under it." if inside else "."
        )
        return self.tree_response(request, form, event, message=message, focus=focus)

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

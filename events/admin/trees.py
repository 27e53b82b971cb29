"""The event-tree editor and its read-only overview."""

from urllib.parse import urlencode

from django.contrib import admin, messages
from django.contrib.admin.views.main import IGNORED_PARAMS, PAGE_VAR, SEARCH_VAR
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.http import HttpResponseBadRequest, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html
from treebeard.admin import TreeAdmin

from ..admin_forms import config_field_name, node_form_for, node_type_or_none
from ..models import (
    RECORD_UPDATE,
    InvalidTreeOperation,
    Node,
    form_model,
    tree_nest,
)
from ..nodes import registry
from .common import pretty_json, tree_editor_url, tree_overview_url  # noqa: F401

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

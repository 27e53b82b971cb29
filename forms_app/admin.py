"""Admin: forms with their fields inline and links to their event trees; records, read-only."""

import json
import re
from urllib.parse import urlencode

from django.contrib import admin
from django.db.models import Exists, OuterRef, Q
from django.db.models.fields.json import KeyTextTransform
from django.db.models.lookups import IContains
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.text import smart_split, unescape_string_literal

from events.admin import formfiles, pretty_json, tree_editor_url, tree_overview_url
from events.admin.runs import reference_range, tokens_in
from events.models import RECORD_UPDATE, Run

from .models import Field, Form, Record


def tree_links(form_id, event):
    return tree_editor_url(form_id, event), tree_overview_url(form_id, event)


class FieldInline(admin.TabularInline):
    model = Field
    extra = 0
    ordering = ["position", "id"]
    fields = [
        "position",
        "name",
        "label",
        "type",
        "required",
        "help_text",
        "choices",
        "min_value",
        "max_value",
        "max_length",
        "pattern",
        "default",
    ]


@admin.register(Form)
class FormAdmin(admin.ModelAdmin):
    list_display = ["title", "slug", "is_published", "collect_debug", "public_link", "event_tree_links"]
    list_filter = ["is_published", "collect_debug"]
    search_fields = ["title", "slug"]
    prepopulated_fields = {"slug": ["title"]}
    inlines = [FieldInline]
    actions = [formfiles.export_form_files]  # and an import page: import_view (events/admin/formfiles.py)
    readonly_fields = ["public_link", "event_trees"]
    fieldsets = [
        (None, {"fields": ["title", "slug", "description", "submit_label", "is_published", "public_link"]}),
        ("Event trees", {"fields": ["event_trees", "collect_debug"]}),
        (
            "Waiting page",
            {
                "fields": [
                    "waiting_title",
                    "poll_seconds",
                    "wait_for",
                    "wait_flag",
                    "max_wait_seconds",
                    "done_message",
                    "done_redirect_url",
                    "failed_message",
                ]
            },
        ),
    ]

    # Here rather than on the model fields: the words are for the admin page (no migration for a help text).
    message_help_texts = {
        "done_message": "Template over the record: {{ record.email }}, {{ flags.paid }}; {% if handled_failures %} "
        "when a step failed and its error branch took care of it (each has a label and a name).",
        "failed_message": "Template, like the done message (record, flags, handled_failures).",
    }

    def get_form(self, request, obj=None, change=False, **kwargs):
        kwargs["help_texts"] = {**self.message_help_texts, **kwargs.get("help_texts", {})}
        return super().get_form(request, obj, change=change, **kwargs)

    # Form files: an import page (linked from the list) and the export action.
    def get_urls(self):
        import_url = path("import/", self.admin_site.admin_view(self.import_view), name="forms_app_form_import")
        return [import_url, *super().get_urls()]

    def import_view(self, request):
        return formfiles.import_view(self, request)

    def has_export_permission(self, request):
        return formfiles.can_export(request)

    def changelist_view(self, request, extra_context=None):
        extra_context = {"can_import_form_files": formfiles.can_import(request), **(extra_context or {})}
        return super().changelist_view(request, extra_context)

    @admin.display(description="public form")
    def public_link(self, form):
        if form.pk is None:
            return "—"
        url = form.get_absolute_url()
        return format_html('<a href="{}" target="_blank" rel="noopener">{}</a>', url, url)

    @admin.display(description="event tree")
    def event_tree_links(self, form):
        editor, overview = tree_links(form.pk, RECORD_UPDATE)
        return format_html('<a href="{}">edit</a> · <a href="{}">overview</a>', editor, overview)

    @admin.display(description="event trees")
    def event_trees(self, form):
        """One line per event of this form: record_update always, custom events once they have nodes."""
        if form.pk is None:
            return "Save the form first, then build its event trees."
        events = [RECORD_UPDATE, *sorted(set(form.nodes.exclude(event=RECORD_UPDATE).values_list("event", flat=True)))]
        add_url = reverse("admin:events_node_add") + "?" + urlencode({"form": form.pk})
        lines = format_html_join(
            "",
            '<li>{}: <a href="{}">edit the tree</a> · <a href="{}">overview</a></li>',
            ((event, *tree_links(form.pk, event)) for event in events),
        )
        return format_html(
            '<ul class="events-tree-links">{}</ul><p><a href="{}">Add a node</a> '
            "(give it another event name to start a custom event's tree).</p>",
            lines,
            add_url,
        )


FIELD_VALUE = re.compile(r"(?P<field>[-a-zA-Z0-9_]+)=(?P<value>.+)", re.S)


def unquoted(term):
    """A word of the search as typed, without the quotes that kept its spaces in ("ann smith")."""
    if len(term) > 1 and term[0] in "\"'" and term[-1] == term[0]:
        return unescape_string_literal(term)
    return term


def record_search_condition(term):
    """What one word of the record search matches.

    ``field=value``: that submitted field's value contains ``value``. Any other word: the record's
    token (or a URL holding it), a reference of one of its runs, its form's title or slug, or its
    submitted data (keys and values). The data is matched as JSON text, which escapes quotes and
    backslashes (and, as SQLite stores it, non-ASCII characters): the word is tried as typed and as
    JSON writes it, in lower and upper case.
    """
    match = FIELD_VALUE.fullmatch(term)
    if match:
        return Q(IContains(KeyTextTransform(match["field"], "data"), match["value"]))
    # SQLite compares only ASCII letters without case: an escaped "\u00eb" matches ë, not Ë.
    spellings = {term, json.dumps(term, ensure_ascii=False)[1:-1]}
    spellings |= {json.dumps(cased)[1:-1] for cased in (term, term.lower(), term.upper())}
    condition = Q(form__title__icontains=term) | Q(form__slug__icontains=term)
    for spelling in sorted(spellings):
        condition |= Q(data__icontains=spelling)
    tokens = tokens_in(term)
    if tokens:
        condition |= Q(token__in=tokens)
    span = reference_range(term)
    if span is not None:
        condition |= Q(Exists(Run.objects.filter(record=OuterRef("pk"), id__range=span)))
    return condition


@admin.register(Record)
class RecordAdmin(admin.ModelAdmin):
    """Submissions, as they were stored: read-only."""

    list_display = ["__str__", "form", "created_at", "is_complete"]
    list_filter = ["form", "is_complete"]
    list_select_related = ["form"]
    # What the search looks in (record_search_condition says how); listed so the admin shows its box.
    search_fields = ["token", "form__title", "form__slug", "data"]
    search_help_text = (
        "Submitted values (“ann@example.com”, or field=value for one field: email=ann@example.com), a record's "
        "token or waiting-page URL, a run's reference, a form's title or slug. Every word must match."
    )
    date_hierarchy = "created_at"
    fields = [
        "form",
        "created_at",
        "updated_at",
        "is_complete",
        "data_json",
        "flags_json",
        "runs_link",
        "waiting_page_link",
    ]
    readonly_fields = fields

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def get_search_results(self, request, queryset, search_term):
        for term in smart_split(search_term):
            term = unquoted(term)
            if term:
                queryset = queryset.filter(record_search_condition(term))
        return queryset, False

    @admin.display(description="data")
    def data_json(self, record):
        return pretty_json(record.data)

    @admin.display(description="flags")
    def flags_json(self, record):
        return pretty_json(record.flags)

    @admin.display(description="runs")
    def runs_link(self, record):
        url = reverse("admin:events_run_changelist") + "?" + urlencode({"record__id__exact": record.pk})
        count = record.runs.count()
        return format_html('<a href="{}">{} run{}</a>', url, count, "" if count == 1 else "s")

    @admin.display(description="waiting page")
    def waiting_page_link(self, record):
        url = record.get_absolute_url()
        return format_html('<a href="{}" target="_blank" rel="noopener">{}</a>', url, url)

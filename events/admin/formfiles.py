"""Form files in admin: an import page (upload a .json file or paste its text) and an export action.

The same format and rules as ``manage.py import_form`` / ``export_form`` (events/formfile.py). An
import checks the whole document first: a document with any problem changes nothing, and the page
lists every problem with its JSON path. A form whose slug already exists is replaced only when the
admin ticks "Replace" (an import replaces its settings, fields and event trees). The event trees are
imported as drafts (the live versions keep running until someone publishes them on the tree's page),
unless the admin ticks "Publish at once". Exporting one form downloads ``<slug>.json``; several
download one zip holding a ``<slug>.json`` per form; each tree is written as its live version.

forms_app/admin.py's FormAdmin wires both in (its ``import_view`` URL and its ``actions``): events
names forms_app's models by string and never imports it.

Permissions: importing may create a form, change one, and add, change and delete its fields and
event-tree nodes, so it needs every one of those permissions (``import_permissions()``). Exporting
shows a form and its trees (their configs may hold secrets, such as an HTTP step's headers), so it
needs to view both.
"""

import io
import zipfile
from urllib.parse import urlencode

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from ..formfile import FormFileError, document_parse, form_check, form_export_json, form_import_result
from ..models import Node, field_model, form_model

IMPORT_TEMPLATE = "admin/forms_app/form/formfile_import.html"


def _permission(model, action):
    return f"{model._meta.app_label}.{action}_{model._meta.model_name}"


def import_permissions():
    """Everything an import may do: create or change the form; add, change and delete its fields and nodes."""
    form, field = form_model(), field_model()
    return [
        _permission(form, "add"),
        _permission(form, "change"),
        *(_permission(model, action) for model in (field, Node) for action in ("add", "change", "delete")),
    ]


def can_import(request):
    user = request.user
    return user.is_active and user.is_staff and user.has_perms(import_permissions())


def can_export(request):
    """Staff who may see forms and their event trees (viewing, or changing, which implies it)."""
    user = request.user

    def sees(model):
        return user.has_perm(_permission(model, "view")) or user.has_perm(_permission(model, "change"))

    return user.is_active and user.is_staff and sees(form_model()) and sees(Node)


class FormFileImportForm(forms.Form):
    file = forms.FileField(
        label=gettext_lazy("Form file"),
        required=False,
        help_text=gettext_lazy("A .json file, as “Export as form files” or manage.py export_form writes it."),
        widget=forms.ClearableFileInput(attrs={"accept": ".json,application/json"}),
    )
    text = forms.CharField(
        label=gettext_lazy("…or its text"),
        required=False,
        strip=False,
        widget=forms.Textarea(attrs={"rows": 14, "cols": 100, "class": "vLargeTextField", "spellcheck": "false"}),
    )
    replace = forms.BooleanField(
        label=gettext_lazy("Replace the form if one has the same slug"),
        required=False,
        help_text=gettext_lazy(
            "Its settings, fields and event trees become the file's; records, runs and tasks are kept."
        ),
    )

    publish = forms.BooleanField(
        label=gettext_lazy("Publish at once"),
        required=False,
        help_text=gettext_lazy(
            "Publish each event tree the file changes as its next version: new submissions run it at once. "
            "Unticked, the trees are drafts: the live versions keep running until you review and publish them "
            "on each tree's page."
        ),
    )

    def clean(self):
        upload, text = self.cleaned_data.get("file"), self.cleaned_data.get("text") or ""
        if upload and text.strip():
            raise forms.ValidationError(_("Choose a file or paste the text, not both."))
        if not upload and not text.strip():
            raise forms.ValidationError(_("Choose a form file, or paste its text."))
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE  # the same limit as for pasted text
        if upload and limit is not None and upload.size > limit:
            raise forms.ValidationError(_("The file is over %(limit)s bytes.") % {"limit": limit})
        self.cleaned_data["content"] = upload.read() if upload else text
        self.cleaned_data["source"] = upload.name if upload else _("The pasted text")
        return self.cleaned_data


def formfile_import(content, *, replace, publish=False, user=None, note=""):
    """Import a form file's text (str or bytes). Raises FormFileError, and changes nothing, on any problem.

    Without ``replace``, a document whose slug names an existing form is refused. The trees are drafts
    unless ``publish``: then each tree the file changes is published, by ``user``, with ``note``.
    """
    document = document_parse(content)
    slug = form_check(document).slug
    if not replace and form_model().objects.filter(slug=slug).exists():
        raise FormFileError(
            [
                (
                    "form.slug",
                    _(
                        "a form with the slug “%(slug)s” exists: tick “Replace the form if one has the same "
                        "slug” to replace its settings, fields and event trees, or change the slug"
                    )
                    % {"slug": slug},
                )
            ]
        )
    return form_import_result(document, publish=publish, user=user, note=note)


def import_note(upload):
    """The note of the versions an import publishes."""
    if upload:
        return _("Imported in the admin from %(name)s.") % {"name": upload.name}
    return _("Imported in the admin from pasted text.")


def drafts_message(result):
    """The drafts an import left, each linked to its Review and publish page (empty: none)."""
    links = format_html_join(
        ", ",
        '<a href="{}">{}</a>',
        (
            (reverse("admin:events_node_publish", args=[result.form.pk]) + "?" + urlencode({"event": event}), event)
            for event in result.drafts
        ),
    )
    return format_html("To publish, review each draft: {}.", links) if result.drafts else ""


def import_view(model_admin, request):
    """GET: the import page. POST: import, then go to the form, or show every problem and change nothing."""
    if not can_import(request):
        raise PermissionDenied
    upload_form = FormFileImportForm(request.POST, request.FILES) if request.method == "POST" else FormFileImportForm()
    opts = model_admin.model._meta
    problems, source = [], ""
    if upload_form.is_valid():
        source = upload_form.cleaned_data["source"]
        try:
            result = formfile_import(
                upload_form.cleaned_data["content"],
                replace=upload_form.cleaned_data["replace"],
                publish=upload_form.cleaned_data["publish"],
                user=request.user,
                note=import_note(upload_form.cleaned_data["file"]),
            )
        except FormFileError as error:
            problems = error.problems
        else:
            for line in result.summary().splitlines():
                messages.success(request, line)
            if result.drafts:
                messages.warning(request, drafts_message(result))
            return HttpResponseRedirect(
                reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[result.form.pk])
            )
    context = {
        **model_admin.admin_site.each_context(request),
        "opts": opts,
        "title": _("Import a form file"),
        "upload_form": upload_form,
        "problems": problems,
        "source": source,
        "changelist_url": reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist"),
    }
    return TemplateResponse(request, IMPORT_TEMPLATE, context)


def export_response(forms_to_export):
    """One form: its ``<slug>.json``. Several: a zip of one ``<slug>.json`` each."""
    if len(forms_to_export) == 1:
        [form] = forms_to_export
        response = HttpResponse(form_export_json(form), content_type="application/json; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="{form.slug}.json"'
        return response
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as bundle:
        for form in forms_to_export:
            bundle.writestr(f"{form.slug}.json", form_export_json(form))
    response = HttpResponse(archive.getvalue(), content_type="application/zip")
    response["Content-Disposition"] = f'attachment; filename="form-files-{timezone.localdate():%Y-%m-%d}.zip"'
    return response


@admin.action(description=gettext_lazy("Export as form files (JSON; a zip for several)"), permissions=["export"])
def export_form_files(model_admin, request, queryset):
    """The admin action: the chosen forms as form files (one .json, or a zip of them)."""
    return export_response(list(queryset.order_by("slug")))

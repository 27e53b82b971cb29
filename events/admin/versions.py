"""Versions of an event tree in admin: the tree page's status bar, Review and publish, history, restore.

The Node rows of a (form, event) are its draft, which the tree page edits; submissions run its live
version (events/versions.py). These pages belong to NodeAdmin (events/admin/trees.py mixes
``TreeVersionViews`` in), under ``versions/<form id>/…?event=<event>``:

- **Review and publish** (``publish``): the impact preview (what the draft changes against the live
  version, node by node; the runs in flight; the pending delays and awaiting callbacks of those runs
  whose nodes the draft removes or changes), then Publish, which posts the ``TreeStatus.token`` the
  page was drawn with: when the draft or the live version changed since, nothing is published and
  the preview is shown again.
- **History** (``tree_history``): every version, who published it and when, its note, how many runs ran
  it, its form file; a diff of any two versions, or of a version and the draft.
- **Restore as draft** (``restore``) and **Discard draft** (``discard``, which restores the live
  version): a confirmation, then the draft is rebuilt from the version (``tree_restore``), keeping
  node ids. Nothing is published.

Viewing needs the view permission on nodes; publishing, restoring and discarding change the tree,
so they need the change permission on nodes. A version's form file needs what exporting a form needs.
"""

from urllib.parse import urlencode

from django import forms
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.db.models import Count
from django.http import HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.text import slugify

from ..formfile import form_export_json, tree_restore
from ..models import RECORD_UPDATE, InvalidTreeOperation, TreeVersion, form_model
from ..versions import DraftChanged, tree_diff, tree_impact, tree_publish, tree_status
from .common import tree_overview_url
from .formfiles import can_export

DRAFT = "draft"  # what the history's compare form calls the draft, beside version numbers


class PublishForm(forms.Form):
    note = forms.CharField(
        label="Note",
        required=False,
        max_length=500,
        help_text="What changed and why, for the history (optional).",
        widget=forms.Textarea(attrs={"rows": 2, "cols": 80}),
    )
    expect = forms.CharField(widget=forms.HiddenInput)


class CompareForm(forms.Form):
    """Two of a tree's versions (or the draft) to compare: ``base`` before, ``other`` after."""

    base = forms.ChoiceField(label="Compare")
    other = forms.ChoiceField(label="with")

    def __init__(self, *args, numbers, **kwargs):
        super().__init__(*args, **kwargs)
        choices = [(DRAFT, "the draft")] + [(str(number), f"version {number}") for number in numbers]
        self.fields["base"].choices = self.fields["other"].choices = choices


def plural(count, word):
    return f"{count} {word}{'' if count == 1 else 's'}"


def snapshot_named(status, versions, which):
    """The snapshot the compare form names: the draft, or a version by number."""
    if which == DRAFT:
        return status.draft
    return next(version.snapshot for version in versions if str(version.number) == which)


def which_text(which):
    return "the draft" if which == DRAFT else f"version {which}"


class TreeVersionViews:
    """NodeAdmin's version pages and the tree page's status bar (mixed into NodeAdmin)."""

    def version_urls(self):
        def view(function, route, name):
            return path(route, self.admin_site.admin_view(function), name=f"events_node_{name}")

        return [
            view(self.publish_view, "versions/<int:form_id>/publish/", "publish"),
            view(self.tree_history_view, "versions/<int:form_id>/history/", "tree_history"),
            view(self.discard_view, "versions/<int:form_id>/discard/", "discard"),
            view(self.restore_view, "versions/<int:form_id>/<int:number>/restore/", "restore"),
            view(self.version_export_view, "versions/<int:form_id>/<int:number>/export/", "version_export"),
        ]

    def version_url(self, name, form, event, *args, **query):
        return reverse(f"admin:events_node_{name}", args=[form.pk, *args]) + "?" + urlencode({"event": event, **query})

    def version_tree_of(self, request, form_id):
        return get_object_or_404(form_model(), pk=form_id), request.GET.get("event") or RECORD_UPDATE

    def version_bar(self, request, form, event):
        """What the tree page's status bar shows: the live version, the draft's changes (nodes), the buttons."""
        status = tree_status(form=form, event=event)
        return {
            "status": status,
            "change_count": tree_diff(status.live_snapshot, status.draft).count() if status.has_changes else 0,
            "can_publish": self.has_change_permission(request),
            "publish_url": self.version_url("publish", form, event),
            "discard_url": self.version_url("discard", form, event),
            "history_url": self.version_url("tree_history", form, event),
        }

    def version_page(self, request, form, event, template, context):
        page = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "tree_form": form,
            "event": event,
            "tree_url": tree_overview_url(form.pk, event),
            "history_url": self.version_url("tree_history", form, event),
            **context,
        }
        return TemplateResponse(request, f"admin/events/node/{template}", page)

    # Review and publish ---------------------------------------------------------------------------

    def publish_view(self, request, form_id):
        """GET: the impact preview of publishing the draft. POST: publish it, if it is still what was reviewed."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        form, event = self.version_tree_of(request, form_id)
        if request.method != "POST":
            return self.publish_preview(request, form, event)
        if not self.has_change_permission(request):
            raise PermissionDenied
        publish_form = PublishForm(request.POST)
        if not publish_form.is_valid():
            return self.publish_preview(request, form, event, publish_form)
        try:
            version = tree_publish(
                form=form,
                event=event,
                user=request.user,
                note=publish_form.cleaned_data["note"],
                expect=publish_form.cleaned_data["expect"],
            )
        except DraftChanged as exc:
            return self.publish_preview(request, form, event, note=publish_form.cleaned_data["note"], refusal=str(exc))
        if version is None:
            messages.info(request, "Nothing was published: the draft is the live version already.")
        else:
            messages.success(
                request,
                f"Published version {version.number} of the {event} tree: new submissions run it; "
                "runs in flight finish on the version they started with.",
            )
        return HttpResponseRedirect(tree_overview_url(form.pk, event))

    def publish_preview(self, request, form, event, publish_form=None, *, note="", refusal=""):
        """The impact preview; its Publish posts the token of the draft and live version shown here."""
        impact = tree_impact(form=form, event=event)
        status = impact.status
        if publish_form is None:  # a refused form (is_bound) keeps what was posted, its errors too
            publish_form = PublishForm(initial={"note": note, "expect": status.token})
        live_number = status.live.number if status.live else 0
        context = {
            "title": f"Review and publish: the {event} tree of “{form}”",
            "heading": "Review and publish",
            "status": status,
            "impact": impact,
            "next_number": live_number + 1,
            "diff": tree_diff(status.live_snapshot, status.draft),
            "publish_form": publish_form,
            "refusal": refusal,
            "can_publish": self.has_change_permission(request) and status.has_changes,
            "action_url": self.version_url("publish", form, event),
        }
        return self.version_page(request, form, event, "version_publish.html", context)

    # History and compare --------------------------------------------------------------------------

    def tree_history_view(self, request, form_id):
        """Every version of the tree, newest first, and the diff of the two the compare form names."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        form, event = self.version_tree_of(request, form_id)
        status = tree_status(form=form, event=event)
        versions = list(
            TreeVersion.objects.of_tree(form, event).select_related("published_by").annotate(run_count=Count("runs"))
        )
        numbers = [version.number for version in versions]
        compare = CompareForm(request.GET if "base" in request.GET else None, numbers=numbers)
        diff = None
        if compare.is_bound and compare.is_valid():
            base, other = compare.cleaned_data["base"], compare.cleaned_data["other"]
            diff = {
                "base": which_text(base),
                "other": which_text(other),
                "diff": tree_diff(snapshot_named(status, versions, base), snapshot_named(status, versions, other)),
            }
        exportable = can_export(request)
        can_restore = self.has_change_permission(request)
        rows = [
            {
                "version": version,
                "is_live": index == 0,
                "previous_url": self.compare_url(form, event, version.number - 1, version.number)
                if version.number - 1 in numbers
                else "",
                "draft_url": self.compare_url(form, event, version.number, DRAFT),
                "export_url": self.version_url("version_export", form, event, version.number) if exportable else "",
                # Restoring the live version when the draft is the live version would change nothing.
                "restore_url": self.version_url("restore", form, event, version.number)
                if can_restore and not (index == 0 and not status.has_changes)
                else "",
            }
            for index, version in enumerate(versions)
        ]
        context = {
            "title": f"History of the {event} tree of “{form}”",
            "heading": "History",
            "status": status,
            "rows": rows,
            "compare": compare,
            "compared": diff,
            "action_url": reverse("admin:events_node_tree_history", args=[form.pk]),
        }
        return self.version_page(request, form, event, "version_history.html", context)

    def compare_url(self, form, event, base, other):
        return self.version_url("tree_history", form, event, base=base, other=other) + "#compared"

    def version_export_view(self, request, form_id, number):
        """The form file of the form with this version of the tree (its other trees: their live versions)."""
        if not can_export(request):
            raise PermissionDenied
        form, event = self.version_tree_of(request, form_id)
        get_object_or_404(TreeVersion, form=form, event=event, number=number)
        response = HttpResponse(
            form_export_json(form, versions={event: number}), content_type="application/json; charset=utf-8"
        )
        filename = f"{form.slug}-{slugify(event) or 'event'}-version-{number}.json"
        response["Content-Disposition"] = f'attachment; filename="{filename}"'
        return response

    # Restore a version as the draft; discard the draft ------------------------------------------

    def restore_view(self, request, form_id, number):
        """GET: what restoring this version as the draft would change. POST: restore it (nothing is published)."""
        if not self.has_change_permission(request):
            raise PermissionDenied
        form, event = self.version_tree_of(request, form_id)
        version = get_object_or_404(TreeVersion, form=form, event=event, number=number)
        return self.restore(request, form, event, version, discard=False)

    def discard_view(self, request, form_id):
        """GET: the draft's changes that would be lost. POST: the live version becomes the draft again."""
        if not self.has_change_permission(request):
            raise PermissionDenied
        form, event = self.version_tree_of(request, form_id)
        live = TreeVersion.objects.live(form, event)
        if live is None:
            messages.error(request, "This tree was never published: there is no live version to go back to.")
            return HttpResponseRedirect(tree_overview_url(form.pk, event))
        return self.restore(request, form, event, live, discard=True)

    def restore(self, request, form, event, version, *, discard):
        refusal = ""
        if request.method == "POST":
            try:
                tree_restore(version=version, expect=request.POST.get("expect", ""))
            except DraftChanged as exc:
                refusal = str(exc)
            except InvalidTreeOperation as exc:
                messages.error(request, " ".join(exc.messages))
                return HttpResponseRedirect(tree_overview_url(form.pk, event))
            else:
                messages.success(request, self.restored_message(form, event, version, discard=discard))
                return HttpResponseRedirect(tree_overview_url(form.pk, event))
        status = tree_status(form=form, event=event)
        what = "Discard the draft" if discard else f"Restore version {version.number} as the draft"
        context = {
            "title": f"{what} of the {event} tree of “{form}”?",
            "heading": what,
            "discard": discard,
            "version": version,
            "status": status,
            "draft_changes": tree_diff(status.live_snapshot, status.draft).count() if status.has_changes else 0,
            "diff": tree_diff(status.draft, version.snapshot),
            "refusal": refusal,
            "action_url": request.get_full_path(),
        }
        return self.version_page(request, form, event, "version_restore.html", context)

    def restored_message(self, form, event, version, *, discard):
        status = tree_status(form=form, event=event)
        if discard:
            return f"Discarded the draft: it is version {version.number} again, the live version."
        if not status.has_changes:
            return f"Restored version {version.number} as the draft: it is the live version, nothing to publish."
        changes = tree_diff(status.live_snapshot, status.draft).count()
        return (
            f"Restored version {version.number} as the draft: {plural(changes, 'change')} not published. "
            "Review and publish to make it live."
        )

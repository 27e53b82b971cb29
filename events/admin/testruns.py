"""Admin: test-run a tree against a submission (nothing sent), and replay past records through two versions.

The test-run page belongs to a tree (form, event): choose what runs (the draft or a published
version), what it runs on (a past record, or data typed in) and how the world outside answers
(per node: the HTTP response, and the callback of a step that waits for one); the page shows the
result as a run's timeline, with the emails and requests captured, the record's final data and
flags, and how the waiting page would end. A replay is started from there too, and has a page of
its own (the Replay change page) with a progress bar while a worker plays it.
"""

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse

from ..models import Node, Replay, TreeVersion, form_model, record_model
from ..nodes import registry
from ..testrun import TestRunError, tree_test_run
from ..testrun.canned import CALLBACK_STATUSES
from ..testrun.replay import ReplayError, replay_records, replay_start
from .common import pretty_json, tree_overview_url

RECENT_RECORDS = 50
DEFAULT_REPLAY_COUNT = 20


def answering_nodes(snapshot):
    """The nodes of a tree a test run answers in place of the world outside: [(node, ("response", "callback"))]."""
    found = []

    def visit(nodes):
        for node in nodes or []:
            try:
                answers = registry.get(node["type"]).test_run_answers(node.get("config") or {})
            except registry.UnknownNodeType:
                answers = ()
            if answers:
                found.append((node, answers))
            visit(node.get("children"))
            visit(node.get("on_error"))

    visit(snapshot)
    return found


def _node_key(node):
    return node.get("name") or str(node["id"])


def canned_key(tree_form, event):
    """Where an admin's canned answers for a tree are kept between visits: their session."""
    return f"events-canned-{tree_form.pk}-{event}"


def answers_initial(document):
    """A canned-answers document as the initial values of the test-run form's node fields."""
    initial = {}
    for key, entry in document.items():
        if "status" in entry:
            initial[f"status__{key}"] = entry["status"]
        if "json" in entry:
            initial[f"json__{key}"] = entry["json"]
        if isinstance(entry.get("callback"), dict):
            initial[f"callback__{key}"] = entry["callback"].get("status", "SUCCESS")
            initial[f"output__{key}"] = entry["callback"].get("output", {})
    return initial


class TestRunForm(forms.Form):
    """What a test run runs, on what, and the canned answers of each node that calls out."""

    __test__ = False

    tree = forms.ChoiceField(label="Run", help_text="The draft is what the builder shows; a version is what ran.")
    source = forms.ChoiceField(
        label="On", choices=[("record", "a past record"), ("data", "data typed in")], widget=forms.RadioSelect
    )
    record = forms.ChoiceField(label="Record", required=False)
    token = forms.CharField(label="…or its token", required=False, max_length=64)
    data = forms.JSONField(label="Data", required=False, help_text="A JSON object: field name → value.")

    def __init__(self, *args, tree_form, event, versions, snapshot, records_visible=True, **kwargs):
        super().__init__(*args, **kwargs)
        self.tree_form, self.event, self.versions = tree_form, event, versions
        self.fields["tree"].choices = [("draft", "the draft")] + [
            (str(version.number), f"version {version.number}") for version in versions
        ]
        if records_visible:
            records = record_model().objects.filter(form=tree_form).order_by("-created_at", "-pk")[:RECENT_RECORDS]
            self.fields["record"].choices = [("", "— the most recent —")] + [
                (str(record.pk), f"{record.created_at:%Y-%m-%d %H:%M} · {record.token[:8]}…") for record in records
            ]
        else:  # a past record's data is not this admin's to see: data typed in only
            self.fields["source"].choices = [("data", "data typed in")]
            del self.fields["record"], self.fields["token"]
        self.answering = answering_nodes(snapshot)
        for node, answers in self.answering:
            key = _node_key(node)
            if "response" in answers:
                self.fields[f"status__{key}"] = forms.IntegerField(
                    label="Answer status", min_value=100, max_value=599, initial=200
                )
                self.fields[f"json__{key}"] = forms.JSONField(label="Answer JSON", initial=dict, required=False)
            if "callback" in answers:
                self.fields[f"callback__{key}"] = forms.ChoiceField(
                    label="Callback", choices=[(status, status) for status in CALLBACK_STATUSES], initial="SUCCESS"
                )
                self.fields[f"output__{key}"] = forms.JSONField(label="Callback output", initial=dict, required=False)

    def node_fields(self):
        """For the template: each answering node with its bound fields."""
        return [
            {
                "node": node,
                "fields": [
                    self[name]
                    for name in (f"status__{_node_key(node)}", f"json__{_node_key(node)}")
                    + (f"callback__{_node_key(node)}", f"output__{_node_key(node)}")
                    if name in self.fields
                ],
            }
            for node, _answers in self.answering
        ]

    def clean(self):
        cleaned = super().clean()
        if cleaned.get("source") == "data" and not isinstance(cleaned.get("data"), dict):
            self.add_error("data", 'Give the submission as a JSON object: {"field": "value"}.')
        for node, _answers in self.answering:
            name = f"output__{_node_key(node)}"
            if cleaned.get(name) is not None and not isinstance(cleaned[name], dict):
                self.add_error(name, "Give the output as a JSON object.")
        return cleaned

    def canned(self):
        """The canned-answers document of the nodes' fields."""
        document = {}
        for node, answers in self.answering:
            key, entry = _node_key(node), {}
            if "response" in answers:
                entry["status"] = self.cleaned_data.get(f"status__{key}") or 200
                body = self.cleaned_data.get(f"json__{key}")
                entry["json"] = {} if body is None else body
            if "callback" in answers:
                entry["callback"] = {
                    "status": self.cleaned_data.get(f"callback__{key}") or "SUCCESS",
                    "output": self.cleaned_data.get(f"output__{key}") or {},
                }
            document[key] = entry
        return document

    def version(self):
        chosen = self.cleaned_data["tree"]
        return None if chosen == "draft" else next(v for v in self.versions if str(v.number) == chosen)

    def submission(self):
        """(data typed in, None) or (None, the past record) the test run runs on."""
        if self.cleaned_data["source"] == "data":
            return self.cleaned_data["data"], None
        records = record_model().objects.filter(form=self.tree_form)
        token, chosen = self.cleaned_data.get("token", "").strip(), self.cleaned_data.get("record")
        if token:
            record = records.filter(token=token).first()
        elif chosen:
            record = records.filter(pk=chosen).first()
        else:
            record = records.order_by("-created_at", "-pk").first()
        if record is None:
            missing = "No such record of this form." if token or chosen else "The form has no record yet: type data in."
            raise TestRunError([("record", missing)])
        return None, record


class ReplayForm(forms.Form):
    """Which records a replay takes: the N most recent, or those submitted between two dates."""

    count = forms.IntegerField(label="The most recent", min_value=1, initial=DEFAULT_REPLAY_COUNT, required=False)
    since = forms.DateTimeField(label="…or submitted from", required=False)
    until = forms.DateTimeField(label="until", required=False)

    def __init__(self, *args, limit, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["count"] = forms.IntegerField(
            label="The most recent", min_value=1, max_value=limit, initial=DEFAULT_REPLAY_COUNT, required=False
        )
        self.fields["count"].help_text = f"records (at most {limit})"


@admin.register(Replay)
class ReplayAdmin(admin.ModelAdmin):
    """Replays are started from a tree's test-run page; their page shows the progress and the differences."""

    list_display = ["created_at", "form", "event", "baseline_label", "candidate_label", "status", "done", "differing"]
    list_filter = ["status", "form"]
    change_form_template = "admin/events/replay/change_form.html"

    def has_add_permission(self, request):
        return False  # started from a tree's test-run page

    def has_change_permission(self, request, obj=None):
        return False  # a replay is what it found; nothing of it is edited

    def get_urls(self):
        view = self.admin_site.admin_view
        return [
            path("test-run/<int:form_id>/<path:event>/", view(self.test_run_view), name="events_testrun"),
            path("start/<int:form_id>/<path:event>/", view(self.replay_start_view), name="events_replay_start"),
            path("<uuid:object_id>/progress/", view(self.progress_view), name="events_replay_progress"),
            *super().get_urls(),
        ]

    # The test-run page ----------------------------------------------------------------------------

    def tree_or_404(self, request, form_id, event):
        if not request.user.has_perm("events.view_node"):
            raise PermissionDenied
        tree_form = get_object_or_404(form_model(), pk=form_id)
        versions = list(TreeVersion.objects.of_tree(tree_form, event))
        return tree_form, versions

    def test_run_view(self, request, form_id, event):
        tree_form, versions = self.tree_or_404(request, form_id, event)
        draft = Node.objects.snapshot(tree_form, event)
        answering_from = list(draft)
        for version in versions:  # canned answers for any node of any version the admin may choose
            answering_from += [node for node in version.snapshot if node["id"] not in {n["id"] for n in answering_from}]
        meta = record_model()._meta
        records_visible = request.user.has_perm(f"{meta.app_label}.view_{meta.model_name}")
        initial = {
            "tree": "draft",
            "source": "record" if records_visible else "data",
            "data": {row.name: "" for row in tree_form.fields.all()},
            **answers_initial(request.session.get(canned_key(tree_form, event)) or {}),
        }
        form = TestRunForm(
            request.POST or None,
            initial=initial,
            tree_form=tree_form,
            event=event,
            versions=versions,
            snapshot=answering_from,
            records_visible=records_visible,
        )
        result, record, problems = None, None, []
        if request.method == "POST" and form.is_valid():
            # Kept for this admin: the page offers them again, and a replay answers with them too.
            request.session[canned_key(tree_form, event)] = form.canned()
            try:
                data, record = form.submission()
                result = tree_test_run(
                    form=tree_form, event=event, version=form.version(), record=record, data=data, canned=form.canned()
                )
            except TestRunError as exc:
                problems = exc.problems
        limit = self.limit()
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": f"Test run: {tree_form} — {event}",
            "tree_form": tree_form,
            "event": event,
            "form": form,
            "problems": problems,
            "result": result,
            "record": record,
            "result_json": pretty_json(result.to_dict()) if result else "",
            "overview_url": tree_overview_url(tree_form.pk, event),
            "replay_form": ReplayForm(limit=limit),
            "replay_url": reverse("admin:events_replay_start", args=[tree_form.pk, event]),
            "live": versions[0] if versions else None,
            "can_replay": request.user.has_perm("events.change_node"),
            "replays": Replay.objects.filter(form=tree_form, event=event)[:5],
        }
        return TemplateResponse(request, "admin/events/replay/test_run.html", context)

    @staticmethod
    def limit():
        return settings.EVENTS_REPLAY_MAX_RECORDS

    # Replays --------------------------------------------------------------------------------------

    def replay_start_view(self, request, form_id, event):
        if request.method != "POST":
            return HttpResponseRedirect(reverse("admin:events_testrun", args=[form_id, event]))
        if not request.user.has_perm("events.change_node"):
            raise PermissionDenied
        tree_form = get_object_or_404(form_model(), pk=form_id)
        form = ReplayForm(request.POST, limit=self.limit())
        back = HttpResponseRedirect(reverse("admin:events_testrun", args=[form_id, event]))
        if not form.is_valid():
            for field, errors in form.errors.items():
                label = form.fields[field].label if field in form.fields else "Replay"
                messages.error(request, f"{label}: {' '.join(errors)}")
            return back
        since, until, count = form.cleaned_data["since"], form.cleaned_data["until"], form.cleaned_data["count"]
        try:
            ids = (
                replay_records(tree_form, since=since, until=until)
                if since or until
                else replay_records(tree_form, count=count or DEFAULT_REPLAY_COUNT)
            )
            replay = replay_start(
                form=tree_form,
                event=event,
                record_ids=ids,
                user=request.user,
                canned=request.session.get(canned_key(tree_form, event)),
            )
        except ReplayError as exc:
            messages.error(request, str(exc))
            return back
        messages.success(
            request, f"Replaying {replay.total} records: {replay.baseline_label} → {replay.candidate_label}."
        )
        return HttpResponseRedirect(reverse("admin:events_replay_change", args=[replay.pk]))

    def replay_context(self, replay):
        items = list(replay.items.all()) if replay.is_finished or replay.done else []
        return {
            "replay": replay,
            "differing_items": [item for item in items if item.differences or item.error],
            "same_count": sum(1 for item in items if not item.differences and not item.error),
            "progress_url": reverse("admin:events_replay_progress", args=[replay.pk]),
            "testrun_url": reverse("admin:events_testrun", args=[replay.form_id, replay.event]),
        }

    def progress_view(self, request, object_id):
        if not self.has_view_permission(request):
            raise PermissionDenied
        replay = Replay.objects.filter(pk=object_id).first()
        if replay is None:
            raise Http404("No such replay.")
        return TemplateResponse(request, "admin/events/replay/progress.html", self.replay_context(replay))

    def change_view(self, request, object_id, form_url="", extra_context=None):
        replay = self.get_object(request, object_id)
        extra_context = {**(extra_context or {})}
        if replay is not None:
            extra_context.update(self.replay_context(replay), title=str(replay))
        return super().change_view(request, object_id, form_url, extra_context)

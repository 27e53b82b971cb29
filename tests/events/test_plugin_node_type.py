"""A node type is one module: types defined only here work in the engine, the admin editor, the
form file and the waiting page with no other change (issue 10, "Node types are plugins")."""

from datetime import timedelta

import pytest
from django import forms
from django.utils import timezone
from django_q.models import OrmQ

from events import tasks
from events.formfile import form_export, form_import
from events.models import Node, Run, RunTask
from events.nodes import registry
from events.nodes.base import ConfigForm, NodeError, NodeType
from forms_app.services import record_submit
from tests.events.test_admin import add_url, node_post
from tests.factories import add_node


class StampConfig(ConfigForm):
    field = forms.SlugField(label="Field")
    word = forms.CharField(label="Word")

    def clean_field(self):
        if self.unknown_field(self.cleaned_data["field"]):
            raise forms.ValidationError("No such field.")
        return self.cleaned_data["field"]


class Stamp(NodeType):
    """Writes a word (a template) into a field of the record (test only)."""

    key, label, config_form = "stamp", "Stamp", StampConfig
    reaches_outside = False

    @classmethod
    def describe(cls, config):
        return f"{config.get('field')} ← {config.get('word')}"

    def execute(self, ctx):
        word = ctx.render(ctx.config["word"])
        if word == "refuse":
            raise NodeError("refused", retryable=False)
        ctx.record.set_value(ctx.config["field"], word)
        return {"stamped": word}


class LaterConfig(ConfigForm):
    seconds = forms.IntegerField(label="Seconds", min_value=0)


class Later(NodeType):
    """Runs its steps in a worker, ``seconds`` after the submit (test only)."""

    key, label, config_form = "later", "Later", LaterConfig
    is_container = is_deferred = True

    @classmethod
    def describe(cls, config):
        return f"{config.get('seconds')} s later"

    @classmethod
    def mode(cls, config, *, in_background):
        return f"later: {cls.describe(config)}"

    def due_at(self, ctx):
        return ctx.run.created_at + timedelta(seconds=ctx.config["seconds"])


@pytest.fixture(autouse=True)
def plugin_types(monkeypatch):
    monkeypatch.setitem(registry._types, "stamp", Stamp)
    monkeypatch.setitem(registry._types, "later", Later)


@pytest.fixture
def plugin_form(trail_form):
    """stamp (visible), then later 0 s [stamp]."""
    add_node(
        trail_form,
        "stamp",
        name="first",
        label="First stamp",
        visible=True,
        config={"field": "status", "word": "{{ record.email }}"},
    )
    later = add_node(trail_form, "later", name="later", label="Soon", config={"seconds": 0})
    add_node(trail_form, "stamp", parent=later, name="second", config={"field": "trail", "word": "done"})
    return trail_form


def run_queue():
    while job := OrmQ.objects.order_by("pk").first():
        job.delete()
        tasks.task_job(*job.args())


def test_the_engine_runs_a_plugin_action_inline_and_a_plugin_container_in_a_worker(plugin_form):
    record = record_submit(form=plugin_form, data={"email": "ann@example.com", "trail": "", "status": ""})
    record.refresh_from_db()
    assert record.data["status"] == "ann@example.com"
    assert RunTask.objects.get(run__record=record, name="first").output == {"stamped": "ann@example.com"}

    run_queue()

    record.refresh_from_db()
    assert record.data["trail"] == "done"
    assert Run.objects.get(record=record).status == Run.Status.COMPLETE


def test_a_plugin_container_is_due_by_its_own_rule(trail_form):
    later = add_node(trail_form, "later", name="later", config={"seconds": 600})
    add_node(trail_form, "stamp", parent=later, config={"field": "trail", "word": "x"})

    record = record_submit(form=trail_form, data={"email": "ann@example.com", "trail": ""})

    task = RunTask.objects.get(run__record=record, name="later")
    assert task.due_at > timezone.now() + timedelta(seconds=590)
    assert not OrmQ.objects.exists()


def test_a_plugin_error_that_cannot_succeed_on_retry_fails_at_once(trail_form):
    add_node(
        trail_form,
        "stamp",
        name="refusing",
        config={"field": "status", "word": "refuse"},
        max_attempts=5,
        retry_backoff_seconds=1,
    )

    record = record_submit(form=trail_form, data={"email": "ann@example.com", "trail": ""})

    task = RunTask.objects.get(run__record=record, name="refusing")
    assert (task.status, task.attempt, task.error) == (RunTask.Status.FAILED, 1, "refused")


def test_the_admin_editor_shows_a_plugin_types_config_as_fields_and_validates_it(admin_client, trail_form):
    page = admin_client.get(add_url(trail_form, "stamp")).content.decode()
    assert 'name="config_field"' in page and 'name="config_word"' in page

    refused = admin_client.post(
        add_url(trail_form, "stamp"),
        node_post(trail_form, position="first-child", config_field="nowhere", config_word="x"),
    )
    assert refused.status_code == 200 and "No such field." in refused.content.decode()
    assert not Node.objects.filter(type="stamp").exists()

    admin_client.post(
        add_url(trail_form, "stamp"),
        node_post(trail_form, position="first-child", config_field="status", config_word="hello"),
    )
    assert Node.objects.get(type="stamp").config == {"field": "status", "word": "hello"}


def test_the_tree_overview_draws_plugin_nodes_with_their_own_mode_and_summary(admin_client, plugin_form):
    from django.urls import reverse

    page = admin_client.get(
        reverse("admin:events_node_overview", kwargs={"form_id": plugin_form.pk, "event": "record_update"})
    ).content.decode()
    assert "later: 0 s later" in page
    assert "status ← {{ record.email }}" in page
    assert "in background" in page  # the stamp under the container


def test_the_form_file_exports_and_imports_plugin_nodes(plugin_form):
    document = form_export(plugin_form)
    nodes = document["events"]["record_update"]
    assert [node["type"] for node in nodes] == ["stamp", "later"]
    assert nodes[1]["children"][0]["config"] == {"field": "trail", "word": "done"}

    document["form"]["slug"] = "copy"
    form_import(document)

    copied = Node.objects.filter(form__slug="copy").order_by("path")
    assert [node.type for node in copied] == ["stamp", "later", "stamp"]


def test_the_form_file_checks_a_plugin_types_config_against_the_documents_fields(plugin_form):
    from events.formfile import FormFileError

    document = form_export(plugin_form)
    document["form"]["slug"] = "bad"
    document["events"]["record_update"][0]["config"]["field"] = "nowhere"

    with pytest.raises(FormFileError) as refused:
        form_import(document)

    assert "events.record_update[0].config.field" in str(refused.value)


def test_the_waiting_page_shows_a_visible_plugin_step(client, plugin_form):
    record = record_submit(form=plugin_form, data={"email": "ann@example.com", "trail": "", "status": ""})

    page = client.get(f"/r/{record.token}/status/", headers={"HX-Request": "true"}).content.decode()

    assert "First stamp" in page and "done" in page


def test_no_module_outside_events_nodes_names_a_node_type_key():
    """Whatever the engine, admin, form file or waiting page needs from a type is asked of the type."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    keys = {key for key in registry._types if key not in ("stamp", "later")}
    # events/admin/runs.py's by-hand outcomes are "complete" and "fail" (a URL part), not the fail node type.
    allowed = {("events/admin/runs.py", "fail")}
    named = []
    for package in ("config", "forms_app", "events", "demo"):
        for path in (root / package).rglob("*.py"):
            relative = path.relative_to(root).as_posix()
            if relative.startswith("events/nodes/") or "/migrations/" in relative:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Constant) and node.value in keys and (relative, node.value) not in allowed:
                    named.append(f"{relative}:{node.lineno} “{node.value}”")
    assert named == []

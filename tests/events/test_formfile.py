import copy
import io
import json
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from events.formfile import FormFileError, document_parse, form_check, form_export, form_import, form_import_result
from events.models import Node
from forms_app.models import Field, Form, Record
from tests.factories import FieldFactory, FormFactory, RecordFactory, add_node

# DESIGN.md section 10's example, as printed there.
DESIGN_EXAMPLE = {
    "form": {
        "slug": "booking",
        "title": "Book a flight",
        "fields": [
            {"name": "email", "label": "Email", "type": "email", "required": True},
            {"name": "seats", "label": "Seats", "type": "integer", "min": 1, "max": 9},
        ],
        "waiting": {
            "poll_seconds": 2,
            "wait_for": "run",
            "max_wait_seconds": 120,
            "done_message": "Booked, {{ record.email }}",
            "failed_message": "Sorry",
        },
    },
    "events": {
        "record_update": [
            {"type": "update_field", "name": "a", "config": {"field": "status", "value": "received"}},
            {
                "type": "background",
                "name": "confirm",
                "children": [
                    {"type": "update_field", "config": {"field": "status", "value": "confirmed"}},
                    {"type": "send_email", "config": {"to": "{{ record.email }}", "subject": "Booked", "body": "..."}},
                ],
                "on_error": [{"type": "set_subtext", "config": {"text": "We will email you"}}],
            },
            {"type": "delay", "config": {"after_seconds": 600}, "children": []},
        ]
    },
}


def row_counts():
    return (Form.objects.count(), Field.objects.count(), Node.objects.count())


def problems_of(document):
    with pytest.raises(FormFileError) as caught:
        form_import(document)
    return caught.value.problems


def paths_of(document):
    return [path for path, _message in problems_of(document)]


@pytest.fixture
def full_form(db):
    """A form using every part of the format: all field options, nested containers, an error branch, two events."""
    form = FormFactory(
        slug="trip",
        title="Plan a trip",
        description="Where to?",
        submit_label="Go",
        is_published=False,
        poll_seconds=3,
        wait_for="flag",
        wait_flag="planned",
        max_wait_seconds=90,
        waiting_title="Planning",
        done_message="Planned, {{ record.email }}",
        done_redirect_url="https://example.com/thanks",
        failed_message="Oh no",
    )
    FieldFactory(
        form=form,
        name="email",
        label="Email",
        type="email",
        required=True,
        help_text="Yours",
        max_length=120,
        pattern=r".+@.+",
        default="a@example.com",
    )
    FieldFactory(form=form, name="seats", label="Seats", type="integer", min_value=1, max_value=9)
    FieldFactory(form=form, name="budget", label="Budget", type="decimal", min_value="0.5", max_value="1000.25")
    FieldFactory(form=form, name="cabin", label="Cabin", type="choice", choices=["Economy", "Business"])
    FieldFactory(form=form, name="day", label="Day", type="date")
    FieldFactory(form=form, name="status", label="Status", type="hidden")
    add_node(form, "update_field", name="a", label="Mark A", visible=True, config={"field": "status", "value": "a"})
    background = add_node(form, "background", name="confirm", label="Confirm", visible=True)
    add_node(form, "update_field", parent=background, config={"field": "status", "value": "b"})
    delay = add_node(
        form,
        "delay",
        parent=background,
        name="later",
        config={"rule": "field", "field": "day", "offset_seconds": -3600},
    )
    add_node(form, "pause", parent=delay, config={"seconds": 1.5})
    add_node(form, "set_subtext", parent=background, branch=Node.Branch.ON_ERROR, config={"text": "Retrying"})
    add_node(form, "set_flag", parent=background, config={"flag": "planned", "value": True})
    add_node(form, "delay", name="empty", config={"rule": "next_day"})
    add_node(form, "fail", event="custom_event", config={"message": "no"})
    return form


def test_export_writes_only_set_optional_keys(full_form):
    exported = form_export(full_form)

    fields = exported["form"]["fields"]
    assert fields[0] == {
        "name": "email",
        "label": "Email",
        "type": "email",
        "required": True,
        "help_text": "Yours",
        "max_length": 120,
        "pattern": ".+@.+",
        "default": "a@example.com",
    }
    assert fields[1] == {"name": "seats", "label": "Seats", "type": "integer", "required": False, "min": 1, "max": 9}
    assert fields[2]["min"] == 0.5 and fields[2]["max"] == 1000.25
    assert exported["form"]["waiting"] == {
        "poll_seconds": 3,
        "wait_for": "flag",
        "wait_flag": "planned",
        "max_wait_seconds": 90,
        "title": "Planning",
        "done_message": "Planned, {{ record.email }}",
        "done_redirect_url": "https://example.com/thanks",
        "failed_message": "Oh no",
    }
    tree = exported["events"]["record_update"]
    assert tree[0] == {
        "type": "update_field",
        "name": "a",
        "label": "Mark A",
        "visible": True,
        "config": {"field": "status", "value": "a"},
    }
    assert [child["type"] for child in tree[1]["children"]] == ["update_field", "delay", "set_flag"]
    assert tree[1]["children"][1]["children"] == [{"type": "pause", "config": {"seconds": 1.5}}]
    assert tree[1]["on_error"] == [{"type": "set_subtext", "config": {"text": "Retrying"}}]
    assert tree[2] == {"type": "delay", "name": "empty", "config": {"rule": "next_day"}, "children": []}
    assert list(exported["events"]) == ["record_update", "custom_event"]


def test_export_then_import_into_a_fresh_database_gives_the_same_form(full_form):
    exported = form_export(full_form)
    text = json.dumps(exported)
    full_form.delete()
    assert row_counts() == (0, 0, 0)

    form = form_import(json.loads(text))

    assert form_export(form) == exported
    assert Node.objects.get(form=form, type="set_subtext").branch == Node.Branch.ON_ERROR


def test_importing_an_existing_slug_replaces_its_fields_and_trees(full_form):
    record = RecordFactory(form=full_form, data={"email": "x@example.com", "budget": "3"})
    document = form_export(full_form)
    named_before = dict(
        Node.objects.filter(form=full_form, event="record_update").exclude(name="").values_list("name", "pk")
    )
    unnamed_before = set(
        Node.objects.filter(form=full_form, event="record_update", name="").values_list("pk", flat=True)
    )
    kept_field_id = full_form.fields.get(name="email").pk
    document["form"]["title"] = "Plan a journey"
    document["form"]["fields"] = [f for f in document["form"]["fields"] if f["name"] != "budget"]
    del document["events"]["custom_event"]

    result = form_import_result(document)

    assert not result.created and result.form.pk == full_form.pk
    assert result.removed_fields == ["budget"]
    assert "Replaced" in result.summary() and "budget" in result.summary()
    assert form_export(result.form) == document
    assert full_form.fields.get(name="email").pk == kept_field_id
    # Every node is the same node after the import (admin links and runs' references hold): a
    # named one matched by its name, an unnamed one by its type and place.
    assert (
        named_before
        and dict(Node.objects.filter(form=full_form, event="record_update").exclude(name="").values_list("name", "pk"))
        == named_before
    )
    assert unnamed_before and (
        set(Node.objects.filter(form=full_form, event="record_update", name="").values_list("pk", flat=True))
        == unnamed_before
    )
    assert not Node.objects.filter(form=full_form, event="custom_event").exists()
    record.refresh_from_db()
    assert record.data["budget"] == "3"
    assert Form.objects.count() == 1


def test_importing_the_same_document_twice_changes_nothing(full_form):
    document = form_export(full_form)
    form_import(document)
    counts = row_counts()
    form_import(document)
    assert row_counts() == counts
    assert form_export(Form.objects.get(slug="trip")) == document


def test_design_example_needs_its_status_field_and_then_imports(db):
    problems = problems_of(DESIGN_EXAMPLE)
    assert [path for path, _ in problems] == [
        "events.record_update[0].config.field",
        "events.record_update[1].children[0].config.field",
    ]
    assert "no field named “status”" in problems[0][1]
    assert row_counts() == (0, 0, 0)

    document = copy.deepcopy(DESIGN_EXAMPLE)
    document["form"]["fields"].append({"name": "status", "label": "Status", "type": "hidden"})
    form = form_import(document)

    assert form.slug == "booking" and form.poll_seconds == 2 and form.failed_message == "Sorry"
    assert [f.name for f in form.fields.all()] == ["email", "seats", "status"]
    seats = form.fields.get(name="seats")
    assert (seats.min_value, seats.max_value, seats.required) == (1, 9, False)
    tree = Node.objects.snapshot(form)
    assert [node["type"] for node in tree] == ["update_field", "background", "delay"]
    assert [node["type"] for node in tree[1]["children"]] == ["update_field", "send_email"]
    assert [node["type"] for node in tree[1]["on_error"]] == ["set_subtext"]
    assert tree[2]["config"] == {"rule": "after", "after_seconds": 600}
    # Export then import gives the same export again.
    exported = form_export(form)
    assert form_export(form_import(json.loads(json.dumps(exported)))) == exported


def test_a_bad_document_lists_every_problem_with_its_path_and_changes_nothing(full_form):
    document = form_export(full_form)
    before = row_counts()
    form = document["form"]
    form["title"] = ""
    form["colour"] = "red"
    form["is_published"] = "yes"
    form["waiting"]["poll_seconds"] = 0
    form["waiting"]["wait_flag"] = ""
    form["waiting"]["done_message"] = "{% if %}"
    form["fields"][0]["type"] = "colour"
    form["fields"][1]["name"] = "email"
    form["fields"][2]["min"] = "low"
    form["fields"][3]["choices"] = []
    form["fields"][4]["pattern"] = "(["
    form["fields"].append({"label": "No name"})
    form["fields"].append("day")
    tree = document["events"]["record_update"]
    tree[0]["children"] = [{"type": "teleport"}]
    tree[0]["visible"] = 1
    tree[1]["children"][0]["config"]["field"] = "nowhere"
    tree[1]["children"][0]["config"]["extra"] = True
    tree[1]["children"][1]["name"] = "confirm"
    tree[1]["children"][1]["config"] = {"rule": "after"}
    tree[1]["on_error"][0]["config"] = ["not", "an", "object"]
    tree[2]["children"] = "none"
    tree.append({"name": "typeless"})
    document["events"]["bad event!"] = []
    document["events"]["other"] = {"type": "fail"}
    document["version"] = 2

    problems = dict(problems_of(document))

    assert set(problems) == {
        "version",
        "form.title",
        "form.colour",
        "form.is_published",
        "form.waiting.poll_seconds",
        "form.waiting.wait_flag",
        "form.waiting.done_message",
        "form.fields[0].type",
        "form.fields[1].name",
        "form.fields[2].min",
        "form.fields[3].choices",
        "form.fields[4].pattern",
        "form.fields[6].name",
        "form.fields[7]",
        "events.record_update[0].visible",
        "events.record_update[0].children",
        "events.record_update[0].children[0].type",
        "events.record_update[1].children[0].config.field",
        "events.record_update[1].children[0].config.extra",
        "events.record_update[1].children[1].name",
        "events.record_update[1].children[1].config.after_seconds",
        "events.record_update[1].on_error[0].config",
        "events.record_update[2].children",
        "events.record_update[3].type",
        'events["bad event!"]',
        "events.other",
    }
    assert problems["form.fields[0].type"].startswith('unknown type "colour"')
    assert problems["form.fields[1].name"] == 'duplicate field name "email" (also form.fields[0])'
    assert problems["form.fields[6].name"] == "required"
    assert problems["form.fields[7]"] == "expected an object, got a string"
    assert problems["form.waiting.wait_flag"] == 'required when wait_for is "flag"'
    assert problems["events.record_update[0].children"].startswith('a node of type "update_field" cannot have children')
    assert problems["events.record_update[0].children[0].type"].startswith('unknown node type "teleport"')
    assert problems["events.record_update[1].children[1].name"].startswith('duplicate node name "confirm"')
    assert problems["events.record_update[1].children[1].config.after_seconds"] == (
        "Required when the delay is due a duration after the submit."
    )
    assert problems["events.record_update[1].children[0].config.field"] == "This form has no field named “nowhere”."
    assert problems["form.colour"].startswith("unknown key")
    assert row_counts() == before
    assert Form.objects.get(slug="trip").title == "Plan a trip"


def test_node_configs_are_checked_against_the_documents_own_fields(db):
    FormFactory(slug="other")
    FieldFactory(form=Form.objects.get(slug="other"), name="only_elsewhere")
    document = {
        "form": {"slug": "new", "title": "New", "fields": [{"name": "when", "type": "text"}]},
        "events": {
            "record_update": [
                {"type": "update_field", "config": {"field": "only_elsewhere"}},
                {"type": "delay", "config": {"rule": "field", "field": "when"}, "children": []},
                {"type": "update_field", "config": {"field": "when", "value": "x"}},
            ]
        },
    }
    assert paths_of(document) == ["events.record_update[0].config.field"]

    document["events"]["record_update"].pop(0)
    form = form_import(document)
    assert [node.type for node in Node.objects.of_tree(form)] == ["delay", "update_field"]


@pytest.mark.parametrize(
    "document, expected",
    [
        ([], [("", "expected an object, got a list")]),
        ({}, [("form", "required")]),
        ({"form": "booking"}, [("form", "expected an object, got a string")]),
        ({"form": {}}, [("form.slug", "required"), ("form.title", "required")]),
        (
            {"form": {"slug": "Not a slug!", "title": "T"}},
            [("form.slug", "Enter a valid “slug” consisting of letters, numbers, underscores or hyphens.")],
        ),
        ({"form": {"slug": "s", "title": "T", "fields": {}}}, [("form.fields", "expected a list, got an object")]),
        (
            {"form": {"slug": "s", "title": "T", "waiting": {"wait_for": "moon"}}},
            [("form.waiting.wait_for", "Value 'moon' is not a valid choice.")],
        ),
        (
            {"form": {"slug": "s", "title": "T", "fields": [{"name": "n", "max_length": None}]}},
            [("form.fields[0].max_length", "expected a whole number, got null (leave the key out instead)")],
        ),
        (
            {"form": {"slug": "s", "title": "T"}, "events": {"record_update": [{"type": "pause", "config": {}}]}},
            [("events.record_update[0].config.seconds", "This field is required.")],
        ),
        (
            {
                "form": {"slug": "s", "title": "T"},
                "events": {
                    "record_update": [
                        {"type": "delay", "config": {"after_seconds": "soon"}, "children": []},
                        {"type": "send_email", "config": {"to": ["a@example.com"], "subject": "s", "body": "b"}},
                        {"type": "set_flag", "config": {"flag": "done", "value": "yes"}},
                        {"type": "pause", "config": {"seconds": 2.5}},
                    ]
                },
            },
            [
                ("events.record_update[0].config.after_seconds", "expected a whole number, got a string"),
                ("events.record_update[1].config.to", "expected a string, got a list"),
                ("events.record_update[2].config.value", "expected true or false, got a string"),
            ],
        ),
    ],
)
def test_small_bad_documents(db, document, expected):
    assert problems_of(document) == expected
    assert row_counts() == (0, 0, 0)


def test_bad_json_text_is_one_problem():
    with pytest.raises(FormFileError) as caught:
        document_parse("{not json")
    assert caught.value.lines()[0].startswith("not valid JSON: ")


def test_a_minimal_document_takes_the_model_defaults(db):
    form = form_import({"form": {"slug": "tiny", "title": "Tiny", "fields": [{"name": "first_name"}]}})
    field = form.fields.get()
    assert (field.label, field.type, field.required) == ("First name", "text", False)
    assert form.poll_seconds == Form._meta.get_field("poll_seconds").default
    assert form_check(form_export(form)).slug == "tiny"


# -- the commands -------------------------------------------------------------------------------


def test_import_form_command_reads_a_file(db, tmp_path):
    path = tmp_path / "example.json"
    document = copy.deepcopy(DESIGN_EXAMPLE)
    document["form"]["fields"].append({"name": "status", "label": "Status", "type": "hidden"})
    path.write_text(json.dumps(document))
    out = io.StringIO()

    call_command("import_form", str(path), stdout=out)

    assert "Created form “booking”" in out.getvalue()
    assert "record_update: 6 nodes" in out.getvalue()
    assert Node.objects.filter(form__slug="booking").count() == 6

    out = io.StringIO()
    call_command("import_form", str(path), stdout=out)
    assert "Replaced form “booking”" in out.getvalue()
    assert Form.objects.count() == 1


def test_import_form_command_reads_stdin(db, full_form):
    text = json.dumps(form_export(full_form))
    full_form.delete()
    out = io.StringIO()

    call_command("import_form", "-", "--publish", stdin=io.StringIO(text), stdout=out)

    assert "Created form “trip”" in out.getvalue()
    assert form_export(Form.objects.get(slug="trip")) == json.loads(text)


def test_import_form_command_lists_every_problem_and_fails(db, tmp_path, full_form):
    document = form_export(full_form)
    document["form"]["fields"][0]["type"] = "colour"
    document["events"]["record_update"][1]["children"][1]["config"] = {"rule": "after"}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(document))
    before = row_counts()

    with pytest.raises(CommandError) as caught:
        call_command("import_form", str(path))

    message = str(caught.value)
    assert "2 problems, nothing was imported" in message
    assert 'form.fields[0].type: unknown type "colour"' in message
    assert "events.record_update[1].children[1].config.after_seconds: Required when" in message
    assert row_counts() == before


def test_import_form_command_reports_unreadable_and_non_json_files(db, tmp_path):
    with pytest.raises(CommandError, match="Cannot read"):
        call_command("import_form", str(tmp_path / "missing.json"))
    path = tmp_path / "broken.json"
    path.write_text("{")
    with pytest.raises(CommandError, match="not valid JSON"):
        call_command("import_form", str(path))


def test_export_form_command_prints_the_form_file(full_form, tmp_path):
    out = io.StringIO()
    call_command("export_form", "trip", stdout=out)
    assert json.loads(out.getvalue()) == form_export(full_form)

    target = tmp_path / "trip.json"
    call_command("export_form", "trip", "--output", str(target), stdout=io.StringIO())
    assert json.loads(target.read_text()) == form_export(full_form)


def test_export_form_command_refuses_an_unknown_slug(full_form):
    with pytest.raises(CommandError, match="No form has the slug “nope”. Known slugs: trip."):
        call_command("export_form", "nope")


def test_records_survive_a_replacing_import(full_form):
    RecordFactory(form=full_form)
    form_import(form_export(full_form))
    assert Record.objects.filter(form=full_form).count() == 1


# -- issue 4: retries, error branches under any node, conditions, go_async, custom events, debug ----


@pytest.fixture
def form_with_branches_and_retries(db):
    """A form using every part the issue 4 engine added to trees and forms."""
    form = FormFactory(slug="errors", title="Errors and retries", collect_debug=True)
    FieldFactory(form=form, name="email", type="email")
    FieldFactory(form=form, name="seats", type="integer")
    FieldFactory(form=form, name="status", type="hidden")
    call = add_node(
        form,
        "update_field",
        name="call",
        config={"field": "status", "value": "calling"},
        max_attempts=3,
        retry_backoff_seconds=5,
        retry_backoff_max_seconds=60,
    )
    add_node(
        form,
        "set_subtext",
        parent=call,
        branch=Node.Branch.ON_ERROR,
        name="tell",
        config={"text": "Failed: {{ error.message }}"},
    )
    add_node(form, "fail", name="boom", config={"message": "no"}, retry_backoff_seconds=30)
    condition = add_node(
        form,
        "condition",
        name="many",
        config={
            "match": "any",
            "rules": [
                {"field": "seats", "operator": "greater_than", "value": "2"},
                {"field": "flags.vip", "operator": "is_set"},
            ],
        },
    )
    add_node(form, "set_flag", parent=condition, config={"flag": "group", "value": True})
    add_node(form, "go_async", name="rest")
    background = add_node(
        form,
        "background",
        name="own_run",
        config={"event_type": "confirm", "event_properties": {"source": "{{ record.email }}"}, "collect_debug": True},
    )
    add_node(form, "trigger_event", parent=background, config={"event": "paid", "properties": {"plan": "gold"}})
    add_node(form, "fail", parent=background, branch=Node.Branch.ON_ERROR, config={"message": "again"}, max_attempts=2)
    add_node(form, "set_flag", event="paid", config={"flag": "paid", "value": True})
    return form


def test_export_writes_retry_only_when_not_the_default_and_collect_debug_only_when_on(form_with_branches_and_retries):
    exported = form_export(form_with_branches_and_retries)

    assert exported["form"]["collect_debug"] is True
    tree = exported["events"]["record_update"]
    assert tree[0] == {
        "type": "update_field",
        "name": "call",
        "config": {"field": "status", "value": "calling"},
        "retry": {"max_attempts": 3, "backoff_seconds": 5, "backoff_max_seconds": 60},
        "on_error": [{"type": "set_subtext", "name": "tell", "config": {"text": "Failed: {{ error.message }}"}}],
    }
    assert tree[1]["retry"] == {"max_attempts": 1, "backoff_seconds": 30, "backoff_max_seconds": 600}
    assert "retry" not in tree[2] and "retry" not in tree[2]["children"][0]
    assert tree[2]["config"] == {
        "match": "any",
        "rules": [
            {"field": "seats", "operator": "greater_than", "value": "2"},
            {"field": "flags.vip", "operator": "is_set"},
        ],
    }
    assert tree[3] == {"type": "go_async", "name": "rest", "config": {}}
    assert tree[4]["config"] == {
        "event_type": "confirm",
        "event_properties": {"source": "{{ record.email }}"},
        "collect_debug": True,
    }
    assert tree[4]["children"] == [
        {"type": "trigger_event", "config": {"event": "paid", "properties": {"plan": "gold"}}}
    ]
    assert tree[4]["on_error"][0]["retry"]["max_attempts"] == 2
    assert list(exported["events"]) == ["record_update", "paid"]

    form_with_branches_and_retries.collect_debug = False
    form_with_branches_and_retries.save()
    assert "collect_debug" not in form_export(form_with_branches_and_retries)["form"]


def test_trees_with_branches_and_retries_round_trip_through_a_fresh_database(form_with_branches_and_retries):
    exported = form_export(form_with_branches_and_retries)
    text = json.dumps(exported)
    form_with_branches_and_retries.delete()
    assert row_counts() == (0, 0, 0)

    form = form_import(json.loads(text))

    assert form_export(form) == exported
    assert form.collect_debug
    call = Node.objects.get(form=form, name="call")
    assert (call.max_attempts, call.retry_backoff_seconds, call.retry_backoff_max_seconds) == (3, 5, 60)
    tell = Node.objects.get(form=form, name="tell")
    assert tell.branch == Node.Branch.ON_ERROR and Node.objects.get_parent(tell) == call
    snapshot = Node.objects.snapshot(form)
    assert snapshot[0]["retry"] == {"max_attempts": 3, "backoff_seconds": 5, "backoff_max_seconds": 60}
    assert [node["type"] for node in snapshot[0]["on_error"]] == ["set_subtext"]
    assert [node["type"] for node in snapshot[4]["on_error"]] == ["fail"]
    # and once more: importing the export of the import changes nothing
    assert form_export(form_import(form_export(form))) == exported


def test_an_error_branch_under_an_action_or_a_marker_imports(db):
    document = {
        "form": {"slug": "s", "title": "T"},
        "events": {
            "record_update": [
                {"type": "fail", "config": {"message": "x"}, "on_error": [{"type": "go_async", "config": {}}]},
                {
                    "type": "go_async",
                    "config": {},
                    "on_error": [{"type": "fail", "config": {"message": "y"}}],
                },
            ]
        },
    }
    form = form_import(document)
    assert Node.objects.filter(form=form, branch=Node.Branch.ON_ERROR).count() == 2
    assert form_export(form)["events"] == {
        "record_update": [
            {"type": "fail", "config": {"message": "x"}, "on_error": [{"type": "go_async", "config": {}}]},
            {
                "type": "go_async",
                "config": {},
                "on_error": [{"type": "fail", "config": {"message": "y"}}],
            },
        ]
    }


def test_an_error_step_with_an_error_branch_of_its_own_is_refused_with_its_path(db):
    document = {
        "form": {"slug": "s", "title": "T"},
        "events": {
            "record_update": [
                {
                    "type": "fail",
                    "config": {"message": "x"},
                    "on_error": [
                        {
                            "type": "fail",
                            "config": {"message": "y"},
                            "on_error": [{"type": "set_flag", "config": {"flag": "z"}}],
                        }
                    ],
                }
            ]
        },
    }

    with pytest.raises(FormFileError) as refused:
        form_import(document)

    [(path, message)] = refused.value.problems
    assert path == "events.record_update[0].on_error[0].on_error"
    assert "an error step has no error branch of its own" in message
    assert not Form.objects.filter(slug="s").exists()


def test_a_retry_may_give_only_some_keys(db):
    document = {
        "form": {"slug": "s", "title": "T"},
        "events": {"record_update": [{"type": "fail", "config": {"message": "x"}, "retry": {"max_attempts": 4}}]},
    }
    node = Node.objects.get(form=form_import(document))
    assert (node.max_attempts, node.retry_backoff_seconds, node.retry_backoff_max_seconds) == (4, 10, 600)


@pytest.mark.parametrize(
    "retry, expected",
    [
        ({"max_attempts": 0}, [("retry.max_attempts", "must be 1 to 100 (1 = no retry)")]),
        ({"max_attempts": 101}, [("retry.max_attempts", "must be 1 to 100 (1 = no retry)")]),
        ({"max_attempts": "3"}, [("retry.max_attempts", "expected a whole number, got a string")]),
        ({"max_attempts": 2.5}, [("retry.max_attempts", "expected a whole number, got a number")]),
        ({"backoff_seconds": -1}, [("retry.backoff_seconds", "must be 0 to 31536000 seconds (a year)")]),
        ({"backoff_max_seconds": -5}, [("retry.backoff_max_seconds", "must be 0 to 31536000 seconds (a year)")]),
        ({"backoff_seconds": 10**12}, [("retry.backoff_seconds", "must be 0 to 31536000 seconds (a year)")]),
        (
            {"backoff_seconds": 60, "backoff_max_seconds": 30},
            [("retry.backoff_max_seconds", "must be at least backoff_seconds (60)")],
        ),
        ({"backoff_seconds": 900}, [("retry.backoff_max_seconds", "must be at least backoff_seconds (900)")]),
        (
            {"attempts": 3},
            [
                (
                    "retry.attempts",
                    "unknown key (known keys: max_attempts, backoff_seconds, backoff_max_seconds, non_retryable)",
                )
            ],
        ),
        ({"non_retryable": ["HTTP 404", 7]}, [("retry.non_retryable[1]", "expected a string, got a number")]),
        (
            {"non_retryable": ["  "]},
            [("retry.non_retryable", "must be a list of texts (the beginnings of error messages)")],
        ),
        (3, [("retry", "expected an object, got a number")]),
    ],
)
def test_bad_retry_values_are_reported_with_their_paths(db, retry, expected):
    document = {
        "form": {"slug": "s", "title": "T"},
        "events": {
            "record_update": [
                {"type": "set_flag", "config": {"flag": "ok"}},
                {"type": "background", "children": [{"type": "fail", "config": {"message": "x"}, "retry": retry}]},
            ]
        },
    }
    prefix = "events.record_update[1].children[0]."
    assert problems_of(document) == [(prefix + path, message) for path, message in expected]
    assert row_counts() == (0, 0, 0)


def test_bad_branch_retry_and_debug_configs_are_reported_with_their_paths(db):
    document = {
        "form": {"slug": "s", "title": "T", "collect_debug": "yes", "fields": [{"name": "seats", "type": "integer"}]},
        "events": {
            "record_update": [
                {
                    "type": "condition",
                    "config": {"rules": [{"field": "nope", "operator": "equals", "value": "1"}]},
                    "children": [],
                },
                {"type": "go_async", "config": {}, "children": [{"type": "fail", "config": {"message": "x"}}]},
                {"type": "trigger_event", "config": {"properties": {"a": 1}}},
                {"type": "background", "config": {"event_type": "not a slug", "collect_debug": "on"}, "children": []},
            ]
        },
    }
    problems = dict(problems_of(document))
    assert set(problems) == {
        "form.collect_debug",
        "events.record_update[0].config.rules[0].field",
        "events.record_update[1].children",
        "events.record_update[2].config.event",
        "events.record_update[3].config.event_type",
        "events.record_update[3].config.collect_debug",
    }
    assert problems["events.record_update[1].children"].startswith('a node of type "go_async" cannot have children')
    assert "no field named “nope”" in problems["events.record_update[0].config.rules[0].field"]


# The published JSON Schema ------------------------------------------------------------------------


def test_export_form_prints_a_json_schema_that_every_exported_file_satisfies(full_form, tmp_path):
    """Editors and CI can validate form files with it; it knows each node type's config keys."""
    import jsonschema_rs
    from django.core.management import call_command

    target = tmp_path / "schema.json"
    call_command("export_form", "--schema", "--output", str(target))
    validator = jsonschema_rs.validator_for(json.loads(target.read_text()))

    assert validator.is_valid(form_export(full_form))
    demo = json.loads((Path(__file__).resolve().parents[2] / "demo" / "booking.json").read_text())
    assert validator.is_valid(demo)


@pytest.mark.parametrize(
    "change",
    [
        lambda doc: doc["form"].update(colour="red"),
        lambda doc: doc["form"]["fields"][0].update(required="yes"),
        lambda doc: doc["events"]["record_update"][0].update(type="teleport"),
        lambda doc: doc["events"]["record_update"][0]["config"].update(extra=1),
        lambda doc: doc["events"]["record_update"][1].update(retry={"max_attempts": "3"}),
    ],
)
def test_the_schema_refuses_what_the_import_refuses(full_form, change):
    import jsonschema_rs

    from events.formfile import schema

    document = form_export(full_form)
    change(document)

    assert not jsonschema_rs.validator_for(schema()).is_valid(document)
    with pytest.raises(FormFileError):
        form_check(document)


def test_a_re_imported_export_keeps_every_named_nodes_id_and_in_flight_references(full_form):
    before = {node.name: node.pk for node in Node.objects.filter(form=full_form).exclude(name="")}

    form_import(form_export(full_form))

    after = {node.name: node.pk for node in Node.objects.filter(form=full_form).exclude(name="")}
    assert after == before

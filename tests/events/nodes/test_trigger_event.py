"""trigger_event: fires another event of the form for the same record, as a child run of its own."""

import itertools

import pytest
from django.core.exceptions import ValidationError

from events.models import Run, RunTask
from events.nodes import registry
from tests.factories import add_node

TriggerEvent = registry.get("trigger_event")


def submission(record):
    return record.runs.get(is_submission=True)


def test_trigger_event_runs_the_other_events_tree_for_the_same_record_as_a_child_run(form, submit):
    add_node(form, "update_field", event="welcome", name="greet", config={"field": "status", "value": "welcomed"})
    add_node(form, "trigger_event", name="fire", config={"event": "welcome"})
    add_node(form, "set_flag", name="after", config={"flag": "after"})

    record = submit().record

    assert record.data["status"] == "welcomed"
    assert record.flags == {"after": True}
    parent = submission(record)
    child = record.runs.get(event="welcome")
    trigger = parent.tasks.get(name="fire")
    assert child.parent_run == parent
    assert child.parent_task == trigger
    assert child.depth == 1
    assert child.is_submission is False
    assert child.status == Run.Status.COMPLETE
    assert child.tasks.get().name == "greet"
    assert not parent.tasks.filter(name="greet").exists()
    assert trigger.status == RunTask.Status.COMPLETE
    assert trigger.output["run_id"] == str(child.pk)
    assert trigger.output["event"] == "welcome"
    assert trigger.output["status"] == Run.Status.COMPLETE
    assert parent.status == Run.Status.COMPLETE
    assert record.is_complete is True


def test_trigger_event_properties_are_templated_and_seen_as_properties(form, submit):
    add_node(
        form,
        "update_field",
        event="welcome",
        name="greet",
        config={"field": "status", "value": "{{ properties.plan }} for {{ properties.who }}"},
    )
    add_node(
        form,
        "trigger_event",
        name="fire",
        config={"event": "welcome", "properties": {"plan": "gold", "who": "{{ record.email }}"}},
    )

    record = submit().record

    assert record.data["status"] == "gold for ann@example.com"
    assert record.runs.get(event="welcome").properties == {"plan": "gold", "who": "ann@example.com"}


def test_the_child_runs_background_work_goes_to_the_queue_and_finishes_the_child_run(form, submit):
    background = add_node(form, "background", event="welcome", name="bg")
    add_node(
        form,
        "update_field",
        event="welcome",
        parent=background,
        name="late",
        config={"field": "status", "value": "late"},
    )
    add_node(form, "trigger_event", name="fire", config={"event": "welcome"})

    record = submit().record

    assert record.data["status"] == "late"
    assert record.runs.get(event="welcome").status == Run.Status.COMPLETE


def test_a_failing_child_run_fails_on_its_own(form, submit):
    add_node(form, "fail", event="welcome", name="boom", config={"message": "welcome broke"})
    add_node(form, "trigger_event", name="fire", config={"event": "welcome"})

    record = submit().record

    child = record.runs.get(event="welcome")
    assert child.status == Run.Status.FAILED
    assert "welcome broke" in child.error
    assert submission(record).tasks.get(name="fire").output["status"] == Run.Status.FAILED


def test_an_event_that_triggers_itself_stops_at_the_depth_limit_with_a_clear_error(form, submit, settings):
    settings.EVENTS_MAX_EVENT_DEPTH = 3
    add_node(form, "trigger_event", event="loop", name="again", config={"event": "loop"})
    add_node(form, "trigger_event", name="start", config={"event": "loop"})

    record = submit().record

    runs = list(record.runs.order_by("depth"))
    assert [run.depth for run in runs] == [0, 1, 2, 3]  # no runaway: nothing deeper than the limit
    deepest = runs[-1]
    refused = deepest.tasks.get(name="again")
    assert refused.status == RunTask.Status.FAILED
    assert "runaway" in refused.error
    assert "EVENTS_MAX_EVENT_DEPTH is 3" in refused.error
    assert deepest.status == Run.Status.FAILED
    assert "runaway" in deepest.error
    # Each child links to the run and the step that fired it.
    for parent, child in itertools.pairwise(runs):
        assert child.parent_run_id == parent.pk
        assert child.parent_task.run_id == parent.pk


def test_trigger_event_config_needs_an_event_and_takes_object_properties():
    assert TriggerEvent.clean_config({"event": "welcome"}) == {"event": "welcome"}
    assert TriggerEvent.clean_config({"event": "welcome", "properties": {"a": "{{ record.email }}"}}) == {
        "event": "welcome",
        "properties": {"a": "{{ record.email }}"},
    }
    with pytest.raises(ValidationError):
        TriggerEvent.clean_config({})
    with pytest.raises(ValidationError):
        TriggerEvent.clean_config({"event": "welcome", "properties": ["not", "an", "object"]})
    assert "welcome" in TriggerEvent.describe({"event": "welcome"})

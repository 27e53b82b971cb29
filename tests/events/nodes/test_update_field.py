import pytest
from django.core.exceptions import ValidationError

from events.models import RunTask
from events.nodes import registry
from tests.factories import FieldFactory, add_node, fields_of

UpdateField = registry.get("update_field")


def test_update_field_writes_a_templated_value_from_the_record(form, submit):
    add_node(form, "update_field", name="greet", config={"field": "status", "value": "booked for {{ record.email }}"})

    outcome = submit({"email": "ann@example.com", "seats": 2})

    assert outcome.record.data["status"] == "booked for ann@example.com"
    task = outcome.task("greet")
    assert task.status == RunTask.Status.COMPLETE
    assert task.output == {"field": "status", "value": "booked for ann@example.com"}
    assert any("status set to" in entry["line"] for entry in task.logs)
    assert outcome.record.is_complete


def test_update_field_reads_event_properties(form, submit):
    add_node(form, "update_field", config={"field": "status", "value": "{{ properties.source }}"})

    outcome = submit({"email": "ann@example.com"}, properties={"source": "partner-api"})

    assert outcome.record.data["status"] == "partner-api"


def test_update_field_reads_the_output_of_an_earlier_task(form, submit):
    add_node(form, "update_field", name="first", config={"field": "status", "value": "step one"})
    add_node(
        form,
        "update_field",
        name="second",
        config={"field": "status", "value": "after {{ tasks.first.output.value }}"},
    )

    outcome = submit({"email": "ann@example.com"})

    assert outcome.record.data["status"] == "after step one"
    assert outcome.task("second").output["value"] == "after step one"


def test_update_field_stores_an_integer_for_an_integer_field(form, submit):
    add_node(form, "update_field", config={"field": "seats", "value": " {{ record.seats|add:1 }} "})

    outcome = submit({"email": "ann@example.com", "seats": 2})

    assert outcome.record.data["seats"] == 3
    assert isinstance(outcome.record.data["seats"], int)


def test_update_field_fails_on_a_value_that_is_not_a_whole_number(form, submit):
    add_node(form, "update_field", name="bad", config={"field": "seats", "value": "many"})

    outcome = submit({"email": "ann@example.com", "seats": 2})

    task = outcome.task("bad")
    assert task.status == RunTask.Status.FAILED
    assert "many" in task.error and "whole number" in task.error
    assert outcome.record.data["seats"] == 2


def test_update_field_on_an_unknown_field_fails_the_task_with_a_clear_error(form, submit):
    # A node saved before the field was deleted: config forms no longer guard it.
    add_node(form, "update_field", name="gone", config={"field": "loyalty_tier", "value": "gold"})

    outcome = submit({"email": "ann@example.com"})

    task = outcome.task("gone")
    assert task.status == RunTask.Status.FAILED
    assert "loyalty_tier" in task.error
    assert "no field" in task.error
    assert "loyalty_tier" not in outcome.record.data
    assert outcome.run.status == "failed"


def test_update_field_config_rejects_a_field_the_form_lacks_naming_it(form):
    with pytest.raises(ValidationError) as excinfo:
        UpdateField.clean_config({"field": "loyalty_tier", "value": "gold"}, form_fields=fields_of(form))

    assert "field" in excinfo.value.message_dict
    assert "loyalty_tier" in " ".join(excinfo.value.message_dict["field"])


def test_update_field_config_accepts_a_hidden_field_of_the_form(form):
    config = UpdateField.clean_config({"field": "status", "value": "{{ record.email }}"}, form_fields=fields_of(form))

    assert config == {"field": "status", "value": "{{ record.email }}"}


def test_update_field_config_requires_a_field():
    with pytest.raises(ValidationError) as excinfo:
        UpdateField.clean_config({"value": "x"})

    assert "field" in excinfo.value.message_dict


@pytest.mark.parametrize("rendered, stored", [("yes", True), ("True", True), ("1", True), ("no", False), ("", False)])
def test_update_field_stores_a_boolean_for_a_checkbox_field(form, submit, rendered, stored):
    FieldFactory(form=form, name="newsletter", type="checkbox")
    add_node(form, "update_field", config={"field": "newsletter", "value": "{{ record.status }}"})

    outcome = submit({"email": "ann@example.com", "status": rendered})

    assert outcome.record.data["newsletter"] is stored

"""How config forms show themselves in the admin: selects of the form's fields, JSON objects as typed.

Given the form's fields (``form_fields``) a field that names one becomes a select of them; what
validates does not change, so a config document (the form file) and the admin agree.
"""

import pytest
from django.core.exceptions import ValidationError

from events.admin_forms import tree_facts
from events.nodes.condition import Condition
from events.nodes.delay import Delay
from events.nodes.set_flag import SetFlag
from events.nodes.trigger_event import TriggerEvent
from events.nodes.update_field import UpdateField
from tests.factories import FieldFactory, FormFactory, add_node

FIELDS = {"email": "email", "arrival": "date", "status": "hidden", "seats": "integer"}


def test_without_the_forms_fields_a_field_name_is_typed():
    form = UpdateField.config_form()

    assert 'type="text"' in str(form["field"])


def test_with_the_forms_fields_update_field_offers_them_all_hidden_ones_too():
    html = str(UpdateField.config_form(form_fields=FIELDS)["field"])

    assert html.startswith("<select")
    assert [name for name in FIELDS if f'<option value="{name}">{name} ({FIELDS[name]})</option>' in html] == list(
        FIELDS
    )
    assert " required" in html  # a field must be chosen


def test_update_field_hints_when_the_form_has_no_hidden_field():
    with_hidden = UpdateField.config_form(form_fields=FIELDS)
    without = UpdateField.config_form(form_fields={"email": "email"})

    assert "no hidden field" not in with_hidden.fields["field"].help_text
    assert "This form has no hidden field to write to" in without.fields["field"].help_text


def test_delay_offers_the_fields_that_may_hold_a_date():
    html = str(Delay.config_form(form_fields=FIELDS)["field"])

    assert "arrival (date)" in html and "status (hidden)" in html
    assert "email (email)" not in html and "seats (integer)" not in html


def test_condition_rows_offer_fields_and_the_flags_the_form_sets():
    form = Condition.config_form(form_fields=FIELDS, form_flags=["paid", "vip"])

    html = str(form["field_3"])

    assert '<optgroup label="Fields">' in html and '<option value="seats">seats (integer)</option>' in html
    assert '<optgroup label="Flags">' in html and '<option value="flags.vip">flags.vip</option>' in html


def test_a_stored_name_the_form_no_longer_has_is_shown_as_such_and_still_refused():
    form = UpdateField.config_form(initial={"field": "gone"}, form_fields=FIELDS)

    assert '<option value="gone" selected>gone (not a field of this form)</option>' in str(form["field"])
    with pytest.raises(ValidationError, match="no field named “gone”"):
        UpdateField.clean_config({"field": "gone", "value": "x"}, form_fields=FIELDS)


def test_a_select_validates_as_the_typed_field_did():
    assert UpdateField.clean_config({"field": "status", "value": "x"}, form_fields=FIELDS) == {
        "field": "status",
        "value": "x",
    }
    # A flag no step sets yet is still a valid rule (the form file may name it): the select only offers.
    config = Condition.clean_config({"rules": [{"field": "flags.later", "operator": "is_set"}]}, form_fields=FIELDS)
    assert config == {"match": "all", "rules": [{"field": "flags.later", "operator": "is_set"}]}


def test_a_json_object_is_empty_when_there_is_none_not_null():
    assert TriggerEvent.config_form()["properties"].value() == ""
    assert Delay.config_form()["event_properties"].value() == ""
    assert Delay.config_form(initial={"event_properties": {"a": 1}})["event_properties"].value() == '{"a": 1}'


@pytest.mark.parametrize("typed", ["", '{"a": 1,', '{"a":1}', "  [1, 2]  "])
def test_a_json_object_comes_back_exactly_as_typed_after_a_failed_validation(typed):
    form = TriggerEvent.config_form(data={"event": "", "properties": typed})

    assert not form.is_valid()  # no event
    assert form["properties"].value() == typed


def test_set_flag_says_which_flag_it_sets():
    assert SetFlag.flags_set({"flag": "paid", "value": True}) == ["paid"]
    assert UpdateField.flags_set({"field": "status"}) == []


def test_tree_facts_are_the_forms_fields_in_order_and_every_flag_its_trees_and_waiting_page_use(db):
    form = FormFactory(wait_flag="ready")
    FieldFactory(form=form, name="email", type="email")
    FieldFactory(form=form, name="status", type="hidden")
    add_node(form, "set_flag", config={"flag": "paid", "value": True})
    add_node(form, "set_flag", event="other", config={"flag": "vip", "value": True})
    add_node(FormFactory(), "set_flag", config={"flag": "elsewhere", "value": True})

    fields, flags = tree_facts(form.pk)

    assert list(fields.items()) == [("email", "email"), ("status", "hidden")]
    assert flags == ["paid", "ready", "vip"]

from types import SimpleNamespace

import pytest
from django.core.exceptions import ValidationError

from events.admin_forms import node_form_for
from events.formfile import FormFileError, form_check, form_export, form_import
from events.nodes import registry
from events.nodes.base import NodeContext
from events.nodes.condition import ROWS, evaluate
from tests.events.test_admin import add_url, node_post
from tests.factories import fields_of

Condition = registry.get("condition")


def rule(field, operator, value=None):
    item = {"field": field, "operator": operator}
    if value is not None:
        item["value"] = value
    return item


def check(field, operator, value=None, *, data=None, flags=None):
    holds, explanations = evaluate({"rules": [rule(field, operator, value)]}, data=data or {}, flags=flags or {})
    assert len(explanations) == 1
    return holds


# Operators over present, missing and empty fields -----------------------------------------


@pytest.mark.parametrize(
    ("operator", "value", "present", "missing", "empty"),
    [
        # present: {"cabin": "Business"}; missing: {}; empty: {"cabin": ""}
        ("equals", "Business", True, False, False),
        ("not_equals", "Business", False, True, True),
        ("contains", "usi", True, False, False),
        ("greater_than", "Absolute", True, False, False),
        ("less_than", "Absolute", False, False, False),
        ("is_empty", None, False, True, True),
        ("is_set", None, True, False, False),
    ],
)
def test_condition_operator_over_present_missing_and_empty_fields(operator, value, present, missing, empty):
    assert check("cabin", operator, value, data={"cabin": "Business"}) is present
    assert check("cabin", operator, value, data={}) is missing
    assert check("cabin", operator, value, data={"cabin": ""}) is empty


@pytest.mark.parametrize("empty", ["", None, []])
def test_condition_counts_empty_text_none_and_an_empty_list_as_empty(empty):
    assert check("tags", "is_empty", data={"tags": empty}) is True
    assert check("tags", "is_set", data={"tags": empty}) is False
    assert check("tags", "contains", "a", data={"tags": empty}) is False
    assert check("tags", "greater_than", "0", data={"tags": empty}) is False
    assert check("tags", "less_than", "0", data={"tags": empty}) is False


def test_condition_text_equality_is_exact_and_case_sensitive():
    assert check("cabin", "equals", "business", data={"cabin": "Business"}) is False
    assert check("cabin", "equals", "Business ", data={"cabin": "Business"}) is False
    assert check("cabin", "not_equals", "business", data={"cabin": "Business"}) is True
    assert check("cabin", "contains", "bus", data={"cabin": "Business"}) is False


# Numbers against text ---------------------------------------------------------------------


def test_condition_compares_numbers_as_numbers_when_both_sides_are_decimals():
    assert check("seats", "equals", "2", data={"seats": 2.0}) is True
    assert check("seats", "equals", "2.00", data={"seats": "2"}) is True
    assert check("seats", "greater_than", "9", data={"seats": 10}) is True  # as text, "10" < "9"
    assert check("seats", "less_than", "9", data={"seats": "10"}) is False
    assert check("price", "less_than", "100", data={"price": "99.50"}) is True
    assert check("seats", "greater_than", "3", data={"seats": 3}) is False
    assert check("seats", "not_equals", "3", data={"seats": 3}) is False


def test_condition_compares_as_text_when_one_side_is_not_a_number():
    assert check("code", "greater_than", "abc", data={"code": 10}) is False  # "10" < "abc"
    assert check("code", "equals", "10", data={"code": "ten"}) is False
    assert check("day", "less_than", "2027-02-01", data={"day": "2027-01-31"}) is True  # ISO dates order as text
    assert check("day", "greater_than", "2027-02-01", data={"day": "2027-01-31"}) is False


def test_condition_contains_on_a_number_looks_at_its_text():
    assert check("phone", "contains", "55", data={"phone": 1550}) is True


def test_condition_compares_checkboxes_with_true_and_false_in_any_case():
    assert check("agree", "equals", "true", data={"agree": True}) is True
    assert check("agree", "equals", "TRUE", data={"agree": True}) is True
    assert check("agree", "equals", "false", data={"agree": True}) is False
    assert check("agree", "equals", "False", data={"agree": False}) is True
    assert check("agree", "not_equals", "true", data={"agree": False}) is True
    assert check("agree", "equals", "1", data={"agree": True}) is False  # a checkbox is not a number
    assert check("agree", "is_set", data={"agree": False}) is True  # false is a value, not empty


# Lists (multiple choice) ------------------------------------------------------------------


def test_condition_contains_on_a_list_is_membership():
    data = {"extras": ["Meal", "Extra bag"]}

    assert check("extras", "contains", "Meal", data=data) is True
    assert check("extras", "contains", "Extra bag", data=data) is True
    assert check("extras", "contains", "bag", data=data) is False  # an item, not a substring
    assert check("extras", "contains", "meal", data=data) is False
    assert check("extras", "is_set", data=data) is True


def test_condition_equals_on_a_list_holds_for_that_one_item_only():
    assert check("extras", "equals", "Meal", data={"extras": ["Meal"]}) is True
    assert check("extras", "equals", "Meal", data={"extras": ["Meal", "Extra bag"]}) is False
    assert check("extras", "not_equals", "Meal", data={"extras": ["Meal", "Extra bag"]}) is True
    assert check("extras", "greater_than", "0", data={"extras": ["5"]}) is False


# Flags ------------------------------------------------------------------------------------


def test_condition_reads_flags_by_name():
    flags = {"paid": True, "refunded": False}

    assert check("flags.paid", "equals", "true", flags=flags) is True
    assert check("flags.paid", "is_set", flags=flags) is True
    assert check("flags.refunded", "equals", "false", flags=flags) is True
    assert check("flags.shipped", "is_set", flags=flags) is False
    assert check("flags.shipped", "is_empty", flags=flags) is True
    assert check("flags.paid", "is_set", data={"paid": True}) is False  # a field is not a flag


# all / any --------------------------------------------------------------------------------


def test_condition_all_needs_every_rule_and_any_needs_one():
    rules = [rule("seats", "greater_than", "2"), rule("cabin", "equals", "Business")]
    data = {"seats": 3, "cabin": "Economy"}

    assert evaluate({"match": "all", "rules": rules}, data=data, flags={})[0] is False
    assert evaluate({"rules": rules}, data=data, flags={})[0] is False  # all is the default
    assert evaluate({"match": "any", "rules": rules}, data=data, flags={})[0] is True
    assert evaluate({"match": "any", "rules": rules}, data={"seats": 1}, flags={})[0] is False


def test_condition_explains_every_rule():
    config = {"match": "any", "rules": [rule("seats", "greater_than", "2"), rule("flags.paid", "is_set")]}

    holds, explanations = evaluate(config, data={"seats": 3}, flags={})

    assert holds is True
    assert explanations == ["seats > 2: true (seats is 3)", "flags.paid is set: false (flags.paid is missing)"]


def test_condition_without_rules_does_not_hold():
    assert evaluate({"match": "any", "rules": []}, data={}, flags={})[0] is False


# holds(ctx) -------------------------------------------------------------------------------


def make_ctx(config, *, data, flags=None):
    record = SimpleNamespace(data=data, flags=flags or {})
    return NodeContext(run=None, task=None, record=record, node={"type": "condition", "config": config})


def test_condition_holds_reads_the_record_and_logs_each_rule():
    config = Condition.clean_config(
        {
            "match": "all",
            "rules": [
                rule("seats", "greater_than", "2"),
                rule("flags.paid", "equals", "true"),
            ],
        }
    )
    ctx = make_ctx(config, data={"seats": 4}, flags={"paid": True})

    assert Condition().holds(ctx) is True
    assert [entry["line"] for entry in ctx.logs] == [
        "seats > 2: true (seats is 4)",
        "flags.paid = true: true (flags.paid is true)",
        "condition holds",
    ]


def test_condition_holds_is_false_when_a_rule_fails():
    config = Condition.clean_config({"rules": [rule("seats", "greater_than", "2")]})
    ctx = make_ctx(config, data={"seats": 1})

    assert Condition().holds(ctx) is False
    assert ctx.logs[-1]["line"] == "condition does not hold"


def test_condition_is_a_container_that_is_not_deferred():
    assert Condition.is_container is True
    assert Condition.is_deferred is False


# The config form: admin rows and JSON rules ------------------------------------------------


def test_condition_config_from_admin_rows_keeps_only_the_filled_rows():
    data = {
        "match": "any",
        "field_1": "seats",
        "operator_1": "greater_than",
        "value_1": "2",
        "field_2": "",
        "operator_2": "",
        "value_2": "",
        "field_3": "flags.paid",
        "operator_3": "is_set",
        "value_3": "ignored",
    }

    config = Condition.clean_config(data)

    assert config == {
        "match": "any",
        "rules": [
            {"field": "seats", "operator": "greater_than", "value": "2"},
            {"field": "flags.paid", "operator": "is_set"},
        ],
    }


def test_condition_config_from_a_json_rules_list():
    config = Condition.clean_config(
        {
            "match": "any",
            "rules": [
                {"field": "seats", "operator": "equals", "value": 2},
                {"field": "agree", "operator": "equals", "value": True},
                {"field": "notes", "operator": "is_empty"},
            ],
        }
    )

    assert config == {
        "match": "any",
        "rules": [
            {"field": "seats", "operator": "equals", "value": "2"},
            {"field": "agree", "operator": "equals", "value": "true"},
            {"field": "notes", "operator": "is_empty"},
        ],
    }
    assert Condition.clean_config(config) == config  # a stored config validates to itself


def test_condition_config_match_defaults_to_all():
    assert Condition.clean_config({"rules": [rule("seats", "is_set")]})["match"] == "all"


def test_condition_config_keeps_spaces_in_values():
    config = Condition.clean_config({"rules": [rule("code", "equals", " A ")]})

    assert config["rules"][0]["value"] == " A "


def test_condition_config_form_fields_are_real_rows_in_the_admin():
    names = list(Condition.config_form.base_fields)

    assert names[0] == "match"
    assert {f"{key}_{n}" for key in ("field", "operator", "value") for n in range(1, ROWS + 1)} <= set(names)
    assert "rules" not in names  # the admin edits rows, not JSON
    assert "config_operator_1" in node_form_for(Condition).base_fields


def test_condition_initial_from_config_fills_the_rows():
    config = {"match": "any", "rules": [rule("seats", "greater_than", "2"), rule("flags.paid", "is_set")]}

    initial = Condition.config_form.initial_from_config(config)

    assert initial == {
        "match": "any",
        "field_1": "seats",
        "operator_1": "greater_than",
        "value_1": "2",
        "field_2": "flags.paid",
        "operator_2": "is_set",
        "value_2": "",
    }


def errors(data, **kwargs):
    with pytest.raises(ValidationError) as excinfo:
        Condition.clean_config(data, **kwargs)
    return excinfo.value.message_dict


def test_condition_config_names_a_missing_operator():
    found = errors({"field_1": "seats", "operator_1": "is_set", "field_2": "cabin", "value_2": "Business"})

    assert found == {"operator_2": ["Operator 2: Choose an operator."]}


def test_condition_config_requires_a_value_for_comparisons():
    found = errors({"field_1": "seats", "operator_1": "equals"})

    assert found == {"value_1": ["Value 1: Required for “equals”."]}


def test_condition_config_requires_a_field_name():
    found = errors({"operator_1": "is_set"})

    assert list(found) == ["field_1"]
    assert "flags.<name>" in found["field_1"][0]


def test_condition_config_refuses_bad_field_names_and_operators():
    found = errors({"rules": [rule("Seats!", "is_set"), rule("seats", "between", "1")]})

    assert set(found) == {"field_1", "operator_2"}


def test_condition_config_checks_field_names_against_the_form_but_not_flags(form):
    found = errors(
        {"rules": [rule("seats", "is_set"), rule("colour", "is_set"), rule("flags.anything", "is_set")]},
        form_fields=fields_of(form),
    )

    assert found == {"field_2": ["Field 2: This form has no field named “colour”."]}


def test_condition_config_needs_at_least_one_rule():
    assert list(errors({"match": "all"})) == ["rules"]
    assert list(errors({"match": "all", "rules": []})) == ["rules"]


def test_condition_config_refuses_more_rules_than_rows():
    found = errors({"rules": [rule("seats", "is_set")] * (ROWS + 1)})

    assert list(found) == ["rules"]
    assert f"At most {ROWS} rules" in found["rules"][0]


@pytest.mark.parametrize(
    "rules",
    [
        "not a list",
        [["seats", "is_set"]],
        [{"field": "seats", "operator": "is_set", "colour": "red"}],
        [{"field": "tags", "operator": "equals", "value": ["a"]}],
    ],
)
def test_condition_config_refuses_malformed_rules_naming_rules(rules):
    assert list(errors({"rules": rules})) == ["rules"]


def test_condition_config_refuses_rules_and_rows_together():
    found = errors({"rules": [rule("seats", "is_set")], "field_1": "cabin", "operator_1": "is_set"})

    assert list(found) == ["rules"]


def test_condition_config_refuses_an_unknown_match():
    assert list(errors({"match": "most", "rules": [rule("seats", "is_set")]})) == ["match"]


# describe ---------------------------------------------------------------------------------


def test_condition_describe_reads_like_the_rules():
    config = {
        "match": "all",
        "rules": [
            rule("seats", "greater_than", "2"),
            rule("cabin", "equals", "Business"),
            rule("flags.paid", "is_set"),
        ],
    }

    assert Condition.describe(config) == 'all of: seats > 2, cabin = "Business", flags.paid is set'


def test_condition_describe_any_and_single_rules():
    assert Condition.describe({"match": "any", "rules": [rule("a", "less_than", "1"), rule("b", "is_empty")]}) == (
        "any of: a < 1, b is empty"
    )
    assert Condition.describe({"match": "all", "rules": [rule("tags", "contains", "Meal")]}) == 'tags contains "Meal"'
    assert Condition.describe({"rules": [rule("cabin", "not_equals", "Economy")]}) == 'cabin != "Economy"'


# Through the admin editor and a form file --------------------------------------------------


def test_condition_admin_add_stores_the_rows_as_rules(admin_client, form):
    response = admin_client.post(
        add_url(form, "condition"),
        node_post(
            form,
            name="big",
            config_match="all",
            config_field_1="seats",
            config_operator_1="greater_than",
            config_value_1="2",
            config_field_2="flags.paid",
            config_operator_2="is_set",
        ),
    )

    assert response.status_code == 302, response.content.decode()[:2000]
    node = form.nodes.get(name="big")
    assert node.config == {
        "match": "all",
        "rules": [
            {"field": "seats", "operator": "greater_than", "value": "2"},
            {"field": "flags.paid", "operator": "is_set"},
        ],
    }


def test_condition_admin_names_the_row_in_error(admin_client, form):
    response = admin_client.post(
        add_url(form, "condition"),
        node_post(
            form,
            config_field_1="seats",
            config_operator_1="equals",
            config_field_2="colour",
            config_operator_2="is_set",
        ),
    )

    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert set(errors) == {"config_value_1", "config_field_2"}


def test_condition_form_file_import_and_export(db):
    document = {
        "form": {"slug": "trip", "title": "Trip", "fields": [{"name": "seats", "type": "integer"}]},
        "events": {
            "record_update": [
                {
                    "type": "condition",
                    "name": "big",
                    "config": {
                        "match": "any",
                        "rules": [
                            {"field": "seats", "operator": "greater_than", "value": 2},
                            {"field": "flags.vip", "operator": "is_set"},
                        ],
                    },
                    "children": [{"type": "set_flag", "config": {"flag": "group"}}],
                },
            ]
        },
    }

    form = form_import(document)

    exported = form_export(form)["events"]["record_update"][0]
    assert exported["config"] == {
        "match": "any",
        "rules": [
            {"field": "seats", "operator": "greater_than", "value": "2"},
            {"field": "flags.vip", "operator": "is_set"},
        ],
    }
    assert exported["children"][0]["type"] == "set_flag"


def test_condition_form_file_names_a_bad_rule(db):
    document = {
        "form": {"slug": "trip", "title": "Trip", "fields": [{"name": "seats", "type": "integer"}]},
        "events": {
            "record_update": [
                {"type": "condition", "config": {"rules": [{"field": "colour", "operator": "is_set"}]}, "children": []},
            ]
        },
    }

    with pytest.raises(FormFileError) as excinfo:
        form_check(document)

    assert "colour" in str(excinfo.value)

import pytest
from django.core.exceptions import ValidationError

from events.models import RunTask
from events.nodes import registry
from tests.factories import add_node

SetFlag = registry.get("set_flag")


def test_set_flag_sets_a_true_flag_on_the_record(form, submit):
    add_node(form, "set_flag", name="confirm", config={"flag": "booking_confirmed", "value": True})

    outcome = submit({"email": "ann@example.com"})

    assert outcome.record.flags == {"booking_confirmed": True}
    task = outcome.task("confirm")
    assert task.status == RunTask.Status.COMPLETE
    assert task.output == {"flag": "booking_confirmed", "value": True}


def test_set_flag_can_clear_a_flag_set_earlier(form, submit):
    add_node(form, "set_flag", config={"flag": "paid", "value": True})
    add_node(form, "set_flag", config={"flag": "paid", "value": False})

    outcome = submit({"email": "ann@example.com"})

    assert outcome.record.flags == {"paid": False}


def test_set_flag_defaults_to_true_when_value_is_left_out(form, submit):
    add_node(form, "set_flag", config={"flag": "seen"})

    outcome = submit({"email": "ann@example.com"})

    assert outcome.record.flags["seen"] is True


def test_set_flag_keeps_the_record_data(form, submit):
    add_node(form, "update_field", config={"field": "status", "value": "ok"})
    add_node(form, "set_flag", config={"flag": "seen"})

    outcome = submit({"email": "ann@example.com", "seats": 1})

    assert outcome.record.data == {"email": "ann@example.com", "seats": 1, "status": "ok"}
    assert outcome.record.flags == {"seen": True}


def test_set_flag_config_requires_a_slug_name():
    with pytest.raises(ValidationError) as excinfo:
        SetFlag.clean_config({"flag": "not a slug"})

    assert "flag" in excinfo.value.message_dict


def test_set_flag_config_keeps_an_explicit_value():
    # The admin always sends the checkbox: False when unchecked.
    assert SetFlag.clean_config({"flag": "paid", "value": False}) == {"flag": "paid", "value": False}
    assert SetFlag.clean_config({"flag": "paid", "value": "on"}) == {"flag": "paid", "value": True}


def test_set_flag_config_value_defaults_to_true_when_left_out():
    # README and docstring: "value (default true)". A form file may leave it out.
    assert SetFlag.clean_config({"flag": "paid"}) == {"flag": "paid", "value": True}

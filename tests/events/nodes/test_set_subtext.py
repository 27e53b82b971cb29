import pytest
from django.core.exceptions import ValidationError

from events.models import RunTask
from events.nodes import registry
from tests.factories import add_node

SetSubtext = registry.get("set_subtext")


def test_set_subtext_sets_the_run_and_task_subtext(form, submit):
    add_node(
        form,
        "set_subtext",
        name="progress",
        config={"text": "Booking {{ record.seats }} seats for {{ record.email }}"},
    )

    outcome = submit({"email": "ann@example.com", "seats": 2})

    assert outcome.run.subtext == "Booking 2 seats for ann@example.com"
    task = outcome.task("progress")
    assert task.status == RunTask.Status.COMPLETE
    assert task.subtext == "Booking 2 seats for ann@example.com"
    assert task.output == {"subtext": "Booking 2 seats for ann@example.com"}


def test_set_subtext_later_text_replaces_the_run_subtext(form, submit):
    add_node(form, "set_subtext", name="one", config={"text": "Checking seats"})
    add_node(form, "set_subtext", name="two", config={"text": "Issuing tickets"})

    outcome = submit({"email": "ann@example.com"})

    assert outcome.run.subtext == "Issuing tickets"
    assert outcome.task("one").subtext == "Checking seats"
    assert outcome.task("two").subtext == "Issuing tickets"


def test_set_subtext_inside_a_background_sets_the_run_subtext(form, submit):
    background = add_node(form, "background")
    add_node(form, "set_subtext", parent=background, name="later", config={"text": "Still working"})

    outcome = submit({"email": "ann@example.com"})

    assert outcome.run.subtext == "Still working"
    assert outcome.task("later").subtext == "Still working"


def test_set_subtext_keeps_at_most_500_characters(form, submit):
    add_node(form, "set_subtext", config={"text": "{{ record.status }}"})

    outcome = submit({"email": "ann@example.com", "status": "x" * 600})

    assert outcome.run.subtext == "x" * 500


def test_set_subtext_config_requires_text_of_at_most_500_characters():
    with pytest.raises(ValidationError) as missing:
        SetSubtext.clean_config({})
    with pytest.raises(ValidationError) as too_long:
        SetSubtext.clean_config({"text": "x" * 501})

    assert "text" in missing.value.message_dict
    assert "text" in too_long.value.message_dict

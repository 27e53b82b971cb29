import datetime
import zoneinfo

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone
from django_q.models import OrmQ

from events.models import RunTask
from events.nodes import registry
from events.nodes.base import NodeError
from events.nodes.delay import due_at
from tests.factories import FieldFactory, add_node, fields_of

Delay = registry.get("delay")
UTC = datetime.UTC
PARIS = zoneinfo.ZoneInfo("Europe/Paris")
SUBMITTED = datetime.datetime(2027, 3, 10, 9, 0, tzinfo=UTC)
LATER = SUBMITTED + datetime.timedelta(hours=5)


@pytest.fixture
def paris(settings):
    settings.TIME_ZONE = "Europe/Paris"
    with timezone.override("Europe/Paris"):
        yield PARIS


# The pure rule: due_at(config, submitted_at=..., record_data=..., now=...)


def test_due_at_now_is_now():
    assert due_at({"rule": "now"}, submitted_at=SUBMITTED, record_data={}, now=LATER) == LATER


def test_due_at_now_without_a_clock_is_the_current_time():
    before = timezone.now()
    moment = due_at({"rule": "now"}, submitted_at=SUBMITTED, record_data={})
    assert before <= moment <= timezone.now()


def test_due_at_empty_config_means_now():
    assert due_at({}, submitted_at=SUBMITTED, record_data={}, now=LATER) == LATER


def test_due_at_after_counts_from_the_submit_not_from_now():
    moment = due_at({"rule": "after", "after_seconds": 600}, submitted_at=SUBMITTED, record_data={}, now=LATER)

    assert moment == SUBMITTED + datetime.timedelta(minutes=10)


def test_due_at_after_seconds_alone_means_after():
    moment = due_at({"after_seconds": 60}, submitted_at=SUBMITTED, record_data={}, now=LATER)

    assert moment == SUBMITTED + datetime.timedelta(minutes=1)


def test_due_at_at_an_aware_iso_datetime():
    moment = due_at({"rule": "at", "at": "2027-01-31T09:00:00+05:00"}, submitted_at=SUBMITTED, record_data={})

    assert moment == datetime.datetime(2027, 1, 31, 4, 0, tzinfo=UTC)


def test_due_at_at_a_naive_datetime_is_local_time(paris):
    moment = due_at({"rule": "at", "at": "2027-01-31T09:00:00"}, submitted_at=SUBMITTED, record_data={})

    assert moment == datetime.datetime(2027, 1, 31, 9, 0, tzinfo=PARIS)
    assert moment == datetime.datetime(2027, 1, 31, 8, 0, tzinfo=UTC)


def test_due_at_at_that_is_not_a_datetime_raises():
    with pytest.raises(NodeError, match="not a date and time"):
        due_at({"rule": "at", "at": "next tuesday"}, submitted_at=SUBMITTED, record_data={})


def test_due_at_field_with_a_date_is_local_midnight(paris):
    config = {"rule": "field", "field": "travel_date"}

    moment = due_at(config, submitted_at=SUBMITTED, record_data={"travel_date": "2027-06-01"})

    assert moment == datetime.datetime(2027, 6, 1, 0, 0, tzinfo=PARIS)
    assert moment == datetime.datetime(2027, 5, 31, 22, 0, tzinfo=UTC)


def test_due_at_field_with_a_date_minus_an_offset(paris):
    config = {"rule": "field", "field": "travel_date", "offset_seconds": -86400}

    moment = due_at(config, submitted_at=SUBMITTED, record_data={"travel_date": "2027-06-01"})

    assert moment == datetime.datetime(2027, 5, 31, 0, 0, tzinfo=PARIS)


def test_due_at_field_with_an_aware_datetime_plus_an_offset():
    config = {"rule": "field", "field": "departure", "offset_seconds": 3600}

    moment = due_at(config, submitted_at=SUBMITTED, record_data={"departure": "2027-06-01T10:30:00+00:00"})

    assert moment == datetime.datetime(2027, 6, 1, 11, 30, tzinfo=UTC)


def test_due_at_field_with_a_naive_datetime_is_local_time(paris):
    config = {"rule": "field", "field": "departure", "offset_seconds": -1800}

    moment = due_at(config, submitted_at=SUBMITTED, record_data={"departure": "2027-06-01T10:30:00"})

    assert moment == datetime.datetime(2027, 6, 1, 10, 0, tzinfo=PARIS)


def test_due_at_field_with_a_datetime_object():
    departure = datetime.datetime(2027, 6, 1, 10, 30, tzinfo=UTC)

    config = {"rule": "field", "field": "departure"}

    moment = due_at(config, submitted_at=SUBMITTED, record_data={"departure": departure})

    assert moment == departure


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"departure": ""},
        {"departure": None},
        {"departure": "soon"},
        {"departure": "2027-13-45"},  # well-formed, impossible: Django's parse_date raises ValueError
        {"departure": "2027-06-01T25:00:00"},
    ],
)
def test_due_at_field_missing_or_invalid_raises_naming_the_field(data):
    with pytest.raises(NodeError, match="departure"):
        due_at({"rule": "field", "field": "departure"}, submitted_at=SUBMITTED, record_data=data)


def test_due_at_next_day_is_local_midnight_after_the_submit(paris):
    # 23:30 UTC on the 10th is already 00:30 on the 11th in Paris.
    submitted = datetime.datetime(2027, 3, 10, 23, 30, tzinfo=UTC)

    moment = due_at({"rule": "next_day"}, submitted_at=submitted, record_data={}, now=LATER)

    assert moment == datetime.datetime(2027, 3, 12, 0, 0, tzinfo=PARIS)
    assert moment == datetime.datetime(2027, 3, 11, 23, 0, tzinfo=UTC)


def test_due_at_next_day_across_a_daylight_saving_change(paris):
    # Paris moves to summer time on 2027-03-28: midnight of the 29th is 22:00 UTC.
    submitted = datetime.datetime(2027, 3, 28, 12, 0, tzinfo=UTC)

    moment = due_at({"rule": "next_day"}, submitted_at=submitted, record_data={})

    assert moment == datetime.datetime(2027, 3, 28, 22, 0, tzinfo=UTC)


def test_due_at_next_day_in_utc():
    submitted = datetime.datetime(2027, 3, 10, 23, 30, tzinfo=UTC)

    with timezone.override("UTC"):
        moment = due_at({"rule": "next_day"}, submitted_at=submitted, record_data={})

    assert moment == datetime.datetime(2027, 3, 11, 0, 0, tzinfo=UTC)


def test_due_at_next_month_is_local_midnight_on_the_first(paris):
    submitted = datetime.datetime(2027, 3, 10, 9, 0, tzinfo=UTC)

    moment = due_at({"rule": "next_month"}, submitted_at=submitted, record_data={}, now=LATER)

    assert moment == datetime.datetime(2027, 4, 1, 0, 0, tzinfo=PARIS)
    assert moment == datetime.datetime(2027, 3, 31, 22, 0, tzinfo=UTC)


def test_due_at_next_month_from_december_is_january_of_next_year(paris):
    submitted = datetime.datetime(2027, 12, 15, 9, 0, tzinfo=UTC)

    moment = due_at({"rule": "next_month"}, submitted_at=submitted, record_data={})

    assert moment == datetime.datetime(2028, 1, 1, 0, 0, tzinfo=PARIS)


def test_due_at_next_month_uses_the_local_month(paris):
    # 23:30 UTC on 31 December is already 1 January in Paris: the next month is February.
    submitted = datetime.datetime(2027, 12, 31, 23, 30, tzinfo=UTC)

    moment = due_at({"rule": "next_month"}, submitted_at=submitted, record_data={})

    assert moment == datetime.datetime(2028, 2, 1, 0, 0, tzinfo=PARIS)


def test_due_at_unknown_rule_raises():
    with pytest.raises(NodeError, match="someday"):
        due_at({"rule": "someday"}, submitted_at=SUBMITTED, record_data={})


# The config form


def test_delay_config_infers_rule_after_from_after_seconds():
    assert Delay.clean_config({"after_seconds": 600}) == {"rule": "after", "after_seconds": 600}


def test_delay_config_infers_rule_at_from_at():
    config = Delay.clean_config({"at": "2027-01-31T09:00:00+00:00"})

    assert config == {"rule": "at", "at": "2027-01-31T09:00:00+00:00"}


def test_delay_config_infers_rule_field_from_field_and_keeps_the_offset():
    config = Delay.clean_config({"field": "travel_date", "offset_seconds": -3600})

    assert config == {"rule": "field", "field": "travel_date", "offset_seconds": -3600}


@pytest.mark.parametrize("rule", ["now", "next_day", "next_month"])
def test_delay_config_rules_without_a_value(rule):
    assert Delay.clean_config({"rule": rule}) == {"rule": rule}


def test_delay_config_keeps_only_the_value_of_its_rule():
    config = Delay.clean_config({"rule": "after", "after_seconds": 5, "field": "travel_date", "offset_seconds": 9})

    assert config == {"rule": "after", "after_seconds": 5}


def test_delay_config_without_rule_or_value_is_refused():
    with pytest.raises(ValidationError) as excinfo:
        Delay.clean_config({})

    assert "rule" in " ".join(excinfo.value.messages)


@pytest.mark.parametrize("rule, missing", [("after", "after_seconds"), ("at", "at"), ("field", "field")])
def test_delay_config_names_the_missing_value_of_its_rule(rule, missing):
    with pytest.raises(ValidationError) as excinfo:
        Delay.clean_config({"rule": rule})

    assert list(excinfo.value.message_dict) == [missing]
    assert "Required" in excinfo.value.message_dict[missing][0]


def test_delay_config_refuses_negative_seconds():
    with pytest.raises(ValidationError) as excinfo:
        Delay.clean_config({"after_seconds": -1})

    assert "after_seconds" in excinfo.value.message_dict


def test_delay_config_refuses_a_field_the_form_lacks_naming_it(form):
    with pytest.raises(ValidationError) as excinfo:
        Delay.clean_config({"rule": "field", "field": "travel_date"}, form_fields=fields_of(form))

    assert "travel_date" in " ".join(excinfo.value.message_dict["field"])


def test_delay_config_refuses_a_field_that_is_not_a_date(form):
    with pytest.raises(ValidationError) as excinfo:
        Delay.clean_config({"rule": "field", "field": "seats"}, form_fields=fields_of(form))

    assert "seats" in " ".join(excinfo.value.message_dict["field"])
    assert "not a date" in " ".join(excinfo.value.message_dict["field"])


def test_delay_config_accepts_a_date_field_of_the_form(form):
    FieldFactory(form=form, name="travel_date", type="date")

    config = Delay.clean_config(
        {"rule": "field", "field": "travel_date", "offset_seconds": -86400}, form_fields=fields_of(form)
    )

    assert config == {"rule": "field", "field": "travel_date", "offset_seconds": -86400}


def test_delay_config_stores_a_naive_at_as_aware_local_time(paris):
    config = Delay.clean_config({"at": "2027-01-31 09:00"})

    assert datetime.datetime.fromisoformat(config["at"]) == datetime.datetime(2027, 1, 31, 9, 0, tzinfo=PARIS)


# In a run


def test_delay_in_the_future_stays_pending_and_is_not_enqueued(form, submit_queued):
    delay = add_node(form, "delay", name="later", config={"rule": "after", "after_seconds": 600})
    add_node(form, "set_flag", parent=delay, name="child", config={"flag": "reminded"})
    add_node(form, "set_flag", name="inline", config={"flag": "inline"})

    submitted = submit_queued({"email": "ann@example.com"})
    record, tasks = submitted.record, submitted.tasks

    later = tasks["later"]
    assert later.status == RunTask.Status.PENDING
    assert later.due_at == record.created_at + datetime.timedelta(seconds=600)
    assert later.enqueued_at is None
    assert OrmQ.objects.count() == 0
    assert "child" not in tasks  # its row is created when a worker starts the delay
    assert record.flags == {"inline": True}
    assert record.is_complete is False


def test_delay_in_the_future_does_not_run_even_with_a_sync_queue(form, submit):
    delay = add_node(form, "delay", name="later", config={"after_seconds": 600})
    add_node(form, "set_flag", parent=delay, name="child", config={"flag": "reminded"})

    outcome = submit({"email": "ann@example.com"})

    assert outcome.record.flags == {}
    assert "child" not in outcome.tasks
    assert outcome.task("later").status == RunTask.Status.PENDING
    assert outcome.run.status == "running"


def test_delay_now_is_handed_to_the_queue(form, submit_queued):
    delay = add_node(form, "delay", name="soon", config={"rule": "now"})
    add_node(form, "set_flag", parent=delay, name="child", config={"flag": "done"})

    tasks = submit_queued({"email": "ann@example.com"}).tasks

    assert tasks["soon"].status == RunTask.Status.PENDING
    assert tasks["soon"].enqueued_at is not None
    assert tasks["soon"].due_at <= timezone.now()
    assert OrmQ.objects.count() == 1


def test_delay_now_runs_its_children_after_the_inline_phase(form, submit):
    delay = add_node(form, "delay", name="soon", config={"rule": "now"})
    add_node(
        form,
        "update_field",
        parent=delay,
        name="child",
        config={"field": "status", "value": "{{ record.status }}+delayed"},
    )
    add_node(form, "update_field", name="inline", config={"field": "status", "value": "inline"})

    outcome = submit({"email": "ann@example.com"})

    assert outcome.record.data["status"] == "inline+delayed"
    assert outcome.task("soon").status == RunTask.Status.COMPLETE
    assert outcome.record.is_complete is True


def test_delay_at_a_past_moment_runs_at_once(form, submit):
    delay = add_node(form, "delay", name="past", config={"rule": "at", "at": "2020-01-01T00:00:00+00:00"})
    add_node(form, "set_flag", parent=delay, config={"flag": "done"})

    outcome = submit({"email": "ann@example.com"})

    assert outcome.record.flags == {"done": True}
    assert outcome.task("past").due_at == datetime.datetime(2020, 1, 1, tzinfo=UTC)


def test_delay_on_a_record_field_is_due_at_that_value_plus_offset(form, submit):
    FieldFactory(form=form, name="departure", type="datetime")
    delay = add_node(
        form,
        "delay",
        name="remind",
        config={"rule": "field", "field": "departure", "offset_seconds": -3600},
    )
    add_node(form, "set_flag", parent=delay, config={"flag": "reminded"})

    outcome = submit({"email": "ann@example.com", "departure": "2099-06-01T10:00:00+00:00"})

    assert outcome.task("remind").due_at == datetime.datetime(2099, 6, 1, 9, 0, tzinfo=UTC)
    assert outcome.task("remind").status == RunTask.Status.PENDING
    assert outcome.record.flags == {}


def test_delay_on_an_empty_record_field_fails_the_run_naming_the_field(form, submit):
    FieldFactory(form=form, name="departure", type="datetime")
    delay = add_node(form, "delay", name="remind", config={"rule": "field", "field": "departure"})
    add_node(form, "set_flag", parent=delay, name="child", config={"flag": "reminded"})

    outcome = submit({"email": "ann@example.com"})

    task = outcome.task("remind")
    assert task.status == RunTask.Status.FAILED
    assert "departure" in task.error
    assert "child" not in outcome.tasks  # never started
    assert outcome.run.status == "failed"
    assert outcome.record.is_complete is True


def test_delay_on_an_impossible_date_fails_the_run_naming_the_field(form, submit):
    # Well-formed but impossible: Django's parse_date raises ValueError rather than returning None.
    FieldFactory(form=form, name="travel_date", type="text")
    delay = add_node(form, "delay", name="remind", config={"rule": "field", "field": "travel_date"})
    add_node(form, "set_flag", parent=delay, name="child", config={"flag": "reminded"})

    outcome = submit({"email": "ann@example.com", "travel_date": "2027-02-30"})

    task = outcome.task("remind")
    assert task.status == RunTask.Status.FAILED
    assert "travel_date" in task.error
    assert outcome.run.status == "failed"
    assert outcome.record.is_complete is True

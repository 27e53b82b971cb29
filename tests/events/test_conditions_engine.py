"""The condition container in real runs: its steps run when its test holds, and are skipped when not."""

import pytest

from events import engine
from events.models import Run, RunTask
from tests.factories import add_node


def add_condition(form, *rules, match="all", parent=None, name="cond"):
    return add_node(form, "condition", parent=parent, name=name, config={"match": match, "rules": list(rules)})


def rule(field, operator, value=None):
    return {"field": field, "operator": operator, **({} if value is None else {"value": value})}


def tasks_of(record):
    return {task.name: task for task in record.runs.get(is_submission=True).tasks.all()}


def test_when_the_condition_holds_its_steps_run_in_order_before_the_next_sibling(form, submit):
    condition = add_condition(form, rule("seats", "greater_than", "2"))
    add_node(form, "update_field", parent=condition, name="one", config={"field": "status", "value": "1"})
    add_node(
        form, "update_field", parent=condition, name="two", config={"field": "status", "value": "{{ record.status }}2"}
    )
    add_node(form, "update_field", name="after", config={"field": "status", "value": "{{ record.status }}3"})

    record = submit(seats=4).record

    assert record.data["status"] == "123"
    tasks = tasks_of(record)
    assert tasks["cond"].status == RunTask.Status.COMPLETE
    assert tasks["cond"].output == {"matched": True}
    assert "seats > 2: true (seats is 4)" in " ".join(entry["line"] for entry in tasks["cond"].logs)
    assert record.runs.get().status == Run.Status.COMPLETE
    assert record.is_complete is True


def test_when_the_condition_does_not_hold_its_steps_are_skipped_and_the_run_still_completes(form, submit, mailoutbox):
    condition = add_condition(form, rule("seats", "greater_than", "2"))
    add_node(form, "update_field", parent=condition, name="one", config={"field": "status", "value": "1"})
    background = add_node(form, "background", parent=condition, name="bg")
    add_node(
        form, "send_email", parent=background, name="mail", config={"to": "a@example.com", "subject": "s", "body": "b"}
    )
    add_node(form, "set_flag", name="after", config={"flag": "after"})

    record = submit(seats=1).record

    tasks = tasks_of(record)
    assert {tasks[name].status for name in ("one", "bg")} == {RunTask.Status.SKIPPED}
    assert "mail" not in tasks  # the skipped background never started
    assert tasks["cond"].status == RunTask.Status.COMPLETE
    assert tasks["cond"].output == {"matched": False}
    assert tasks["after"].status == RunTask.Status.COMPLETE
    assert record.data["status"] == ""
    assert mailoutbox == []
    assert record.runs.get().status == Run.Status.COMPLETE
    assert record.is_complete is True


# operator, value, a present value that holds, one that does not; and whether a missing field holds.
OPERATOR_CASES = [
    ("equals", "gold", "gold", "silver", False),
    ("not_equals", "gold", "silver", "gold", True),
    ("contains", "old", "gold", "silver", False),
    ("greater_than", "2", "10", "2", False),
    ("less_than", "10", "9", "10", False),
    ("is_empty", None, "", "x", True),
    ("is_set", None, "x", "", False),
]


@pytest.mark.parametrize(
    "operator, value, holds_for, fails_for, missing_holds", OPERATOR_CASES, ids=[case[0] for case in OPERATOR_CASES]
)
def test_every_operator_in_a_real_run_with_present_and_missing_fields(
    form, submit, operator, value, holds_for, fails_for, missing_holds
):
    condition = add_condition(form, rule("plan", operator, value))
    add_node(form, "set_flag", parent=condition, name="inside", config={"flag": "inside"})

    held = submit(plan=holds_for).record
    failed = submit(plan=fails_for).record
    missing = submit().record  # no "plan" in the record at all

    assert held.flags == {"inside": True}
    assert failed.flags == {}
    assert missing.flags == ({"inside": True} if missing_holds else {})
    for record in (held, failed, missing):
        assert record.runs.get().status == Run.Status.COMPLETE
    assert tasks_of(failed)["inside"].status == RunTask.Status.SKIPPED
    assert "plan is missing" in " ".join(entry["line"] for entry in tasks_of(missing)["cond"].logs)


@pytest.mark.parametrize(
    "match, seats, expected",
    [
        ("all", 5, True),
        ("all", 1, False),
        ("any", 1, True),
        ("any", 0, False),
    ],
)
def test_all_needs_every_rule_and_any_needs_one(form, submit, match, seats, expected):
    # email is set for every submission; seats > 2 only for some.
    condition = add_condition(
        form,
        rule("seats", "greater_than", "2"),
        rule("email", "equals", "ann@example.com" if seats else "bob@example.com"),
        match=match,
    )
    add_node(form, "set_flag", parent=condition, name="inside", config={"flag": "inside"})

    record = submit(seats=seats).record

    assert (record.flags == {"inside": True}) is expected


def test_a_condition_reads_flags_set_earlier_in_the_run(form, submit):
    add_node(form, "set_flag", name="pay", config={"flag": "paid"})
    condition = add_condition(form, rule("flags.paid", "equals", "true"))
    add_node(form, "update_field", parent=condition, name="inside", config={"field": "status", "value": "paid"})

    assert submit().record.data["status"] == "paid"


def test_a_condition_inside_a_condition_skips_the_inner_steps_too(form, submit):
    outer = add_condition(form, rule("email", "is_set"), name="outer")
    inner = add_condition(form, rule("seats", "greater_than", "5"), parent=outer, name="inner")
    add_node(form, "set_flag", parent=inner, name="deep", config={"flag": "deep"})
    add_node(form, "set_flag", parent=outer, name="shallow", config={"flag": "shallow"})

    record = submit(seats=1).record

    assert record.flags == {"shallow": True}
    assert tasks_of(record)["deep"].status == RunTask.Status.SKIPPED
    assert record.runs.get().status == Run.Status.COMPLETE


def test_a_condition_in_a_background_is_evaluated_by_the_worker(form, submit):
    background = add_node(form, "background", name="bg")
    add_node(form, "update_field", parent=background, name="set", config={"field": "status", "value": "vip"})
    condition = add_condition(form, rule("status", "equals", "vip"), parent=background)
    add_node(form, "set_flag", parent=condition, name="inside", config={"flag": "vip"})

    record = submit().record

    assert record.flags == {"vip": True}
    assert record.runs.get().status == Run.Status.COMPLETE


def test_a_waiting_step_inside_a_condition_resumes_and_then_continues_after_the_condition(
    form, submit, callback_server, allow_local_http, django_capture_on_commit_callbacks
):
    condition = add_condition(form, rule("email", "is_set"))
    add_node(
        form,
        "http_request",
        parent=condition,
        name="book",
        config={
            "method": "POST",
            "url": callback_server.url + "/jobs",
            "timeout_seconds": 5,
            "wait_for_callback": True,
            "callback_timeout_seconds": 600,
        },
    )
    add_node(
        form,
        "update_field",
        parent=condition,
        name="inside",
        config={"field": "status", "value": "seat {{ tasks.book.output.seat }}"},
    )
    add_node(form, "set_flag", name="after", config={"flag": "after"})

    record = submit().record
    tasks = tasks_of(record)
    assert tasks["book"].status == RunTask.Status.AWAITING
    assert tasks["inside"].status == RunTask.Status.PENDING
    assert tasks["after"].status == RunTask.Status.PENDING
    assert tasks["cond"].status == RunTask.Status.ACTIVE
    assert record.is_complete is False

    with django_capture_on_commit_callbacks(execute=True):
        assert engine.task_callback(task_id=tasks["book"].pk, status="SUCCESS", output={"seat": "12A"}).applied

    record.refresh_from_db()
    assert record.data["status"] == "seat 12A"
    assert record.flags == {"after": True}
    tasks = tasks_of(record)
    assert tasks["cond"].status == RunTask.Status.COMPLETE
    assert tasks["after"].started_at >= tasks["inside"].finished_at
    assert record.runs.get().status == Run.Status.COMPLETE
    assert record.is_complete is True

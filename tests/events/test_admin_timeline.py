"""The run timeline in admin tells what happened, in the order it happened (issue 8, section 5).

Error-branch steps sit right under the step whose failure they handle, before that step's later
siblings, although their tasks are created (and numbered) last; a failure an error branch caught says so.
"""

import re

import pytest
from django.urls import reverse

from events import engine
from events.models import Run
from forms_app.services import record_submit
from tests.factories import add_node


def timeline_rows(admin_client, run):
    """[(label, indent in em, status text)] of the timeline, top to bottom."""
    response = admin_client.get(reverse("admin:events_run_change", args=[run.pk]))
    assert response.status_code == 200
    html = response.content.decode()
    labels = {str(task.pk): task.label for task in run.tasks.all()}
    rows = re.findall(
        r'<tr id="task-([0-9a-f-]+)"[^>]*>\s*<td class="events-indent-(\d+)">.*?'
        r'<span class="events-status events-status-[a-z]+">(.*?)</span>',
        html,
        re.S,
    )
    assert len(rows) == len(labels), html
    return [(labels[pk], int(indent), status) for pk, indent, status in rows], html


@pytest.fixture
def handled_run(form, submit):
    """A failure handled inline at the top level, and one handled in a background branch."""
    add_node(form, "update_field", label="Received", config={"field": "status", "value": "received"})
    loyalty = add_node(form, "fail", label="Add loyalty miles", config={"message": "down"})
    add_node(form, "set_subtext", parent=loyalty, branch="on_error", label="Miles later", config={"text": "later"})
    background = add_node(form, "background", label="Confirm")
    card = add_node(form, "fail", parent=background, label="Charge card", config={"message": "declined"})
    add_node(form, "set_subtext", parent=card, branch="on_error", label="Pay at the desk", config={"text": "desk"})
    add_node(form, "set_flag", parent=background, label="Seat held", config={"flag": "held"})
    add_node(form, "set_flag", label="Booked", config={"flag": "booked"})
    run = submit({"email": "ann@example.com", "seats": 1}).run
    assert run.status == Run.Status.COMPLETE
    return run


def test_error_branch_steps_are_listed_and_nested_under_the_step_they_handle(admin_client, handled_run):
    rows, _ = timeline_rows(admin_client, handled_run)

    assert [(label, indent) for label, indent, _ in rows] == [
        ("Received", 0),
        ("Add loyalty miles", 0),
        ("Miles later", 2),  # under the failed step, before its next sibling
        ("Confirm", 0),
        ("Charge card", 2),
        ("Pay at the desk", 4),
        ("Seat held", 2),
        ("Booked", 0),
    ]


def test_a_failure_its_error_branch_handled_says_so_in_the_timeline(admin_client, handled_run):
    rows, html = timeline_rows(admin_client, handled_run)

    status = {label: text for label, _, text in rows}
    assert status["Add loyalty miles"] == "Failed — handled by its error branch"
    assert status["Charge card"] == "Failed — handled by its error branch"
    assert status["Miles later"] == status["Booked"] == "Done"
    assert html.count("events-status events-status-handled") == 2
    assert "2 steps failed and were handled by their error branch" in html


def test_an_unhandled_failure_is_a_plain_failure_in_the_timeline(admin_client, form):
    step = add_node(form, "fail", label="Charge card", config={"message": "declined"})
    add_node(form, "fail", parent=step, branch="on_error", label="Apologise", config={"message": "mail down"})
    add_node(form, "set_flag", label="Booked", config={"flag": "booked"})
    record = record_submit(form=form, data={"email": "ann@example.com", "seats": 1})
    run = Run.objects.get(record=record)

    rows, html = timeline_rows(admin_client, run)

    assert rows == [("Charge card", 0, "Failed"), ("Apologise", 2, "Failed"), ("Booked", 0, "Cancelled")]
    assert "handled by" not in html


def test_the_timeline_of_a_cancelled_run_keeps_the_tree_order(admin_client, form):
    step = add_node(form, "fail", label="Charge card", config={"message": "declined"})
    add_node(form, "set_subtext", parent=step, branch="on_error", label="Pay later", config={"text": "later"})
    later = add_node(form, "delay", label="Follow-up", config={"after_seconds": 600})
    add_node(form, "set_flag", parent=later, label="Followed up", config={"flag": "f"})
    record = record_submit(form=form, data={"email": "ann@example.com", "seats": 1})
    run = Run.objects.get(record=record)
    engine.run_cancel(run=run)

    rows, html = timeline_rows(admin_client, run)

    assert [(label, indent) for label, indent, _ in rows] == [
        ("Charge card", 0),
        ("Pay later", 2),
        ("Follow-up", 0),
    ]
    # The delay never started, so its step has no task: a row of the snapshot says so, after it.
    delay = run.tasks.get(label="Follow-up")
    step = re.search(r'<tr id="node-\d+" class="events-not-run">.*?</tr>', html, re.S)
    assert step.start() > html.index(f'<tr id="task-{delay.pk}"')
    assert "Followed up" in step.group(0) and ">Did not run<" in step.group(0)
    assert "“Follow-up” ended (cancelled) before its steps started" in step.group(0)


def test_the_steps_of_a_container_that_has_not_started_are_listed_as_not_started(admin_client, form):
    later = add_node(form, "delay", label="Follow-up", config={"after_seconds": 600})
    add_node(form, "set_flag", parent=later, label="Followed up", config={"flag": "f"})
    record = record_submit(form=form, data={"email": "ann@example.com", "seats": 1})

    rows, html = timeline_rows(admin_client, Run.objects.get(record=record))

    assert rows == [("Follow-up", 0, "Queued")]
    step = re.search(r'<tr id="node-\d+" class="events-not-run">.*?</tr>', html, re.S).group(0)
    assert "Followed up" in step and ">Not started<" in step
    assert "its task is created when “Follow-up” starts" in step

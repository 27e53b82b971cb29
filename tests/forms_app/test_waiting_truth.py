"""What the waiting page tells the end user is what happened (issue 8, section 5).

A failure an error branch caught is shown as a failure that was handled, never as "skipped", and the
done and failed messages can tell; a failed or cancelled run shows where it stopped, and a cancelled run
says so; error-branch steps show where they ran: right under the step whose failure they handle.
"""

import re

import pytest
from django.utils.text import slugify

from events import engine
from events.models import Node, Run, RunTask
from forms_app.services import record_submit
from forms_app.waiting import STEP_STATE_TEXTS, Step, record_progress
from tests.factories import RecordFactory, add_node


def status_html(client, record):
    response = client.get(f"/r/{record.token}/status/", headers={"HX-Request": "true"})
    assert response.status_code == 200
    return response.content.decode()


def steps_shown(html):
    """[(label, state)] of the visible steps, in the order the page lists them."""
    return re.findall(r'<span class="step-label">(.*?)</span> <span class="step-state">(.*?)</span>', html)


def submit_inline_only(form, **data):
    """record_submit alone: the inline phase runs; after-commit hand-offs never do (the test never commits)."""
    return record_submit(form=form, data={"email": "ann@example.com", "seats": 2, "status": "", **data})


def add_pending_delay(form, **fields):
    """A delay due in ten minutes: the run stays working."""
    return add_node(form, "delay", config={"after_seconds": 600}, **fields)


# A failure caught by an error branch -------------------------------------------------------------


@pytest.fixture
def callback_tree(form):
    """A step waiting for a callback, its error branch, and a later step (all visible)."""
    form.done_message = (
        "Booked.{% if handled_failures %} Not everything went to plan: "
        "{% for step in handled_failures %}{{ step.label }} ({{ step.name }}){% endfor %}."
        "{% endif %}"
    )
    form.save()
    loyalty = add_node(
        form,
        "http_request",
        name="loyalty",
        label="Add loyalty miles",
        visible=True,
        config={"method": "POST", "url": "http://loyalty.invalid/", "wait_for_callback": True},
    )
    add_node(
        form,
        "set_subtext",
        parent=loyalty,
        branch="on_error",
        name="later",
        label="Miles added later",
        visible=True,
        config={"text": "Your miles will be added later"},
    )
    add_node(
        form,
        "set_flag",
        name="booked",
        label="Booking confirmed",
        visible=True,
        config={"flag": "booked", "value": True},
    )
    return loyalty


def awaiting_run(form, node):
    """A submission run whose first step sent its request and awaits the callback (no HTTP needed)."""
    record = RecordFactory(form=form, data={"email": "ann@example.com"})
    run = engine.run_start(record=record, is_submission=True)
    task = run.tasks.get(node_id=node.pk)
    assert task.claim()
    engine.task_await(task=task, timeout_seconds=600)
    return record, task


def test_a_failure_callback_caught_by_an_error_branch_shows_as_failed_and_handled_not_as_success(
    client, form, callback_tree, sync_queue, django_capture_on_commit_callbacks
):
    record, task = awaiting_run(form, callback_tree)

    with django_capture_on_commit_callbacks(execute=True):
        engine.task_callback(task_id=task.pk, status="FAILURE", subtext="Loyalty programme down")

    run = Run.objects.get(record=record)
    assert run.status == Run.Status.COMPLETE  # handled: the run goes on and completes
    html = status_html(client, record)
    assert 'data-state="done"' in html
    assert steps_shown(html) == [
        ("Add loyalty miles", "failed — handled"),
        ("Miles added later", "done"),
        ("Booking confirmed", "done"),
    ]
    assert 'class="step step-failed-handled"' in html
    assert "skipped" not in html
    # The admin's done message can tell that something failed and was handled.
    assert '<div class="message done">Booked. Not everything went to plan: Add loyalty miles (loyalty).</div>' in html


def test_the_done_message_sees_no_handled_failure_when_nothing_failed(
    client, form, callback_tree, sync_queue, django_capture_on_commit_callbacks
):
    record, task = awaiting_run(form, callback_tree)

    with django_capture_on_commit_callbacks(execute=True):
        engine.task_callback(task_id=task.pk, status="SUCCESS")

    html = status_html(client, record)
    assert steps_shown(html) == [("Add loyalty miles", "done"), ("Booking confirmed", "done")]
    assert '<div class="message done">Booked.</div>' in html


def test_while_its_error_branch_still_runs_a_failed_step_is_being_handled(form, callback_tree):
    record, task = awaiting_run(form, callback_tree)
    # The failure is recorded and the branch's task exists, but the branch has not run yet.
    RunTask.objects.filter(pk=task.pk).update(status=RunTask.Status.FAILED)
    [branch_node] = Node.objects.get_children(callback_tree)
    RunTask.objects.create(
        run=task.run,
        parent=task,
        node_id=branch_node.pk,
        position=99,
        type="set_subtext",
        label="Miles added later",
        visible=True,
        branch="on_error",
    )

    progress = record_progress(record)

    assert [(step.label, step.state) for step in progress.steps] == [
        ("Add loyalty miles", "failed — being handled"),
        ("Miles added later", "queued"),
        ("Booking confirmed", "queued"),
    ]
    assert progress.handled_failures == []


def test_a_failure_whose_error_branch_failed_too_is_a_plain_failure(client, form):
    form.failed_message = "Sorry.{% if handled_failures %} (handled: {{ handled_failures|length }}){% endif %}"
    form.save()
    step = add_node(form, "fail", label="Charge card", visible=True, config={"message": "declined"})
    add_node(
        form,
        "fail",
        parent=step,
        branch="on_error",
        label="Apologise",
        visible=True,
        config={"message": "mail server down"},
    )
    record = submit_inline_only(form)

    html = status_html(client, record)

    assert 'data-state="failed"' in html
    assert steps_shown(html) == [("Charge card", "failed"), ("Apologise", "failed")]
    assert 'role="alert">Sorry.<p' in html


def test_the_failed_message_sees_the_failures_that_were_handled_before_the_run_failed(client, form):
    form.failed_message = "Sorry.{% for step in handled_failures %} {{ step.label }} was handled.{% endfor %}"
    form.save()
    loyalty = add_node(form, "fail", label="Add loyalty miles", visible=True, config={"message": "down"})
    add_node(form, "set_subtext", parent=loyalty, branch="on_error", config={"text": "Miles later"})
    add_node(form, "fail", label="Charge card", visible=True, config={"message": "declined"})
    record = submit_inline_only(form)

    html = status_html(client, record)

    assert 'data-state="failed"' in html
    assert steps_shown(html) == [("Add loyalty miles", "failed — handled"), ("Charge card", "failed")]
    assert "Sorry. Add loyalty miles was handled." in html


def test_the_messages_escape_submitted_values_next_to_handled_failures(client, form):
    form.done_message = (
        "Thanks {{ record.email }}{% if handled_failures %}, with {{ handled_failures.0.label }}{% endif %}"
    )
    form.save()
    step = add_node(form, "fail", label="Add <miles>", config={"message": "down"})
    add_node(form, "set_subtext", parent=step, branch="on_error", config={"text": "later"})
    record = submit_inline_only(form, email="<b>ann</b>@example.com")

    html = status_html(client, record)

    assert "Thanks &lt;b&gt;ann&lt;/b&gt;@example.com, with Add &lt;miles&gt;" in html


# Failed and cancelled runs stop where they stopped --------------------------------------------------


def test_a_failed_run_shows_the_progress_at_which_it_stopped(client, form):
    add_node(form, "update_field", label="Received", visible=True, config={"field": "status", "value": "received"})
    add_node(form, "fail", label="Charge card", visible=True, config={"message": "declined"})
    for label in ("Reserve", "Email", "Confirm"):
        add_node(form, "set_flag", label=label, visible=True, config={"flag": label.lower(), "value": True})
    record = submit_inline_only(form)

    html = status_html(client, record)

    # Two of five steps ran (one done, one failed); the three cancelled ones never did.
    assert 'data-state="failed"' in html
    assert '<progress value="40" max="100" aria-label="Progress when it stopped">40%</progress>' in html
    assert "Stopped at 40% of the steps." in html
    assert steps_shown(html)[2:] == [("Reserve", "cancelled"), ("Email", "cancelled"), ("Confirm", "cancelled")]


def test_a_cancelled_run_says_cancelled_and_shows_the_progress_at_which_it_stopped(client, form):
    form.failed_message = "It failed."
    form.save()
    add_node(form, "update_field", label="Received", visible=True, config={"field": "status", "value": "received"})
    delay = add_pending_delay(form, label="Follow-up", visible=True)
    add_node(form, "set_flag", parent=delay, config={"flag": "followed_up", "value": True})
    record = submit_inline_only(form)
    engine.run_cancel(run=Run.objects.get(record=record))

    html = status_html(client, record)

    assert 'data-state="cancelled"' in html
    assert "hx-get" not in html
    assert '<div class="message cancelled" role="alert">' in html
    assert "was cancelled" in html
    assert "It failed." not in html
    assert '<progress value="33"' in html  # one of three steps ran before the cancel
    assert steps_shown(html) == [("Received", "done"), ("Follow-up", "cancelled")]
    assert f"<code>{Run.objects.get(record=record).reference}</code>" in html


def test_a_done_run_is_at_100_percent_even_with_a_handled_failure(client, form):
    step = add_node(form, "fail", label="Add loyalty miles", config={"message": "down"})
    add_node(form, "set_subtext", parent=step, branch="on_error", config={"text": "later"})
    record = submit_inline_only(form)

    html = status_html(client, record)

    assert 'data-state="done"' in html
    assert '<progress value="100"' in html


# Error-branch steps show where they ran -----------------------------------------------------------


def test_error_branch_steps_show_right_under_the_step_they_handle_before_its_later_siblings(client, form):
    background = add_node(form, "background", label="Confirm", visible=True)
    card = add_node(form, "fail", parent=background, label="Charge card", visible=True, config={"message": "no"})
    add_node(
        form,
        "set_subtext",
        parent=card,
        branch="on_error",
        label="Pay later",
        visible=True,
        config={"text": "Pay at the desk"},
    )
    add_node(form, "set_flag", parent=background, label="Seat held", visible=True, config={"flag": "held"})
    loyalty = add_node(form, "fail", label="Add loyalty miles", visible=True, config={"message": "down"})
    add_node(
        form,
        "set_subtext",
        parent=loyalty,
        branch="on_error",
        label="Miles later",
        visible=True,
        config={"text": "Miles later"},
    )
    add_node(form, "set_flag", label="Booked", visible=True, config={"flag": "booked"})
    add_pending_delay(form, label="Follow-up", visible=True)
    record = submit_inline_only(form)
    [container] = Run.objects.get(record=record).tasks.filter(label="Confirm")
    engine.task_job(task_id=container.pk)  # the worker's part

    html = status_html(client, record)

    assert [label for label, _ in steps_shown(html)] == [
        "Confirm",
        "Charge card",
        "Pay later",
        "Seat held",
        "Add loyalty miles",
        "Miles later",
        "Booked",
        "Follow-up",
    ]


def test_the_form_admin_tells_which_variables_the_messages_see(admin_client, form):
    html = admin_client.get(f"/admin/forms_app/form/{form.pk}/change/").content.decode()

    assert "handled_failures" in html


def test_every_step_state_has_the_css_class_slugify_gives_it():
    assert {state: Step("x", state).state_class for state in STEP_STATE_TEXTS} == {
        state: slugify(state) for state in STEP_STATE_TEXTS
    }
    assert Step("x", "failed — being handled").state_class == "failed-being-handled"

"""Support finds a run from what the user quotes, and understands it from its page (issue 11).

Runs are found by the reference the failure page shows, by record token or waiting-page URL, by
form, status and date; tasks by node name, form, type and status. A run's page draws the tree as
it ran, a node that did not run included; an awaiting task is answered by hand with output,
subtext and a log line; many runs are cancelled at once after a confirmation.
"""

import json
import re
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.urls import reverse
from django.utils import timezone

from events.models import RECORD_UPDATE, Node, Run, RunTask
from tests.factories import FormFactory, RecordFactory, add_node

RUNS_URL = reverse("admin:events_run_changelist")
TASKS_URL = reverse("admin:events_runtask_changelist")


def messages_of(response):
    return [str(message) for message in response.context["messages"]] if response.context else []


def listed(client, url, **params):
    """The change list's result rows (their primary keys, from the action checkboxes), for ``params``."""
    response = client.get(url, params)
    assert response.status_code == 200
    return set(re.findall(r'name="_selected_action" value="([^"]+)"', response.content.decode()))


def run_page(client, run):
    response = client.get(reverse("admin:events_run_change", args=[run.pk]))
    assert response.status_code == 200
    return response.content.decode()


def timeline_rows(html):
    """[(kind "task" | "node", id, indent, status class, status text, the row's HTML)] of the timeline."""
    rows = []
    for match in re.finditer(r'<tr id="(task|node)-([^"]+)"[^>]*>(.*?)</tr>', html, re.S):
        kind, pk, body = match.groups()
        indent = re.search(r'<td class="events-indent-(\d+)">', body).group(1)
        status_class, status = re.search(
            r'<span class="events-status events-status-([a-z-]+)">(.*?)</span>', body
        ).groups()
        rows.append((kind, pk, int(indent), status_class, status, body))
    return rows


# Finding runs -------------------------------------------------------------------------------------


@pytest.fixture
def failed_submission(form, submit):
    add_node(form, "update_field", name="received", config={"field": "status", "value": "received"})
    add_node(form, "fail", name="charge", label="Charge card", config={"message": "declined"})
    submitted = submit(email="ann@example.com")
    assert submitted.run.status == Run.Status.FAILED
    return submitted


@pytest.fixture
def other_runs(form):
    """Two runs of another record (and one of another form) that no search of the tests should find."""
    other_form = FormFactory(slug="newsletter", title="Newsletter")
    record = RecordFactory(form=form, data={"email": "bob@example.com"})
    return [
        Run.objects.create(form=form, record=record),
        Run.objects.create(form=other_form, record=RecordFactory(form=other_form), status=Run.Status.COMPLETE),
    ]


def test_a_run_is_found_by_the_reference_its_failure_page_shows(admin_client, client, failed_submission, other_runs):
    run = failed_submission.run
    page = client.get(failed_submission.record.get_absolute_url()).content.decode()
    quoted = re.search(r"Reference: <code>(\w+)</code>", page).group(1)
    assert quoted == run.reference and quoted.isupper() and len(quoted) == 8

    for term in (quoted, quoted.lower(), f"  {quoted} ", f"#{quoted}", str(run.pk), run.pk.hex.upper()):
        assert listed(admin_client, RUNS_URL, q=term) == {str(run.pk)}, term


def test_a_word_too_short_or_not_hex_is_not_taken_for_a_reference(admin_client, failed_submission, other_runs):
    run = failed_submission.run
    assert listed(admin_client, RUNS_URL, q=run.reference[:7]) == set()
    assert listed(admin_client, RUNS_URL, q=run.reference[:7] + "g") == set()
    unused = "0" * 8 if not run.reference.startswith("0") else "F" * 8
    assert listed(admin_client, RUNS_URL, q=unused) == set()


def test_a_run_is_found_by_its_record_token_or_waiting_page_url(admin_client, failed_submission, other_runs):
    record, run = failed_submission.record, failed_submission.run
    url = f"https://forms.example.com{record.get_absolute_url()}"

    for term in (record.token, url, url + "status/"):
        assert listed(admin_client, RUNS_URL, q=term) == {str(run.pk)}, term
    assert listed(admin_client, RUNS_URL, q=record.token[:-1] + "#") == set()


def test_runs_are_found_by_form_and_filtered_by_status_and_date(admin_client, failed_submission, other_runs):
    run = failed_submission.run
    mine = {str(run.pk), str(other_runs[0].pk)}
    assert listed(admin_client, RUNS_URL, q="Book a flight") == mine
    assert listed(admin_client, RUNS_URL, q="newsletter") == {str(other_runs[1].pk)}
    assert listed(admin_client, RUNS_URL, form__id__exact=run.form_id) == mine
    assert listed(admin_client, RUNS_URL, status__exact="failed") == {str(run.pk)}
    assert listed(admin_client, RUNS_URL, q="Book a flight", status__exact="running") == {str(other_runs[0].pk)}

    Run.objects.filter(pk=other_runs[0].pk).update(created_at=timezone.now() - timedelta(days=400))
    today = timezone.localdate()
    by_day = {"created_at__year": today.year, "created_at__month": today.month, "created_at__day": today.day}
    assert listed(admin_client, RUNS_URL, **by_day) == {str(run.pk), str(other_runs[1].pk)}
    midnight = timezone.localtime().replace(hour=0, minute=0, second=0, microsecond=0)
    last_week = {
        "created_at__gte": str(midnight - timedelta(days=7)),
        "created_at__lt": str(midnight + timedelta(days=1)),
    }
    assert listed(admin_client, RUNS_URL, **last_week) == {str(run.pk), str(other_runs[1].pk)}
    page = admin_client.get(RUNS_URL).content.decode()
    assert "reference" in page and "failure page" in page  # the search box says what it finds


def test_tasks_are_found_by_node_name_run_reference_and_filtered_by_form_type_and_status(
    admin_client, failed_submission, other_runs
):
    run = failed_submission.run
    charge, received = run.tasks.get(name="charge"), run.tasks.get(name="received")
    elsewhere = RunTask.objects.create(
        run=other_runs[1], node_id=99, position=0, type="fail", name="charge", status=RunTask.Status.FAILED
    )

    assert listed(admin_client, TASKS_URL, q="charge") == {str(charge.pk), str(elsewhere.pk)}
    assert listed(admin_client, TASKS_URL, q="Charge card") == {str(charge.pk)}
    assert listed(admin_client, TASKS_URL, q=run.reference.lower()) == {str(charge.pk), str(received.pk)}
    assert listed(admin_client, TASKS_URL, q=failed_submission.record.token) == {str(charge.pk), str(received.pk)}
    assert listed(admin_client, TASKS_URL, run__form__id__exact=run.form_id) == {str(charge.pk), str(received.pk)}
    assert listed(admin_client, TASKS_URL, type__exact="fail", status__exact="failed") == {
        str(charge.pk),
        str(elsewhere.pk),
    }
    assert listed(admin_client, TASKS_URL, type__exact="fail", run__form__id__exact=run.form_id) == {str(charge.pk)}


# The run's page: the tree as it ran -----------------------------------------------------------------


@pytest.fixture
def branching_run(form, submit):
    """A run with an error branch that never ran, a branch recorded as a run of its own, and an event fired."""
    received = add_node(form, "update_field", name="received", config={"field": "status", "value": "received"})
    add_node(form, "set_flag", parent=received, branch="on_error", name="noted", label="Note it", config={"flag": "x"})
    background = add_node(form, "background", name="follow", label="Follow up", config={"event_type": "followup"})
    add_node(form, "set_flag", parent=background, name="inside", label="Inside", config={"flag": "inside"})
    add_node(form, "trigger_event", name="fire", label="Fire paid", config={"event": "paid"})
    add_node(form, "set_flag", event="paid", name="paid", label="Mark paid", config={"flag": "paid"})
    submitted = submit()
    assert submitted.run.status == Run.Status.COMPLETE
    return submitted


def test_the_run_page_shows_every_node_of_the_snapshot_with_those_that_did_not_run(admin_client, branching_run):
    run = branching_run.run
    followup = Run.objects.get(event="followup")
    paid = Run.objects.get(event="paid")
    node_ids = {node.name: node.pk for node in Node.objects.filter(form=run.form)}

    rows = timeline_rows(run_page(admin_client, run))

    assert [(kind, indent, status_class) for kind, _, indent, status_class, _, _ in rows] == [
        ("task", 0, "complete"),  # received
        ("node", 1 * 2, "not-run"),  # its error branch: received did not fail
        ("task", 0, "complete"),  # the background
        ("node", 1 * 2, "not-run"),  # its step ran in the background's own run
        ("task", 0, "complete"),  # the trigger
    ]
    (_, noted_id, *_, noted), (_, inside_id, *_, inside) = rows[1], rows[3]
    assert noted_id == str(node_ids["noted"]) and inside_id == str(node_ids["inside"])
    assert "Did not run" in noted and "on error:" in noted and "“received” did not fail" in noted
    assert "Note it" in noted and "set_flag · noted" in noted
    assert "Inside" in inside and reverse("admin:events_run_change", args=[followup.pk]) in inside
    assert "in the run “Follow up” started" in inside
    assert reverse("admin:events_run_change", args=[paid.pk]) in rows[4][5]  # the run the trigger started


def test_a_child_run_links_to_its_parent_run_and_the_step_that_started_it(admin_client, branching_run):
    run = branching_run.run
    for event, step in (("followup", "follow"), ("paid", "fire")):
        child = Run.objects.get(event=event)
        page = run_page(admin_client, child)
        assert reverse("admin:events_run_change", args=[run.pk]) in page
        assert reverse("admin:events_runtask_change", args=[run.tasks.get(name=step).pk]) in page
        assert "started by its step" in page
    parent_page = run_page(admin_client, run)
    for child in run.child_runs.all():
        assert reverse("admin:events_run_change", args=[child.pk]) in parent_page


def test_the_run_page_draws_the_tree_as_it_ran_not_as_it_is_now(admin_client, branching_run):
    run = branching_run.run
    Node.objects.filter(form=run.form, name="received").update(config={"field": "status", "value": "changed"})
    Node.objects.get(form=run.form, name="noted").delete()

    page = run_page(admin_client, run)

    assert "config as it ran" in page
    assert "&quot;value&quot;: &quot;received&quot;" in page and "changed" not in page
    assert f'id="node-{run.snapshot[0]["on_error"][0]["id"]}"' in page  # deleted since, still drawn


def test_a_running_run_says_which_nodes_have_yet_to_run(admin_client, form, submit_queued):
    later = add_node(form, "delay", name="later", label="Later", config={"after_seconds": 600, "event_type": "remind"})
    add_node(form, "set_flag", parent=later, name="reminded", label="Remind", config={"flag": "reminded"})
    add_node(form, "set_flag", parent=later, branch="on_error", name="sorry", label="Sorry", config={"flag": "x"})
    run = submit_queued().run
    assert run.status == Run.Status.RUNNING

    rows = timeline_rows(run_page(admin_client, run))

    assert [(kind, indent, status_class) for kind, _, indent, status_class, _, _ in rows] == [
        ("task", 0, "pending"),
        ("node", 2, "not-run"),
        ("node", 2, "not-run"),
    ]
    assert "“Later” runs its steps as a run of its own, and has started none" in rows[1][5]
    assert "runs only if “Later” fails" in rows[2][5]
    assert "2 nodes of the tree did not run in this run" in run_page(admin_client, run)


# Answering an awaiting task by hand with output, subtext and a log line ----------------------------


def by_hand_url(task, outcome):
    return reverse("admin:events_runtask_by_hand", args=[task.pk, outcome])


def test_complete_by_hand_sends_output_subtext_and_a_log_line_like_a_callback(
    admin_client, admin_user, awaiting, django_capture_on_commit_callbacks
):
    confirm = admin_client.get(by_hand_url(awaiting.task, "complete")).content.decode()
    assert 'name="output"' in confirm and 'name="subtext"' in confirm and 'name="log"' in confirm

    sent = {
        "output": json.dumps({"zipFileLocation": "/files/1.zip", "status_code": 201}),
        "subtext": "Seat booked by phone",
        "log": "the customer called: booked by phone",
    }
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(by_hand_url(awaiting.task, "complete"), sent)
    assert response.status_code == 302

    awaiting.reload()
    task = awaiting.task
    assert task.status == RunTask.Status.COMPLETE
    assert task.output["zipFileLocation"] == "/files/1.zip" and task.output["status_code"] == 201
    assert task.subtext == awaiting.run.subtext == "Seat booked by phone"
    lines = [entry["line"] for entry in task.logs]
    assert lines[-2:] == ["the customer called: booked by phone", f"completed by hand by {admin_user.username}"]
    assert awaiting.record.data["status"] == "zip=/files/1.zip code=201"  # the next step read the output
    assert awaiting.run.status == Run.Status.COMPLETE


def test_fail_by_hand_with_a_subtext_says_it_in_the_error(
    admin_client, admin_user, awaiting, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        admin_client.post(by_hand_url(awaiting.task, "fail"), {"subtext": "No seat left", "log": "checked by phone"})

    awaiting.reload()
    assert awaiting.task.status == RunTask.Status.FAILED
    assert awaiting.task.error == f"Failed by hand by {admin_user.username}: No seat left"
    assert awaiting.task.subtext == "No seat left"
    assert [entry["line"] for entry in awaiting.task.logs][-2:] == [
        "checked by phone",
        f"failed by hand by {admin_user.username}",
    ]
    assert awaiting.run.status == Run.Status.FAILED


@pytest.mark.parametrize(
    ("output", "message"),
    [
        ("[1, 2]", "must be a JSON object"),
        ('"text"', "must be a JSON object"),
        ("{not json", "Enter a valid JSON"),
        ('{"x": NaN}', "not a finite number"),
    ],
)
def test_by_hand_refuses_output_that_is_not_a_storable_json_object(admin_client, awaiting, output, message):
    response = admin_client.post(by_hand_url(awaiting.task, "complete"), {"output": output, "subtext": "kept"})

    assert response.status_code == 200
    page = response.content.decode()
    assert message in page
    assert 'value="kept"' in page  # what was typed comes back
    assert awaiting.reload().task.status == RunTask.Status.AWAITING


def test_by_hand_refuses_a_subtext_longer_than_a_callback_may_send(admin_client, awaiting):
    response = admin_client.post(by_hand_url(awaiting.task, "complete"), {"subtext": "x" * 501})
    assert response.status_code == 200 and "at most 500 characters" in response.content.decode()
    assert awaiting.reload().task.status == RunTask.Status.AWAITING


def test_the_bulk_by_hand_action_sends_the_same_answer_to_every_task(
    admin_client, make_awaiting, django_capture_on_commit_callbacks
):
    first, second = make_awaiting("a@example.com"), make_awaiting("b@example.com")
    selected = {"action": "complete_by_hand", "_selected_action": [first.task.pk, second.task.pk], "post": "yes"}

    refused = admin_client.post(TASKS_URL, {**selected, "output": "[]"})
    assert refused.status_code == 200 and "must be a JSON object" in refused.content.decode()
    assert f'name="_selected_action" value="{second.task.pk}"' in refused.content.decode()
    assert first.reload().task.status == RunTask.Status.AWAITING

    with django_capture_on_commit_callbacks(execute=True):
        admin_client.post(TASKS_URL, {**selected, "output": '{"zipFileLocation": "z"}', "log": "batch"})

    for answered in (first.reload(), second.reload()):
        assert answered.task.status == RunTask.Status.COMPLETE
        assert answered.task.output["zipFileLocation"] == "z"
        assert "batch" in [entry["line"] for entry in answered.task.logs]


def test_by_hand_from_the_timeline_goes_back_to_the_run(admin_client, awaiting, django_capture_on_commit_callbacks):
    page = run_page(admin_client, awaiting.run)
    link = by_hand_url(awaiting.task, "complete") + "?back_to=run"
    assert link in page
    run_url = reverse("admin:events_run_change", args=[awaiting.run.pk])
    assert run_url in admin_client.get(link).content.decode()  # "No, take me back"

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(link, {"log": "from the timeline"})

    assert response.status_code == 302 and response["Location"] == f"{run_url}#task-{awaiting.task.pk}"
    assert awaiting.reload().task.status == RunTask.Status.COMPLETE


# Cancelling many runs ------------------------------------------------------------------------------


def test_the_cancel_action_confirms_then_cancels_only_the_running_runs(admin_client, form, submit_queued):
    add_node(form, "delay", name="later", label="Later", config={"after_seconds": 600})
    waiting_runs = [submit_queued(email=f"{name}@example.com").run for name in ("ann", "bob")]
    done = Run.objects.create(form=form, record=RecordFactory(form=form), status=Run.Status.COMPLETE)
    selected = {"action": "cancel_runs", "_selected_action": [run.pk for run in [*waiting_runs, done]]}

    confirm = admin_client.post(RUNS_URL, selected)

    assert confirm.status_code == 200
    page = confirm.content.decode()
    assert "Yes, cancel 2 runs" in page and "already finished" in page
    assert all(f'name="_selected_action" value="{run.pk}"' in page for run in [*waiting_runs, done])
    assert 'name="action" value="cancel_runs"' in page and 'name="post" value="yes"' in page
    assert {run.status for run in Run.objects.filter(pk__in=[r.pk for r in waiting_runs])} == {Run.Status.RUNNING}

    response = admin_client.post(RUNS_URL, {**selected, "post": "yes"}, follow=True)

    messages = messages_of(response)
    assert any("Cancelled 2 run(s)" in message for message in messages)
    assert any("1 run(s) had already finished" in message for message in messages)
    for run in waiting_runs:
        run.refresh_from_db()
        assert run.status == Run.Status.CANCELLED
        assert run.tasks.get(name="later").status == RunTask.Status.CANCELLED
        assert run.record.__class__.objects.get(pk=run.record_id).is_complete
    done.refresh_from_db()
    assert done.status == Run.Status.COMPLETE


def test_cancelling_only_finished_runs_asks_nothing_and_changes_nothing(admin_client, form):
    done = Run.objects.create(form=form, record=RecordFactory(form=form), status=Run.Status.FAILED)
    response = admin_client.post(RUNS_URL, {"action": "cancel_runs", "_selected_action": [done.pk]}, follow=True)
    assert any("had already finished" in message for message in messages_of(response))
    done.refresh_from_db()
    assert done.status == Run.Status.FAILED


def test_a_user_who_may_only_view_runs_cannot_cancel_them(client, form):
    viewer = get_user_model().objects.create_user("viewer", password="pw", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_run"))
    client.force_login(viewer)
    run = Run.objects.create(form=form, record=RecordFactory(form=form), event=RECORD_UPDATE)
    client.post(RUNS_URL, {"action": "cancel_runs", "_selected_action": [run.pk], "post": "yes"})
    assert client.post(reverse("admin:events_run_cancel", args=[run.pk])).status_code == 403
    run.refresh_from_db()
    assert run.status == Run.Status.RUNNING


def test_a_containers_error_branch_comes_after_its_steps_and_a_step_that_never_ran_keeps_its_place(
    admin_client, form, submit
):
    confirm = add_node(form, "background", name="confirm", label="Confirm")
    charge = add_node(form, "fail", parent=confirm, name="charge", label="Charge", config={"message": "declined"})
    add_node(form, "set_flag", parent=charge, branch="on_error", name="retry", label="Retry", config={"flag": "r"})
    add_node(form, "set_flag", parent=confirm, branch="on_error", name="sorry", label="Sorry", config={"flag": "s"})
    add_node(form, "set_flag", name="booked", label="Booked", config={"flag": "b"})
    run = submit().run

    rows = timeline_rows(run_page(admin_client, run))
    labels = {str(task.pk): task.label for task in run.tasks.all()}
    labels.update({str(node.pk): node.label for node in Node.objects.filter(form=form)})

    assert [(labels[pk], indent) for _, pk, indent, *_ in rows] == [
        ("Confirm", 0),
        ("Charge", 2),
        ("Retry", 4),  # the step's own error branch, under it
        ("Sorry", 2),  # the container's error branch, after the container's steps
        ("Booked", 0),
    ]
    assert all("on error:" in body for _, pk, _, _, _, body in rows if labels[pk] in ("Retry", "Sorry"))
    sorry = rows[3]
    assert sorry[0] == "node" and sorry[3] == "not-run"  # the step's own branch caught the failure
    assert "“Confirm” did not fail" in sorry[5]

"""The admin of error branches, retries, conditions, go_async, custom events, debug traces and re-runs."""

import pytest
from django.urls import reverse

from events.models import RECORD_UPDATE, Node, Run, RunTask
from tests.factories import FieldFactory, RecordFactory, add_node

XSS = "<script>alert(1)</script>"
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"
ADD_URL = reverse("admin:events_node_add")


def add_url(form, type_key):
    return f"{ADD_URL}?form={form.pk}&event={RECORD_UPDATE}&type={type_key}"


def node_post(form, *, position="first-child", ref="", **fields):
    return {
        "form": form.pk,
        "event": RECORD_UPDATE,
        "name": "",
        "label": "",
        "branch": Node.Branch.MAIN,
        "max_attempts": 1,
        "retry_backoff_seconds": 10,
        "retry_backoff_max_seconds": 600,
        "treebeard_position": position,
        "treebeard_ref_node": ref,
        **fields,
    }


def overview(client, form, event=RECORD_UPDATE):
    response = client.get(reverse("admin:events_node_overview", args=[form.pk, event]))
    assert response.status_code == 200
    return response.content.decode()


# The editor --------------------------------------------------------------------------------------


def test_an_error_branch_step_under_an_action_is_added(admin_client, form):
    action = add_node(form, "fail", name="boom", config={"message": "no"})
    response = admin_client.post(
        add_url(form, "set_subtext"),
        node_post(form, name="sorry", ref=action.pk, branch="on_error", config_text="We will call you"),
    )
    assert response.status_code == 302, response.context["adminform"].form.errors
    node = Node.objects.get(name="sorry")
    assert node.branch == Node.Branch.ON_ERROR
    assert Node.objects.get_parent(node) == action
    assert Node.objects.snapshot(form)[0]["on_error"][0]["config"] == {"text": "We will call you"}


def test_a_main_step_under_an_action_is_refused_and_the_help_names_the_containers(admin_client, form):
    action = add_node(form, "fail", name="boom", config={"message": "no"})
    response = admin_client.post(
        add_url(form, "set_subtext"), node_post(form, name="inside", ref=action.pk, config_text="x")
    )
    assert response.status_code == 200
    form_errors = response.context["adminform"].form.errors
    assert "only containers" in str(form_errors["treebeard_ref_node"])
    assert not Node.objects.filter(name="inside").exists()
    page = admin_client.get(add_url(form, "set_subtext")).content.decode()
    assert "Background, Condition and Delay" in page
    assert "error-branch steps" in page


def test_changing_a_step_to_the_error_branch_of_an_action_is_allowed(admin_client, form):
    action = add_node(form, "fail", name="boom", config={"message": "no"})
    step = add_node(form, "set_flag", name="flag", config={"flag": "x", "value": True})
    response = admin_client.post(
        reverse("admin:events_node_change", args=[step.pk]),
        {
            "name": "flag",
            "label": "",
            "branch": "on_error",
            "config_flag": "x",
            "config_value": "on",
            "max_attempts": 1,
            "retry_backoff_seconds": 10,
            "retry_backoff_max_seconds": 600,
            "treebeard_position": "first-child",
            "treebeard_ref_node": action.pk,
        },
    )
    assert response.status_code == 302, response.context["adminform"].form.errors
    step.refresh_from_db()
    assert step.branch == Node.Branch.ON_ERROR and Node.objects.get_parent(step) == action


def test_the_editor_shows_and_saves_branch_and_retries(admin_client, form):
    page = admin_client.get(add_url(form, "fail")).content.decode()
    for name in ("branch", "max_attempts", "retry_backoff_seconds", "retry_backoff_max_seconds"):
        assert f'name="{name}"' in page
    assert "runs when the parent fails" in page
    response = admin_client.post(
        add_url(form, "fail"),
        node_post(
            form,
            name="flaky",
            config_message="no",
            max_attempts=3,
            retry_backoff_seconds=5,
            retry_backoff_max_seconds=60,
        ),
    )
    assert response.status_code == 302
    node = Node.objects.get(name="flaky")
    assert (node.max_attempts, node.retry_backoff_seconds, node.retry_backoff_max_seconds) == (3, 5, 60)
    assert Node.objects.snapshot(form)[0]["retry"] == {
        "max_attempts": 3,
        "backoff_seconds": 5,
        "backoff_max_seconds": 60,
    }


def test_left_empty_the_retry_fields_take_their_defaults(admin_client, form):
    response = admin_client.post(
        add_url(form, "fail"),
        node_post(
            form,
            name="once",
            config_message="no",
            max_attempts="",
            retry_backoff_seconds="",
            retry_backoff_max_seconds="",
        ),
    )
    assert response.status_code == 302, response.context["adminform"].form.errors
    node = Node.objects.get(name="once")
    assert (node.max_attempts, node.retry_backoff_seconds, node.retry_backoff_max_seconds) == (1, 10, 600)


@pytest.mark.parametrize(
    "fields, error_field",
    [
        ({"max_attempts": 0}, "max_attempts"),
        ({"max_attempts": 101}, "max_attempts"),
        ({"retry_backoff_seconds": 60, "retry_backoff_max_seconds": 30}, "retry_backoff_max_seconds"),
        ({"retry_backoff_seconds": -1}, "retry_backoff_seconds"),
        ({"retry_backoff_max_seconds": 10**9}, "retry_backoff_max_seconds"),
    ],
)
def test_bad_retry_settings_are_refused(admin_client, form, fields, error_field):
    response = admin_client.post(add_url(form, "fail"), node_post(form, config_message="no", **fields))
    assert response.status_code == 200
    assert error_field in response.context["adminform"].form.errors
    assert not Node.objects.exists()


def test_a_condition_is_added_from_its_rows_and_edited_with_its_rows_shown(admin_client, form):
    response = admin_client.post(
        add_url(form, "condition"),
        node_post(
            form,
            name="many",
            config_match="any",
            config_field_1="seats",
            config_operator_1="greater_than",
            config_value_1="2",
            config_field_2="flags.vip",
            config_operator_2="is_set",
        ),
    )
    assert response.status_code == 302, response.context["adminform"].form.errors
    node = Node.objects.get(name="many")
    assert node.config == {
        "match": "any",
        "rules": [
            {"field": "seats", "operator": "greater_than", "value": "2"},
            {"field": "flags.vip", "operator": "is_set"},
        ],
    }

    page = admin_client.get(reverse("admin:events_node_change", args=[node.pk]))
    initial = page.context["adminform"].form.initial
    assert initial["config_field_1"] == "seats" and initial["config_operator_1"] == "greater_than"
    assert initial["config_value_1"] == "2" and initial["config_field_2"] == "flags.vip"
    assert initial["config_match"] == "any"
    content = page.content.decode()
    assert 'name="config_field_1"' in content and 'value="seats"' in content
    assert 'value="flags.vip"' in content

    step = admin_client.post(
        add_url(form, "set_flag"), node_post(form, name="group", ref=node.pk, config_flag="group", config_value="on")
    )
    assert step.status_code == 302
    assert Node.objects.get_parent(Node.objects.get(name="group")) == node


def test_overview_add_links_offer_an_error_step_under_any_node(admin_client, form):
    action = add_node(form, "fail", name="boom", config={"message": "no"})
    content = overview(admin_client, form)
    query = f"event={RECORD_UPDATE}&amp;ref={action.pk}&amp;position=first-child&amp;branch=on_error"
    assert query in content
    builder_add = reverse("admin:events_node_builder_add", args=[form.pk])
    page = admin_client.get(f"{builder_add}?{query.replace('&amp;', '&')}&type=set_flag")
    assert page.context["node_form"]["branch"].value() == "on_error"


# The overview ------------------------------------------------------------------------------------


@pytest.fixture
def tree_with_every_kind_of_step(form):
    call = add_node(
        form,
        "update_field",
        name="call",
        label="Call the CRM",
        config={"field": "status", "value": "x"},
        max_attempts=3,
        retry_backoff_seconds=10,
        retry_backoff_max_seconds=600,
    )
    add_node(
        form,
        "set_subtext",
        parent=call,
        branch=Node.Branch.ON_ERROR,
        label="Apologise",
        config={"text": "We will email you"},
    )
    condition = add_node(
        form,
        "condition",
        label="Big group",
        config={"match": "all", "rules": [{"field": "seats", "operator": "greater_than", "value": "2"}]},
    )
    add_node(form, "set_flag", parent=condition, label="Flag group", config={"flag": "group", "value": True})
    add_node(form, "go_async", label="Answer now")
    add_node(form, "trigger_event", label="Fire paid", config={"event": "paid"})
    background = add_node(form, "background", label="Own run", config={"event_type": "confirm", "collect_debug": True})
    add_node(form, "set_flag", parent=background, label="Confirmed", config={"flag": "confirmed", "value": True})
    return {"call": call, "condition": condition, "background": background}


def test_overview_draws_error_branches_retries_conditions_markers_and_custom_events(
    admin_client, form, tree_with_every_kind_of_step
):
    content = overview(admin_client, form)
    assert "on error:" in content
    assert content.index("Call the CRM") < content.index("on error:") < content.index("Apologise")
    assert content.index("Apologise") < content.index("Big group")
    assert "up to 3 attempts, backoff 10 s doubling up to 600 s" in content
    assert "seats &gt; 2" in content
    assert "condition, inline" in content
    assert "the steps after this one run in the background" in content
    assert "fires “paid”" in content
    assert "as its own run of “confirm”" in content
    assert "collects debug traces" in content
    # after the go_async marker, the top level runs in the background
    fire = content.index("Fire paid")
    assert "in background" in content[fire : content.index("Own run")]
    assert "inline" in content[content.index("Call the CRM") : content.index("Big group")]


def test_overview_of_a_tree_with_error_branches_costs_a_fixed_number_of_queries(
    admin_client, form, tree_with_every_kind_of_step, django_assert_max_num_queries
):
    with django_assert_max_num_queries(8):
        overview(admin_client, form)


# Runs: the timeline and re-runs ------------------------------------------------------------------


@pytest.fixture
def failed_run(form):
    record = RecordFactory(form=form, data={"email": "a@example.com"})
    run = Run.objects.create(form=form, record=record, status=Run.Status.FAILED, error="Call failed")
    call = RunTask.objects.create(
        run=run,
        node_id=1,
        position=0,
        type="http_request",
        label="Call",
        status=RunTask.Status.FAILED,
        attempt=3,
        max_attempts=3,
        failure=RunTask.Failure.RETRIES,
        error="503 (after 3 attempts)",
        collect_debug=True,
        debug=[
            {"attempt": 1, "rendered_config": {"url": XSS}, "error": "503"},
            {"attempt": 2, "rendered_config": {"url": "x"}, "error": "503"},
        ],
    )
    RunTask.objects.create(
        run=run,
        parent=call,
        node_id=2,
        position=1,
        type="set_subtext",
        label="Apologise",
        branch="on_error",
        status=RunTask.Status.COMPLETE,
        attempt=1,
    )
    RunTask.objects.create(
        run=run, node_id=3, position=2, type="set_flag", label="Skipped flag", status=RunTask.Status.SKIPPED
    )
    trigger = RunTask.objects.create(
        run=run,
        node_id=4,
        position=3,
        type="trigger_event",
        label="Fire paid",
        status=RunTask.Status.COMPLETE,
        attempt=1,
    )
    child = Run.objects.create(
        form=form, record=record, event="paid", parent_run=run, parent_task=trigger, depth=1, status=Run.Status.COMPLETE
    )
    return {"run": run, "call": call, "trigger": trigger, "child": child}


def test_timeline_shows_attempts_failure_error_branch_skips_child_runs_and_debug(admin_client, failed_run):
    run = failed_run["run"]
    content = admin_client.get(reverse("admin:events_run_change", args=[run.pk])).content.decode()
    assert XSS not in content
    assert "3/3" in content
    assert "every attempt failed" in content
    assert "on error:</span>" in content and "error branch" in content
    assert "Skipped" in content
    child = failed_run["child"]
    assert reverse("admin:events_run_change", args=[child.pk]) in content
    assert "debug trace, attempt 1" in content and "debug trace, attempt 2" in content
    assert ESCAPED in content
    assert 'form="redrive-' in content
    assert reverse("admin:events_runtask_redrive", args=[failed_run["call"].pk]) in content

    child_page = admin_client.get(reverse("admin:events_run_change", args=[child.pk])).content.decode()
    assert reverse("admin:events_run_change", args=[run.pk]) in child_page
    assert reverse("admin:events_runtask_change", args=[failed_run["trigger"].pk]) in child_page


def test_task_page_shows_failure_branch_debug_and_a_rerun_button(admin_client, failed_run):
    call = failed_run["call"]
    content = admin_client.get(reverse("admin:events_runtask_change", args=[call.pk])).content.decode()
    assert XSS not in content and ESCAPED in content
    assert "every attempt failed" in content
    assert "attempt 2" in content
    assert "Re-run this step" in content
    step = call.run.tasks.get(label="Apologise")
    assert "error branch" in admin_client.get(reverse("admin:events_runtask_change", args=[step.pk])).content.decode()
    listing = admin_client.get(reverse("admin:events_runtask_changelist") + "?failure__exact=retries").content.decode()
    assert "Call" in listing and "Apologise" not in listing


def test_redrive_view_refuses_get_and_reports_when_nothing_can_be_rerun(admin_client, failed_run):
    step = failed_run["run"].tasks.get(label="Apologise")
    url = reverse("admin:events_runtask_redrive", args=[step.pk])
    assert admin_client.get(url).status_code == 405
    response = admin_client.post(url, follow=True)
    assert "was not re-run" in response.content.decode()


@pytest.fixture
def failing_submission(form, submit):
    """A submit whose update_field puts the text field n into the integer seats: "x" fails the run."""
    FieldFactory(form=form, name="n", label="N", type="text")
    add_node(form, "update_field", name="copy", label="Copy n", config={"field": "seats", "value": "{{ record.n }}"})
    add_node(form, "set_flag", name="after", label="After", config={"flag": "copied", "value": True})
    submitted = submit({"email": "a@example.com", "seats": 1, "n": "x"})
    record, run = submitted.record, submitted.run
    assert run.status == Run.Status.FAILED
    task = run.tasks.get(name="copy")
    assert task.status == RunTask.Status.FAILED and task.failure == RunTask.Failure.RAISED
    record.data["n"] = "5"
    record.save()
    return record, run, task


def test_rerun_button_on_the_timeline_continues_the_failed_run(
    admin_client, failing_submission, django_capture_on_commit_callbacks
):
    record, run, task = failing_submission
    page = admin_client.get(reverse("admin:events_run_change", args=[run.pk])).content.decode()
    assert "is not a whole number" in page and "Re-run" in page

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(reverse("admin:events_runtask_redrive", args=[task.pk]), {"back_to": "run"})

    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:events_run_change", args=[run.pk]))
    run.refresh_from_db()
    task.refresh_from_db()
    record.refresh_from_db()
    assert task.status == RunTask.Status.COMPLETE and task.attempt == 2
    assert run.status == Run.Status.COMPLETE
    assert record.data["seats"] == 5 and record.flags.get("copied") is True
    assert any("re-run by an admin" in line["line"] for line in task.logs)
    followed = admin_client.get(response["Location"]).content.decode()
    assert "Re-running “Copy n”" in followed


def test_rerun_action_on_the_task_list_continues_the_failed_run(
    admin_client, failing_submission, django_capture_on_commit_callbacks
):
    record, run, task = failing_submission
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            reverse("admin:events_runtask_changelist"),
            {"action": "redrive_tasks", "_selected_action": [task.pk]},
            follow=True,
        )
    assert "Re-running" in response.content.decode()
    run.refresh_from_db()
    assert run.status == Run.Status.COMPLETE
    # a second re-run finds nothing failed
    response = admin_client.post(
        reverse("admin:events_runtask_changelist"),
        {"action": "redrive_tasks", "_selected_action": [task.pk]},
        follow=True,
    )
    assert "was not re-run" in response.content.decode()


# The form admin -----------------------------------------------------------------------------------


def test_form_admin_shows_and_saves_collect_debug(admin_client, form):
    page = admin_client.get(reverse("admin:forms_app_form_change", args=[form.pk])).content.decode()
    assert 'name="collect_debug"' in page
    listing = admin_client.get(reverse("admin:forms_app_form_changelist") + "?collect_debug__exact=0")
    assert listing.status_code == 200 and "Book a flight" in listing.content.decode()

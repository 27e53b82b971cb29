"""The event-tree editor, its overview, and the read-only run and task pages."""

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from events.models import RECORD_UPDATE, Node, Run, RunTask
from events.nodes import registry
from tests.factories import FieldFactory, FormFactory, RecordFactory, add_node

XSS = "<script>alert(1)</script>"
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"

ADD_URL = reverse("admin:events_node_add")
CHANGELIST_URL = reverse("admin:events_node_changelist")
MOVE_URL = CHANGELIST_URL + "move/"


def add_url(form, type_key, **params):
    query = "&".join(
        f"{key}={value}" for key, value in {"form": form.pk, "event": RECORD_UPDATE, "type": type_key, **params}.items()
    )
    return f"{ADD_URL}?{query}"


def node_post(form, *, position="first-child", ref="", **fields):
    """POST data for the node add form; config fields are given with their config_ prefix."""
    return {
        "form": form.pk,
        "event": RECORD_UPDATE,
        "name": "",
        "label": "",
        "branch": Node.Branch.MAIN,
        "treebeard_position": position,
        "treebeard_ref_node": ref,
        **fields,
    }


def tree_shape(form, event=RECORD_UPDATE):
    return [(node.name, node.depth, node.path) for node in Node.objects.of_tree(form, event)]


@pytest.fixture
def tree(form):
    """inline action, Background[action], Delay 10 s [action]."""
    first = add_node(
        form, "update_field", name="first", label="Mark received", config={"field": "status", "value": "received"}
    )
    background = add_node(form, "background", name="bg", label="Later")
    mail = add_node(
        form,
        "send_email",
        parent=background,
        name="mail",
        label="Confirmation",
        visible=True,
        config={"to": "{{ record.email }}", "subject": "Hi", "body": "Thanks"},
    )
    delay = add_node(form, "delay", name="wait", label="Wait a bit", config={"rule": "after", "after_seconds": 10})
    flag = add_node(form, "set_flag", parent=delay, name="flagged", config={"flag": "done", "value": True})
    return {"first": first, "background": background, "mail": mail, "delay": delay, "flag": flag}


# Rendering ----------------------------------------------------------------------------------------


def test_add_without_type_asks_for_the_type_first(admin_client, form):
    response = admin_client.get(f"{ADD_URL}?form={form.pk}&event={RECORD_UPDATE}")
    assert response.status_code == 200
    content = response.content.decode()
    for node_type in registry.all_types():
        assert f"type={node_type.key}" in content
        assert node_type.label in content
    assert f"form={form.pk}" in content


@pytest.mark.parametrize("node_type", registry.all_types(), ids=lambda t: t.key)
def test_add_page_shows_the_type_config_as_real_fields(admin_client, form, node_type):
    response = admin_client.get(add_url(form, node_type.key))
    assert response.status_code == 200
    content = response.content.decode()
    for name in node_type.config_form.base_fields:
        assert f'name="config_{name}"' in content
    assert 'name="config"' not in content
    assert 'name="treebeard_position"' in content
    assert node_type.label in content


def test_add_page_for_update_field_and_delay_names_their_fields(admin_client, form):
    update = admin_client.get(add_url(form, "update_field")).content.decode()
    assert 'name="config_field"' in update and 'name="config_value"' in update
    delay = admin_client.get(add_url(form, "delay")).content.decode()
    for name in ("rule", "after_seconds", "at", "field", "offset_seconds"):
        assert f'name="config_{name}"' in delay


def test_change_page_shows_stored_config_in_fields_and_type_read_only(admin_client, tree):
    response = admin_client.get(reverse("admin:events_node_change", args=[tree["delay"].pk]))
    assert response.status_code == 200
    content = response.content.decode()
    assert 'name="config_after_seconds"' in content
    assert 'value="10"' in content
    assert 'name="type"' not in content
    assert "Delay" in content


def test_changelist_filters_by_form_and_event_and_offers_add_links(admin_client, form, tree):
    other = FormFactory()
    add_node(other, "set_flag", name="elsewhere", config={"flag": "x", "value": True})
    response = admin_client.get(f"{CHANGELIST_URL}?form__id__exact={form.pk}&event={RECORD_UPDATE}")
    assert response.status_code == 200
    content = response.content.decode()
    assert "Mark received" in content
    assert "elsewhere" not in content
    assert reverse("admin:events_node_overview", args=[form.pk, RECORD_UPDATE]) in content
    assert f"form={form.pk}&amp;event={RECORD_UPDATE}&amp;type=delay" in content
    # a plain filter or a search lists matches from every level
    assert admin_client.get(f"{CHANGELIST_URL}?type__exact=set_flag").status_code == 200
    assert admin_client.get(f"{CHANGELIST_URL}?q=flagged").status_code == 200


def test_children_of_a_container_load_in_the_filtered_tree(admin_client, form, tree):
    url = f"{CHANGELIST_URL}children/{tree['background'].pk}/?form__id__exact={form.pk}&event={RECORD_UPDATE}"
    response = admin_client.get(url)
    assert response.status_code == 200
    assert "Confirmation" in response.json()["result_html"]


def test_overview_draws_the_tree_with_modes(admin_client, form, tree):
    response = admin_client.get(reverse("admin:events_node_overview", args=[form.pk, RECORD_UPDATE]))
    assert response.status_code == 200
    content = response.content.decode()
    assert "Mark received" in content and "inline" in content
    assert ">background<" in content
    assert "in background" in content
    assert "delay: 10 s after the submit" in content
    assert "visible on the waiting page" in content
    assert "status = received" in content
    # nesting: the email sits in a list inside the background's item
    assert content.index("Later") < content.index("Confirmation") < content.index("Wait a bit")


def test_overview_of_an_empty_tree(admin_client, form):
    response = admin_client.get(reverse("admin:events_node_overview", args=[form.pk, "custom_event"]))
    assert response.status_code == 200
    assert "no nodes yet" in response.content.decode()


def test_overview_costs_a_fixed_number_of_queries(admin_client, form, tree, django_assert_max_num_queries):
    url = reverse("admin:events_node_overview", args=[form.pk, RECORD_UPDATE])
    admin_client.get(url)
    for index in range(10):
        add_node(form, "set_flag", parent=tree["background"], name=f"more{index}", config={"flag": "x"})
    with django_assert_max_num_queries(8):
        assert admin_client.get(url).status_code == 200


# Validation -----------------------------------------------------------------------------------------


def test_delay_after_without_seconds_shows_the_field_error_and_saves_nothing(admin_client, form):
    response = admin_client.post(add_url(form, "delay"), node_post(form, config_rule="after"))
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert "config_after_seconds" in errors
    assert not Node.objects.exists()


def test_update_field_naming_an_unknown_field_is_refused(admin_client, form):
    response = admin_client.post(add_url(form, "update_field"), node_post(form, config_field="nope", config_value="x"))
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert "no field named “nope”" in str(errors["config_field"])
    assert not Node.objects.exists()


def test_pause_longer_than_a_minute_is_refused(admin_client, form):
    response = admin_client.post(add_url(form, "pause"), node_post(form, config_seconds="61"))
    assert response.status_code == 200
    assert "config_seconds" in response.context["adminform"].form.errors
    assert not Node.objects.exists()


def test_duplicate_name_in_a_tree_is_refused(admin_client, form, tree):
    response = admin_client.post(
        add_url(form, "set_flag"), node_post(form, name="first", config_flag="x", config_value="on")
    )
    assert response.status_code == 200
    assert "name" in response.context["adminform"].form.errors
    assert Node.objects.count() == 5


def test_valid_add_stores_clean_config_as_child_of_a_container(admin_client, form, tree):
    response = admin_client.post(
        add_url(form, "update_field"),
        node_post(
            form,
            name="later_status",
            ref=tree["background"].pk,
            position="first-child",
            config_field="status",
            config_value="{{ record.email }}",
        ),
    )
    assert response.status_code == 302, response.context["adminform"].form.errors
    node = Node.objects.get(name="later_status")
    assert node.type == "update_field"
    assert node.config == {"field": "status", "value": "{{ record.email }}"}
    assert Node.objects.get_parent(node) == tree["background"]
    assert [child.name for child in Node.objects.get_children(tree["background"])] == ["later_status", "mail"]


def test_valid_delay_add_stores_normalised_config(admin_client, form):
    response = admin_client.post(add_url(form, "delay"), node_post(form, name="d", config_after_seconds="600"))
    assert response.status_code == 302
    assert Node.objects.get(name="d").config == {"rule": "after", "after_seconds": 600}


def test_add_before_an_action_at_the_top_level(admin_client, form, tree):
    response = admin_client.post(
        add_url(form, "set_flag"),
        node_post(form, name="zero", ref=tree["first"].pk, position="left", config_flag="x", config_value="on"),
    )
    assert response.status_code == 302
    roots = [node.name for node in Node.objects.of_tree(form).filter(depth=1)]
    assert roots == ["zero", "first", "bg", "wait"]


def test_adding_a_child_under_an_action_is_refused(admin_client, form, tree):
    before = tree_shape(form)
    response = admin_client.post(
        add_url(form, "set_flag"),
        node_post(form, name="child", ref=tree["first"].pk, position="first-child", config_flag="x"),
    )
    assert response.status_code == 200
    assert "only containers" in str(response.context["adminform"].form.errors["treebeard_ref_node"])
    assert tree_shape(form) == before


def test_moving_a_node_under_an_action_in_the_change_form_is_refused(admin_client, form, tree):
    before = tree_shape(form)
    node = tree["flag"]
    response = admin_client.post(
        reverse("admin:events_node_change", args=[node.pk]),
        {
            "name": node.name,
            "label": "",
            "branch": "main",
            "config_flag": "done",
            "config_value": "on",
            "treebeard_position": "first-child",
            "treebeard_ref_node": tree["first"].pk,
        },
    )
    assert response.status_code == 200
    assert "treebeard_ref_node" in response.context["adminform"].form.errors
    assert tree_shape(form) == before


def test_moving_a_node_in_the_change_form_reorders_it(admin_client, form, tree):
    node = tree["flag"]
    response = admin_client.post(
        reverse("admin:events_node_change", args=[node.pk]),
        {
            "name": node.name,
            "label": "Done",
            "branch": "main",
            "config_flag": "done",
            "config_value": "on",
            "treebeard_position": "first-child",
            "treebeard_ref_node": tree["background"].pk,
        },
    )
    assert response.status_code == 302
    node.refresh_from_db()
    assert node.label == "Done"
    assert Node.objects.get_parent(node) == tree["background"]
    assert Node.objects.get(pk=tree["delay"].pk).numchild == 0


def test_saving_a_root_node_unchanged_keeps_its_place(admin_client, form, tree):
    other = FormFactory()
    add_node(other, "set_flag", name="other_root", config={"flag": "x"})
    before = tree_shape(form)
    delay = tree["delay"]
    page = admin_client.get(reverse("admin:events_node_change", args=[delay.pk]))
    initial = page.context["adminform"].form.initial
    assert initial["treebeard_ref_node"] == Node.objects.get(pk=tree["background"].pk)
    response = admin_client.post(
        reverse("admin:events_node_change", args=[delay.pk]),
        {
            "name": "wait",
            "label": "Wait a bit",
            "branch": "main",
            "config_rule": "after",
            "config_after_seconds": "20",
            "treebeard_position": "right",
            "treebeard_ref_node": tree["background"].pk,
        },
    )
    assert response.status_code == 302
    assert tree_shape(form) == before
    assert Node.objects.get(pk=delay.pk).config == {"rule": "after", "after_seconds": 20}


def test_moving_to_another_forms_tree_is_refused_in_the_change_form(admin_client, form, tree):
    other = FormFactory()
    foreign = add_node(other, "background", name="foreign")
    response = admin_client.post(
        reverse("admin:events_node_change", args=[tree["flag"].pk]),
        {
            "name": "flagged",
            "label": "",
            "branch": "main",
            "config_flag": "done",
            "config_value": "on",
            "treebeard_position": "first-child",
            "treebeard_ref_node": foreign.pk,
        },
    )
    assert response.status_code == 200
    assert "treebeard_ref_node" in response.context["adminform"].form.errors
    assert Node.objects.get(pk=foreign.pk).numchild == 0


def test_adding_into_another_forms_tree_is_refused(admin_client, form):
    other = FormFactory()
    foreign = add_node(other, "background", name="foreign")
    response = admin_client.post(
        add_url(form, "set_flag"),
        node_post(form, name="x", ref=foreign.pk, position="first-child", config_flag="x"),
    )
    assert response.status_code == 200
    assert "treebeard_ref_node" in response.context["adminform"].form.errors
    assert not Node.objects.filter(form=form).exists()


# Drag and drop -------------------------------------------------------------------------------------


def test_move_endpoint_refuses_a_child_of_an_action_with_400(admin_client, form, tree):
    before = tree_shape(form)
    response = admin_client.post(MOVE_URL, {"node": tree["flag"].pk, "target": tree["first"].pk, "relation": "child"})
    assert response.status_code == 400
    assert "only containers" in response.content.decode()
    assert tree_shape(form) == before
    messages = [str(message) for message in response.wsgi_request._messages]
    assert any("only containers" in message for message in messages)


def test_move_endpoint_refuses_another_forms_tree_with_400(admin_client, form, tree):
    other = FormFactory()
    foreign = add_node(other, "background", name="foreign")
    before = tree_shape(form)
    for relation in ("child", "sibling"):
        response = admin_client.post(MOVE_URL, {"node": tree["flag"].pk, "target": foreign.pk, "relation": relation})
        assert response.status_code == 400
    assert tree_shape(form) == before
    assert tree_shape(other) == [("foreign", 1, foreign.path)]


def test_move_endpoint_moves_into_a_container(admin_client, form, tree):
    response = admin_client.post(MOVE_URL, {"node": tree["first"].pk, "target": tree["delay"].pk, "relation": "child"})
    assert response.status_code == 200
    assert Node.objects.get_parent(Node.objects.get(pk=tree["first"].pk)) == tree["delay"]


# Runs and tasks -----------------------------------------------------------------------------------


@pytest.fixture
def run(form):
    record = RecordFactory(form=form, data={"email": XSS})
    run = Run.objects.create(form=form, record=record, is_submission=True, subtext=XSS)
    now = timezone.now()
    container = RunTask.objects.create(
        run=run,
        node_id=1,
        position=0,
        type="background",
        label="Later",
        is_container=True,
        status=RunTask.Status.ACTIVE,
        attempt=1,
        started_at=now - timedelta(seconds=3),
    )
    RunTask.objects.create(
        run=run,
        parent=container,
        node_id=2,
        position=1,
        type="http_request",
        label="Call CRM",
        status=RunTask.Status.COMPLETE,
        attempt=1,
        max_attempts=3,
        started_at=now - timedelta(seconds=2),
        finished_at=now,
        logs=[RunTask.log_line(f"sent {XSS}")],
        output={"echo": XSS, "status": 200},
        subtext="almost there",
    )
    RunTask.objects.create(
        run=run,
        parent=container,
        node_id=3,
        position=2,
        type="fail",
        label="Boom",
        status=RunTask.Status.PENDING,
        error=f"failed: {XSS}",
    )
    return run


def test_run_change_view_shows_a_timeline_escaped(admin_client, run):
    response = admin_client.get(reverse("admin:events_run_change", args=[run.pk]))
    assert response.status_code == 200
    content = response.content.decode()
    assert XSS not in content
    assert f"sent {ESCAPED}" in content
    assert "&quot;echo&quot;: &quot;&lt;script&gt;" in content or '"echo": "&lt;script&gt;' in content
    assert "1/3" in content
    assert "almost there" in content
    assert f"failed: {ESCAPED}" in content
    assert run.reference in content
    assert content.index("Later") < content.index("Call CRM") < content.index("Boom")
    assert 'class="events-indent-2"' in content  # children are indented under their container
    assert "Cancel this run" in content
    assert 'name="_save"' not in content


def test_run_list_filters_by_form_event_and_status(admin_client, run):
    url = reverse("admin:events_run_changelist")
    for query in (
        f"form__id__exact={run.form_id}",
        "event=record_update",
        "status__exact=running",
        f"record__id__exact={run.record_id}",
    ):
        response = admin_client.get(f"{url}?{query}")
        assert response.status_code == 200
        assert run.reference in response.content.decode()
    assert run.reference not in admin_client.get(f"{url}?status__exact=complete").content.decode()


def test_cancel_action_cancels_a_running_run(admin_client, run):
    selected = {"action": "cancel_runs", "_selected_action": [run.pk]}
    confirm = admin_client.post(reverse("admin:events_run_changelist"), selected)
    assert confirm.status_code == 200  # asks first, like delete
    run.refresh_from_db()
    assert run.status == Run.Status.RUNNING

    response = admin_client.post(reverse("admin:events_run_changelist"), {**selected, "post": "yes"})
    assert response.status_code == 302
    run.refresh_from_db()
    assert run.status == Run.Status.CANCELLED
    assert run.tasks.get(label="Boom").status == RunTask.Status.CANCELLED
    assert run.record.__class__.objects.get(pk=run.record_id).is_complete


def test_cancel_button_cancels_a_running_run(admin_client, run):
    url = reverse("admin:events_run_cancel", args=[run.pk])
    assert admin_client.get(url).status_code == 405
    response = admin_client.post(url)
    assert response.status_code == 302
    run.refresh_from_db()
    assert run.status == Run.Status.CANCELLED
    page = admin_client.get(reverse("admin:events_run_change", args=[run.pk])).content.decode()
    assert "Cancel this run" not in page


def test_runs_and_tasks_cannot_be_added_changed_or_deleted(admin_client, run):
    task = run.tasks.first()
    assert admin_client.get(reverse("admin:events_run_add")).status_code == 403
    assert admin_client.get(reverse("admin:events_runtask_add")).status_code == 403
    before = run.subtext
    admin_client.post(reverse("admin:events_run_change", args=[run.pk]), {"subtext": "hacked"})
    run.refresh_from_db()
    assert run.subtext == before
    assert admin_client.post(reverse("admin:events_run_delete", args=[run.pk])).status_code == 403
    assert admin_client.post(reverse("admin:events_runtask_delete", args=[task.pk])).status_code == 403


def test_task_list_and_change_view(admin_client, run):
    url = reverse("admin:events_runtask_changelist")
    response = admin_client.get(f"{url}?status__exact=complete&type__exact=http_request")
    assert response.status_code == 200
    content = response.content.decode()
    assert "Call CRM" in content and "Boom" not in content
    assert reverse("admin:events_run_change", args=[run.pk]) in content
    assert admin_client.get(f"{url}?run__id__exact={run.pk}").status_code == 200
    task = run.tasks.get(label="Call CRM")
    page = admin_client.get(reverse("admin:events_runtask_change", args=[task.pk])).content.decode()
    assert XSS not in page
    assert f"sent {ESCAPED}" in page
    assert "1/3" in page


def test_node_admin_handles_a_type_that_is_no_longer_registered(admin_client, form):
    FieldFactory(form=form, name="extra")
    node = add_node(form, "set_flag", name="old", config={"flag": "x"})
    Node.objects.filter(pk=node.pk).update(type="retired_type", config={"keep": XSS})
    response = admin_client.get(reverse("admin:events_node_change", args=[node.pk]))
    assert response.status_code == 200
    assert ESCAPED in response.content.decode()
    overview = admin_client.get(reverse("admin:events_node_overview", args=[form.pk, RECORD_UPDATE]))
    assert "unknown type" in overview.content.decode()


def test_delay_without_any_rule_shows_a_form_error(admin_client, form):
    response = admin_client.post(add_url(form, "delay"), node_post(form, name="d"))
    assert response.status_code == 200
    assert "Choose when the delay is due" in str(response.context["adminform"].form.non_field_errors())
    assert not Node.objects.exists()


def test_error_branch_at_the_top_level_is_refused(admin_client, form):
    response = admin_client.post(add_url(form, "fail"), node_post(form, branch="on_error", config_message="x"))
    assert response.status_code == 200
    assert "branch" in response.context["adminform"].form.errors
    assert not Node.objects.exists()


def test_after_saving_the_editor_shows_the_same_tree(admin_client, form, tree):
    response = admin_client.post(add_url(form, "set_flag"), node_post(form, name="n", config_flag="x"))
    assert response.status_code == 302
    assert response["Location"] == f"{CHANGELIST_URL}?form__id__exact={form.pk}&event={RECORD_UPDATE}"
    response = admin_client.post(add_url(form, "set_flag"), node_post(form, name="m", config_flag="x", _addanother="1"))
    assert response["Location"] == f"{ADD_URL}?form={form.pk}&event={RECORD_UPDATE}"


def test_a_real_submission_shows_up_in_the_run_timeline(
    admin_client, form, tree, sync_queue, django_capture_on_commit_callbacks
):
    from forms_app.services import record_submit

    with django_capture_on_commit_callbacks(execute=True):
        record = record_submit(form=form, data={"email": XSS, "seats": 1})
    run = record.runs.get()
    response = admin_client.get(reverse("admin:events_run_change", args=[run.pk]))
    assert response.status_code == 200
    content = response.content.decode()
    assert XSS not in content
    assert "status set to &#x27;received&#x27;" in content or "status set to 'received'" in content
    assert content.index("Mark received") < content.index("Later") < content.index("Wait a bit")
    record_page = admin_client.get(reverse("admin:forms_app_record_change", args=[record.pk])).content.decode()
    assert XSS not in record_page and ESCAPED in record_page


def test_unfiltered_editor_and_type_chooser_render(admin_client, form, tree):
    assert admin_client.get(CHANGELIST_URL).status_code == 200
    assert admin_client.get(ADD_URL).status_code == 200
    assert admin_client.get(reverse("admin:events_node_change", args=[tree["mail"].pk])).status_code == 200


def test_overview_offers_adding_inside_a_container(admin_client, form, tree):
    content = admin_client.get(reverse("admin:events_node_overview", args=[form.pk, RECORD_UPDATE])).content.decode()
    assert f"ref={tree['mail'].pk}&amp;position=left&amp;branch=main" in content  # before the container's first step
    chooser = admin_client.get(
        f"{ADD_URL}?form={form.pk}&event={RECORD_UPDATE}&treebeard_position=first-child"
        f"&treebeard_ref_node={tree['background'].pk}"
    ).content.decode()
    assert f"treebeard_ref_node={tree['background'].pk}&amp;type=update_field" in chooser
    page = admin_client.get(
        add_url(form, "update_field", treebeard_position="first-child", treebeard_ref_node=tree["background"].pk)
    )
    assert page.context["adminform"].form["treebeard_ref_node"].value() == str(tree["background"].pk)


def test_custom_event_with_odd_name_has_an_overview(admin_client, form):
    add_node(form, "set_flag", event="paid/ok", name="p", config={"flag": "paid"})
    response = admin_client.get(reverse("admin:events_node_overview", args=[form.pk, "paid/ok"]))
    assert response.status_code == 200
    assert "paid = true" in response.content.decode()
    assert admin_client.get(reverse("admin:forms_app_form_change", args=[form.pk])).status_code == 200

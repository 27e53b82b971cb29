"""The tree page is the editor: add, edit, move and delete nodes in place, one request each (htmx).

With htmx (an ``HX-Request`` header) an action answers with the tree alone, to be swapped in place of
the old one, and an ``events:treeChanged`` event that carries the message and where the keyboard focus
goes. Without it, every link and button still works as a page of its own.
"""

import json

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.urls import reverse

from events.formfile import FormFileError, form_check
from events.models import RECORD_UPDATE, Node
from tests.factories import FieldFactory, FormFactory, add_node

HTMX = {"HTTP_HX_REQUEST": "true"}


def page_url(form, event=RECORD_UPDATE):
    return reverse("admin:events_node_overview", args=[form.pk, event])


def add_url(form, *, event=RECORD_UPDATE, **params):
    query = "&".join(f"{key}={value}" for key, value in {"event": event, **params}.items())
    return f"{reverse('admin:events_node_builder_add', args=[form.pk])}?{query}"


def node_url(action, node, *, event=RECORD_UPDATE):
    return f"{reverse(f'admin:events_node_builder_{action}', args=[node.form_id, node.pk])}?event={event}"


def changed(response):
    """The events:treeChanged event of an htmx answer: {"message", "level", "focus"}."""
    assert response["HX-Retarget"] == "#events-tree" and response["HX-Reswap"] == "outerHTML"
    return json.loads(response["HX-Trigger-After-Settle"])["events:treeChanged"]


def shape(form, event=RECORD_UPDATE):
    """The tree as (label, depth, branch), in tree order."""
    return [(node.display_label(), node.depth, node.branch) for node in Node.objects.of_tree(form, event)]


def basics(**fields):
    return {"label": "", "name": "", **fields}


@pytest.fixture
def tree(form):
    """Mark (update_field), Later (background) [Mail (send_email)], Wait (delay) [Flag (set_flag)]."""
    mark = add_node(form, "update_field", label="Mark", config={"field": "status", "value": "received"})
    later = add_node(form, "background", label="Later")
    mail = add_node(
        form,
        "send_email",
        parent=later,
        label="Mail",
        config={"to": "{{ record.email }}", "subject": "Hi", "body": "."},
    )
    wait = add_node(form, "delay", label="Wait", config={"rule": "after", "after_seconds": 10})
    flag = add_node(form, "set_flag", parent=wait, label="Flag", config={"flag": "done", "value": True})
    return {"mark": mark, "later": later, "mail": mail, "wait": wait, "flag": flag}


# The page ------------------------------------------------------------------------------------------


def test_the_tree_page_names_the_form_and_the_event_in_its_title_and_heading(admin_client, form, tree):
    content = admin_client.get(page_url(form)).content.decode()

    assert "<title>Event tree of “Book a flight”: record_update |" in content
    assert "<h1>Event tree of “Book a flight”: record_update</h1>" in content


def test_the_tree_page_counts_this_tree_only(admin_client, form, tree):
    add_node(form, "set_flag", event="paid", label="Other event", config={"flag": "x"})
    other = FormFactory()
    for index in range(3):
        add_node(other, "background", label=f"Other form {index}")
    Node.objects.filter(pk=tree["mail"].pk).update(visible=True)
    add_node(form, "fail", parent=tree["mark"], branch=Node.Branch.ON_ERROR, label="Oops", config={"message": "x"})

    content = admin_client.get(page_url(form)).content.decode()

    assert (
        "This tree: 6 nodes ·\n      2 containers ·\n      1 error step ·\n      1 shown on the waiting page" in content
    )
    assert "Other event" not in content and "Other form" not in content


def test_each_node_shows_its_name_type_and_what_it_does_and_containers_fold(admin_client, form, tree):
    content = admin_client.get(page_url(form)).content.decode()

    assert "status = received" in content
    assert "delay: 10 s after the submit" in content
    assert f'<details class="events-steps" id="node-{tree["later"].pk}-steps" open>' in content
    assert content.index("Later") < content.index("Mail") < content.index("Wait") < content.index("Flag")


def test_the_change_list_of_a_tree_names_it_and_counts_its_nodes_not_every_trees_roots(admin_client, form, tree):
    other = FormFactory()
    add_node(other, "background", label="Elsewhere")
    url = reverse("admin:events_node_changelist") + f"?form__id__exact={form.pk}&event={RECORD_UPDATE}"

    content = admin_client.get(url).content.decode()

    assert "<h1>Event tree of “Book a flight”: record_update</h1>" in content
    assert "This tree: 5 nodes, 3 at the top level" in content
    assert " total)" not in content


# Adding ------------------------------------------------------------------------------------------


def test_a_plus_without_a_type_asks_for_the_type(admin_client, form, tree):
    response = admin_client.get(add_url(form, ref=tree["mark"].pk, position="right", branch="main"), **HTMX)

    content = response.content.decode()
    assert "Add a step after “Mark”: choose its type" in content
    assert f"ref={tree['mark'].pk}&amp;position=right&amp;branch=main&amp;type=send_email" in content


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        (
            lambda t: {"ref": t["mark"].pk, "position": "right", "branch": "main"},
            [("Mark", 1), ("New", 1), ("Later", 1), ("Mail", 2), ("Wait", 1), ("Flag", 2)],
        ),
        (
            lambda t: {"ref": t["mark"].pk, "position": "left", "branch": "main"},
            [("New", 1), ("Mark", 1), ("Later", 1), ("Mail", 2), ("Wait", 1), ("Flag", 2)],
        ),
        (
            lambda t: {"ref": t["mail"].pk, "position": "right", "branch": "main"},
            [("Mark", 1), ("Later", 1), ("Mail", 2), ("New", 2), ("Wait", 1), ("Flag", 2)],
        ),
        (
            lambda t: {"ref": t["mail"].pk, "position": "left", "branch": "main"},
            [("Mark", 1), ("Later", 1), ("New", 2), ("Mail", 2), ("Wait", 1), ("Flag", 2)],
        ),
    ],
    ids=["after a node", "before a node", "at the end of a container", "at the start of a container"],
)
def test_a_node_is_added_before_or_after_any_node(admin_client, form, tree, where, expected):
    data = basics(label="New", config_flag="fresh", config_value="on")

    response = admin_client.post(add_url(form, type="set_flag", **where(tree)), data, **HTMX)

    new = Node.objects.get(label="New")
    event = changed(response)
    assert event["level"] == "success" and event["focus"] == [f"node-{new.pk}-edit"]
    assert event["message"].startswith("Added “New” (Set flag)")
    assert [(label, depth) for label, depth, _ in shape(form)] == expected
    assert new.config == {"flag": "fresh", "value": True}
    assert f'id="node-{new.pk}"' in response.content.decode()  # the tree, to swap in
    assert "<html" not in response.content.decode()


def test_a_node_is_added_into_an_empty_container_and_to_an_empty_tree(admin_client, form):
    response = admin_client.post(add_url(form, type="background", position="first-child"), basics(label="Box"), **HTMX)
    box = Node.objects.get(label="Box")
    assert changed(response)["level"] == "success"

    admin_client.post(
        add_url(form, type="set_flag", ref=box.pk, position="first-child", branch="main"),
        basics(label="Inside", config_flag="x", config_value="on"),
        **HTMX,
    )

    assert shape(form) == [("Box", 1, "main"), ("Inside", 2, "main")]


def test_an_error_step_is_added_under_an_action_and_its_error_branch_grows(admin_client, form, tree):
    mark = tree["mark"]
    admin_client.post(
        add_url(form, type="set_subtext", ref=mark.pk, position="first-child", branch="on_error"),
        basics(label="Sorry", config_text="We will call you"),
        **HTMX,
    )
    sorry = Node.objects.get(label="Sorry")
    admin_client.post(
        add_url(form, type="fail", ref=sorry.pk, position="right", branch="on_error"),
        basics(label="Give up", config_message="no"),
        **HTMX,
    )

    assert shape(form)[:3] == [("Mark", 1, "main"), ("Sorry", 2, "on_error"), ("Give up", 2, "on_error")]
    content = admin_client.get(page_url(form)).content.decode()
    assert content.index("on error:") < content.index("Sorry") < content.index("Give up") < content.index("Later")


def test_a_step_under_an_action_is_refused_like_the_form_file_refuses_it(admin_client, form, tree):
    before = shape(form)

    response = admin_client.post(
        add_url(form, type="set_flag", ref=tree["mark"].pk, position="first-child", branch="main"),
        basics(label="Inside", config_flag="x", config_value="on"),
        **HTMX,
    )

    assert "HX-Retarget" not in response  # the form again, in the dialog
    content = response.content.decode()
    assert "only containers (Background, Condition and Delay) hold steps" in content
    assert 'value="Inside"' in content
    assert shape(form) == before
    document = {
        "form": {"slug": "x", "title": "X", "fields": [{"name": "status", "type": "hidden"}]},
        "events": {
            "record_update": [
                {
                    "type": "update_field",
                    "config": {"field": "status", "value": "x"},
                    "children": [{"type": "set_flag", "config": {"flag": "x"}}],
                }
            ]
        },
    }
    with pytest.raises(FormFileError, match="cannot have children"):
        form_check(document)


def test_an_invalid_add_shows_the_form_again_with_what_was_typed_and_saves_nothing(admin_client, form):
    response = admin_client.post(
        add_url(form, type="delay", position="first-child"),
        basics(label="Later on", config_rule="after", config_after_seconds="", config_event_properties='{"a": 1,'),
        **HTMX,
    )

    content = response.content.decode()
    assert "Enter a valid JSON." in content
    assert 'value="Later on"' in content
    assert '{"a": 1,</textarea>' in content.replace("&quot;", '"')
    assert not Node.objects.exists()


def test_the_tree_comes_from_the_page_not_from_the_posted_fields(admin_client, form):
    other = FormFactory()

    admin_client.post(
        add_url(form, type="background", position="first-child"), {**basics(label="Box"), "form": other.pk}, **HTMX
    )

    assert Node.objects.get(label="Box").form == form


# Editing in place --------------------------------------------------------------------------------


def test_a_node_is_edited_in_place_and_stays_where_it_is(admin_client, form, tree):
    mail = tree["mail"]
    before = shape(form)
    page = admin_client.get(node_url("edit", mail), **HTMX).content.decode()
    assert "<html" not in page and 'value="Mail"' in page and 'name="treebeard_position"' not in page

    response = admin_client.post(
        node_url("edit", mail),
        {
            "label": "Confirmation",
            "name": "confirm_mail",
            "visible": "on",
            "config_to": "{{ record.email }}",
            "config_subject": "Booked",
            "config_body": "Thanks",
            "max_attempts": "3",
            "retry_backoff_seconds": "5",
            "retry_backoff_max_seconds": "60",
        },
        **HTMX,
    )

    event = changed(response)
    assert event == {"message": "Saved “Confirmation”.", "level": "success", "focus": [f"node-{mail.pk}-edit"]}
    mail.refresh_from_db()
    assert (mail.name, mail.visible, mail.max_attempts) == ("confirm_mail", True, 3)
    assert mail.config == {"to": "{{ record.email }}", "subject": "Booked", "body": "Thanks"}
    assert [(depth, branch) for _, depth, branch in shape(form)] == [(depth, branch) for _, depth, branch in before]
    assert "up to 3 attempts" in response.content.decode()


def test_an_invalid_edit_keeps_what_was_typed_and_event_properties_never_come_back_as_null(admin_client, form, tree):
    wait = tree["wait"]
    page = admin_client.get(node_url("edit", wait), **HTMX).content.decode()
    assert "null" not in page

    response = admin_client.post(
        node_url("edit", wait),
        {"label": "Wait", "config_rule": "after", "config_after_seconds": "", "config_event_properties": ""},
        **HTMX,
    )

    content = response.content.decode()
    assert "Required when the delay is due a duration after the submit" in content
    assert "null" not in content
    assert Node.objects.get(pk=wait.pk).config == {"rule": "after", "after_seconds": 10}


def test_help_texts_show_literally_what_they_say(admin_client, form, tree):
    builder = admin_client.get(node_url("edit", tree["mark"]), **HTMX).content.decode()
    classic = admin_client.get(reverse("admin:events_node_change", args=[tree["mark"].pk])).content.decode()

    for content in (builder, classic):
        assert "later steps read tasks.&lt;name&gt;.output." in content
        assert "tasks..output" not in content


def test_fields_that_name_a_form_field_are_selects_of_its_fields_hidden_ones_too(admin_client, form, tree):
    FieldFactory(form=form, name="arrival", label="Arrival", type="date")
    update = admin_client.get(node_url("edit", tree["mark"]), **HTMX).content.decode()
    delay = admin_client.get(node_url("edit", tree["wait"]), **HTMX).content.decode()

    assert '<select name="config_field"' in update
    for name, kind in (("email", "email"), ("seats", "integer"), ("status", "hidden")):
        assert f'<option value="{name}"' in update and f"{name} ({kind})" in update
    assert '<option value="status" selected>' in update
    assert "no hidden field" not in update
    assert '<option value="arrival">arrival (date)</option>' in delay and "seats (integer)" not in delay


def test_a_form_without_a_hidden_field_gets_a_hint_where_a_field_is_chosen(admin_client):
    form = FormFactory()
    FieldFactory(form=form, name="email", type="email")

    content = admin_client.get(add_url(form, type="update_field", position="first-child"), **HTMX).content.decode()

    assert "This form has no hidden field to write to" in content


def test_a_condition_edits_its_rules_as_rows_of_selects_with_the_forms_flags(admin_client, form):
    add_node(form, "set_flag", label="Paid", config={"flag": "paid", "value": True})
    condition = add_node(
        form,
        "condition",
        label="Big",
        config={"match": "all", "rules": [{"field": "seats", "operator": "greater_than", "value": "2"}]},
    )

    content = admin_client.get(node_url("edit", condition), **HTMX).content.decode()

    assert content.count("<tr data-events-row>") == 5 and "data-events-add-row" in content
    assert '<optgroup label="Flags">' in content and '<option value="flags.paid">' in content
    assert '<option value="seats" selected>' in content

    response = admin_client.post(
        node_url("edit", condition),
        {
            "label": "Big",
            "config_match": "any",
            "config_field_1": "",  # the first row removed in place: its inputs are sent empty
            "config_operator_1": "",
            "config_field_2": "flags.paid",
            "config_operator_2": "is_set",
        },
        **HTMX,
    )
    assert changed(response)["level"] == "success"
    assert Node.objects.get(pk=condition.pk).config == {
        "match": "any",
        "rules": [{"field": "flags.paid", "operator": "is_set"}],
    }


# Moving --------------------------------------------------------------------------------------------


def move(client, node, direction):
    return client.post(node_url("move", node), {"direction": direction}, **HTMX)


def test_a_node_moves_up_and_down_with_its_steps(admin_client, form, tree):
    event = changed(move(admin_client, tree["wait"], "up"))

    assert event["message"] == "Moved “Wait” up."
    assert event["focus"] == [f"node-{tree['wait'].pk}-up", f"node-{tree['wait'].pk}-edit"]
    assert [label for label, _, _ in shape(form)] == ["Mark", "Wait", "Flag", "Later", "Mail"]
    changed(move(admin_client, tree["mark"], "down"))
    assert [label for label, _, _ in shape(form)] == ["Wait", "Flag", "Mark", "Later", "Mail"]


def test_a_node_moves_into_the_container_above_and_out_again(admin_client, form, tree):
    assert changed(move(admin_client, tree["wait"], "into"))["message"] == "Moved “Wait” into “Later”."
    assert shape(form) == [("Mark", 1, "main"), ("Later", 1, "main"), ("Mail", 2, "main"), ("Wait", 2, "main"),
                           ("Flag", 3, "main")]  # fmt: skip

    assert changed(move(admin_client, tree["wait"], "out"))["message"] == "Moved “Wait” out of “Later”."
    assert [(label, depth) for label, depth, _ in shape(form)] == [
        ("Mark", 1), ("Later", 1), ("Mail", 2), ("Wait", 1), ("Flag", 2)
    ]  # fmt: skip


def test_an_error_step_moved_out_of_the_branch_takes_its_parents_place_in_the_sequence(admin_client, form, tree):
    sorry = add_node(form, "set_subtext", parent=tree["mail"], branch="on_error", label="Sorry", config={"text": "."})

    changed(move(admin_client, sorry, "out"))

    assert shape(form)[:4] == [("Mark", 1, "main"), ("Later", 1, "main"), ("Mail", 2, "main"), ("Sorry", 2, "main")]


def test_moves_the_tree_rules_refuse_change_nothing_and_say_why(admin_client, form, tree):
    before = shape(form)
    later = tree["later"]

    into_an_action = changed(move(admin_client, later, "into"))
    first_up = changed(move(admin_client, tree["mark"], "up"))
    top_out = changed(move(admin_client, tree["mark"], "out"))
    last_down = changed(move(admin_client, tree["flag"], "down"))

    assert into_an_action["level"] == "error"
    assert "“Mark” is a Update field action; only containers" in into_an_action["message"]
    assert first_up["message"] == "“Mark” is already the first step here."
    assert top_out["message"] == "“Mark” is already at the top level."
    assert last_down["message"] == "“Flag” is already the last step here."
    assert shape(form) == before


def test_an_error_step_of_a_top_level_node_moved_out_becomes_a_top_level_step(admin_client, form, tree):
    sorry = add_node(form, "set_subtext", parent=tree["mark"], branch="on_error", label="Sorry", config={"text": "."})
    # Its parent is at the top level: out of the branch, it becomes a main step after “Mark”.
    changed(move(admin_client, sorry, "out"))
    assert Node.objects.get(pk=sorry.pk).branch == "main" and Node.objects.get(pk=sorry.pk).depth == 1


def test_moving_needs_a_post(admin_client, form, tree):
    assert admin_client.get(node_url("move", tree["mark"])).status_code == 405


# Deleting ------------------------------------------------------------------------------------------


def test_delete_asks_first_naming_everything_that_goes(admin_client, form, tree):
    content = admin_client.get(node_url("delete", tree["wait"]), **HTMX).content.decode()

    assert "Delete “Wait”?" in content and "2 nodes in all" in content and "Flag" in content
    assert Node.objects.filter(pk=tree["wait"].pk).exists()


def test_delete_removes_the_node_with_its_subtree_and_focuses_a_neighbour(admin_client, form, tree):
    event = changed(admin_client.post(node_url("delete", tree["later"]), **HTMX))

    assert event["message"] == "Deleted “Later” and the 1 node under it."
    assert event["focus"][0] == f"node-{tree['wait'].pk}-edit"
    assert [label for label, _, _ in shape(form)] == ["Mark", "Wait", "Flag"]


def test_a_node_that_is_gone_answers_with_the_tree_as_it_is_now(admin_client, form, tree):
    url = node_url("edit", tree["mail"])
    admin_client.post(node_url("delete", tree["later"]), **HTMX)

    event = changed(admin_client.get(url, **HTMX))

    assert event["level"] == "error" and "not in this tree any more" in event["message"]


# Links and pages without JavaScript --------------------------------------------------------------


def test_without_htmx_every_action_is_a_page_and_comes_back_to_the_node(admin_client, form, tree):
    chooser = admin_client.get(add_url(form, ref=tree["mark"].pk, position="right", branch="main"))
    assert "<html" in chooser.content.decode() and "choose its type" in chooser.content.decode()
    response = admin_client.post(
        add_url(form, type="set_flag", ref=tree["mark"].pk, position="right", branch="main"),
        basics(label="New", config_flag="x", config_value="on"),
    )
    new = Node.objects.get(label="New")
    assert response.status_code == 302 and response["Location"] == f"{page_url(form)}#node-{new.pk}"

    refused = admin_client.post(node_url("move", tree["mark"]), {"direction": "up"})
    assert refused["Location"] == f"{page_url(form)}#node-{tree['mark'].pk}"
    page = admin_client.get(refused["Location"]).content.decode()
    assert "“Mark” is already the first step here." in page


def test_a_deleted_nodes_link_lands_on_its_tree(admin_client, form, tree):
    edit_page = admin_client.get(node_url("edit", tree["mail"])).content.decode()
    link = edit_page.split('class="events-page-link"')[0].rsplit('href="', 1)[1].split('"')[0].replace("&amp;", "&")
    assert admin_client.get(link).status_code == 200
    delete_page = link.replace("/change/", "/delete/")
    assert admin_client.post(delete_page, {"post": "yes"})["Location"] == page_url(form)

    response = admin_client.get(link)

    assert response.status_code == 302 and response["Location"] == page_url(form)
    assert "doesn’t exist. Perhaps it was deleted?" in admin_client.get(page_url(form)).content.decode()
    gone = reverse("admin:events_node_builder_edit", args=[form.pk, tree["mail"].pk]) + "?event=record_update"
    assert admin_client.get(gone)["Location"] == page_url(form)


def test_a_deleted_nodes_link_from_the_change_list_of_its_tree_lands_on_its_tree(admin_client, form, tree):
    url = reverse("admin:events_node_changelist") + f"?form__id__exact={form.pk}&event={RECORD_UPDATE}"
    link = admin_client.get(url).content.decode().split(f"/admin/events/node/{tree['mark'].pk}/change/?")[1]
    link = f"/admin/events/node/{tree['mark'].pk}/change/?" + link.split('"')[0].replace("&amp;", "&")
    tree["mark"].delete()

    assert admin_client.get(link)["Location"] == page_url(form)


# Who may do what -----------------------------------------------------------------------------------


@pytest.fixture
def viewer_client(client, db):
    user = get_user_model().objects.create_user("viewer", password="x", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename__in=["view_node", "view_form"]))
    client.force_login(user)
    return client


def test_someone_who_may_only_view_sees_the_tree_without_buttons_and_cannot_change_it(viewer_client, form, tree):
    content = viewer_client.get(page_url(form)).content.decode()

    assert "Mark" in content and "events-node-actions" not in content and "data-events-add" not in content
    assert move(viewer_client, tree["wait"], "up").status_code == 403
    assert viewer_client.post(node_url("delete", tree["wait"]), **HTMX).status_code == 403
    assert viewer_client.get(node_url("edit", tree["wait"]), **HTMX).status_code == 403
    assert viewer_client.get(add_url(form, type="fail"), **HTMX).status_code == 403
    assert [label for label, _, _ in shape(form)] == ["Mark", "Later", "Mail", "Wait", "Flag"]


def test_the_tree_page_costs_a_fixed_number_of_queries(admin_client, form, tree, django_assert_max_num_queries):
    admin_client.get(page_url(form))
    for index in range(10):
        add_node(form, "set_flag", parent=tree["later"], label=f"more{index}", config={"flag": "x"})
    with django_assert_max_num_queries(8):
        assert admin_client.get(page_url(form)).status_code == 200


def test_a_custom_events_tree_is_built_on_its_own_page(admin_client, form, tree):
    response = admin_client.post(
        add_url(form, event="paid/ok", type="set_flag", position="first-child"),
        basics(label="Paid", config_flag="paid", config_value="on"),
        **HTMX,
    )

    assert changed(response)["level"] == "success"
    assert shape(form, "paid/ok") == [("Paid", 1, "main")]
    content = admin_client.get(page_url(form, "paid/ok")).content.decode()
    assert "<h1>Event tree of “Book a flight”: paid/ok</h1>" in content and "This tree: 1 node" in content
    assert f"node-{tree['mark'].pk}" not in content


def test_a_node_of_a_type_no_longer_registered_can_still_be_renamed_and_keeps_its_config(admin_client, form, tree):
    Node.objects.filter(pk=tree["mark"].pk).update(type="retired_type", config={"keep": "<b>this</b>"})

    assert "unknown type" in admin_client.get(page_url(form)).content.decode()
    response = admin_client.post(node_url("edit", tree["mark"]), {"label": "Old step"}, **HTMX)

    assert changed(response)["level"] == "success"
    node = Node.objects.get(pk=tree["mark"].pk)
    assert (node.label, node.config) == ("Old step", {"keep": "<b>this</b>"})


def test_an_error_step_offers_no_error_branch_and_a_post_for_one_is_refused(admin_client, form):
    boom = add_node(form, "fail", name="boom", config={"message": "x"})
    catch = add_node(form, "set_flag", parent=boom, branch="on_error", name="catch", config={"flag": "c"})

    page = admin_client.get(reverse("admin:events_node_overview", args=[form.pk, "record_update"])).content.decode()

    assert page.count("+ error step") == 0  # boom has its branch; catch is an error step
    response = admin_client.post(
        add_url(form, type="set_flag", ref=catch.pk, position="first-child", branch="on_error"),
        basics(label="Deeper", config_flag="d", config_value="on"),
        **HTMX,
    )
    assert "an error step has no error branch of its own" in response.content.decode()
    assert Node.objects.filter(path__startswith=catch.path, depth=catch.depth + 1).count() == 0


def test_a_step_with_error_steps_cannot_be_moved_out_into_an_error_branch(admin_client, form):
    boom = add_node(form, "fail", label="Boom", config={"message": "x"})
    box = add_node(form, "background", parent=boom, branch="on_error", label="Box")
    inner = add_node(form, "set_flag", parent=box, label="Inner", config={"flag": "i"})
    add_node(form, "set_flag", parent=inner, branch="on_error", label="Deeper", config={"flag": "d"})

    event = changed(move(admin_client, inner, "out"))

    assert event["level"] == "error"
    assert "“Inner” has error steps of its own" in event["message"]
    assert Node.objects.get_parent(Node.objects.get(pk=inner.pk)).pk == box.pk

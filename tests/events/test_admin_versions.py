"""Tree versions in admin (events/admin/versions.py): the tree page's versions bar, Review and publish
(the impact preview), the history with its diffs, restoring a version as the draft, discarding the draft.

The builder edits the draft; submissions run the live version until the draft is published through
the preview, which posts the token of what it showed: a draft changed since is not published.
"""

import json
import re

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.contrib.messages import get_messages
from django.test import Client
from django.urls import reverse

from events.models import RECORD_UPDATE, Node, Run, TreeVersion
from events.versions import tree_status
from forms_app.models import Record
from tests.factories import add_node, publish

HTMX = {"HTTP_HX_REQUEST": "true"}
VISITOR = {"email": "ann@example.com", "seats": "1", "status": ""}


def page_url(form):
    return reverse("admin:events_node_overview", args=[form.pk, RECORD_UPDATE])


def versions_url(name, form, *args, **query):
    query = "&".join(f"{key}={value}" for key, value in {"event": RECORD_UPDATE, **query}.items())
    return reverse(f"admin:events_node_{name}", args=[form.pk, *args]) + "?" + query


def edit_mark(client, node, value, **headers):
    """Save the update_field node in the builder's dialog, with a new value."""
    url = reverse("admin:events_node_builder_edit", args=[node.form_id, node.pk]) + f"?event={RECORD_UPDATE}"
    data = {
        "label": node.label,
        "name": node.name,
        "config_field": "status",
        "config_value": value,
        "max_attempts": "1",
        "retry_backoff_seconds": "10",
        "retry_backoff_max_seconds": "600",
    }
    return client.post(url, data, **headers)


def token_of(response):
    return re.search(r'name="expect" value="([^"]+)"', response.content.decode())[1]


def part(html, start, end):
    """The piece of ``html`` from ``start`` to the first ``end`` after it."""
    begin = html.index(start)
    return html[begin : html.index(end, begin)]


def said(response):
    return [str(message) for message in get_messages(response.wsgi_request)]


def submitted(client, form):
    """Submit the public form as a visitor; the record, reloaded."""
    response = client.post(form.get_absolute_url(), VISITOR)
    assert response.status_code == 303
    return Record.objects.filter(form=form).latest("pk")


@pytest.fixture
def mark(form):
    """The form's tree, published as version 1: one inline step setting status = received."""
    return add_node(form, "update_field", name="mark", label="Mark", config={"field": "status", "value": "received"})


def test_an_edit_in_the_builder_is_a_draft_the_bar_says_so_and_submissions_run_the_live_version(
    admin_client, client, form, mark
):
    response = edit_mark(admin_client, mark, "confirmed", **HTMX)

    assert response.status_code == 200
    html = response.content.decode()
    bar = html[html.index('<section id="events-versions"') :]
    assert 'hx-swap-oob="true"' in bar[: bar.index(">")]  # the bar is swapped with the tree
    assert "Draft: 1 change not published." in bar
    page = admin_client.get(page_url(form)).content.decode()
    assert "Live: version 1" in page and "Draft: 1 change not published." in page
    assert 'id="events-review-publish"' in page and 'id="events-discard-draft"' in page

    record = submitted(client, form)

    assert record.data["status"] == "received"  # the live version, not the draft
    assert Run.objects.get(record=record).version.number == 1


def test_publishing_through_the_preview_makes_the_next_submission_run_the_draft_and_records_its_version(
    admin_client, admin_user, client, form, mark
):
    before = submitted(client, form)
    edit_mark(admin_client, mark, "confirmed", **HTMX)
    preview = admin_client.get(versions_url("publish", form))
    assert preview.status_code == 200
    html = preview.content.decode()
    assert "Runs in flight finish on the version they started with" in html
    assert '<td class="events-diff-before">received</td><td class="events-diff-after">confirmed</td>' in html

    response = admin_client.post(
        versions_url("publish", form), {"expect": token_of(preview), "note": "Confirm at once"}
    )

    assert response.status_code == 302 and response["Location"] == page_url(form)
    assert said(response)[0].startswith("Published version 2")
    version = TreeVersion.objects.live(form)
    assert (version.number, version.published_by, version.note) == (2, admin_user, "Confirm at once")
    after = submitted(client, form)
    assert after.data["status"] == "confirmed"
    assert Run.objects.get(record=after).version == version
    assert Run.objects.get(record=before).version.number == 1  # what it ran stays recorded
    assert "The draft is the live version" in admin_client.get(page_url(form)).content.decode()


def test_a_stale_token_is_refused_and_nothing_is_published(admin_client, client, form, mark):
    edit_mark(admin_client, mark, "confirmed", **HTMX)
    stale = token_of(admin_client.get(versions_url("publish", form)))
    add_node(form, "set_flag", label="Added meanwhile", config={"flag": "late"}, publish=False)

    response = admin_client.post(versions_url("publish", form), {"expect": stale, "note": "mine"})

    assert response.status_code == 200
    html = response.content.decode()
    assert 'id="events-publish-refused"' in html and "Nothing was published" in html
    assert "Added meanwhile" in html  # the preview as the draft is now
    assert token_of(response) != stale
    assert 'name="note" cols="80" rows="2" maxlength="500"' in html and ">\nmine</textarea>" in html
    assert TreeVersion.objects.of_tree(form).count() == 1
    assert submitted(client, form).data["status"] == "received"


def test_a_publish_without_the_reviewed_token_publishes_nothing(admin_client, form, mark):
    edit_mark(admin_client, mark, "confirmed", **HTMX)

    response = admin_client.post(versions_url("publish", form), {"note": "no review"})

    assert response.status_code == 200
    assert TreeVersion.objects.of_tree(form).count() == 1


def test_the_impact_preview_lists_a_pending_delay_whose_node_the_draft_removes_not_an_unchanged_one(
    admin_client, form, submit_queued
):
    later = add_node(form, "delay", label="Remind later", config={"after_seconds": 600})
    add_node(form, "set_flag", parent=later, label="Reminded", config={"flag": "reminded"})
    other = add_node(form, "delay", label="Keep waiting", config={"after_seconds": 900})
    add_node(form, "set_flag", parent=other, label="Waited", config={"flag": "waited"})
    run = submit_queued().run
    assert run.status == Run.Status.RUNNING
    Node.objects.get(pk=later.pk).delete()  # the draft removes "Remind later" and its step

    html = admin_client.get(versions_url("publish", form)).content.decode()

    counts = part(html, 'id="events-impact-counts"', "</ul>")
    assert "Runs in flight on the live version (version 4): <strong>1</strong>" in counts  # add_node published 4 times
    assert "Pending delays that reference nodes the draft changes or removes: <strong>1</strong>" in counts
    assert "Awaiting callbacks that reference nodes the draft changes or removes: <strong>0</strong>" in counts
    table = part(html, 'id="events-impact-delays"', "</table>")
    run_link = reverse("admin:events_run_change", args=[run.pk])
    assert f'<a href="{run_link}">{run.reference}</a>' in table
    assert "Remind later" in table and "removed in the draft" in table
    assert "Keep waiting" not in table
    assert "Runs in flight finish on the version they started with" in html


def test_the_history_lists_every_version_with_who_published_it_its_note_and_its_runs(
    admin_client, admin_user, client, form, mark
):
    submitted(client, form)
    Node.objects.filter(pk=mark.pk).update(config={"field": "status", "value": "confirmed"})
    publish(form, user=admin_user, note="Second <b>take</b>")

    html = admin_client.get(versions_url("tree_history", form)).content.decode()

    row_2, row_1 = part(html, 'id="version-2"', "</tr>"), part(html, 'id="version-1"', "</tr>")
    assert "live" in row_2 and admin_user.get_username() in row_2
    assert "Second &lt;b&gt;take&lt;/b&gt;" in row_2 and "<b>take</b>" not in html
    assert "<td>0</td>" in row_2 and "<td>1</td>" in row_1  # runs that ran each version
    assert versions_url("version_export", form, 1) in row_1.replace("&amp;", "&")
    assert versions_url("restore", form, 1) in row_1.replace("&amp;", "&")
    assert html.index('id="version-2"') < html.index('id="version-1"')


def test_comparing_two_versions_shows_a_config_change_before_and_after_escaped(admin_client, form):
    node = add_node(form, "update_field", label="<i>Mark</i>", config={"field": "status", "value": "<b>one</b>"})
    Node.objects.filter(pk=node.pk).update(config={"field": "status", "value": "two"})
    publish(form)

    html = admin_client.get(versions_url("tree_history", form, base=1, other=2)).content.decode()

    result = html[html.index('id="events-compare-result"') :]
    assert "From <strong>version 1</strong> to <strong>version 2</strong>" in result
    assert "0 added · 0 removed · 1 changed" in result
    assert "&lt;i&gt;Mark&lt;/i&gt;" in result and "<i>Mark</i>" not in html
    assert (
        '<th scope="row">config: value</th><td class="events-diff-before">&lt;b&gt;one&lt;/b&gt;</td>'
        '<td class="events-diff-after">two</td>'
    ) in result


def test_a_version_compared_with_the_draft_shows_what_the_draft_adds(admin_client, form, mark):
    add_node(form, "set_flag", label="Flag it", config={"flag": "x"}, publish=False)

    html = admin_client.get(versions_url("tree_history", form, base=1, other="draft")).content.decode()

    result = html[html.index('id="events-compare-result"') :]
    assert "1 added · 0 removed · 0 changed" in result and "Flag it" in result


def test_restore_as_draft_rebuilds_the_draft_with_the_same_node_ids_and_publishes_nothing(admin_client, form, mark):
    flag = add_node(form, "set_flag", label="Flag", config={"flag": "x"})
    first = TreeVersion.objects.live(form)
    assert first.number == 2
    Node.objects.get(pk=flag.pk).delete()
    Node.objects.filter(pk=mark.pk).update(config={"field": "status", "value": "changed"})
    add_node(form, "fail", label="New", config={"message": "no"})  # published: version 3
    confirm = admin_client.get(versions_url("restore", form, 2))
    assert confirm.status_code == 200 and "Restore version 2 as the draft" in confirm.content.decode()

    response = admin_client.post(versions_url("restore", form, 2), {"expect": token_of(confirm)})

    assert response.status_code == 302 and response["Location"] == page_url(form)
    assert said(response)[0].startswith("Restored version 2 as the draft: 3 changes not published.")
    assert Node.objects.snapshot(form) == first.snapshot
    assert sorted(Node.objects.filter(form=form).values_list("pk", flat=True)) == sorted([mark.pk, flag.pk])
    assert TreeVersion.objects.live(form).number == 3  # nothing published


def test_a_restore_confirmed_before_the_draft_changed_is_refused(admin_client, form, mark):
    confirm = admin_client.get(versions_url("restore", form, 1))
    add_node(form, "set_flag", label="Work in progress", config={"flag": "x"}, publish=False)

    response = admin_client.post(versions_url("restore", form, 1), {"expect": token_of(confirm)})

    assert response.status_code == 200 and 'id="events-restore-refused"' in response.content.decode()
    assert Node.objects.filter(form=form, label="Work in progress").exists()


def test_discarding_the_draft_makes_it_the_live_version_again(admin_client, form, mark):
    edit_mark(admin_client, mark, "confirmed", **HTMX)
    confirm = admin_client.get(versions_url("discard", form))
    assert "1 change not published is lost" in confirm.content.decode()

    response = admin_client.post(versions_url("discard", form), {"expect": token_of(confirm)})

    assert said(response) == ["Discarded the draft: it is version 1 again, the live version."]
    status = tree_status(form=form)
    assert not status.has_changes and status.live.number == 1
    assert Node.objects.get(pk=mark.pk).config["value"] == "received"


def test_a_tree_never_published_says_new_submissions_run_nothing_until_it_is(admin_client, client, form):
    add_node(form, "update_field", label="Mark", config={"field": "status", "value": "received"}, publish=False)

    page = admin_client.get(page_url(form)).content.decode()

    assert "Never published." in page and "New submissions run nothing from this tree until it is published." in page
    assert "Draft: 1 change not published." in page and 'id="events-discard-draft"' not in page
    record = submitted(client, form)
    assert record.data["status"] == "" and record.is_complete


@pytest.fixture
def viewer(client, db):
    """A staff user who may view forms and nodes, and change nothing."""
    user = get_user_model().objects.create_user("viewer", password="x", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename__in=["view_node", "view_form"]))
    client.force_login(user)
    return client


def test_a_view_only_staff_user_sees_the_versions_but_cannot_publish_restore_or_discard(viewer, form, mark):
    Node.objects.filter(pk=mark.pk).update(config={"field": "status", "value": "confirmed"})
    token = tree_status(form=form).token

    preview = viewer.get(versions_url("publish", form))
    assert preview.status_code == 200 and 'id="events-publish-form"' not in preview.content.decode()
    assert 'id="events-review-publish"' not in viewer.get(page_url(form)).content.decode()
    assert viewer.get(versions_url("tree_history", form)).status_code == 200
    assert viewer.post(versions_url("publish", form), {"expect": token}).status_code == 403
    assert viewer.get(versions_url("restore", form, 1)).status_code == 403
    assert viewer.post(versions_url("restore", form, 1), {"expect": token}).status_code == 403
    assert viewer.post(versions_url("discard", form), {"expect": token}).status_code == 403
    assert TreeVersion.objects.of_tree(form).count() == 1
    assert Node.objects.get(pk=mark.pk).config["value"] == "confirmed"


def test_staff_without_the_view_permission_on_nodes_see_no_version_page(client, form, mark):
    user = get_user_model().objects.create_user("forms-only", password="x", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename="view_form"))
    client.force_login(user)

    assert client.get(versions_url("publish", form)).status_code == 403
    assert client.get(versions_url("tree_history", form)).status_code == 403
    assert client.get(versions_url("version_export", form, 1)).status_code == 403


def test_publishing_without_the_csrf_token_is_refused(admin_user, form, mark):
    Node.objects.filter(pk=mark.pk).update(config={"field": "status", "value": "confirmed"})
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)

    response = client.post(versions_url("publish", form), {"expect": tree_status(form=form).token})

    assert response.status_code == 403
    assert TreeVersion.objects.of_tree(form).count() == 1


def test_a_versions_form_file_holds_that_version_not_the_live_one(admin_client, form, mark):
    Node.objects.filter(pk=mark.pk).update(config={"field": "status", "value": "confirmed"})
    publish(form)

    response = admin_client.get(versions_url("version_export", form, 1))

    assert response["Content-Disposition"] == f'attachment; filename="{form.slug}-record_update-version-1.json"'
    document = json.loads(response.content)
    assert document["events"]["record_update"][0]["config"] == {"field": "status", "value": "received"}
    assert admin_client.get(versions_url("version_export", form, 9)).status_code == 404


def test_the_export_action_writes_the_live_version_not_the_draft(admin_client, form, mark):
    Node.objects.filter(pk=mark.pk).update(config={"field": "status", "value": "draft only"})

    response = admin_client.post(
        reverse("admin:forms_app_form_changelist"), {"action": "export_form_files", "_selected_action": [form.pk]}
    )

    document = json.loads(response.content)
    assert document["events"]["record_update"][0]["config"] == {"field": "status", "value": "received"}

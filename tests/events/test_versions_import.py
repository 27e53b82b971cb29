"""Importing a form file makes drafts; ``--publish`` (the admin's "Publish at once") publishes them.

``import_form FILE`` writes each tree as its draft: the live version goes on running until someone
publishes, and the summary says which trees are drafts and how to publish them. The demo publishes.
"""

import copy
import io
import json

import pytest
from django.core.management import call_command
from django.urls import reverse

from events.formfile import form_export
from events.models import RECORD_UPDATE, Node, TreeVersion
from events.versions import tree_impact, tree_status
from forms_app.models import Form

DOCUMENT = {
    "form": {
        "slug": "contact",
        "title": "Contact us",
        "fields": [{"name": "email", "type": "email", "required": True}, {"name": "status", "type": "hidden"}],
    },
    "events": {
        "record_update": [{"type": "update_field", "name": "mark", "config": {"field": "status", "value": "received"}}]
    },
}


def with_value(value):
    document = copy.deepcopy(DOCUMENT)
    document["events"]["record_update"][0]["config"]["value"] = value
    return document


def import_form(tmp_path, document, *options):
    path = tmp_path / "contact.json"
    path.write_text(json.dumps(document))
    out = io.StringIO()
    call_command("import_form", str(path), *options, stdout=out)
    return out.getvalue()


def submitted_status(client):
    client.post("/f/contact/", {"email": "ann@example.com", "status": ""})
    return Form.objects.get(slug="contact").records.latest("pk").data["status"]


def test_import_form_without_publish_leaves_the_live_version_running_and_says_how_to_publish(db, tmp_path, client):
    import_form(tmp_path, with_value("received"), "--publish")

    output = import_form(tmp_path, with_value("confirmed"))

    form = Form.objects.get(slug="contact")
    assert "Imported as drafts, not live until published: record_update (version 1 stays live)." in output
    assert "import again with --publish" in output and "Review and publish" in output
    status = tree_status(form=form)
    assert status.live.number == 1 and status.has_changes
    assert Node.objects.get(form=form, name="mark").config["value"] == "confirmed"  # the draft
    assert submitted_status(client) == "received"


def test_import_form_with_publish_publishes_the_changed_tree_with_its_note(db, tmp_path, client):
    import_form(tmp_path, with_value("received"), "--publish")

    output = import_form(tmp_path, with_value("confirmed"), "--publish", "--note", "Spring release")

    form = Form.objects.get(slug="contact")
    assert "Published (live for new submissions): record_update version 2." in output
    assert "drafts" not in output
    live = TreeVersion.objects.live(form)
    assert (live.number, live.note, live.published_by) == (2, "Spring release", None)
    assert not tree_status(form=form).has_changes
    assert submitted_status(client) == "confirmed"


def test_a_new_form_imported_without_publish_runs_nothing_until_published(db, tmp_path, client):
    output = import_form(tmp_path, with_value("received"))

    assert "record_update (never published)" in output
    assert not TreeVersion.objects.exists()
    assert submitted_status(client) == ""
    assert form_export(Form.objects.get(slug="contact"))["events"] == {}  # an export writes live versions
    assert form_export(Form.objects.get(slug="contact"), draft=True)["events"] == with_value("received")["events"]


def test_importing_the_live_version_again_leaves_no_draft(db, tmp_path):
    import_form(tmp_path, with_value("received"), "--publish")

    output = import_form(tmp_path, with_value("received"))

    assert "drafts" not in output and "Published" not in output
    assert TreeVersion.objects.count() == 1


# The admin's import page -------------------------------------------------------------------------


def paste(client, document, **data):
    return client.post(reverse("admin:forms_app_form_import"), {"text": json.dumps(document), **data})


def test_the_admin_import_makes_drafts_unless_publish_at_once_is_ticked(admin_client, admin_user, db, client):
    page = admin_client.get(reverse("admin:forms_app_form_import")).content.decode()
    assert 'name="publish"' in page and "Publish at once" in page and 'name="publish" checked' not in page

    paste(admin_client, with_value("received"))
    form = Form.objects.get(slug="contact")
    assert not TreeVersion.objects.filter(form=form).exists()
    assert submitted_status(client) == ""

    response = paste(admin_client, with_value("confirmed"), replace="on", publish="on")

    live = TreeVersion.objects.live(form)
    assert (live.number, live.published_by) == (1, admin_user)
    assert live.note == "Imported in the admin from pasted text."
    assert submitted_status(client) == "confirmed"
    messages = [str(message) for message in response.wsgi_request._messages]
    assert "Published (live for new submissions): record_update version 1." in messages


# The demo ------------------------------------------------------------------------------------------


def test_the_demo_still_publishes_its_form(db, settings):
    settings.DEBUG = True
    call_command("demo", "--no-next-steps", stdout=io.StringIO())

    status = tree_status(form=Form.objects.get(slug="booking"), event=RECORD_UPDATE)
    assert status.is_live and not status.has_changes


def test_drafts_are_the_default_so_the_old_draft_option_is_gone(db, tmp_path):
    with pytest.raises(Exception, match="unrecognized arguments: --draft"):
        import_form(tmp_path, DOCUMENT, "--draft")


def test_a_waiting_callback_counts_when_the_draft_changes_a_step_after_it(form, awaiting):
    """The callback resumes its sequence: a changed step after it is what it will run (on its own version)."""
    after = Node.objects.get(form=form, name="after")
    after.config = {"field": "status", "value": "changed"}
    after.save()

    impact = tree_impact(form=form)

    assert impact.callback_count == 1
    [step] = impact.callbacks
    assert step.task.pk == awaiting.task.pk
    assert step.reason_text() == "the step “Recording the result” after it is changed"


def test_re_importing_an_export_keeps_every_node_s_id_named_or_not_and_publishes_nothing_new(db):
    call_command("demo", force=True, no_next_steps=True, stdout=io.StringIO())
    booking = Form.objects.get(slug="booking")
    ids = sorted(Node.objects.filter(form=booking).values_list("pk", flat=True))
    assert Node.objects.filter(form=booking, name="").exists()  # the demo has unnamed nodes

    call_command("demo", force=True, no_next_steps=True, stdout=io.StringIO())  # make run does this each time

    assert sorted(Node.objects.filter(form=booking).values_list("pk", flat=True)) == ids
    assert TreeVersion.objects.filter(form=booking).count() == 1
    assert not tree_status(form=booking).has_changes


def test_the_publish_page_lists_that_callback_with_its_deadline(form, awaiting, admin_client):
    Node.objects.filter(form=form, name="after").update(config={"field": "status", "value": "changed"})

    page = admin_client.get(reverse("admin:events_node_publish", args=[form.pk]) + "?event=record_update")

    table = page.content.decode().split('id="events-impact-callbacks"')[1].split("</table>")[0]
    assert awaiting.run.reference in table and "Deadline" in table
    assert "the step “Recording the result” after it is changed" in table

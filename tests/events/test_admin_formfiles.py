"""Form files in admin (events/admin/formfiles.py): the import page and the export action on forms.

An import shows every problem with its path and changes nothing when there is one; on success it
says what it did (ImportResult.summary()). Export: one form, its .json; several, a zip of them.
Only staff with the model permissions may do either; the import form checks its CSRF token.
"""

import io
import json
import zipfile

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.contrib.messages import get_messages
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse

from events.formfile import form_export, form_export_json
from events.models import Node
from forms_app.models import Field, Form
from tests.factories import FormFactory, add_node

IMPORT_URL = reverse("admin:forms_app_form_import")
CHANGELIST_URL = reverse("admin:forms_app_form_changelist")
PASSWORD = "a-long-enough-password-for-staff"
IMPORT_PERMISSIONS = [
    "add_form",
    "change_form",
    "add_field",
    "change_field",
    "delete_field",
    "add_node",
    "change_node",
    "delete_node",
]

DOCUMENT = {
    "form": {
        "slug": "contact",
        "title": "Contact us",
        "fields": [
            {"name": "email", "label": "Email", "type": "email", "required": True},
            {"name": "status", "type": "hidden"},
        ],
    },
    "events": {
        "record_update": [
            {"type": "update_field", "name": "mark", "config": {"field": "status", "value": "received"}},
            {"type": "background", "name": "later", "children": [{"type": "set_flag", "config": {"flag": "seen"}}]},
        ]
    },
}
BAD_DOCUMENT = {
    "form": {"slug": "contact", "title": "Contact us", "fields": [{"name": "email", "type": "colour"}]},
    "events": {
        "record_update": [
            {"type": "update_field", "config": {"field": "nowhere", "value": "x"}},
            {"type": "delay", "config": {"after_seconds": "soon"}},
        ]
    },
}


def staff(*codenames, is_staff=True):
    """A logged-in client for a staff user holding exactly these permissions."""
    user = get_user_model().objects.create_user(f"staff-{len(codenames)}-{is_staff}", password=PASSWORD)
    user.is_staff = is_staff
    user.save()
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    client = Client()
    client.force_login(user)
    return client


def paste(client, document, **data):
    text = document if isinstance(document, str) else json.dumps(document)
    return client.post(IMPORT_URL, {"text": text, **data})


def problems_shown(response):
    html = response.content.decode()
    start = html.index('id="formfile-problems"')
    return html[start : html.index("</ul>", start)]


def state():
    """Everything an import could change."""
    forms = list(Form.objects.order_by("slug").values())
    fields = list(Field.objects.order_by("pk").values())
    nodes = list(Node.objects.order_by("pk").values())
    return forms, fields, nodes


# The import page


def test_the_import_page_takes_a_file_or_pasted_text_with_a_csrf_token(admin_client):
    response = admin_client.get(IMPORT_URL)

    assert response.status_code == 200
    html = response.content.decode()
    assert 'enctype="multipart/form-data"' in html
    assert 'name="csrfmiddlewaretoken"' in html
    assert 'type="file" name="file"' in html and '<textarea name="text"' in html
    assert "<title>Import a form file" in html


def test_pasting_a_form_file_creates_the_form_and_says_what_it_did(admin_client, db):
    response = paste(admin_client, DOCUMENT)

    form = Form.objects.get(slug="contact")
    assert response.status_code == 302
    assert response["Location"] == reverse("admin:forms_app_form_change", args=[form.pk])
    said = [str(message) for message in get_messages(response.wsgi_request)]
    publish_url = reverse("admin:events_node_publish", args=[form.pk]) + "?event=record_update"
    assert said == [
        "Created form “contact” (Contact us): 2 fields; record_update: 3 nodes.",
        "Imported as drafts, not live until published: record_update (never published).",
        f'To publish, review each draft: <a href="{publish_url}">record_update</a>.',
    ]
    assert list(form.fields.values_list("name", flat=True)) == ["email", "status"]
    assert Node.objects.filter(form=form).count() == 3


def test_uploading_a_form_file_imports_it(admin_client, db):
    upload = SimpleUploadedFile("contact.json", json.dumps(DOCUMENT).encode(), content_type="application/json")

    response = admin_client.post(IMPORT_URL, {"file": upload})

    assert response.status_code == 302
    assert Form.objects.filter(slug="contact", title="Contact us").exists()


def test_a_bad_form_file_shows_every_problem_with_its_path_and_changes_nothing(admin_client, form):
    before = state()

    response = paste(admin_client, BAD_DOCUMENT)

    assert response.status_code == 200
    shown = problems_shown(response)
    for path in (
        "form.fields[0].type",
        "events.record_update[0].config.field",
        "events.record_update[1].config.after_seconds",
    ):
        assert f"<code>{path}</code>: " in shown, path
    assert "The pasted text has 3 problems; nothing was imported or changed." in response.content.decode()
    assert state() == before
    assert "&quot;colour&quot;" in response.content.decode()  # the pasted text is kept, to be fixed


def test_text_that_is_not_json_is_one_problem_and_changes_nothing(admin_client, form):
    before = state()

    response = paste(admin_client, '{"form": ')

    assert "not valid JSON" in problems_shown(response)
    assert state() == before


def test_a_file_for_an_existing_slug_is_refused_unless_replace_is_ticked(admin_client, db):
    existing = FormFactory(slug="contact", title="Old title")
    add_node(existing, "set_flag", name="old", config={"flag": "old"})
    before = state()

    refused = paste(admin_client, DOCUMENT)

    assert "<code>form.slug</code>: a form with the slug “contact” exists" in problems_shown(refused)
    assert state() == before

    replaced = paste(admin_client, DOCUMENT, replace="on")

    assert replaced.status_code == 302
    existing.refresh_from_db()
    assert existing.title == "Contact us"
    assert sorted(Node.objects.filter(form=existing).values_list("name", flat=True)) == ["", "later", "mark"]
    said = [str(message) for message in get_messages(replaced.wsgi_request)]
    assert said[0].startswith("Replaced form “contact” (Contact us)")
    assert "records, runs and tasks were kept" in said[1]


def test_a_bad_file_for_an_existing_form_leaves_that_form_as_it_was(admin_client, form):
    add_node(form, "set_flag", name="keep", config={"flag": "kept"})
    bad = {**BAD_DOCUMENT, "form": {**BAD_DOCUMENT["form"], "slug": form.slug}}
    exported = form_export(form)

    response = paste(admin_client, bad, replace="on")

    assert response.status_code == 200 and "form.fields[0].type" in problems_shown(response)
    assert form_export(Form.objects.get(pk=form.pk)) == exported


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({}, "Choose a form file, or paste its text."),
        ({"text": "{}", "file": "both"}, "Choose a file or paste the text, not both."),
    ],
)
def test_the_page_asks_for_exactly_one_of_a_file_and_text(admin_client, db, data, error):
    if data.get("file") == "both":
        data["file"] = SimpleUploadedFile("x.json", b"{}")

    response = admin_client.post(IMPORT_URL, data)

    assert response.status_code == 200
    assert error in response.content.decode()
    assert not Form.objects.exists()


def test_the_import_form_is_refused_without_its_csrf_token(admin_user, db):
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)

    response = client.post(IMPORT_URL, {"text": json.dumps(DOCUMENT)})

    assert response.status_code == 403
    assert not Form.objects.exists()


def test_the_form_list_links_to_the_import_page_for_those_who_may_import(admin_client, db):
    assert IMPORT_URL in admin_client.get(CHANGELIST_URL).content.decode()
    viewer = staff("view_form", "change_form")
    assert IMPORT_URL not in viewer.get(CHANGELIST_URL).content.decode()


def test_importing_needs_every_permission_an_import_uses(db):
    assert staff(*IMPORT_PERMISSIONS).get(IMPORT_URL).status_code == 200
    for missing in IMPORT_PERMISSIONS:
        others = [codename for codename in IMPORT_PERMISSIONS if codename != missing]
        client = staff(*others)
        assert client.get(IMPORT_URL).status_code == 403, missing
        assert paste(client, DOCUMENT).status_code == 403, missing
        get_user_model().objects.filter(is_superuser=False).delete()
    assert not Form.objects.exists()
    not_staff = staff(*IMPORT_PERMISSIONS, is_staff=False)
    assert not_staff.get(IMPORT_URL)["Location"].startswith(reverse("admin:login"))


# The export action


def export(client, *forms):
    return client.post(CHANGELIST_URL, {"action": "export_form_files", "_selected_action": [f.pk for f in forms]})


def test_exporting_one_form_downloads_its_form_file(admin_client, form):
    add_node(form, "set_flag", name="seen", config={"flag": "seen"})

    response = export(admin_client, form)

    assert response.status_code == 200
    assert response["Content-Type"] == "application/json; charset=utf-8"
    assert response["Content-Disposition"] == f'attachment; filename="{form.slug}.json"'
    assert response.content.decode() == form_export_json(form)


def test_exporting_several_forms_downloads_a_zip_of_one_file_each(admin_client, form):
    other = FormFactory(slug="another")

    response = export(admin_client, form, other)

    assert response["Content-Type"] == "application/zip"
    assert response["Content-Disposition"].startswith('attachment; filename="form-files-')
    with zipfile.ZipFile(io.BytesIO(response.content)) as bundle:
        assert sorted(bundle.namelist()) == ["another.json", f"{form.slug}.json"]
        assert json.loads(bundle.read("another.json")) == form_export(other)


def test_an_exported_file_imports_back_to_the_same_form(admin_client, form):
    add_node(form, "set_flag", name="seen", config={"flag": "seen", "value": True})
    exported = form_export(form)
    text = export(admin_client, form).content.decode()

    response = paste(admin_client, text, replace="on")

    assert response.status_code == 302
    assert form_export(Form.objects.get(slug=form.slug)) == exported


def test_exporting_needs_to_see_both_forms_and_their_trees(form):
    forms_only = staff("view_form")
    assert "export_form_files" not in forms_only.get(CHANGELIST_URL).content.decode()
    refused = export(forms_only, form)
    assert "Content-Disposition" not in refused  # nothing downloaded

    both = staff("view_form", "view_node")
    assert "export_form_files" in both.get(CHANGELIST_URL).content.decode()
    assert export(both, form)["Content-Disposition"] == f'attachment; filename="{form.slug}.json"'

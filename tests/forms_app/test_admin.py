"""The form and record admin: fields inline, links to trees and the public form, records read-only."""

from django.urls import reverse

from events.models import RECORD_UPDATE, Run
from forms_app.models import Field, Form
from tests.factories import RecordFactory, add_node

XSS = "<script>alert(1)</script>"
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"


def test_form_list_shows_links_to_public_form_and_trees(admin_client, form):
    response = admin_client.get(reverse("admin:forms_app_form_changelist"))
    assert response.status_code == 200
    content = response.content.decode()
    assert "Book a flight" in content and "booking-test" in content
    assert "/f/booking-test/" in content
    assert f"?form__id__exact={form.pk}&amp;event={RECORD_UPDATE}" in content
    assert reverse("admin:events_node_overview", args=[form.pk, RECORD_UPDATE]) in content


def test_form_change_shows_fields_inline_in_position_order(admin_client, form):
    response = admin_client.get(reverse("admin:forms_app_form_change", args=[form.pk]))
    assert response.status_code == 200
    content = response.content.decode()
    assert 'name="fields-0-name"' in content
    assert content.index('value="email"') < content.index('value="seats"') < content.index('value="status"')


def test_form_change_links_each_event_tree(admin_client, form):
    add_node(form, "set_flag", event="paid", config={"flag": "paid"})
    content = admin_client.get(reverse("admin:forms_app_form_change", args=[form.pk])).content.decode()
    assert reverse("admin:events_node_overview", args=[form.pk, RECORD_UPDATE]) in content
    assert reverse("admin:events_node_overview", args=[form.pk, "paid"]) in content


def test_form_add_page_and_save_with_a_field(admin_client, db):
    assert admin_client.get(reverse("admin:forms_app_form_add")).status_code == 200
    data = {
        "title": "Contact",
        "slug": "contact",
        "submit_label": "Send",
        "is_published": "on",
        "waiting_title": "Thanks",
        "poll_seconds": 2,
        "wait_for": "run",
        "wait_flag": "",
        "max_wait_seconds": 120,
        "done_message": "Done",
        "done_redirect_url": "",
        "failed_message": "Sorry",
        "fields-TOTAL_FORMS": 1,
        "fields-INITIAL_FORMS": 0,
        "fields-MIN_NUM_FORMS": 0,
        "fields-MAX_NUM_FORMS": 1000,
        "fields-0-position": 1,
        "fields-0-name": "email",
        "fields-0-label": "Email",
        "fields-0-type": "email",
        "fields-0-required": "on",
        "fields-0-choices": "[]",
    }
    response = admin_client.post(reverse("admin:forms_app_form_add"), data)
    assert response.status_code == 302, response.context["errors"]
    form = Form.objects.get(slug="contact")
    assert list(form.fields.values_list("name", flat=True)) == ["email"]
    assert Field.objects.get(form=form).required


def test_record_list_filters_by_form(admin_client, form):
    mine = RecordFactory(form=form)
    other = RecordFactory()
    url = reverse("admin:forms_app_record_changelist")
    content = admin_client.get(f"{url}?form__id__exact={form.pk}").content.decode()
    assert str(mine) in content and str(other) not in content
    assert admin_client.get(f"{url}?q=booking").status_code == 200


def test_record_change_shows_pretty_escaped_json_read_only_with_runs_link(admin_client, form):
    record = RecordFactory(form=form, data={"email": XSS, "seats": 2}, flags={"paid": True})
    Run.objects.create(form=form, record=record)
    response = admin_client.get(reverse("admin:forms_app_record_change", args=[record.pk]))
    assert response.status_code == 200
    content = response.content.decode()
    assert XSS not in content
    assert ESCAPED in content
    assert "&quot;paid&quot;: true" in content or '"paid": true' in content
    assert f"?record__id__exact={record.pk}" in content and "1 run<" in content
    assert 'name="_save"' not in content
    response = admin_client.post(reverse("admin:forms_app_record_change", args=[record.pk]), {"data": "{}"})
    record.refresh_from_db()
    assert record.data["seats"] == 2


def test_records_cannot_be_added_by_hand(admin_client, db):
    assert admin_client.get(reverse("admin:forms_app_record_add")).status_code == 403

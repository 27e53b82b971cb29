"""A submit's form definition: read on every request, built into objects only when its rows change."""

import pytest
from django.db import connection
from django.http import Http404
from django.test.utils import CaptureQueriesContext

from events.models import Run, TreeVersion
from forms_app.definitions import published_form, submission_class
from forms_app.models import Form, Record
from tests.factories import FieldFactory, add_node

pytestmark = pytest.mark.django_db


def test_the_same_rows_give_the_objects_built_last_time_and_still_read_the_database(form):
    first_form, first_version = published_form(form.slug)
    with CaptureQueriesContext(connection) as queries:
        again_form, again_version = published_form(form.slug)

    assert len(queries) == 1  # the definition is read on every request all the same
    assert again_form is first_form and again_version is first_version
    assert submission_class(again_form) is submission_class(first_form)


def test_an_admins_change_is_what_the_next_request_gets(form):
    before, _ = published_form(form.slug)
    before_class = submission_class(before)
    form.fields.filter(name="seats").update(label="Passengers", max_value=4)

    after, _ = published_form(form.slug)

    assert after is not before
    assert [field.label for field in after.fields.all()] == ["Email", "Passengers", "Status"]
    assert submission_class(after) is not before_class
    assert not submission_class(after)({"email": "ann@example.com", "seats": "5"}).is_valid()
    assert submission_class(before)({"email": "ann@example.com", "seats": "5"}).is_valid()  # what it was


def test_a_new_field_a_published_tree_and_unpublishing_are_each_seen(form):
    before, version = published_form(form.slug)
    assert version is None
    FieldFactory(form=form, name="city", label="City", type="text", position=9)
    with_field, _ = published_form(form.slug)
    assert "city" in submission_class(with_field)().fields and with_field is not before

    add_node(form, "set_flag", config={"flag": "done"})  # publishes version 1
    _, published = published_form(form.slug)
    assert published == TreeVersion.objects.live(form) and published.snapshot[0]["type"] == "set_flag"

    Form.objects.filter(pk=form.pk).update(is_published=False)
    with pytest.raises(Http404):
        published_form(form.slug)


def test_submits_share_the_definition_and_leave_its_snapshot_as_published(client, form):
    background = add_node(form, "background", name="later", label="Later", visible=True)
    add_node(form, "set_flag", parent=background, config={"flag": "done"})
    add_node(form, "set_flag", config={"flag": "now"})
    add_node(form, "delay", name="wait", config={"after_seconds": 600})
    published = TreeVersion.objects.live(form).snapshot

    for seats in ("1", "2"):
        response = client.post(f"/f/{form.slug}/", {"email": "ann@example.com", "seats": seats})
        assert response.status_code == 303

    _, version = published_form(form.slug)
    assert version.snapshot == published  # the walks read the shared snapshot and changed nothing in it
    runs = Run.objects.filter(record__in=Record.objects.filter(form=form))
    assert [run.snapshot for run in runs] == [published, published]
    assert sorted(record.data["seats"] for record in Record.objects.filter(form=form)) == [1, 2]


def test_a_template_calling_a_method_of_the_error_payload_changes_no_later_submit(client, form):
    """An error branch's template sees the failed step's config; calling its methods ({{ ....popitem }})
    must not change the snapshot every later submit of the version shares."""
    FieldFactory(form=form, name="caught", label="Caught", type="hidden")
    boom = add_node(form, "fail", name="boom", config={"message": "no seats", "extra": "kept"})
    add_node(
        form,
        "update_field",
        parent=boom,
        branch="on_error",
        name="catch",
        config={"field": "caught", "value": "{{ error.payload.config.popitem }}|{{ error.payload.config.clear }}"},
    )
    published = TreeVersion.objects.live(form).snapshot

    for _ in range(2):
        assert client.post(f"/f/{form.slug}/", {"email": "ann@example.com", "seats": "1"}).status_code == 303

    _, version = published_form(form.slug)
    assert version.snapshot == published
    runs = Run.objects.filter(record__form=form).order_by("created_at")
    assert [run.snapshot for run in runs] == [published, published]
    caught = [record.data["caught"] for record in Record.objects.filter(form=form)]
    last = list(published[0]["config"].items())[-1]  # PostgreSQL's jsonb orders keys its own way
    assert caught == [f"{last!r}|None", f"{last!r}|None"]  # the copy changed, both times

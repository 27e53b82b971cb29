"""Records are found in admin by what was submitted, on SQLite and PostgreSQL alike (issue 11).

The data is a JSON column: a word is matched in its text (keys and values), ``field=value`` in one
field's value. SQLite keeps the JSON text with non-ASCII characters escaped (\\u00eb), PostgreSQL
does not; quotes are escaped on both. The search finds the same records on both.
"""

import re

import pytest
from django.urls import reverse

from events.models import Run
from tests.factories import FormFactory, RecordFactory

RECORDS_URL = reverse("admin:forms_app_record_changelist")


def found(client, term):
    response = client.get(RECORDS_URL, {"q": term})
    assert response.status_code == 200
    return {int(pk) for pk in re.findall(r'name="_selected_action" value="(\d+)"', response.content.decode())}


@pytest.fixture
def records(form):
    return {
        "zoe": RecordFactory(form=form, data={"email": "zoë@example.com", "name": "Zoë Brontë", "seats": 2}),
        "ann": RecordFactory(form=form, data={"email": "ann@example.com", "note": 'say "hi" to Ann', "seats": 12}),
        "other": RecordFactory(form=FormFactory(slug="newsletter"), data={"email": "carl@example.com"}),
    }


def pks(records, *names):
    return {records[name].pk for name in names}


def test_records_are_found_by_a_submitted_value_in_any_case(admin_client, records):
    assert found(admin_client, "ann@example.com") == pks(records, "ann")
    assert found(admin_client, "ANN@EXAMPLE") == pks(records, "ann")
    assert found(admin_client, "example.com") == pks(records, "zoe", "ann", "other")


@pytest.mark.parametrize("term", ["zoë", "ZOË", "Brontë", "BRONTË"])
def test_records_are_found_by_a_value_with_non_ascii_letters(admin_client, records, term):
    assert found(admin_client, term) == pks(records, "zoe")


def test_quotes_in_a_value_are_matched_as_typed(admin_client, records):
    # Quoted, the search is one word with its spaces and inner quotes; JSON keeps them as \".
    assert found(admin_client, "'say \"hi\" to'") == pks(records, "ann")
    assert found(admin_client, '"say \\"hi\\" to"') == pks(records, "ann")
    assert found(admin_client, "'say \"hi\" to Bob'") == set()


def test_field_equals_value_searches_that_field_only(admin_client, records):
    assert found(admin_client, "email=zoë") == pks(records, "zoe")
    assert found(admin_client, "name=ann") == set()  # Ann is in the note and the email, not the name
    assert found(admin_client, "note=ANN") == pks(records, "ann")
    assert found(admin_client, "seats=12") == pks(records, "ann")
    assert found(admin_client, "email=example.com seats=2") == pks(records, "zoe", "ann")  # every word must match


def test_records_are_found_by_token_waiting_page_url_run_reference_and_form(admin_client, records):
    zoe = records["zoe"]
    run = Run.objects.create(form=zoe.form, record=zoe)

    assert found(admin_client, zoe.token) == pks(records, "zoe")
    assert found(admin_client, f"https://forms.example.com{zoe.get_absolute_url()}") == pks(records, "zoe")
    assert found(admin_client, run.reference) == pks(records, "zoe")
    assert found(admin_client, run.reference.lower()) == pks(records, "zoe")
    assert found(admin_client, "newsletter") == pks(records, "other")
    assert "field=value" in admin_client.get(RECORDS_URL).content.decode()  # the box says how

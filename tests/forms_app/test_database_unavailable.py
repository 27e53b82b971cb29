"""While the database is unreachable, a submit is a 503 that keeps what was typed (issue 8, section 3).

Not Django's 500 page: the form again, holding the user's answers, saying they were not saved.
``database_down`` (tests/conftest.py) makes queries raise OperationalError, as a restarting
PostgreSQL does.
"""

import re

import pytest

from events.models import Run
from forms_app import views
from forms_app.models import Record

pytestmark = pytest.mark.django_db

URL = "/f/booking-test/"
TYPED = {"email": "ann@example.com", "seats": "2"}
NOT_SAVED = "Your answers were not saved, please try again"


@pytest.fixture(autouse=True)
def no_known_forms(monkeypatch):
    """Each test starts with a process that has shown no form yet."""
    monkeypatch.setattr(views, "last_known_forms", {}, raising=False)


def assert_not_saved_page(response, settings):
    assert response.status_code == 503
    assert response["Retry-After"] == str(settings.EVENTS_UNAVAILABLE_RETRY_AFTER_SECONDS)
    html = response.content.decode()
    assert NOT_SAVED in html
    assert 'role="alert" id="unavailable"' in html
    assert 'name="csrfmiddlewaretoken"' in html
    return html


def test_a_submit_while_the_database_is_down_re_renders_the_form_with_what_was_typed(
    client, form, database_down, settings
):
    assert client.get(URL).status_code == 200  # the form was shown before the outage

    outage = database_down()
    response = client.post(URL, TYPED)
    outage.up()

    html = assert_not_saved_page(response, settings)
    assert "<h1>Book a flight</h1>" in html
    assert re.search(r'<input[^>]*name="email"[^>]*value="ann@example.com"', html)
    assert re.search(r'<input[^>]*name="seats"[^>]*value="2"', html)
    assert "Server Error" not in html
    assert Record.objects.count() == 0
    # Sent again once the database is back, it is stored.
    response = client.post(URL, TYPED)
    assert response.status_code == 303
    assert Record.objects.get().data["email"] == "ann@example.com"


def test_a_submit_whose_insert_fails_is_a_503_and_stores_nothing(client, form, database_down, settings):
    # The write: INSERTs, or on PostgreSQL the one WITH statement that holds them (hotsql.one_statement).
    outage = database_down(when=lambda sql: sql.lstrip().upper().startswith(("INSERT", "WITH")))
    response = client.post(URL, TYPED)
    outage.up()

    html = assert_not_saved_page(response, settings)
    assert re.search(r'<input[^>]*name="email"[^>]*value="ann@example.com"', html)
    assert (Record.objects.count(), Run.objects.count()) == (0, 0)


def test_without_the_forms_definition_what_was_typed_is_kept_in_the_page(client, form, database_down, settings):
    outage = database_down()
    response = client.post(URL, {**TYPED, "note": "<b>bold</b>"})
    outage.up()

    html = assert_not_saved_page(response, settings)
    assert '<input type="hidden" name="email" value="ann@example.com">' in html
    assert '<input type="hidden" name="seats" value="2">' in html
    assert '<input type="hidden" name="note" value="&lt;b&gt;bold&lt;/b&gt;">' in html
    assert "<dd>ann@example.com</dd>" in html
    assert ">Try again</button>" in html
    assert 'csrfmiddlewaretoken" value' not in html.split("<dl", 1)[1]  # the old token is not kept


def test_the_form_page_while_the_database_is_down_is_a_503(client, form, database_down, settings):
    outage = database_down()
    response = client.get(URL)
    outage.up()

    assert response.status_code == 503
    assert response["Retry-After"] == str(settings.EVENTS_UNAVAILABLE_RETRY_AFTER_SECONDS)
    assert "This form cannot be shown just now" in response.content.decode()


def test_the_waiting_page_while_the_database_is_down_is_a_503_that_tries_again(client, database_down, settings):
    settings.EVENTS_UNAVAILABLE_RETRY_AFTER_SECONDS = 7
    database_down()

    response = client.get("/r/abcdefghijklmnop/")

    assert response.status_code == 503
    assert response["Retry-After"] == "7"
    page = response.content.decode()
    assert '<meta http-equiv="refresh" content="7">' in page
    assert "Your submission is safe" in page


def test_the_waiting_pages_poll_while_the_database_is_down_is_an_empty_503_htmx_does_not_swap(client, database_down):
    database_down()

    response = client.get("/r/abcdefghijklmnop/status/", headers={"HX-Request": "true"})

    assert response.status_code == 503
    assert response.content == b""
    assert response["Retry-After"]

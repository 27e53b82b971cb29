"""POSTs to a public form are throttled per client address (EVENTS_FORM_POST_LIMIT per window).

Every POST counts, valid or not. Past the limit the form answers 429 with Retry-After: the form
again, holding what was typed, and a message that says nothing was saved and how long to wait.
"""

import re

import pytest
from django.core.cache import cache

from events.models import Run
from forms_app.models import Record

LIMIT = 2
WINDOW = 60
URL = "/f/booking-test/"
TYPED = {"email": "ann@example.com", "seats": "3"}


@pytest.fixture(autouse=True)
def limits(db, settings, throttle_clock):
    settings.EVENTS_FORM_POST_LIMIT = LIMIT
    settings.EVENTS_FORM_POST_WINDOW_SECONDS = WINDOW
    cache.clear()
    yield settings
    cache.clear()


def test_past_the_limit_the_form_answers_429_with_what_was_typed_and_stores_nothing(client, form):
    assert client.post(URL, {"email": "", "seats": "12"}).status_code == 200  # invalid: counted all the same
    assert client.post(URL, TYPED).status_code == 303

    response = client.post(URL, TYPED)

    assert response.status_code == 429
    wait = int(response["Retry-After"])
    assert 1 <= wait <= WINDOW
    html = response.content.decode()
    assert re.search(
        r'<div class="errors" role="alert" id="throttled">Your answers were not saved: too many forms '
        rf"were sent from your address in a short time\. Please wait {wait} seconds, then send the form "
        r"again\.</div>",
        html,
    )
    assert re.search(r'<input type="email" name="email" value="ann@example.com"', html)
    assert re.search(r'<input type="number" name="seats" value="3"', html)
    assert 'name="csrfmiddlewaretoken"' in html
    assert (Record.objects.count(), Run.objects.count()) == (1, 1)


def test_showing_the_form_is_never_throttled(client, form):
    for _ in range(LIMIT):
        client.post(URL, TYPED)

    assert client.get(URL).status_code == 200
    assert client.post(URL, TYPED).status_code == 429


def test_the_limit_is_per_client_address(client, form):
    for _ in range(LIMIT):
        assert client.post(URL, TYPED, REMOTE_ADDR="192.0.2.1").status_code == 303

    assert client.post(URL, TYPED, REMOTE_ADDR="192.0.2.1").status_code == 429
    assert client.post(URL, TYPED, REMOTE_ADDR="192.0.2.2").status_code == 303


def test_a_limit_of_0_turns_the_throttle_off(client, form, settings):
    settings.EVENTS_FORM_POST_LIMIT = 0

    for _ in range(3 * LIMIT):
        assert client.post(URL, TYPED).status_code == 303
    assert Record.objects.count() == 3 * LIMIT

"""Every word a visitor reads on the public pages goes through gettext (English is the only language shipped).

A stand-in catalogue that SHOUTS (every gettext, ngettext and pgettext returns its text in capitals,
placeholders kept) is put in place of the active translation; each page is rendered with an admin
who also wrote in capitals (the form's title, labels, messages). A lowercase letter left in a text
node, a <title> or an aria-label is then a text that did not go through gettext.
"""

import re
from html.parser import HTMLParser

import pytest
from django.core.cache import cache
from django.template.loader import render_to_string
from django.test import Client
from django.utils import translation

from events.engine import run_cancel
from events.models import Run
from forms_app import views
from forms_app.services import record_submit
from tests.factories import FieldFactory, FormFactory, add_node

PLACEHOLDER = re.compile(r"(%\(\w+\)[sd]|%[sd]|%%|\{\w*\})")
READ_ATTRIBUTES = ("aria-label", "title", "placeholder", "alt")
SKIPPED_ELEMENTS = {"script", "style", "code"}  # code: a run's reference, quoted as it is


def shout(text):
    return "".join(part if PLACEHOLDER.fullmatch(part) else part.upper() for part in PLACEHOLDER.split(str(text)))


@pytest.fixture
def shouting_catalogue(monkeypatch):
    trans = translation._trans
    monkeypatch.setattr(trans, "gettext", lambda message: shout(message))
    monkeypatch.setattr(trans, "ngettext", lambda singular, plural, n: shout(singular if n == 1 else plural))
    monkeypatch.setattr(trans, "pgettext", lambda context, message: shout(message))
    monkeypatch.setattr(trans, "npgettext", lambda context, singular, plural, n: shout(singular if n == 1 else plural))


class ReadText(HTMLParser):
    """The texts a visitor reads or hears: text nodes and the attributes read out, minus the skipped elements."""

    def __init__(self):
        super().__init__()
        self.texts, self.skipping = [], []

    def handle_starttag(self, tag, attrs):
        if tag in SKIPPED_ELEMENTS:
            self.skipping.append(tag)
        self.texts += [value for name, value in attrs if name in READ_ATTRIBUTES and value]

    def handle_endtag(self, tag):
        if self.skipping and self.skipping[-1] == tag:
            self.skipping.pop()

    def handle_data(self, data):
        if not self.skipping and data.strip():
            self.texts.append(data.strip())


def untranslated(html):
    parser = ReadText()
    parser.feed(html)
    return [text for text in parser.texts if re.search(r"[a-z]", text)]


@pytest.fixture
def loud_form(db):
    """A form whose admin wrote everything in capitals: what is left in lowercase comes from us."""
    form = FormFactory(
        slug="loud",
        title="BOOK A FLIGHT",
        description="TWO QUESTIONS",
        submit_label="SEND",
        waiting_title="PLEASE WAIT",
        done_message="ALL BOOKED",
        failed_message="SORRY",
        poll_seconds=1,
        max_wait_seconds=3600,
    )
    FieldFactory(form=form, name="email", label="EMAIL", type="email", required=True, help_text="WE WRITE TO IT")
    FieldFactory(form=form, name="seats", label="SEATS", type="integer", min_value=1, max_value=9)
    FieldFactory(form=form, name="code", label="CODE", type="text", pattern="[A-Z]+")
    FieldFactory(form=form, name="meals", label="MEALS", type="multiple_choice", choices=["FISH", "PASTA"])
    return form


def submitted(form, *nodes):
    for node_type, config in nodes:
        add_node(form, node_type, label="A STEP", visible=True, config=config)
    return record_submit(form=form, data={"email": "ANN@EXAMPLE.COM", "seats": 2, "code": "", "meals": []})


def pages_of_the_waiting_page(client, record):
    return [
        client.get(f"/r/{record.token}/").content.decode(),
        client.get(f"/r/{record.token}/status/").content.decode(),
    ]


def test_the_public_form_page_and_its_errors_are_all_translated(client, loud_form, shouting_catalogue):
    blank = client.get("/f/loud/").content.decode()
    invalid = client.post("/f/loud/", {"email": "not an address", "seats": "12", "code": "x1", "meals": ["SOUP"]})

    assert "SEND" in blank
    assert untranslated(blank) == []
    html = invalid.content.decode()
    assert "ENTER A VALID EMAIL ADDRESS." in html and "ENTER A VALUE MATCHING [A-Z]+." in html
    assert untranslated(html) == []


def test_the_throttled_form_is_translated(client, loud_form, shouting_catalogue, settings, throttle_clock):
    settings.EVENTS_FORM_POST_LIMIT = 1
    cache.clear()
    client.post("/f/loud/", {"email": ""})

    response = client.post("/f/loud/", {"email": ""})

    assert response.status_code == 429
    assert untranslated(response.content.decode()) == []
    cache.clear()


def test_the_form_page_without_its_database_is_translated(client, loud_form, shouting_catalogue, database_down):
    views.last_known_forms.pop("loud", None)
    outage = database_down()

    response = client.get("/f/loud/")
    outage.up()

    assert response.status_code == 503
    assert untranslated(response.content.decode()) == []


def test_the_waiting_page_is_translated_in_every_state(client, loud_form, shouting_catalogue, settings):
    working = submitted(loud_form, ("delay", {"after_seconds": 600}))
    failed = submitted(FormFactory(slug="f", title="F", failed_message="SORRY"), ("fail", {"message": "no"}))
    done = submitted(FormFactory(slug="d", title="D", done_message="ALL BOOKED"), ("set_flag", {"flag": "x"}))
    cancelled = submitted(FormFactory(slug="c", title="C"), ("delay", {"after_seconds": 600}))
    run_cancel(run=Run.objects.get(record=cancelled))
    overdue = submitted(
        FormFactory(slug="o", title="O", waiting_title="O", max_wait_seconds=0), ("delay", {"after_seconds": 600})
    )

    for record in (working, failed, done, cancelled, overdue):
        for html in pages_of_the_waiting_page(client, record):
            assert untranslated(html) == [], (record.form.slug, html)


def test_the_waiting_page_without_its_database_is_translated(client, loud_form, shouting_catalogue, database_down):
    record = submitted(loud_form)
    outage = database_down()

    response = client.get(f"/r/{record.token}/")
    outage.up()

    assert response.status_code == 503
    assert untranslated(response.content.decode()) == []


@pytest.mark.parametrize("template", ["400.html", "403.html", "403_csrf.html", "404.html", "500.html"])
def test_the_error_pages_are_translated(template, shouting_catalogue):
    assert untranslated(render_to_string(template)) == []


def test_a_page_not_found_is_translated(db, shouting_catalogue):
    response = Client().get("/f/no-such-form/")

    assert response.status_code == 404
    assert untranslated(response.content.decode()) == []


def test_without_the_stand_in_the_pages_read_in_english(client, loud_form):
    """The check above can fail: an untranslated catalogue leaves lowercase words."""
    assert "Error:" in client.post("/f/loud/", {}).content.decode()
    assert untranslated(client.post("/f/loud/", {}).content.decode())

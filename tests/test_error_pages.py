"""The pages people see when something goes wrong, with DEBUG off (as pytest-django runs): the site's own.

404, 500, a refused CSRF token and the favicon on the public pages; the API's JSON envelope under
/api/. The 500 page is rendered without the request (Django's server_error view), so it must hold
when what broke is the request's own rendering (a context processor).
"""

from pathlib import Path

import pytest
from django.contrib.staticfiles import finders
from django.test import Client

from forms_app import views

pytestmark = pytest.mark.django_db

ICO_HEADER = b"\x00\x00\x01\x00"


def broken_context_processor(request):
    raise RuntimeError("a context processor that fails on every page")


def assert_site_page(response, status, heading):
    assert response.status_code == status
    assert response["Content-Type"].startswith("text/html")
    html = response.content.decode()
    assert f"<h1>{heading}</h1>" in html
    assert '<link rel="stylesheet" href="/static/css/site.css">' in html
    assert '<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">' in html
    assert "<script" not in html  # no script: no nonce needed, nothing of the request
    return html


def test_an_unknown_public_page_is_the_sites_404(client, form):
    for path in ("/f/no-such-form/", "/r/no-such-token/", "/nothing-here"):
        response = client.get(path)

        html = assert_site_page(response, 404, "This page does not exist")
        assert "Not Found</h1>" not in html  # not Django's bare page


def test_an_unknown_api_path_is_the_json_envelope_not_the_404_page(client):
    response = client.get("/api/no-such-endpoint")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_an_error_in_a_public_view_is_the_sites_500(form, monkeypatch):
    def fails(token):
        raise RuntimeError("the waiting page broke")

    monkeypatch.setattr(views, "submission_of", fails)

    response = Client(raise_request_exception=False).get("/r/some-token/")

    html = assert_site_page(response, 500, "Something went wrong on our side")
    assert "the waiting page broke" not in html


def test_the_500_page_renders_when_the_request_context_itself_is_broken(form, settings):
    engine = settings.TEMPLATES[0]
    processors = [*engine["OPTIONS"]["context_processors"], "tests.test_error_pages.broken_context_processor"]
    settings.TEMPLATES = [{**engine, "OPTIONS": {**engine["OPTIONS"], "context_processors": processors}}]

    response = Client(raise_request_exception=False).get("/f/booking-test/")

    assert_site_page(response, 500, "Something went wrong on our side")


def test_a_form_sent_without_its_csrf_token_says_nothing_was_saved_in_the_sites_style(form):
    response = Client(enforce_csrf_checks=True).post("/f/booking-test/", {"email": "ann@example.com", "seats": "2"})

    assert_site_page(response, 403, "Your answers were not sent")


def test_the_favicon_is_served_at_the_root_and_named_by_the_pages(client, form):
    icon = client.get("/favicon.ico")

    assert icon.status_code == 200
    assert b"".join(icon.streaming_content).startswith(ICO_HEADER)
    svg = finders.find("favicon.svg")  # collectstatic's source (the tests serve no finder's files)
    assert svg and "<svg" in Path(svg).read_text()
    page = client.get("/f/booking-test/").content.decode()
    assert '<link rel="icon" href="/favicon.ico" sizes="32x32">' in page
    assert '<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">' in page

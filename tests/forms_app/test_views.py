import datetime
import re

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from events.models import Run
from forms_app.models import Record
from forms_app.services import record_submit
from tests.factories import FieldFactory, FormFactory, add_node

VALID = {"email": "ann@example.com", "seats": "2"}


def stored():
    return Record.objects.count(), Run.objects.count()


def submit_inline_only(form, **data):
    """record_submit alone: the inline phase runs; after-commit hand-offs never do (the test never commits)."""
    return record_submit(form=form, data={"email": "ann@example.com", "seats": 2, "status": "", **data})


def wait_url(record):
    return f"/r/{record.token}/"


def status_url(record):
    return f"/r/{record.token}/status/"


def add_pending_delay(form, **fields):
    """A delay due in ten minutes: the run stays working for the whole test."""
    return add_node(form, "delay", config={"after_seconds": 600}, **fields)


# The public form page


def test_form_page_renders_shown_fields_and_a_csrf_token(client, form):
    response = client.get("/f/booking-test/")

    assert response.status_code == 200
    html = response.content.decode()
    assert "<h1>Book a flight</h1>" in html
    assert 'name="email"' in html
    assert 'name="seats"' in html
    assert 'name="status"' not in html
    assert 'name="csrfmiddlewaretoken"' in html


def test_invalid_input_re_renders_the_form_with_errors_per_field_and_stores_nothing(client, form):
    response = client.post("/f/booking-test/", {"email": "", "seats": "12"})

    assert response.status_code == 200
    html = response.content.decode()
    assert re.search(r'id="id_email_error">.*This field is required\.', html, re.S)
    assert re.search(r'id="id_seats_error">.*Ensure this value is less than or equal to 9\.', html, re.S)
    assert 'value="12"' in html
    assert stored() == (0, 0)


def test_a_valid_submit_stores_the_record_and_answers_303_to_its_waiting_page(client, form):
    response = client.post("/f/booking-test/", VALID)

    record = Record.objects.get()
    assert response.status_code == 303
    assert response["Location"] == wait_url(record)
    assert record.form == form
    assert record.data == {"email": "ann@example.com", "seats": 2, "status": ""}
    assert Run.objects.get().record == record


def test_a_post_without_any_field_shows_the_required_errors(client, form):
    response = client.post("/f/booking-test/", {})

    assert response.status_code == 200
    assert re.search(r'id="id_email_error">.*This field is required\.', response.content.decode(), re.S)
    assert stored() == (0, 0)


@pytest.mark.parametrize("method", ["get", "post"])
def test_an_unpublished_form_is_not_found(client, form, method):
    form.is_published = False
    form.save()

    response = getattr(client, method)("/f/booking-test/", VALID)

    assert response.status_code == 404
    assert stored() == (0, 0)


@pytest.mark.parametrize("method", ["get", "post"])
def test_an_unknown_form_is_not_found(client, db, method):
    assert getattr(client, method)("/f/no-such-form/", VALID).status_code == 404


def test_a_post_without_a_csrf_token_is_refused_and_stores_nothing(form):
    response = Client(enforce_csrf_checks=True).post("/f/booking-test/", VALID)

    assert response.status_code == 403
    assert stored() == (0, 0)


def test_a_post_with_the_csrf_token_from_the_page_is_accepted(form):
    browser = Client(enforce_csrf_checks=True)
    page = browser.get("/f/booking-test/").content.decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)

    response = browser.post("/f/booking-test/", {**VALID, "csrfmiddlewaretoken": token})

    assert response.status_code == 303
    assert stored() == (1, 1)


# The waiting page


@pytest.mark.parametrize("url", ["/r/no-such-token/", "/r/no-such-token/status/"])
def test_an_unknown_record_token_is_not_found(client, db, url):
    assert client.get(url).status_code == 404


def test_the_waiting_page_is_reached_by_an_unguessable_token_only(client, form):
    record = submit_inline_only(form)

    assert len(record.token) >= 32
    assert client.get(wait_url(record)).status_code == 200
    assert client.get(f"/r/{record.pk}/").status_code == 404
    assert client.get(f"/r/{record.token[:-1]}/").status_code == 404


def test_the_waiting_page_polls_and_refreshes_without_javascript_while_working(client, form):
    form.poll_seconds = 3
    form.save()
    add_pending_delay(form)
    record = submit_inline_only(form)

    response = client.get(wait_url(record))

    assert response.status_code == 200
    html = response.content.decode()
    assert '<noscript><meta http-equiv="refresh" content="3"></noscript>' in html
    assert f'hx-get="{status_url(record)}?shown=' in html
    assert 'hx-trigger="every 3s"' in html
    assert 'data-state="working"' in html
    assert "Working on it" in html


def test_the_status_partial_is_only_the_status_section(client, form):
    add_pending_delay(form)
    record = submit_inline_only(form)

    response = client.get(status_url(record), headers={"HX-Request": "true"})

    assert response.status_code == 200
    html = response.content.decode().strip()
    assert html.startswith('<section id="status"')
    assert html.endswith("</section>")
    assert html.count("<section") == 1
    assert "<html" not in html
    assert "<noscript" not in html
    assert 'hx-trigger="every 2s"' in html
    assert f'hx-get="{status_url(record)}?shown=' in html  # the next poll asks the same address


def test_a_poll_under_the_sites_prefix_asks_the_same_address_next(client, form):
    """Served under a path prefix (SCRIPT_NAME), a poll's next address keeps it."""
    add_pending_delay(form)
    record = submit_inline_only(form)

    poll = client.get(status_url(record), SCRIPT_NAME="/forms", headers={"HX-Request": "true"}).content.decode()

    assert f'hx-get="/forms{status_url(record)}?shown=' in poll


def test_the_waiting_page_shows_visible_steps_with_their_state(client, form):
    delay = add_pending_delay(form, label="Confirm the seats", visible=True)
    add_node(form, "update_field", parent=delay, label="Invisible", config={"field": "status", "value": "x"})
    add_node(form, "set_subtext", label="Say hello", visible=True, config={"text": "Checking availability"})
    record = submit_inline_only(form)

    html = client.get(status_url(record)).content.decode()

    assert re.search(r'step-label">Confirm the seats</span> <span class="step-state">queued', html)
    assert re.search(r'step-label">Say hello</span> <span class="step-state">done', html)
    assert "Invisible" not in html
    assert '<p class="subtext">Checking availability</p>' in html
    assert '<progress value="33"' in html


def test_progress_texts_made_from_submitted_values_are_escaped(client, form):
    add_node(form, "set_subtext", label="Hello", visible=True, config={"text": "Hello {{ record.email }}"})
    add_pending_delay(form)
    record = submit_inline_only(form, email="<b>ann</b>@example.com")

    html = client.get(status_url(record)).content.decode()

    assert "Hello &lt;b&gt;ann&lt;/b&gt;@example.com" in html
    assert "<b>ann</b>" not in html


def assert_finished_markup(html):
    assert "hx-trigger" not in html
    assert "hx-get" not in html
    assert "<noscript" not in html
    assert 'http-equiv="refresh"' not in html


def test_a_submit_without_background_work_is_done_at_once_and_never_polls(client, form):
    form.done_message = "Booked, {{ record.email }} ({{ record.seats }} seats)"
    form.save()
    add_node(form, "update_field", config={"field": "status", "value": "received"})
    record = submit_inline_only(form)

    page = client.get(wait_url(record)).content.decode()
    partial = client.get(status_url(record)).content.decode()

    for html in (page, partial):
        assert_finished_markup(html)
        assert 'data-state="done"' in html
        assert '<div class="message done">Booked, ann@example.com (2 seats)</div>' in html


def test_the_done_message_escapes_submitted_values(client, form):
    FieldFactory(form=form, name="name", label="Name", type="text")
    form.done_message = "Thanks, {{ record.name }}"
    form.save()

    response = client.post("/f/booking-test/", {**VALID, "name": "<script>alert(1)</script>"}, follow=True)

    html = response.content.decode()
    assert "Thanks, &lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script>alert(1)" not in html


def test_a_failed_run_shows_the_failed_message_and_the_run_reference(client, form):
    form.failed_message = "We could not book your seats."
    form.save()
    add_node(form, "fail", config={"message": "no seats"})
    add_pending_delay(form)
    record = submit_inline_only(form)
    reference = Run.objects.get(record=record).reference

    page = client.get(wait_url(record)).content.decode()
    partial = client.get(status_url(record)).content.decode()

    for html in (page, partial):
        assert_finished_markup(html)
        assert 'data-state="failed"' in html
        assert "We could not book your seats." in html
        assert f"<code>{reference}</code>" in html
        assert "no seats" not in html


def test_a_cancelled_run_shows_as_cancelled(client, form):
    from events.engine import run_cancel

    add_pending_delay(form)
    record = submit_inline_only(form)
    run_cancel(run=Run.objects.get(record=record))

    html = client.get(status_url(record)).content.decode()

    assert_finished_markup(html)
    assert 'data-state="cancelled"' in html


def test_waiting_for_a_flag_is_done_when_the_flag_is_set_although_delays_are_pending(client, form):
    form.wait_for = form.WaitFor.FLAG
    form.wait_flag = "paid"
    form.save()
    add_node(form, "set_flag", config={"flag": "paid", "value": True})
    add_pending_delay(form)
    record = submit_inline_only(form)

    html = client.get(status_url(record)).content.decode()

    assert Run.objects.get(record=record).status == Run.Status.RUNNING
    assert_finished_markup(html)
    assert 'data-state="done"' in html


def test_waiting_for_a_flag_keeps_polling_while_the_flag_is_unset_although_the_run_is_complete(client, form):
    form.wait_for = form.WaitFor.FLAG
    form.wait_flag = "paid"
    form.save()
    add_node(form, "update_field", config={"field": "status", "value": "received"})
    record = submit_inline_only(form)

    html = client.get(status_url(record)).content.decode()

    assert Run.objects.get(record=record).status == Run.Status.COMPLETE
    assert 'data-state="working"' in html
    assert 'hx-trigger="every 2s"' in html


def test_past_the_maximum_wait_the_page_says_so_and_polls_more_slowly(client, form):
    form.max_wait_seconds = 60
    form.poll_seconds = 2
    form.save()
    add_pending_delay(form)
    record = submit_inline_only(form)
    Record.objects.filter(pk=record.pk).update(created_at=timezone.now() - datetime.timedelta(seconds=61))

    page = client.get(wait_url(record)).content.decode()
    partial = client.get(status_url(record)).content.decode()

    assert '<meta http-equiv="refresh" content="10">' in page
    for html in (page, partial):
        assert "This is taking longer than usual" in html
        assert 'hx-trigger="every 10s"' in html


def test_before_the_maximum_wait_the_page_is_not_overdue(client, form):
    form.max_wait_seconds = 60
    form.save()
    add_pending_delay(form)
    record = submit_inline_only(form)
    Record.objects.filter(pk=record.pk).update(created_at=timezone.now() - datetime.timedelta(seconds=50))

    html = client.get(status_url(record)).content.decode()

    assert "taking longer" not in html
    assert 'hx-trigger="every 2s"' in html


def test_a_done_redirect_url_redirects_the_page_and_the_partial(client, form):
    form.done_redirect_url = "https://example.com/thanks"
    form.save()
    record = submit_inline_only(form)

    page = client.get(wait_url(record))
    partial = client.get(status_url(record), headers={"HX-Request": "true"})

    assert page.status_code == 302
    assert page["Location"] == "https://example.com/thanks"
    assert partial.status_code == 200
    assert partial["HX-Redirect"] == "https://example.com/thanks"


def test_a_done_redirect_url_waits_until_the_run_is_done(client, form):
    form.done_redirect_url = "https://example.com/thanks"
    form.save()
    add_pending_delay(form)
    record = submit_inline_only(form)

    assert client.get(wait_url(record)).status_code == 200
    assert "HX-Redirect" not in client.get(status_url(record))


def record_with_visible_steps(count):
    form = FormFactory()
    FieldFactory(form=form, name="email", type="email")
    for number in range(count):
        add_pending_delay(form, label=f"Step {number}", visible=True)
    return record_submit(form=form, data={"email": "ann@example.com"})


def count_queries(client, url):
    with CaptureQueriesContext(connection) as queries:
        response = client.get(url)
    assert response.status_code == 200
    return len(queries), response.content.decode()


def test_the_status_partial_costs_the_same_queries_for_one_task_and_for_a_hundred(client, db):
    one, hundred = record_with_visible_steps(1), record_with_visible_steps(100)

    queries_one, html_one = count_queries(client, status_url(one))
    queries_hundred, html_hundred = count_queries(client, status_url(hundred))

    assert html_one.count('class="step step-queued"') == 1
    assert html_hundred.count('class="step step-queued"') == 100
    assert queries_hundred == queries_one
    assert queries_one == 1  # the record with its form, its run and its tasks


def test_the_status_partial_places_an_error_branch_that_ran_under_its_step(client, db):
    form = FormFactory()
    FieldFactory(form=form, name="email", type="email")
    boom = add_node(form, "fail", label="Boom", visible=True, config={"message": "x"})
    add_node(form, "set_subtext", parent=boom, branch="on_error", label="Caught", visible=True, config={"text": "ok"})
    add_node(form, "set_flag", label="After", visible=True, config={"flag": "after"})
    add_pending_delay(form, label="Later", visible=True)
    record = record_submit(form=form, data={"email": "ann@example.com"})

    queries, html = count_queries(client, status_url(record))

    labels = re.findall(r'class="step-label">([^<]+)<', html)
    assert labels == ["Boom", "Caught", "After", "Later"]  # the error step in its place, not last
    assert queries == 1  # as without an error branch


def test_the_waiting_page_costs_the_same_queries_for_one_task_and_for_a_hundred(client, db):
    one, hundred = record_with_visible_steps(1), record_with_visible_steps(100)

    queries_one, _ = count_queries(client, wait_url(one))
    queries_hundred, _ = count_queries(client, wait_url(hundred))

    assert queries_hundred == queries_one


def test_healthz_answers_ok(client, db):
    response = client.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_a_failed_step_that_its_error_branch_handled_shows_as_failed_and_handled(client, form):
    failing = add_node(form, "fail", label="Add loyalty miles", visible=True, config={"message": "down"})
    add_node(form, "set_subtext", parent=failing, branch="on_error", config={"text": "Miles later"})
    add_node(form, "fail", label="Unhandled", visible=True, config={"message": "really down"})

    record = record_submit(form=form, data={"email": "a@example.com"})
    html = client.get(f"/r/{record.token}/status/", HTTP_HX_REQUEST="true").content.decode()

    assert re.search(
        r'step-failed-handled"><span class="step-label">Add loyalty miles</span> '
        r'<span class="step-state">failed — handled',
        html,
    )
    assert re.search(r'step-failed"><span class="step-label">Unhandled</span> <span class="step-state">failed', html)

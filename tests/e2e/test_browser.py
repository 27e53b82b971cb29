"""The demo booking form in a real browser, served by live_server, with a real worker process.

With JavaScript, htmx polls the status partial and swaps the finished status
in without reloading the page; without it, the <noscript> meta refresh reloads
the page until it is done. The demo's seat check calls the stand-in external
service on the live server (see test_callback_demo.py), so both processes get
the live server as their public URL.
"""

import pytest

from events import engine
from events.models import Run
from forms_app.models import Record
from forms_app.waiting import render_message

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("e2e"), pytest.mark.django_db(transaction=True)]

DONE_TIMEOUT_MS = 30_000
BOOKING = {
    "name": "Ada Lovelace",
    "email": "ada@example.com",
    "origin": "London",
    "destination": "Turin",
    "departure": "2031-05-04",
    "seats": "2",
    "notes": "Window seat, please",
}


@pytest.fixture
def worker_env(demo_service):
    """The demo's seat check calls the stand-in service on the live server, which calls back."""
    return demo_service


def submit_booking(page, live_server):
    page.goto(f"{live_server.url}/f/booking/")
    for name, value in BOOKING.items():
        page.fill(f"[name={name}]", value)
    page.select_option("[name=cabin]", label="Business")
    with page.expect_navigation():
        page.click("button[type=submit]")
    assert "/r/" in page.url, f"the form did not redirect to the waiting page:\n{page.content()}"
    return Record.objects.get(form__slug="booking")


def assert_shows_visible_steps(page, record):
    run = Run.objects.get(record=record, is_submission=True)
    # Error branches in place; the steps of a container not started yet from the snapshot (the same
    # labels whether or not the worker has started it by the time the page is read).
    tasks = list(run.tasks.all())
    steps = [(task.node_id, task.position, task.label, task.visible) for task in tasks]
    steps += [
        (node["id"], position, node.get("label", ""), node.get("visible", False))
        for node, _, position in engine.steps_not_started(run.snapshot, tasks)
    ]
    expected = [label for _, _, label, visible in run.in_tree_order(steps, key=lambda step: step[:2]) if visible]
    assert expected, "the demo tree marks no step as visible"
    assert page.locator("#status .steps .step-label").all_inner_texts() == expected


def assert_done(page, record):
    record.refresh_from_db()
    assert record.flags.get("booked") is True
    message = page.locator("#status .message.done")
    assert message.inner_text().strip() == render_message(record.form.done_message, record).strip()
    assert page.locator("#status").get_attribute("hx-trigger") is None
    # The demo's loyalty programme is always down: its error branch took care of it, and the page says so.
    states = dict(
        zip(
            page.locator("#status .steps .step-label").all_inner_texts(),
            page.locator("#status .steps .step-state").all_inner_texts(),
            strict=True,
        )
    )
    assert states["Add loyalty miles"] == "failed — handled"


def test_waiting_page_turns_done_without_reloading(live_server, worker, booking, page):
    record = submit_booking(page, live_server)

    assert record.data["name"] == BOOKING["name"]
    assert record.data["cabin"] == "Business"
    assert page.url == f"{live_server.url}{record.get_absolute_url()}"
    assert page.locator("#status").get_attribute("data-state") == "working"
    assert_shows_visible_steps(page, record)

    # Anything that reloads or leaves the page would lose this marker and count a navigation.
    page.evaluate("window.__e2eMarker = 'still here'")
    navigations = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url) if frame == page.main_frame else None)
    polls = []
    page.on("request", lambda request: polls.append(request.url) if "/status/?shown=" in request.url else None)

    page.wait_for_selector('#status[data-state="done"]', timeout=DONE_TIMEOUT_MS)

    assert page.evaluate("window.__e2eMarker") == "still here"
    assert navigations == []
    assert polls, "htmx never polled the status partial"
    assert_done(page, record)
    assert_shows_visible_steps(page, record)
    # The finished markup has no trigger: polling stops.
    polled = len(polls)
    page.wait_for_timeout(2.5 * 1000 * max(1, booking.poll_seconds))
    assert len(polls) == polled


def test_waiting_page_refreshes_itself_to_done_without_javascript(live_server, worker, booking, page_without_js):
    page = page_without_js
    record = submit_booking(page, live_server)

    assert page.locator("#status").get_attribute("data-state") == "working"
    assert page.locator('noscript meta[http-equiv="refresh"]').count() == 1
    assert_shows_visible_steps(page, record)
    loads = []
    page.on("load", lambda loaded: loads.append(loaded.url))

    page.wait_for_selector('#status[data-state="done"]', timeout=DONE_TIMEOUT_MS)

    assert loads, "the page got to done without reloading itself"
    assert page.url == f"{live_server.url}{record.get_absolute_url()}"
    assert_done(page, record)
    assert page.locator('meta[http-equiv="refresh"]').count() == 0
    assert_shows_visible_steps(page, record)

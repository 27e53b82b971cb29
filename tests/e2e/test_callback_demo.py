"""The demo's waiting step, end to end: browser, live server, real worker, the stand-in service over HTTP.

The demo form's "Checking seat availability" step (an http_request that waits for
a callback) runs in the worker and POSTs to the stand-in service on the live
server (127.0.0.1). The stand-in queues a job; the worker runs it, and it sends two
progress updates through the PUT endpoint, then the callback with the seat. The
browser watches the step wait for a reply, its progress text change, and the page
turn to done with the seat from the callback's output.
"""

import time

import pytest
from playwright.sync_api import expect

from events.models import RunTask
from tests.e2e.test_browser import BOOKING, submit_booking

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("e2e"), pytest.mark.django_db(transaction=True)]

STEP = "Checking seat availability"
STEP_SECONDS = 2.0  # between the stand-in's calls: each progress text stays up for two 1 s polls
WAITING_TIMEOUT_MS = 20_000
WATCH_SECONDS = 40
DONE_TIMEOUT_MS = 30_000


@pytest.fixture
def worker_env(demo_service, settings):
    settings.EVENTS_DEMO_SERVICE_STEP_SECONDS = STEP_SECONDS
    return demo_service


def step_state(page):
    return page.locator("#status .step", has=page.get_by_text(STEP, exact=True)).locator(".step-state")


def watch_subtexts(page, *, timeout):
    """Every distinct progress text the page shows, in order, until the page is done (bounded)."""
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if page.locator('#status[data-state="done"]').count():
            return seen
        for text in page.locator("#status p.subtext").all_inner_texts():
            if text.strip() and (not seen or seen[-1] != text.strip()):
                seen.append(text.strip())
        time.sleep(0.1)
    pytest.fail(f"The page was not done after {timeout} s; it showed the progress texts {seen}")


def test_the_waiting_step_shows_progress_then_the_page_turns_done_with_the_seat(live_server, worker, booking, page):
    record = submit_booking(page, live_server)
    navigations = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url) if frame == page.main_frame else None)

    expect(step_state(page)).to_have_text("waiting for a reply", timeout=WAITING_TIMEOUT_MS)
    subtexts = watch_subtexts(page, timeout=WATCH_SECONDS)

    # The two progress updates, in order (the callback's own text may follow them).
    progress = [text for text in subtexts if text in ("Checking seat availability…", "Holding seat 14C…")]
    assert progress == ["Checking seat availability…", "Holding seat 14C…"], subtexts
    page.wait_for_selector('#status[data-state="done"]', timeout=DONE_TIMEOUT_MS)
    assert navigations == [], "the page reloaded or left instead of swapping in the new status"
    message = page.locator("#status .message.done").inner_text()
    assert f"Your booking is confirmed, {BOOKING['name']}: your seat is 14C." in message
    assert step_state(page).inner_text() == "done"
    assert (
        page.locator("#status .step", has=page.get_by_text(STEP, exact=True)).locator(".step-subtext").inner_text()
        == "Seat 14C held"
    )

    record.refresh_from_db()
    assert record.data["seat"] == "14C" and record.flags.get("booked") is True
    task = RunTask.objects.get(run__record=record, name="check_seat")
    assert task.status == RunTask.Status.COMPLETE
    assert task.output["seat"] == "14C" and task.output["status_code"] == 202
    assert "Seat 14C held for 15 minutes" in [line["line"] for line in task.logs]
    assert "Traceback" not in worker.output()

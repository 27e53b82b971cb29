"""Changing the live demo tree safely, in a real browser with a real worker (issue 12's "done when").

An admin edits a draft of the demo tree (a new confirmation subject, the follow-up email removed),
sees the impact preview list the waiting follow-up delay of a booking made before, test-runs the
draft against that booking (the captured email has the new subject; no email is sent), replays 20
bookings (the subject change shows on all 20), and publishes. A new booking runs the new version;
the booking made before finishes on its own version, follow-up email included.
"""

import time

import pytest
from django.core import mail
from django.urls import reverse
from django.utils import timezone
from playwright.sync_api import expect

from demo.management.commands.demo import ADMIN_PASSWORD, ADMIN_USERNAME
from events.models import Node, Run, RunTask, TreeVersion
from events.versions import tree_publish
from forms_app.models import Record
from tests.e2e.test_browser import BOOKING, submit_booking
from tests.e2e.test_tree_builder import publish

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("e2e"), pytest.mark.django_db(transaction=True)]

NEW_SUBJECT = "Booked: {{ record.origin }} to {{ record.destination }}"
DONE_TIMEOUT_MS = 40_000
REPLAY_TIMEOUT_MS = 60_000
PAST_BOOKINGS = 19  # and the one made in the browser: 20


@pytest.fixture
def worker_env(demo_service):
    return demo_service


def wait_for(condition, *, what, seconds=30):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    pytest.fail(f"{what} did not happen within {seconds} s")


def test_a_draft_is_previewed_tested_replayed_and_published_while_an_older_run_keeps_its_version(
    live_server, worker, booking, page
):
    # The demo's follow-up waits an hour (not 10 s), so that it is still waiting when the admin looks.
    Node.objects.filter(form=booking, name="follow_up").update(config={"rule": "after", "after_seconds": 3600})
    before = tree_publish(form=booking, note="the follow-up an hour later")

    # A booking made before the change: it runs to its booked flag, and its follow-up delay waits.
    earlier = submit_booking(page, live_server)
    page.wait_for_selector('#status[data-state="done"]', timeout=DONE_TIMEOUT_MS)
    earlier_run = Run.objects.get(record=earlier, is_submission=True)
    follow_up = earlier_run.tasks.get(name="follow_up")
    assert (earlier_run.version, follow_up.status) == (before, RunTask.Status.PENDING)
    for number in range(PAST_BOOKINGS):  # more past bookings, for the replay
        Record.objects.create(form=booking, data={**BOOKING, "email": f"past{number}@example.com"})

    # The admin edits the draft on the tree page: a new subject, and the follow-up email removed.
    page.goto(f"{live_server.url}/admin/login/")  # the demo's admin account
    page.fill("[name=username]", ADMIN_USERNAME)
    page.fill("[name=password]", ADMIN_PASSWORD)
    with page.expect_navigation():
        page.click("[type=submit]")
    tree_url = live_server.url + reverse("admin:events_node_overview", args=[booking.pk, "record_update"])
    page.goto(tree_url)
    confirmation = Node.objects.get(form=booking, name="confirmation")
    page.click(f"#node-{confirmation.pk}-edit")
    page.wait_for_selector("#events-dialog[open] [name=config_subject]")
    page.fill("#events-dialog [name=config_subject]", NEW_SUBJECT)
    page.click("#events-dialog [type=submit]")
    page.wait_for_selector("#events-tree-message:has-text('Saved “Send confirmation email”.')")
    email_step = Node.objects.get(form=booking, label="Send follow-up email")
    page.click(f"#node-{email_step.pk}-delete")
    page.wait_for_selector("#events-dialog[open] .events-confirm-delete")
    page.click("#events-dialog [type=submit]")
    page.wait_for_selector("#events-tree-message:has-text('Deleted “Send follow-up email”')")
    assert "Draft: 2 changes not published" in page.inner_text("#events-versions")

    # The impact preview lists the earlier booking's waiting delay, whose step the draft removes.
    with page.expect_navigation():
        page.click("#events-review-publish")
    delays = page.inner_text("#events-impact-delays")
    assert earlier_run.reference in delays and "Follow-up email" in delays
    assert "the step “Send follow-up email” inside it is removed" in delays

    # A test run of the draft against that booking: the captured email has the new subject; none is sent.
    page.goto(tree_url)
    with page.expect_navigation():
        page.click("text=Test run")
    page.fill("[name=token]", earlier.token)
    page.fill("[name=output__check_seat]", '{"seat": "21A"}')
    sent_before = len(mail.outbox)
    with page.expect_navigation():
        page.click("[name=run]")
    result = page.locator("#testrun-result")
    expect(result.locator("h2")).to_have_text("Result: draft — complete")
    assert result.locator(".events-email-subject").all_inner_texts() == ["Booked: London to Turin"]
    assert "your seat is 21A" in result.inner_text()
    assert len(mail.outbox) == sent_before

    # A replay of 20 bookings through the live version and the draft, played by the worker.
    page.fill("[name=count]", "20")
    with page.expect_navigation():
        page.click("[name=replay]")
    expect(page.locator(".events-replay-summary")).to_contain_text("20 of 20 records differ", timeout=REPLAY_TIMEOUT_MS)
    rows = page.locator(".events-replay-items tbody tr")
    assert rows.count() == 20
    for text in rows.all_inner_texts():
        assert "Your flight London to Turin is booked" in text and "Booked: London to Turin" in text

    # Publish; a new booking runs the new version.
    page.goto(tree_url)
    publish(page, version=before.number + 1)
    page.goto(f"{live_server.url}/f/booking/")
    for name, value in {**BOOKING, "email": "new@example.com"}.items():
        page.fill(f"[name={name}]", value)
    with page.expect_navigation():
        page.click("button[type=submit]")
    page.wait_for_selector('#status[data-state="done"]', timeout=DONE_TIMEOUT_MS)
    newer_run = Run.objects.get(record__data__email="new@example.com", is_submission=True)
    assert newer_run.version == TreeVersion.objects.live(booking)
    assert newer_run.version.number == before.number + 1
    assert newer_run.tasks.get(name="confirmation").output["subject"] == "Booked: London to Turin"
    assert not newer_run.tasks.filter(label="Send follow-up email").exists()

    # The earlier booking finishes on its own version: an hour passes, and its follow-up email goes out.
    RunTask.objects.filter(pk=follow_up.pk).update(due_at=timezone.now())
    wait_for(
        lambda: Run.objects.get(pk=earlier_run.pk).status == Run.Status.COMPLETE,
        what="the earlier booking's run completing",
    )
    earlier_run.refresh_from_db()
    assert earlier_run.version == before
    follow_up_email = earlier_run.tasks.get(label="Send follow-up email")
    assert follow_up_email.status == RunTask.Status.COMPLETE
    assert follow_up_email.output["subject"] == "Ready for your trip to Turin?"
    assert "Traceback" not in worker.output()

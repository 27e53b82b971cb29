"""The admin's test-run page and replay page."""

import pytest
from django.contrib.auth.models import Permission, User
from django.core import mail
from django.urls import reverse

from events.models import Node, Replay, Run
from events.testrun.replay import replay_work
from tests.factories import add_node


def page_url(form, event="record_update"):
    return reverse("admin:events_testrun", args=[form.pk, event])


@pytest.fixture
def booked(trail_form, add_mark, submit):
    add_mark("A")
    add_node(
        trail_form,
        "send_email",
        name="mail",
        config={"to": "{{ record.email }}", "subject": "Booked for {{ record.email }}", "body": "Hello"},
    )
    add_node(trail_form, "http_request", name="crm", config={"method": "POST", "url": "https://crm.example.com/x"})
    record = submit(email="bob@example.com", trail="").record
    mail.outbox.clear()
    return record


def test_the_page_test_runs_the_draft_on_a_past_record_and_shows_what_would_be_sent(admin_client, trail_form, booked):
    Node.objects.filter(name="mail").update(
        config={"to": "{{ record.email }}", "subject": "New <b>subject</b>", "body": "Hi"}
    )
    runs = Run.objects.count()

    page = admin_client.post(
        page_url(trail_form),
        {"tree": "draft", "source": "record", "record": str(booked.pk), "status__crm": "201", "json__crm": '{"id": 9}'},
    )

    assert page.status_code == 200
    html = page.content.decode()
    assert "Result: draft — complete" in html
    assert "New &lt;b&gt;subject&lt;/b&gt;" in html  # the captured email, escaped
    assert "POST https://crm.example.com/x" in html
    assert "Answered by your answer: 201" in html
    assert Run.objects.count() == runs and mail.outbox == []
    booked.refresh_from_db()
    assert booked.data["trail"] == "A"


def test_typed_in_data_with_an_unknown_field_is_refused_on_the_page(admin_client, trail_form, booked):
    page = admin_client.post(
        page_url(trail_form), {"tree": "draft", "source": "data", "data": '{"nope": 1}', "status__crm": "200"}
    )

    assert page.status_code == 200
    assert "the form has no field nope" in page.content.decode()
    assert "Result:" not in page.content.decode()


def test_a_replay_started_from_the_page_shows_its_progress_then_the_differences(
    admin_client, trail_form, booked, submit, sync_queue, django_capture_on_commit_callbacks
):
    for number in range(2):
        submit(email=f"u{number}@example.com", trail="")
    Node.objects.filter(name="mail").update(config={"to": "{{ record.email }}", "subject": "Changed", "body": "x"})

    with django_capture_on_commit_callbacks(execute=False):  # the job waits: the page shows it queued
        started = admin_client.post(
            reverse("admin:events_replay_start", args=[trail_form.pk, "record_update"]), {"count": "3"}
        )
    replay = Replay.objects.get()
    assert started["Location"] == reverse("admin:events_replay_change", args=[replay.pk])
    waiting = admin_client.get(reverse("admin:events_replay_progress", args=[replay.pk])).content.decode()
    assert "0 of 3 records replayed" in waiting and 'hx-trigger="every 1s"' in waiting

    replay_work(replay.pk)

    done = admin_client.get(reverse("admin:events_replay_change", args=[replay.pk])).content.decode()
    assert "3 of 3 records differ" in done
    assert done.count("<strong>emails</strong>") == 3
    assert "u0@example.com: Changed" in done
    assert 'hx-trigger="every 1s"' not in done


def test_a_replay_is_bounded(admin_client, trail_form, booked, settings):
    settings.EVENTS_REPLAY_MAX_RECORDS = 10
    response = admin_client.post(
        reverse("admin:events_replay_start", args=[trail_form.pk, "record_update"]), {"count": "11"}, follow=True
    )

    assert Replay.objects.count() == 0
    assert "Ensure this value is less than or equal to 10" in response.content.decode()


def test_staff_without_the_permission_cannot_start_a_replay(client, trail_form, booked):
    user = User.objects.create_user("viewer", password="x", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename__in=["view_node", "view_replay"]))
    client.force_login(user)

    assert client.get(page_url(trail_form)).status_code == 200
    assert (
        client.post(
            reverse("admin:events_replay_start", args=[trail_form.pk, "record_update"]), {"count": "1"}
        ).status_code
        == 403
    )
    assert Replay.objects.count() == 0


def test_staff_who_may_not_see_records_test_run_on_data_typed_in_only(client, trail_form, booked):
    user = User.objects.create_user("viewer2", password="x", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename__in=["view_node"]))
    client.force_login(user)

    page = client.get(page_url(trail_form)).content.decode()
    refused = client.post(page_url(trail_form), {"tree": "draft", "source": "record", "record": str(booked.pk)})

    assert booked.token[:8] not in page and 'value="record"' not in page
    assert "bob@example.com" not in refused.content.decode()
    assert "Result:" not in refused.content.decode()


def test_the_answers_an_admin_set_are_offered_again_and_a_replay_uses_them(admin_client, trail_form, booked):
    admin_client.post(
        page_url(trail_form),
        {"tree": "draft", "source": "record", "record": str(booked.pk), "status__crm": "503", "json__crm": "{}"},
    )

    page = admin_client.get(page_url(trail_form)).content.decode()
    admin_client.post(reverse("admin:events_replay_start", args=[trail_form.pk, "record_update"]), {"count": "1"})

    assert 'name="status__crm" value="503"' in page
    assert Replay.objects.get().canned == {"crm": {"status": 503, "json": {}}}

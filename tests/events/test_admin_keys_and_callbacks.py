"""Admin: API keys (shown once, stored hashed, revocable) and awaiting tasks settled by hand."""

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse
from django.utils import timezone

from events.models import ApiKey, Run, RunTask

KEYS_URL = reverse("admin:events_apikey_changelist")
ADD_KEY_URL = reverse("admin:events_apikey_add")
TASKS_URL = reverse("admin:events_runtask_changelist")


def messages_of(response):
    return [str(message) for message in response.context["messages"]] if response.context else []


def by_hand_url(task, outcome):
    return reverse("admin:events_runtask_by_hand", args=[task.pk, outcome])


# API keys -----------------------------------------------------------------------------------------


def test_adding_a_key_asks_only_for_a_name(admin_client):
    response = admin_client.get(ADD_KEY_URL)
    assert response.status_code == 200
    form = response.context["adminform"].form
    assert list(form.fields) == ["name"]


def test_adding_a_key_shows_it_once_and_stores_only_its_hash(admin_client):
    response = admin_client.post(ADD_KEY_URL, {"name": "billing-service"})

    assert response.status_code == 200
    raw = response.context["raw_key"]
    assert raw.startswith("fe_") and len(raw) > 40
    assert raw in response.content.decode()
    assert "no-store" in response["Cache-Control"]
    key = ApiKey.objects.get()
    assert key.name == "billing-service"
    assert raw not in [str(value) for value in ApiKey.objects.values().get().values()]
    assert key.key_hash and key.prefix == raw[: ApiKey.PREFIX_LENGTH]
    assert ApiKey.authenticate(raw) == key
    # never again: not on its page, not in the list
    page = admin_client.get(reverse("admin:events_apikey_change", args=[key.pk])).content.decode()
    assert raw not in page and key.key_hash not in page
    assert f"{key.prefix}…" in page
    assert raw not in admin_client.get(KEYS_URL).content.decode()


def test_key_change_page_shows_when_it_was_last_used_and_cannot_edit_the_prefix(admin_client):
    key, raw = ApiKey.issue(name="crm")
    ApiKey.authenticate(raw)
    key.refresh_from_db()
    response = admin_client.get(reverse("admin:events_apikey_change", args=[key.pk]))
    form = response.context["adminform"].form
    assert list(form.fields) == ["name"]
    content = response.content.decode()
    assert "Revoke this key" in content
    assert timezone.localtime(key.last_used_at).strftime("%Y") in content
    response = admin_client.post(
        reverse("admin:events_apikey_change", args=[key.pk]),
        {"name": "crm-renamed", "prefix": "fe_hacked", "key_hash": "0" * 64},
    )
    assert response.status_code == 302
    stored = ApiKey.objects.get(pk=key.pk)
    assert (stored.name, stored.prefix, stored.key_hash) == ("crm-renamed", key.prefix, key.key_hash)
    assert ApiKey.authenticate(raw) == stored


def test_revoke_action_stops_the_key_and_lists_it_as_revoked(admin_client):
    key, raw = ApiKey.issue(name="old-service")
    other, other_raw = ApiKey.issue(name="kept-service")

    response = admin_client.post(KEYS_URL, {"action": "revoke_keys", "_selected_action": [key.pk]}, follow=True)

    assert "Revoked 1 key(s)." in messages_of(response)
    assert ApiKey.authenticate(raw) is None
    assert ApiKey.authenticate(other_raw) == other
    revoked = admin_client.get(f"{KEYS_URL}?state=revoked").content.decode()
    assert "old-service" in revoked and "kept-service" not in revoked and ">revoked<" in revoked
    assert "kept-service" in admin_client.get(f"{KEYS_URL}?state=active").content.decode()
    again = admin_client.post(KEYS_URL, {"action": "revoke_keys", "_selected_action": [key.pk]}, follow=True)
    assert "1 key(s) were already revoked." in messages_of(again)


def test_revoke_button_stops_the_key(admin_client):
    key, raw = ApiKey.issue(name="crm")
    url = reverse("admin:events_apikey_revoke", args=[key.pk])
    assert admin_client.get(url).status_code == 405

    response = admin_client.post(url, follow=True)

    assert ApiKey.authenticate(raw) is None
    assert any("revoked" in message for message in messages_of(response))
    assert "Revoke this key" not in response.content.decode()
    assert ApiKey.objects.get(pk=key.pk).revoked_at is not None


def test_a_user_without_change_permission_cannot_revoke(client, db):
    key, raw = ApiKey.issue(name="crm")
    viewer = get_user_model().objects.create_user("viewer", password="pw", is_staff=True)
    client.force_login(viewer)
    assert client.post(reverse("admin:events_apikey_revoke", args=[key.pk])).status_code == 403
    assert ApiKey.authenticate(raw) == key


# Awaiting tasks ------------------------------------------------------------------------------------


def test_awaiting_filter_lists_awaiting_tasks_with_their_deadlines(admin_client, awaiting, form):
    response = admin_client.get(f"{TASKS_URL}?awaiting=all")

    assert response.status_code == 200
    content = response.content.decode()
    assert "Booking the seat" in content
    assert "Recording the result" not in content  # pending, not awaiting
    deadline = timezone.localtime(awaiting.task.deadline_at).strftime("%Y-%m-%d %H:%M:%S")
    assert deadline in content
    assert 'class="events-overdue"' not in content
    assert "Booking the seat" not in admin_client.get(f"{TASKS_URL}?awaiting=overdue").content.decode()


def test_an_awaiting_task_past_its_deadline_is_marked_overdue(admin_client, make_awaiting):
    late, on_time = make_awaiting("late@example.com"), make_awaiting("soon@example.com")
    RunTask.objects.filter(pk=late.task.pk).update(deadline_at=timezone.now() - timedelta(minutes=1))

    overdue = admin_client.get(f"{TASKS_URL}?awaiting=overdue").content.decode()
    assert late.run.reference in overdue and on_time.run.reference not in overdue
    assert 'class="events-overdue">overdue<' in overdue
    before = admin_client.get(f"{TASKS_URL}?awaiting=on_time").content.decode()
    assert on_time.run.reference in before and late.run.reference not in before
    # soonest deadline first by default; the deadline column sorts too
    listed = admin_client.get(f"{TASKS_URL}?awaiting=all").content.decode()
    assert listed.index(late.run.reference) < listed.index(on_time.run.reference)
    descending = admin_client.get(f"{TASKS_URL}?awaiting=all&o=-7").content.decode()
    assert descending.index(on_time.run.reference) < descending.index(late.run.reference)


def test_run_timeline_shows_the_deadline_of_an_awaiting_task(admin_client, awaiting):
    RunTask.objects.filter(pk=awaiting.task.pk).update(deadline_at=timezone.now() - timedelta(seconds=5))
    awaiting.reload()
    content = admin_client.get(reverse("admin:events_run_change", args=[awaiting.run.pk])).content.decode()
    deadline = timezone.localtime(awaiting.task.deadline_at).strftime("%Y-%m-%d %H:%M:%S")
    assert f"deadline {deadline}" in content
    assert 'class="events-overdue">overdue<' in content
    assert by_hand_url(awaiting.task, "complete") in content


def test_task_page_offers_by_hand_buttons_only_while_awaiting(admin_client, awaiting):
    page = admin_client.get(reverse("admin:events_runtask_change", args=[awaiting.task.pk])).content.decode()
    assert by_hand_url(awaiting.task, "complete") in page and by_hand_url(awaiting.task, "fail") in page
    after = awaiting.run.tasks.get(name="after")
    page = admin_client.get(reverse("admin:events_runtask_change", args=[after.pk])).content.decode()
    assert "by-hand" not in page


def test_complete_by_hand_completes_the_task_and_the_run_goes_on(
    admin_client, admin_user, awaiting, django_capture_on_commit_callbacks
):
    confirm = admin_client.get(by_hand_url(awaiting.task, "complete"))
    assert confirm.status_code == 200
    assert "Booking the seat" in confirm.content.decode()
    assert awaiting.reload().task.status == RunTask.Status.AWAITING  # asking changes nothing

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(by_hand_url(awaiting.task, "complete"), follow=True)

    awaiting.reload()
    assert awaiting.task.status == RunTask.Status.COMPLETE
    assert any(f"completed by hand by {admin_user.username}" == entry["line"] for entry in awaiting.task.logs)
    assert awaiting.run.tasks.get(name="after").status == RunTask.Status.COMPLETE
    assert awaiting.record.data["status"] == "zip= code=200"  # the next step ran, on the request's output
    assert awaiting.run.status == Run.Status.COMPLETE
    assert any("Completed 1 task(s) by hand" in message for message in messages_of(response))


def test_fail_by_hand_fails_the_task_and_the_run(
    admin_client, admin_user, awaiting, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        admin_client.post(by_hand_url(awaiting.task, "fail"))

    awaiting.reload()
    assert awaiting.task.status == RunTask.Status.FAILED
    assert any(f"failed by hand by {admin_user.username}" == entry["line"] for entry in awaiting.task.logs)
    assert awaiting.run.status == Run.Status.FAILED
    assert awaiting.run.tasks.get(name="after").status == RunTask.Status.CANCELLED
    assert awaiting.record.data["status"] == ""


def test_bulk_actions_confirm_then_apply_and_report_what_was_left(
    admin_client, make_awaiting, django_capture_on_commit_callbacks
):
    first, second = make_awaiting("a@example.com"), make_awaiting("b@example.com")
    RunTask.objects.filter(pk=second.task.pk).update(status=RunTask.Status.FAILED)
    selected = {"action": "complete_by_hand", "_selected_action": [first.task.pk, second.task.pk]}

    confirm = admin_client.post(TASKS_URL, selected)
    assert confirm.status_code == 200
    page = confirm.content.decode()
    assert "no longer waiting" in page
    assert 'name="action" value="complete_by_hand"' in page and 'name="post" value="yes"' in page
    assert f'name="_selected_action" value="{first.task.pk}"' in page
    assert first.reload().task.status == RunTask.Status.AWAITING

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(TASKS_URL, {**selected, "post": "yes"}, follow=True)

    messages = messages_of(response)
    assert any("Completed 1 task(s) by hand" in message for message in messages)
    assert any("1 task(s) were no longer awaiting" in message and "Failed" in message for message in messages)
    assert first.reload().task.status == RunTask.Status.COMPLETE
    assert first.run.status == Run.Status.COMPLETE
    assert second.reload().task.status == RunTask.Status.FAILED


def test_by_hand_on_a_task_no_longer_awaiting_changes_nothing_and_says_so(
    admin_client, awaiting, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        admin_client.post(by_hand_url(awaiting.task, "complete"))
    settled = awaiting.reload().task
    logs, finished_at = settled.logs, settled.finished_at

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = admin_client.post(by_hand_url(awaiting.task, "fail"), follow=True)
    assert any("no longer awaiting" in message and "Done" in message for message in messages_of(response))
    with django_capture_on_commit_callbacks(execute=True):
        action = admin_client.post(TASKS_URL, {"action": "fail_by_hand", "_selected_action": [settled.pk]}, follow=True)
    assert any("no longer awaiting" in message for message in messages_of(action))

    awaiting.reload()
    assert callbacks == []
    assert awaiting.task.status == RunTask.Status.COMPLETE
    assert (awaiting.task.logs, awaiting.task.finished_at) == (logs, finished_at)
    assert awaiting.run.status == Run.Status.COMPLETE


def test_by_hand_needs_the_change_permission(client, awaiting):
    viewer = get_user_model().objects.create_user("viewer", password="pw", is_staff=True)
    client.force_login(viewer)
    assert client.post(by_hand_url(awaiting.task, "complete")).status_code == 403
    assert awaiting.reload().task.status == RunTask.Status.AWAITING


@pytest.mark.parametrize("outcome", ["approve", "complete"])
def test_by_hand_url_for_an_unknown_outcome_or_task(admin_client, db, outcome):
    response = admin_client.post(f"/admin/events/runtask/00000000-0000-0000-0000-000000000000/by-hand/{outcome}/")
    assert response.status_code in (400, 404)

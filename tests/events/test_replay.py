"""Replays: past records through the live version and the draft, with what differs, played by a worker's job."""

import datetime

import pytest
from django.core import mail
from django.utils import timezone

from events import tasks
from events.models import Node, Replay, Run
from events.testrun import replay as replays
from events.testrun.replay import ReplayError, replay_records, replay_start, replay_work
from tests.factories import add_node


@pytest.fixture
def booked(trail_form, add_mark, submit):
    """A tree A → email “Booked”, and five past records submitted through it."""
    add_mark("A")
    add_node(
        trail_form, "send_email", name="mail", config={"to": "{{ record.email }}", "subject": "Booked", "body": "x"}
    )
    records = [submit(email=f"u{number}@example.com", trail="").record for number in range(5)]
    mail.outbox.clear()
    return records


def test_a_replay_shows_the_draft_s_new_subject_on_every_record(trail_form, booked, sync_queue):
    Node.objects.filter(name="mail").update(config={"to": "{{ record.email }}", "subject": "Confirmed", "body": "x"})
    runs = Run.objects.count()

    replay = replay_start(form=trail_form, record_ids=replay_records(trail_form, count=3))
    replay_work(replay.pk)

    replay.refresh_from_db()
    assert (replay.status, replay.total, replay.done, replay.differing) == ("done", 3, 3, 3)
    items = list(replay.items.all())
    assert [item.record_id for item in items] == [record.pk for record in reversed(booked)][:3]  # most recent first
    assert items[0].differences == [
        {"what": "emails", "before": ["u4@example.com: Booked"], "after": ["u4@example.com: Confirmed"]}
    ]
    assert Run.objects.count() == runs and mail.outbox == []


def test_a_replay_with_no_change_finds_no_difference(trail_form, booked, sync_queue):
    replay = replay_start(form=trail_form, record_ids=replay_records(trail_form, count=5))
    replay_work(replay.pk)

    replay.refresh_from_db()
    assert (replay.done, replay.differing) == (5, 0)
    assert all(item.differences == [] for item in replay.items.all())


@pytest.fixture
def jobs_sent(monkeypatch):
    """The replay jobs sent to the queue (by replay id), in order."""
    sent = []
    monkeypatch.setattr(replays.queue, "job_send", lambda func, replay_id, name: sent.append((func, replay_id)))
    return sent


def test_a_replay_goes_on_in_slices_and_a_duplicate_delivery_does_nothing(trail_form, booked, jobs_sent):
    replay = replay_start(form=trail_form, record_ids=replay_records(trail_form, count=4))
    assert jobs_sent == [("events.tasks.replay_job", str(replay.pk))]

    assert replay_work(replay.pk, slice_seconds=0) == "continued"  # one record, then the job again
    assert replay_work(replay.pk, slice_seconds=0) == "continued"
    Replay.objects.filter(pk=replay.pk).update(claimed_until=timezone.now() + datetime.timedelta(minutes=1))
    assert replay_work(replay.pk) == "held elsewhere, or finished"
    Replay.objects.filter(pk=replay.pk).update(claimed_until=None)
    assert replay_work(replay.pk) == "done"

    replay.refresh_from_db()
    assert (replay.done, replay.items.count()) == (4, 4)
    assert len(jobs_sent) == 3  # the first job and one per slice that went on


def test_the_sweep_sends_a_replay_again_when_its_worker_died(trail_form, booked, jobs_sent, sweep_now):
    replay = replay_start(form=trail_form, record_ids=replay_records(trail_form, count=2))
    Replay.objects.filter(pk=replay.pk).update(
        status=Replay.Status.RUNNING, claimed_until=timezone.now() - datetime.timedelta(seconds=1)
    )

    assert sweep_now()["replay_resumed"] == 1
    assert sweep_now()["replay_resumed"] == 0  # once
    assert len(jobs_sent) == 2


def test_bounds_and_empty_choices_are_refused(trail_form, booked, settings):
    settings.EVENTS_REPLAY_MAX_RECORDS = 3
    with pytest.raises(ReplayError, match="at most 3"):
        replay_start(form=trail_form, record_ids=[record.pk for record in booked])
    with pytest.raises(ReplayError, match="at most 3"):
        replay_records(trail_form, since=timezone.now() - datetime.timedelta(days=1))
    with pytest.raises(ReplayError, match="no records"):
        replay_start(form=trail_form, record_ids=[])
    assert Replay.objects.count() == 0


def test_what_is_new_in_every_test_run_is_not_a_difference(trail_form, add_mark, submit, sync_queue):
    add_node(trail_form, "update_field", name="ref", config={"field": "status", "value": "{{ run.reference }}"})
    add_node(trail_form, "delay", name="soon", config={"rule": "after", "after_seconds": 60})
    records = [submit(email=f"u{number}@example.com", trail="").record for number in range(2)]
    mail.outbox.clear()

    replay = replay_start(form=trail_form, record_ids=[record.pk for record in records])
    replay_work(replay.pk)

    replay.refresh_from_db()
    assert (replay.done, replay.differing) == (2, 0)


def test_a_record_holding_a_field_removed_since_is_replayed(trail_form, booked, sync_queue):
    trail_form.fields.filter(name="seats").delete()  # the records keep their values for it

    replay = replay_start(form=trail_form, record_ids=replay_records(trail_form, count=2))
    replay_work(replay.pk)

    assert [item.error for item in replay.items.all()] == ["", ""]


def test_a_replay_whose_job_was_lost_is_sent_again_by_the_sweep(trail_form, booked, jobs_sent, sweep_now, settings):
    replay = replay_start(form=trail_form, record_ids=replay_records(trail_form, count=2))
    assert sweep_now()["replay_resumed"] == 0  # just sent: a worker will take it
    Replay.objects.filter(pk=replay.pk).update(
        sent_at=timezone.now() - datetime.timedelta(seconds=settings.EVENTS_REQUEUE_AFTER_SECONDS + 1)
    )

    assert sweep_now()["replay_resumed"] == 1
    assert len(jobs_sent) == 2


def test_a_stopping_worker_hands_the_replay_back(trail_form, booked, jobs_sent, monkeypatch):
    replay = replay_start(form=trail_form, record_ids=replay_records(trail_form, count=3))
    monkeypatch.setattr(replays.queue, "worker_stopping", lambda: True)
    monkeypatch.setattr(tasks, "worker_stopping", lambda: True)

    assert tasks.replay_job(str(replay.pk)) == "handed back"
    assert len(jobs_sent) == 2
    monkeypatch.setattr(tasks, "worker_stopping", lambda: False)
    assert tasks.replay_job(str(replay.pk)) == "continued"  # one record, then it stops and sends it on
    replay.refresh_from_db()
    assert (replay.done, len(jobs_sent)) == (1, 3)


def test_a_worker_whose_lease_was_taken_over_stores_nothing_more(trail_form, booked, jobs_sent, monkeypatch):
    replay = replay_start(form=trail_form, record_ids=replay_records(trail_form, count=3))
    real = replays.tree_test_run

    def slow_then_overtaken(**options):
        Replay.objects.filter(pk=replay.pk).update(claimed_until=timezone.now() + datetime.timedelta(hours=1))
        return real(**options)

    monkeypatch.setattr(replays, "tree_test_run", slow_then_overtaken)

    assert replay_work(replay.pk) == "lease lost"
    replay.refresh_from_db()
    assert (replay.done, replay.items.count()) == (0, 0)

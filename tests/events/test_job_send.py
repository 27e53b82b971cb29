"""``events.queue.job_send``: any job, by dotted path, sent with the caller's transaction."""

import pytest
from django.db import transaction
from django.utils.module_loading import import_string
from django_q.models import OrmQ

from events import queue

calls = []


def record_call(*args):
    """A job for these tests."""
    calls.append(args)
    return "done"


class RolledBack(Exception):
    pass


def test_a_job_sent_in_a_transaction_that_rolls_back_never_reaches_the_broker(db):
    with pytest.raises(RolledBack), transaction.atomic():
        queue.job_send(f"{__name__}.record_call", "a", name="test-job")
        raise RolledBack

    assert OrmQ.objects.count() == 0


def test_a_committed_job_runs_its_function_with_its_arguments(db):
    calls.clear()
    queue.job_send(f"{__name__}.record_call", "a", 2, name="test-job")

    [job] = OrmQ.objects.all()
    assert job.name() == "test-job"
    assert import_string(job.func())(*job.args(), **job.kwargs()) == "done"  # what a worker does
    assert calls == [("a", 2)]


def test_in_sync_mode_the_job_runs_once_the_transaction_commits(db, sync_queue, django_capture_on_commit_callbacks):
    calls.clear()
    with django_capture_on_commit_callbacks(execute=True), transaction.atomic():
        queue.job_send(f"{__name__}.record_call", "b", name="test-job")
        assert calls == []

    assert calls == [("b",)]

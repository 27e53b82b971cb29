"""Concurrent callbacks for one awaiting task, in threads, on the test database (a SQLite file).

Exactly one callback applies and exactly one resume job is queued, however many
arrive at once. Each thread has its own database connection and closes it.
PostgreSQL is not covered here yet (a later issue).
"""

import threading

import pytest
from django.db import connection
from django.test import Client
from django.utils.module_loading import import_string
from django_q.models import OrmQ

from events import engine
from events.models import ApiKey, Run, RunTask
from events.tasks import task_job
from forms_app.services import record_submit
from tests.factories import add_node

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.xdist_group("db_threads")]

THREADS = 8
JOIN_SECONDS = 60


def in_threads(count, work):
    """Call ``work(i)`` in ``count`` threads released together; return their results in order."""
    barrier = threading.Barrier(count)
    results, errors = [None] * count, []

    def target(i):
        try:
            barrier.wait(timeout=10)
            results[i] = work(i)
        except BaseException as exc:  # noqa: BLE001  reported below, in the test's thread
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=target, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=JOIN_SECONDS)
    assert not any(thread.is_alive() for thread in threads), "a thread did not finish in time"
    assert not errors, errors
    return results


def resume_jobs():
    """The jobs that walk on after the waiting step (the next step, handed off with the callback)."""
    return [job for job in OrmQ.objects.all() if job.func() == "events.tasks.task_job"]


def run_queued_jobs():
    for job in OrmQ.objects.all():
        job.delete()
        import_string(job.func())(*job.args(), **(job.kwargs() or {}))


def payload(i):
    """Even threads send the same callback; odd threads each send their own."""
    if i % 2 == 0:
        return {"status": "SUCCESS", "output": {"seat": "12A"}, "logs": ["seat found"], "subtext": "Seat 12A"}
    return {"status": "SUCCESS", "output": {"seat": f"{i}Z"}, "logs": [f"seat {i}Z found"], "subtext": f"Seat {i}Z"}


@pytest.fixture
def awaiting_before_b_and_c(trail_form, add_mark, http_server, allow_local_http):
    """A submitted record whose http_request step awaits its callback, with B and C after it."""
    wait = add_node(
        trail_form,
        "http_request",
        name="book",
        config={"method": "POST", "url": http_server.url + "/start", "wait_for_callback": True},
    )
    add_mark("B")
    add_mark("C")
    record = record_submit(form=trail_form, data={"email": "ann@example.com", "trail": ""})
    task = RunTask.objects.get(run__record=record, node_id=wait.pk)
    assert task.status == RunTask.Status.AWAITING
    return record, task


def assert_later_steps_ran_once(record):
    record.refresh_from_db()
    assert record.data["trail"] == "BC"
    tasks = RunTask.objects.filter(run__record=record)
    assert {task.name: task.attempt for task in tasks} == {"book": 1, "b": 1, "c": 1}
    for task in tasks.filter(name__in=["b", "c"]):
        assert sum("trail set to" in entry["line"] for entry in task.logs) == 1
    assert Run.objects.get(record=record).status == Run.Status.COMPLETE
    assert record.is_complete


@pytest.mark.parametrize("round_", range(3))
def test_concurrent_callbacks_apply_once_and_resume_once(awaiting_before_b_and_c, round_):
    record, task = awaiting_before_b_and_c

    results = in_threads(THREADS, lambda i: engine.task_callback(task_id=task.pk, **payload(i)))

    winners = [i for i, result in enumerate(results) if result.applied]
    assert len(winners) == 1
    [winner] = winners
    for i, result in enumerate(results):
        assert result.status == RunTask.Status.COMPLETE
        if i != winner:
            assert result.duplicate == (payload(i) == payload(winner)), (i, winner)
    task.refresh_from_db()
    assert task.status == RunTask.Status.COMPLETE
    assert task.output["seat"] == payload(winner)["output"]["seat"]
    assert [entry["line"] for entry in task.logs if "found" in entry["line"]] == payload(winner)["logs"]
    assert task.subtext == Run.objects.get(record=record).subtext == payload(winner)["subtext"]
    [job] = resume_jobs()
    assert job.args() == (str(RunTask.objects.get(run__record=record, name="b").pk),)

    run_queued_jobs()

    assert_later_steps_ran_once(record)


def test_concurrent_success_and_failure_callbacks_apply_one_of_them(awaiting_before_b_and_c):
    record, task = awaiting_before_b_and_c

    def send(i):
        status = "SUCCESS" if i % 2 else "FAILURE"
        return status, engine.task_callback(task_id=task.pk, status=status, output={"from": i})

    results = in_threads(THREADS, send)

    applied = [(status, result) for status, result in results if result.applied]
    assert len(applied) == 1
    [(status, result)] = applied
    task.refresh_from_db()
    if status == "SUCCESS":
        assert task.status == RunTask.Status.COMPLETE
        assert len(resume_jobs()) == 1
        run_queued_jobs()
        assert_later_steps_ran_once(record)
    else:
        assert task.status == RunTask.Status.FAILED
        assert resume_jobs() == []
        assert Run.objects.get(record=record).status == Run.Status.FAILED
        assert set(
            RunTask.objects.filter(run__record=record, name__in=["b", "c"]).values_list("status", flat=True)
        ) == {RunTask.Status.CANCELLED}
    assert all(other.status == task.status for _, other in results)


def test_concurrent_resume_deliveries_run_each_later_step_once(awaiting_before_b_and_c):
    record, task = awaiting_before_b_and_c
    engine.task_callback(task_id=task.pk, status="SUCCESS", output={"seat": "12A"})
    OrmQ.objects.all().delete()

    b = RunTask.objects.get(run__record=record, name="b")
    outcomes = in_threads(4, lambda i: task_job(str(b.pk)))

    assert "done" in outcomes
    assert set(outcomes) <= {"done", "elsewhere", "stopped"}
    assert_later_steps_ran_once(record)


def test_concurrent_callbacks_through_the_api_apply_once(awaiting_before_b_and_c):
    record, task = awaiting_before_b_and_c
    _, key = ApiKey.issue(name="partner")

    def post(i):
        response = Client().post(
            "/api/external-events/callback/",
            {"taskId": str(task.pk), **payload(i)},
            content_type="application/json",
            headers={"Authorization": f"Bearer {key}"},
        )
        return response.status_code, response.json()

    results = in_threads(THREADS, post)

    applied = [i for i, (code, body) in enumerate(results) if code == 200 and body["applied"]]
    duplicates = [i for i, (code, body) in enumerate(results) if code == 200 and body.get("duplicate")]
    refused = [i for i, (code, body) in enumerate(results) if code == 409]
    assert len(applied) == 1, results
    [winner] = applied
    same = [i for i in range(THREADS) if i != winner and payload(i) == payload(winner)]
    assert duplicates == same
    assert len(refused) == THREADS - 1 - len(same)
    for i in refused:
        assert results[i][1]["error"]["code"] == "not_awaiting"
        assert results[i][1]["error"]["details"] == {"status": "complete"}
    assert len(resume_jobs()) == 1

    run_queued_jobs()

    assert_later_steps_ran_once(record)

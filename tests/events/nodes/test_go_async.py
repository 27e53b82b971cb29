"""go_async: a marker; every later sibling of its sequence runs in the background, as one job."""

from django.utils.module_loading import import_string
from django_q.models import OrmQ

from events.models import Run, RunTask
from events.nodes import registry
from tests.factories import add_node

GoAsync = registry.get("go_async")


def queued():
    return [job.func() for job in OrmQ.objects.order_by("id")]


def run_queued_jobs(capture):
    """What a worker does: take each queued job and run it, until the queue is empty."""
    ran = 0
    while OrmQ.objects.exists():
        job = OrmQ.objects.order_by("id").first()
        job.delete()
        with capture(execute=True):
            import_string(job.func())(*job.args(), **(job.kwargs() or {}))
        ran += 1
    return ran


def statuses(record):
    run = record.runs.get(is_submission=True)
    return {task.name: task.status for task in run.tasks.all()}


def test_go_async_at_the_top_level_leaves_the_later_siblings_for_one_background_job(
    trail_form, submit_queued, add_mark, django_capture_on_commit_callbacks
):
    add_mark("A")
    add_node(trail_form, "go_async", name="async")
    add_mark("B")
    add_mark("C")

    record = submit_queued().record

    # Before the redirect: A only.
    assert record.data["trail"] == "A"
    assert statuses(record) == {
        "a": RunTask.Status.COMPLETE,
        "async": RunTask.Status.COMPLETE,
        "b": RunTask.Status.PENDING,
        "c": RunTask.Status.PENDING,
    }
    assert record.is_complete is False
    assert record.runs.get().status == Run.Status.RUNNING
    assert queued() == ["events.tasks.task_job"]

    assert run_queued_jobs(django_capture_on_commit_callbacks) == 1

    record.refresh_from_db()
    assert record.data["trail"] == "ABC"  # B then C, in order, in that one job
    assert set(statuses(record).values()) == {RunTask.Status.COMPLETE}
    assert record.runs.get().status == Run.Status.COMPLETE
    assert record.is_complete is True


def test_go_async_as_the_last_step_completes_the_run_in_the_background(
    trail_form, submit_queued, add_mark, django_capture_on_commit_callbacks
):
    add_mark("A")
    add_node(trail_form, "go_async", name="async")

    record = submit_queued().record
    run_queued_jobs(django_capture_on_commit_callbacks)

    record.refresh_from_db()
    assert record.data["trail"] == "A"
    assert record.runs.get().status == Run.Status.COMPLETE
    assert record.is_complete is True


def test_go_async_inside_a_background_changes_nothing(
    trail_form, submit_queued, add_mark, django_capture_on_commit_callbacks
):
    background = add_node(trail_form, "background", name="bg")
    add_mark("A", parent=background)
    add_node(trail_form, "go_async", parent=background, name="async")
    add_mark("B", parent=background)
    add_mark("C")

    record = submit_queued().record
    assert record.data["trail"] == "C"
    assert queued() == ["events.tasks.task_job"]

    assert run_queued_jobs(django_capture_on_commit_callbacks) == 1  # no second job for the marker

    record.refresh_from_db()
    assert record.data["trail"] == "CAB"
    marker = record.runs.get().tasks.get(name="async")
    assert marker.status == RunTask.Status.COMPLETE
    assert "already in the background" in " ".join(entry["line"] for entry in marker.logs)
    assert record.is_complete is True


def test_go_async_inside_a_condition_sends_the_rest_of_the_condition_and_what_follows_it(
    trail_form, submit_queued, add_mark, django_capture_on_commit_callbacks
):
    condition = add_node(
        trail_form,
        "condition",
        name="cond",
        config={"match": "all", "rules": [{"field": "email", "operator": "is_set"}]},
    )
    add_mark("A", parent=condition)
    add_node(trail_form, "go_async", parent=condition, name="async")
    add_mark("B", parent=condition)
    add_mark("C")

    record = submit_queued().record
    assert record.data["trail"] == "A"
    assert statuses(record)["b"] == RunTask.Status.PENDING
    assert statuses(record)["c"] == RunTask.Status.PENDING

    run_queued_jobs(django_capture_on_commit_callbacks)

    record.refresh_from_db()
    assert record.data["trail"] == "ABC"
    assert statuses(record)["cond"] == RunTask.Status.COMPLETE
    assert record.runs.get().status == Run.Status.COMPLETE


def test_go_async_in_an_error_branch_handles_the_error_in_the_background_then_goes_on(
    trail_form, submit_queued, add_mark, django_capture_on_commit_callbacks
):
    boom = add_node(trail_form, "fail", name="boom", config={"message": "not critical"})
    add_mark("A", parent=boom, branch="on_error")
    add_node(trail_form, "go_async", parent=boom, branch="on_error", name="async")
    add_mark("B", parent=boom, branch="on_error")
    add_mark("C")

    record = submit_queued().record
    assert record.data["trail"] == "A"
    assert record.is_complete is False

    run_queued_jobs(django_capture_on_commit_callbacks)

    record.refresh_from_db()
    assert record.data["trail"] == "ABC"
    assert statuses(record)["boom"] == RunTask.Status.FAILED
    assert record.runs.get().status == Run.Status.COMPLETE
    assert record.is_complete is True


def test_a_failure_after_go_async_fails_the_run_in_the_background(
    trail_form, submit_queued, add_mark, django_capture_on_commit_callbacks
):
    add_mark("A")
    add_node(trail_form, "go_async", name="async")
    add_node(trail_form, "fail", name="boom", config={"message": "late"})
    add_mark("C")

    record = submit_queued().record
    assert record.runs.get().status == Run.Status.RUNNING
    run_queued_jobs(django_capture_on_commit_callbacks)

    record.refresh_from_db()
    assert record.data["trail"] == "A"
    assert statuses(record)["c"] == RunTask.Status.CANCELLED
    assert record.runs.get().status == Run.Status.FAILED


def test_a_duplicate_resume_job_runs_nothing_twice(
    trail_form, submit_queued, add_mark, django_capture_on_commit_callbacks
):
    add_node(trail_form, "go_async", name="async")
    add_mark("B")
    record = submit_queued().record
    [job] = OrmQ.objects.all()
    job.delete()

    for _ in range(2):
        with django_capture_on_commit_callbacks(execute=True):
            import_string(job.func())(*job.args())

    record.refresh_from_db()
    assert record.data["trail"] == "B"


def test_go_async_takes_no_config_and_is_a_marker():
    assert GoAsync.clean_config({}) == {}
    assert GoAsync.is_marker and not GoAsync.is_container
    assert "background" in GoAsync.describe({})

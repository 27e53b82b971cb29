"""Debug traces: with collect_debug (a container's, or the form's), each step stores what it saw and did."""

from events import queue
from events.models import RunTask
from tests.factories import add_node

TRACE_KEYS = {"attempt", "duration_ms", "rendered_config", "inputs", "output"}


def tasks_of(record):
    return {task.name: task for task in record.runs.get(is_submission=True).tasks.all()}


def add_greeting(form, parent=None, name="greet", **fields):
    return add_node(
        form,
        "update_field",
        parent=parent,
        name=name,
        config={"field": "status", "value": "hello {{ record.email }}"},
        **fields,
    )


def test_debug_is_off_by_default(form, submit):
    add_greeting(form)
    background = add_node(form, "background", name="bg")
    add_greeting(form, parent=background, name="inside")

    record = submit().record

    assert {name: task.debug for name, task in tasks_of(record).items()} == {"greet": [], "bg": [], "inside": []}
    assert not any(task.collect_debug for task in tasks_of(record).values())


def test_collect_debug_on_a_container_traces_each_step_of_its_branch(form, submit):
    add_greeting(form, name="outside")
    background = add_node(form, "background", name="bg", config={"collect_debug": True})
    add_greeting(form, parent=background, name="inside")

    record = submit().record

    tasks = tasks_of(record)
    assert tasks["outside"].debug == []
    [trace] = tasks["inside"].debug
    assert TRACE_KEYS <= set(trace)
    assert trace["attempt"] == 1
    assert isinstance(trace["duration_ms"], (int, float)) and trace["duration_ms"] >= 0
    assert trace["rendered_config"] == {"field": "status", "value": "hello ann@example.com"}
    assert trace["inputs"]["record"]["email"] == "ann@example.com"
    assert trace["output"] == {"field": "status", "value": "hello ann@example.com"}
    assert trace["output"] == tasks["inside"].output
    assert trace["error"] == ""


def test_collect_debug_reaches_steps_of_nested_containers(form, submit):
    background = add_node(form, "background", name="bg", config={"collect_debug": True})
    inner = add_node(form, "background", parent=background, name="inner")
    add_greeting(form, parent=inner, name="deep")

    record = submit().record

    assert len(tasks_of(record)["deep"].debug) == 1


def test_the_form_wide_switch_traces_every_step(form, submit):
    form.collect_debug = True
    form.save()
    add_greeting(form)
    add_node(form, "set_flag", name="flag", config={"flag": "done"})

    record = submit().record

    tasks = tasks_of(record)
    for name in ("greet", "flag"):
        [trace] = tasks[name].debug
        assert TRACE_KEYS <= set(trace)
    assert tasks["flag"].debug[0]["rendered_config"]["flag"] == "done"


def test_a_failing_step_traces_its_error(form, submit):
    form.collect_debug = True
    form.save()
    add_node(form, "fail", name="boom", config={"message": "no seats for {{ record.email }}"})

    record = submit().record

    [trace] = tasks_of(record)["boom"].debug
    assert trace["error"] == "no seats for ann@example.com"
    assert trace["rendered_config"] == {"message": "no seats for ann@example.com"}
    assert trace["output"] is None


def test_each_attempt_of_a_retried_step_gets_its_own_trace(form, submit, django_capture_on_commit_callbacks):
    form.collect_debug = True
    form.save()
    add_node(form, "fail", name="boom", config={"message": "down"}, max_attempts=2, retry_backoff_seconds=0)

    record = submit().record
    with django_capture_on_commit_callbacks(execute=True):
        queue.dispatch_due()

    boom = tasks_of(record)["boom"]
    assert boom.status == RunTask.Status.FAILED
    assert [trace["attempt"] for trace in boom.debug] == [1, 2]
    assert all(trace["error"] for trace in boom.debug)


def test_error_branch_steps_inherit_collect_debug_from_the_failed_step(form, submit):
    background = add_node(form, "background", name="bg", config={"collect_debug": True})
    boom = add_node(form, "fail", parent=background, name="boom", config={"message": "x"})
    add_node(
        form,
        "update_field",
        parent=boom,
        branch="on_error",
        name="catch",
        config={"field": "status", "value": "{{ error.message }}"},
    )

    record = submit().record

    [trace] = tasks_of(record)["catch"].debug
    assert trace["inputs"]["error"]["message"] == "x"
    assert trace["rendered_config"]["value"] == "x"


def test_a_container_recorded_as_its_own_run_keeps_collect_debug_for_that_run(form, submit):
    # The README's own example: collect_debug together with event_type (a run of its own).
    background = add_node(form, "background", name="bg", config={"collect_debug": True, "event_type": "confirmation"})
    add_greeting(form, parent=background, name="inside")
    nested = add_node(form, "background", parent=background, name="nested")
    add_greeting(form, parent=nested, name="deeper")

    record = submit().record

    branch_run = record.runs.get(event="confirmation")
    assert branch_run.status == branch_run.Status.COMPLETE
    steps = {task.name: task for task in branch_run.tasks.all()}
    assert all(task.collect_debug for task in steps.values())
    [trace] = steps["inside"].debug
    assert TRACE_KEYS <= set(trace)
    assert trace["rendered_config"] == {"field": "status", "value": "hello ann@example.com"}
    assert len(steps["deeper"].debug) == 1


def test_a_container_recorded_as_its_own_run_without_collect_debug_stores_no_trace(form, submit):
    background = add_node(form, "background", name="bg", config={"event_type": "confirmation"})
    add_greeting(form, parent=background, name="inside")

    record = submit().record

    branch_run = record.runs.get(event="confirmation")
    assert [task.debug for task in branch_run.tasks.all()] == [[]]

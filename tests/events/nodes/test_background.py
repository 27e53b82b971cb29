from django_q.models import OrmQ

from events.models import RunTask
from events.nodes import registry
from forms_app.services import record_submit
from tests.factories import add_node


def test_background_children_run_after_the_inline_phase(form, submit):
    background = add_node(form, "background", name="bg")
    add_node(
        form,
        "update_field",
        parent=background,
        name="child",
        config={"field": "status", "value": "{{ record.status }}+background"},
    )
    add_node(form, "update_field", name="inline", config={"field": "status", "value": "inline"})

    outcome = submit({"email": "ann@example.com"})

    # The top-level step placed after the background ran first: the child saw its value.
    assert outcome.record.data["status"] == "inline+background"
    inline, child = outcome.task("inline"), outcome.task("child")
    assert inline.started_at < child.started_at
    assert inline.finished_at <= child.started_at
    bg = outcome.task("bg")
    assert bg.status == RunTask.Status.COMPLETE
    assert bg.due_at is not None and bg.enqueued_at is not None
    assert child.parent_id == bg.pk
    assert outcome.run.status == "complete"
    assert outcome.record.is_complete is True


def test_background_runs_its_children_in_order(form, submit):
    background = add_node(form, "background")
    add_node(form, "update_field", parent=background, name="one", config={"field": "status", "value": "1"})
    add_node(
        form,
        "update_field",
        parent=background,
        name="two",
        config={"field": "status", "value": "{{ record.status }}2"},
    )
    add_node(
        form,
        "update_field",
        parent=background,
        name="three",
        config={"field": "status", "value": "{{ record.status }}3"},
    )

    outcome = submit({"email": "ann@example.com"})

    assert outcome.record.data["status"] == "123"


def test_background_inside_a_background_runs_after_its_later_siblings(form, submit):
    outer = add_node(form, "background", name="outer")
    inner = add_node(form, "background", parent=outer, name="inner")
    add_node(
        form,
        "update_field",
        parent=inner,
        name="deep",
        config={"field": "status", "value": "{{ record.status }}+inner"},
    )
    add_node(form, "update_field", parent=outer, name="sibling", config={"field": "status", "value": "outer"})

    outcome = submit({"email": "ann@example.com"})

    assert outcome.record.data["status"] == "outer+inner"
    assert {name: outcome.task(name).status for name in ("outer", "inner", "deep", "sibling")} == dict.fromkeys(
        ("outer", "inner", "deep", "sibling"), RunTask.Status.COMPLETE
    )
    assert outcome.record.is_complete is True


def test_background_leaves_the_request_without_running_its_children(form, django_capture_on_commit_callbacks):
    # No sync queue: the job goes to the broker and waits for a worker.
    background = add_node(form, "background", name="bg")
    add_node(form, "set_flag", parent=background, name="child", config={"flag": "done"})
    add_node(form, "set_flag", name="inline", config={"flag": "inline"})

    with django_capture_on_commit_callbacks(execute=True):
        record = record_submit(form=form, data={"email": "ann@example.com"})

    record.refresh_from_db()
    assert record.flags == {"inline": True}
    assert record.is_complete is False
    tasks = {task.name: task for task in record.runs.get().tasks.all()}
    assert tasks["bg"].status == RunTask.Status.PENDING
    assert tasks["bg"].enqueued_at is not None
    assert "child" not in tasks  # its row is created when a worker starts bg
    assert OrmQ.objects.count() == 1


def test_background_config_takes_nothing():
    assert registry.get("background").clean_config({}) == {}

"""Custom events: a container's ``event_type`` / ``event_properties`` record its branch as a run of its own."""

from events.models import RECORD_UPDATE, Run, RunTask
from tests.factories import FieldFactory, add_node


def submission(record):
    return record.runs.get(is_submission=True)


def test_a_container_with_event_type_records_its_branch_as_a_run_of_that_event(form, submit):
    background = add_node(form, "background", name="bg", config={"event_type": "followup"})
    add_node(form, "update_field", parent=background, name="inside", config={"field": "status", "value": "followed up"})
    add_node(form, "set_flag", name="after", config={"flag": "after"})

    record = submit().record

    assert record.data["status"] == "followed up"
    assert record.flags == {"after": True}
    parent = submission(record)
    branch_run = record.runs.get(event="followup")
    container = parent.tasks.get(name="bg")
    assert branch_run.parent_run == parent
    assert branch_run.parent_task == container
    assert branch_run.depth == 1
    assert branch_run.status == Run.Status.COMPLETE
    # The branch's steps are tasks of the branch's run, not of the submission run.
    assert [task.name for task in branch_run.tasks.all()] == ["inside"]
    assert not parent.tasks.filter(name="inside").exists()
    assert container.status == RunTask.Status.COMPLETE
    assert container.output["run_id"] == str(branch_run.pk)
    assert parent.status == Run.Status.COMPLETE
    assert record.is_complete is True


def test_the_branch_run_sees_the_original_properties_without_event_properties(form, submit):
    background = add_node(form, "background", name="bg", config={"event_type": "followup"})
    add_node(
        form,
        "update_field",
        parent=background,
        name="inside",
        config={"field": "status", "value": "from {{ properties.source }}"},
    )

    record = submit(properties={"source": "web"}).record

    assert record.data["status"] == "from web"
    assert record.runs.get(event="followup").properties == {"source": "web"}


def test_event_properties_override_what_the_branch_sees_as_properties(form, submit):
    FieldFactory(form=form, name="note", label="Note", type="hidden")
    background = add_node(
        form,
        "background",
        name="bg",
        config={
            "event_type": "followup",
            "event_properties": {"source": "crm", "who": "{{ record.email }}"},
        },
    )
    add_node(
        form,
        "update_field",
        parent=background,
        name="inside",
        config={"field": "status", "value": "{{ properties.source }}/{{ properties.who }}"},
    )
    add_node(form, "update_field", name="outside", config={"field": "note", "value": "{{ properties.source }}"})

    record = submit(properties={"source": "web"}).record

    assert record.data["status"] == "crm/ann@example.com"
    assert record.data["note"] == "web"  # the rest of the run keeps the original properties
    assert record.runs.get(event="followup").properties == {"source": "crm", "who": "ann@example.com"}


def test_event_properties_alone_run_the_branch_under_the_same_event_name(form, submit):
    background = add_node(form, "background", name="bg", config={"event_properties": {"source": "crm"}})
    add_node(
        form,
        "update_field",
        parent=background,
        name="inside",
        config={"field": "status", "value": "{{ status }}{{ properties.source }}"},
    )
    add_node(form, "update_field", name="top", config={"field": "seats", "value": "1"})

    record = submit(properties={"source": "web"}).record

    runs = record.runs.order_by("depth")
    assert [(run.event, run.depth) for run in runs] == [(RECORD_UPDATE, 0), (RECORD_UPDATE, 1)]
    branch_run = runs[1]
    # The branch run runs the container's steps, not the whole record_update tree again.
    assert [task.name for task in branch_run.tasks.all()] == ["inside"]
    assert record.data["status"] == "crm"
    assert branch_run.status == Run.Status.COMPLETE


def test_a_delay_with_event_type_runs_its_branch_as_its_own_run_when_due(form, submit):
    delay = add_node(form, "delay", name="later", config={"rule": "now", "event_type": "reminder"})
    add_node(form, "set_flag", parent=delay, name="remind", config={"flag": "reminded"})

    record = submit().record

    assert record.flags == {"reminded": True}
    reminder = record.runs.get(event="reminder")
    assert reminder.parent_task == submission(record).tasks.get(name="later")
    assert reminder.status == Run.Status.COMPLETE


def test_a_branch_run_that_fails_fails_on_its_own_and_the_submission_still_completes(form, submit):
    background = add_node(form, "background", name="bg", config={"event_type": "followup"})
    add_node(form, "fail", parent=background, name="boom", config={"message": "followup broke"})

    record = submit().record

    branch_run = record.runs.get(event="followup")
    assert branch_run.status == Run.Status.FAILED
    assert "followup broke" in branch_run.error
    assert submission(record).status == Run.Status.COMPLETE


def test_containers_without_the_options_run_their_branch_in_the_same_run(form, submit):
    background = add_node(form, "background", name="bg")
    add_node(
        form,
        "update_field",
        parent=background,
        name="inside",
        config={"field": "status", "value": "{{ properties.source }}"},
    )

    record = submit(properties={"source": "web"}).record

    assert record.runs.count() == 1
    assert submission(record).tasks.get(name="inside").status == RunTask.Status.COMPLETE
    assert record.data["status"] == "web"


def test_the_depth_limit_stops_a_chain_of_branch_runs_and_trigger_events(form, submit, settings):
    settings.EVENTS_MAX_EVENT_DEPTH = 3
    background = add_node(form, "background", event="loop", name="bg", config={"event_type": "loop"})
    add_node(form, "trigger_event", event="loop", parent=background, name="again", config={"event": "loop"})
    add_node(form, "trigger_event", name="start", config={"event": "loop"})

    record = submit().record

    depths = sorted(record.runs.values_list("depth", flat=True))
    assert max(depths) == 3
    assert len(depths) <= 4 + 3  # bounded: nothing ran away
    failed = RunTask.objects.filter(run__record=record, status=RunTask.Status.FAILED)
    assert failed.exists()
    assert all("EVENTS_MAX_EVENT_DEPTH is 3" in task.error for task in failed)

"""A run's first tasks come from a plan worked out once per published version (events.engine.runs._StartPlan).

Every run of one version gets the rows ``tasks_for`` would build, with ids, run, times and hand-off
of its own; the plan is kept on the version and made again for another version, database or debug
switch; a snapshot that is no version's makes a plan of its own.
"""

import datetime

import pytest
from django.db import connection, transaction

from events.engine import runs
from events.engine.runs import run_start, tasks_for
from events.hotsql import Rows, Saved, copy, insert, insert_rows, new
from events.models import Run, RunTask, TreeVersion
from forms_app.definitions import published_form
from forms_app.models import Record
from forms_app.services import record_submit
from tests.factories import RecordFactory, add_node

pytestmark = pytest.mark.django_db

# What the plan gives every run alike (a run's own: ids, run, times, hand-off; the walk's: status, ...).
PLANNED = ("node_id", "position", "type", "name", "label", "visible", "is_container", "branch", "max_attempts")


def columns(task):
    return {field.attname: getattr(task, field.attname) for field in RunTask._meta.concrete_fields}


@pytest.fixture
def tree(form):
    """Two background branches first, then a condition whose step runs inline, then a delay."""
    for name in ("first", "second"):
        branch = add_node(form, "background", name=name, label=name.title(), visible=True, publish=False)
        add_node(form, "set_flag", parent=branch, config={"flag": name}, publish=False)
    condition = add_node(
        form,
        "condition",
        name="check",
        config={"match": "all", "rules": [{"field": "email", "operator": "is_set"}]},
        publish=False,
    )
    add_node(form, "set_flag", parent=condition, name="inline", config={"flag": "inline"}, publish=False)
    add_node(form, "delay", name="later", config={"after_seconds": 3600}, max_attempts=3)
    return form


def _counting(init, made):
    def counted(self, snapshot, debug, *, cached):
        made.append(debug)
        init(self, snapshot, debug, cached=cached)

    return counted


def submit(form):
    form, version = published_form(form.slug)
    return record_submit(form=form, data={"email": "ada@example.com"}, version=version)


def test_each_run_of_a_version_gets_the_rows_tasks_for_builds_with_ids_run_and_times_of_its_own(tree):
    records = [submit(tree), submit(tree)]

    runs_ = [Run.objects.get(record=record) for record in records]
    stored = [sorted(run.tasks.all(), key=lambda task: task.position) for run in runs_]
    expected = sorted(tasks_for(runs_[0], runs_[0].snapshot), key=lambda task: task.position)
    for run, tasks in zip(runs_, stored, strict=True):
        assert [[getattr(t, name) for name in PLANNED] for t in tasks] == [
            [getattr(t, name) for name in PLANNED] for t in expected
        ]
        assert {task.run_id for task in tasks} == {run.pk}
        by_node = {task.node_id: task for task in tasks}
        inline = next(task for task in tasks if task.name == "inline")
        assert inline.parent_id == next(task.pk for task in tasks if task.name == "check")  # this run's parent
        assert (
            by_node[inline.node_id].max_attempts == 1 and next(t for t in tasks if t.name == "later").max_attempts == 3
        )
    assert not {task.pk for task in stored[0]} & {task.pk for task in stored[1]}
    assert stored[0][0].created_at < stored[1][0].created_at


def test_the_leading_branches_are_handed_off_with_their_due_time_and_the_rest_is_left_to_the_walk(tree):
    before = datetime.datetime.now(datetime.UTC)
    record = submit(tree)

    tasks = {task.name: task for task in Run.objects.get(record=record).tasks.all()}
    first, second = tasks["first"], tasks["second"]
    assert before <= first.due_at <= second.due_at  # due at once, each when it was planned
    assert (
        first.enqueued_at is not None and second.enqueued_at is None
    )  # one broker row; the dispatcher sends the other
    # The delay after the condition is not planned at submit: the inline walk hands it off itself.
    assert tasks["later"].due_at is not None and tasks["later"].due_at - before >= datetime.timedelta(seconds=3599)
    assert tasks["inline"].status == RunTask.Status.COMPLETE


def test_the_plan_is_kept_on_the_version_and_made_again_for_a_new_one_or_the_debug_switch(tree, monkeypatch):
    form, version = published_form(tree.slug)
    made = []
    monkeypatch.setattr(runs._StartPlan, "__init__", _counting(runs._StartPlan.__init__, made))
    monkeypatch.setattr(form, "collect_debug", False)  # the process-wide definition: put back after
    for collect_debug in (False, False, True):
        form.collect_debug = collect_debug
        record = RecordFactory(form=form)
        with transaction.atomic():
            run = run_start(record=record, version=version)
        assert {task.collect_debug for task in run.tasks.all()} == {collect_debug}
    key = (connection.alias, connection.vendor)
    assert made == [False, True] and set(version.__dict__["_start_plans"]) == {(*key, False), (*key, True)}

    add_node(tree, "set_flag", name="added", config={"flag": "added"})  # a new version
    form, newer = published_form(tree.slug)
    assert newer.pk != version.pk
    record = RecordFactory(form=form)
    with transaction.atomic():
        run = run_start(record=record, version=newer)
    assert "added" in {task.name for task in run.tasks.all()}
    assert "_start_plans" not in TreeVersion.objects.get(pk=version.pk).__dict__  # on the instance only


def test_a_run_of_a_snapshot_that_is_no_version_s_plans_its_own_and_stores_that_snapshot(tree):
    form, version = published_form(tree.slug)
    snapshot = [dict(node) for node in version.snapshot[:1]]
    record = RecordFactory(form=form)
    with transaction.atomic():
        run = run_start(record=record, snapshot=snapshot, version=version)
    stored = Run.objects.get(pk=run.pk)
    assert stored.snapshot == snapshot and run.snapshot is snapshot
    assert [task.name for task in stored.tasks.filter(parent=None)] == ["first"]


def test_a_run_stores_its_version_s_snapshot_and_holds_the_snapshot_itself_after_the_insert(tree):
    form, version = published_form(tree.slug)
    record = submit(tree)
    run = Run.objects.get(record=record)
    assert run.snapshot == version.snapshot
    with transaction.atomic():
        started = run_start(record=RecordFactory(form=form), version=version)
    assert started.snapshot is version.snapshot  # not the prepared JSON the insert wrote


# --- The pieces from events.hotsql -------------------------------------------------------------


def test_rows_made_once_and_varied_are_stored_as_insert_stores_the_instances(tree):
    run = Run.objects.get(record=submit(tree))
    prototypes = [
        new(
            RunTask, id=None, run_id=None, node_id=9001, position=101, type="pause", name="a", label="A", max_attempts=2
        ),
        new(RunTask, id=None, run_id=None, node_id=9002, position=102, type="set_flag", visible=True, logs=[{"x": 1}]),
    ]
    rows = Rows(prototypes, runs._StartPlan.VARYING, connection)
    when = datetime.datetime(2026, 5, 1, 12, 30, 15, 123456, tzinfo=datetime.UTC)
    ids = [runs.uuid7(), runs.uuid7()]
    made = [
        rows.row(0, {"id": ids[0], "run_id": rows.saved("run_id", run.pk), "created_at": when, "due_at": None}),
        rows.row(1, {"id": ids[1], "run_id": run.pk, "parent_id": ids[0], "created_at": when, "handoff_id": 2**40}),
    ]
    with transaction.atomic():
        insert_rows(made, connection)

    expected = [
        copy(prototypes[0], id=ids[0], run_id=run.pk, created_at=when),
        copy(prototypes[1], id=ids[1], run_id=run.pk, parent_id=ids[0], created_at=when, handoff_id=2**40),
    ]
    for task in expected:
        assert columns(RunTask.objects.get(pk=task.pk)) == columns(task)


def test_rows_refuse_a_time_stamp_or_a_fresh_default_that_would_not_vary_and_a_name_that_is_no_field(tree):
    prototype = new(RunTask, id=None, run_id=None)
    with pytest.raises(ValueError, match="created_at"):
        Rows([prototype], ("id", "run_id"), connection)
    with pytest.raises(ValueError, match="nothing"):
        Rows([prototype], ("id", "created_at", "nothing"), connection)
    record = new(Record, form_id=tree.pk, data={})
    with pytest.raises(ValueError, match="token: its default differs per instance"):
        Rows([record], ("id", "created_at", "updated_at"), connection)
    assert Rows([record], ("id", "created_at", "updated_at", "token"), connection).templates


def test_a_copy_has_the_values_of_its_original_and_its_own_state(tree):
    run = Run.objects.get(record=submit(tree))
    original = run.tasks.get(name="first")
    copied = copy(original, status=RunTask.Status.PENDING, name="copied")
    assert columns(copied) == columns(original) | {"status": RunTask.Status.PENDING, "name": "copied"}
    assert copied._state.adding and copied._state is not original._state
    assert not copied._state.fields_cache  # no related object cached from the original


def test_a_saved_value_is_written_as_it_was_prepared(tree):
    run = Run.objects.get(record=submit(tree))
    snapshot = [{"id": 1, "type": "set_flag", "config": {"flag": "x"}}]
    other = new(Run, id=runs.uuid7(), form_id=run.form_id, record_id=run.record_id, event="e", snapshot=None)
    other.snapshot = Saved.of(Run, "snapshot", snapshot, connection)
    with transaction.atomic():
        insert([other], connection)
    assert Run.objects.get(pk=other.pk).snapshot == snapshot


@pytest.mark.skipif(connection.vendor != "sqlite", reason="SQLite's text of a time")
def test_on_sqlite_a_time_is_written_as_django_adapts_it_in_and_out_of_the_connection_s_zone():
    from events.hotsql import _saver

    field = RunTask._meta.get_field("due_at")
    prepare = _saver(field, connection)[0]
    zones = [datetime.UTC, datetime.timezone(datetime.timedelta(hours=5, minutes=30)), datetime.UTC]
    for zone in zones:
        for moment in (
            datetime.datetime(2026, 12, 1, 2, 3, 4, 5, tzinfo=zone),
            datetime.datetime(2026, 1, 1, tzinfo=zone),
        ):
            assert (
                prepare(moment)
                == field.get_db_prep_save(moment, connection)
                == connection.ops.adapt_datetimefield_value(moment)
            )

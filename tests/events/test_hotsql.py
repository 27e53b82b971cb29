"""Hot statements written as SQL (events.hotsql, events.engine.reads) read exactly what the ORM would read."""

import uuid

import pytest
from django.db import IntegrityError, connection, models, transaction
from django.http import Http404
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from events.engine import run_finish_if_done, run_start
from events.engine.reads import job_task, run_tasks_of_nodes, task_with_run
from events.hotsql import Columns, Statement, db_value, insert, new, table, update
from events.models import Run, RunTask, TreeVersion
from events.tasks import task_job
from forms_app.definitions import published_form
from forms_app.models import Form, Record
from forms_app.services import record_submit
from forms_app.waiting import run_task_rows, submission_of
from tests.factories import FieldFactory, FormFactory, RecordFactory, add_node, steps_created

pytestmark = pytest.mark.django_db


def field_values(instance):
    return {field.attname: getattr(instance, field.attname) for field in type(instance)._meta.concrete_fields}


@pytest.fixture
def submitted(form):
    background = add_node(form, "background", name="later", label="Later", visible=True)
    add_node(form, "set_flag", parent=background, config={"flag": "done"})
    record = record_submit(form=form, data={"name": "Ada"})
    steps_created(record, "later")  # as its first start creates them: a run with a step's row
    return record


@pytest.fixture
def queued_one_step(form, submit_queued):
    """A submission whose tree is one background container holding one set_flag, its job left queued:
    (the submission, the container's task)."""
    background = add_node(form, "background", name="later")
    add_node(form, "set_flag", parent=background, config={"flag": "done"})
    submitted = submit_queued()
    return submitted, RunTask.objects.get(run__record_id=submitted.record.pk, parent__isnull=True)


def test_a_model_loaded_from_its_columns_equals_the_orm_s_instance_field_by_field(submitted):
    run = Run.objects.get(record=submitted)
    run.properties = {"nested": {"list": [1, 2]}, "text": "é"}
    run.save(update_fields=["properties"])
    columns = Columns(Run, "r")
    statement = Statement(lambda c: f"SELECT {columns.sql(c)} FROM {table(Run, c)} r WHERE r.id = %s")

    loaded = columns.load(statement.rows(connection, [db_value(Run, "id", run.pk, connection)])[0], connection)

    expected = Run.objects.get(pk=run.pk)
    assert field_values(loaded) == field_values(expected)
    assert loaded.created_at.tzinfo is not None  # converted, not the backend's text
    assert loaded._state.adding is False and loaded._state.db == "default"


def test_named_columns_load_a_partial_instance_and_a_null_key_loads_none(submitted):
    columns = Columns(RunTask, "t", ["id", "status", "finished_at"])
    row = [None, None, None]
    assert columns.load(row, connection) is None
    task = RunTask.objects.filter(run__record=submitted).first()
    found = columns.load([db_value(RunTask, "id", task.pk, connection), task.status, None], connection)
    assert found.pk == task.pk and found.status == task.status
    assert found.get_deferred_fields() >= {"name", "label"}


def test_the_poll_s_read_gives_the_record_its_form_its_submission_run_and_its_tasks_in_one_query(submitted):
    run = Run.objects.get(record=submitted, is_submission=True)
    RunTask.objects.filter(run=run, parent__isnull=True).update(
        status=RunTask.Status.COMPLETE, subtext="<b>x</b>", finished_at=run.created_at
    )
    other = record_submit(form=submitted.form, data={"name": "Grace"})  # its tasks are not this record's

    with CaptureQueriesContext(connection) as queries:
        record, found_run, rows = submission_of(submitted.token)
        form_title, run_record = record.form.title, found_run.record
    assert len(queries) == 1
    assert field_values(record) == field_values(Record.objects.get(pk=submitted.pk))
    assert field_values(found_run) == field_values(run)
    assert form_title == submitted.form.title and run_record is record
    expected = RunTask.objects.filter(run=run).order_by("position").values_list(*rows[0]._fields, named=True)
    assert [tuple(row) for row in sorted(rows, key=lambda row: row.position)] == [tuple(row) for row in expected]
    assert len(rows) == 2 and other.pk != record.pk


def test_the_poll_s_read_finds_a_record_without_a_run_and_refuses_an_unknown_token(form):
    record = RecordFactory(form=form)
    found, run, rows = submission_of(record.token)
    assert (found.pk, run, rows) == (record.pk, None, [])
    with pytest.raises(Record.DoesNotExist):
        submission_of("no-such-token")


def test_the_poll_s_read_leaves_out_the_tasks_of_a_record_s_other_runs(submitted):
    run = Run.objects.get(record=submitted, is_submission=True)
    Run.objects.filter(pk=run.pk).update(is_submission=False)  # as a run the record's update started

    found, found_run, rows = submission_of(submitted.token)

    assert (found.pk, found_run, rows) == (submitted.pk, None, [])


def test_the_poll_reads_the_run_s_tasks_as_the_orm_would(submitted):
    run = Run.objects.get(record=submitted)
    RunTask.objects.filter(run=run).update(status=RunTask.Status.COMPLETE, subtext="<b>x</b>")
    RunTask.objects.filter(run=run, parent__isnull=True).update(finished_at=run.created_at)

    rows = sorted(run_task_rows(run), key=lambda row: row.position)

    expected = list(
        RunTask.objects.filter(run=run)
        .order_by("position")
        .values_list(*[name for name in rows[0]._fields], named=True)
    )
    assert [tuple(row) for row in rows] == [tuple(row) for row in expected]
    assert len(rows) == 2


@pytest.mark.parametrize("lock", [False, True])
def test_a_job_s_read_gives_the_task_its_run_record_and_form_in_one_query(submitted, lock):
    task = RunTask.objects.filter(run__record=submitted, parent__isnull=True).get()
    with transaction.atomic(), CaptureQueriesContext(connection) as queries:
        found = task_with_run(task.pk, with_record=True, lock=lock)
        run, record, form = found.run, found.run.record, found.run.record.form
    assert len(queries) == 1
    assert ("FOR UPDATE" in queries[0]["sql"]) == (lock and connection.features.has_select_for_update)
    assert field_values(found) == field_values(RunTask.objects.get(pk=task.pk))
    assert field_values(run) == field_values(Run.objects.get(pk=task.run_id))
    assert (record.pk, form.pk) == (submitted.pk, submitted.form_id)


def test_a_job_s_read_of_an_unknown_task_is_none(db):
    assert task_with_run(uuid.uuid4()) is None


def test_a_walk_reads_the_tasks_of_its_nodes_with_their_run_attached(submitted):
    run = Run.objects.get(record=submitted)
    tasks = RunTask.objects.filter(run=run)
    wanted = [task.node_id for task in tasks if task.parent_id is not None]
    with CaptureQueriesContext(connection) as queries:
        found = run_tasks_of_nodes(run, wanted)
        runs = {task.run for task in found}
    assert len(queries) == 1 and runs == {run}
    assert [field_values(task) for task in found] == [field_values(tasks.get(node_id=node)) for node in wanted]
    assert run_tasks_of_nodes(run, []) == []


def test_an_update_prepares_values_as_the_orm_saves_them_and_counts_the_rows_it_changed(submitted):
    task = RunTask.objects.filter(run__record=submitted, parent__isnull=True).get()
    key = db_value(RunTask, "id", task.pk, connection)
    output = {"text": "é ' \" \\", "nested": [1, None, True]}
    finished = timezone.now()

    changed = update(
        RunTask,
        connection,
        {"output": output, "finished_at": finished, "status": RunTask.Status.COMPLETE},
        increment=["attempt"],
        where="id = %s AND status = %s",
        params=[key, task.status],
    )
    again = update(RunTask, connection, {"subtext": "x"}, where="id = %s AND status = %s", params=[key, task.status])

    assert (changed, again) == (1, 0)
    task_after = RunTask.objects.get(pk=task.pk)
    assert (task_after.output, task_after.finished_at, task_after.attempt) == (output, finished, task.attempt + 1)
    assert task_after.status == RunTask.Status.COMPLETE and task_after.subtext == task.subtext


def test_an_insert_reads_back_automatic_keys_and_fills_auto_now_add_in_as_many_batches_as_needed(form, monkeypatch):
    records = [Record(form=form, data={"n": index, "text": "é'\""}) for index in range(7)]
    monkeypatch.setattr(type(connection.ops), "bulk_batch_size", lambda self, fields, objs: 3)

    with CaptureQueriesContext(connection) as queries:
        insert(records, connection)

    assert len(queries) == 3  # 3 + 3 + 1 rows
    stored = {record.pk: record for record in Record.objects.filter(form=form)}
    assert sorted(stored) == sorted(record.pk for record in records)
    for record in records:
        assert field_values(stored[record.pk]) == field_values(record)
        assert record.created_at is not None and record._state.adding is False


@pytest.mark.skipif(connection.vendor != "sqlite", reason="SQLite's way; PostgreSQL sends one multi-row statement")
def test_on_sqlite_rows_without_keys_to_read_back_go_as_one_row_s_statement_run_for_each(submitted):
    run = Run.objects.get(record=submitted)
    tasks = [new(RunTask, id=uuid.uuid4(), run_id=run.pk, node_id=900 + n, position=n, label=f"n{n}") for n in range(4)]

    with CaptureQueriesContext(connection) as queries:
        insert(tasks, connection)

    assert len(queries) == 1 and queries[0]["sql"].startswith("4 times: INSERT")
    assert queries[0]["sql"].count("%s") == len(RunTask._meta.concrete_fields)  # one row's placeholders
    stored = {task.pk: task for task in RunTask.objects.filter(run=run, node_id__gte=900)}
    assert sorted(stored) == sorted(task.pk for task in tasks)
    for task in tasks:
        assert field_values(stored[task.pk]) == field_values(task) and task._state.adding is False


@pytest.mark.skipif(connection.vendor != "sqlite", reason="SQLite's way; PostgreSQL sends one multi-row statement")
@pytest.mark.django_db(transaction=True)
def test_on_sqlite_rows_inserted_in_autocommit_go_in_all_or_none(submitted):
    run = Run.objects.get(record=submitted)
    taken = RunTask.objects.filter(run=run).first().node_id
    tasks = [new(RunTask, id=uuid.uuid4(), run_id=run.pk, node_id=node, position=0) for node in (901, 902, taken)]

    assert connection.get_autocommit() and not connection.in_atomic_block
    with pytest.raises(IntegrityError):
        insert(tasks, connection)  # the third row's node is taken in this run (one_task_per_node_per_run)

    assert not RunTask.objects.filter(run=run, node_id__in=[901, 902]).exists()


def test_an_insert_stores_every_kind_of_value_as_the_orm_saves_it_and_one_time_stamp_for_all_rows(submitted):
    run = Run.objects.get(record=submitted)
    when = timezone.now()
    tasks = [
        # Values the insert passes as they are (str, int, bool, UUID, None, empty JSON) and values it
        # hands to the field (a text enum, a number as text, a time, JSON with content, a UUID as text).
        RunTask(run=run, node_id=9001, position=3, type="pause", name="a'\"é", visible=True, logs=[], output={}),
        RunTask(
            id=str(uuid.uuid4()),
            run=run,
            node_id="9002",
            position=4,
            type="pause",
            status=RunTask.Status.AWAITING,
            due_at=when,
            enqueued_at=when,
            handoff_id=2**40,
            logs=[{"at": "x", "message": "é"}],
            output={"nested": [1, None, True]},
            debug={"steps": []},
        ),
    ]

    insert(tasks, connection)

    for task in tasks:
        stored = RunTask.objects.get(pk=task.pk)
        expected = field_values(task) | {"id": uuid.UUID(str(task.pk)), "node_id": int(task.node_id)}
        assert field_values(stored) == expected
    assert tasks[0].created_at == tasks[1].created_at  # one insert, one time stamp


def test_an_insert_sends_each_value_as_the_field_would_with_its_type(submitted):
    """Not only the same value: the same parameter (on PostgreSQL Django sends an int as the column's
    integer type, Int2/Int4/Int8; a bare int would be typed by its size)."""
    from events.hotsql import _row_values, _saver

    run = Run.objects.get(record=submitted)
    tasks = list(RunTask.objects.filter(run=run)) + [
        RunTask(run=run, node_id=2**40, position=7, type="x", handoff_id=None, output={"a": 1}, logs=[])
    ]
    for model, objs in ((RunTask, tasks), (Run, [run])):
        fields = [field for field in model._meta.concrete_fields if not getattr(field, "auto_now_add", False)]
        sent = _row_values(objs, fields, [_saver(field, connection) for field in fields])
        expected = [field.get_db_prep_save(field.pre_save(obj, True), connection) for obj in objs for field in fields]
        assert [(type(value), str(value)) for value in sent] == [(type(value), str(value)) for value in expected]


def test_a_new_instance_equals_the_one_init_builds_and_refuses_an_unknown_name(submitted):
    run = Run.objects.get(record=submitted)
    key = uuid.uuid4()
    built = new(RunTask, id=key, run_id=run.pk, node_id=5, position=1, type="pause", label="Pause")
    expected = RunTask(id=key, run=run, node_id=5, position=1, type="pause", label="Pause")
    assert field_values(built) == field_values(expected) | {"created_at": built.created_at}
    assert built.logs == [] and built.logs is not new(RunTask, id=key, run_id=run.pk).logs  # defaults are fresh
    with pytest.raises(TypeError, match="'run'"):
        new(RunTask, id=key, run=run)


def test_a_started_run_holds_its_record_and_parents_and_stores_them(submitted):
    parent = Run.objects.get(record=submitted)
    task = parent.tasks.get(name="later")
    with transaction.atomic():
        child = run_start(record=submitted, event="follow_up", parent_run=parent, parent_task=task, snapshot=[])

    with CaptureQueriesContext(connection) as queries:
        assert (child.record, child.parent_run, child.parent_task) == (submitted, parent, task)
    assert len(queries) == 0
    stored = Run.objects.get(pk=child.pk)
    assert (stored.record_id, stored.parent_run_id, stored.parent_task_id) == (submitted.pk, parent.pk, task.pk)
    assert (stored.form_id, stored.depth, stored.event, stored.version_id) == (
        submitted.form_id,
        1,
        "follow_up",
        parent.version_id,
    )
    top = Run.objects.get(pk=parent.pk)
    assert (top.parent_run_id, top.parent_task_id, top.depth) == (None, None, 0)


def test_a_new_instance_goes_through_init_when_a_receiver_listens_to_its_model_s_post_init(submitted):
    """``new`` skips ``Model.__init__``, and with it the init signals: only where no receiver would miss them."""
    run = Run.objects.get(record=submitted)
    seen = []

    def receiver(sender, instance, **kwargs):
        seen.append(instance)

    models.signals.post_init.connect(receiver, sender=RunTask)
    try:
        built = new(RunTask, id=uuid.uuid4(), run_id=run.pk, node_id=5, position=1, type="pause")
        with pytest.raises(TypeError, match="'run'"):
            new(RunTask, id=uuid.uuid4(), run=run)
    finally:
        models.signals.post_init.disconnect(receiver, sender=RunTask)
    assert seen == [built] and built.run_id == run.pk and built.status == RunTask.Status.PENDING
    assert new(RunTask, id=uuid.uuid4(), run_id=run.pk) not in seen


def test_only_django_s_own_field_classes_are_written_as_json_in_the_one_statement():
    """A subclass may prepare its values, or name its column's type, in its own way: its values refuse."""
    from events.hotsql import _json_kind

    class Shouting(models.CharField):
        def get_prep_value(self, value):
            return str(value).upper()

    assert _json_kind(RunTask._meta.get_field("name")) == "text"
    assert _json_kind(RunTask._meta.get_field("run")) == "uuid"
    assert _json_kind(Shouting(max_length=5)) is None


def test_a_submit_reads_the_form_its_fields_and_its_live_version_in_one_query(form):
    add_node(form, "set_flag", config={"flag": "one"})
    add_node(form, "set_flag", config={"flag": "two"})  # publishes version 2
    form.fields.update(position=models.F("position") + 1)
    FieldFactory(form=form, name="first", position=0)  # added last, shown first
    FieldFactory(form=FormFactory(), name="elsewhere")  # another form's field

    with CaptureQueriesContext(connection) as queries:
        found, version = published_form(form.slug)
        names = [field.name for field in found.fields.all()]
    assert len(queries) == 1
    assert names == [field.name for field in form.fields.all()] and names[0] == "first" and len(names) > 1
    assert version == TreeVersion.objects.live(form) and version.number == 2
    assert field_values(found) == field_values(form)


def test_a_submit_s_read_finds_no_unpublished_form_and_no_version_before_the_first_publish(form):
    _, version = published_form(form.slug)
    assert version is None
    Form.objects.filter(pk=form.pk).update(is_published=False)
    with pytest.raises(Http404):
        published_form(form.slug)


def test_a_submit_of_a_form_with_no_published_tree_does_not_look_for_its_version_again(form, client):
    with CaptureQueriesContext(connection) as queries:
        response = client.post(f"/f/{form.slug}/", {"email": "a@example.com", "seats": "1"})

    assert response.status_code == 303
    record = Record.objects.get(form=form)
    assert record.is_complete and Run.objects.get(record=record).version is None
    versions = [query["sql"] for query in queries if TreeVersion._meta.db_table in query["sql"]]
    assert len(versions) == 1, versions  # the form's read, which found none


def test_a_queue_job_of_one_step_is_one_transaction_with_no_savepoint_of_its_own(queued_one_step):
    submitted, container = queued_one_step

    with CaptureQueriesContext(connection) as queries:
        task_job(str(container.pk))

    statements = [query["sql"].split()[0].upper() for query in queries]
    # The test's own transaction wraps the job's: its one transaction shows as one savepoint.
    assert statements.count("SAVEPOINT") == 1, statements
    assert Run.objects.get(pk=container.run_id).status == Run.Status.COMPLETE
    assert Record.objects.get(pk=submitted.record.pk).flags == {"done": True}


@pytest.mark.parametrize("is_submission", [True, False])
def test_a_run_s_end_writes_the_run_and_a_submission_s_record_flag_together_on_postgresql(
    queued_one_step, is_submission
):
    submitted, container = queued_one_step
    run = container.run
    Run.objects.filter(pk=run.pk).update(is_submission=is_submission)
    run.refresh_from_db()
    RunTask.objects.filter(run=run).update(status=RunTask.Status.COMPLETE)

    with CaptureQueriesContext(connection) as queries:
        won = run_finish_if_done(run=run)
        again = run_finish_if_done(run=run)  # the run is over: nothing more to win

    writes = [query["sql"] for query in queries if query["sql"].split()[0].upper() in ("UPDATE", "WITH")]
    postgresql_together = connection.vendor == "postgresql" and is_submission
    assert (won, again) == (True, False)
    assert len(writes) == (2 if postgresql_together else 2 + is_submission), writes
    assert Run.objects.get(pk=run.pk).status == Run.Status.COMPLETE
    assert Record.objects.get(pk=submitted.record.pk).is_complete is is_submission


def test_a_job_reads_its_task_with_run_record_form_and_its_container_s_steps_in_one_query(form, submit_queued):
    background = add_node(form, "background", name="later")
    for flag in ("one", "two"):
        add_node(form, "set_flag", parent=background, config={"flag": flag})
    condition = add_node(
        form,
        "condition",
        parent=background,
        config={"match": "all", "rules": [{"field": "name", "operator": "is_set"}]},
    )
    add_node(form, "set_flag", parent=condition, config={"flag": "inner"})  # a grandchild: not a step of it
    submitted = submit_queued()
    container = RunTask.objects.get(run__record_id=submitted.record.pk, parent__isnull=True)
    assert job_task(container.pk)[1] == []  # not started: no steps yet
    steps_created(submitted.record, "later")

    with CaptureQueriesContext(connection) as queries:
        task, children = job_task(container.pk)
        run, record, form_title = task.run, task.run.record, task.run.record.form.title
        runs = {child.run for child in children}

    assert len(queries) == 1
    assert field_values(task) == field_values(container) and field_values(run) == field_values(container.run)
    assert field_values(record) == field_values(submitted.record) and form_title == form.title
    expected = RunTask.objects.filter(parent=container, branch="main").order_by("position")
    assert [field_values(child) for child in sorted(children, key=lambda child: child.position)] == [
        field_values(child) for child in expected
    ]
    assert len(children) == 3 and runs == {run}
    assert job_task(uuid.uuid4()) == (None, [])


def test_a_one_step_container_job_makes_no_read_of_its_steps_and_ends_the_container_with_the_run_lock(
    queued_one_step,
):
    submitted, container = queued_one_step

    with CaptureQueriesContext(connection) as queries:
        task_job(str(container.pk))

    statements = [query["sql"] for query in queries if query["sql"].split()[0].upper() not in ("SAVEPOINT", "RELEASE")]
    # Read (task, run, record, form, steps: none, its first start); claim the container and insert its
    # step's row, claimed already (PostgreSQL: one statement; SQLite: two); then PostgreSQL: the flag,
    # the step's end and the container's end with the run's lock in one statement, the run's end with
    # the record's flag (4); SQLite: the flag, end the step, end the container, end the run, the
    # record's flag (8).
    assert len(statements) == (4 if connection.vendor == "postgresql" else 8), statements
    if connection.vendor == "postgresql":
        together = statements[2]
        assert together.count('UPDATE "') == 3 and "FOR UPDATE" in together and '"flags" = jsonb_set' in together
    (step,) = RunTask.objects.filter(parent=container)
    assert step.status == RunTask.Status.COMPLETE and step.position == container.position + 1
    assert step.attempt == 1 and step.started_at is not None and step.lease_owner
    finished = RunTask.objects.get(pk=container.pk)
    assert finished.status == RunTask.Status.COMPLETE and finished.logs[-1]["line"] == "all steps handled"
    assert Run.objects.get(pk=container.run_id).status == Run.Status.COMPLETE
    assert Record.objects.get(pk=submitted.record.pk).flags == {"done": True}
    assert Record.objects.get(pk=submitted.record.pk).is_complete


def test_on_postgresql_a_hot_statement_is_prepared_once_per_connection_and_reads_the_same(submitted):
    """config/settings.py: server-side binding, prepared from a statement's fifth run (SQLite prepares
    every statement itself: nothing to check there)."""
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL's prepared statements; the CI's PostgreSQL pass runs this")
    first = submission_of(submitted.token)
    for _ in range(6):
        again = submission_of(submitted.token)

    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements")
        prepared = [statement for (statement,) in cursor.fetchall()]

    assert any(statement.startswith("SELECT 0, ") and "UNION ALL" in statement for statement in prepared)
    assert field_values(again[0]) == field_values(first[0]) and field_values(again[1]) == field_values(first[1])
    assert sorted(again[2]) == sorted(first[2])

"""Hot reads written as SQL (events.hotsql) load exactly what the ORM would load."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from events.hotsql import Columns, Statement, db_value, table
from events.models import Run, RunTask
from forms_app.models import Record
from forms_app.services import record_submit
from forms_app.waiting import run_task_rows, submission_of
from tests.factories import RecordFactory, add_node

pytestmark = pytest.mark.django_db


def field_values(instance):
    return {field.attname: getattr(instance, field.attname) for field in type(instance)._meta.concrete_fields}


@pytest.fixture
def submitted(form):
    background = add_node(form, "background", name="later", label="Later", visible=True)
    add_node(form, "set_flag", parent=background, config={"flag": "done"})
    return record_submit(form=form, data={"name": "Ada"})


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


def test_the_poll_s_read_gives_the_record_its_form_and_its_submission_run_in_one_query(submitted):
    with CaptureQueriesContext(connection) as queries:
        record, run = submission_of(submitted.token)
        form_title, run_record = record.form.title, run.record
    assert len(queries) == 1
    assert field_values(record) == field_values(Record.objects.get(pk=submitted.pk))
    assert field_values(run) == field_values(Run.objects.get(record=submitted, is_submission=True))
    assert form_title == submitted.form.title and run_record is record


def test_the_poll_s_read_finds_a_record_without_a_run_and_refuses_an_unknown_token(form):
    record = RecordFactory(form=form)
    found, run = submission_of(record.token)
    assert (found.pk, run) == (record.pk, None)
    with pytest.raises(Record.DoesNotExist):
        submission_of("no-such-token")


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

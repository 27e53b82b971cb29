"""The tables every submit and step writes carry no index that another one already serves.

Every claim and finish changes a task's status, an indexed column, so PostgreSQL writes a new entry
into each of the table's indexes; an index whose columns begin another one's (or a second index on
the same column, as PostgreSQL's LIKE index beside a CharField's db_index) costs each of those
writes and serves no read the other does not.
"""

import pytest
from django.db import connection
from django.utils import timezone

from events.ids import uuid7
from events.models import Run, RunTask
from forms_app.models import Record
from forms_app.services import record_submit
from tests.factories import add_node, steps_created

pytestmark = pytest.mark.django_db


def indexes(model):
    with connection.cursor() as cursor:
        found = connection.introspection.get_constraints(cursor, model._meta.db_table)
    partial = {index.name for index in model._meta.indexes if index.condition is not None}
    return {
        name: tuple(info["columns"])
        for name, info in found.items()
        if (info["index"] or info["unique"]) and not info["primary_key"] and info["columns"] and name not in partial
    }


@pytest.mark.parametrize("model", [RunTask, Run, Record], ids=lambda model: model.__name__)
def test_no_index_of_a_hot_table_is_served_by_another(model):
    found = indexes(model)

    redundant = [
        (name, other)
        for name, columns in found.items()
        for other, other_columns in found.items()
        if name != other and other_columns[: len(columns)] == columns and (columns != other_columns or name > other)
    ]

    assert redundant == [], found


def test_the_reads_still_have_their_indexes():
    # The poll finds a record by its token, a run's tasks by their run, the queue due tasks by status.
    assert ("token",) in indexes(Record).values()
    assert ("run_id", "status") in indexes(RunTask).values()
    assert ("status", "is_container", "due_at") in indexes(RunTask).values()
    assert ("status",) in indexes(Run).values()


def test_the_dispatcher_s_question_is_answered_by_its_partial_index():
    """Only tasks not handed off yet are in task_due_unsent_idx: a backlog waiting for a worker is not read."""
    from events.queue import DUE_UNSENT

    sql = DUE_UNSENT.sql(connection)
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SET enable_seqscan = off")  # a test's tiny table: can the index serve it at all?
            try:
                cursor.execute(f"EXPLAIN {sql}", ["2026-01-01T00:00:00+00:00", 200])
                plan = "\n".join(row[0] for row in cursor.fetchall())
            finally:
                cursor.execute("RESET enable_seqscan")
        else:
            cursor.execute(f"EXPLAIN QUERY PLAN {sql}", ["2026-01-01 00:00:00", 200])
            plan = "\n".join(str(row[-1]) for row in cursor.fetchall())

    assert "task_due_unsent_idx" in plan, plan  # (SQLite: the statement names it; this says it can serve it)


def plan_of(sql, params):
    """The database's plan for ``sql`` (PostgreSQL: with sequential scans off, as a test's tables are tiny)."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SET enable_seqscan = off")
            try:
                cursor.execute(f"EXPLAIN {sql}", params)
                return "\n".join(row[0] for row in cursor.fetchall())
            finally:
                cursor.execute("RESET enable_seqscan")
        cursor.execute(f"EXPLAIN QUERY PLAN {sql}", params)
        return "\n".join(str(row[-1]) for row in cursor.fetchall())


def plan_of_queryset(queryset):
    sql, params = queryset.query.sql_with_params()
    return plan_of(sql, params)


def test_a_submit_s_rows_go_into_no_index_by_a_column_they_leave_empty(form):
    """An index entry is written for a NULL too: a step has no due time, a top-level task no parent,
    a submission's run no parent run. Those columns' indexes hold only the rows that have a value."""
    background = add_node(form, "background", name="later")
    add_node(form, "set_flag", parent=background, config={"flag": "done"})
    record = record_submit(form=form, data={"email": "a@example.com"})
    steps_created(record, "later")  # and the step's row, which the container's first start writes
    rows = {Run: list(Run.objects.filter(record=record)), RunTask: list(RunTask.objects.filter(run__record=record))}
    assert len(rows[RunTask]) == 2

    for model, instances in rows.items():
        by_column = {field.column: field.attname for field in model._meta.concrete_fields}
        for name, columns in indexes(model).items():
            empty = [obj for obj in instances if all(getattr(obj, by_column[column]) is None for column in columns)]
            assert empty == [], f"{name} {columns}: an entry for each row that has no value"


@pytest.mark.parametrize(
    "queryset",
    [
        lambda: RunTask.objects.filter(parent_id="00000000000000000000000000000001"),
        lambda: RunTask.objects.filter(
            parent__in=["00000000000000000000000000000001", "00000000000000000000000000000002"]
        ),
    ],
    ids=["one parent", "parents (a cascade)"],
)
def test_a_task_s_steps_are_found_by_the_partial_parent_index(db, queryset):
    assert "task_parent_idx" in plan_of_queryset(queryset())


@pytest.mark.parametrize("column", ["parent_run", "parent_task"])
def test_the_runs_another_started_are_found_by_a_partial_index(db, column):
    assert f"run_{column}_idx" in plan_of_queryset(Run.objects.filter(**{f"{column}__in": [uuid7(), uuid7()]}))


@pytest.mark.parametrize(
    "queryset",
    [
        lambda now: RunTask.objects.awaiting_past_deadline(now),  # the sweep: callbacks that timed out
        lambda now: RunTask.objects.filter(status=RunTask.Status.ACTIVE, lease_expires_at__lt=now),  # leases
        lambda now: RunTask.objects.filter(status=RunTask.Status.PENDING, enqueued_at__lt=now),  # lost hand-offs
    ],
    ids=["deadlines", "leases", "hand-offs"],
)
def test_the_sweep_s_questions_begin_with_a_status_and_read_no_finished_task(db, queryset):
    assert "task_dispatch_idx" in plan_of_queryset(queryset(timezone.now()))

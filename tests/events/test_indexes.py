"""The tables every submit and step writes carry no index that another one already serves.

Every claim and finish changes a task's status, an indexed column, so PostgreSQL writes a new entry
into each of the table's indexes; an index whose columns begin another one's (or a second index on
the same column, as PostgreSQL's LIKE index beside a CharField's db_index) costs each of those
writes and serves no read the other does not.
"""

import pytest
from django.db import connection

from events.models import Run, RunTask
from forms_app.models import Record

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

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
    return {
        name: tuple(info["columns"])
        for name, info in found.items()
        if (info["index"] or info["unique"]) and not info["primary_key"] and info["columns"]
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

"""The engine's hot reads (every queue job, every callback), written once as SQL (``events.hotsql``).

Each gives what the queryset it replaces gave: model instances with the related objects
it selected already attached (``task.run``, ``run.record``, ``record.form``).
"""

from functools import cache

from django.db import connection

from ..hotsql import Columns, HeadAndRows, Statement, db_value, rows, split, table
from ..models import Node, Run, RunTask, record_model

TASK_COLUMNS = Columns(RunTask, "t")
RUN_COLUMNS = Columns(Run, "r")
CHILD_COLUMNS = Columns(RunTask, "c")


@cache
def _task_reads():
    """(record columns, form columns, {(with_record, lock): Statement}); built once the app registry is ready."""
    record = record_model()
    form = record._meta.get_field("form").related_model
    record_columns, form_columns = Columns(record, "rec"), Columns(form, "f")

    def build(with_record, lock):
        def sql(c):
            selected = [TASK_COLUMNS.sql(c), RUN_COLUMNS.sql(c)]
            if with_record:
                selected += [record_columns.sql(c), form_columns.sql(c)]
            locked = " FOR UPDATE" if lock and c.features.has_select_for_update else ""
            return f"SELECT {', '.join(selected)} {_task_from(c, with_record)}{locked}"

        return Statement(sql)

    statements = {
        (with_record, lock): build(with_record, lock) for with_record in (False, True) for lock in (False, True)
    }
    return record_columns, form_columns, statements


def task_with_run(task_id, *, with_record=False, lock=False):
    """The task of ``task_id`` with its run (and, ``with_record``, the run's record and form), or None.

    ``lock``: the rows are locked for the transaction (``SELECT ... FOR UPDATE`` where the database
    has it; SQLite's write transaction holds the whole database already).
    """
    record_columns, form_columns, statements = _task_reads()
    found = statements[with_record, lock].rows(connection, [db_value(RunTask, "id", task_id, connection)])
    if not found:
        return None
    return _task_loaded(found[0], with_record)


def _task_from(c, with_record):
    """``FROM`` a task ``t`` (``WHERE t.id = %s``) joined to its run ``r`` and, ``with_record``, its record
    ``rec`` and form ``f``."""
    record = record_model()
    form = record._meta.get_field("form").related_model
    joins = f" INNER JOIN {table(Run, c)} r ON r.id = t.run_id"
    if with_record:
        joins += f" INNER JOIN {table(record, c)} rec ON rec.id = r.record_id"
        joins += f" INNER JOIN {table(form, c)} f ON f.id = rec.form_id"
    return f"FROM {table(RunTask, c)} t{joins} WHERE t.id = %s"


def _task_loaded(row, with_record):
    record_columns, form_columns, _ = _task_reads()
    parts = (TASK_COLUMNS, RUN_COLUMNS, record_columns, form_columns) if with_record else (TASK_COLUMNS, RUN_COLUMNS)
    loaded = [columns.load(values, connection) for columns, values in zip(parts, split(row, *parts), strict=True)]
    task, run = loaded[0], loaded[1]
    RunTask.run.field.set_cached_value(task, run)
    if with_record:
        record, form = loaded[2], loaded[3]
        Run.record.field.set_cached_value(run, record)
        type(record).form.field.set_cached_value(record, form)
    return task


@cache
def _job_read():
    """A queue job's one read: its task with run, record and form, then the task's main-branch children."""
    record_columns, form_columns, _ = _task_reads()
    return HeadAndRows(
        (TASK_COLUMNS, RUN_COLUMNS, record_columns, form_columns),
        lambda c: _task_from(c, with_record=True),
        (CHILD_COLUMNS,),
        lambda c: f"FROM {table(RunTask, c)} c WHERE c.parent_id = %s AND c.branch = %s",
    )


def job_task(task_id):
    """A queue job's task as ``task_with_run(task_id, with_record=True)`` gives it, and the task's
    main-branch children (a deferred container's steps, which its walk needs; each with ``task.run``
    attached), in one statement: (None, []) when there is no such task.

    The children are read before the job's walk claims their container, as a read inside its
    transaction could be overtaken just the same: each step is claimed on its own (pending → active),
    and a claim that finds a step changed reports it.
    """
    key = db_value(RunTask, "id", task_id, connection)
    head, child_rows = _job_read().read(connection, [key, key, Node.Branch.MAIN])
    if head is None:
        return None, []
    task = _task_loaded(head, with_record=True)
    children = [CHILD_COLUMNS.load(row, connection) for row in child_rows]
    for child in children:
        RunTask.run.field.set_cached_value(child, task.run)
    return task, children


def run_tasks_of_nodes(run, node_ids):
    """The run's tasks of the nodes ``node_ids`` (each with ``task.run`` attached), in no particular order."""
    if not node_ids:
        return []
    sql = (
        f"SELECT {TASK_COLUMNS.sql(connection)} FROM {table(RunTask, connection)} t"
        f" WHERE t.run_id = %s AND t.node_id IN ({', '.join(['%s'] * len(node_ids))})"
    )
    found = rows(connection, sql, [db_value(RunTask, "run", run.pk, connection), *node_ids])
    tasks = [TASK_COLUMNS.load(row, connection) for row in found]
    for task in tasks:
        RunTask.run.field.set_cached_value(task, run)
    return tasks

"""Writes kept back for the next statement of a walk's transaction (events.hotsql.later, PostgreSQL).

A kept-back update is sent before any other statement (so every read sees it, and a savepoint
and its rollback come after it), with the statement that takes the run's lock when that comes
next, at the commit otherwise, and never after a rollback.
"""

import threading
import time

import psycopg
import pytest
from django.db import connection, transaction

from events import hotsql
from forms_app.models import Record
from tests.factories import RecordFactory

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL's round trips; SQLite has none"),
]


def flag_update(record, value):
    return hotsql.update_statement(Record, connection, {"flags": {"kept": value}}, where="id = %s", params=[record.pk])


def keep(record, value):
    """Keep back the update of ``record``'s flags to {"kept": value}; True if it was kept, and its parameters."""
    sql, params = flag_update(record, value)
    return hotsql.later(connection, sql, params, (Record, record.pk)), params


def stored_flags(record):
    return Record.objects.get(pk=record.pk).flags


@pytest.fixture
def record(form):
    return RecordFactory(form=form, flags={})


def staged(block):
    """Run ``block(atomic)`` in a transaction whose writes may be kept back, as a walk's are."""
    atomic = transaction.atomic()
    atomic.__enter__()
    hotsql.stage_begin(connection, atomic)
    try:
        block(atomic)
    except BaseException as exc:
        hotsql.stage_end(connection, send=False)
        atomic.__exit__(type(exc), exc, exc.__traceback__)
        raise
    hotsql.stage_end(connection, send=True)
    atomic.__exit__(None, None, None)


def test_a_kept_update_is_sent_before_the_next_statement_and_that_statement_sees_it(record):
    def block(atomic):
        assert keep(record, 1)[0]
        assert stored_flags(record) == {"kept": 1}  # the read came after it

    staged(block)
    assert stored_flags(record) == {"kept": 1}


def test_a_kept_update_goes_in_the_with_of_the_statement_that_takes_it(record):
    def block(atomic):
        _, params = keep(record, 2)
        parts, part_params, condition = hotsql.with_later(connection)
        assert parts.startswith("later0 AS (UPDATE") and part_params == params
        assert hotsql.rows(connection, f"WITH {parts} SELECT 1 WHERE {condition}", part_params) == [(1,)]
        assert hotsql.with_later(connection) == ("", [], "")  # taken: not sent a second time

    staged(block)
    assert stored_flags(record) == {"kept": 2}


def test_a_kept_update_of_a_row_the_statement_changes_itself_is_sent_on_its_own(record):
    def block(atomic):
        keep(record, 3)
        assert hotsql.with_later(connection, rows=[(Record, record.pk)]) == ("", [], "")
        assert connection._hotsql_stage.kept == []  # sent, not dropped:
        assert Record.objects.filter(pk=record.pk, flags={"kept": 3}).exists()

    staged(block)


def test_two_updates_of_one_row_are_not_kept_in_one_statement(record):
    def block(atomic):
        for value in (4, 5):
            keep(record, value)
        parts, part_params, condition = hotsql.with_later(connection)
        assert parts.count("later") == 1  # the first one went before the second was kept
        hotsql.rows(connection, f"WITH {parts} SELECT 1 WHERE {condition}", part_params)

    staged(block)
    assert stored_flags(record) == {"kept": 5}


def test_a_kept_update_is_sent_at_the_commit_and_dropped_with_a_rollback(record):
    def commits(atomic):
        keep(record, 6)

    staged(commits)
    assert stored_flags(record) == {"kept": 6}

    def fails(atomic):
        keep(record, 7)
        raise RuntimeError("the walk broke")

    with pytest.raises(RuntimeError):
        staged(fails)
    assert stored_flags(record) == {"kept": 6}


def test_a_savepoint_rolled_back_takes_back_nothing_kept_before_it_and_nothing_is_kept_inside_it(record):
    def block(atomic):
        keep(record, 8)
        try:
            with transaction.atomic():  # its SAVEPOINT comes after the kept update
                inner_sql, inner_params = flag_update(record, 9)
                assert not hotsql.later(connection, inner_sql, inner_params, (Record, record.pk))
                hotsql.rows(connection, inner_sql + " RETURNING 1", inner_params)
                raise ValueError("undo the inner block")
        except ValueError:
            pass

    staged(block)
    assert stored_flags(record) == {"kept": 8}


def test_nothing_is_kept_outside_a_staged_transaction(record):
    sql, params = flag_update(record, 10)
    assert not hotsql.later(connection, sql, params, (Record, record.pk))
    with transaction.atomic():
        assert not hotsql.later(connection, sql, params, (Record, record.pk))


def test_the_run_lock_statement_takes_the_kept_rows_before_the_run_as_a_walk_sending_them_would(form, record):
    """Another transaction holds the record's row and will want the run's: the statement that ends a
    walk, with a kept write to that record, must wait for the record before it locks the run (else the
    two wait for each other)."""
    from events.engine import run_finish_if_done
    from events.models import Run
    from forms_app.services import record_submit
    from tests.factories import add_node

    branch = add_node(form, "background", name="later")
    add_node(form, "set_flag", parent=branch, config={"flag": "x"})
    submitted = record_submit(form=form, data={"email": "a@example.com"})
    run = Run.objects.get(record=submitted)
    settings = connection.settings_dict
    holds, outcome = threading.Event(), {}

    def other():
        with psycopg.connect(
            host=settings["HOST"], port=settings["PORT"] or 5432, user=settings["USER"], dbname=settings["NAME"]
        ) as other_connection:
            other_connection.execute("UPDATE forms_app_record SET flags = flags WHERE id = %s", [submitted.pk])
            holds.set()
            time.sleep(1.0)  # the walk's statement is waiting for the record's row by now
            try:
                other_connection.execute("SELECT id FROM events_run WHERE id = %s FOR UPDATE NOWAIT", [run.pk])
                outcome["run_lock"] = "free"
            except psycopg.errors.LockNotAvailable:
                outcome["run_lock"] = "held by the walk"
            other_connection.rollback()

    thread = threading.Thread(target=other)
    thread.start()
    assert holds.wait(10)

    def block(atomic):
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL lock_timeout = '10s'")
        submitted.set_flag("walked")  # kept back
        run_finish_if_done(run=run)

    staged(block)
    thread.join(10)
    assert outcome == {"run_lock": "free"}
    assert stored_flags(submitted) == {"walked": True}


def test_a_run_s_end_takes_the_kept_step_end_with_the_container_s_and_sends_one_of_the_container_first(form):
    """The statement that ends a container and locks its run carries what the walk kept back, unless a
    kept update is of the container's own row: that one goes first, on its own (one row, one update)."""
    from events.engine import run_finish_if_done
    from events.models import Run, RunTask
    from forms_app.services import record_submit
    from tests.factories import add_node, steps_created

    branch = add_node(form, "background", name="later")
    add_node(form, "set_flag", parent=branch, name="flag", config={"flag": "x"})
    submitted = record_submit(form=form, data={"email": "a@example.com"})
    run = Run.objects.get(record=submitted)
    container = run.tasks.get(name="later")
    steps_created(submitted, "later")
    RunTask.objects.filter(run=run).update(status=RunTask.Status.ACTIVE)
    step = RunTask.objects.get(run=run, name="flag")

    def block(atomic):
        step.finish(RunTask.Status.COMPLETE, later=True)
        container.finish(
            RunTask.Status.COMPLETE, logs=[RunTask.log_line("kept")], later=True
        )  # the container's own row
        assert [row for _, _, row in connection._hotsql_stage.kept] == [(RunTask, step.pk), (RunTask, container.pk)]
        sql, params, changes = container.finish_statement(RunTask.Status.COMPLETE)
        finished = []
        run_finish_if_done(run=run, first=(sql, params, lambda: finished.append(True), (RunTask, container.pk)))
        assert connection._hotsql_stage.kept == []
        assert finished == []  # the kept update ended the container already: the run's end found it done

    staged(block)
    assert RunTask.objects.get(pk=step.pk).status == RunTask.Status.COMPLETE
    assert RunTask.objects.get(pk=container.pk).logs[-1]["line"] == "kept"
    assert Run.objects.get(pk=run.pk).status == Run.Status.COMPLETE


def test_a_kept_end_of_a_task_no_longer_running_changes_nothing(form):
    from events.models import Run, RunTask
    from forms_app.services import record_submit
    from tests.factories import add_node

    add_node(form, "background", name="later")
    run = Run.objects.get(record=record_submit(form=form, data={"email": "a@example.com"}))
    task = run.tasks.get(name="later")
    RunTask.objects.filter(pk=task.pk).update(status=RunTask.Status.CANCELLED)

    def block(atomic):
        assert task.finish(RunTask.Status.COMPLETE, later=True)  # kept: the caller does not learn
        assert task.status == RunTask.Status.COMPLETE  # this copy took the changes

    staged(block)
    assert RunTask.objects.get(pk=task.pk).status == RunTask.Status.CANCELLED

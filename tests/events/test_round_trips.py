"""What a submit, a background job and a callback cost the database (issue 9: fewer round trips).

These tests run outside a test transaction (``transaction=True``) so that the
transactions counted are the real ones.
"""

import re
import uuid
import zoneinfo

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django_q.models import OrmQ

from events import engine, queue, tasks
from events.models import ApiKey, Run, RunTask
from events.nodes import registry
from events.nodes.base import NodeType
from forms_app.models import Record
from forms_app.services import record_submit
from tests.factories import add_node

pytestmark = pytest.mark.django_db(transaction=True)

# A statement that writes: an INSERT, UPDATE or DELETE, or a WITH holding one (PostgreSQL's data-modifying WITH).
WRITE = re.compile(r"\s*(INSERT|UPDATE|DELETE)\b|\s*WITH\b.*\b(INSERT|UPDATE|DELETE)\b", re.IGNORECASE | re.DOTALL)


class WriteTransactions:
    """Counts the transactions that write, on any database: an atomic block's first write opens one
    (its commit closes it); a write outside any block is one on its own."""

    def __init__(self, monkeypatch):
        self.count, self.writing = 0, False
        commit = connection._commit

        def counted_commit():
            self.writing = False
            return commit()

        monkeypatch.setattr(connection, "_commit", counted_commit)

    def __call__(self, execute, sql, params, many, context):
        if WRITE.match(sql):
            if not connection.in_atomic_block:
                self.count += 1
            elif not self.writing:
                self.count, self.writing = self.count + 1, True
        return execute(sql, params, many, context)


@pytest.fixture
def write_transactions(monkeypatch):
    """``with write_transactions() as counted:`` ... ``counted.count``."""
    from contextlib import contextmanager

    @contextmanager
    def counting():
        counter = WriteTransactions(monkeypatch)
        with connection.execute_wrapper(counter):
            yield counter

    return counting


def test_a_submit_with_a_background_branch_is_one_write_transaction_with_its_broker_row(
    trail_form, add_mark, write_transactions
):
    background = add_node(trail_form, "background", name="bg")
    add_node(trail_form, "set_flag", parent=background, name="flag", config={"flag": "done"})

    with write_transactions() as counted:
        record = record_submit(form=trail_form, data={"email": "ann@example.com", "trail": ""})

    assert counted.count == 1
    bg = RunTask.objects.get(run__record=record, name="bg")
    assert OrmQ.objects.filter(pk=bg.handoff_id).exists()


def test_a_submit_of_several_branches_writes_one_broker_row_and_the_dispatcher_sends_the_others(trail_form, add_mark):
    """A broker row is a signed pickle and an insert, most of what a branch costs a submit: the first
    branch due now gets the submit's one row, the others stay due and unsent, and the worker's
    dispatcher sends them at its next pass. Each then runs from its own row."""
    for name, letter in (("one", "X"), ("two", "Y"), ("three", "Z")):
        add_mark(letter, parent=add_node(trail_form, "background", name=name))

    record = record_submit(form=trail_form, data={"email": "ann@example.com", "trail": ""})

    tasks = {task.name: task for task in RunTask.objects.filter(run__record=record, parent=None)}
    assert list(OrmQ.objects.values_list("pk", flat=True)) == [tasks["one"].handoff_id]
    assert tasks["one"].enqueued_at is not None
    for name in ("two", "three"):
        assert tasks[name].due_at <= timezone.now() and tasks[name].enqueued_at is None, name
        assert tasks[name].handoff_id is None and tasks[name].status == RunTask.Status.PENDING

    assert queue.dispatch_due() == 2

    handed = {task.name: task for task in RunTask.objects.filter(run__record=record, parent=None)}
    assert {name: task.handoff_id is not None for name, task in handed.items()} == dict.fromkeys(tasks, True)
    assert OrmQ.objects.count() == 3 and len({task.handoff_id for task in handed.values()}) == 3
    assert queue.dispatch_due() == 0  # sent once
    for row in OrmQ.objects.order_by("pk"):
        tasks_job_of(row)
    record.refresh_from_db()
    assert record.is_complete and sorted(record.data["trail"]) == ["X", "Y", "Z"]


def tasks_job_of(row):
    """Run a broker row's job here, as a django-q2 worker would (by its package's function and arguments)."""
    from django_q.signing import SignedPackage

    package = SignedPackage.loads(row.payload)
    assert package["func"] == queue.TASK_JOB
    tasks.task_job(*package["args"])


def test_on_postgresql_a_submit_s_rows_are_one_statement_outside_any_transaction(trail_form, monkeypatch):
    """The record, the run, the tasks and the broker rows: one data-modifying WITH, atomic by itself
    (no BEGIN and COMMIT: SQLite, with no round trips to save, uses a transaction). Counted at the
    driver too: nothing else reaches the server (no connection check, as django-q2's broker makes)."""
    background = add_node(trail_form, "background", name="bg")
    add_node(trail_form, "set_flag", parent=background, name="flag", config={"flag": "done"})
    version = trail_form.tree_versions.order_by("-number").first()
    sent = []
    if connection.vendor == "postgresql":
        import psycopg

        execute = psycopg.Cursor.execute
        monkeypatch.setattr(
            psycopg.Cursor,
            "execute",
            lambda self, query, *args, **kwargs: sent.append(str(query)[:40]) or execute(self, query, *args, **kwargs),
        )

    with CaptureQueriesContext(connection) as queries:
        record = record_submit(form=trail_form, data={"email": "ann@example.com", "trail": ""}, version=version)

    statements = [query["sql"] for query in queries]
    if connection.vendor == "postgresql":
        assert len(statements) == 1 and statements[0].startswith("WITH"), statements
        assert len(sent) == 1 and sent[0].startswith("WITH"), sent
    else:
        # The record, the run, the broker row, the task (its step's row: when a worker starts it).
        assert [sql.split()[0] for sql in statements] == ["BEGIN", "INSERT", "INSERT", "INSERT", "INSERT", "COMMIT"]
        assert statements[4].startswith('INSERT INTO "events_runtask"')
    run = Run.objects.get(record=record)
    tasks = {task.name: task for task in RunTask.objects.filter(run=run)}
    assert run.record_id == record.pk and set(tasks) == {"bg"}
    assert OrmQ.objects.get(pk=tasks["bg"].handoff_id).payload  # its own broker row, by the key read back


only_postgresql = pytest.mark.skipif("connection.vendor != 'postgresql'", reason="one statement: PostgreSQL only")


def the_one_statement(trail_form, containers):
    """The WITH statement of a submit after adding ``containers`` background branches of one step to the
    tree: (SQL, parameters)."""
    for _ in range(containers):
        background = add_node(trail_form, "background")
        add_node(trail_form, "set_flag", parent=background, config={"flag": "done"})
    sent = []

    def keep(execute, sql, params, many, context):
        sent.append((sql, params))
        return execute(sql, params, many, context)

    with connection.execute_wrapper(keep):
        record_submit(form=trail_form, data={"email": "ann@example.com", "trail": ""})
    (statement,) = [(sql, params) for sql, params in sent if sql.startswith("WITH")]
    return statement


@only_postgresql
def test_on_postgresql_the_one_statement_has_one_parameter_per_insert_and_the_same_text_for_any_tree(trail_form):
    """psycopg rewrites a statement's placeholders in Python, and caches that only for statements of at
    most 50 parameters and 4 KB: a parameter per value (88 for one background branch) cost ~0.5 ms a
    submit. One JSON document per insert: 4 parameters, the same text for 1 or 6 branches, cached."""
    from psycopg import _queries

    one_sql, one_params = the_one_statement(trail_form, 1)
    six_sql, six_params = the_one_statement(trail_form, 5)

    assert len(one_params) == len(six_params) == 4  # record, run, broker rows, tasks
    assert one_sql == six_sql
    assert len(six_sql) <= _queries.MAX_CACHED_STATEMENT_LENGTH
    assert len(six_params) <= _queries.MAX_CACHED_STATEMENT_PARAMS


@only_postgresql
def test_on_postgresql_the_one_statement_stores_every_kind_of_value_as_the_orm_saves_it(trail_form):
    from events import hotsql

    ours_form = trail_form
    run_id, when = uuid.uuid4(), timezone.now().replace(microsecond=0)  # a time without microseconds, too
    elsewhere = timezone.now().astimezone(zoneinfo.ZoneInfo("Asia/Kolkata"))  # +05:30
    text = "a'\"é\\ \n\t{}[]%s %(x)s 😀"
    with hotsql.one_statement(connection):
        record = Record(form=ours_form, data={"nested": [1, None, True, 2.5, text]}, flags={})
        hotsql.insert([record], connection)
        run = Run(id=run_id, form=ours_form, record=record, event="e", snapshot=[{"id": 1}], depth=3, subtext=text)
        hotsql.insert([run], connection)
        brokered = hotsql.insert(
            [
                OrmQ(key="k", payload=text, lock=when),
                OrmQ(key="k", payload="p", lock=when),
                OrmQ(key="k", payload="q", lock=elsewhere),
            ],
            connection,
        )
        tasks = [
            RunTask(
                run=run, node_id=2**40, position=0, type="pause", name=text, visible=True, handoff_id=brokered[1].pk
            ),
            RunTask(
                run=run,
                node_id=2,
                position=1,
                type="pause",
                status=RunTask.Status.AWAITING,
                due_at=when,
                enqueued_at=elsewhere,
                logs=[{"at": "x", "message": text}],
                output={"n": None},
                handoff_id=None,
            ),
            RunTask(run=run, node_id=3, position=2, type="pause", handoff_id=brokered[0].pk),
            RunTask(run=run, node_id=4, position=3, type="pause", handoff_id=brokered[2].pk),
        ]
        hotsql.insert(tasks, connection)

    assert Record.objects.get(pk=record.pk).data == {"nested": [1, None, True, 2.5, text]}
    stored_run = Run.objects.get(pk=run_id)
    assert stored_run.record_id == record.pk and stored_run.subtext == text and stored_run.depth == 3
    stored_rows = OrmQ.objects.filter(pk__in=[b.pk for b in brokered]).order_by("pk")
    assert [(row.payload, row.lock) for row in stored_rows] == [(text, when), ("p", when), ("q", elsewhere)]
    for task in tasks:
        stored = RunTask.objects.get(pk=task.pk)
        assert {field.attname: getattr(stored, field.attname) for field in RunTask._meta.concrete_fields} == {
            field.attname: getattr(task, field.attname) for field in RunTask._meta.concrete_fields
        }
    assert [task.handoff_id for task in tasks] == [brokered[1].pk, None, brokered[0].pk, brokered[2].pk]
    assert RunTask.objects.get(pk=tasks[1].pk).enqueued_at == elsewhere  # the same instant


@only_postgresql
def test_on_postgresql_a_text_too_long_for_its_column_is_an_error_in_the_one_statement_not_cut(trail_form):
    from django.db import DataError

    from events import hotsql

    with pytest.raises(DataError), hotsql.one_statement(connection):
        record = Record(form=trail_form, data={})
        hotsql.insert([record], connection)
        run = Run(form=trail_form, record=record, event="e" * 500)  # the column holds 100
        hotsql.insert([run], connection)

    assert not Record.objects.filter(form=trail_form).exists()  # one statement: nothing of it stored


@only_postgresql
def test_on_postgresql_keys_and_other_values_in_one_column_refuse_the_one_statement_before_sending(trail_form):
    from events import hotsql

    sent = []
    with (
        pytest.raises(hotsql.NotOneStatement),
        connection.execute_wrapper(lambda execute, sql, *rest: sent.append(sql) or execute(sql, *rest)),
        hotsql.one_statement(connection),
    ):
        record = Record(form=trail_form, data={})
        hotsql.insert([record], connection)
        run = Run(form=trail_form, record=record, event="e")
        hotsql.insert([run], connection)
        (row,) = hotsql.insert([OrmQ(key="k", payload="p", lock=timezone.now())], connection)
        hotsql.insert(
            [
                RunTask(run=run, node_id=1, position=0, type="x", handoff_id=row.pk),
                RunTask(run=run, node_id=2, position=1, type="x", handoff_id=12345),
            ],
            connection,
        )

    assert sent == [] and not Record.objects.filter(form=trail_form).exists()


def test_a_submit_inside_a_caller_s_transaction_is_refused_on_every_database(trail_form):
    """Its inline phase would run while the caller's transaction could still roll back."""
    add_node(trail_form, "set_flag", name="flag", config={"flag": "done"})

    with pytest.raises(RuntimeError, match="durable"), transaction.atomic():
        record_submit(form=trail_form, data={"email": "ann@example.com", "trail": ""})


@pytest.mark.parametrize("use", ["a statement", "the record's key"])
def test_a_submit_that_cannot_be_one_statement_is_stored_in_a_transaction(trail_form, monkeypatch, use):
    """A node whose planning reads the database, or uses the record's key (not given yet inside the one
    statement): on PostgreSQL the one statement is refused before anything is sent, and the submit is
    made again in a transaction; either way all of it is stored, and the plan saw a real key."""
    from events.nodes.delay import Delay

    due_at, keys = Delay.due_at, []

    def reading_due_at(self, ctx):
        if use == "a statement":
            Run.objects.count()
        else:
            keys.append(f"record {ctx.record.pk}")
        return due_at(self, ctx)

    monkeypatch.setattr(Delay, "due_at", reading_due_at)
    add_node(trail_form, "delay", name="later", config={"after_seconds": 0})

    record = record_submit(form=trail_form, data={"email": "ann@example.com", "trail": ""})

    task = RunTask.objects.get(run__record=record, name="later")
    assert Run.objects.filter(record=record).count() == 1
    assert OrmQ.objects.filter(pk=task.handoff_id).exists()
    if use == "the record's key":
        assert keys[-1] == f"record {record.pk}"


@pytest.mark.parametrize("subtext", [None, "Seat held"])
def test_on_postgresql_a_callback_s_subtext_for_the_run_rides_with_the_task_s_answer(trail_form, subtext):
    add_node(trail_form, "set_flag", name="first", config={"flag": "a"})
    add_node(trail_form, "set_flag", name="second", config={"flag": "b"})
    record = record_submit(form=trail_form, data={"email": "ann@example.com", "trail": ""})
    run = Run.objects.get(record=record)
    Run.objects.filter(pk=run.pk).update(status=Run.Status.RUNNING, finished_at=None)
    RunTask.objects.filter(run=run, name="first").update(status=RunTask.Status.AWAITING, finished_at=None)
    RunTask.objects.filter(run=run, name="second").update(status=RunTask.Status.COMPLETE)
    task = RunTask.objects.get(run=run, name="first")

    with CaptureQueriesContext(connection) as queries:
        result = engine.task_callback(task_id=task.pk, status="SUCCESS", subtext=subtext, output={"ok": 1})

    assert result.applied and RunTask.objects.get(pk=task.pk).status == RunTask.Status.COMPLETE
    assert Run.objects.get(pk=run.pk).subtext == (subtext or "")
    assert RunTask.objects.get(pk=task.pk).subtext == (subtext or "")
    run_updates = [q["sql"] for q in queries if q["sql"].startswith(f'UPDATE "{Run._meta.db_table}"')]
    if subtext and connection.vendor != "postgresql":
        assert len(run_updates) == 1  # its own statement on SQLite
    else:
        assert run_updates == []  # none, or inside the answer's WITH


def test_a_submit_of_an_empty_tree_stores_a_complete_run(trail_form):
    record = record_submit(form=trail_form, data={"email": "ann@example.com", "trail": ""})

    record.refresh_from_db()
    assert record.is_complete is True
    assert Run.objects.get(record=record).status == Run.Status.COMPLETE


def test_a_container_of_quick_steps_runs_in_one_write_transaction(trail_form, add_mark, write_transactions):
    background = add_node(trail_form, "background", name="bg")
    add_mark("A", parent=background)
    add_node(trail_form, "set_flag", parent=background, name="flag", config={"flag": "done"})
    add_node(trail_form, "set_subtext", parent=background, name="say", config={"text": "Done"})
    record = record_submit(form=trail_form, data={"email": "ann@example.com", "trail": ""})
    job = OrmQ.objects.get()
    job.delete()

    with write_transactions() as counted:
        assert tasks.task_job(*job.args()) == "done"

    assert counted.count == 1
    record.refresh_from_db()
    assert (record.data["trail"], record.flags, record.is_complete) == ("A", {"done": True}, True)


def test_a_step_that_reaches_outside_runs_with_its_claim_committed_and_no_transaction_open(
    trail_form, add_mark, monkeypatch, write_transactions
):
    seen = {}

    class Probe(NodeType):
        """Records what the database looks like while it runs (test only)."""

        key, label, config_form = "probe", "Probe", registry.get("go_async").config_form

        def execute(self, ctx):
            seen["in_transaction"] = connection.in_atomic_block
            seen["claimed"] = RunTask.objects.filter(pk=ctx.task.pk).values_list("status", "attempt").get()
            return {}

    monkeypatch.setitem(registry._types, "probe", Probe)
    background = add_node(trail_form, "background", name="bg")
    add_mark("A", parent=background)
    add_node(trail_form, "probe", parent=background, name="probe")
    add_mark("B", parent=background)
    record_submit(form=trail_form, data={"email": "ann@example.com", "trail": ""})
    job = OrmQ.objects.get()
    job.delete()

    with write_transactions() as counted:
        tasks.task_job(*job.args())

    assert seen == {"in_transaction": False, "claimed": (RunTask.Status.ACTIVE, 1)}
    assert counted.count == 2  # up to the probe's claim; the rest


def test_an_api_key_records_its_use_once_a_minute_not_on_every_request():
    key, raw = ApiKey.issue(name="partner")

    with CaptureQueriesContext(connection) as first:
        ApiKey.authenticate(raw)
    with CaptureQueriesContext(connection) as second:
        ApiKey.authenticate(raw)
    ApiKey.objects.filter(pk=key.pk).update(last_used_at=timezone.now() - timezone.timedelta(minutes=2))
    with CaptureQueriesContext(connection) as later:
        ApiKey.authenticate(raw)

    def updates(queries):
        return sum(q["sql"].startswith("UPDATE") for q in queries.captured_queries)

    assert (updates(first), updates(second), updates(later)) == (1, 0, 1)


def test_a_hand_off_that_loses_its_race_takes_its_broker_row_back(trail_form, add_mark):
    add_mark("A")
    background = add_node(trail_form, "background", name="bg")
    add_mark("B", parent=background)
    record = record_submit(form=trail_form, data={"email": "ann@example.com", "trail": ""})
    bg = RunTask.objects.get(run__record=record, name="bg")
    rows = OrmQ.objects.count()

    assert queue.task_enqueue(task_id=bg.pk) is False  # already handed off by the submit's walk

    assert OrmQ.objects.count() == rows
    assert RunTask.objects.get(pk=bg.pk).handoff_id == bg.handoff_id

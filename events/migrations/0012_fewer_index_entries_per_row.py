"""Fewer index entries per run and task row, and ids in time order.

A submit's rows went into eight indexes each. The single-column indexes of a task's due time, deadline
and parent and of a run's parent run and parent task are dropped; the parents get partial indexes of
the rows that have one, and the dispatcher's partial index leaves out tasks with no due time. Task
ids' new default (events.ids.uuid7) concerns new rows only: no database change.

The columns' indexes are dropped by name, found by introspection, not by AlterField: on SQLite
AlterField would copy each table over, six times.
"""

import django.db.models.deletion
from django.db import migrations, models

import events.ids

# (table, column) whose index of its own (db_index=True until now) goes.
DROPPED = [
    ("events_run", "parent_run_id"),
    ("events_run", "parent_task_id"),
    ("events_runtask", "deadline_at"),
    ("events_runtask", "due_at"),
    ("events_runtask", "parent_id"),
]


def column_indexes_drop(apps, schema_editor):
    connection = schema_editor.connection
    with connection.cursor() as cursor:
        for table, column in DROPPED:
            for name, info in connection.introspection.get_constraints(cursor, table).items():
                if info["index"] and not info["unique"] and info["columns"] == [column] and not name.endswith("_idx"):
                    schema_editor.execute(f"DROP INDEX {schema_editor.quote_name(name)}")


def column_indexes_create(apps, schema_editor):
    for table, column in DROPPED:
        name = schema_editor.quote_name(f"{table}_{column}_index")
        schema_editor.execute(
            f"CREATE INDEX {name} ON {schema_editor.quote_name(table)} ({schema_editor.quote_name(column)})"
        )


class Migration(migrations.Migration):
    dependencies = [
        ("events", "0011_dispatch_index"),
        ("forms_app", "0003_fewer_indexes"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[migrations.RunPython(column_indexes_drop, column_indexes_create)],
            state_operations=[
                migrations.AlterField(
                    model_name="run",
                    name="parent_run",
                    field=models.ForeignKey(
                        blank=True,
                        db_index=False,
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="child_runs",
                        to="events.run",
                    ),
                ),
                migrations.AlterField(
                    model_name="run",
                    name="parent_task",
                    field=models.ForeignKey(
                        blank=True,
                        db_index=False,
                        help_text="The step (trigger_event or a container with event_type) that started this run.",
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="child_runs",
                        to="events.runtask",
                    ),
                ),
                migrations.AlterField(
                    model_name="runtask",
                    name="deadline_at",
                    field=models.DateTimeField(blank=True, null=True),
                ),
                migrations.AlterField(
                    model_name="runtask",
                    name="due_at",
                    field=models.DateTimeField(blank=True, null=True),
                ),
                migrations.AlterField(
                    model_name="runtask",
                    name="id",
                    field=models.UUIDField(default=events.ids.uuid7, editable=False, primary_key=True, serialize=False),
                ),
                migrations.AlterField(
                    model_name="runtask",
                    name="parent",
                    field=models.ForeignKey(
                        blank=True,
                        db_index=False,
                        null=True,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="children",
                        to="events.runtask",
                    ),
                ),
            ],
        ),
        migrations.RemoveIndex(model_name="runtask", name="task_due_unsent_idx"),
        migrations.AddIndex(
            model_name="runtask",
            index=models.Index(
                condition=models.Q(("due_at__isnull", False), ("enqueued_at__isnull", True), ("status", "pending")),
                fields=["due_at"],
                name="task_due_unsent_idx",
            ),
        ),
        migrations.AddIndex(
            model_name="runtask",
            index=models.Index(condition=models.Q(("parent__isnull", False)), fields=["parent"], name="task_parent_idx"),
        ),
        migrations.AddIndex(
            model_name="run",
            index=models.Index(
                condition=models.Q(("parent_run__isnull", False)), fields=["parent_run"], name="run_parent_run_idx"
            ),
        ),
        migrations.AddIndex(
            model_name="run",
            index=models.Index(
                condition=models.Q(("parent_task__isnull", False)), fields=["parent_task"], name="run_parent_task_idx"
            ),
        ),
    ]

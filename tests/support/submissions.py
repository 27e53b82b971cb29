"""What a submission left in the database, as the fixtures in tests/conftest.py hand it to a test."""

from dataclasses import dataclass, field

from events.models import Run, RunTask
from forms_app.models import Record


@dataclass
class Submitted:
    """A submitted record, reloaded, with its submission run and that run's tasks.

    ``tasks`` maps each task's node name (its type when it has none) to the task; the first task
    by position wins when two share a name.
    """

    record: Record
    run: Run
    tasks: dict = field(default_factory=dict)

    @classmethod
    def of(cls, record):
        record.refresh_from_db()
        run = record.runs.get(is_submission=True)
        by_name = {}
        for task in run.tasks.order_by("position"):
            by_name.setdefault(task.name or task.type, task)
        return cls(record=record, run=run, tasks=by_name)

    def task(self, name):
        return self.tasks[name]

    def reload(self):
        return Submitted.of(self.record)


@dataclass
class Awaiting:
    """A submitted record whose ``book`` task awaits a callback."""

    record: Record
    run: Run
    task: RunTask
    token: str  # the per-task callback token, as the external system received it
    sent: dict  # the JSON body the external system received

    def reload(self):
        self.record.refresh_from_db()
        self.run.refresh_from_db()
        self.task.refresh_from_db()
        return self

"""Fixtures for node-type tests: submit a record for real, and a real HTTP server to call."""

from dataclasses import dataclass, field

import pytest
from django.db import transaction

from events import engine
from events.models import RECORD_UPDATE, Run
from forms_app.models import Record
from forms_app.services import record_submit
from tests.support import servers
from tests.support.servers import recording_handler, recording_server


@dataclass
class Outcome:
    """What a submit left in the database, reloaded."""

    record: Record
    run: Run
    tasks: dict = field(default_factory=dict)  # by node name, falling back to type

    def task(self, name):
        return self.tasks[name]


def _outcome(record):
    record.refresh_from_db()
    run = record.runs.get()
    tasks = {}
    for task in run.tasks.order_by("position"):
        tasks.setdefault(task.name or task.type, task)
    return Outcome(record=record, run=run, tasks=tasks)


@pytest.fixture
def submit(form, sync_queue, django_capture_on_commit_callbacks):
    """Submit ``data`` to ``form`` as a visitor would; background work runs at once (sync queue).

    With ``properties``, the submission run starts the same way record_submit starts
    it, but with those event properties (record_submit itself passes none).
    """

    def submit(data, *, properties=None):
        with django_capture_on_commit_callbacks(execute=True):
            if properties is None:
                record = record_submit(form=form, data=data)
            else:
                with transaction.atomic(durable=True):
                    record = Record.objects.create(form=form, data=data)
                    run = engine.run_start(
                        record=record, event=RECORD_UPDATE, properties=properties, is_submission=True
                    )
                engine.run_inline(run=run)
        return _outcome(record)

    return submit


class Recorder(servers.Recorder):
    """Requests a test server received, and the answer it gives next."""

    def __init__(self):
        super().__init__(status=200, body=b'{"ok": true, "id": 42}', content_type="application/json")


@pytest.fixture
def http_server():
    """A real HTTP server on 127.0.0.1 (a free port), recording what it receives."""
    recorder = Recorder()
    with recording_server(recording_handler(recorder)) as server:
        recorder.url = server.url
        recorder.port = server.port
        yield recorder


@pytest.fixture
def allow_local_http(settings):
    settings.EVENTS_HTTP_ALLOWED_HOSTS = ["127.0.0.1"]
    return settings

"""Fixtures for node-type tests: submit a record for real, and a real HTTP server to call."""

import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.db import transaction

from events import engine
from events.models import Run
from forms_app.models import RECORD_UPDATE, Record
from forms_app.services import record_submit


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


class Recorder:
    """Requests a test server received, and the answer it gives next."""

    def __init__(self):
        self.requests = []
        self.status = 200
        self.body = b'{"ok": true, "id": 42}'
        self.content_type = "application/json"


def _handler(recorder):
    class Handler(BaseHTTPRequestHandler):
        def _handle(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            recorder.requests.append(
                {"method": self.command, "path": self.path, "headers": dict(self.headers), "body": body}
            )
            self.send_response(recorder.status)
            self.send_header("Content-Type", recorder.content_type)
            self.send_header("Content-Length", str(len(recorder.body)))
            self.end_headers()
            self.wfile.write(recorder.body)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

        def log_message(self, format, *args):
            pass

    return Handler


@pytest.fixture
def http_server():
    """A real HTTP server on 127.0.0.1 (a free port), recording what it receives."""
    recorder = Recorder()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(recorder))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    recorder.url = f"http://127.0.0.1:{server.server_address[1]}"
    recorder.port = server.server_address[1]
    try:
        yield recorder
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def allow_local_http(settings):
    settings.EVENTS_HTTP_ALLOWED_HOSTS = ["127.0.0.1"]
    return settings

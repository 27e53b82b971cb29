"""Fixtures for the JSON API tests: a real awaiting task, API keys, and a client that speaks JSON.

Import them into a test module with ``from tests.events.api_fixtures import *``.
The awaiting task is built for real: a form whose tree has an ``http_request``
with ``wait_for_callback`` to a real HTTP server on 127.0.0.1, submitted with
``record_submit``; the callback token is read from the request that server received.
"""

import json
from dataclasses import dataclass

import pytest

from events.models import ApiKey, Run, RunTask
from forms_app.models import Record
from forms_app.services import record_submit
from tests.factories import add_node
from tests.support import servers
from tests.support.servers import recording_handler, recording_server

__all__ = [
    "CALLBACK_URL",
    "Awaiting",
    "api",
    "api_key",
    "allow_local_http",
    "awaiting",
    "callback_server",
    "make_awaiting",
    "progress_url",
    "waiting_form",
]

CALLBACK_URL = "/api/external-events/callback/"


def progress_url(task_id):
    return f"/api/event-workflow-tasks/{task_id}"


class Recorder(servers.Recorder):
    """Requests the test server received; it answers 200 with a small JSON body."""

    def __init__(self):
        super().__init__(body=b'{"accepted": true, "job": "j-1"}')


@pytest.fixture
def callback_server():
    """A real HTTP server on 127.0.0.1 (a free port) standing in for the external system."""
    recorder = Recorder()
    with recording_server(recording_handler(recorder, methods=("GET", "POST", "PUT"))) as server:
        recorder.url = server.url
        yield recorder


@pytest.fixture
def allow_local_http(settings):
    settings.EVENTS_HTTP_ALLOWED_HOSTS = ["127.0.0.1"]
    settings.EVENTS_PUBLIC_URL = "http://testserver"
    return settings


@pytest.fixture
def waiting_form(form, callback_server, allow_local_http):
    """The booking form: an http_request that waits for a callback, then a step reading its output."""
    add_node(
        form,
        "http_request",
        name="book",
        label="Booking the seat",
        visible=True,
        config={
            "method": "POST",
            "url": callback_server.url + "/jobs",
            "timeout_seconds": 5,
            "fail_on_status": True,
            "wait_for_callback": True,
            "callback_timeout_seconds": 600,
        },
    )
    add_node(
        form,
        "update_field",
        name="after",
        label="Recording the result",
        config={"field": "status", "value": "zip={{ tasks.book.output.zipFileLocation }} code={{ tasks.book.output.status_code }}"},
    )
    return form


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


@pytest.fixture
def make_awaiting(waiting_form, callback_server, sync_queue, django_capture_on_commit_callbacks):
    """Submit the waiting form for real; returns an :class:`Awaiting` (call it again for a second task)."""

    def make(email="ann@example.com"):
        before = len(callback_server.requests)
        with django_capture_on_commit_callbacks(execute=True):
            record = record_submit(form=waiting_form, data={"email": email, "seats": 2, "status": ""})
        run = record.runs.get()
        task = run.tasks.get(name="book")
        assert task.status == RunTask.Status.AWAITING, (task.status, task.error, task.logs)
        assert len(callback_server.requests) == before + 1
        sent = json.loads(callback_server.requests[-1]["body"])
        return Awaiting(record=record, run=run, task=task, token=sent["callbackToken"], sent=sent)

    return make


@pytest.fixture
def awaiting(make_awaiting):
    return make_awaiting()


@pytest.fixture
def api_key(db):
    """(ApiKey row, the key in clear)."""
    return ApiKey.issue(name="billing-service")


class JsonApi:
    """A Django test client speaking JSON to /api/, running after-commit work (the resume job) at once."""

    def __init__(self, client, capture):
        self.client = client
        self.capture = capture

    def _send(self, method, url, body=None, *, key=None, header="bearer", raw=None, headers=None):
        all_headers = dict(headers or {})
        if key is not None:
            if header == "x-api-key":
                all_headers["X-Api-Key"] = key
            else:
                all_headers["Authorization"] = f"{header} {key}"
        data = raw if raw is not None else (json.dumps(body) if body is not None else "")
        with self.capture(execute=True):
            return getattr(self.client, method)(url, data=data, content_type="application/json", headers=all_headers)

    def post(self, url, body=None, **kwargs):
        return self._send("post", url, body, **kwargs)

    def put(self, url, body=None, **kwargs):
        return self._send("put", url, body, **kwargs)

    def get(self, url, *, key=None, header="bearer"):
        headers = {}
        if key is not None:
            headers = {"X-Api-Key": key} if header == "x-api-key" else {"Authorization": f"{header} {key}"}
        with self.capture(execute=True):
            return self.client.get(url, headers=headers)


@pytest.fixture
def api(client, django_capture_on_commit_callbacks):
    return JsonApi(client, django_capture_on_commit_callbacks)

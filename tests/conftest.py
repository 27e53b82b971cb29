"""The suite's fixtures, all in this one module (tests/e2e and tests/faults add their own processes).

Forms
    ``form``             the booking form: email (required), seats (1 to 9), a hidden status
    ``trail_form``       the same form plus a hidden ``trail`` field
    ``one_field_form``   ``one_field_form(type="integer")``: a new form with that one field, ``value``
Trees
    ``add_mark``         ``add_mark("B", parent=bg)``: a step that appends "B" to the record's trail
    ``seed_tree``        A inline, Background[B, C, a confirmation email], D inline
Submitting, as a visitor does (``record_submit``)
    ``submit``           background work runs at once, in the test (a sync queue)
    ``submit_queued``    background work is handed to the queue and stays there: no worker runs it
The queue and the worker's loops
    ``sync_queue``       django-q2 in sync mode: a job runs when it is sent
    ``dispatch``         one pass of the worker's dispatcher, in the test
    ``sweep_now``        one sweep, in the test
HTTP
    ``http_server``      a recording HTTP server on 127.0.0.1 answering ``{"ok": true, "id": 42}``
    ``callback_server``  a recording HTTP server on 127.0.0.1 playing the external system that calls back
    ``allow_local_http`` lets the http_request step reach 127.0.0.1
Waiting for a callback, and the JSON API
    ``waiting_form``     the booking form: a step that waits for a callback, then one that reads its output
    ``make_awaiting``    submit the waiting form for real: an :class:`Awaiting` (call it again for another)
    ``awaiting``         one such submission
    ``api_key``          (ApiKey row, the key in clear)
    ``api``              a test client that speaks JSON to /api/
Faults
    ``database_down``    every query (or those picked) raises OperationalError
"""

import json

import pytest
from django.db import OperationalError, transaction
from django.db.backends.utils import CursorWrapper
from django_q.conf import Conf

from events import engine, queue
from events.models import RECORD_UPDATE, ApiKey, RunTask
from events.sweep import sweep
from forms_app.models import Field, Record
from forms_app.services import record_submit
from tests.factories import FieldFactory, FormFactory, add_node
from tests.support import servers
from tests.support.json_api import JsonApi
from tests.support.servers import recording_handler, recording_server
from tests.support.submissions import Awaiting, Submitted

# Forms ------------------------------------------------------------------------------------------


@pytest.fixture
def form(db):
    """A published form with an email field, a seats field and a hidden status field."""
    form = FormFactory(slug="booking-test", title="Book a flight")
    FieldFactory(form=form, name="email", label="Email", type="email", required=True)
    FieldFactory(form=form, name="seats", label="Seats", type="integer", min_value=1, max_value=9)
    FieldFactory(form=form, name="status", label="Status", type="hidden")
    return form


@pytest.fixture
def trail_form(form):
    """The booking form plus a hidden ``trail`` field: every mark step appends its letter, so order shows."""
    FieldFactory(form=form, name="trail", label="Trail", type="hidden")
    return form


@pytest.fixture
def one_field_form(db):
    """``one_field_form(type="integer", min_value=1)``: a form holding that one field, named ``value``."""

    def make(**field):
        form = FormFactory()
        FieldFactory(form=form, **{"name": "value", "label": "Value", **field})
        return form

    return make


# Trees ------------------------------------------------------------------------------------------


@pytest.fixture
def add_mark(trail_form):
    """``add_mark("B", parent=bg)``: an update_field node that appends "B" to the record's trail."""

    def add(letter, parent=None, **fields):
        config = {"field": "trail", "value": "{{ record.trail }}" + letter}
        return add_node(
            trail_form, "update_field", parent=parent, name=letter.lower(), label=letter, config=config, **fields
        )

    return add


@pytest.fixture
def seed_tree(trail_form, add_mark):
    """The seed's example: A inline, Background[B, C, confirmation email], D inline."""
    a = add_mark("A")
    background = add_node(trail_form, "background", name="confirm", label="Confirm")
    b = add_mark("B", parent=background)
    c = add_mark("C", parent=background)
    email = add_node(
        trail_form,
        "send_email",
        parent=background,
        name="mail",
        config={"to": "{{ record.email }}", "subject": "Booked", "body": "Trail {{ record.trail }}"},
    )
    d = add_mark("D")
    return {"A": a, "background": background, "B": b, "C": c, "email": email, "D": d}


# Submitting -------------------------------------------------------------------------------------


def _submitter(form, capture):
    """``submit(data)`` / ``submit(seats=2)`` / ``submit(properties={...})``: see :func:`submit`."""

    def submit(data=None, /, *, properties=None, **fields):
        if data is None:
            # What a visitor's browser sends: the email, and each hidden input empty.
            hidden = form.fields.filter(type=Field.Type.HIDDEN).values_list("name", flat=True)
            data = {"email": "ann@example.com", **dict.fromkeys(hidden, ""), **fields}
        elif fields:
            raise TypeError("give the data as one dict or as keywords, not both")
        with capture(execute=True):
            if properties is None:
                record = record_submit(form=form, data=data)
            else:
                # As record_submit starts the run, with event properties (record_submit passes none).
                with transaction.atomic(durable=True):
                    record = Record.objects.create(form=form, data=data)
                    run = engine.run_start(
                        record=record, event=RECORD_UPDATE, properties=properties, is_submission=True
                    )
                engine.run_inline(run=run)
        return Submitted.of(record)

    return submit


@pytest.fixture
def submit(form, sync_queue, django_capture_on_commit_callbacks):
    """Submit ``form`` as a visitor would; background work runs at once, in the test (a sync queue).

    ``submit({"email": ...})`` submits exactly that data; ``submit(seats=2)`` fills in what a browser
    sends (email ann@example.com, each hidden field empty) around the given values. ``properties=``:
    the submission run starts with those event properties. Returns a :class:`Submitted`, reloaded.
    """
    return _submitter(form, django_capture_on_commit_callbacks)


@pytest.fixture
def submit_queued(form, django_capture_on_commit_callbacks):
    """As :func:`submit`, but background work is handed to the queue after commit and stays there.

    No worker runs it: a test takes the jobs itself (or asks for ``sync_queue`` as well).
    """
    return _submitter(form, django_capture_on_commit_callbacks)


# The queue and the worker's loops ---------------------------------------------------------------


@pytest.fixture
def sync_queue(monkeypatch):
    """django-q2 in sync mode: async_task runs the job at once, in this process.

    django-q2 reads Q_CLUSTER once at import, so patch its Conf, not settings.
    Combine with django_capture_on_commit_callbacks(execute=True) so that
    hand-offs made after commit actually happen inside a test transaction.
    """
    monkeypatch.setattr(Conf, "SYNC", True)
    return Conf


@pytest.fixture
def dispatch(sync_queue, django_capture_on_commit_callbacks):
    """One pass of the worker's dispatcher; the sync queue runs what it sends, here."""

    def dispatch():
        with django_capture_on_commit_callbacks(execute=True):
            return queue.dispatch_due()

    return dispatch


@pytest.fixture
def sweep_now(sync_queue, django_capture_on_commit_callbacks):
    """``sweep_now(now=None)``: one sweep; what it hands to the queue after commit (an error branch) runs here."""

    def run(now=None):
        with django_capture_on_commit_callbacks(execute=True):
            return sweep(now=now)

    return run


# HTTP -------------------------------------------------------------------------------------------


@pytest.fixture
def http_server():
    """A real HTTP server on 127.0.0.1 (a free port), recording what it receives; it answers 200 JSON."""
    recorder = servers.Recorder(status=200, body=b'{"ok": true, "id": 42}', content_type="application/json")
    with recording_server(recording_handler(recorder)) as server:
        recorder.url = server.url
        recorder.port = server.port
        yield recorder


@pytest.fixture
def callback_server():
    """A real HTTP server on 127.0.0.1 (a free port) standing in for the external system (GET, POST, PUT)."""
    recorder = servers.Recorder(body=b'{"accepted": true, "job": "j-1"}')
    with recording_server(recording_handler(recorder, methods=("GET", "POST", "PUT"))) as server:
        recorder.url = server.url
        yield recorder


@pytest.fixture
def allow_local_http(settings):
    """The http_request step may reach 127.0.0.1 (the test servers); callbacks come to the test client."""
    settings.EVENTS_HTTP_ALLOWED_HOSTS = ["127.0.0.1"]
    settings.EVENTS_PUBLIC_URL = "http://testserver"
    return settings


# Waiting for a callback, and the JSON API -------------------------------------------------------


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
        config={
            "field": "status",
            "value": "zip={{ tasks.book.output.zipFileLocation }} code={{ tasks.book.output.status_code }}",
        },
    )
    return form


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
    """A submission of the waiting form whose ``book`` task awaits its callback."""
    return make_awaiting()


@pytest.fixture
def throttle_clock(monkeypatch):
    """The throttles' clock stopped in the middle of a minute: their windows are aligned to the clock,
    so a test whose requests straddled a window's end would see its count start again (a flaky 303)."""
    import types

    from events import throttle

    now = [1_000_000 * 60 + 30.0]
    monkeypatch.setattr(throttle, "time", types.SimpleNamespace(time=lambda: now[0]))
    return now


@pytest.fixture
def api_key(db):
    """(ApiKey row, the key in clear)."""
    return ApiKey.issue(name="billing-service")


@pytest.fixture
def api(client, django_capture_on_commit_callbacks):
    """A test client speaking JSON to /api/; after-commit work (the resume job) runs at once."""
    return JsonApi(client, django_capture_on_commit_callbacks)


# Faults -----------------------------------------------------------------------------------------


@pytest.fixture
def database_down(monkeypatch):
    """``outage = database_down()``: every query raises OperationalError, as while PostgreSQL restarts.

    ``database_down(when=lambda sql: ...)`` fails only the statements ``when`` picks (say, the
    INSERTs: the database went away in the middle of a request). ``outage.up()`` ends it.
    """
    working = {name: getattr(CursorWrapper, name) for name in ("execute", "executemany")}

    class Outage:
        def __init__(self, when):
            for name, method in working.items():
                monkeypatch.setattr(CursorWrapper, name, self.refusing(method, when))

        @staticmethod
        def refusing(method, when):
            def execute(cursor, sql, *args, **kwargs):
                if when(sql):
                    raise OperationalError("connection to server at 127.0.0.1 failed: Connection refused")
                return method(cursor, sql, *args, **kwargs)

            return execute

        def up(self):
            for name, method in working.items():
                monkeypatch.setattr(CursorWrapper, name, method)

    return lambda when=lambda sql: True: Outage(when)

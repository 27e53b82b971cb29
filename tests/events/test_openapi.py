"""A schemathesis run over /api/openapi.json against the app, in process (WSGI).

Every generated request (valid and invalid data, with and without a key) must
get an answer that is not a 5xx, whose status is documented for its operation,
and whose body matches the documented schema for that status.
"""

import zlib
from datetime import timedelta

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from django.utils import timezone
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    positive_data_acceptance,
    response_schema_conformance,
    status_code_conformance,
)

from events.models import ApiKey, Run, RunTask
from tests.factories import RecordFactory

pytestmark = pytest.mark.django_db

# positive_data_acceptance (ST202): what the document allows, the server takes; what the server refuses
# (NUL characters, unpaired surrogates, too many log lines) the document declares.
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    positive_data_acceptance,
]
# Bounded: 5 operations × 25 examples × 2 runs stays well under a minute.
BOUNDED = settings(
    max_examples=25,
    deadline=None,
    database=None,  # no example database (hypothesis still keeps a self-ignored .hypothesis/ cache)
    suppress_health_check=list(HealthCheck),
)


def load_schema():
    # Loaded at collection (the document needs no database). schemathesis.pytest.from_fixture
    # is not usable with pytest 9 (schemathesis 4.32.5 reads Function._nodeid, which pytest 9 removed).
    from config.wsgi import application

    return schemathesis.openapi.from_wsgi("/api/openapi.json", application)


schema = load_schema()


@pytest.fixture(autouse=True)
def keep_the_test_connection():
    """Requests go through the real WSGI handler, whose request signals would close the DB connection
    that holds the test transaction; detach them as Django's test Client does."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        yield
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


def test_the_openapi_document_describes_every_endpoint_and_error(client):
    document = client.get("/api/openapi.json").json()
    operations = {(method, path) for path, item in document["paths"].items() for method in item}
    assert operations == {
        ("post", "/api/external-events/callback/"),
        ("put", "/api/event-workflow-tasks/{task_id}"),
        ("get", "/api/tasks/{task_id}"),
        ("get", "/api/runs/{run_id}"),
        ("get", "/api/records/{token}"),
    }
    for path, item in document["paths"].items():
        for method, operation in item.items():
            assert {"200", "401", "422"} <= set(operation["responses"]), (method, path)
            assert operation.get("security"), (method, path)
    assert {"404", "409", "413", "400"} <= set(document["paths"]["/api/external-events/callback/"]["post"]["responses"])


def task_with_status(status):
    """A task (with its run and record) in ``status``, built directly: no request goes out."""
    record = RecordFactory(data={"email": "ann@example.com"})
    run = Run.objects.create(form=record.form, record=record, is_submission=True, snapshot=[])
    now = timezone.now()
    return RunTask.objects.create(
        run=run,
        node_id=1,
        position=0,
        type="http_request",
        name="book",
        label="Book",
        status=status,
        started_at=now,
        deadline_at=now + timedelta(hours=1),
        output={"status_code": 200},
        finished_at=now if status == RunTask.Status.COMPLETE else None,
    )


def point_at_real_objects(case):
    """Most cases (chosen by a stable hash of the case) use ids that exist, an awaiting task or a
    finished one, so that 200 and 409 answers are checked against the document too, not only 404 and 422."""
    choice = zlib.crc32(repr((case.path_parameters, case.body)).encode()) % 4
    if choice == 3:
        return
    task = task_with_status(RunTask.Status.COMPLETE if choice == 2 else RunTask.Status.AWAITING)
    real = {"task_id": str(task.pk), "run_id": str(task.run_id), "token": task.run.record.token}
    for name in list(case.path_parameters or {}):
        if name in real:
            case.path_parameters[name] = real[name]
    if isinstance(case.body, dict) and "taskId" in case.body:
        case.body["taskId"] = str(task.pk)


@schema.parametrize()
@BOUNDED
def test_api_conforms_to_its_openapi_document_with_a_key(case):
    _, raw = ApiKey.issue(name="schemathesis")
    point_at_real_objects(case)
    case.call_and_validate(headers={"Authorization": f"Bearer {raw}"}, checks=CHECKS)


@schema.parametrize()
@BOUNDED
def test_api_conforms_to_its_openapi_document_without_a_key(case):
    case.headers = {k: v for k, v in (case.headers or {}).items() if k.lower() not in ("authorization", "x-api-key")}
    case.call_and_validate(checks=CHECKS)

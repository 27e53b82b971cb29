"""Request bodies sent without Content-Length (``Transfer-Encoding: chunked``) under a real gunicorn.

Django's WSGIRequest reads CONTENT_LENGTH bytes and ignores ``wsgi.input_terminated``, so under
gunicorn a chunked body read as empty: a valid PUT got 422 "Field required" and a 2.5 MiB body
422 instead of 413 (issue 8, section 2). gunicorn runs here on 127.0.0.1 against this test's
database; every wait is bounded.
"""

import http.client
import json
import socket
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.utils import timezone

from events.models import ApiKey, Run, RunTask
from tests.e2e.conftest import _test_database_url, _worker_env
from tests.factories import RecordFactory
from tests.support import processes
from tests.support.processes import ManagedProcess, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("e2e"), pytest.mark.django_db(transaction=True)]

START_SECONDS = 30
REQUEST_SECONDS = 30
LIMIT = 1024 * 1024  # EVENTS_API_MAX_BODY_BYTES, as the server is started


@pytest.fixture
def gunicorn(transactional_db, tmp_path, request):
    """``gunicorn config.wsgi:application`` on a free port of 127.0.0.1, on this test's database; its port."""
    port = free_port()
    env = _worker_env(_test_database_url(), {"EVENTS_API_MAX_BODY_BYTES": str(LIMIT)})
    server = ManagedProcess(
        "gunicorn",
        [
            str(Path(sys.executable).parent / "gunicorn"),
            "config.wsgi:application",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            "1",
            "--threads",
            "2",
            "--timeout",
            "30",
            "--graceful-timeout",
            "5",
            "--no-control-socket",
        ],
        cwd=settings.BASE_DIR,
        env=env,
        log_path=tmp_path / "gunicorn.log",
        start_seconds=START_SECONDS,
    )
    request.addfinalizer(server.stop)

    def up():
        if not server.is_running():
            pytest.fail(f"gunicorn exited:\n{server.output()}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/healthz")
            return connection.getresponse().status == 200
        except OSError:
            return False

    processes.wait_until(up, timeout=START_SECONDS, message=f"gunicorn on port {port}")
    return port


def send_chunked(port, method, path, body, headers, *, chunk_size=64 * 1024):
    """Send ``body`` in chunks, without Content-Length, over a raw socket; (status, headers, body) of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=REQUEST_SECONDS) as sock:
        head = [
            f"{method} {path} HTTP/1.1",
            f"Host: 127.0.0.1:{port}",
            "Transfer-Encoding: chunked",
            *(f"{name}: {value}" for name, value in headers.items()),
        ]
        try:
            sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
            for start in range(0, len(body), chunk_size):
                part = body[start : start + chunk_size]
                sock.sendall(b"%x\r\n%s\r\n" % (len(part), part))
            sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered before the end of the body: read its answer
        response = http.client.HTTPResponse(sock, method=method)
        response.begin()
        return response.status, {name.lower(): value for name, value in response.getheaders()}, response.read()


@pytest.fixture
def task_and_key(transactional_db):
    record = RecordFactory(data={"email": "ann@example.com"})
    run = Run.objects.create(form=record.form, record=record, is_submission=True, snapshot=[])
    now = timezone.now()
    task = RunTask.objects.create(
        run=run,
        node_id=1,
        position=0,
        type="http_request",
        name="book",
        status=RunTask.Status.AWAITING,
        started_at=now,
        deadline_at=now + timedelta(hours=1),
    )
    _, key = ApiKey.issue(name="chunked")
    return task, {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}


def test_a_chunked_progress_update_is_read_and_applied(gunicorn, task_and_key):
    task, headers = task_and_key
    body = json.dumps({"subtext": "half way", "logs": ["one", "two"]}).encode()

    status, _, answer = send_chunked(
        gunicorn, "PUT", f"/api/event-workflow-tasks/{task.pk}", body, headers, chunk_size=7
    )

    assert status == 200, answer
    assert json.loads(answer)["subtext"] == "half way"
    task.refresh_from_db()
    assert task.subtext == "half way"
    assert [entry["line"] for entry in task.logs[-2:]] == ["one", "two"]


def test_a_chunked_body_over_the_limit_is_413_in_the_json_shape(gunicorn, task_and_key):
    task, headers = task_and_key
    body = json.dumps({"subtext": "x", "logs": ["y" * 1000] * 2560}).encode()  # about 2.5 MiB
    assert len(body) > 2.4 * LIMIT

    status, answer_headers, answer = send_chunked(
        gunicorn, "PUT", f"/api/event-workflow-tasks/{task.pk}", body, headers
    )

    assert status == 413, answer[:300]
    assert answer_headers["content-type"].startswith("application/json")
    assert json.loads(answer) == {
        "error": {
            "code": "payload_too_large",
            "message": f"The request body is over {LIMIT} bytes.",
            "details": {"limit": LIMIT},
        }
    }
    task.refresh_from_db()
    assert task.subtext == ""


def test_a_chunked_callback_without_its_trailing_slash_is_read(gunicorn, task_and_key):
    task, headers = task_and_key
    body = json.dumps({"taskId": str(task.pk), "status": "FAILURE", "subtext": "no seats"}).encode()

    status, _, answer = send_chunked(gunicorn, "POST", "/api/external-events/callback", body, headers, chunk_size=16)

    assert status == 200, answer
    assert json.loads(answer)["applied"] is True
    task.refresh_from_db()
    assert task.status == RunTask.Status.FAILED

"""The demo's stand-in external service: its view (off by default in production) and its job.

The job is run against real HTTP servers on 127.0.0.1: a recording server, and
the live server with the real callback and progress API.
"""

import itertools
import json
import threading
import time

import httpx
import pytest
from django.test import Client
from django.utils.module_loading import import_string
from django_q.models import OrmQ

from demo import standin
from events.models import RunTask
from tests.support.servers import QuietHandler, recording_server

URL = "/demo/external-service/"
PUBLIC_URL = "http://127.0.0.1:8000"
GOOD = {
    "taskId": "5f0c7f9e-2d1b-4c55-9a7e-0c3f1d2b4a11",
    "callbackUrl": f"{PUBLIC_URL}/api/external-events/callback/",
    "callbackToken": "t0k3n",
}


@pytest.fixture
def service_on(settings):
    settings.EVENTS_DEMO_SERVICE = True
    settings.EVENTS_PUBLIC_URL = PUBLIC_URL
    return settings


def post(body, *, raw=None, client=None):
    client = client or Client()
    return client.post(URL, data=raw if raw is not None else json.dumps(body), content_type="application/json")


# The view -----------------------------------------------------------------------------------


def test_the_service_is_off_without_debug_or_the_setting(db, settings):
    settings.DEBUG = False
    if hasattr(settings, "EVENTS_DEMO_SERVICE"):
        del settings.EVENTS_DEMO_SERVICE

    assert post(GOOD).status_code == 404
    assert OrmQ.objects.count() == 0


def test_the_setting_turns_the_service_off_even_with_debug(db, settings):
    settings.DEBUG = True
    settings.EVENTS_DEMO_SERVICE = False

    assert post(GOOD).status_code == 404
    assert Client().get(URL).status_code == 404


def test_debug_alone_turns_the_service_on(db, settings):
    settings.DEBUG = True
    settings.EVENTS_PUBLIC_URL = PUBLIC_URL
    if hasattr(settings, "EVENTS_DEMO_SERVICE"):
        del settings.EVENTS_DEMO_SERVICE

    assert post(GOOD).status_code == 202


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("{not json", "not valid JSON"),
        ("\xff", "not valid JSON"),
        ('["a list"]', "a JSON object"),
        ("{}", "taskId, callbackUrl, callbackToken"),
        (json.dumps({**GOOD, "taskId": ""}), "taskId"),
        (json.dumps({**GOOD, "callbackToken": 12}), "callbackToken"),
        (json.dumps({key: value for key, value in GOOD.items() if key != "callbackUrl"}), "callbackUrl"),
        (json.dumps({**GOOD, "taskId": "../admin"}), "not a task id"),
        (json.dumps({**GOOD, "callbackUrl": "http://169.254.169.254/latest/"}), "public URL"),
        (json.dumps({**GOOD, "callbackUrl": PUBLIC_URL + ".evil.example/x"}), "public URL"),
    ],
)
def test_bad_input_is_a_400_and_queues_nothing(db, service_on, raw, message):
    response = post(None, raw=raw)

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_request" and message in error["message"]
    assert OrmQ.objects.count() == 0


def test_only_post_is_allowed(db, service_on):
    assert Client().get(URL).status_code == 405


def test_good_input_answers_202_at_once_and_the_queued_job_calls_back(
    db, service_on, external_api, django_capture_on_commit_callbacks
):
    service_on.EVENTS_PUBLIC_URL = external_api.url
    service_on.EVENTS_DEMO_SERVICE_STEP_SECONDS = 0.01
    good = {**GOOD, "callbackUrl": f"{external_api.url}/api/external-events/callback/"}
    # A machine has no CSRF token: the view is exempt.
    client = Client(enforce_csrf_checks=True)

    with django_capture_on_commit_callbacks(execute=True):
        response = post(good, client=client)

    assert response.status_code == 202
    assert response.json()["taskId"] == GOOD["taskId"]
    assert external_api.requests == []  # the answer comes later, from a job
    [job] = OrmQ.objects.all()
    import_string(job.func())(*job.args(), **job.kwargs())  # what a worker does with the broker row
    assert [(r["method"], r["path"]) for r in external_api.requests] == [
        ("PUT", f"/api/event-workflow-tasks/{GOOD['taskId']}"),
        ("PUT", f"/api/event-workflow-tasks/{GOOD['taskId']}"),
        ("POST", "/api/external-events/callback/"),
    ]
    assert all(r["headers"]["Authorization"] == f"Bearer {GOOD['callbackToken']}" for r in external_api.requests)


# The job ------------------------------------------------------------------------------------


class Recorder:
    """What the recording server received; ``drop`` connections are closed without an answer first."""

    def __init__(self):
        self.requests = []
        self.status = 200
        self.drop = 0
        self.lock = threading.Lock()


def _handler(recorder):
    class Handler(QuietHandler):
        def _handle(self):
            body = self.read_body()
            with recorder.lock:
                dropped = recorder.drop > 0
                recorder.drop -= dropped
                recorder.requests.append(
                    {
                        "method": self.command,
                        "path": self.path,
                        "dropped": dropped,
                        "headers": dict(self.headers),
                        "body": json.loads(body or b"null"),
                        "at": time.monotonic(),
                    }
                )
            if dropped:
                self.close_connection = True
                return
            self.answer(recorder.status, b'{"ok": true}', {"Content-Type": "application/json"})

        do_POST = do_PUT = _handle

    return Handler


@pytest.fixture
def external_api():
    """A recording HTTP server on 127.0.0.1 (a free port), playing this app's API for the job."""
    recorder = Recorder()
    with recording_server(_handler(recorder)) as server:
        recorder.url = server.url
        yield recorder


def run_job(base_url, *, step_seconds=0.05, task_id="task-1", token="secret-token"):
    return standin.standin_job(
        task_id,
        f"{base_url}/api/external-events/callback/",
        token,
        f"{base_url}/api/event-workflow-tasks/{task_id}",
        step_seconds,
    )


def test_the_job_sends_two_progress_updates_then_the_callback_with_the_bearer_token(external_api):
    run_job(external_api.url, step_seconds=0.2)

    assert [(r["method"], r["path"]) for r in external_api.requests] == [
        ("PUT", "/api/event-workflow-tasks/task-1"),
        ("PUT", "/api/event-workflow-tasks/task-1"),
        ("POST", "/api/external-events/callback/"),
    ]
    assert all(r["headers"]["Authorization"] == "Bearer secret-token" for r in external_api.requests)
    first, second, callback = (r["body"] for r in external_api.requests)
    assert first == {"subtext": "Checking seat availability…"}
    assert second == {"subtext": "Holding seat 14C…"}
    assert callback["taskId"] == "task-1" and callback["status"] == "SUCCESS"
    assert callback["output"]["seat"] == "14C"
    assert len(callback["logs"]) == 2 and callback["subtext"] == "Seat 14C held"
    gaps = [later["at"] - earlier["at"] for earlier, later in itertools.pairwise(external_api.requests)]
    assert all(gap >= 0.15 for gap in gaps), gaps


def test_the_job_stops_when_the_app_refuses_progress(external_api):
    external_api.status = 409

    assert "409" in run_job(external_api.url)

    assert [r["method"] for r in external_api.requests] == ["PUT"]


def test_the_job_retries_a_dropped_connection(external_api, monkeypatch):
    monkeypatch.setattr(standin, "RETRY_PAUSE_SECONDS", 0.01)
    external_api.drop = standin.ATTEMPTS - 1

    run_job(external_api.url)

    assert [(r["method"], r["dropped"]) for r in external_api.requests] == (
        [("PUT", True)] * (standin.ATTEMPTS - 1) + [("PUT", False), ("PUT", False), ("POST", False)]
    )


def test_the_job_gives_up_after_its_attempts(external_api, monkeypatch):
    monkeypatch.setattr(standin, "RETRY_PAUSE_SECONDS", 0.01)
    external_api.drop = standin.ATTEMPTS

    with pytest.raises(httpx.TransportError):
        run_job(external_api.url)

    assert len(external_api.requests) == standin.ATTEMPTS


def test_the_job_completes_a_real_awaiting_task_through_the_api(transactional_db, live_server, make_awaiting, settings):
    awaiting = make_awaiting()
    settings.EVENTS_PUBLIC_URL = live_server.url

    run_job(live_server.url, task_id=str(awaiting.task.pk), token=awaiting.token, step_seconds=0.05)
    # The job used the token the external system received; its callback resumed the sequence.
    awaiting.reload()

    assert awaiting.task.status == RunTask.Status.COMPLETE
    assert awaiting.task.output["seat"] == "14C"
    assert awaiting.task.subtext == "Seat 14C held" and awaiting.run.subtext == "Seat 14C held"
    assert [line["line"] for line in awaiting.task.logs][-2:] == [
        "Seat map checked: 3 window seats free",
        "Seat 14C held for 15 minutes",
    ]
    assert awaiting.record.data["status"].startswith("zip=")

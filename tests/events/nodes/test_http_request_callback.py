"""http_request with wait_for_callback: its config, the request it sends, and the task it leaves awaiting."""

import json
import socket
from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from events import engine
from events.models import RunTask, secret_hash
from events.nodes import registry
from tests.factories import add_node

HttpRequest = registry.get("http_request")
MAX_CALLBACK_TIMEOUT = 30 * 24 * 3600


def closed_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def add_waiting_request(form, url, **config):
    return add_node(
        form,
        "http_request",
        name="book",
        label="Book seats",
        config={"method": "POST", "url": url, "wait_for_callback": True, **config},
    )


# Config ---------------------------------------------------------------------------------


def test_callback_config_defaults_the_deadline_to_an_hour():
    config = HttpRequest.clean_config({"method": "POST", "url": "https://example.com", "wait_for_callback": True})

    assert config["wait_for_callback"] is True
    assert config["callback_timeout_seconds"] == 3600


def test_callback_config_keeps_a_given_deadline():
    config = HttpRequest.clean_config(
        {"method": "POST", "url": "https://example.com", "wait_for_callback": True, "callback_timeout_seconds": "90"}
    )

    assert config["callback_timeout_seconds"] == 90


def test_callback_config_drops_the_deadline_when_not_waiting():
    config = HttpRequest.clean_config({"method": "POST", "url": "https://example.com", "callback_timeout_seconds": 90})

    assert "wait_for_callback" not in config
    assert "callback_timeout_seconds" not in config


@pytest.mark.parametrize("seconds", [0, -5, MAX_CALLBACK_TIMEOUT + 1])
def test_callback_config_refuses_a_deadline_outside_its_bounds(seconds):
    with pytest.raises(ValidationError) as excinfo:
        HttpRequest.clean_config(
            {
                "method": "POST",
                "url": "https://example.com",
                "wait_for_callback": True,
                "callback_timeout_seconds": seconds,
            }
        )

    assert "callback_timeout_seconds" in excinfo.value.message_dict


@pytest.mark.parametrize("seconds", [1, MAX_CALLBACK_TIMEOUT])
def test_callback_config_accepts_the_deadline_bounds(seconds):
    config = HttpRequest.clean_config(
        {"method": "POST", "url": "https://example.com", "wait_for_callback": True, "callback_timeout_seconds": seconds}
    )

    assert config["callback_timeout_seconds"] == seconds


def test_callback_config_is_described_in_the_tree_overview():
    described = HttpRequest.describe(
        {"method": "POST", "url": "https://example.com", "wait_for_callback": True, "callback_timeout_seconds": 60}
    )

    assert "waits for a callback" in described
    assert "60" in described


# The request and the awaiting task ------------------------------------------------------


def test_a_waiting_request_sends_task_id_callback_url_and_token_as_json_by_default(
    form, submit, http_server, allow_local_http, settings
):
    settings.EVENTS_PUBLIC_URL = "https://forms.example.com/"
    add_waiting_request(form, http_server.url + "/start")

    outcome = submit({"email": "ann@example.com"})

    [received] = http_server.requests
    task = outcome.task("book")
    assert received["method"] == "POST"
    assert received["headers"]["Content-Type"] == "application/json"
    sent = json.loads(received["body"])
    assert set(sent) == {"taskId", "callbackUrl", "callbackToken"}
    assert sent["taskId"] == str(task.pk)
    assert sent["callbackUrl"] == "https://forms.example.com/api/external-events/callback/"
    assert len(sent["callbackToken"]) >= 22  # at least 128 bits, url-safe base64


def test_a_waiting_request_keeps_only_the_hash_of_the_callback_token(form, submit, http_server, allow_local_http):
    add_waiting_request(form, http_server.url + "/start")

    outcome = submit({"email": "ann@example.com"})

    token = json.loads(http_server.requests[0]["body"])["callbackToken"]
    task = outcome.task("book")
    assert task.callback_token_hash == secret_hash(token)
    stored = json.dumps([task.output, task.logs, task.subtext, task.error, outcome.run.subtext, outcome.run.error])
    assert token not in stored


def test_each_waiting_task_gets_its_own_token(form, submit, http_server, allow_local_http):
    add_waiting_request(form, http_server.url + "/start")

    submit({"email": "ann@example.com"})
    submit({"email": "bob@example.com"})

    first, second = (json.loads(request["body"]) for request in http_server.requests)
    assert first["taskId"] != second["taskId"]
    assert first["callbackToken"] != second["callbackToken"]


def test_a_templated_body_and_headers_can_place_the_callback_details(
    form, submit, http_server, allow_local_http, settings
):
    settings.EVENTS_PUBLIC_URL = "https://forms.example.com"
    add_waiting_request(
        form,
        http_server.url + "/start",
        headers={"X-Callback-Token": "{{ callback.token }}", "X-Task": "task-{{ callback.task_id }}"},
        body=(
            "id={{ callback.task_id }}&reply={{ callback.url }}&auth=Bearer {{ callback.token }}&who={{ record.email }}"
        ),
    )

    outcome = submit({"email": "ann@example.com"})

    [received] = http_server.requests
    task = outcome.task("book")
    token = received["headers"]["X-Callback-Token"]
    assert task.callback_token_hash == secret_hash(token)
    assert received["headers"]["X-Task"] == f"task-{task.pk}"
    assert received["body"].decode() == (
        f"id={task.pk}&reply=https://forms.example.com/api/external-events/callback/"
        f"&auth=Bearer {token}&who=ann@example.com"
    )
    assert received["headers"].get("Content-Type") != "application/json"  # a templated body is sent as is


def test_the_url_template_can_place_the_callback_details_too(form, submit, http_server, allow_local_http):
    # Issue 3: "templates can place them anywhere"; the URL is a template like the body.
    add_waiting_request(form, http_server.url + "/start?task={{ callback.task_id }}")

    outcome = submit({"email": "ann@example.com"})

    [received] = http_server.requests
    assert received["path"] == f"/start?task={outcome.task('book').pk}"


def test_a_waiting_request_leaves_the_task_awaiting_until_the_deadline(form, submit, http_server, allow_local_http):
    add_waiting_request(form, http_server.url + "/start", callback_timeout_seconds=600)
    add_node(form, "set_flag", name="after", config={"flag": "called"})

    before = timezone.now()
    outcome = submit({"email": "ann@example.com"})
    after = timezone.now()

    task = outcome.task("book")
    assert task.status == RunTask.Status.AWAITING
    assert before + timedelta(seconds=600) <= task.deadline_at <= after + timedelta(seconds=600)
    assert task.finished_at is None
    assert task.lease_expires_at is None
    assert task.attempt == 1
    assert outcome.task("after").status == RunTask.Status.PENDING
    assert outcome.run.status == "running"
    assert not outcome.record.is_complete


def test_a_waiting_request_without_a_deadline_in_its_config_waits_an_hour(form, submit, http_server, allow_local_http):
    add_waiting_request(form, http_server.url + "/start")

    before = timezone.now()
    outcome = submit({"email": "ann@example.com"})
    after = timezone.now()

    deadline = outcome.task("book").deadline_at
    assert before + timedelta(seconds=3600) <= deadline <= after + timedelta(seconds=3600)


def test_the_awaiting_task_output_holds_the_http_response(form, submit, http_server, allow_local_http):
    add_waiting_request(form, http_server.url + "/start")

    outcome = submit({"email": "ann@example.com"})

    task = outcome.task("book")
    assert task.output["status_code"] == 200
    assert task.output["json"] == {"ok": True, "id": 42}
    assert task.output["body"] == '{"ok": true, "id": 42}'
    lines = " | ".join(entry["line"] for entry in task.logs)
    assert "waiting for a callback until" in lines
    assert "answered 200" in lines


def test_a_callback_completes_the_waiting_request_and_merges_its_output(
    form, submit, http_server, allow_local_http, django_capture_on_commit_callbacks
):
    add_waiting_request(form, http_server.url + "/start")
    add_node(form, "update_field", name="after", config={"field": "status", "value": "{{ tasks.book.output.seat }}"})
    outcome = submit({"email": "ann@example.com"})

    with django_capture_on_commit_callbacks(execute=True):  # sync queue: the resume runs here
        result = engine.task_callback(
            task_id=outcome.task("book").pk, status="SUCCESS", output={"seat": "12A", "id": 7}
        )

    assert result.applied
    task = RunTask.objects.get(pk=outcome.task("book").pk)
    assert task.status == RunTask.Status.COMPLETE
    assert task.output["seat"] == "12A"
    assert task.output["status_code"] == 200
    outcome.record.refresh_from_db()
    assert outcome.record.data["status"] == "12A"
    assert outcome.record.is_complete


def test_a_failing_waiting_request_fails_the_task_and_the_run(form, submit, http_server, allow_local_http):
    http_server.status, http_server.body = 500, b"booking service down"
    add_waiting_request(form, http_server.url + "/start")
    add_node(form, "set_flag", name="after", config={"flag": "called"})

    outcome = submit({"email": "ann@example.com"})

    assert len(http_server.requests) == 1
    task = outcome.task("book")
    assert task.status == RunTask.Status.FAILED
    assert "500" in task.error and "booking service down" in task.error
    assert task.finished_at is not None
    assert outcome.task("after").status == RunTask.Status.CANCELLED
    assert outcome.run.status == "failed"
    assert outcome.record.is_complete
    late = engine.task_callback(task_id=task.pk, status="SUCCESS", output={"seat": "12A"})
    assert (late.applied, late.status) == (False, RunTask.Status.FAILED)


def test_a_waiting_request_that_cannot_connect_fails_the_task_and_the_run(form, submit, allow_local_http):
    url = f"http://127.0.0.1:{closed_port()}/start"
    add_waiting_request(form, url, timeout_seconds=2)
    add_node(form, "set_flag", name="after", config={"flag": "called"})

    outcome = submit({"email": "ann@example.com"})

    task = outcome.task("book")
    assert task.status == RunTask.Status.FAILED
    assert task.error.startswith(f"POST {url} failed: ConnectError")
    assert outcome.task("after").status == RunTask.Status.CANCELLED
    assert outcome.run.status == "failed"
    assert engine.awaiting_expire(now=timezone.now() + timedelta(days=1)) == 0


def test_a_refused_destination_never_leaves_the_task_awaiting(form, submit, settings):
    settings.EVENTS_HTTP_ALLOWED_HOSTS = []
    add_waiting_request(form, "http://127.0.0.1:9/start")

    outcome = submit({"email": "ann@example.com"})

    task = outcome.task("book")
    assert task.status == RunTask.Status.FAILED
    assert "Refused" in task.error
    assert outcome.run.status == "failed"


def test_an_error_status_without_fail_on_status_still_waits(form, submit, http_server, allow_local_http):
    http_server.status = 503
    add_waiting_request(form, http_server.url + "/start", fail_on_status=False)

    outcome = submit({"email": "ann@example.com"})

    task = outcome.task("book")
    assert task.status == RunTask.Status.AWAITING
    assert task.output["status_code"] == 503
    assert outcome.run.status == "running"

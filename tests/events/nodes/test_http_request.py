import json
import socket

import pytest
from django.core.exceptions import ValidationError

from events.models import RunTask
from events.nodes import registry
from tests.factories import add_node

HttpRequest = registry.get("http_request")


def closed_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_http_request_sends_the_templated_request_and_stores_the_answer(form, submit, http_server, allow_local_http):
    add_node(
        form,
        "http_request",
        name="book",
        config={
            "method": "POST",
            "url": http_server.url + "/bookings?seats={{ record.seats }}",
            "headers": {"X-Token": "{{ properties.token }}", "Content-Type": "application/json"},
            "body": '{"email": "{{ record.email }}", "note": "<b>{{ run.reference }}</b>"}',
            "timeout_seconds": 5,
            "fail_on_status": True,
        },
    )

    outcome = submit({"email": "ann@example.com", "seats": 2}, properties={"token": "s3cret"})

    assert len(http_server.requests) == 1
    received = http_server.requests[0]
    assert received["method"] == "POST"
    assert received["path"] == "/bookings?seats=2"
    assert received["headers"]["X-Token"] == "s3cret"
    assert received["headers"]["Content-Type"] == "application/json"
    assert json.loads(received["body"]) == {"email": "ann@example.com", "note": f"<b>{outcome.run.reference}</b>"}
    task = outcome.task("book")
    assert task.status == RunTask.Status.COMPLETE
    assert task.output["status_code"] == 200
    assert task.output["body"] == '{"ok": true, "id": 42}'
    assert task.output["json"] == {"ok": True, "id": 42}
    assert task.output["headers"]["content-type"] == "application/json"


def test_http_request_answer_is_readable_by_a_later_step(form, submit, http_server, allow_local_http):
    add_node(form, "http_request", name="book", config={"method": "GET", "url": http_server.url + "/x"})
    add_node(form, "update_field", config={"field": "status", "value": "booking {{ tasks.book.output.json.id }}"})

    outcome = submit({"email": "ann@example.com"})

    assert http_server.requests[0]["method"] == "GET"
    assert http_server.requests[0]["body"] == b""
    assert outcome.record.data["status"] == "booking 42"


@pytest.mark.parametrize("method", ["GET", "PUT", "PATCH", "DELETE"])
def test_http_request_uses_the_configured_method(form, submit, http_server, allow_local_http, method):
    add_node(form, "http_request", config={"method": method, "url": http_server.url + "/m"})

    submit({"email": "ann@example.com"})

    assert [request["method"] for request in http_server.requests] == [method]


def test_http_request_without_a_json_answer_has_no_json_output(form, submit, http_server, allow_local_http):
    http_server.body, http_server.content_type = b"plain <b>text</b>", "text/plain; charset=utf-8"
    add_node(form, "http_request", name="call", config={"method": "GET", "url": http_server.url})

    outcome = submit({"email": "ann@example.com"})

    output = outcome.task("call").output
    assert output["body"] == "plain <b>text</b>"
    assert "json" not in output


def test_http_request_error_status_fails_the_task_when_fail_on_status(form, submit, http_server, allow_local_http):
    http_server.status, http_server.body = 500, b"database down"
    add_node(
        form,
        "http_request",
        name="call",
        config={"method": "POST", "url": http_server.url, "fail_on_status": True},
    )
    add_node(form, "set_flag", name="after", config={"flag": "called"})

    outcome = submit({"email": "ann@example.com"})

    assert len(http_server.requests) == 1
    task = outcome.task("call")
    assert task.status == RunTask.Status.FAILED
    assert "500" in task.error and "database down" in task.error
    assert outcome.task("after").status == RunTask.Status.CANCELLED
    assert outcome.run.status == "failed"


def test_http_request_error_status_is_an_ordinary_answer_without_fail_on_status(
    form, submit, http_server, allow_local_http
):
    http_server.status = 500
    add_node(
        form,
        "http_request",
        name="call",
        config={"method": "POST", "url": http_server.url, "fail_on_status": False},
    )

    outcome = submit({"email": "ann@example.com"})

    task = outcome.task("call")
    assert task.status == RunTask.Status.COMPLETE
    assert task.output["status_code"] == 500
    assert outcome.run.status == "complete"


def test_http_request_keeps_a_redirect_without_location_as_the_answer(form, submit, http_server, allow_local_http):
    # Redirects are followed (test_http_request_ssrf.py); one with nowhere to go is the answer.
    http_server.status = 302
    add_node(form, "http_request", name="call", config={"method": "GET", "url": http_server.url + "/start"})

    outcome = submit({"email": "ann@example.com"})

    assert [request["path"] for request in http_server.requests] == ["/start"]
    output = outcome.task("call").output
    assert output["status_code"] == 302
    assert output["url"] == http_server.url + "/start"
    assert output["redirects"] == []


def test_http_request_refuses_a_header_value_with_a_line_break(form, submit, http_server, allow_local_http):
    add_node(
        form,
        "http_request",
        name="call",
        config={"method": "GET", "url": http_server.url, "headers": {"X-Note": "{{ record.status }}"}},
    )

    outcome = submit({"email": "ann@example.com", "status": "a\r\nX-Injected: 1"})

    assert all("X-Injected" not in request["headers"] for request in http_server.requests)
    assert outcome.task("call").status == RunTask.Status.FAILED


def test_http_request_to_loopback_is_refused_when_the_allow_list_is_empty(form, submit, http_server, settings):
    settings.EVENTS_HTTP_ALLOWED_HOSTS = []
    add_node(form, "http_request", name="call", config={"method": "POST", "url": http_server.url, "body": "x"})

    outcome = submit({"email": "ann@example.com"})

    assert http_server.requests == []
    task = outcome.task("call")
    assert task.status == RunTask.Status.FAILED
    assert "Refused" in task.error and "EVENTS_HTTP_ALLOWED_HOSTS" in task.error


@pytest.mark.parametrize("allowed", [[], ["127.0.0.1"]])
def test_http_request_to_localhost_is_refused(form, submit, http_server, settings, allowed):
    settings.EVENTS_HTTP_ALLOWED_HOSTS = allowed
    add_node(
        form,
        "http_request",
        name="call",
        config={"method": "GET", "url": f"http://localhost:{http_server.port}/"},
    )

    outcome = submit({"email": "ann@example.com"})

    assert http_server.requests == []
    assert outcome.task("call").status == RunTask.Status.FAILED
    assert "Refused" in outcome.task("call").error


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.1/",
        "http://192.168.1.1/",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/",
        "http://0.0.0.0/",
    ],
)
def test_http_request_to_private_and_link_local_addresses_is_refused(form, submit, settings, url):
    settings.EVENTS_HTTP_ALLOWED_HOSTS = []
    add_node(form, "http_request", name="call", config={"method": "GET", "url": url, "timeout_seconds": 0.5})

    outcome = submit({"email": "ann@example.com"})

    task = outcome.task("call")
    assert task.status == RunTask.Status.FAILED
    assert task.error.startswith("Refused to connect")


def test_http_request_refuses_a_url_that_renders_to_another_scheme(form, submit, allow_local_http):
    add_node(form, "http_request", name="call", config={"method": "GET", "url": "{{ record.status }}"})

    outcome = submit({"email": "ann@example.com", "status": "file:///etc/passwd"})

    task = outcome.task("call")
    assert task.status == RunTask.Status.FAILED
    assert "not an http:// or https:// URL" in task.error


def test_http_request_connect_error_fails_with_a_clear_message(form, submit, allow_local_http):
    url = f"http://127.0.0.1:{closed_port()}/hook"
    add_node(form, "http_request", name="call", config={"method": "POST", "url": url, "timeout_seconds": 2})

    outcome = submit({"email": "ann@example.com"})

    task = outcome.task("call")
    assert task.status == RunTask.Status.FAILED
    assert task.error.startswith(f"POST {url} failed: ConnectError")
    assert outcome.run.status == "failed"


def test_http_request_times_out_on_a_server_that_never_answers(form, submit, allow_local_http):
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)  # accepts the connection in the backlog, never answers
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/"
        add_node(form, "http_request", name="call", config={"method": "GET", "url": url, "timeout_seconds": 0.3})

        outcome = submit({"email": "ann@example.com"})

    task = outcome.task("call")
    assert task.status == RunTask.Status.FAILED
    assert "Timeout" in task.error


def test_http_request_refuses_an_answer_over_one_megabyte(form, submit, http_server, allow_local_http):
    http_server.body, http_server.content_type = b"x" * (1024 * 1024 + 1), "text/plain"
    add_node(form, "http_request", name="call", config={"method": "GET", "url": http_server.url})

    outcome = submit({"email": "ann@example.com"})

    task = outcome.task("call")
    assert task.status == RunTask.Status.FAILED
    assert "larger than" in task.error


def test_http_request_config_refuses_a_non_http_url():
    with pytest.raises(ValidationError) as excinfo:
        HttpRequest.clean_config({"method": "GET", "url": "ftp://x", "timeout_seconds": 5})

    assert "url" in excinfo.value.message_dict
    assert "http://" in " ".join(excinfo.value.message_dict["url"])


@pytest.mark.parametrize("headers", ['["X-Token"]', '"X-Token: 1"', '{"X-Count": 1}'])
def test_http_request_config_refuses_headers_that_are_not_an_object_of_strings(headers):
    with pytest.raises(ValidationError) as excinfo:
        HttpRequest.clean_config({"method": "GET", "url": "https://example.com", "headers": headers})

    assert "headers" in excinfo.value.message_dict


def test_http_request_config_normalises_headers_and_fail_on_status():
    config = HttpRequest.clean_config(
        {
            "method": "POST",
            "url": "https://example.com/{{ record.id }}",
            "headers": '{"X-A": "b"}',
            "timeout_seconds": "2.5",
            "fail_on_status": False,
        }
    )

    assert config == {
        "method": "POST",
        "url": "https://example.com/{{ record.id }}",
        "headers": {"X-A": "b"},
        "timeout_seconds": 2.5,
        "fail_on_status": False,
    }


def test_http_request_config_fail_on_status_defaults_to_true_when_left_out():
    # README and docstring: "fail_on_status (default true)". A form file may leave it out.
    config = HttpRequest.clean_config({"method": "POST", "url": "https://example.com", "timeout_seconds": 5})

    assert config["fail_on_status"] is True


def test_http_request_config_timeout_defaults_to_10_seconds():
    # The type's docstring (and to_config's setdefault) promise "default 10".
    config = HttpRequest.clean_config({"method": "POST", "url": "https://example.com"})

    assert config["timeout_seconds"] == 10.0


def test_http_request_config_refuses_a_timeout_outside_its_bounds():
    with pytest.raises(ValidationError) as excinfo:
        HttpRequest.clean_config({"method": "GET", "url": "https://example.com", "timeout_seconds": 500})

    assert "timeout_seconds" in excinfo.value.message_dict

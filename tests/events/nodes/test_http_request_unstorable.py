"""http_request: an answer no database can store as JSON is kept as text, at once (issue 8, section 2).

NaN, Infinity (or 1e999), NUL characters and unpaired surrogates in the answer's JSON used to
make saving the output fail: the task stayed active until its lease expired and the request
was sent again, three times, with a misleading "worker stopped" error.
"""

import pytest

from events.models import RunTask
from tests.factories import add_node

pytestmark = pytest.mark.django_db

UNSTORABLE = {
    "NaN": (b'{"ok": true, "score": NaN}', "json.score is not a finite number"),
    "Infinity": (b'{"n": [1, Infinity]}', "json.n[1] is not a finite number"),
    "-Infinity": (b"-Infinity", "json is not a finite number"),
    "1e999": (b'{"big": 1e999}', "json.big is not a finite number"),
    "escaped NUL": (b'{"text": "a\\u0000b"}', "json.text contains a NUL character"),
    "NUL in a key": (b'{"a\\u0000": 1}', "json (a key) contains a NUL character"),
    "lone surrogate": (b'{"s": "\\ud800"}', "json.s contains an unpaired surrogate"),
}


def kept_as_text_lines(task):
    return [entry["line"] for entry in task.logs if "kept as text only" in entry["line"]]


@pytest.mark.parametrize("answer, reason", UNSTORABLE.values(), ids=UNSTORABLE.keys())
def test_an_unstorable_json_answer_is_kept_as_text_and_the_step_completes_at_once(
    form, submit, http_server, allow_local_http, answer, reason
):
    http_server.body = answer
    add_node(form, "http_request", name="call", config={"method": "POST", "url": http_server.url + "/score"})
    add_node(form, "set_flag", name="after", config={"flag": "scored"})

    outcome = submit({"email": "ann@example.com"})

    task = outcome.task("call")
    assert task.status == RunTask.Status.COMPLETE, (task.status, task.error, task.logs)
    assert task.output["body"] == answer.decode()
    assert task.output["status_code"] == 200
    assert "json" not in task.output
    assert kept_as_text_lines(task) == [f"the answer is kept as text only (output.body), not as output.json: {reason}"]
    assert len(http_server.requests) == 1
    assert outcome.task("after").status == RunTask.Status.COMPLETE
    assert outcome.record.flags.get("scored") is True
    assert outcome.run.status == "complete"


def test_nul_bytes_in_an_answer_are_kept_as_replacement_characters(form, submit, http_server, allow_local_http):
    http_server.body, http_server.content_type = b"line one\x00line two", "text/plain; charset=utf-8"
    add_node(form, "http_request", name="call", config={"method": "GET", "url": http_server.url})

    outcome = submit({"email": "ann@example.com"})

    task = outcome.task("call")
    assert task.status == RunTask.Status.COMPLETE, (task.status, task.error)
    assert task.output["body"] == "line one\ufffdline two"
    assert any("NUL characters" in entry["line"] for entry in task.logs)


def test_an_error_answer_with_nul_bytes_fails_the_step_with_a_readable_error(
    form, submit, http_server, allow_local_http
):
    http_server.status, http_server.body = 500, b"broken\x00down"
    add_node(form, "http_request", name="call", config={"method": "GET", "url": http_server.url})

    outcome = submit({"email": "ann@example.com"})

    task = outcome.task("call")
    assert task.status == RunTask.Status.FAILED
    assert "broken\ufffddown" in task.error
    assert outcome.run.status == "failed"


def test_a_waiting_request_with_an_unstorable_answer_awaits_its_callback(
    form, submit, http_server, allow_local_http, settings
):
    settings.EVENTS_PUBLIC_URL = "http://testserver"
    http_server.body = b'{"accepted": true, "eta": NaN}'
    add_node(
        form,
        "http_request",
        name="call",
        config={
            "method": "POST",
            "url": http_server.url + "/jobs",
            "wait_for_callback": True,
            "callback_timeout_seconds": 60,
        },
    )

    outcome = submit({"email": "ann@example.com"})

    task = outcome.task("call")
    assert task.status == RunTask.Status.AWAITING, (task.status, task.error, task.logs)
    assert task.output["body"] == '{"accepted": true, "eta": NaN}'
    assert "json" not in task.output
    assert kept_as_text_lines(task)
    assert len(http_server.requests) == 1

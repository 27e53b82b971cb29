"""The JSON API: callbacks, progress, look-ups, keys and tokens, errors (DESIGN.md 6, issue 3)."""

import json
import re
import uuid
from datetime import datetime
from io import StringIO

import pytest
from django.core.management import call_command
from django.db import connection

from events.models import ApiKey, Run, RunTask, secret_hash
from tests.support.json_api import CALLBACK_URL, progress_url

pytestmark = pytest.mark.django_db

# The seed's sample payload, as the external system sends it (taskId filled in).
SEED_PAYLOAD = {
    "taskId": "12345678",
    "logs": "line one\nline two",
    "status": "SUCCESS",
    "output": {"zipFileLocation": "https://example.com/jpeg"},
    "subtext": "Completed with 90/100 passing",
}


def seed_payload(task, **changes):
    return {**SEED_PAYLOAD, "taskId": str(task.pk), **changes}


def error_of(response):
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message", "details"}, body
    return body["error"]


def assert_timestamped(line):
    assert set(line) == {"at", "line"}
    datetime.fromisoformat(line["at"])


def task_snapshot(task):
    task.refresh_from_db()
    return {
        f: getattr(task, f) for f in ("status", "logs", "output", "subtext", "error", "finished_at", "callback_digest")
    }


# The callback ---------------------------------------------------------------------------


def test_seed_sample_payload_with_lowercase_bearer_completes_the_task(api, api_key, awaiting):
    _, raw = api_key
    received_before = len(awaiting.task.logs)

    response = api.post(CALLBACK_URL, raw=json.dumps(seed_payload(awaiting.task)), key=raw, header="bearer")

    assert response.status_code == 200, response.content
    assert response.json() == {
        "taskId": str(awaiting.task.pk),
        "status": "complete",
        "applied": True,
        "duplicate": False,
        "message": "Callback applied.",
    }
    awaiting.reload()
    assert awaiting.task.status == RunTask.Status.COMPLETE
    assert awaiting.task.finished_at is not None
    # A string of logs is one line, stored as is, with the server's receive time.
    new_lines = awaiting.task.logs[received_before:]
    assert [line["line"] for line in new_lines] == ["line one\nline two"]
    assert_timestamped(new_lines[0])


def test_logs_as_an_array_are_one_line_each_with_a_timestamp(api, api_key, awaiting):
    _, raw = api_key
    before = len(awaiting.task.logs)

    response = api.post(CALLBACK_URL, seed_payload(awaiting.task, logs=["line one", "line two", "line three"]), key=raw)

    assert response.status_code == 200, response.content
    awaiting.reload()
    new_lines = awaiting.task.logs[before:]
    assert [line["line"] for line in new_lines] == ["line one", "line two", "line three"]
    for line in new_lines:
        assert_timestamped(line)


def test_callback_output_is_merged_with_the_callbacks_keys_winning(api, api_key, awaiting):
    _, raw = api_key
    native = dict(awaiting.task.output)
    assert native["status_code"] == 200 and native["json"] == {"accepted": True, "job": "j-1"}

    response = api.post(
        CALLBACK_URL,
        seed_payload(awaiting.task, output={"zipFileLocation": "https://example.com/z", "status_code": 299}),
        key=raw,
    )

    assert response.status_code == 200, response.content
    awaiting.reload()
    assert awaiting.task.output == {**native, "zipFileLocation": "https://example.com/z", "status_code": 299}


def test_subtext_reaches_the_task_the_run_and_the_waiting_page(api, api_key, awaiting, client):
    _, raw = api_key

    response = api.post(CALLBACK_URL, seed_payload(awaiting.task), key=raw)

    assert response.status_code == 200, response.content
    awaiting.reload()
    assert awaiting.task.subtext == "Completed with 90/100 passing"
    assert awaiting.run.subtext == "Completed with 90/100 passing"
    page = client.get(f"/r/{awaiting.record.token}/status/")
    assert page.status_code == 200
    assert "Completed with 90/100 passing" in page.content.decode()


def test_success_resumes_the_sequence_and_later_steps_see_the_callback_output(api, api_key, awaiting):
    _, raw = api_key
    assert awaiting.run.tasks.get(name="after").status == RunTask.Status.PENDING
    assert awaiting.run.status == Run.Status.RUNNING

    response = api.post(CALLBACK_URL, seed_payload(awaiting.task), key=raw)

    assert response.status_code == 200, response.content
    awaiting.reload()
    assert awaiting.run.tasks.get(name="after").status == RunTask.Status.COMPLETE
    assert awaiting.record.data["status"] == "zip=https://example.com/jpeg code=200"
    assert awaiting.run.status == Run.Status.COMPLETE
    assert awaiting.record.is_complete


def test_failure_fails_the_task_and_the_run_and_nothing_after_it_runs(api, api_key, awaiting):
    _, raw = api_key

    response = api.post(CALLBACK_URL, seed_payload(awaiting.task, status="FAILURE", subtext="Out of seats"), key=raw)

    assert response.status_code == 200, response.content
    assert response.json()["status"] == "failed"
    awaiting.reload()
    assert awaiting.task.status == RunTask.Status.FAILED
    assert "FAILURE" in awaiting.task.error
    assert awaiting.run.status == Run.Status.FAILED
    after = awaiting.run.tasks.get(name="after")
    assert after.status == RunTask.Status.CANCELLED
    assert after.started_at is None
    assert awaiting.record.data["status"] == ""


def test_an_identical_repeat_changes_nothing_and_says_so(api, api_key, awaiting):
    _, raw = api_key
    payload = seed_payload(awaiting.task, logs=["one", "two"])
    assert api.post(CALLBACK_URL, payload, key=raw).status_code == 200
    before = task_snapshot(awaiting.task)
    run_before = Run.objects.values().get(pk=awaiting.run.pk)

    response = api.post(CALLBACK_URL, payload, key=raw)

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["applied"] is False and body["duplicate"] is True
    assert body["status"] == "complete"
    assert task_snapshot(awaiting.task) == before
    assert Run.objects.values().get(pk=awaiting.run.pk) == run_before


def test_a_different_callback_after_completion_gets_409_with_the_status(api, api_key, awaiting):
    _, raw = api_key
    assert api.post(CALLBACK_URL, seed_payload(awaiting.task), key=raw).status_code == 200
    before = task_snapshot(awaiting.task)

    response = api.post(CALLBACK_URL, seed_payload(awaiting.task, status="FAILURE", subtext="late"), key=raw)

    assert response.status_code == 409
    error = error_of(response)
    assert error["code"] == "not_awaiting"
    assert error["details"] == {"status": "complete"}
    assert task_snapshot(awaiting.task) == before


# Progress -------------------------------------------------------------------------------


def test_put_progress_updates_task_and_run_subtext_and_appends_logs(api, api_key, awaiting, client):
    _, raw = api_key
    before = len(awaiting.task.logs)

    response = api.put(
        progress_url(awaiting.task.pk),
        {"subtext": "Checking seat availability…", "logs": ["step 1", "step 2"]},
        key=raw,
    )

    assert response.status_code == 200, response.content
    assert response.json()["subtext"] == "Checking seat availability…"
    assert response.json()["status"] == "awaiting"
    awaiting.reload()
    assert awaiting.task.status == RunTask.Status.AWAITING
    assert awaiting.task.subtext == "Checking seat availability…"
    assert awaiting.run.subtext == "Checking seat availability…"
    assert [line["line"] for line in awaiting.task.logs[before:]] == ["step 1", "step 2"]
    for line in awaiting.task.logs[before:]:
        assert_timestamped(line)
    page = client.get(f"/r/{awaiting.record.token}/status/").content.decode()
    assert "Checking seat availability…" in page
    assert "waiting for a reply" in page

    response = api.put(progress_url(awaiting.task.pk), {"subtext": "Almost there", "logs": "step 3"}, key=raw)
    assert response.status_code == 200
    awaiting.reload()
    assert awaiting.run.subtext == "Almost there"
    assert awaiting.task.logs[-1]["line"] == "step 3"


def test_put_progress_on_a_finished_task_gets_409(api, api_key, awaiting):
    _, raw = api_key
    assert api.post(CALLBACK_URL, seed_payload(awaiting.task), key=raw).status_code == 200
    before = task_snapshot(awaiting.task)

    response = api.put(progress_url(awaiting.task.pk), {"subtext": "too late"}, key=raw)

    assert response.status_code == 409
    error = error_of(response)
    assert error["code"] == "task_finished"
    assert error["details"] == {"status": "complete"}
    assert task_snapshot(awaiting.task) == before


# Look-ups -------------------------------------------------------------------------------


TASK_FIELDS = {
    "id",
    "run",
    "type",
    "name",
    "label",
    "status",
    "attempt",
    "max_attempts",
    "due_at",
    "deadline_at",
    "started_at",
    "finished_at",
    "subtext",
    "error",
    "output",
    "logs",
}


def test_get_task_run_and_record_return_the_documented_fields(api, api_key, awaiting):
    _, raw = api_key
    api.put(progress_url(awaiting.task.pk), {"subtext": "Half way"}, key=raw)

    task = api.get(f"/api/tasks/{awaiting.task.pk}", key=raw)
    assert task.status_code == 200, task.content
    body = task.json()
    assert set(body) == TASK_FIELDS
    assert body["id"] == str(awaiting.task.pk) and body["run"] == str(awaiting.run.pk)
    assert body["status"] == "awaiting" and body["type"] == "http_request" and body["name"] == "book"
    assert body["subtext"] == "Half way"
    assert body["deadline_at"] is not None and body["started_at"] is not None
    assert body["output"]["status_code"] == 200
    assert all(set(line) == {"at", "line"} for line in body["logs"]) and body["logs"]

    run = api.get(f"/api/runs/{awaiting.run.pk}", key=raw)
    assert run.status_code == 200, run.content
    body = run.json()
    assert set(body) == {
        "id",
        "reference",
        "form",
        "record",
        "event",
        "status",
        "subtext",
        "error",
        "created_at",
        "finished_at",
        "tasks",
    }
    assert body["status"] == "running" and body["subtext"] == "Half way"
    assert body["record"] == awaiting.record.token and body["form"] == awaiting.record.form.slug
    assert body["reference"] == awaiting.run.reference
    assert [t["name"] for t in body["tasks"]] == ["book", "after"]
    assert all(set(t) == TASK_FIELDS for t in body["tasks"])

    record = api.get(f"/api/records/{awaiting.record.token}", key=raw)
    assert record.status_code == 200, record.content
    body = record.json()
    assert set(body) == {"token", "form", "data", "flags", "is_complete", "created_at", "runs"}
    assert body["token"] == awaiting.record.token
    assert body["data"]["email"] == "ann@example.com"
    assert body["is_complete"] is False
    assert [r["id"] for r in body["runs"]] == [str(awaiting.run.pk)]
    assert set(body["runs"][0]) == {"id", "reference", "event", "status", "subtext", "created_at", "finished_at"}


def test_get_unknown_objects_are_404(api, api_key):
    _, raw = api_key
    for url, code in [
        (f"/api/tasks/{uuid.uuid4()}", "task_not_found"),
        (f"/api/runs/{uuid.uuid4()}", "run_not_found"),
        ("/api/records/no-such-token", "record_not_found"),
    ]:
        response = api.get(url, key=raw)
        assert response.status_code == 404, (url, response.content)
        assert error_of(response)["code"] == code


def test_get_endpoints_need_a_key_not_a_callback_token(api, awaiting):
    for url in (
        f"/api/tasks/{awaiting.task.pk}",
        f"/api/runs/{awaiting.run.pk}",
        f"/api/records/{awaiting.record.token}",
    ):
        assert api.get(url).status_code == 401
        assert api.get(url, key=awaiting.token).status_code == 401


def test_x_api_key_header_works_for_callback_put_and_get(api, api_key, awaiting):
    _, raw = api_key
    assert api.put(progress_url(awaiting.task.pk), {"subtext": "x"}, key=raw, header="x-api-key").status_code == 200
    assert api.get(f"/api/tasks/{awaiting.task.pk}", key=raw, header="x-api-key").status_code == 200
    response = api.post(CALLBACK_URL, seed_payload(awaiting.task), key=raw, header="x-api-key")
    assert response.status_code == 200, response.content
    awaiting.reload()
    assert awaiting.task.status == RunTask.Status.COMPLETE


# Authentication -------------------------------------------------------------------------


def test_no_key_is_401_and_changes_nothing(api, awaiting):
    before = task_snapshot(awaiting.task)
    response = api.post(CALLBACK_URL, seed_payload(awaiting.task))
    assert response.status_code == 401
    assert error_of(response)["code"] == "unauthorized"
    assert api.put(progress_url(awaiting.task.pk), {"subtext": "x"}).status_code == 401
    assert task_snapshot(awaiting.task) == before


def test_wrong_key_is_401(api, api_key, awaiting):
    _, raw = api_key
    before = task_snapshot(awaiting.task)
    for wrong in (raw[:-1] + ("A" if raw[-1] != "A" else "B"), "fe_nonsense", "x" * 300):
        response = api.post(CALLBACK_URL, seed_payload(awaiting.task), key=wrong)
        assert response.status_code == 401, wrong
        assert error_of(response)["code"] == "unauthorized"
    assert task_snapshot(awaiting.task) == before


def test_revoked_key_is_401(api, api_key, awaiting):
    key, raw = api_key
    key.revoke()
    before = task_snapshot(awaiting.task)

    response = api.post(CALLBACK_URL, seed_payload(awaiting.task), key=raw)

    assert response.status_code == 401
    assert api.get(f"/api/tasks/{awaiting.task.pk}", key=raw).status_code == 401
    assert task_snapshot(awaiting.task) == before


def test_unknown_task_and_wrong_key_look_the_same(api, api_key, awaiting):
    _, raw = api_key
    wrong = "fe_" + "w" * 40
    known = api.post(CALLBACK_URL, seed_payload(awaiting.task), key=wrong)
    unknown = api.post(CALLBACK_URL, {**SEED_PAYLOAD, "taskId": str(uuid.uuid4())}, key=wrong)
    not_a_uuid = api.post(CALLBACK_URL, SEED_PAYLOAD, key=wrong)  # the seed's own "12345678"

    assert known.status_code == unknown.status_code == not_a_uuid.status_code == 401
    assert known.content == unknown.content == not_a_uuid.content
    assert known.headers.get("Content-Type") == unknown.headers.get("Content-Type")

    known_put = api.put(progress_url(awaiting.task.pk), {"subtext": "x"}, key=wrong)
    unknown_put = api.put(progress_url(uuid.uuid4()), {"subtext": "x"}, key=wrong)
    assert known_put.status_code == unknown_put.status_code == 401
    assert known_put.content == unknown_put.content


def test_unknown_task_with_a_valid_key_is_404(api, api_key):
    _, raw = api_key
    for task_id in (str(uuid.uuid4()), "12345678"):
        response = api.post(CALLBACK_URL, {**SEED_PAYLOAD, "taskId": task_id}, key=raw)
        assert response.status_code == 404, response.content
        assert error_of(response)["code"] == "task_not_found"
    response = api.put(progress_url(uuid.uuid4()), {"subtext": "x"}, key=raw)
    assert response.status_code == 404
    assert error_of(response)["code"] == "task_not_found"


def test_the_tasks_own_callback_token_authenticates_its_put_and_callback(api, awaiting, callback_server):
    sent = awaiting.sent
    assert sent == {
        "taskId": str(awaiting.task.pk),
        "callbackUrl": "http://testserver" + CALLBACK_URL,
        "callbackToken": awaiting.token,
    }
    assert callback_server.requests[-1]["headers"]["Content-Type"] == "application/json"

    progress = api.put(progress_url(awaiting.task.pk), {"subtext": "via token"}, key=awaiting.token)
    assert progress.status_code == 200, progress.content
    response = api.post(CALLBACK_URL, seed_payload(awaiting.task), key=awaiting.token)
    assert response.status_code == 200, response.content
    awaiting.reload()
    assert awaiting.task.status == RunTask.Status.COMPLETE
    # The token also works as X-Api-Key (for the repeat).
    repeat = api.post(CALLBACK_URL, seed_payload(awaiting.task), key=awaiting.token, header="x-api-key")
    assert repeat.status_code == 200 and repeat.json()["duplicate"] is True


def test_another_tasks_callback_token_is_401(api, make_awaiting):
    first = make_awaiting("ann@example.com")
    second = make_awaiting("bob@example.com")
    before = task_snapshot(first.task)

    response = api.post(CALLBACK_URL, seed_payload(first.task), key=second.token)
    assert response.status_code == 401
    assert api.put(progress_url(first.task.pk), {"subtext": "x"}, key=second.token).status_code == 401
    assert task_snapshot(first.task) == before

    # The token for an unknown task looks like a wrong key too.
    unknown = api.post(CALLBACK_URL, {**SEED_PAYLOAD, "taskId": str(uuid.uuid4())}, key=second.token)
    assert unknown.status_code == 401 and unknown.content == response.content


def test_using_a_key_sets_last_used_at(api, api_key, awaiting):
    key, raw = api_key
    assert key.last_used_at is None
    api.get(f"/api/tasks/{awaiting.task.pk}", key=raw)
    key.refresh_from_db()
    first = key.last_used_at
    assert first is not None
    api.post(CALLBACK_URL, seed_payload(awaiting.task), key=raw)
    key.refresh_from_db()
    assert key.last_used_at >= first


def test_keys_and_callback_tokens_are_stored_hashed(api_key, awaiting):
    key, raw = api_key
    assert key.key_hash == secret_hash(raw) != raw
    assert raw not in json.dumps(list(ApiKey.objects.values()), default=str)
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM events_apikey")
        assert raw not in repr(cursor.fetchall())
    token = awaiting.token
    assert re.fullmatch(r"[A-Za-z0-9_-]{22,}", token)  # urlsafe, ≥ 128 bits
    assert awaiting.task.callback_token_hash == secret_hash(token) != token
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM events_runtask")
        assert token not in repr(cursor.fetchall())


def test_create_api_key_prints_the_key_once_and_it_authenticates(api, awaiting):
    out, err = StringIO(), StringIO()

    call_command("create_api_key", "billing-service", stdout=out, stderr=err)

    raw = out.getvalue().strip()
    assert len(out.getvalue().strip().splitlines()) == 1
    assert raw not in err.getvalue()
    key = ApiKey.objects.get(name="billing-service")
    assert key.key_hash != raw and key.key_hash == secret_hash(raw)
    assert ApiKey.authenticate(raw) == key
    response = api.post(CALLBACK_URL, seed_payload(awaiting.task), key=raw)
    assert response.status_code == 200, response.content


# Errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", ["{not json", "[1, 2", '{"taskId": "x",}', "\xff\xfe"])
def test_malformed_json_is_400(api, api_key, awaiting, raw):
    _, key = api_key
    response = api.post(CALLBACK_URL, raw=raw, key=key)
    assert response.status_code == 400, response.content
    assert error_of(response)["code"] == "malformed_json"
    awaiting.reload()
    assert awaiting.task.status == RunTask.Status.AWAITING


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"taskId": 12345678}, "taskId"),
        ({"status": "success"}, "status"),
        ({"status": "DONE"}, "status"),
        ({"status": None}, "status"),
        ({"logs": {"line": "one"}}, "logs"),
        ({"logs": [1, 2]}, "logs"),
        ({"output": ["a", "b"]}, "output"),
        ({"output": "text"}, "output"),
        ({"subtext": 5}, "subtext"),
        ({"subtext": "x" * 501}, "subtext"),
        ({"taskId": ""}, "taskId"),
    ],
)
def test_wrong_types_are_422_with_details(api, api_key, awaiting, changes, field):
    _, key = api_key
    response = api.post(CALLBACK_URL, seed_payload(awaiting.task, **changes), key=key)
    assert response.status_code == 422, response.content
    error = error_of(response)
    assert error["code"] == "invalid_request"
    assert any(field in detail["loc"] for detail in error["details"]), error["details"]
    awaiting.reload()
    assert awaiting.task.status == RunTask.Status.AWAITING


@pytest.mark.parametrize("missing", ["taskId", "status"])
def test_missing_required_fields_are_422(api, api_key, awaiting, missing):
    _, key = api_key
    payload = seed_payload(awaiting.task)
    del payload[missing]
    response = api.post(CALLBACK_URL, payload, key=key)
    assert response.status_code == 422, response.content
    error = error_of(response)
    assert error["code"] == "invalid_request"
    assert any(missing in detail["loc"] for detail in error["details"])


def test_an_empty_body_is_422_body_missing(api, api_key):
    _, key = api_key
    response = api.post(CALLBACK_URL, raw="", key=key)
    assert response.status_code == 422, response.content
    assert error_of(response)["code"] == "invalid_request"


@pytest.mark.parametrize("raw", ['"a string"', "[1, 2]", "null", "42"])
def test_json_that_is_not_an_object_is_a_client_error(api, api_key, raw):
    _, key = api_key
    response = api.post(CALLBACK_URL, raw=raw, key=key)
    assert response.status_code in (400, 422), response.content
    assert error_of(response)["code"] in ("malformed_json", "invalid_request")


def test_put_progress_with_wrong_types_is_422(api, api_key, awaiting):
    _, key = api_key
    for body in ({}, {"subtext": 5}, {"subtext": "x", "logs": {"a": 1}}, {"subtext": "x" * 501}):
        response = api.put(progress_url(awaiting.task.pk), body, key=key)
        assert response.status_code == 422, (body, response.content)
        assert error_of(response)["code"] == "invalid_request"
    response = api.put(progress_url(awaiting.task.pk), raw="{nope", key=key)
    assert response.status_code == 400
    assert error_of(response)["code"] == "malformed_json"


def test_body_over_the_limit_is_413(api, api_key, awaiting, settings):
    _, key = api_key
    settings.EVENTS_API_MAX_BODY_BYTES = 200
    payload = seed_payload(awaiting.task, logs=["x" * 300])

    response = api.post(CALLBACK_URL, payload, key=key)

    assert response.status_code == 413
    error = error_of(response)
    assert error["code"] == "payload_too_large"
    assert error["details"] == {"limit": 200}
    awaiting.reload()
    assert awaiting.task.status == RunTask.Status.AWAITING
    # Under the limit, the same endpoint still works.
    settings.EVENTS_API_MAX_BODY_BYTES = 1024 * 1024
    assert api.post(CALLBACK_URL, payload, key=key).status_code == 200


@pytest.mark.parametrize(
    "changes",
    [
        {"subtext": "nul \u0000 byte"},
        {"logs": "nul \u0000 byte"},
        {"logs": ["ok", "nul \u0000"]},
        {"output": {"k": "nul \u0000 byte"}},
        {"output": {"nul\u0000key": 1}},
        {"logs": "lone surrogate \ud800"},
    ],
    ids=["subtext", "logs-string", "logs-array", "output-value", "output-key", "surrogate"],
)
def test_nul_bytes_and_lone_surrogates_are_not_a_500(api, api_key, awaiting, changes):
    _, key = api_key
    response = api.post(CALLBACK_URL, raw=json.dumps(seed_payload(awaiting.task, **changes)), key=key)
    assert response.status_code < 500, response.content
    if response.status_code >= 400:
        error_of(response)


def test_put_progress_with_a_nul_byte_is_not_a_500(api, api_key, awaiting):
    _, key = api_key
    response = api.put(progress_url(awaiting.task.pk), {"subtext": "nul \u0000", "logs": ["nul \u0000"]}, key=key)
    assert response.status_code < 500, response.content


def test_bad_input_is_never_a_500(api, api_key, awaiting):
    _, key = api_key
    bodies = [
        "{}",
        '{"taskId": null, "status": "SUCCESS"}',
        '{"taskId": "' + "9" * 1000 + '", "status": "SUCCESS"}',
        '{"taskId": "\\u0000", "status": "SUCCESS"}',
        '{"taskId": [], "status": []}',
        json.dumps(seed_payload(awaiting.task, output={"nested": {"deep": [1, {"x": None}]}}, logs=[])),
        "\x00",
        "{" * 5000 + "}" * 5000,
        '{"taskId": "' + str(awaiting.task.pk) + '", "status": "SUCCESS", "logs": "x", "extra": 1}',
    ]
    for raw in bodies:
        response = api.post(CALLBACK_URL, raw=raw, key=key)
        assert response.status_code < 500, (raw[:80], response.status_code, response.content[:300])
        if response.status_code >= 400:
            error_of(response)
    for task_id in ("not-a-uuid", "%00", "x" * 500):
        response = api.put(progress_url(task_id), {"subtext": "x"}, key=key)
        assert response.status_code < 500, (task_id, response.content)
        assert api.get(f"/api/tasks/{task_id}", key=key).status_code < 500
        assert api.get(f"/api/runs/{task_id}", key=key).status_code < 500
        assert api.get(f"/api/records/{task_id}", key=key).status_code < 500

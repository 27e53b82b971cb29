"""Hostile or odd input is a clear 4xx in the API's JSON shape, never a 500 (issue 8, section 2).

Non-finite numbers, floods of log lines, NUL bytes in paths, both spellings of every API path,
unknown paths and server errors, what the OpenAPI document declares, and the database being
out of reach. Run on SQLite and on PostgreSQL (DATABASE_URL=postgres://...): PostgreSQL is the
one that refused NaN and NUL with a 500.
"""

import json
import re
from datetime import timedelta

import jsonschema_rs
import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from events import engine
from events.models import RunTask
from events.sweep import sweep
from tests.support.json_api import CALLBACK_URL, progress_url

pytestmark = pytest.mark.django_db


def error_of(response, status):
    assert response.status_code == status, (response.status_code, response.content[:300])
    assert response["Content-Type"].startswith("application/json"), response["Content-Type"]
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}, body
    return body["error"]


def unchanged(task):
    task.refresh_from_db()
    return {name: getattr(task, name) for name in ("status", "logs", "output", "subtext", "error")}


def json_client(method, url, raw, key):
    """A client that answers errors as a server would (no re-raise), sending ``raw`` as the JSON body."""
    client = Client(raise_request_exception=False)
    headers = {"Authorization": f"Bearer {key}"}
    if method == "get":
        return client.get(url, headers=headers)
    return getattr(client, method)(url, data=raw, content_type="application/json", headers=headers)


# Non-finite numbers ----------------------------------------------------------------------


NON_FINITE = ["NaN", "Infinity", "-Infinity", "1e999", "-1e999"]


@pytest.mark.parametrize("number", NON_FINITE)
@pytest.mark.parametrize("where", ["output", "nested output", "logs", "unknown key"])
def test_a_callback_holding_a_non_finite_number_is_400_and_changes_nothing(api_key, awaiting, number, where):
    _, key = api_key
    task_id = str(awaiting.task.pk)
    body = {
        "output": f'{{"taskId": "{task_id}", "status": "SUCCESS", "output": {{"score": {number}}}}}',
        "nested output": f'{{"taskId": "{task_id}", "status": "SUCCESS", "output": {{"a": [1, {{"b": {number}}}]}}}}',
        "logs": f'{{"taskId": "{task_id}", "status": "SUCCESS", "logs": ["ok", {number}]}}',
        "unknown key": f'{{"taskId": "{task_id}", "status": "SUCCESS", "extra": {number}}}',
    }[where]
    before = unchanged(awaiting.task)

    response = json_client("post", CALLBACK_URL, body, key)

    error = error_of(response, 400)
    assert error["code"] == "malformed_json"
    assert "not a finite number" in error["message"]
    assert error["details"] == {"number": number}
    assert unchanged(awaiting.task) == before
    assert awaiting.task.status == RunTask.Status.AWAITING


@pytest.mark.parametrize("number", NON_FINITE)
def test_a_progress_update_holding_a_non_finite_number_is_400_and_changes_nothing(api_key, awaiting, number):
    _, key = api_key
    before = unchanged(awaiting.task)

    for body in (f'{{"subtext": "x", "logs": [{number}]}}', f'{{"subtext": "x", "extra": {{"n": {number}}}}}'):
        response = json_client("put", progress_url(awaiting.task.pk), body, key)
        assert error_of(response, 400)["code"] == "malformed_json"
    assert unchanged(awaiting.task) == before


def test_large_but_finite_numbers_are_stored(api, api_key, awaiting):
    _, key = api_key
    raw = json.dumps(
        {
            "taskId": str(awaiting.task.pk),
            "status": "SUCCESS",
            "output": {"big": 1.7e308, "tiny": 1e-320, "int": 10**30, "neg": -0.0},
        }
    )

    response = api.post(CALLBACK_URL, raw=raw, key=key)

    assert response.status_code == 200, response.content
    awaiting.reload()
    assert float(awaiting.task.output["big"]) == 1.7e308  # PostgreSQL gives it back as an int
    assert awaiting.task.output["int"] == 10**30


# Log caps --------------------------------------------------------------------------------


def lines(prefix, count):
    return [f"{prefix} {index}" for index in range(count)]


@pytest.mark.parametrize("endpoint", ["callback", "progress"])
def test_more_log_lines_than_a_call_may_send_is_413_and_changes_nothing(api, api_key, awaiting, settings, endpoint):
    _, key = api_key
    settings.EVENTS_TASK_LOG_MAX_LINES_PER_CALL = 10
    before = unchanged(awaiting.task)

    if endpoint == "callback":
        response = api.post(
            CALLBACK_URL, {"taskId": str(awaiting.task.pk), "status": "SUCCESS", "logs": lines("line", 11)}, key=key
        )
    else:
        response = api.put(progress_url(awaiting.task.pk), {"subtext": "x", "logs": lines("line", 11)}, key=key)

    error = error_of(response, 413)
    assert error["code"] == "too_many_log_lines"
    assert error["details"] == {"limit": 10, "lines": 11}
    assert unchanged(awaiting.task) == before
    # Exactly at the limit is fine.
    response = api.put(progress_url(awaiting.task.pk), {"subtext": "x", "logs": lines("line", 10)}, key=key)
    assert response.status_code == 200, response.content


def test_a_line_longer_than_the_cap_is_cut_with_a_marker(api, api_key, awaiting, settings):
    _, key = api_key
    settings.EVENTS_TASK_LOG_MAX_LINE_CHARS = 100

    response = api.put(progress_url(awaiting.task.pk), {"subtext": "x", "logs": ["a" * 100, "b" * 250]}, key=key)

    assert response.status_code == 200, response.content
    awaiting.reload()
    kept, cut = awaiting.task.logs[-2:]
    assert kept["line"] == "a" * 100
    assert cut["line"] == "b" * 100 + " … [line cut: 150 more characters]"


def test_past_the_total_cap_the_oldest_lines_make_way_behind_one_marker(api, api_key, awaiting, settings):
    _, key = api_key
    settings.EVENTS_TASK_LOG_MAX_LINES = 20
    first = len(awaiting.task.logs)

    for batch in range(3):
        response = api.put(
            progress_url(awaiting.task.pk), {"subtext": "x", "logs": lines(f"batch {batch}", 10)}, key=key
        )
        assert response.status_code == 200, response.content

    awaiting.reload()
    logs = awaiting.task.logs
    assert len(logs) == 20
    marker, kept = logs[0], logs[1:]
    dropped = first + 30 - 19
    assert marker["dropped"] == dropped
    assert marker["line"].startswith(f"[{dropped} earlier log lines dropped")
    assert [entry["line"] for entry in kept] == (lines("batch 1", 10) + lines("batch 2", 10))[-19:]
    # The API shows the marker as an ordinary line.
    shown = api.get(f"/api/tasks/{awaiting.task.pk}", key=key).json()["logs"]
    assert set(shown[0]) == {"at", "line"} and shown[0]["line"] == marker["line"]
    # The callback that completes it appends within the cap too.
    response = api.post(CALLBACK_URL, {"taskId": str(awaiting.task.pk), "status": "SUCCESS", "logs": "done"}, key=key)
    assert response.status_code == 200
    awaiting.reload()
    assert len(awaiting.task.logs) == 20
    assert awaiting.task.logs[0]["dropped"] == dropped + 1
    assert awaiting.task.logs[-1]["line"] == "done"


def at_the_cap(task, settings):
    """Fill ``task``'s logs to the cap with the longest lines there may be, as the engine would."""
    flood = [
        RunTask.log_line("x" * (settings.EVENTS_TASK_LOG_MAX_LINE_CHARS + 50))
        for _ in range(settings.EVENTS_TASK_LOG_MAX_LINES + 200)
    ]
    RunTask.objects.filter(pk=task.pk).update(logs=RunTask.capped_logs(task.logs, flood))
    task.refresh_from_db()
    assert len(task.logs) == settings.EVENTS_TASK_LOG_MAX_LINES
    return task


def test_a_task_at_the_cap_that_times_out_stays_at_the_cap(awaiting, settings):
    task = at_the_cap(awaiting.task, settings)
    RunTask.objects.filter(pk=task.pk).update(deadline_at=timezone.now() - timedelta(seconds=1))

    assert engine.awaiting_expire() == 1

    task.refresh_from_db()
    assert task.status == RunTask.Status.FAILED
    assert len(task.logs) == settings.EVENTS_TASK_LOG_MAX_LINES
    assert task.logs[-1]["line"].startswith("timed out waiting for a callback")


def test_a_task_at_the_cap_whose_lease_expires_stays_at_the_cap(awaiting, settings):
    task = at_the_cap(awaiting.task, settings)
    RunTask.objects.filter(pk=task.pk).update(
        status=RunTask.Status.ACTIVE, lease_expires_at=timezone.now() - timedelta(seconds=1)
    )

    assert sweep()["lease_expired_retried"] == 1

    task.refresh_from_db()
    assert len(task.logs) == settings.EVENTS_TASK_LOG_MAX_LINES
    assert task.logs[-1]["line"].startswith("its worker stopped")


def test_a_task_at_the_cap_is_answered_with_a_bounded_body(api, api_key, awaiting, settings):
    _, key = api_key
    task = at_the_cap(awaiting.task, settings)

    response = api.get(f"/api/tasks/{task.pk}", key=key)

    assert response.status_code == 200
    logs = response.json()["logs"]
    assert len(logs) == settings.EVENTS_TASK_LOG_MAX_LINES
    longest = settings.EVENTS_TASK_LOG_MAX_LINE_CHARS + 100  # the line, its cut marker
    assert max(len(entry["line"]) for entry in logs) < longest
    assert len(response.content) < settings.EVENTS_TASK_LOG_MAX_LINES * (longest + 60) + 10_000


def test_the_admin_run_page_shows_the_last_lines_of_a_task_at_the_cap(admin_client, awaiting, settings):
    from events.admin import RUN_PAGE_LOG_LINES

    task = at_the_cap(awaiting.task, settings)

    response = admin_client.get(reverse("admin:events_run_change", args=[awaiting.run.pk]))

    assert response.status_code == 200
    page = response.content.decode()
    assert page.count("x" * settings.EVENTS_TASK_LOG_MAX_LINE_CHARS) == RUN_PAGE_LOG_LINES
    left_out = settings.EVENTS_TASK_LOG_MAX_LINES - RUN_PAGE_LOG_LINES
    assert f"{left_out} earlier log lines not shown here" in page
    assert reverse("admin:events_runtask_change", args=[task.pk]) in page
    assert len(response.content) < RUN_PAGE_LOG_LINES * (settings.EVENTS_TASK_LOG_MAX_LINE_CHARS + 200) + 200_000
    # The step's own page has them all, within the cap.
    step = admin_client.get(reverse("admin:events_runtask_change", args=[task.pk])).content.decode()
    assert step.count("x" * settings.EVENTS_TASK_LOG_MAX_LINE_CHARS) == settings.EVENTS_TASK_LOG_MAX_LINES - 1


# NUL bytes in paths ----------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/r/%00/", "/r/a%00b/", "/r/a%00b/status/", "/r/%00/status/"])
def test_a_nul_byte_in_a_record_token_is_404(awaiting, path):
    response = Client(raise_request_exception=False).get(path)

    assert response.status_code == 404


@pytest.mark.parametrize(
    "path",
    [
        "/api/tasks/%00",
        "/api/tasks/a%00b",
        "/api/runs/%00",
        "/api/runs/a%00b",
        "/api/records/%00",
        "/api/records/a%00b",
        "/api/tasks/not-a-uuid",
    ],
)
def test_a_nul_byte_or_a_malformed_id_in_an_api_path_is_404(api_key, awaiting, path):
    _, key = api_key

    response = Client(raise_request_exception=False).get(path, headers={"Authorization": f"Bearer {key}"})

    assert error_of(response, 404)["code"].endswith("not_found")


def test_a_nul_byte_in_the_progress_path_is_404(api_key, awaiting):
    _, key = api_key

    response = json_client("put", progress_url("a%00b"), '{"subtext": "x"}', key)

    assert error_of(response, 404)["code"] == "task_not_found"


# Both spellings, unknown paths, every error in the JSON shape ------------------------------


@pytest.mark.parametrize("debug", [False, True])
def test_the_callback_without_its_trailing_slash_is_applied(api_key, awaiting, settings, debug):
    _, key = api_key
    settings.DEBUG = debug

    response = json_client(
        "post", CALLBACK_URL.rstrip("/"), json.dumps({"taskId": str(awaiting.task.pk), "status": "SUCCESS"}), key
    )

    assert response.status_code == 200, response.content[:300]
    assert response.json()["applied"] is True
    awaiting.reload()
    assert awaiting.task.status == RunTask.Status.COMPLETE


def test_progress_with_a_trailing_slash_is_applied(api_key, awaiting):
    _, key = api_key

    response = json_client("put", progress_url(awaiting.task.pk) + "/", '{"subtext": "half way"}', key)

    assert response.status_code == 200, response.content[:300]
    awaiting.reload()
    assert awaiting.task.subtext == "half way"


@pytest.mark.parametrize(
    "path", ["/api/tasks/{task}/", "/api/runs/{run}/", "/api/records/{token}/", "/api/openapi.json/"]
)
def test_look_ups_answer_with_a_trailing_slash_too(api_key, awaiting, path):
    _, key = api_key
    url = path.format(task=awaiting.task.pk, run=awaiting.run.pk, token=awaiting.record.token)

    response = Client().get(url, headers={"Authorization": f"Bearer {key}"})

    assert response.status_code == 200, response.content[:300]
    assert response["Content-Type"].startswith("application/json")


@pytest.mark.parametrize("path", ["/api/", "/api/nope", "/api/nope/", "/api/tasks/", "/api/external-events/"])
@pytest.mark.parametrize("method", ["get", "post", "put"])
def test_an_unknown_api_path_is_404_in_the_json_shape(api_key, path, method, settings):
    _, key = api_key
    settings.DEBUG = True  # no APPEND_SLASH error page either

    response = json_client(method, path, "{}", key)

    assert error_of(response, 404)["code"] == "not_found"


def test_a_method_the_path_does_not_take_is_405_in_the_json_shape(api_key):
    _, key = api_key

    response = json_client("delete", CALLBACK_URL, "", key)

    assert error_of(response, 405)["code"] == "method_not_allowed"
    assert "POST" in response["Allow"]


def test_an_unexpected_error_in_the_api_is_500_in_the_json_shape(api_key, awaiting, monkeypatch, settings):
    _, key = api_key

    def broken(**kwargs):
        raise RuntimeError("something nobody expected")

    monkeypatch.setattr(engine, "task_progress", broken)
    for debug in (False, True):
        settings.DEBUG = debug
        response = json_client("put", progress_url(awaiting.task.pk), '{"subtext": "x"}', key)
        error = error_of(response, 500)
        assert error["code"] == "internal_error"
        assert "something nobody expected" not in response.content.decode()


def test_the_openapi_document_keeps_one_spelling_per_operation(client):
    paths = client.get("/api/openapi.json").json()["paths"]

    assert "/api/external-events/callback/" in paths and "/api/external-events/callback" not in paths
    assert "/api/event-workflow-tasks/{task_id}" in paths and "/api/event-workflow-tasks/{task_id}/" not in paths


# What the OpenAPI document declares -------------------------------------------------------


def request_schemas(client):
    document = client.get("/api/openapi.json").json()
    return document["components"]["schemas"]


def test_the_openapi_document_declares_what_the_server_refuses_in_text(client):
    document = client.get("/api/openapi.json").json()
    schemas = document["components"]["schemas"]
    callback, progress, value = (
        schemas["CallbackIn"]["properties"],
        schemas["ProgressIn"]["properties"],
        schemas["JsonValue"],
    )
    text_patterns = [
        callback["taskId"]["pattern"],
        callback["subtext"]["anyOf"][0]["pattern"],
        progress["subtext"]["pattern"],
        callback["logs"]["anyOf"][0]["pattern"],
        callback["logs"]["anyOf"][1]["items"]["pattern"],
        progress["logs"]["anyOf"][1]["items"]["pattern"],
        callback["output"]["anyOf"][0]["propertyNames"]["pattern"],
        next(item["pattern"] for item in value["anyOf"] if item.get("type") == "string"),
    ]
    for pattern in text_patterns:
        assert re.search(pattern, "plain text, accents é and emoji 🎉")
        assert not re.search(pattern, "nul \x00 byte")
        # A regex to Rust's validator too (schemathesis's): one it cannot read, it ignores.
        validator = jsonschema_rs.validator_for({"type": "string", "pattern": pattern})
        assert not validator.is_valid("nul \x00 byte") and validator.is_valid("plain")
    assert callback["output"]["anyOf"][0]["additionalProperties"] == {"$ref": "#/components/schemas/JsonValue"}
    assert "finite" in value["description"] and "unpaired surrogates" in value["description"]
    assert "unpaired surrogates" in document["info"]["description"] and "finite" in document["info"]["description"]


def test_the_openapi_document_declares_the_lines_a_call_may_send(client, settings):
    settings.EVENTS_TASK_LOG_MAX_LINES_PER_CALL = 7

    schemas = request_schemas(client)

    for name in ("CallbackIn", "ProgressIn"):
        assert schemas[name]["properties"]["logs"]["anyOf"][1]["maxItems"] == 7


@pytest.mark.parametrize(
    "changes",
    [
        {"taskId": "nul\x00"},
        {"subtext": "nul\x00"},
        {"logs": "nul\x00"},
        {"logs": ["ok", "nul\x00"]},
        {"output": {"nul\x00key": 1}},
        {"output": {"a": [{"b": "nul\x00"}]}},
        {"output": {"a": "\ud800"}},
    ],
)
def test_text_the_document_refuses_the_server_refuses_with_422(api, api_key, awaiting, changes):
    _, key = api_key
    before = unchanged(awaiting.task)

    response = api.post(
        CALLBACK_URL, raw=json.dumps({"taskId": str(awaiting.task.pk), "status": "SUCCESS", **changes}), key=key
    )

    assert error_of(response, 422)["code"] == "invalid_request"
    assert unchanged(awaiting.task) == before


# The database out of reach ----------------------------------------------------------------


def test_while_the_database_is_unreachable_the_api_answers_503_with_retry_after(
    api_key, awaiting, database_down, settings
):
    _, key = api_key
    settings.EVENTS_UNAVAILABLE_RETRY_AFTER_SECONDS = 7
    body = json.dumps({"taskId": str(awaiting.task.pk), "status": "SUCCESS"})

    outage = database_down()
    answers = [
        json_client("post", CALLBACK_URL, body, key),
        json_client("put", progress_url(awaiting.task.pk), '{"subtext": "x"}', key),
        Client(raise_request_exception=False).get(
            f"/api/tasks/{awaiting.task.pk}", headers={"Authorization": f"Bearer {key}"}
        ),
    ]
    outage.up()

    for response in answers:
        error = error_of(response, 503)
        assert error["code"] == "database_unavailable"
        assert error["details"] == {"retry_after": 7}
        assert response["Retry-After"] == "7"
    awaiting.reload()
    assert awaiting.task.status == RunTask.Status.AWAITING
    # Once it is back, the same callback is applied.
    assert json_client("post", CALLBACK_URL, body, key).status_code == 200


def test_the_openapi_document_declares_the_503(client):
    paths = client.get("/api/openapi.json").json()["paths"]

    assert "503" in paths["/api/external-events/callback/"]["post"]["responses"]
    assert "503" in paths["/api/tasks/{task_id}"]["get"]["responses"]

"""Failed API authentications are throttled per client address; successful calls never count.

A client that failed EVENTS_API_AUTH_FAILURE_LIMIT times within its window gets 429, in the API's
error shape with Retry-After, on every call that needs a credential (its credential unchecked)
until the window ends. The limits are read at each call: the settings fixture sets them.
"""

import types
import uuid

import pytest
from django.core.cache import cache
from django.core.cache.backends.db import DatabaseCache
from django.core.management import call_command

from events import api, throttle
from tests.factories import RecordFactory
from tests.support.json_api import CALLBACK_URL

LIMIT = 3
WINDOW = 60


@pytest.fixture(autouse=True)
def limits(db, settings, throttle_clock):
    settings.EVENTS_API_AUTH_FAILURE_LIMIT = LIMIT
    settings.EVENTS_API_AUTH_FAILURE_WINDOW_SECONDS = WINDOW
    cache.clear()
    yield settings
    cache.clear()


def task_url():
    return f"/api/tasks/{uuid.uuid4()}"


def fail_to_authenticate(client, times, **extra):
    for _ in range(times):
        response = client.get(task_url(), headers={"Authorization": "Bearer wrong-key"}, **extra)
        assert response.status_code == 401, response.content


def assert_throttled(response):
    assert response.status_code == 429, response.content
    wait = int(response["Retry-After"])
    assert 1 <= wait <= WINDOW
    assert response.json() == {
        "error": {
            "code": "too_many_failed_authentications",
            "message": f"Too many failed authentications from this address; try again in {wait} s.",
            "details": {"retry_after": wait},
        }
    }


def test_past_the_limit_every_call_gets_429_even_with_a_valid_key(client, api_key):
    _, key = api_key
    fail_to_authenticate(client, LIMIT)

    assert_throttled(client.get(task_url(), headers={"Authorization": "Bearer wrong-key"}))
    assert_throttled(client.get(task_url()))  # no credential at all
    assert_throttled(client.get(task_url(), headers={"Authorization": f"Bearer {key}"}))
    assert_throttled(client.get(task_url(), headers={"X-Api-Key": key}))


def test_successful_calls_are_not_counted(client, api_key):
    _, key = api_key
    record = RecordFactory()

    for _ in range(5 * LIMIT):
        assert client.get(f"/api/records/{record.token}", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    fail_to_authenticate(client, LIMIT - 1)  # still below the limit: the successes counted nothing

    assert client.get(f"/api/records/{record.token}", headers={"X-Api-Key": key}).status_code == 200
    assert client.get(task_url(), headers={"Authorization": f"Bearer {key}"}).status_code == 404  # authenticated


def test_a_wrong_callback_token_counts_and_then_the_right_one_waits_too(api, awaiting):
    for _ in range(LIMIT):
        response = api.post(CALLBACK_URL, {"taskId": str(awaiting.task.pk), "status": "SUCCESS"}, key="not-the-token")
        assert response.status_code == 401

    response = api.post(CALLBACK_URL, {"taskId": str(awaiting.task.pk), "status": "SUCCESS"}, key=awaiting.token)

    assert_throttled(response)
    awaiting.task.refresh_from_db()
    assert awaiting.task.status == "awaiting"  # nothing applied


def test_the_limit_is_per_client_address(client, api_key):
    _, key = api_key
    fail_to_authenticate(client, LIMIT, REMOTE_ADDR="192.0.2.1")

    assert_throttled(client.get(task_url(), headers={"Authorization": f"Bearer {key}"}, REMOTE_ADDR="192.0.2.1"))
    other = "192.0.2.2"
    assert client.get(task_url(), headers={"Authorization": "Bearer wrong-key"}, REMOTE_ADDR=other).status_code == 401
    assert client.get(task_url(), headers={"Authorization": f"Bearer {key}"}, REMOTE_ADDR=other).status_code == 404


def test_behind_a_proxy_the_client_is_the_address_the_proxy_saw(client, settings):
    settings.EVENTS_TRUSTED_PROXIES = 1
    # The client writes whatever it likes in front; our proxy appends the address it saw.
    for spoofed in ("10.0.0.1", "10.0.0.2", "10.0.0.3"):
        fail_to_authenticate(client, 1, REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR=f"{spoofed}, 203.0.113.7")

    assert_throttled(client.get(task_url(), REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR="203.0.113.7"))
    other = client.get(task_url(), REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR="203.0.113.7, 198.51.100.9")
    assert other.status_code == 401


def test_the_next_window_starts_afresh(client, api_key, monkeypatch):
    _, key = api_key
    now = [1_000_000 * WINDOW + 1.0]  # one second into a window
    monkeypatch.setattr(throttle, "time", types.SimpleNamespace(time=lambda: now[0]))
    fail_to_authenticate(client, LIMIT)

    response = client.get(task_url(), headers={"Authorization": f"Bearer {key}"})
    assert_throttled(response)
    assert response["Retry-After"] == str(WINDOW - 1)

    now[0] += WINDOW
    assert client.get(task_url(), headers={"Authorization": f"Bearer {key}"}).status_code == 404


def test_a_limit_of_0_turns_the_throttle_off(client, settings):
    settings.EVENTS_API_AUTH_FAILURE_LIMIT = 0

    fail_to_authenticate(client, 5 * LIMIT)


def test_the_openapi_document_declares_the_429(client):
    paths = client.get("/api/openapi.json").json()["paths"]

    operations = [operation for path in paths.values() for operation in path.values()]
    assert operations
    for operation in operations:
        assert "429" in operation["responses"], operation["operationId"]


def test_in_the_database_cache_the_count_is_one_for_every_process(client, api_key, settings):
    """DJANGO_CACHE=database: another process (or machine) opening the cache reads the same count."""
    _, key = api_key
    settings.CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.db.DatabaseCache", "LOCATION": "events_cache"}
    }
    call_command("createcachetable", verbosity=0)
    fail_to_authenticate(client, LIMIT)

    another_process = DatabaseCache("events_cache", {})
    counted, _ = api.AUTH_FAILURES._key(types.SimpleNamespace(META={"REMOTE_ADDR": "127.0.0.1"}), WINDOW)
    assert another_process.get(counted) == LIMIT
    assert_throttled(client.get(task_url(), headers={"Authorization": f"Bearer {key}"}))

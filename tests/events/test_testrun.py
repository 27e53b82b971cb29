"""Test runs: the real engine runs a tree over a submission's data; nothing is sent, queued or kept."""

import datetime
import time

import pytest
from django.core import mail
from django.core.management import CommandError, call_command
from django_q.models import OrmQ

from events.models import Node, Run, RunTask, TreeVersion
from events.testrun import TestRunError, tree_test_run
from forms_app.models import Record
from tests.factories import add_node, publish


def counts():
    return (Run.objects.count(), RunTask.objects.count(), Record.objects.count(), OrmQ.objects.count())


@pytest.fixture
def nothing_kept(db):
    """Asserts, after the test, that no run, task, record or queue row was left behind by the test runs."""
    before = counts()
    yield
    assert counts() == before
    assert mail.outbox == []


def test_the_seed_tree_runs_in_order_and_its_email_is_captured_not_sent(seed_tree, trail_form, nothing_kept):
    result = tree_test_run(form=trail_form, data={"email": "ann@example.com", "trail": ""})

    assert result.status == "complete"
    assert result.data["trail"] == "ADBC"  # A and D inline, then the background B and C
    assert result.data_before["trail"] == ""
    assert [(step.name, step.phase) for step in result.steps] == [
        ("a", "request"),
        ("confirm", "worker"),
        ("b", "worker"),
        ("c", "worker"),
        ("mail", "worker"),
        ("d", "request"),
    ]
    [email] = result.emails
    assert (email.to, email.subject, email.body) == (["ann@example.com"], "Booked", "Trail ADBC")
    assert result.step("b").rendered_config == {"field": "trail", "value": "ADB"}
    assert result.waiting.state == "done"


def test_a_past_record_is_copied_and_left_unchanged(seed_tree, trail_form, submit):
    record = submit(email="bob@example.com", trail="").record
    record.refresh_from_db()
    data, flags, updated = dict(record.data), dict(record.flags), record.updated_at
    mail.outbox.clear()
    before = counts()

    add_node(trail_form, "update_field", name="who", config={"field": "status", "value": "{{ record.id }}"})

    result = tree_test_run(form=trail_form, record=record)

    assert result.data["trail"] == "ADBCADBC"  # it started from the record's own trail
    assert result.data["status"] == str(record.pk)  # templates see the record's own id
    record.refresh_from_db()
    assert (record.data, record.flags, record.updated_at) == (data, flags, updated)
    assert counts() == before
    assert mail.outbox == []


def test_an_http_request_is_answered_by_its_canned_response_and_never_sent(
    form, http_server, allow_local_http, nothing_kept
):
    add_node(
        form,
        "http_request",
        name="crm",
        config={"method": "POST", "url": "https://crm.example.com/leads", "body": '{"email": "{{ record.email }}"}'},
    )
    add_node(form, "update_field", name="after", config={"field": "status", "value": "{{ tasks.crm.output.json.id }}"})
    add_node(form, "http_request", name="other", config={"method": "GET", "url": http_server.url + "/ping"})

    result = tree_test_run(
        form=form, data={"email": "ann@example.com"}, canned={"crm": {"status": 201, "json": {"id": 7}}}
    )

    assert result.status == "complete"
    assert result.data["status"] == "7"
    crm, other = result.http_calls
    assert (crm.method, crm.url, crm.body, crm.canned) == (
        "POST",
        "https://crm.example.com/leads",
        '{"email": "ann@example.com"}',
        True,
    )
    assert crm.response == {"status": 201, "json": {"id": 7}}
    assert (other.method, other.canned, other.response) == ("GET", False, {"status": 200, "json": {}})
    assert http_server.requests == []  # a real server on this machine heard nothing


def test_a_failing_canned_answer_is_retried_on_the_test_run_clock(form, nothing_kept):
    add_node(
        form,
        "http_request",
        name="flaky",
        max_attempts=3,
        retry_backoff_seconds=60,
        config={"method": "POST", "url": "https://api.example.com/x"},
    )
    start = datetime.datetime(2030, 1, 1, 12, tzinfo=datetime.UTC)

    result = tree_test_run(
        form=form,
        data={"email": "a@example.com"},
        canned={"flaky": {"responses": [{"status": 503}, {"error": "connection refused"}, {"status": 200}]}},
        start=start,
    )

    step = result.step("flaky")
    assert (step.status, step.attempt) == ("complete", 3)
    assert [call.attempt for call in result.http_calls] == [1, 2, 3]
    assert result.http_calls[1].at - result.http_calls[0].at >= datetime.timedelta(seconds=30)  # a backoff passed
    assert result.finished_at > start


def test_a_delay_is_fast_forwarded_and_shows_when_it_would_fire(form, nothing_kept):
    delay = add_node(form, "delay", name="later", config={"rule": "after", "after_seconds": 3 * 86400})
    add_node(form, "set_flag", parent=delay, name="reminded", config={"flag": "reminded"})
    start = datetime.datetime(2030, 1, 1, 12, tzinfo=datetime.UTC)

    result = tree_test_run(form=form, data={"email": "a@example.com"}, start=start)

    assert result.flags == {"reminded": True}
    assert result.step("later").due_at == start + datetime.timedelta(days=3)
    assert result.step("reminded").finished_at == start + datetime.timedelta(days=3)


def test_a_canned_callback_answers_a_waiting_step(form, nothing_kept):
    add_node(
        form,
        "http_request",
        name="book",
        config={"method": "POST", "url": "https://seats.example.com/jobs", "wait_for_callback": True},
    )
    add_node(form, "update_field", name="seat", config={"field": "status", "value": "{{ tasks.book.output.seat }}"})

    result = tree_test_run(
        form=form, data={"email": "a@example.com"}, canned={"book": {"callback": {"output": {"seat": "14C"}}}}
    )

    assert result.status == "complete"
    assert result.data["status"] == "14C"
    assert "taskId" in result.http_calls[0].body  # the request says where to call back, as a real one does
    assert result.step("book").canned["callback"] == {"status": "SUCCESS", "output": {"seat": "14C"}}


def test_a_canned_failure_runs_the_error_branch_and_a_timeout_waits_for_the_deadline(form, nothing_kept):
    book = add_node(
        form,
        "http_request",
        name="book",
        config={"method": "POST", "url": "https://seats.example.com/jobs", "wait_for_callback": True},
    )
    add_node(form, "set_flag", parent=book, branch="on_error", name="sorry", config={"flag": "sorry"})
    add_node(
        form,
        "http_request",
        name="slow",
        config={
            "method": "POST",
            "url": "https://slow.example.com/jobs",
            "wait_for_callback": True,
            "callback_timeout_seconds": 3600,
        },
    )
    start = datetime.datetime(2030, 1, 1, 12, tzinfo=datetime.UTC)

    result = tree_test_run(
        form=form,
        data={"email": "a@example.com"},
        canned={
            "book": {"callback": {"status": "FAILURE", "subtext": "No seats"}},
            "slow": {"callback": {"status": "TIMEOUT"}},
        },
        start=start,
    )

    assert result.flags == {"sorry": True}
    assert result.step("book").error_branch_taken
    slow = result.step("slow")
    assert (slow.status, slow.failure) == ("failed", "timeout")
    assert slow.finished_at == start + datetime.timedelta(hours=1)
    assert result.status == "failed"
    assert result.waiting.state == "failed"


def test_the_draft_runs_by_default_and_a_version_when_asked(trail_form, add_mark, nothing_kept):
    add_mark("A")
    live = publish(trail_form) or trail_form.tree_versions.get()
    add_mark("B", publish=False)

    draft = tree_test_run(form=trail_form, data={"trail": ""})
    published = tree_test_run(form=trail_form, data={"trail": ""}, version=live)

    assert (draft.data["trail"], draft.version) == ("AB", "draft")
    assert (published.data["trail"], published.version) == ("A", f"version {live.number}")


def test_a_trigger_event_runs_its_child_run(trail_form, add_mark, nothing_kept):
    add_node(trail_form, "trigger_event", name="fire", config={"event": "later"})
    add_node(trail_form, "update_field", event="later", name="x", config={"field": "trail", "value": "X"})

    result = tree_test_run(form=trail_form, data={"trail": ""})

    assert [run.event for run in result.runs] == ["record_update", "later"]
    assert result.step("fire").child_run == 1
    assert result.data["trail"] == "X"


def test_bad_input_is_refused_with_its_path(form, db):
    with pytest.raises(TestRunError) as unknown:
        tree_test_run(form=form, data={"nope": 1})
    with pytest.raises(TestRunError) as canned:
        tree_test_run(form=form, data={}, canned={"x": {"status": 42}})

    assert unknown.value.problems[0][0] == "data" and "nope" in unknown.value.problems[0][1]
    assert canned.value.problems == [("canned.x.status", "give an HTTP status, a whole number from 100 to 599")]


def test_the_command_prints_the_timeline_and_what_would_be_sent(seed_tree, trail_form, submit, capsys):
    record = submit(email="bob@example.com", trail="").record
    mail.outbox.clear()
    before = counts()

    call_command("test_tree", trail_form.slug, "--record", record.token)

    out = capsys.readouterr().out
    assert "Run: record_update — complete" in out
    assert "to bob@example.com: Booked" in out
    assert "trail: 'ADBC' → 'ADBCADBC'" in out
    assert counts() == before and mail.outbox == []


def test_the_command_takes_a_record_whose_older_token_begins_with_a_dash(seed_tree, trail_form, submit, capsys):
    record = submit(email="bob@example.com", trail="").record
    type(record).objects.filter(pk=record.pk).update(token="-" + record.token[1:])  # as tokens could begin

    call_command("test_tree", trail_form.slug, f"--record=-{record.token[1:]}")

    assert "Run: record_update — complete" in capsys.readouterr().out


def test_the_command_refuses_an_unknown_record_and_bad_data(trail_form, db):
    with pytest.raises(CommandError, match="no record with the token"):
        call_command("test_tree", trail_form.slug, "--record", "nope")
    with pytest.raises(CommandError, match="the form has no field nope"):
        call_command("test_tree", trail_form.slug, "--data", '{"nope": 1}')


def test_a_test_run_that_runs_too_long_is_stopped_and_says_so(trail_form, settings, nothing_kept):
    settings.EVENTS_TEST_RUN_MAX_SECONDS = 0.3
    settings.EVENTS_MAX_EVENT_DEPTH = 30
    for event in ("record_update", "again"):  # each run fires two more: a run tree doubling at every level
        for name in ("one", "two"):
            add_node(trail_form, "trigger_event", event=event, name=name, config={"event": "again"})
    began = time.monotonic()

    result = tree_test_run(form=trail_form, data={})

    assert time.monotonic() - began < 5
    assert "was stopped after 0.3 s" in result.stopped
    assert result.status == "running"


def test_canned_answers_follow_each_task_s_own_attempts(trail_form, nothing_kept):
    for name in ("one", "two"):
        add_node(trail_form, "trigger_event", name=name, config={"event": "call"})
    add_node(
        trail_form,
        "http_request",
        event="call",
        name="api",
        max_attempts=2,
        retry_backoff_seconds=1,
        config={"method": "POST", "url": "https://api.example.com/"},
    )

    result = tree_test_run(form=trail_form, data={}, canned={"api": {"responses": [{"status": 500}, {"status": 200}]}})

    assert sorted((call.run, call.attempt, call.response["status"]) for call in result.http_calls) == [
        (1, 1, 500),
        (1, 2, 200),
        (2, 1, 500),
        (2, 2, 200),
    ]
    assert result.status == "complete"


def test_a_canned_answer_that_cannot_be_stored_is_refused(form, db):
    with pytest.raises(TestRunError) as refused:
        tree_test_run(form=form, data={}, canned='{"x": {"json": {"n": NaN}}}')

    assert "not a finite number" in refused.value.problems[0][1]


def test_the_check_refuses_a_test_run_bound_that_would_fail_waiting_submits(settings):
    from django.db import connection

    from events.checks import short_test_runs as check

    settings.EVENTS_TEST_RUN_MAX_SECONDS = 5
    assert check(None) == []
    settings.EVENTS_TEST_RUN_MAX_SECONDS = 0
    assert [error.id for error in check(None)] == ["events.E002"]
    settings.EVENTS_TEST_RUN_MAX_SECONDS = 15  # the test database waits 20 s at most, as the shipped one does
    if connection.vendor == "sqlite":  # a test run holds SQLite's one write lock
        [error] = check(None)
        assert error.id == "events.E002" and "at most half of SQLite's busy timeout (20 s)" in error.msg
    else:  # PostgreSQL locks rows: a longer test run blocks nobody else's submit
        assert check(None) == []


def test_the_draft_s_trigger_event_fires_the_draft_of_its_event_and_a_version_fires_the_live_one(
    trail_form, nothing_kept
):
    add_node(trail_form, "trigger_event", name="fire", config={"event": "later"})
    live = add_node(trail_form, "update_field", event="later", name="x", config={"field": "trail", "value": "live"})
    Node.objects.filter(pk=live.pk).update(config={"field": "trail", "value": "draft"})  # not published
    version = TreeVersion.objects.live(trail_form)

    assert tree_test_run(form=trail_form, data={"trail": ""}).data["trail"] == "draft"
    assert tree_test_run(form=trail_form, data={"trail": ""}, version=version).data["trail"] == "live"


def test_a_request_a_real_run_would_refuse_is_refused_in_a_test_run_too(form, nothing_kept):
    add_node(form, "http_request", name="metadata", config={"method": "GET", "url": "http://169.254.169.254/latest"})
    add_node(form, "set_flag", name="after", config={"flag": "after"})

    result = tree_test_run(form=form, data={})

    step = result.step("metadata")
    assert (step.status, step.attempt) == ("failed", 1)  # refused at once: a retry cannot help
    assert "metadata addresses are blocked" in step.error
    assert "metadata addresses are blocked" in result.http_calls[0].response["error"]
    assert result.status == "failed"

"""Fault tests on PostgreSQL (issue 5): real processes on 127.0.0.1, one throw-away database per test.

Each test creates its own database, migrates it with ``manage.py migrate``, starts a
``manage.py runserver`` and ``manage.py worker`` processes against it, injects its fault,
and prints one ``FAULTS ...`` line with its counts. Short by default; FAULTS_SCALE=long
(``make soak``) runs the full sizes. Run them on their own, sequentially:

    .venv/bin/python -m pytest tests/faults/test_postgres_faults.py -m faults -s -p no:xdist
"""

import threading
import time
from datetime import datetime, timezone

import pytest

from . import pg_harness as h

pytestmark = [pytest.mark.faults, pytest.mark.xdist_group("faults")]


@pytest.fixture
def pg_database():
    if not h.pg_is_up():
        pytest.fail(f"PostgreSQL is not answering on {h.PG_HOST}:{h.PG_PORT} (start it: pg_ctlcluster ... main start)")
    database = h.Database().create()
    yield database
    database.drop()


@pytest.fixture
def pg_stack(pg_database, tmp_path, request):
    stack = h.Stack(pg_database, tmp_path)
    yield stack
    stack.stop()
    report = getattr(request.node, "rep_call", None)
    if report is None or report.failed:
        stack.dump_logs()


def form_document(slug, fields, tree):
    return {
        "form": {
            "slug": slug, "title": slug, "is_published": True,
            "fields": [{"name": "email", "label": "Email", "type": "email", "required": True}]
            + [{"name": name, "label": name, "type": "hidden", "required": False} for name in fields],
        },
        "events": {"record_update": tree},
    }


def recorder_step(url, name="deliver"):
    return {"type": "http_request", "name": name,
            "config": {"method": "POST", "url": url, "body": '{"email": "{{ record.email }}"}',
                       "headers": {"Content-Type": "application/json"}, "timeout_seconds": 10}}


def unfinished_runs(database):
    return database.scalar("SELECT count(*) FROM events_run WHERE status = 'running'")


# --- 1. PostgreSQL restarted during load ----------------------------------------------------


def test_postgres_restart_during_load_loses_no_acknowledged_submission(pg_database, pg_stack, tmp_path):
    total = h.scale(150, 1000)
    with h.Recorder() as recorder:
        h.import_form(pg_database, form_document("pg-restart", ["status"], [
            {"type": "update_field", "name": "receive", "config": {"field": "status", "value": "received"}},
            {"type": "background", "name": "bg", "children": [recorder_step(recorder.url)]},
        ]), tmp_path)
        pg_stack.web()
        pg_stack.worker("worker-1")

        results = []
        restart = {}

        def restart_when_loaded():
            # Restart once a third of the submissions are in: load before, during and after.
            h.wait_until(lambda: sum(1 for r in results if r[1]) >= total // 3 or len(results) >= total,
                         timeout=120, interval=0.02, message="a third of the submissions")
            restart["wall_start"] = time.time()
            restart["start"], restart["end"] = h.pg_restart()
            restart["wall_end"] = time.time()

        restarter = threading.Thread(target=restart_when_loaded, daemon=True)
        restarter.start()
        started = time.monotonic()
        h.submit_load(pg_stack.web_url, "pg-restart", total, threads=3, results=results,
                      make_data=lambda i: {"email": f"user{i}@example.com"}, deadline_seconds=h.scale(120, 600))
        submit_seconds = time.monotonic() - started
        restarter.join(90)
        assert "end" in restart, "the PostgreSQL restart did not finish"

        acknowledged = [token for _, token, _ in results if token]
        assert len(results) == total
        # Submissions were attempted after the restart too (else it was not "during load").
        assert any(at > restart["end"] for _, _, at in results) or len(acknowledged) < total

        def all_terminal():
            state = h.runs_by_token(pg_database, acknowledged)
            return len(state) == len(acknowledged) and all(s[2] in ("complete", "failed", "cancelled")
                                                          for s in state.values())

        h.wait_until(all_terminal, timeout=h.scale(90, 300), interval=0.5,
                     message="every acknowledged submission's run to finish after the restart")
        state = h.runs_by_token(pg_database, acknowledged)
        # Runs stored although their submit was not acknowledged must finish too (the sweep's job).
        h.wait_until(lambda: unfinished_runs(pg_database) == 0, timeout=h.scale(60, 120), interval=0.5,
                     message="every stored run (acknowledged or not) to finish")

        counts, _ = recorder.snapshot()
        tasks = dict(pg_database.query(
            "SELECT id::text, attempt FROM events_runtask WHERE type = 'http_request'"))
        first_after = pg_database.scalar(
            "SELECT min(finished_at) FROM events_runtask WHERE type = 'http_request' AND finished_at > %s",
            (datetime.fromtimestamp(restart["wall_end"], timezone.utc),))
        recovered_in = (first_after.timestamp() - restart["wall_end"]) if first_after else float("nan")
        lost = [t for t in acknowledged if t not in state]
        completed = sum(1 for s in state.values() if s[2] == "complete" and s[1])
        twice = sum(1 for key, n in counts.items() if n > 1)
        h.print_line(
            f"FAULTS pg-restart: submitted={len(results)} acknowledged={len(acknowledged)} completed={completed} "
            f"lost={len(lost)} twice={twice} stored={len(tasks)} outage={restart['end'] - restart['start']:.1f}s "
            f"recovered_in={recovered_in:.1f}s submit_seconds={submit_seconds:.1f} repairs={h.repairs(pg_database)}"
        )
        assert lost == []
        assert completed == len(acknowledged), {t: s for t, s in state.items() if s[2] != "complete" or not s[1]}
        # Each stored side effect ran; more than once only where the task was really tried again.
        assert set(tasks) <= set(counts), set(tasks) - set(counts)
        assert all(counts[key] <= max(attempt, 1) for key, attempt in tasks.items()), {
            key: (counts[key], attempt) for key, attempt in tasks.items() if counts[key] > attempt}
        assert first_after is not None, "no background task finished after the restart"


# --- 2. Sibling tasks finishing at the same moment ------------------------------------------


def test_sibling_tasks_finishing_together_complete_each_run_exactly_once(pg_database, pg_stack, tmp_path):
    pairs = h.scale(200, 1000)
    h.import_form(pg_database, form_document("siblings", ["left", "right"], [
        {"type": "background", "name": "left_bg", "children": [
            {"type": "update_field", "name": "set_left", "config": {"field": "left", "value": "L"}}]},
        {"type": "background", "name": "right_bg", "children": [
            {"type": "update_field", "name": "set_right", "config": {"field": "right", "value": "R"}}]},
    ]), tmp_path)
    h.install_completion_audit(pg_database)
    pg_stack.web()
    pg_stack.worker("worker-1", {"EVENTS_QUEUE_WORKERS": "4"})
    pg_stack.worker("worker-2", {"EVENTS_QUEUE_WORKERS": "4"})

    started = time.monotonic()
    results = h.submit_load(pg_stack.web_url, "siblings", pairs, threads=4,
                            make_data=lambda i: {"email": f"pair{i}@example.com"}, deadline_seconds=h.scale(120, 600))
    acknowledged = [token for _, token, _ in results if token]
    assert len(acknowledged) == pairs, f"only {len(acknowledged)} of {pairs} submissions were acknowledged"

    h.wait_until(lambda: unfinished_runs(pg_database) == 0, timeout=h.scale(90, 300), interval=0.5,
                 message="every run to finish")
    seconds = time.monotonic() - started

    rows = pg_database.query(
        """SELECT r.token, r.is_complete, r.data->>'left', r.data->>'right', run.id::text, run.status, run.finished_at
             FROM forms_app_record r JOIN events_run run ON run.record_id = r.id AND run.is_submission""")
    finishes = dict(pg_database.query(
        "SELECT run_id::text, count(*) FROM faults_run_completion GROUP BY run_id"))
    not_terminal_tasks = pg_database.scalar(
        "SELECT count(*) FROM events_runtask WHERE status NOT IN ('complete', 'failed', 'cancelled', 'skipped')")
    # How close the siblings finished: the gap between a run's two containers' finish times.
    gaps = [row[0] for row in pg_database.query(
        """SELECT extract(epoch FROM max(finished_at) - min(finished_at))
             FROM events_runtask WHERE type = 'background' GROUP BY run_id""")]
    together = sum(1 for gap in gaps if gap is not None and gap < 0.05)
    repaired = h.repairs(pg_database)
    complete = [row for row in rows if row[5] == "complete" and row[6] is not None and row[1]]
    twice = sum(1 for n in finishes.values() if n > 1)
    lost_updates = [row[0] for row in rows if (row[2], row[3]) != ("L", "R")]
    h.print_line(
        f"FAULTS sibling-pairs: submitted={len(results)} acknowledged={len(acknowledged)} completed={len(complete)} "
        f"lost={len(acknowledged) - len(rows)} twice={twice} finished_within_50ms={together} "
        f"finished_by_sweep={repaired.get('run_finished', 0)} lost_field_updates={len(lost_updates)} "
        f"seconds={seconds:.1f} repairs={repaired}"
    )
    assert len(rows) == pairs
    assert len(complete) == pairs, [row for row in rows if row not in complete][:5]
    assert not_terminal_tasks == 0
    assert twice == 0, {run: n for run, n in finishes.items() if n > 1}
    assert all(finishes.get(row[4]) == 1 for row in rows), "a run completed without exactly one status change"
    assert lost_updates == [], f"{len(lost_updates)} records lost one sibling's field update, e.g. {lost_updates[:3]}"


# --- 3. Two workers, one database, many background side effects -----------------------------


def test_two_workers_run_each_side_effect_exactly_once(pg_database, pg_stack, tmp_path):
    total = h.scale(300, 1000)
    per_record = 4
    records = -(-total // per_record)
    worker_secrets = {"worker-1": "faults-secret-one", "worker-2": "faults-secret-two"}
    with h.Recorder(worker_secrets) as recorder:
        h.import_form(pg_database, form_document("two-workers", [], [
            {"type": "background", "name": f"bg{n}", "children": [recorder_step(recorder.url, f"effect{n}")]}
            for n in range(per_record)
        ]), tmp_path)
        pg_stack.web()
        for name, secret in worker_secrets.items():
            pg_stack.worker(name, {"EVENTS_HTTP_SIGNING_SECRET": secret})

        started = time.monotonic()
        results = h.submit_load(pg_stack.web_url, "two-workers", records, threads=4,
                                make_data=lambda i: {"email": f"two{i}@example.com"},
                                deadline_seconds=h.scale(120, 600))
        acknowledged = [token for _, token, _ in results if token]
        assert len(acknowledged) == records, f"only {len(acknowledged)} of {records} submissions were acknowledged"
        h.wait_until(lambda: unfinished_runs(pg_database) == 0, timeout=h.scale(90, 300), interval=0.5,
                     message="every run to finish")
        seconds = time.monotonic() - started
        time.sleep(1)  # a late duplicate would arrive now
        counts, by_worker = recorder.snapshot()

    tasks = dict(pg_database.query("SELECT id::text, status FROM events_runtask WHERE type = 'http_request'"))
    run_status = dict(pg_database.query("SELECT status, count(*) FROM events_run GROUP BY status"))
    twice = {key: n for key, n in counts.items() if n > 1}
    missing = set(tasks) - set(counts)
    split = {name: sum(keys.values()) for name, keys in sorted(by_worker.items())}
    h.print_line(
        f"FAULTS two-workers: submitted={len(results)} acknowledged={len(acknowledged)} side_effects={len(tasks)} "
        f"completed={sum(1 for s in tasks.values() if s == 'complete')} executed={sum(counts.values())} "
        f"lost={len(missing)} twice={len(twice)} split={split} runs={run_status} seconds={seconds:.1f} "
        f"repairs={h.repairs(pg_database)}"
    )
    assert len(tasks) == records * per_record
    assert all(status == "complete" for status in tasks.values())
    assert run_status == {"complete": records}
    assert missing == set()
    assert twice == {}
    assert set(counts) == set(tasks), "the recorder saw a key that is no task's id"
    assert "?" not in split, "a request carried no known worker's signature"
    assert all(split.get(name, 0) > 0 for name in worker_secrets), f"one worker did all the work: {split}"

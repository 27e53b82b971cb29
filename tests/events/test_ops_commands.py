"""Operators' commands: events_health, events_prune, and the lease system check."""

import io
import json
import os
import subprocess
import sys
from datetime import timedelta

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.utils import timezone
from django_q.models import OrmQ, Task

from events import engine, queue
from events.checks import inline_steps_end_within_the_web_timeout, lease_is_long_enough
from events.management.commands import worker
from events.models import Repair, Run, RunTask
from forms_app.models import Record
from tests.factories import RecordFactory, add_node

HEALTH_KEYS = {
    "healthy",
    "problems",
    "queue_ready_jobs",
    "queue_taken_jobs",
    "queue_oldest_ready_age_seconds",
    "stuck_tasks",
    "overdue_tasks",
    "awaiting_past_deadline",
    "awaiting",
    "repairs",
}


def run_command(name, *args):
    """(exit code, stdout, stderr) of a management command, as ``manage.py`` would end with them.

    A failure is a CommandError carrying the exit status; ``manage.py`` writes its message to stderr.
    """
    out, err = io.StringIO(), io.StringIO()
    try:
        call_command(name, *args, stdout=out, stderr=err)
        code = 0
    except CommandError as exc:
        code = exc.returncode
        err.write(f"CommandError: {exc}\n")
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def step(form):
    """A started run of a one-step tree; returns the step's task."""
    node = add_node(form, "set_flag", name="flag", config={"flag": "done"})
    record = RecordFactory(form=form, data={"email": "ann@example.com"})
    run = engine.run_start(record=record, is_submission=True)
    return RunTask.objects.get(run=run, node_id=node.pk)


# events_health ----------------------------------------------------------------------------------


def test_health_on_an_empty_database_is_healthy_and_exits_0(db):
    code, out, _ = run_command("events_health")

    assert code == 0
    assert "healthy: True" in out
    assert "problems: none" in out
    assert "repairs by the sweep: none" in out


def test_health_with_running_work_in_order_is_healthy(step):
    assert step.claim()  # held by a live worker: its lease runs

    code, out, _ = run_command("events_health")

    assert code == 0
    assert "healthy: True" in out


def test_a_stuck_task_makes_health_exit_1_and_is_named(step):
    assert step.claim()
    RunTask.objects.filter(pk=step.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=5))

    code, out, _ = run_command("events_health")

    assert code == 1
    assert "healthy: False" in out
    assert "1 task(s) held by a worker that stopped (lease expired)" in out
    assert "stuck tasks: 1" in out


def test_an_overdue_pending_task_makes_health_exit_1(step):
    RunTask.objects.filter(pk=step.pk).update(due_at=timezone.now() - timedelta(seconds=300))

    code, out, _ = run_command("events_health")

    assert code == 1
    assert "1 task(s) due more than 60 s ago" in out
    assert "overdue tasks: 1" in out


def test_overdue_seconds_sets_when_a_due_task_counts_as_overdue(step):
    RunTask.objects.filter(pk=step.pk).update(due_at=timezone.now() - timedelta(seconds=300))

    code, out, _ = run_command("events_health", "--overdue-seconds", "600")

    assert code == 0
    assert "overdue tasks: 0" in out


def test_an_awaiting_task_past_its_deadline_makes_health_exit_1(step):
    RunTask.objects.filter(pk=step.pk).update(
        status=RunTask.Status.AWAITING, deadline_at=timezone.now() - timedelta(seconds=5)
    )

    code, out, _ = run_command("events_health")

    assert code == 1
    assert "1 awaiting task(s) past their deadline" in out


def test_an_old_ready_queue_job_makes_health_exit_1(settings, db):
    settings.EVENTS_WATCHDOG_SECONDS = 60
    OrmQ.objects.create(key="events", payload="stand-in", lock=timezone.now() - timedelta(seconds=300))

    code, out, _ = run_command("events_health")

    assert code == 1
    assert "the oldest ready job has waited" in out
    assert "queue ready jobs: 1" in out


def test_health_json_parses_and_names_every_problem(step):
    assert step.claim()
    RunTask.objects.filter(pk=step.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=5))
    Repair.record("lease_expired_retried", 3)

    code, out, _ = run_command("events_health", "--json")

    assert code == 1
    report = json.loads(out)
    assert set(report) == HEALTH_KEYS
    assert report["healthy"] is False
    assert report["stuck_tasks"] == 1
    assert "lease expired" in report["problems"]
    assert report["repairs"]["lease_expired_retried"]["count"] == 3
    assert report["repairs"]["lease_expired_retried"]["last_at"]


def test_health_json_on_a_healthy_database(db):
    code, out, _ = run_command("events_health", "--json")

    assert code == 0
    report = json.loads(out)
    assert set(report) == HEALTH_KEYS
    assert report["healthy"] is True
    assert report["repairs"] == {}


def test_health_prints_the_sweeps_repairs(db):
    Repair.record("lease_expired_retried", 2)
    Repair.record("run_finished")

    code, out, _ = run_command("events_health")

    assert code == 0  # repairs are history, not a problem
    assert "  lease_expired_retried: 2 (last " in out
    assert "  run_finished: 1 (last " in out


# The worker's watchdog --------------------------------------------------------------------------


class IdleCluster:
    """Stands in for the worker's QueueCluster: alive, and never doing anything."""

    @staticmethod
    def is_alive():
        return True


def test_worker_exits_with_status_3_when_the_watchdog_finds_the_cluster_stalled(db, settings, monkeypatch):
    monkeypatch.setattr(queue, "_stopping", None)  # the worker sets its stop flag: put it back afterwards
    monkeypatch.setenv("EVENTS_WORKER_ID", "")
    monkeypatch.setattr(worker, "cluster_processes_die_with", lambda owner: None)
    monkeypatch.setattr(worker, "close_old_connections", lambda: None)  # the test's transaction holds the connection
    monkeypatch.setattr(worker.Command, "cluster_start", lambda self: IdleCluster())
    monkeypatch.setattr(worker.Command, "cluster_stop", lambda self, cluster, grace: None)
    monkeypatch.setattr(worker.Command, "stalled", lambda self: True)
    settings.EVENTS_SWEEP_INTERVAL = 0

    code, out, err = run_command("worker", "--exit-on-stall")

    assert code == 3
    assert "the watchdog found the cluster stalled" in err
    assert "worker: stopped" in out  # it stopped as on SIGTERM: what it held is put back first
    assert Repair.objects.get(kind="cluster_restarted").count == 1


# events_prune -----------------------------------------------------------------------------------


@pytest.fixture
def runs(form):
    """Runs of one form: finished 40 days ago, finished yesterday, and running for 40 days."""
    add_node(form, "set_flag", name="flag", config={"flag": "done"})
    now = timezone.now()

    def make(status, finished_days_ago=None, created_days_ago=0):
        record = RecordFactory(form=form, data={"email": "ann@example.com"})
        run = engine.run_start(record=record, is_submission=True)
        Run.objects.filter(pk=run.pk).update(
            status=status,
            created_at=now - timedelta(days=created_days_ago),
            finished_at=None if finished_days_ago is None else now - timedelta(days=finished_days_ago),
        )
        return run

    return {
        "old": make(Run.Status.COMPLETE, finished_days_ago=40, created_days_ago=40),
        "old_failed": make(Run.Status.FAILED, finished_days_ago=35, created_days_ago=35),
        "recent": make(Run.Status.COMPLETE, finished_days_ago=1, created_days_ago=1),
        "running": make(Run.Status.RUNNING, created_days_ago=40),
    }


def left(runs):
    return {name for name, run in runs.items() if Run.objects.filter(pk=run.pk).exists()}


def test_prune_deletes_finished_runs_older_than_days_and_their_tasks_and_keeps_the_rest(runs):
    records = Record.objects.count()
    old_ids = [runs["old"].pk, runs["old_failed"].pk]

    code, out, _ = run_command("events_prune", "--days", "30")

    assert code == 0
    assert left(runs) == {"recent", "running"}
    assert not RunTask.objects.filter(run_id__in=old_ids).exists()
    assert RunTask.objects.filter(run=runs["recent"]).exists()
    assert RunTask.objects.filter(run=runs["running"]).exists()
    assert Record.objects.count() == records
    assert "Deleted 2 finished run(s) older than 30 days" in out


def test_prune_defaults_to_the_retention_setting(settings, runs):
    settings.EVENTS_RETENTION_DAYS = 38

    code, out, _ = run_command("events_prune")

    assert code == 0
    assert left(runs) == {"old_failed", "recent", "running"}
    assert "older than 38 days" in out


def test_prune_dry_run_counts_and_deletes_nothing(runs):
    tasks = RunTask.objects.count()

    code, out, _ = run_command("events_prune", "--days", "30", "--dry-run")

    assert code == 0
    assert "2 finished run(s) older than 30 days would be deleted" in out
    assert left(runs) == set(runs)
    assert RunTask.objects.count() == tasks


def test_prune_refuses_zero_days(runs):
    code, _, err = run_command("events_prune", "--days", "0")

    assert code == 2
    assert "Keep at least one day" in err
    assert left(runs) == set(runs)


def test_prune_refusing_exits_2_from_manage_py(tmp_path):
    """The status a cron job or a timer sees: manage.py's own, in a process of its own."""
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}"}

    result = subprocess.run(
        [sys.executable, "manage.py", "events_prune", "--days", "0"],
        cwd=settings.BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode == 2, result.stderr
    assert "CommandError: Keep at least one day." in result.stderr


def test_prune_deletes_old_queue_results_and_keeps_recent_ones(db):
    now = timezone.now()
    for name, days in (("old", 40), ("recent", 1)):
        Task.objects.create(
            id=f"{name:0<32}",
            name=name,
            func="events.tasks.task_job",
            started=now - timedelta(days=days),
            stopped=now - timedelta(days=days),
            success=True,
        )

    code, out, _ = run_command("events_prune", "--days", "30")

    assert code == 0
    assert list(Task.objects.values_list("name", flat=True)) == ["recent"]
    assert "and 1 queue result(s)" in out


# The lease check --------------------------------------------------------------------------------


def test_check_warns_when_the_lease_is_too_short_for_its_heartbeat(settings, db):
    settings.EVENTS_TASK_LEASE_SECONDS = 6

    code, out, err = run_command("check")

    assert code == 0  # a warning, not an error
    assert "events.W001" in out + err
    assert "EVENTS_TASK_LEASE_SECONDS (6) is shorter than 15 seconds" in out + err


def test_check_is_quiet_with_the_default_lease(settings, db):
    settings.EVENTS_TASK_LEASE_SECONDS = 60

    code, out, err = run_command("check")

    assert code == 0
    assert "events.W001" not in out + err
    assert lease_is_long_enough(None) == []


def test_the_lease_check_returns_one_warning_with_its_id(settings):
    settings.EVENTS_TASK_LEASE_SECONDS = 14

    [warning] = lease_is_long_enough(None)

    assert warning.id == "events.W001"
    assert warning.hint


# The inline step cap against the web timeout -----------------------------------------------------


def test_check_refuses_an_inline_step_cap_above_a_third_of_the_web_timeout(settings, db):
    settings.EVENTS_WEB_TIMEOUT_SECONDS = 30
    settings.EVENTS_INLINE_STEP_MAX_SECONDS = 11

    code, out, err = run_command("check")

    assert code == 1
    assert "events.E001" in out + err
    assert (
        "EVENTS_INLINE_STEP_MAX_SECONDS (11) must be above 0 and at most a third of EVENTS_WEB_TIMEOUT_SECONDS (30)"
    ) in err


def test_the_shipped_inline_step_cap_fits_the_web_timeout_gunicorn_is_given():
    assert inline_steps_end_within_the_web_timeout(None) == []
    # gunicorn's --timeout comes from the same variable, with the same default, wherever it is started.
    procfile = (settings.BASE_DIR / "Procfile").read_text()
    unit = (settings.BASE_DIR / "deploy" / "events-web.service").read_text()
    assert f"--timeout ${{EVENTS_WEB_TIMEOUT_SECONDS:-{settings.EVENTS_WEB_TIMEOUT_SECONDS}}}" in procfile
    assert f"Environment=EVENTS_WEB_TIMEOUT_SECONDS={settings.EVENTS_WEB_TIMEOUT_SECONDS}\n" in unit
    assert "--timeout ${EVENTS_WEB_TIMEOUT_SECONDS}" in unit

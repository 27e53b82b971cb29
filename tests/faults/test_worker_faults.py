"""Fault tests: break real processes by PID and count what was lost or done twice.

Each test starts gunicorn and ``manage.py worker`` on 127.0.0.1 against its own
SQLite file, injects the fault with SIGKILL, and prints one line:

    FAULTS <name>: submitted=.. completed=.. lost=.. twice=.. reexecuted_after_kill=..

``twice`` counts side effects seen more often than their task was attempted
(parallel or repeated execution: never allowed); ``reexecuted_after_kill`` counts
those repeated because an attempt was killed (allowed: at-least-once per attempt).
Short by default; ``FAULTS_SCALE=long`` multiplies the load by ten (``make soak``).
"""

import os
import signal
import time

import pytest

from .harness import SCALE, form_document, http_step, parse_dt, pid_with_local_port, side_effects, wait_until

pytestmark = [pytest.mark.faults, pytest.mark.xdist_group("faults")]

PAUSE_SECONDS = 3
# Lease 5 s + sweep every 1 s + dispatch + a fresh walk: a killed task is running again well within this.
RECOVERY_SECONDS = 60
# Watchdog 10 s + up to 30 s waiting for the stalled cluster to stop (worker.CLUSTER_STOP_SECONDS) + a restart.
STALL_LIMIT_SECONDS = 60


def report(name, **counts):
    print(f"\nFAULTS {name}: " + " ".join(f"{key}={value}" for key, value in counts.items()), flush=True)


def outcome(stack, recorder, submitted):
    runs = stack.run_counts()
    completed = runs.get("complete", 0)
    effects = side_effects(stack, recorder)
    return {"submitted": submitted, "completed": completed, "lost": submitted - completed,
            "not_terminal": runs.get("running", 0), "failed": runs.get("failed", 0), **effects}


def test_kill9_of_the_queue_worker_in_the_middle_of_a_task(stack, recorder):
    """SIGKILL the django-q2 worker process that runs a Background step while its pause runs.

    The process is found by its socket: the first step's request to the recorder is
    held for a moment while the test looks up which process holds the connection.
    The cluster replaces the dead process; the sweep hands the task back after its
    lease; the run completes; the step that had finished before the kill is not repeated.
    """
    kills = 1 if SCALE == 1 else 5
    stack.import_form(form_document("kill-mid-task", [
        {"type": "background", "name": "bg", "children": [
            http_step("begin", recorder.url("/begin")),
            {"type": "pause", "name": "think", "config": {"seconds": PAUSE_SECONDS}},
            http_step("end", recorder.url("/end")),
        ]},
    ]))
    stack.start_web()
    worker = stack.start_worker()
    recorder.hold_paths.add("/begin")
    recovered_in = []
    for round_ in range(kills):
        recorder.held.clear()
        recorder.release_event.clear()
        assert stack.submit("kill-mid-task", 1) == 1
        wait_until(recorder.held.is_set, timeout=30, message="the first step's request")
        sentinel, queue_workers, _ = stack.cluster_pids(worker)
        victim = wait_until(lambda: pid_with_local_port(recorder.held_port, queue_workers), timeout=5,
                            interval=0.05, message="the process holding the request")
        recorder.release()
        time.sleep(1)  # now inside the pause
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        expected = round_ + 1
        wait_until(lambda: stack.run_counts().get("complete", 0) == expected, timeout=RECOVERY_SECONDS,
                   message=f"run {expected} to complete after the kill")
        recovered_in.append(time.monotonic() - killed_at)
        assert worker.running(), worker.output()
    counts = outcome(stack, recorder, kills)
    think = [task for task in stack.tasks("pause")]
    report("kill9-mid-task", **counts, kills=kills,
           recovered_in_s=f"{max(recovered_in):.1f}", pause_attempts=max(t["attempt"] for t in think),
           repairs=stack.repairs())
    assert counts["lost"] == 0 and counts["not_terminal"] == 0
    assert counts["twice"] == 0 and counts["missing"] == 0
    assert all(t["attempt"] == 2 for t in think), think  # killed once, re-run once
    # The step finished before the kill is not repeated; the one after it ran once.
    hits = recorder.counts()
    for task in stack.tasks("http_request"):
        assert hits.get(task["id"]) == 1, (task, hits.get(task["id"]))
    assert stack.repairs().get("lease_expired_retried", 0) >= kills


def test_kill9_of_the_whole_worker_while_submissions_arrive(stack, recorder):
    """SIGKILL the worker's process group while N submissions arrive; start it again; nothing is lost."""
    count = 100 * SCALE if SCALE == 1 else 500
    stack.import_form(form_document("kill-under-load", [
        {"type": "background", "name": "bg", "children": [
            {"type": "pause", "name": "think", "config": {"seconds": 0.2}},
            http_step("hit", recorder.url("/hit")),
        ]},
    ]))
    stack.start_web()
    worker = stack.start_worker()
    from concurrent.futures import ThreadPoolExecutor

    started = time.monotonic()
    with ThreadPoolExecutor(1) as pool:
        submitting = pool.submit(stack.submit, "kill-under-load", count, concurrency=8)
        # Kill when some work is under way (or after a bounded wait).
        try:
            wait_until(lambda: recorder.total() >= max(3, count // 10), timeout=30, interval=0.05,
                       message="some side effects")
        except AssertionError:
            pass
        worker.kill_group()
        killed_at = time.monotonic()
        seen_at_kill = recorder.total()
        time.sleep(2)
        restarted = stack.start_worker()
        submitted = submitting.result(timeout=300)
    wait_until(lambda: stack.run_counts().get("complete", 0) + stack.run_counts().get("failed", 0) >= submitted,
               timeout=120 * (1 if SCALE == 1 else 5), interval=0.5, message="every run to finish")
    counts = outcome(stack, recorder, submitted)
    report("kill9-whole-worker-under-load", **counts, effects_at_kill=seen_at_kill,
           recovered_in_s=f"{time.monotonic() - killed_at:.1f}", total_s=f"{time.monotonic() - started:.1f}",
           repairs=stack.repairs())
    assert restarted.running()
    assert submitted == count
    assert counts["lost"] == 0 and counts["not_terminal"] == 0 and counts["failed"] == 0
    assert counts["missing"] == 0, "a completed step's side effect never happened"
    assert counts["twice"] == 0


def test_worker_down_while_delays_fall_due(stack, recorder):
    """Delays fall due while no worker runs; started afterwards, each fires exactly once and none early."""
    records = 20 * SCALE if SCALE == 1 else 200
    delays = [2, 3, 4]
    stack.import_form(form_document("delays", [
        {"type": "delay", "name": f"later{seconds}", "config": {"after_seconds": seconds},
         "children": [http_step(f"fire{seconds}", recorder.url(f"/fire{seconds}"))]}
        for seconds in delays
    ]))
    stack.start_web()
    submitted = stack.submit("delays", records, concurrency=8)
    assert submitted == records
    last_due = max(parse_dt(t["due_at"]) for t in stack.tasks("delay"))
    now = parse_dt(stack.query("SELECT strftime('%Y-%m-%d %H:%M:%f', 'now') AS now")[0]["now"])
    time.sleep(max(0.0, (last_due - now).total_seconds()) + 2)
    assert recorder.total() == 0, "a delay fired while no worker ran"
    started = time.monotonic()
    stack.start_worker()
    wait_until(lambda: stack.run_counts().get("complete", 0) >= records, timeout=90 * (1 if SCALE == 1 else 4),
               interval=0.5, message="every run to complete")
    time.sleep(2 * float(stack.env["EVENTS_SWEEP_INTERVAL"]) + 1)  # give a duplicate the chance to show
    hits = recorder.counts()
    containers = {t["id"]: t for t in stack.tasks("delay")}
    early = [t for t in containers.values() if parse_dt(t["started_at"]) < parse_dt(t["due_at"])]
    steps = stack.tasks("http_request")
    early += [t for t in steps if parse_dt(t["started_at"]) < parse_dt(containers[t["parent_id"]]["due_at"])]
    not_once = [t["id"] for t in steps if hits.get(t["id"], 0) != 1]
    counts = outcome(stack, recorder, records)
    report("delays-while-down", **counts, delays=len(steps), fired_not_once=len(not_once), early=len(early),
           drained_in_s=f"{time.monotonic() - started:.1f}", repairs=stack.repairs())
    assert len(steps) == records * len(delays)
    assert counts["lost"] == 0 and counts["not_terminal"] == 0
    assert not not_once, f"{len(not_once)} delays did not fire exactly once"
    assert not early, early[:3]


def test_the_stall_killed_idle_queue_worker(stack, recorder):
    """SIGKILL an idle django-q2 worker process (it waits on the internal queue), then submit work.

    The cluster replaces the process, or (if the cluster stalls, DESIGN.md 12)
    the watchdog restarts it after EVENTS_WATCHDOG_SECONDS: processing comes back
    within STALL_LIMIT_SECONDS. events_health is unhealthy while it is stalled
    (when the test catches that moment) and healthy afterwards.
    """
    stall_limit = STALL_LIMIT_SECONDS
    jobs = 10 * SCALE
    stack.import_form(form_document("stall", [
        {"type": "background", "name": "bg", "children": [http_step("hit", recorder.url("/hit"))]},
    ]))
    stack.start_web()
    worker = stack.start_worker()
    time.sleep(2)  # let the workers settle on the internal queue
    code_before, _ = stack.health()
    sentinel, queue_workers, _ = stack.cluster_pids(worker)
    os.kill(queue_workers[0], signal.SIGKILL)
    killed_at = time.monotonic()
    submitted = stack.submit("stall", jobs, concurrency=4)
    health_codes = []

    def done():
        if len(health_codes) < 40 and stack.run_counts().get("complete", 0) < submitted:
            health_codes.append(stack.health()[0])
        return stack.run_counts().get("complete", 0) >= submitted

    wait_until(done, timeout=stall_limit + 30, interval=0.5, message="processing to come back")
    took = time.monotonic() - killed_at
    time.sleep(1)
    code_after, report_after = stack.health()
    counts = outcome(stack, recorder, submitted)
    log = worker.output()
    report("stall-killed-idle-worker", **counts, recovered_in_s=f"{took:.1f}",
           watchdog_restarts=log.count("restarted by the watchdog"),
           health_before=code_before, health_while=sorted(set(health_codes)), health_after=code_after,
           repairs=stack.repairs())
    assert worker.running()
    assert took <= stall_limit, f"processing came back only after {took:.0f} s"
    assert counts["lost"] == 0 and counts["twice"] == 0 and counts["missing"] == 0
    assert code_before == 0
    assert code_after == 0, report_after

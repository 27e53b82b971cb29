"""Fault tests on SQLite: break the worker's processes by PID and measure what it takes to recover.

Each test starts gunicorn and ``manage.py worker`` on 127.0.0.1 against its own SQLite
file, with the shipped defaults unless its FAULTS line says otherwise, injects its fault
and prints one line:

    FAULTS <name>: settings=defaults submitted=.. completed=.. lost=.. executions=..
        parallel_overlaps=.. sequential_reruns=.. ... recovered_in=..s

Side effects are counted at the recorder per Idempotency-Key with their start and end
times (tests/faults/recorder.py): ``parallel_overlaps`` (two executions of one step at
the same time) must be 0 everywhere; ``sequential_reruns`` (a step cut off by a kill, run
again afterwards) are allowed only where a step was killed. Short by default;
``FAULTS_SCALE=long`` (``make soak``) runs bigger loads.
"""

import threading
import time

import pytest

from . import harness as h

pytestmark = [pytest.mark.faults, pytest.mark.xdist_group("faults"), h.TIMEOUT]


def outcome(stack, recorder, acknowledged):
    """Counts every test reports: runs by state, and the recorder's view of the side effects."""
    runs = stack.run_counts()
    analysis = recorder.analyse(stack.step_attempts())
    fields = {
        "acknowledged": acknowledged,
        "completed": runs.get("complete", 0),
        "lost": acknowledged - sum(runs.get(status, 0) for status in h.TERMINAL),
        "failed": runs.get("failed", 0),
        "not_terminal": runs.get("running", 0),
    }
    return fields, analysis


def assert_side_effects(analysis, *, reruns_allowed):
    assert analysis.parallel_overlaps == 0, f"steps ran twice at the same time: {analysis.overlapping_keys[:5]}"
    assert analysis.uncounted == 0, "a step ran more often than its attempts were counted"
    assert analysis.missing == 0, "a completed step's side effect never happened"
    assert analysis.sequential_reruns <= reruns_allowed, analysis


# --- SIGKILL of the queue worker process running a step -------------------------------------


def test_kill9_of_the_queue_worker_in_the_middle_of_a_step(make_stack, recorder):
    """SIGKILL the django-q2 worker process while its step runs; the step runs again after its lease.

    The process is found by its socket: the first step's request is held while the test
    looks up which process holds the connection. The cluster replaces the dead process;
    the sweep puts the step back once its lease (60 s, no heartbeat renews it any more)
    has run out; the run completes; the step finished before the kill is not repeated.
    """
    shipped = h.shipped_defaults()
    lease, sweep = shipped["EVENTS_TASK_LEASE_SECONDS"], shipped["EVENTS_SWEEP_INTERVAL"]
    stack = make_stack("sqlite")
    kills = h.scale(1, 3)
    stack.import_form(
        h.form_document(
            "kill-mid-step",
            [
                h.background(
                    "bg",
                    [
                        h.http_step("begin", recorder.url("/begin", hold=1)),
                        {"type": "pause", "name": "think", "config": {"seconds": 3}},
                        h.http_step("end", recorder.url("/end")),
                    ],
                )
            ],
        )
    )
    stack.start_web()
    worker = stack.start_worker()
    rerun_after, recovered_in = [], []
    for round_ in range(kills):
        recorder.held.clear()
        recorder.release_event.clear()
        assert len(stack.submit("kill-mid-step", 1, threads=1)) == 1
        h.wait_until(recorder.held.is_set, timeout=60, message="the first step's request")
        _, queue_workers, _ = stack.cluster_pids(worker)
        victim = h.wait_until(
            lambda workers=queue_workers: h.pid_with_local_port(recorder.held_port, workers),
            timeout=10,
            interval=0.05,
            message="the process holding the request",
        )
        recorder.release()
        h.wait_until(
            lambda: any(t["status"] == "active" for t in stack.tasks("pause")),
            timeout=10,
            interval=0.05,
            message="the pause to start",
        )
        time.sleep(1)  # inside the pause
        killed_wall, killed = time.time(), time.monotonic()
        h.kill(victim)
        expected = round_ + 1
        h.wait_until(
            lambda n=expected: stack.run_counts().get("complete", 0) == n,
            timeout=lease + 4 * sweep + 60,
            interval=0.5,
            message=f"run {expected} to complete after the kill",
        )
        recovered_in.append(time.monotonic() - killed)
        think = [t for t in stack.tasks("pause") if t["status"] == "complete"]
        rerun_after.append(max(t["started_at"] for t in think).timestamp() - killed_wall)
        assert worker.running(), worker.output()
    fields, analysis = outcome(stack, recorder, kills)
    think = stack.tasks("pause")
    h.report(
        "kill9-mid-step",
        settings=stack.settings_label,
        kills=kills,
        **fields,
        **analysis.fields(),
        step_rerun_after=h.seconds(max(rerun_after)),
        recovered_in=h.seconds(max(recovered_in)),
        lease=f"{lease}s",
        repairs=stack.repairs(),
    )
    assert fields["lost"] == 0 and fields["not_terminal"] == 0 and fields["failed"] == 0
    assert_side_effects(analysis, reruns_allowed=0)  # the killed step is a pause: no side effect to repeat
    assert all(t["attempt"] == 2 for t in think), think  # killed once, run again once
    assert stack.repairs().get("lease_expired_retried", 0) >= kills
    # Not before its lease ran out (that would risk a parallel run), and not much later.
    assert min(rerun_after) >= lease - 2, rerun_after
    assert max(rerun_after) <= lease + 2 * sweep + 15, f"the killed step ran again only after {max(rerun_after):.0f} s"


# --- SIGKILL of the worker's main process ---------------------------------------------------


def test_sigkill_of_the_worker_main_process_takes_its_cluster_down(make_stack, recorder):
    """SIGKILL ``manage.py worker`` itself (not its group) while work runs.

    Every process of its cluster (sentinel, workers, monitor, pusher: found by walking
    /proc before the kill) is gone within seconds (parent-death signal), so none keeps
    pulling jobs without the dispatcher, the sweep and the watchdog. A restarted worker
    finishes every acknowledged run within the default lease plus a margin.
    """
    shipped = h.shipped_defaults()
    lease, sweep = shipped["EVENTS_TASK_LEASE_SECONDS"], shipped["EVENTS_SWEEP_INTERVAL"]
    count = h.scale(60, 400)
    stack = make_stack("sqlite")
    stack.import_form(
        h.form_document(
            "kill-main",
            [
                h.background(
                    "bg",
                    [
                        h.http_step("hit", recorder.url("/hit", sleep=0.5)),
                    ],
                )
            ],
        )
    )
    stack.start_web()
    worker = stack.start_worker()
    results = []
    submitting = threading.Thread(
        target=stack.submit_load,
        args=("kill-main", count),
        kwargs={"threads": 3, "results": results, "pace": 0.1},
        daemon=True,
    )
    submitting.start()
    h.wait_until(lambda: recorder.total() >= 5, timeout=60, interval=0.05, message="some side effects")
    cluster = h.descendants(worker.pid)
    assert len(cluster) >= 5, f"expected the sentinel, 2 workers, a monitor and a pusher: {cluster}"
    killed = time.monotonic()
    h.kill(worker.pid)
    worker.process.wait(timeout=10)

    def all_gone():
        return not any(h.alive(process) for process in cluster)

    try:
        h.wait_until(all_gone, timeout=10, interval=0.05, message="the cluster's processes to exit")
    except AssertionError:
        survivors = [process for process in cluster if h.alive(process)]
        for pid, _ in survivors:  # never leave them running
            h.kill(pid)
        raise AssertionError(
            f"{len(survivors)} of {len(cluster)} cluster processes outlived the killed worker by "
            "10 s: a headless cluster"
        ) from None
    cluster_gone_in = time.monotonic() - killed
    time.sleep(3)  # would a headless process still run steps?
    started_headless = len(recorder.started_between(killed + 1, time.monotonic()))
    restarted = stack.start_worker("worker-restarted")
    submitting.join(300)
    acknowledged = [token for _, token, _ in results if token]

    def finished():
        runs = stack.runs_by_token()
        return all(token in runs and runs[token]["status"] in h.TERMINAL for token in acknowledged)

    h.wait_until(
        finished,
        timeout=lease + shipped["EVENTS_REQUEUE_AFTER_SECONDS"] + 120,
        interval=0.5,
        message="every acknowledged run to finish after the restart",
    )
    recovered_in = time.monotonic() - restarted.ready_at
    fields, analysis = outcome(stack, recorder, len(acknowledged))
    h.report(
        "sigkill-worker-main",
        settings=stack.settings_label,
        submitted=len(results),
        **fields,
        **analysis.fields(),
        cluster_processes=len(cluster),
        cluster_gone_in=h.seconds(cluster_gone_in),
        started_headless=started_headless,
        recovered_in=h.seconds(recovered_in),
        lease=f"{lease}s",
        repairs=stack.repairs(),
    )
    assert len(results) == count
    assert fields["lost"] == 0 and fields["not_terminal"] == 0 and fields["failed"] == 0
    assert started_headless == 0, "steps started after the worker was killed and before it was restarted"
    assert_side_effects(analysis, reruns_allowed=4)  # at most the steps running at the kill (2 workers, 2 slack)
    assert cluster_gone_in <= 5, f"the cluster took {cluster_gone_in:.1f} s to exit"
    assert recovered_in <= lease + 2 * sweep + 20, (
        f"the restarted worker finished the killed worker's runs only {recovered_in:.0f} s after it started "
        f"(lease {lease} s)"
    )


# --- Delays while no worker runs ------------------------------------------------------------


def test_worker_down_while_delays_fall_due(make_stack, recorder):
    """Delays fall due while no worker runs; started afterwards, each fires exactly once and none early."""
    records = h.scale(20, 200)
    delays = [2, 3, 4]
    stack = make_stack("sqlite")
    stack.import_form(
        h.form_document(
            "delays",
            [
                {
                    "type": "delay",
                    "name": f"later{seconds}",
                    "config": {"after_seconds": seconds},
                    "children": [h.http_step(f"fire{seconds}", recorder.url(f"/fire{seconds}"))],
                }
                for seconds in delays
            ],
        )
    )
    stack.start_web()
    acknowledged = stack.submit("delays", records)
    assert len(acknowledged) == records
    last_due = max(t["due_at"] for t in stack.tasks("delay"))
    time.sleep(max(0.0, last_due.timestamp() - time.time()) + 2)
    assert recorder.total() == 0, "a delay fired while no worker ran"
    worker = stack.start_worker()
    h.wait_until(
        lambda: stack.run_counts().get("complete", 0) >= records,
        timeout=h.scale(120, 400),
        interval=0.5,
        message="every run to complete",
    )
    drained_in = time.monotonic() - worker.ready_at
    time.sleep(2 * h.shipped_defaults()["EVENTS_SWEEP_INTERVAL"] + 1)  # a duplicate would show now
    containers = {t["id"]: t for t in stack.tasks("delay")}
    steps = stack.tasks("http_request")
    early = [t for t in containers.values() if t["started_at"] < t["due_at"]]
    early += [t for t in steps if t["started_at"] < containers[t["parent_id"]]["due_at"]]
    fields, analysis = outcome(stack, recorder, records)
    h.report(
        "delays-while-down",
        settings=stack.settings_label,
        **fields,
        **analysis.fields(),
        delays=len(steps),
        early=len(early),
        drained_in=h.seconds(drained_in),
        repairs=stack.repairs(),
    )
    assert len(steps) == records * len(delays)
    assert fields["lost"] == 0 and fields["not_terminal"] == 0
    assert analysis.executions == len(steps), "a delay did not fire exactly once"
    assert_side_effects(analysis, reruns_allowed=0)
    assert not early, early[:3]


# --- A stalled cluster ------------------------------------------------------------------------


def test_the_stall_killed_idle_queue_worker(make_stack, recorder):
    """SIGKILL an idle django-q2 worker process (it waits on the internal queue), then submit work.

    The cluster replaces the process, or (if the cluster stalls, DESIGN.md 12) the
    watchdog restarts it: processing comes back within the watchdog's time plus a
    margin. The watchdog is shortened to 10 s here (its default is 60 s); nothing else is.
    """
    watchdog = 10
    jobs = h.scale(10, 100)
    stack = make_stack("sqlite", {"EVENTS_WATCHDOG_SECONDS": str(watchdog)})
    stack.import_form(h.form_document("stall", [h.background("bg", [h.http_step("hit", recorder.url("/hit"))])]))
    stack.start_web()
    worker = stack.start_worker()
    time.sleep(2)  # let the workers settle on the internal queue
    code_before, _ = stack.health()
    _, queue_workers, _ = stack.cluster_pids(worker)
    h.kill(queue_workers[0])
    killed = time.monotonic()
    acknowledged = stack.submit("stall", jobs)
    health_codes = []

    def done():
        complete = stack.run_counts().get("complete", 0)
        if len(health_codes) < 20 and complete < len(acknowledged):
            health_codes.append(stack.health()[0])
        return complete >= len(acknowledged)

    # Wait long enough to measure a slow recovery (past the re-queue time); assert the target below.
    h.wait_until(
        done,
        timeout=watchdog + h.shipped_defaults()["EVENTS_REQUEUE_AFTER_SECONDS"] + 60,
        interval=0.5,
        message="processing to come back",
    )
    took = time.monotonic() - killed
    time.sleep(1)
    code_after, report_after = stack.health()
    fields, analysis = outcome(stack, recorder, len(acknowledged))
    h.report(
        "stall-killed-idle-worker",
        settings=stack.settings_label,
        **fields,
        **analysis.fields(),
        recovered_in=h.seconds(took),
        watchdog_restarts=worker.output().count("restarted by the watchdog"),
        health_before=code_before,
        health_while=sorted(set(health_codes)),
        health_after=code_after,
        repairs=stack.repairs(),
    )
    assert worker.running()
    assert took <= watchdog + 60, f"processing came back only after {took:.0f} s"
    assert fields["lost"] == 0
    assert_side_effects(analysis, reruns_allowed=0)
    assert code_before == 0
    assert code_after == 0, report_after


# --- A step longer than its lease -----------------------------------------------------------


def test_a_step_longer_than_the_lease_runs_once(make_stack, recorder):
    """A 15-second step under a 6-second lease: the heartbeat renews the lease, so it is not run again in parallel.

    Only the lease is shortened (EVENTS_TASK_LEASE_SECONDS=6); the sweep runs at its
    default pace and would put the step back if its lease ran out.
    """
    lease, step_seconds = 6, 15
    stack = make_stack("sqlite", {"EVENTS_TASK_LEASE_SECONDS": str(lease)})
    stack.import_form(
        h.form_document(
            "long-step",
            [
                h.background(
                    "bg",
                    [
                        h.http_step(
                            "slow", recorder.url("/slow", sleep=step_seconds), timeout_seconds=step_seconds + 30
                        ),
                        h.http_step("after", recorder.url("/after")),
                    ],
                )
            ],
        )
    )
    stack.start_web()
    stack.start_worker()
    records = h.scale(2, 6)
    acknowledged = stack.submit("long-step", records, threads=records)
    assert len(acknowledged) == records
    started = time.monotonic()
    h.wait_until(
        lambda: stack.run_counts().get("complete", 0) + stack.run_counts().get("failed", 0) >= records,
        timeout=step_seconds + 4 * lease + 60,
        interval=0.5,
        message="the runs to finish",
    )
    took = time.monotonic() - started
    time.sleep(2 * h.shipped_defaults()["EVENTS_SWEEP_INTERVAL"])  # a late parallel run would start now
    fields, analysis = outcome(stack, recorder, records)
    slow = [run for runs in recorder.snapshot().values() for run in runs if run.path == "/slow"]
    slow_steps = [t for t in stack.tasks("http_request") if t["name"] == "slow"]
    h.report(
        "step-longer-than-lease",
        settings=stack.settings_label,
        step=f"{step_seconds}s",
        **fields,
        **analysis.fields(),
        slow_executions=len(slow),
        slow_attempts=sorted(t["attempt"] for t in slow_steps),
        took=h.seconds(took),
        repairs=stack.repairs(),
    )
    assert fields["completed"] == records, fields
    assert len(slow) == records, f"the long step ran {len(slow)} times for {records} runs"
    assert all(t["attempt"] == 1 for t in slow_steps), slow_steps
    assert_side_effects(analysis, reruns_allowed=0)
    assert stack.repairs().get("lease_expired_retried", 0) == 0


# --- Callback deadlines -------------------------------------------------------------------------


def test_a_callback_deadline_fails_the_task_within_a_second(make_stack, recorder):
    """A waiting step with a 3-second deadline and no callback: how late is it failed, with the shipped dispatch?"""
    deadline = 3
    records = h.scale(5, 30)
    stack = make_stack("sqlite")
    stack.import_form(
        h.form_document(
            "deadline",
            [
                h.http_step("wait", recorder.url("/wait"), wait_for_callback=True, callback_timeout_seconds=deadline),
            ],
        )
    )
    stack.start_web()
    stack.start_worker()
    acknowledged = stack.submit("deadline", records, threads=1, make_data=None)
    assert len(acknowledged) == records
    h.wait_until(
        lambda: all(t["status"] == "failed" for t in stack.tasks("http_request")),
        timeout=deadline + 60,
        interval=0.2,
        message="every waiting step to time out",
    )
    waits = stack.tasks("http_request")
    late = sorted((t["finished_at"] - t["deadline_at"]).total_seconds() for t in waits)
    h.report(
        "callback-deadline",
        settings=stack.settings_label,
        tasks=len(waits),
        deadline=f"{deadline}s",
        late_min=f"{late[0]:.2f}s",
        late_median=f"{late[len(late) // 2]:.2f}s",
        late_max=f"{late[-1]:.2f}s",
        repairs=stack.repairs(),
    )
    assert all(value >= 0 for value in late), "a task was failed before its deadline"
    assert late[-1] < 1.0, f"a deadline fired {late[-1]:.2f} s late"

"""scripts/run.sh (make run): Ctrl-C stops both processes quietly; a process that ends by itself is named.

The web server and the worker are stand-ins here (PY is a small Python script): the worker stops on
SIGINT or SIGTERM as ``manage.py worker`` does, or ends by itself with FAKE_WORKER_EXIT; the web
server sleeps. Each case runs the real script in a session of its own and signals its process group,
as a terminal's Ctrl-C does.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings

RUN_SH = Path(settings.BASE_DIR) / "scripts" / "run.sh"
FAKE_PY = """#!{python}
import os, signal, sys, time
command = sys.argv[2]
if command == "worker":
    stopping = []
    signal.signal(signal.SIGINT, lambda *args: stopping.append(1))
    signal.signal(signal.SIGTERM, lambda *args: stopping.append(1))
    started = time.monotonic()
    own_exit = os.environ.get("FAKE_WORKER_EXIT")
    print("fake worker: started", flush=True)
    while not stopping:
        if own_exit and time.monotonic() - started > 3:
            print("fake worker: giving up", flush=True)
            sys.exit(int(own_exit))
        time.sleep(0.05)
    print("fake worker: stopped", flush=True)
    sys.exit(0)
time.sleep(600)  # runserver: until SIGTERM
"""


@pytest.fixture
def fake_python(tmp_path):
    path = tmp_path / "python"
    path.write_text(FAKE_PY.format(python=sys.executable))
    path.chmod(0o755)
    return path


def run_script(fake_python, *, interrupt_after=None, sigint_ignored=False, **env):
    """Run scripts/run.sh; send SIGINT to its process group after ``interrupt_after`` seconds. (output, status)."""

    def child_signals():
        signal.signal(signal.SIGINT, signal.SIG_IGN if sigint_ignored else signal.SIG_DFL)

    process = subprocess.Popen(
        ["bash", str(RUN_SH)],
        cwd=settings.BASE_DIR,
        env={**os.environ, "PY": str(fake_python), "HOST": "127.0.0.1", "PORT": "8101", **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        preexec_fn=child_signals,
    )
    try:
        if interrupt_after is not None:
            time.sleep(interrupt_after)
            os.killpg(process.pid, signal.SIGINT)
        output, _ = process.communicate(timeout=30)
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()
    return output, process.returncode


def test_ctrl_c_stops_both_processes_without_saying_one_stopped_on_its_own(fake_python):
    output, status = run_script(fake_python, interrupt_after=3)

    assert "http://127.0.0.1:8101/f/booking/" in output
    assert "Stopping the web server" in output
    assert "on its own" not in output
    assert status == 0


def test_ctrl_c_when_the_shell_cannot_take_sigint_still_is_not_a_process_stopping_on_its_own(fake_python):
    """Started with SIGINT ignored (as a background job is), bash never sees Ctrl-C; the worker does."""
    output, status = run_script(fake_python, interrupt_after=3, sigint_ignored=True)

    assert "fake worker: stopped" in output
    assert "The worker stopped when asked to" in output
    assert "on its own" not in output
    assert status == 0


def test_a_worker_that_ends_by_itself_is_named_with_its_status_and_the_web_server_is_stopped(fake_python):
    output, status = run_script(fake_python, FAKE_WORKER_EXIT="3")

    assert "The worker stopped on its own (exit status 3); stopping the other." in output
    assert "Stopping the web server" in output
    assert status == 1

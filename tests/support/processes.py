"""A subprocess started in its own session, its output in a log file, stopped by its process group.

Every process started here gets its own session (``start_new_session``), so that it
and its children (django-q2's sentinel, pusher, workers, monitor) are stopped by
that one process id's group, never by name.
"""

import os
import signal
import socket
import subprocess
import time

import pytest

STOP_SECONDS = 15
START_SECONDS = 30


class ManagedProcess:
    """``args`` run in ``cwd`` with ``env``; stdin closed, stdout and stderr into ``log_path``.

    ``append``: add to an existing log instead of starting it afresh.
    """

    def __init__(
        self, name, args, *, cwd, env, log_path, append=False, start_seconds=START_SECONDS, stop_seconds=STOP_SECONDS
    ):
        self.name = name
        self.log_path = log_path
        self.start_seconds = start_seconds
        self.stop_seconds = stop_seconds
        with open(log_path, "ab" if append else "wb") as log:
            self.process = subprocess.Popen(
                args,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def pid(self):
        return self.process.pid

    def output(self):
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def is_running(self):
        return self.process.poll() is None

    def wait_for_line(self, text, timeout=None):
        """Wait until ``text`` is in the output; fail the test if the process exits first or on timeout."""
        timeout = self.start_seconds if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while text not in self.output():
            if not self.is_running():
                pytest.fail(f"{self.name} exited with {self.process.returncode} before {text!r}:\n{self.output()}")
            if time.monotonic() >= deadline:
                pytest.fail(f"{self.name}: no {text!r} after {timeout} s:\n{self.output()}")
            time.sleep(0.1)

    def terminate(self):
        """SIGTERM if still running, and wait up to ``stop_seconds`` for it to exit."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=self.stop_seconds)
            except subprocess.TimeoutExpired:
                pass

    def _killpg(self):
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def kill_group(self):
        """SIGKILL the whole process group (the process and every child); wait up to ``stop_seconds``, never raise."""
        self._killpg()
        try:
            self.process.wait(timeout=self.stop_seconds)
        except subprocess.TimeoutExpired:
            pass

    def stop(self):
        """SIGTERM, then SIGKILL of its process group (only the group started here).

        Raises ``subprocess.TimeoutExpired`` if the process outlives the SIGKILL by ``stop_seconds``.
        """
        self.terminate()
        self._killpg()
        if self.process.poll() is None:
            self.process.wait(timeout=self.stop_seconds)


def free_port():
    """A TCP port free on 127.0.0.1 just now (for a process that binds it itself)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(condition, *, timeout, interval=0.2, message="condition", fail=pytest.fail):
    """Poll ``condition`` until it returns something truthy, and return that; after ``timeout`` seconds,
    call ``fail`` with the message (``pytest.fail``; pass e.g. a function raising AssertionError to catch it)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            fail(f"Timed out after {timeout} s waiting for {message}")
        time.sleep(interval)

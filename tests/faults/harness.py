"""Real processes on 127.0.0.1 for the fault tests: a database file, a web server, workers, a recorder.

Everything here talks to the product only through its processes (``manage.py``,
gunicorn, HTTP) and reads the SQLite file directly with ``sqlite3``: the fault
tests never share pytest-django's test database.
"""

import json
import os
import re
import sqlite3
import subprocess
import sys
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import httpx

from tests.support import processes
from tests.support.processes import ManagedProcess, free_port
from tests.support.servers import LocalServer, QuietHandler

BASE_DIR = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
SCALE = 10 if os.environ.get("FAULTS_SCALE", "").lower() == "long" else 1
START_SECONDS = 40
STOP_SECONDS = 15

SHORT_SETTINGS = {
    "EVENTS_TASK_LEASE_SECONDS": "5",
    "EVENTS_JOB_TIMEOUT": "20",
    "EVENTS_SWEEP_INTERVAL": "1",
    "EVENTS_REQUEUE_AFTER_SECONDS": "5",
    "EVENTS_WATCHDOG_SECONDS": "10",
    "EVENTS_HTTP_ALLOWED_HOSTS": "127.0.0.1",
    "DJANGO_DEBUG": "1",
}


def _raise_assertion(message):
    raise AssertionError(message)


def wait_until(condition, *, timeout, interval=0.2, message="condition"):
    """Poll ``condition`` until truthy; raise AssertionError after ``timeout`` seconds (callers catch it)."""
    return processes.wait_until(condition, timeout=timeout, interval=interval, message=message, fail=_raise_assertion)


def parse_dt(value):
    if value is None:
        return None
    moment = datetime.fromisoformat(value)
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


# --- the recorder: the side effect every http_request step has --------------------------------


class Recorder:
    """A threading HTTP server on 127.0.0.1 counting requests per Idempotency-Key.

    ``hold``: a set of paths whose answer waits (up to ``hold_seconds``) until
    ``release()``: while it waits, the sending process can be found by its socket.
    """

    def __init__(self, hold_seconds=5.0):
        self.hits = defaultdict(list)  # key -> [(path, received_monotonic, client_port)]
        self.lock = threading.Lock()
        self.held = threading.Event()  # set while a held request waits
        self.release_event = threading.Event()
        self.held_port = None
        self.hold_paths = set()
        self.hold_seconds = hold_seconds
        recorder = self

        class Handler(QuietHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                self.read_body()
                key = self.headers.get("Idempotency-Key", "")
                with recorder.lock:
                    recorder.hits[key].append((self.path, time.monotonic(), self.client_address[1]))
                if self.path in recorder.hold_paths:
                    recorder.held_port = self.client_address[1]
                    recorder.held.set()
                    recorder.release_event.wait(recorder.hold_seconds)
                self.answer(200, b'{"ok": true}', {"Content-Type": "application/json", "Connection": "close"})

        self.server = LocalServer(Handler).start()
        self.port = self.server.port

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def release(self):
        self.release_event.set()

    def counts(self):
        with self.lock:
            return {key: len(hits) for key, hits in self.hits.items()}

    def total(self):
        with self.lock:
            return sum(len(hits) for hits in self.hits.values())

    def close(self):
        self.release_event.set()
        self.server.close()


# --- processes ---------------------------------------------------------------------------------


def _proc_stat(pid):
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return int(fields[1]), int(fields[19])  # ppid, starttime (fields 4 and 22)


def children_of(pid):
    """Child pids of ``pid``, oldest first."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid, started = _proc_stat(int(entry))
            except (OSError, ValueError, IndexError):
                continue
            if ppid == pid:
                found.append((started, int(entry)))
    return [pid for _, pid in sorted(found)]


def pid_with_local_port(port, candidates):
    """Which of ``candidates`` holds a TCP socket whose local port is ``port`` (Linux /proc)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if int(parts[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(parts[9])
    for pid in candidates:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                match = re.fullmatch(r"socket:\[(\d+)\]", target)
                if match and match.group(1) in inodes:
                    return pid
        except OSError:
            continue
    return None


class Proc(ManagedProcess):
    """A process started in its own session (so its whole group can be killed), output appended to a log file."""

    def __init__(self, name, args, env, log_path):
        super().__init__(name, args, cwd=BASE_DIR, env=env, log_path=log_path, append=True,
                         start_seconds=START_SECONDS, stop_seconds=STOP_SECONDS)

    def running(self):
        return self.is_running()

    def stop(self):
        """SIGTERM, then SIGKILL of the group; unlike ``ManagedProcess.stop`` it never raises."""
        self.terminate()
        self.kill_group()


class Stack:
    """One test's own world: a SQLite file, a web server and worker processes, all on 127.0.0.1."""

    def __init__(self, tmp_path, extra_env=None):
        self.tmp_path = tmp_path
        self.db_path = tmp_path / "faults.sqlite3"
        self.env = dict(os.environ)
        for name in list(self.env):
            if name.startswith(("EVENTS_", "DJANGO_", "PYTEST_")) or name in ("DATABASE_URL",):
                self.env.pop(name)
        self.env.update(SHORT_SETTINGS)
        self.env.update(
            DATABASE_URL=f"sqlite:///{self.db_path}",
            DJANGO_SETTINGS_MODULE="config.settings",
            PYTHONUNBUFFERED="1",
            EVENTS_LOG_LEVEL="INFO",
        )
        self.env.update(extra_env or {})
        self.procs = []
        self.workers = []
        self.web = None
        self.web_url = None
        self.counter = 0

    # management commands
    def manage(self, *args, timeout=120, check=True):
        result = subprocess.run(
            [PYTHON, "manage.py", *args], cwd=BASE_DIR, env=self.env, capture_output=True, text=True,
            timeout=timeout, stdin=subprocess.DEVNULL,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"manage.py {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
        return result

    def migrate(self):
        self.manage("migrate", "--noinput", timeout=180)

    def import_form(self, document):
        path = self.tmp_path / f"form-{document['form']['slug']}.json"
        path.write_text(json.dumps(document))
        self.manage("import_form", str(path))

    def health(self):
        """(exit code, report) of ``manage.py events_health --json``."""
        result = self.manage("events_health", "--json", check=False, timeout=60)
        try:
            report = json.loads(result.stdout)
        except ValueError:
            report = {"raw": result.stdout + result.stderr}
        return result.returncode, report

    # processes
    def _start(self, name, args):
        self.counter += 1
        proc = Proc(name, args, self.env, self.tmp_path / f"{self.counter:02d}-{name}.log")
        self.procs.append(proc)
        return proc

    def start_web(self):
        port = free_port()
        self.web = self._start("web", [
            str(Path(PYTHON).parent / "gunicorn"), "config.wsgi:application", "--bind", f"127.0.0.1:{port}",
            "--workers", "2", "--threads", "8", "--timeout", "60", "--graceful-timeout", "5", "--no-control-socket",
        ])
        self.web_url = f"http://127.0.0.1:{port}"

        def up():
            if not self.web.running():
                raise AssertionError(f"the web server exited:\n{self.web.output()}")
            try:
                return httpx.get(self.web_url + "/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(up, timeout=START_SECONDS, message="the web server")
        return self.web

    def start_worker(self, *extra):
        worker = self._start("worker", [PYTHON, "manage.py", "worker", *extra])
        self.workers.append(worker)

        def ready():
            if not worker.running():
                raise AssertionError(f"the worker exited with {worker.process.returncode}:\n{worker.output()}")
            return "worker: cluster started" in worker.output()

        wait_until(ready, timeout=START_SECONDS, message="the worker to start")
        return worker

    def cluster_pids(self, worker):
        """(sentinel, [django-q2 worker pids], [other children]) of a running ``manage.py worker``.

        django-q2 forks its workers first, then the monitor and the pusher, so the
        oldest children of a fresh sentinel are its workers.
        """
        workers_count = int(self.env.get("EVENTS_QUEUE_WORKERS", "2"))
        sentinels = children_of(worker.pid)
        assert len(sentinels) == 1, f"expected one sentinel under {worker.pid}, found {sentinels}"
        kids = wait_until(lambda: (k := children_of(sentinels[0])) and len(k) >= workers_count + 2 and k,
                          timeout=20, message="the cluster's processes")
        return sentinels[0], kids[:workers_count], kids[workers_count:]

    def close(self):
        for proc in reversed(self.procs):
            proc.stop()

    def dump_logs(self):
        for proc in self.procs:
            print(f"\n----- {proc.log_path.name} -----\n{proc.output()[-6000:]}")

    # submissions
    def submit(self, slug, count, *, concurrency=8, timeout=60.0, data=None):
        """POST the form ``count`` times through the web server; returns the number acknowledged (303)."""
        url = f"{self.web_url}/f/{slug}/"

        def one(index):
            with httpx.Client(timeout=timeout, follow_redirects=False) as client:
                page = client.get(url)
                page.raise_for_status()
                token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
                response = client.post(url, data={"csrfmiddlewaretoken": token, "note": f"n{index}", **(data or {})},
                                       headers={"Referer": url})
                return response.status_code == 303

        with ThreadPoolExecutor(concurrency) as pool:
            return sum(pool.map(lambda i: _safe(one, i), range(count)))

    # the database, read directly
    def query(self, sql, params=()):
        connection = sqlite3.connect(self.db_path, timeout=20)
        try:
            connection.row_factory = sqlite3.Row
            return [dict(row) for row in connection.execute(sql, params)]
        finally:
            connection.close()

    def run_counts(self):
        rows = self.query("SELECT status, COUNT(*) AS n FROM events_run WHERE is_submission GROUP BY status")
        return {row["status"]: row["n"] for row in rows}

    def tasks(self, type_=None):
        sql = "SELECT id, run_id, type, name, status, attempt, due_at, started_at, parent_id FROM events_runtask"
        rows = self.query(sql + (" WHERE type = ?" if type_ else ""), (type_,) if type_ else ())
        for row in rows:
            row["id"] = _uuid(row["id"])
            row["parent_id"] = _uuid(row["parent_id"])
        return rows

    def repairs(self):
        return {row["kind"]: row["count"] for row in self.query("SELECT kind, count FROM events_repair")}


def _uuid(value):
    """SQLite stores UUIDs as 32 hex digits; the Idempotency-Key is the hyphenated form."""
    if not value:
        return value
    value = value.replace("-", "")
    return f"{value[:8]}-{value[8:12]}-{value[12:16]}-{value[16:20]}-{value[20:]}"


def _safe(function, *args):
    try:
        return function(*args)
    except Exception as exc:  # an unacknowledged submission does not count as submitted
        print(f"submission failed: {exc!r}")
        return False


def side_effects(stack, recorder):
    """Per http_request task: hits at the recorder versus attempts in our table.

    twice: a key seen more often than the task was attempted (a parallel or repeated execution);
    reexecuted_after_kill: seen more than once, but no more than its attempts (a killed attempt re-ran);
    missing: a completed http_request task the recorder never saw.
    """
    counts = recorder.counts()
    twice = reexecuted = missing = 0
    for task in stack.tasks("http_request"):
        hits = counts.get(task["id"], 0)
        if hits > max(task["attempt"], 1):
            twice += 1
        elif hits > 1:
            reexecuted += 1
        if task["status"] == "complete" and hits == 0:
            missing += 1
    return {"twice": twice, "reexecuted_after_kill": reexecuted, "missing": missing}


def form_document(slug, record_update, title="Faults"):
    return {
        "form": {"slug": slug, "title": title, "is_published": True,
                 "fields": [{"name": "note", "label": "Note", "type": "text", "required": False}],
                 "waiting": {"poll_seconds": 2, "wait_for": "run", "max_wait_seconds": 120}},
        "events": {"record_update": record_update},
    }


def http_step(name, url):
    return {"type": "http_request", "name": name,
            "config": {"method": "POST", "url": url, "body": "fault", "timeout_seconds": 15}}

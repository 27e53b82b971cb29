"""Helpers for the PostgreSQL fault tests: a throw-away database, real processes, a recorder.

Everything runs on 127.0.0.1. Every process started here is started in its own
session, so that it and its children (django-q2's sentinel, pusher, workers,
monitor) are stopped by that one process id's group, never by name.
"""

import hashlib
import hmac
import json
import os
import re
import secrets
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.support.processes import ManagedProcess, free_port, wait_until  # noqa: F401 (h.wait_until in the tests)
from tests.support.servers import LocalServer, QuietHandler

BASE_DIR = Path(__file__).resolve().parent.parent.parent
PG_HOST = os.environ.get("FAULTS_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("FAULTS_PG_PORT", "5432"))
PG_USER = os.environ.get("FAULTS_PG_USER", "postgres")
LONG = os.environ.get("FAULTS_SCALE", "").strip().lower() == "long"
START_SECONDS = 30
STOP_SECONDS = 15

# Short settings for every process (DESIGN.md 5.8: lease, sweep, re-queue, watchdog).
SHORT_SETTINGS = {
    "EVENTS_TASK_LEASE_SECONDS": "5",
    "EVENTS_JOB_TIMEOUT": "20",
    "EVENTS_SWEEP_INTERVAL": "1",
    "EVENTS_REQUEUE_AFTER_SECONDS": "5",
    "EVENTS_WATCHDOG_SECONDS": "15",
    "EVENTS_HTTP_ALLOWED_HOSTS": "127.0.0.1",
}


def scale(short, long):
    return long if LONG else short


# --- PostgreSQL -----------------------------------------------------------------------------


def pg_connect(dbname="postgres", **kwargs):
    return psycopg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=dbname, connect_timeout=5, **kwargs)


def pg_is_up():
    try:
        with pg_connect() as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


def pg_restart(timeout=60):
    """Restart the machine's cluster (the one fault that needs it). Returns (started, finished) monotonic times."""
    version = sorted(os.listdir("/etc/postgresql"))[0]
    started = time.monotonic()
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"],
        check=True, timeout=timeout, stdin=subprocess.DEVNULL, capture_output=True,
    )
    wait_until(pg_is_up, timeout=timeout, message="PostgreSQL to accept connections after its restart")
    return started, time.monotonic()


class Database:
    """A fresh PostgreSQL database for one test, migrated by ``manage.py migrate``; dropped at the end."""

    def __init__(self):
        self.name = f"faults_{secrets.token_hex(6)}"
        self.url = f"postgres://{PG_USER}@{PG_HOST}:{PG_PORT}/{self.name}"

    def create(self):
        with pg_connect(autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.name}"')
        result = subprocess.run(
            [sys.executable, "manage.py", "migrate", "--noinput"], cwd=BASE_DIR,
            env=process_env(self.url), capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
        )
        if result.returncode:
            pytest.fail(f"migrate failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        return self

    def drop(self):
        try:
            with pg_connect(autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        except psycopg.Error as exc:  # never hide the test's own outcome behind the clean-up
            print(f"(could not drop {self.name}: {exc})")

    def connect(self):
        return pg_connect(self.name, autocommit=True)

    def query(self, sql, params=None):
        """All rows of one query, on a fresh connection (it survives a server restart in between)."""
        with self.connect() as conn:
            return conn.execute(sql, params).fetchall()

    def scalar(self, sql, params=None):
        return self.query(sql, params)[0][0]


def process_env(database_url, extra=None):
    env = {key: value for key, value in os.environ.items() if not key.startswith(("DJANGO_", "EVENTS_"))}
    env.pop("DATABASE_URL", None)
    env.update(
        DATABASE_URL=database_url,
        DJANGO_SETTINGS_MODULE="config.settings",
        DJANGO_DEBUG="1",
        PYTHONUNBUFFERED="1",
        EVENTS_LOG_LEVEL="INFO",
        **SHORT_SETTINGS,
    )
    env.update(extra or {})
    return env


def import_form(database, document, tmp_path):
    path = tmp_path / f"{document['form']['slug']}.json"
    path.write_text(json.dumps(document))
    result = subprocess.run(
        [sys.executable, "manage.py", "import_form", str(path)], cwd=BASE_DIR, env=process_env(database.url),
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )
    if result.returncode:
        pytest.fail(f"import_form failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")


# --- Processes ------------------------------------------------------------------------------


class Process(ManagedProcess):
    """One started process (its own session), its output in ``log_path``."""

    def __init__(self, name, args, env, log_path):
        super().__init__(name, args, cwd=BASE_DIR, env=env, log_path=log_path,
                         start_seconds=START_SECONDS, stop_seconds=STOP_SECONDS)


class Stack:
    """A test's processes: one web server and any number of workers on one database. Stopped at the end."""

    def __init__(self, database, tmp_path):
        self.database = database
        self.tmp_path = tmp_path
        self.processes = []
        self.web_url = None

    def web(self):
        port = free_port()
        self.web_url = f"http://127.0.0.1:{port}"
        proc = Process(
            "web", [sys.executable, "manage.py", "runserver", "--noreload", f"127.0.0.1:{port}"],
            process_env(self.database.url, {"EVENTS_PUBLIC_URL": self.web_url}), self.tmp_path / "web.log",
        )
        self.processes.append(proc)

        def healthy():
            if not proc.is_running():
                pytest.fail(f"the web server exited with {proc.process.returncode}:\n{proc.output()}")
            try:
                return httpx.get(self.web_url + "/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(healthy, timeout=START_SECONDS, message="the web server to answer /healthz")
        return proc

    def worker(self, name="worker", extra=None):
        env = process_env(self.database.url, {"EVENTS_PUBLIC_URL": self.web_url or "http://127.0.0.1:9", **(extra or {})})
        proc = Process(name, [sys.executable, "manage.py", "worker"], env, self.tmp_path / f"{name}.log")
        self.processes.append(proc)
        proc.wait_for_line("worker: cluster started")
        return proc

    def stop(self):
        for proc in reversed(self.processes):
            proc.stop()

    def dump_logs(self, tail=6000):
        for proc in self.processes:
            print(f"\n----- {proc.name} (pid {proc.pid}, {proc.log_path}) -----\n{proc.output()[-tail:]}")


# --- The web client -------------------------------------------------------------------------


class Submitter:
    """Posts the public form like a browser: a CSRF cookie and token first, then a POST per submission.

    ``submit`` returns the record token when the server acknowledged with its 303, else None.
    """

    TOKEN = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')

    def __init__(self, base_url, slug):
        self.url = f"{base_url}/f/{slug}/"
        self.client = httpx.Client(timeout=httpx.Timeout(30, connect=5), follow_redirects=False)
        page = self.client.get(self.url)
        page.raise_for_status()
        self.csrf = self.TOKEN.search(page.text).group(1)

    def submit(self, data):
        try:
            response = self.client.post(self.url, data={**data, "csrfmiddlewaretoken": self.csrf},
                                        headers={"Referer": self.url})
        except httpx.HTTPError:
            return None
        if response.status_code != 303:
            return None
        return response.headers["Location"].rstrip("/").rsplit("/", 1)[-1]

    def close(self):
        self.client.close()


# --- The recorder of side effects -----------------------------------------------------------


class Recorder:
    """A tiny HTTP server on 127.0.0.1 that counts POSTs per Idempotency-Key.

    Workers may be given distinct EVENTS_HTTP_SIGNING_SECRETs (``secrets``: name → secret):
    the X-Signature of each request then tells which worker sent it.
    """

    def __init__(self, secrets_by_worker=None):
        self.counts = Counter()
        self.by_worker = defaultdict(Counter)  # worker → key → count
        self.secrets = dict(secrets_by_worker or {})
        self.lock = threading.Lock()
        recorder = self

        class Handler(QuietHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                body = self.read_body()
                recorder.record(self.headers.get("Idempotency-Key", ""), self.headers.get("X-Signature", ""), body)
                self.answer(200, b'{"ok":true}', {"Content-Type": "application/json"})

        self.server = LocalServer(Handler)
        self.url = f"{self.server.url}/record"

    def record(self, key, sig, body):
        sender = "?"
        for name, secret in self.secrets.items():
            if hmac.compare_digest(sig, "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()):
                sender = name
                break
        with self.lock:
            self.counts[key] += 1
            self.by_worker[sender][key] += 1

    def __enter__(self):
        self.server.start()
        return self

    def __exit__(self, *exc):
        self.server.close()

    def snapshot(self):
        with self.lock:
            return Counter(self.counts), {name: Counter(keys) for name, keys in self.by_worker.items()}


# --- Reading results ------------------------------------------------------------------------

COMPLETION_AUDIT_SQL = """
CREATE TABLE faults_run_completion (run_id uuid NOT NULL, status varchar(20) NOT NULL, at timestamptz DEFAULT now());
CREATE FUNCTION faults_audit_run() RETURNS trigger AS $$
BEGIN
  INSERT INTO faults_run_completion (run_id, status) VALUES (NEW.id, NEW.status);
  RETURN NEW;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER faults_audit_run AFTER UPDATE OF status ON events_run
  FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION faults_audit_run();
"""


def install_completion_audit(database):
    """Every change of a run's status, counted by a trigger: a run that finished twice shows two rows."""
    with database.connect() as conn:
        conn.execute(COMPLETION_AUDIT_SQL)


def runs_by_token(database, tokens):
    """token → (record exists, is_complete, submission run status, finished_at) for the given record tokens."""
    rows = database.query(
        """SELECT r.token, r.is_complete, run.status, run.finished_at
             FROM forms_app_record r LEFT JOIN events_run run ON run.record_id = r.id AND run.is_submission
            WHERE r.token = ANY(%s)""",
        (list(tokens),),
    )
    return {token: (True, complete, status, finished) for token, complete, status, finished in rows}


def repairs(database):
    return dict(database.query("SELECT kind, count FROM events_repair"))


def print_line(text):
    """The one line each fault test reports (pytest -s shows it; it is also kept on failure)."""
    print(f"\n{text}", flush=True)


def submit_load(base_url, slug, count, *, threads=4, make_data, deadline_seconds=300, stop=None, results=None):
    """Submit ``count`` times from ``threads`` threads, as fast as the server answers.

    Returns the list of attempts in order, each ``(index, token or None, monotonic time)``:
    a token means the server acknowledged (303). ``stop`` (an Event) ends early. Pass ``results``
    (a list) to watch progress from another thread.
    """
    results = [] if results is None else results
    lock = threading.Lock()
    counter = iter(range(count))
    deadline = time.monotonic() + deadline_seconds

    def run():
        submitter = None
        try:
            for index in iter(lambda: next(counter, None), None):
                if time.monotonic() > deadline or (stop is not None and stop.is_set()):
                    return
                if submitter is None:
                    try:
                        submitter = Submitter(base_url, slug)
                    except (httpx.HTTPError, AttributeError):
                        submitter = None
                token = submitter.submit(make_data(index)) if submitter else None
                with lock:
                    results.append((index, token, time.monotonic()))
                if token is None:
                    time.sleep(0.05)  # the server is down: do not spin
        finally:
            if submitter is not None:
                submitter.close()

    workers = [threading.Thread(target=run, daemon=True) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(max(1, deadline - time.monotonic() + 35))
    return results

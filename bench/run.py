#!/usr/bin/env python
"""The benchmark suite (``make bench``): our app against a hand-written reference app, side by side.

Every figure of DESIGN.md §13 / issue 9 is measured in one run, as a ratio of our app to the
reference app in ``bench/reference/`` (or of our app to itself: a larger tree, more history),
on the same kind of database, with the same server (gunicorn, 2 sync workers, DEBUG off) and the
same load generator (wrk, 8 connections, 2 threads). Rounds interleave the two sides (A, B, A, B,
the order flipped every other round) and each round gives one ratio; the table shows the median
(min–max) of the rounds' ratios and whether the median meets the goal.

    .venv/bin/python bench/run.py                     # SQLite, about 5 minutes
    BENCH_DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres .venv/bin/python bench/run.py
    .venv/bin/python bench/run.py --quick             # tiny counts: proves it runs (make test)

With BENCH_DATABASE_URL (or --database-url) it runs on that PostgreSQL server: it creates its own
databases there (``<prefix>_ours``, ``<prefix>_ref``, ...) and drops them at the end. Raw results go
to bench/results/latest-<sqlite|postgresql>.json. Every process it starts is stopped by its id at
the end, also on failure or Ctrl-C; every wait is bounded.
"""

import argparse
import http.client
import json
import os
import platform
import re
import secrets
import selectors
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.parse
from datetime import UTC, datetime
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
REFERENCE = BENCH / "reference"
LUA = BENCH / "wrk" / "requests.lua"
RESULTS = BENCH / "results"
PY = sys.executable

CONNECTIONS = 8
THREADS = 2
GUNICORN_WORKERS = 2
QUEUE_WORKERS = 2

FIELDS = [
    {"name": "name", "label": "Name", "type": "text", "required": True, "max_length": 100},
    {"name": "email", "label": "Email", "type": "email", "required": True},
    {"name": "age", "label": "Age", "type": "integer", "required": True, "min": 0, "max": 200},
    {"name": "city", "label": "City", "type": "text", "required": True, "max_length": 100},
    {"name": "comment", "label": "Comment", "type": "textarea", "required": False},
]
ANSWERS = {"name": "Ada Lovelace", "email": "ada@example.com", "age": "36", "city": "London", "comment": "Hello"}


class Profile:
    """How much of everything: the full run, or --quick (tiny counts, one round)."""

    def __init__(self, quick):
        self.quick = quick
        self.rounds = 1 if quick else 3
        self.load_seconds = 1 if quick else 4  # each throughput load (8 connections)
        self.latency_seconds = 1 if quick else 3  # each sequential-latency load (1 connection)
        self.rss_requests = 300 if quick else 1000
        self.drain_window = 1.5 if quick else 5.0  # longest drain measured, from the first job done
        self.raw_jobs = 300 if quick else 4000  # no-op jobs queued for the raw django-q2 drain
        self.callback_pool_rate = 2500  # awaiting tasks per second of callback load, first round (never run out)
        self.delays = 4 if quick else 30
        self.delay_seconds = 2 if quick else 3
        self.scale = (200, 1000) if quick else (10_000, 100_000)
        self.scale_seconds = 1 if quick else 3
        self.sweep_passes = 3 if quick else 9
        self.sweep_timeout = 60 if quick else 40  # one pass longer than this is reported as such


# --- Figures ------------------------------------------------------------------------------------

FIGURES = [
    # key, number, what, goal operator, goal
    ("submit_vs_async", "1", "submit req/s (one background branch) ÷ ref insert + async_task", ">=", 1.0),
    ("submit_vs_bare", "2", "submit req/s (one background branch) ÷ ref bare insert + redirect", ">=", 0.5),
    ("latency_five_vs_empty", "3", "submit p50, five 2 s background containers ÷ empty tree (1 conn)", "<=", 1.2),
    ("status_vs_read", "4", "status partial req/s (htmx) ÷ ref one-row read + tiny template", ">=", 0.7),
    ("drain_vs_raw", "5", "drain steps/s, manage.py worker ÷ raw django-q2 no-op jobs/s (2 workers)", ">=", 0.5),
    ("callback_vs_bare", "6", "callback req/s ÷ ref bare insert + redirect", ">=", 0.5),
    ("rss_vs_minimal", "7", "web worker RSS after {rss} requests ÷ minimal Django worker", "<=", 1.5),
    ("delay_lateness", "8", "delay lateness p99, s (worker running; never early)", "<=", 1.0),
    ("status_queries", "9", "status partial queries, run of 1 task vs 100 tasks", "==", None),
    ("scale_submit", "10a", "submit req/s, {big} ÷ {small} finished runs", ">=", 0.9),
    ("scale_status", "10b", "status partial req/s, {big} ÷ {small} finished runs", ">=", 0.9),
    ("scale_sweep", "10c", "sweep pass time, {small} ÷ {big} finished runs", ">=", 0.9),
    ("scale_sweep_ms", "10d", "sweep pass ms, {big} finished runs", "<=", 100.0),
]


class BenchError(Exception):
    pass


# --- Processes ----------------------------------------------------------------------------------


class Processes:
    """Every process the bench starts, each in a session of its own, stopped by its id."""

    def __init__(self, logs):
        self.logs = logs
        self.live = {}

    def start(self, name, argv, *, env, cwd, pipes=False):
        log = open(self.logs / f"{name}.log", "ab")
        log.write(f"\n=== {datetime.now().isoformat(timespec='seconds')} {' '.join(map(str, argv))}\n".encode())
        log.flush()
        process = subprocess.Popen(
            [str(arg) for arg in argv],
            env=env,
            cwd=cwd,
            start_new_session=True,
            stdin=subprocess.PIPE if pipes else subprocess.DEVNULL,
            stdout=subprocess.PIPE if pipes else log,
            stderr=log,
        )
        process.bench_name, process.bench_log = name, self.logs / f"{name}.log"
        self.live[process.pid] = process
        log.close()
        return process

    def stop(self, process, grace=15.0):
        """SIGTERM to the process, SIGKILL to its whole group after ``grace`` seconds (and to stragglers)."""
        if process.poll() is None:
            try:
                process.send_signal(signal.SIGTERM)
                process.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(process.pid, signal.SIGKILL)  # the group this process leads: its children too
        except (ProcessLookupError, PermissionError):
            pass
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            pass
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass
        self.live.pop(process.pid, None)

    def stop_all(self):
        for process in reversed(list(self.live.values())):
            self.stop(process, grace=5)


class Helper:
    """A long-lived in-process helper (bench/ours_helper.py, bench/reference/helper.py); see helper_protocol."""

    def __init__(self, processes, name, argv, *, env, cwd):
        self.processes, self.name = processes, name
        self.process = processes.start(name, argv, env=env, cwd=cwd, pipes=True)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.process.stdout, selectors.EVENT_READ)
        self.buffer = b""

    def call(self, cmd, timeout=120.0, **arguments):
        if self.process.poll() is not None:
            raise BenchError(f"helper {self.name} is not running (see {self.process.bench_log})")
        self.process.stdin.write(json.dumps({"cmd": cmd, **arguments}).encode() + b"\n")
        self.process.stdin.flush()
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.stop()
                raise BenchError(f"helper {self.name}: {cmd} did not answer within {timeout:.0f} s (stopped)")
            if self.selector.select(remaining):
                chunk = os.read(self.process.stdout.fileno(), 1 << 16)
                if not chunk:
                    raise BenchError(f"helper {self.name} exited during {cmd}:\n{log_tail(self.process.bench_log)}")
                self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        answer = json.loads(line)
        if not answer["ok"]:
            with open(self.process.bench_log, "a") as log:
                log.write(answer.get("traceback", ""))
            raise BenchError(f"helper {self.name}: {cmd}: {answer['error']}")
        return answer["result"]

    def stop(self):
        self.selector.close()
        self.processes.stop(self.process, grace=10)


def log_tail(path, size=1500):
    try:
        return path.read_text(errors="replace")[-size:]
    except OSError:
        return ""


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_request(port, method, path, body=None, headers=None, timeout=30):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.headers, response.read()
    finally:
        connection.close()


class Server:
    """gunicorn, 2 sync workers, on 127.0.0.1."""

    def __init__(self, processes, name, app, *, env, cwd, ready_path):
        self.processes, self.name, self.app, self.env, self.cwd = processes, name, app, env, cwd
        self.ready_path = ready_path
        self.port = None
        self.process = None

    def start(self):
        self.port = free_port()
        self.process = self.processes.start(
            self.name,
            [
                PY,
                "-m",
                "gunicorn",
                self.app,
                "--workers",
                GUNICORN_WORKERS,
                "--worker-class",
                "sync",
                "--bind",
                f"127.0.0.1:{self.port}",
                "--timeout",
                "60",
                "--graceful-timeout",
                "5",
                "--log-level",
                "warning",
            ],
            env=self.env,
            cwd=self.cwd,
        )

    def wait_ready(self, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BenchError(f"{self.name} exited at start:\n{log_tail(self.process.bench_log)}")
            try:
                status, _, _ = http_request(self.port, "GET", self.ready_path, timeout=5)
                if status == 200 and len(self.worker_pids()) == GUNICORN_WORKERS:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise BenchError(f"{self.name} was not ready within {timeout} s (see {self.process.bench_log})")

    def stop(self):
        if self.process is not None:
            self.processes.stop(self.process, grace=10)
            self.process = None

    def worker_pids(self):
        return children_of(self.process.pid)

    def worker_rss_mib(self):
        sizes = []
        for pid in self.worker_pids():
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
            if match:
                sizes.append(int(match.group(1)) / 1024)
        return sizes

    def csrf(self, path):
        """A CSRF cookie and form token, fetched once from a form page (both apps check them on POST)."""
        status, headers, body = http_request(self.port, "GET", path)
        cookie = re.search(r"csrftoken=([^;]+)", " ".join(headers.get_all("Set-Cookie") or []))
        token = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', body)
        if status != 200 or not cookie or not token:
            raise BenchError(f"{self.name}: no CSRF cookie and token on {path} (status {status})")
        return cookie.group(1), token.group(1).decode()


def children_of(pid):
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


# --- Load -------------------------------------------------------------------------------------


class Request:
    def __init__(self, method, path, body="", headers=()):
        self.method, self.path, self.body, self.headers = method, path, body, list(headers)

    def line(self):
        return "\t".join([self.method, self.path, self.body, *self.headers])


def form_post(path, csrf):
    cookie, token = csrf
    body = urllib.parse.urlencode({"csrfmiddlewaretoken": token, **ANSWERS})
    return Request(
        "POST", path, body, [f"Cookie: csrftoken={cookie}", "Content-Type: application/x-www-form-urlencoded"]
    )


def page_get(path, csrf=None, htmx=False):
    headers = [f"Cookie: csrftoken={csrf[0]}"] if csrf else []
    if htmx:
        headers.append("HX-Request: true")
    return Request("GET", path, "", headers)


class Loader:
    """Runs wrk against one port with a list of requests; returns what it measured."""

    def __init__(self, processes, workdir):
        self.processes, self.workdir, self.count = processes, workdir, 0

    def run(self, port, requests, *, seconds, expect, connections=CONNECTIONS, mode="cycle"):
        self.count += 1
        threads = min(THREADS, connections)
        path = self.workdir / f"requests-{self.count}.txt"
        path.write_text("\n".join(request.line() for request in requests) + "\n")
        env = {**os.environ, "BENCH_REQUESTS": str(path), "BENCH_MODE": mode, "BENCH_THREADS": str(threads)}
        process = self.processes.start(
            f"wrk-{self.count}",
            [
                "wrk",
                "-t",
                threads,
                "-c",
                connections,
                "-d",
                f"{seconds}s",
                "--timeout",
                "10s",
                "-s",
                LUA,
                f"http://127.0.0.1:{port}",
            ],
            env=env,
            cwd=self.workdir,
            pipes=True,
        )
        try:
            out, _ = process.communicate(timeout=seconds + 60)
        except subprocess.TimeoutExpired:
            raise BenchError("wrk did not finish in time") from None
        finally:
            self.processes.stop(process)
        match = re.search(rb"BENCH_RESULT (.*)", out)
        if not match:
            raise BenchError(f"wrk printed no result: {out[-500:]!r} (see {process.bench_log})")
        fields = dict(item.split("=", 1) for item in match.group(1).decode().split())
        statuses = {int(k): int(v) for k, v in (p.split(":") for p in fields["statuses"].split(",") if p)}
        requests_done, duration = int(fields["requests"]), int(fields["duration_us"]) / 1e6
        unexpected = {status: n for status, n in statuses.items() if status not in expect}
        problems = []
        if unexpected:
            problems.append(f"unexpected statuses {unexpected}")
        if int(fields["exhausted"]):
            problems.append("ran out of requests to send")
        if int(fields["errors"]):
            problems.append(f"{fields['errors']} socket errors")
        if not requests_done:
            problems.append("no answer")
        return {
            "rps": requests_done / duration if duration else None,
            "requests": requests_done,
            "seconds": round(duration, 3),
            "p50_ms": int(fields["p50_us"]) / 1000,
            "p99_ms": int(fields["p99_us"]) / 1000,
            "statuses": statuses,
            "connections": connections,
            "problem": "; ".join(problems) or None,
        }


def requests_send(port, requests, count, *, connections=CONNECTIONS, timeout=120):
    """Send ``count`` requests (going round ``requests``) over ``connections`` concurrent clients.

    For the memory figure, which needs an exact number of requests (wrk runs for a duration).
    Returns {status: count}.
    """
    lock = threading.Lock()
    sent = {"n": 0}
    statuses = {}
    deadline = time.monotonic() + timeout

    def client():
        while time.monotonic() < deadline:
            with lock:
                if sent["n"] >= count:
                    return
                request = requests[sent["n"] % len(requests)]
                sent["n"] += 1
            headers = dict(header.split(": ", 1) for header in request.headers)
            try:
                status, _, _ = http_request(port, request.method, request.path, request.body.encode() or None, headers)
            except OSError:
                status = "error"
            with lock:
                statuses[status] = statuses.get(status, 0) + 1

    workers = [threading.Thread(target=client, daemon=True) for _ in range(connections)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(max(0.0, deadline - time.monotonic()) + 5)
    return statuses


# --- Databases ----------------------------------------------------------------------------------


class Sqlite:
    label = "sqlite"

    def __init__(self, directory):
        self.directory = directory

    def path(self, name):
        return self.directory / f"{name}.sqlite3"

    def url(self, name):
        return f"sqlite:///{self.path(name)}"

    def create(self, name):
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.path(name)}{suffix}").unlink(missing_ok=True)

    def copy(self, source, target):
        self.create(target)
        with sqlite3.connect(self.path(source)) as src, sqlite3.connect(self.path(target)) as dst:
            src.backup(dst)
        src.close()
        dst.close()

    def drop_all(self):
        pass  # the work directory goes as a whole


class Postgres:
    label = "postgresql"

    def __init__(self, admin_url, prefix):
        import psycopg  # only needed here

        self.psycopg = psycopg
        self.admin_url, self.prefix = admin_url, prefix
        self.parts = urllib.parse.urlsplit(admin_url)
        self.created = []

    def name(self, name):
        return f"{self.prefix}_{name}"

    def url(self, name):
        return urllib.parse.urlunsplit(self.parts._replace(path=f"/{self.name(name)}"))

    def _admin(self, *statements):
        with self.psycopg.connect(self.admin_url, autocommit=True, connect_timeout=10) as connection:
            for statement in statements:
                connection.execute(statement)

    def create(self, name, template=None):
        quoted = f'"{self.name(name)}"'
        if name not in self.created:
            self.created.append(name)
        create = f"CREATE DATABASE {quoted}" + (f' TEMPLATE "{self.name(template)}"' if template else "")
        for _ in range(20):  # a template with a connection still closing is refused for a moment
            try:
                self._admin(f"DROP DATABASE IF EXISTS {quoted} WITH (FORCE)", create)
                return
            except self.psycopg.errors.ObjectInUse:
                time.sleep(0.5)
        raise BenchError(f"could not create {quoted}")

    def copy(self, source, target):
        self.create(target, template=source)

    def drop_all(self):
        for name in self.created:
            try:
                self._admin(f'DROP DATABASE IF EXISTS "{self.name(name)}" WITH (FORCE)')
            except Exception as exc:
                print(f"could not drop {self.name(name)}: {exc}", file=sys.stderr)


# --- The bench ------------------------------------------------------------------------------------


def form_document(slug, tree):
    return {
        "form": {
            "slug": slug,
            "title": slug,
            "fields": FIELDS,
            "waiting": {
                "poll_seconds": 2,
                "wait_for": "run",
                "max_wait_seconds": 120,
                "done_message": "Done, {{ record.name }}",
                "failed_message": "Sorry",
            },
        },
        "events": {"record_update": tree},
    }


def our_forms(stub_port, delay_seconds):
    def visible_steps(n):
        return [
            {"type": "set_subtext", "label": f"Step {i + 1}", "visible": True, "config": {"text": f"Step {i + 1}"}}
            for i in range(n)
        ]

    return {
        # Figures 1, 2, 5, 7, 10: one background branch holding one quick step.
        "bench-submit": [
            {
                "type": "background",
                "name": "work",
                "label": "Work",
                "visible": True,
                "children": [{"type": "set_flag", "config": {"flag": "done"}}],
            }
        ],
        # Figure 3.
        "bench-empty": [],
        "bench-five": [
            {"type": "background", "name": f"slow{i}", "children": [{"type": "pause", "config": {"seconds": 2}}]}
            for i in range(5)
        ],
        # Figures 4, 10: a run at work (its delay is not due for an hour) with visible steps.
        "bench-status": [
            {
                "type": "delay",
                "name": "later",
                "label": "Later",
                "visible": True,
                "config": {"after_seconds": 3600},
                "children": visible_steps(3),
            }
        ],
        # Figure 6: a step waiting for a callback (the request goes to a stand-in on 127.0.0.1).
        "bench-callback": [
            {
                "type": "http_request",
                "name": "external",
                "config": {
                    "method": "POST",
                    "url": f"http://127.0.0.1:{stub_port}/hook",
                    "wait_for_callback": True,
                    "callback_timeout_seconds": 86400,
                },
            }
        ],
        # Figure 8.
        "bench-delay": [
            {
                "type": "delay",
                "name": "soon",
                "config": {"after_seconds": delay_seconds},
                "children": [{"type": "set_flag", "config": {"flag": "delayed"}}],
            }
        ],
        # Figure 9: runs of 1 and of 100 tasks.
        "bench-q1": [
            {"type": "delay", "name": "later", "visible": True, "config": {"after_seconds": 3600}, "children": []}
        ],
        # (The 99 steps at the top level: a delay's own steps get their tasks only when it starts.)
        "bench-q100": [
            {"type": "delay", "name": "later", "visible": True, "config": {"after_seconds": 3600}, "children": []},
            *visible_steps(99),
        ],
    }


def clean_environment():
    env = dict(os.environ)
    for key in list(env):
        if key in ("DATABASE_URL", "PYTHONPATH", "TEST_DATABASE_URL") or key.startswith(("DJANGO_", "EVENTS_")):
            del env[key]
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Bench:
    def __init__(self, args):
        self.args = args
        self.profile = Profile(args.quick)
        if args.rounds:
            self.profile.rounds = args.rounds
        if args.seconds:
            self.profile.load_seconds = args.seconds
        self.started = time.monotonic()
        self.workdir = Path(tempfile.mkdtemp(prefix="bench-"))
        (self.workdir / "logs").mkdir()
        self.processes = Processes(self.workdir / "logs")
        self.loader = Loader(self.processes, self.workdir)
        if args.database_url:
            self.db = Postgres(args.database_url, args.prefix)
        else:
            self.db = Sqlite(self.workdir)
        self.samples = []  # every measurement, raw
        self.values = {key: [] for key, *_ in FIGURES}  # figure → one value per round
        self.details = {key: [] for key, *_ in FIGURES}
        self.errors = {key: [] for key, *_ in FIGURES}
        secret = secrets.token_urlsafe(48)
        base = clean_environment()
        self.ours_env = {
            **base,
            "DJANGO_SECRET_KEY": secret,
            "DJANGO_ALLOWED_HOSTS": "127.0.0.1",
            "EVENTS_LOG_LEVEL": "WARNING",
            "EVENTS_HTTP_ALLOWED_HOSTS": "127.0.0.1",
            "EVENTS_QUEUE_WORKERS": str(QUEUE_WORKERS),
            # wrk sends everything from 127.0.0.1: limits no load reaches, so the
            # throttles still count every submission (their cost is measured) and refuse none.
            "EVENTS_FORM_POST_LIMIT": str(10**12),
            "EVENTS_API_AUTH_FAILURE_LIMIT": str(10**12),
        }
        self.ref_env = {**base, "REF_SECRET_KEY": secrets.token_urlsafe(48), "REF_DATABASE_URL": self.db.url("ref")}
        if os.environ.get("BENCH_REF_CONN_MAX_AGE"):  # to try the reference with other connection settings
            self.ref_env["REF_CONN_MAX_AGE"] = os.environ["BENCH_REF_CONN_MAX_AGE"]
        self.helpers = []
        self.query_counts = {}

    # helpers and servers

    def ours(self, database):
        return {**self.ours_env, "DATABASE_URL": self.db.url(database)}

    def ours_helper(self, database):
        helper = Helper(
            self.processes, f"ours-helper-{database}", [PY, BENCH / "ours_helper.py"], env=self.ours(database), cwd=ROOT
        )
        self.helpers.append(helper)
        return helper

    def ours_server(self, database):
        return Server(
            self.processes,
            f"ours-web-{database}",
            "config.wsgi",
            env=self.ours(database),
            cwd=ROOT,
            ready_path="/healthz",
        )

    def manage(self, name, argv, *, env, cwd, timeout=300, attempts=1):
        """Run a management command to its end (bounded); ``attempts`` > 1 tries again after a failure."""
        for _ in range(attempts):
            process = self.processes.start(name, [PY, "manage.py", *argv], env=env, cwd=cwd)
            try:
                code = process.wait(timeout)
            except subprocess.TimeoutExpired:
                raise BenchError(f"{name} did not finish within {timeout} s") from None
            finally:
                self.processes.stop(process)
            if code == 0:
                return
            time.sleep(2)
        raise BenchError(f"{name} failed with status {code}:\n{log_tail(process.bench_log)}")

    def elapsed(self):
        return time.monotonic() - self.started

    def say(self, text):
        print(f"[{self.elapsed():6.1f} s] {text}", flush=True)

    def record(self, key, value, detail="", error=None):
        if error is not None:
            self.errors[key].append(error)
            self.say(f"  {key}: {error}")
            return
        self.values[key].append(value)
        self.details[key].append(detail)

    def sample(self, **fields):
        fields["at"] = round(self.elapsed(), 2)
        self.samples.append(fields)
        return fields

    # --- set-up

    def setup(self):
        p = self.profile
        self.say(f"work directory {self.workdir}; database: {self.db.label}")
        if not shutil.which("wrk"):
            raise BenchError("wrk is not installed (make bench installs Debian's wrk)")
        # Production settings serve static files from collectstatic's manifest (into ./staticfiles, as the
        # Procfile's release step does); tried twice, in case another run writes the same files just then.
        self.manage(
            "collectstatic", ["collectstatic", "--noinput", "-v0"], env=self.ours("ours_tmpl"), cwd=ROOT, attempts=2
        )
        self.db.create("ours_tmpl")
        self.db.create("ref")
        self.manage("ours-migrate", ["migrate", "--noinput", "-v0"], env=self.ours("ours_tmpl"), cwd=ROOT)
        self.manage("ref-migrate", ["migrate", "--noinput", "-v0"], env=self.ref_env, cwd=REFERENCE)
        self.stub_port = free_port()
        forms = self.workdir / "forms"
        forms.mkdir()
        files = []
        for slug, tree in our_forms(self.stub_port, p.delay_seconds).items():
            path = forms / f"{slug}.json"
            path.write_text(json.dumps(form_document(slug, tree), indent=1))
            files.append(str(path))
        template = self.ours_helper("ours_tmpl")
        template.call("forms_import", files=files)
        self.api_key = template.call("api_key_create", name="bench")
        template.stop()
        self.db.copy("ours_tmpl", "ours")
        self.main = self.ours_helper("ours")
        self.main.call("stub_start", port=self.stub_port)
        self.status_token = self.main.call("submit", slug="bench-status", data=ANSWERS)[0]
        self.ref_helper = Helper(self.processes, "ref-helper", [PY, "helper.py"], env=self.ref_env, cwd=REFERENCE)
        self.helpers.append(self.ref_helper)
        self.ref_entry = self.ref_helper.call("entry_create")
        self.ours_web = self.ours_server("ours")
        self.ref_web = Server(
            self.processes, "ref-web", "refsite.wsgi", env=self.ref_env, cwd=REFERENCE, ready_path="/bare/"
        )

    # --- figure 9

    def queries(self):
        self.say("figure 9: status partial query counts")
        try:
            one = self.main.call("submit", slug="bench-q1", data=ANSWERS)[0]
            hundred = self.main.call("submit", slug="bench-q100", data=ANSWERS)[0]
            counts = self.main.call("status_queries", tokens=[one, hundred])
            small, big = counts[one], counts[hundred]
            self.sample(kind="status_queries", small=small, big=big)
            if (small["tasks"], big["tasks"]) != (1, 100):  # what the figure compares, or it compares nothing
                raise BenchError(f"the runs have {small['tasks']} and {big['tasks']} tasks, not 1 and 100")
            self.record(
                "status_queries",
                (small["queries"], big["queries"]),
                f"{small['tasks']} task: {small['queries']} queries, {big['tasks']} tasks: {big['queries']}",
            )
        except BenchError as exc:
            self.record("status_queries", None, error=str(exc))

    def query_profile(self):
        """Not a figure: the queries (and, on SQLite, write transactions) of a submit, a poll, a callback and
        a queue job, printed under the table and kept in the raw results."""
        try:
            self.query_counts = self.main.call("query_profile", api_key=self.api_key, data=ANSWERS)
        except BenchError as exc:
            self.query_counts = {"error": str(exc)}

    # --- figures 1–7: rounds

    def servers_restart(self):
        for server in (self.ours_web, self.ref_web):
            server.stop()
        for server in (self.ours_web, self.ref_web):
            server.start()
        for server in (self.ours_web, self.ref_web):
            server.wait_ready()
        self.ours_csrf = self.ours_web.csrf("/f/bench-submit/")
        self.ref_csrf = self.ref_web.csrf("/bare/")

    def load(self, round_, name, server, requests, expect, **options):
        try:
            result = self.loader.run(server.port, requests, expect=expect, **options)
        except BenchError as exc:
            self.sample(kind="load", round=round_, name=name, error=str(exc))
            return {"problem": str(exc)}
        self.sample(kind="load", round=round_, name=name, **result)
        return result

    @staticmethod
    def interleaved(round_, steps):
        return steps if round_ % 2 == 0 else list(reversed(steps))

    def ratio(self, key, round_, ours, ref, *, field="rps", unit="req/s"):
        """Record ours[field] ÷ ref[field] for this round (or why there is none)."""
        problems = [s["problem"] for s in (ours, ref) if s.get("problem")]
        if problems:
            self.record(key, None, error=f"round {round_ + 1}: " + "; ".join(problems))
            return
        a, b = ours[field], ref[field]
        value = a / b
        self.record(key, value, f"{a:.0f} vs {b:.0f} {unit}" if unit != "ms" else f"{a:.1f} vs {b:.1f} ms")

    def web_round(self, round_):
        p = self.profile
        self.say(f"round {round_ + 1}/{p.rounds}: fresh servers")
        self.servers_restart()
        ours, ref, csrf_o, csrf_r = self.ours_web, self.ref_web, self.ours_csrf, self.ref_csrf
        token = self.status_token

        # Figure 7: memory of each web worker after the same number of requests, on fresh servers.
        ours_mix = [
            page_get("/f/bench-submit/", csrf_o),
            form_post("/f/bench-submit/", csrf_o),
            page_get(f"/r/{token}/"),
            page_get(f"/r/{token}/status/", htmx=True),
        ]
        ref_mix = [
            page_get("/bare/", csrf_r),
            form_post("/bare/", csrf_r),
            form_post("/async/", csrf_r),
            page_get(f"/read/{self.ref_entry}/"),
        ]
        rss = {}
        for name, server, mix in self.interleaved(round_, [("ours", ours, ours_mix), ("ref", ref, ref_mix)]):
            pids = sorted(server.worker_pids())
            statuses = requests_send(server.port, mix, p.rss_requests)
            sizes = server.worker_rss_mib()
            self.sample(kind="rss", round=round_, name=name, worker_rss_mib=sizes, statuses=statuses)
            unexpected = {status: n for status, n in statuses.items() if status not in (200, 303)}
            problem = (
                f"unexpected statuses {unexpected}"
                if unexpected
                else "a worker was replaced"
                if sorted(server.worker_pids()) != pids
                else "no worker found"
                if not sizes
                else None
            )
            rss[name] = {"problem": problem, "mib": statistics.mean(sizes) if sizes else None}
        self.ratio("rss_vs_minimal", round_, rss["ours"], rss["ref"], field="mib", unit="MiB")

        # The callback pool of this round: fresh awaiting tasks, more than the load can use (the load is
        # discarded if it runs out): 2.5 times what the last round used, at first a generous guess.
        used = [s["requests"] for s in self.samples if s.get("name") == "ours_callback" and s.get("requests")]
        pool = int(max(1000, 2.5 * used[-1]) if used else p.load_seconds * p.callback_pool_rate)
        ids = []
        try:
            template = self.main.call("submit", slug="bench-callback", data=ANSWERS)[0]
            made = self.main.call("copies_create", token=template, n=pool - 1, timeout=300)
            ids = self.main.call("awaiting_ids", slug="bench-callback")
            self.sample(kind="callback_pool", round=round_, size=len(ids), **made)
        except BenchError as exc:
            self.record("callback_vs_bare", None, error=f"round {round_ + 1}: no awaiting tasks: {exc}")
        callback_requests = [
            Request(
                "POST",
                "/api/external-events/callback/",
                json.dumps(
                    {"taskId": task_id, "status": "SUCCESS", "logs": "done", "output": {"ok": True}, "subtext": "Done"},
                    separators=(",", ":"),
                ),
                ["Content-Type: application/json", f"Authorization: Bearer {self.api_key}"],
            )
            for task_id in ids
        ]

        seconds, lat = p.load_seconds, p.latency_seconds
        # Each ratio's two loads run one right after the other (the bare insert sits between the submit
        # and the callback, which are both divided by it).
        steps = [
            ("ref_async", ref, [form_post("/async/", csrf_r)], {303}, {}),
            ("ours_submit", ours, [form_post("/f/bench-submit/", csrf_o)], {303}, {}),
            ("ref_bare", ref, [form_post("/bare/", csrf_r)], {303}, {}),
            ("ours_callback", ours, callback_requests, {200}, {"mode": "once"}),
            ("ref_read", ref, [page_get(f"/read/{self.ref_entry}/")], {200}, {}),
            ("ours_status", ours, [page_get(f"/r/{token}/status/", htmx=True)], {200}, {}),
            ("ours_empty", ours, [form_post("/f/bench-empty/", csrf_o)], {303}, {"connections": 1}),
            ("ours_five", ours, [form_post("/f/bench-five/", csrf_o)], {303}, {"connections": 1}),
        ]
        results = {}
        for name, server, requests, expect, options in self.interleaved(round_, steps):
            if not requests:
                results[name] = {"problem": "nothing to send"}
                continue
            duration = lat if options.get("connections") == 1 else seconds
            results[name] = self.load(round_, name, server, requests, expect, seconds=duration, **options)
        self.ratio("submit_vs_async", round_, results["ours_submit"], results["ref_async"])
        self.ratio("submit_vs_bare", round_, results["ours_submit"], results["ref_bare"])
        self.ratio("status_vs_read", round_, results["ours_status"], results["ref_read"])
        self.ratio("callback_vs_bare", round_, results["ours_callback"], results["ref_bare"])
        self.ratio(
            "latency_five_vs_empty", round_, results["ours_five"], results["ours_empty"], field="p50_ms", unit="ms"
        )
        self.say(
            "  " + ", ".join(f"{name} {r['rps']:.0f}/s" if r.get("rps") else f"{name} -" for name, r in results.items())
        )

        # Work queued by the latency forms (2-second pauses) must not run later; the unused callback pool goes.
        try:
            self.main.call("awaiting_delete", slug="bench-callback", timeout=120)
            self.main.call("runs_cancel", slugs=["bench-empty", "bench-five"], timeout=120)
        except BenchError as exc:
            self.say(f"  could not cancel the latency and callback runs: {exc}")

        # Figure 5: the queue drained by each side's workers.
        drains = {}
        for name in self.interleaved(round_, ["ref", "ours"]):
            drains[name] = self.drain_ref(round_) if name == "ref" else self.drain_ours(round_)
        self.ratio("drain_vs_raw", round_, drains["ours"], drains["ref"], field="rate", unit="jobs/s")

    def drain_ours(self, round_):
        p = self.profile
        try:
            start = self.main.call("drain_size", slug="bench-submit")
            if not start:
                return {"problem": "no submitted work to drain"}
            worker = self.processes.start("ours-worker", [PY, "manage.py", "worker"], env=self.ours("ours"), cwd=ROOT)
            try:
                result = self.main.call(
                    "drain",
                    slug="bench-submit",
                    start_count=start,
                    window=p.drain_window,
                    first_wait=60,
                    timeout=p.drain_window + 90,
                )
            finally:
                self.processes.stop(worker, grace=40)
            # What the window left undone goes, as the reference clears its queue after each drain: each
            # round's drain starts from that round's submits, not from jobs a stopped worker held.
            self.main.call("runs_cancel", slugs=["bench-submit"], timeout=120)
        except BenchError as exc:
            result = {"error": str(exc)}
        self.sample(kind="drain", round=round_, name="ours", **result)
        if result.get("error") or not result.get("rate"):
            return {"problem": result.get("error") or "no rate"}
        return result

    def drain_ref(self, round_):
        p = self.profile
        try:
            self.ref_helper.call("queue_clear")
            start = self.ref_helper.call("queue_fill", n=p.raw_jobs, timeout=300)
            cluster = self.processes.start(
                "ref-cluster", [PY, "manage.py", "qcluster"], env=self.ref_env, cwd=REFERENCE
            )
            try:
                result = self.ref_helper.call(
                    "drain", start_count=start, window=p.drain_window, first_wait=60, timeout=p.drain_window + 90
                )
            finally:
                self.processes.stop(cluster, grace=20)
            self.ref_helper.call("queue_clear")
        except BenchError as exc:
            result = {"error": str(exc)}
        self.sample(kind="drain", round=round_, name="ref", **result)
        if result.get("error") or not result.get("rate"):
            return {"problem": result.get("error") or "no rate"}
        return result

    # --- figure 8

    def delays(self):
        p = self.profile
        self.say(f"figure 8: {p.delays} delays of {p.delay_seconds} s with a worker running")
        try:
            self.main.call("runs_cancel", timeout=120)  # an idle worker: nothing queued before
            worker = self.processes.start(
                "ours-worker-delays", [PY, "manage.py", "worker"], env=self.ours("ours"), cwd=ROOT
            )
            try:
                self.wait_for_log(worker, b"cluster started", timeout=60)
                time.sleep(1)
                if self.ours_web.process is None:
                    self.ours_web.start()
                    self.ours_web.wait_ready()
                csrf = self.ours_web.csrf("/f/bench-delay/")
                request = form_post("/f/bench-delay/", csrf)
                headers = dict(h.split(": ", 1) for h in request.headers)
                for _ in range(p.delays):
                    status, _, _ = http_request(
                        self.ours_web.port, "POST", request.path, request.body.encode(), headers
                    )
                    if status != 303:
                        raise BenchError(f"a delayed submit answered {status}")
                    time.sleep(0.1)
                deadline = time.monotonic() + p.delay_seconds + 30
                while True:
                    found = self.main.call("lateness", slug="bench-delay")
                    if len(found["lateness"]) >= p.delays or time.monotonic() > deadline:
                        break
                    time.sleep(0.5)
            finally:
                self.processes.stop(worker, grace=40)
        except BenchError as exc:
            self.record("delay_lateness", None, error=str(exc))
            return
        late = sorted(found["lateness"])
        self.sample(kind="delays", lateness=late, waiting=found["waiting"])
        if len(late) < p.delays:
            self.record("delay_lateness", None, error=f"{p.delays - len(late)} of {p.delays} delays never started")
            return
        p99 = late[min(len(late) - 1, round(0.99 * (len(late) - 1)))]
        early = sum(1 for value in late if value < 0)
        self.record(
            "delay_lateness", (p99, early), f"min {late[0]:.2f} s, max {late[-1]:.2f} s, n={len(late)}, {early} early"
        )

    def wait_for_log(self, process, text, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise BenchError(f"{process.bench_name} exited (see {process.bench_log})")
            if text in process.bench_log.read_bytes():
                return
            time.sleep(0.2)
        raise BenchError(f"{process.bench_name} did not say {text!r} within {timeout} s")

    # --- figure 10

    def scale(self):
        p = self.profile
        small, big = p.scale
        self.say(f"figure 10: seeding {small:,} and {big:,} finished runs")
        sides = {}
        try:
            for label, count in (("small", small), ("big", big)):
                database = f"ours_{label}"
                self.db.copy("ours_tmpl", database)
                helper = self.ours_helper(database)
                template = helper.call("submit", slug="bench-submit", data=ANSWERS)[0]
                helper.call("jobs_run", token=template)  # the queue's own job, run here: a finished run
                made = helper.call(
                    "copies_create", token=template, n=count - 1, backdate_seconds=30 * 86400, timeout=600
                )
                status_token = helper.call("submit", slug="bench-status", data=ANSWERS)[0]
                stats = helper.call("stats")
                self.sample(kind="seed", name=label, finished_runs=count, **made, stats=stats)
                self.say(f"  {count:,} finished runs: {made['rows']:,} rows in {made['seconds']} s")
                sides[label] = {"helper": helper, "server": self.ours_server(database), "token": status_token}
            for side in sides.values():
                side["server"].start()
            for side in sides.values():
                side["server"].wait_ready()
                side["csrf"] = side["server"].csrf("/f/bench-submit/")
        except BenchError as exc:
            for key in ("scale_submit", "scale_status", "scale_sweep", "scale_sweep_ms"):
                self.record(key, None, error=str(exc))
            return
        sweep_dead = {}
        for round_ in range(p.rounds):
            if round_ and not self.time_left(for_seconds=4 * p.scale_seconds + 10):
                break
            results = {}
            steps = []
            for label in ("small", "big"):
                side = sides[label]
                steps.append((f"submit_{label}", side["server"], [form_post("/f/bench-submit/", side["csrf"])], {303}))
                steps.append(
                    (f"status_{label}", side["server"], [page_get(f"/r/{side['token']}/status/", htmx=True)], {200})
                )
            for name, server, requests, expect in self.interleaved(round_, steps):
                results[name] = self.load(round_, f"scale_{name}", server, requests, expect, seconds=p.scale_seconds)
            self.ratio("scale_submit", round_, results["submit_big"], results["submit_small"])
            self.ratio("scale_status", round_, results["status_big"], results["status_small"])
            # The sweep is timed against history, as the figure says: the runs this round's submit loads left
            # running (their jobs unrun: no worker here) are stopped first, on both sides alike.
            for side in sides.values():
                try:
                    side["helper"].call("runs_cancel", slugs=["bench-submit"], timeout=120)
                except BenchError as exc:
                    self.say(f"  could not stop the runs of the submit load: {exc}")
            sweeps = {}
            for label in self.interleaved(round_, ["small", "big"]):
                if label in sweep_dead:
                    sweeps[label] = {"problem": sweep_dead[label]}
                    continue
                try:
                    result = sides[label]["helper"].call(
                        "sweep_time", passes=p.sweep_passes, timeout=p.sweep_timeout * p.sweep_passes
                    )
                except BenchError as exc:
                    sweep_dead[label] = f"a sweep pass took longer than {p.sweep_timeout} s ({exc})"
                    sweeps[label] = {"problem": sweep_dead[label]}
                    continue
                self.sample(kind="sweep", round=round_, name=label, **result)
                sweeps[label] = result
            self.ratio("scale_sweep", round_, sweeps["small"], sweeps["big"], field="ms", unit="ms")
            if sweeps["big"].get("problem"):
                self.record("scale_sweep_ms", None, error=sweeps["big"]["problem"])
            else:
                self.record(
                    "scale_sweep_ms",
                    sweeps["big"]["ms"],
                    f"{big:,}: {sweeps['big']['ms']:.1f} ms, {small:,}: "
                    + (f"{sweeps['small']['ms']:.1f} ms" if not sweeps["small"].get("problem") else "-"),
                )
        for side in sides.values():
            side["server"].stop()

    # --- the whole run

    def time_left(self, for_seconds):
        return self.elapsed() + for_seconds < self.args.budget

    def run(self):
        p = self.profile
        self.setup()
        self.queries()
        self.query_profile()
        round_seconds = None
        for round_ in range(p.rounds):
            if round_seconds and not self.time_left(for_seconds=round_seconds + 150):
                self.say(f"skipping the remaining rounds: the budget is {self.args.budget} s")
                break
            begun = self.elapsed()
            try:
                self.web_round(round_)
            except BenchError as exc:
                self.say(f"round {round_ + 1} broke off: {exc}")
                for key in (
                    "submit_vs_async",
                    "submit_vs_bare",
                    "latency_five_vs_empty",
                    "status_vs_read",
                    "drain_vs_raw",
                    "callback_vs_bare",
                    "rss_vs_minimal",
                ):
                    self.errors[key].append(f"round {round_ + 1} broke off: {exc}")
            round_seconds = self.elapsed() - begun
        self.delays()
        self.ours_web.stop()
        self.ref_web.stop()
        self.scale()

    def cleanup(self, failed=False):
        """Stop everything, drop the databases; the work directory goes too, but for its logs after a failure."""
        for helper in self.helpers:
            helper.stop()
        self.processes.stop_all()
        try:
            self.db.drop_all()
        finally:
            failed = failed or any(self.errors.values())
            if self.args.keep:
                print(f"work directory kept: {self.workdir}")
            elif failed:
                for database in self.workdir.glob("*.sqlite3*"):
                    database.unlink()
                print(f"something failed: the logs are in {self.workdir / 'logs'}")
            else:
                shutil.rmtree(self.workdir, ignore_errors=True)

    # --- the table

    def figures(self):
        p = self.profile
        names = {"rss": f"{p.rss_requests:,}", "small": f"{p.scale[0]:,}", "big": f"{p.scale[1]:,}"}
        rows = []
        for key, number, what, op, goal in FIGURES:
            values, errors = self.values[key], self.errors[key]
            row = {
                "key": key,
                "figure": number,
                "what": what.format(**names),
                "goal_op": op,
                "goal": goal,
                "values": values,
                "details": self.details[key],
                "errors": errors,
                "rounds": len(values),
            }
            if key == "status_queries":
                if values:
                    small, big = values[0]
                    row.update(shown=f"{small} vs {big}", passed=small == big, median=None)
            elif key == "delay_lateness":
                if values:
                    p99, early = values[0]
                    row.update(shown=f"{p99:.2f} s", median=p99, passed=p99 <= goal and early == 0)
            elif values:
                median = statistics.median(values)
                shown = f"{median:.2f} ({min(values):.2f}–{max(values):.2f})" if len(values) > 1 else f"{median:.2f}"
                if key == "scale_sweep_ms":
                    shown = (
                        f"{median:.1f} ({min(values):.1f}–{max(values):.1f})" if len(values) > 1 else f"{median:.1f}"
                    )
                passed = median >= goal if op == ">=" else median <= goal
                row.update(shown=shown, median=median, passed=passed)
            if "shown" not in row:
                row.update(shown="—", median=None, passed=False)
            row["result"] = "pass" if row["passed"] else ("ERROR" if not values else "FAIL")
            rows.append(row)
        return rows

    def table(self, rows):
        goal_text = {">=": "≥ {}", "<=": "≤ {}", "==": "equal"}
        lines = []
        header = f"{'#':<4} {'figure':<80} {'goal':<7} {'median (min–max)':<20} {'rounds':>6}  result"
        lines.append(header)
        lines.append("-" * len(header))
        for row in rows:
            goal = goal_text[row["goal_op"]].format(row["goal"])
            lines.append(
                f"{row['figure']:<4} {row['what']:<80} {goal:<7} {row['shown']:<20} {row['rounds']:>6}  {row['result']}"
            )
        lines.append("")
        for row in rows:
            detail = "; ".join(d for d in row["details"] if d)
            if detail:
                lines.append(f"{row['figure']:<4} {detail}")
            for error in row["errors"]:
                lines.append(f"{row['figure']:<4} error: {error}")
        if self.query_counts:
            lines.append("")
            lines.append("Not figures: database work per request or job, our app, in process (second occurrence):")
            for name, counts in self.query_counts.items():
                if name == "error":
                    lines.append(f"  error: {counts}")
                    continue
                written = " ".join(
                    f"{counts[k]} {k}" for k in ("select", "insert", "update", "delete", "other") if counts[k]
                )
                transactions = (
                    f", {counts['write_transactions']} write transaction(s)"
                    if counts.get("write_transactions") is not None
                    else ""
                )
                lines.append(f"  {name:<22} {counts['queries']:>3} queries ({written}){transactions}")
        return "\n".join(lines)

    def report(self):
        rows = self.figures()
        text = self.table(rows)
        title = (
            f"make bench — {self.db.label}, {'quick' if self.profile.quick else 'full'}, "
            f"{self.elapsed():.0f} s, {datetime.now().isoformat(timespec='seconds')}"
        )
        print("\n" + title + "\n" + text, flush=True)
        output = Path(self.args.json) if self.args.json else RESULTS / f"latest-{self.db.label}.json"
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(
            json.dumps(
                {
                    "title": title,
                    "meta": self.meta(),
                    "figures": rows,
                    "query_profile": self.query_counts,
                    "samples": self.samples,
                    "table": text,
                },
                indent=1,
                default=str,
            )
        )
        print(f"\nraw results: {output}")
        return rows

    def meta(self):
        def run(*argv):
            try:
                return subprocess.run(argv, capture_output=True, text=True, timeout=10, cwd=ROOT).stdout.strip()
            except (OSError, subprocess.TimeoutExpired):
                return ""

        return {
            "database": self.db.label,
            "quick": self.profile.quick,
            "seconds": round(self.elapsed(), 1),
            "finished": datetime.now(UTC).isoformat(timespec="seconds"),
            "commit": run("git", "rev-parse", "HEAD"),
            "changed_files": len(run("git", "status", "--porcelain").splitlines()),
            "wrk": run("wrk", "--version").splitlines()[0] if run("wrk", "--version") else "",
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "loadavg": os.getloadavg(),
            "profile": vars(self.profile),
            "load": {
                "connections": CONNECTIONS,
                "threads": THREADS,
                "gunicorn_workers": GUNICORN_WORKERS,
                "queue_workers": QUEUE_WORKERS,
            },
        }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny counts and one round (make test runs this)")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("BENCH_DATABASE_URL", ""),
        help="a PostgreSQL server to run on (default: $BENCH_DATABASE_URL; empty: SQLite)",
    )
    parser.add_argument("--sqlite", action="store_true", help="run on SQLite even if BENCH_DATABASE_URL is set")
    parser.add_argument("--prefix", default="bench", help="PostgreSQL: the names of the bench's databases")
    parser.add_argument("--json", help="where to write the raw results (default bench/results/latest-<db>.json)")
    parser.add_argument("--budget", type=float, default=570, help="seconds: rounds that would end later are skipped")
    parser.add_argument("--rounds", type=int, help="rounds of every figure (default 3; --quick 1)")
    parser.add_argument("--seconds", type=int, help="length of each throughput load, s (default 4; --quick 1)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, SQLite files)")
    args = parser.parse_args(argv)
    if args.sqlite:
        args.database_url = ""

    def interrupted(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # SIGINT too: a background job ignores it
        signal.signal(signum, interrupted)
    bench = Bench(args)
    try:
        bench.run()
    except KeyboardInterrupt:
        print("interrupted: stopping every process the bench started", file=sys.stderr)
        bench.cleanup()
        return 130
    except BenchError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        traceback.print_exc()
        bench.report()
        bench.cleanup(failed=True)
        return 1
    except BaseException:
        bench.cleanup(failed=True)
        raise
    rows = bench.report()
    bench.cleanup()
    return 0 if all(row["values"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

"""The receiver of every side effect in the fault tests: counts executions per Idempotency-Key, with their times.

``http_request`` sends the task id as ``Idempotency-Key`` on every attempt. The recorder
keeps, per key, each execution's start (request received) and end (answer written, or
the client gone), so a test can tell apart:

- a **parallel overlap**: two executions of one key whose intervals intersect, i.e. two
  processes ran the same step at the same time (a lease taken over too early): never allowed;
- a **sequential re-run**: the key executed again after the earlier execution ended (a
  killed or cut-off attempt run again): allowed after a fault, each time as a new attempt;
- an **uncounted** execution: more executions than the task has attempts (a re-run that was
  not counted before its side effect): never allowed.

How the recorder answers is chosen per request by the URL's query (the path is what is
recorded): ``?sleep=S`` answers after S seconds (``&once=1``: only the key's first
execution is slow), ``?hold=1`` waits for ``release()`` (bounded), ``?status=N`` answers N,
``?answer=nan`` answers a JSON body holding NaN and Infinity.
"""

import hashlib
import hmac
import select
import socket
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

from tests.support.servers import LocalServer, QuietHandler

HOLD_SECONDS = 30.0
ANSWERS = {
    "ok": b'{"ok": true}',
    "nan": b'{"score": NaN, "limit": Infinity, "floor": -Infinity, "huge": 1e999, "ok": true}',
}


@dataclass
class Execution:
    key: str
    path: str
    start: float  # time.monotonic() when the request arrived
    port: int
    sender: str = "?"
    end: float | None = None  # when the answer was written, or the client was found gone
    outcome: str = "running"  # answered | client gone | running

    def ended(self, now):
        return self.end if self.end is not None else now


@dataclass
class Analysis:
    executions: int = 0
    keys: int = 0
    parallel_overlaps: int = 0  # pairs of executions of one key that overlapped in time
    sequential_reruns: int = 0  # executions after the first of a key, none overlapping
    uncounted: int = 0  # keys executed more often than their task's attempts
    missing: int = 0  # completed tasks the recorder never saw
    cut: int = 0  # executions whose client went away before the answer
    overlapping_keys: list = field(default_factory=list)

    def fields(self):
        """What a FAULTS line shows."""
        return {
            "executions": self.executions,
            "parallel_overlaps": self.parallel_overlaps,
            "sequential_reruns": self.sequential_reruns,
            "uncounted": self.uncounted,
            "missing": self.missing,
            "cut": self.cut,
        }


class Recorder:
    """A threading HTTP server on 127.0.0.1 recording each execution per Idempotency-Key.

    ``secrets``: name → EVENTS_HTTP_SIGNING_SECRET of a worker; the X-Signature of a
    request then names the worker that sent it (``Execution.sender``).
    """

    def __init__(self, secrets=None):
        self.lock = threading.Lock()
        self.executions = defaultdict(list)  # key -> [Execution]
        self.secrets = dict(secrets or {})
        self.held = threading.Event()  # set while a ?hold=1 request waits
        self.held_port = None
        self.release_event = threading.Event()
        recorder = self

        class Handler(QuietHandler):
            protocol_version = "HTTP/1.1"

            def handle_any(self):
                body = self.read_body()
                recorder.serve(self, body)

            do_POST = do_PUT = do_GET = do_PATCH = do_DELETE = handle_any

        self.server = LocalServer(Handler, poll_interval=0.1).start()
        self.port = self.server.port

    # --- configuration --------------------------------------------------------------------

    def url(self, path, **query):
        tail = "&".join(f"{name}={value}" for name, value in query.items())
        return f"http://127.0.0.1:{self.port}{path}" + (f"?{tail}" if tail else "")

    def release(self):
        self.release_event.set()

    def close(self):
        self.release_event.set()
        self.server.close()

    # --- serving ----------------------------------------------------------------------------

    def serve(self, handler, body):
        parts = urlsplit(handler.path)
        query = {name: values[-1] for name, values in parse_qs(parts.query).items()}
        key = handler.headers.get("Idempotency-Key", "")
        execution = Execution(
            key=key,
            path=parts.path,
            start=time.monotonic(),
            port=handler.client_address[1],
            sender=self._sender(handler.headers.get("X-Signature", ""), body),
        )
        with self.lock:
            first = not self.executions[key]
            self.executions[key].append(execution)
        if "hold" in query:
            self.held_port = execution.port
            self.held.set()
            self._wait(handler, execution, lambda: self.release_event.is_set(), HOLD_SECONDS)
        seconds = float(query.get("sleep", 0))
        if seconds and (first or query.get("once") != "1"):
            self._wait(handler, execution, lambda: False, seconds)
        if execution.outcome == "client gone":
            return
        answer = ANSWERS[query.get("answer", "ok")]
        try:
            handler.answer(
                int(query.get("status", 200)), answer, {"Content-Type": "application/json", "Connection": "close"}
            )
            handler.wfile.flush()
            execution.outcome = "answered"
        except OSError:
            execution.outcome = "client gone"
        execution.end = time.monotonic()

    @staticmethod
    def _wait(handler, execution, done, seconds):
        """Wait up to ``seconds`` (or until ``done()``), ending early when the client goes away."""
        deadline = time.monotonic() + seconds
        connection = handler.connection
        while time.monotonic() < deadline and not done():
            readable, _, _ = select.select([connection], [], [], 0.05)
            if readable:
                try:
                    gone = connection.recv(1, socket.MSG_PEEK) == b""
                except OSError:
                    gone = True
                if gone:
                    execution.outcome = "client gone"
                    execution.end = time.monotonic()
                    return

    def _sender(self, signature, body):
        for name, secret in self.secrets.items():
            expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
            if hmac.compare_digest(signature, expected):
                return name
        return "?"

    # --- reading ----------------------------------------------------------------------------

    def snapshot(self):
        with self.lock:
            return {key: list(runs) for key, runs in self.executions.items()}

    def total(self):
        with self.lock:
            return sum(len(runs) for runs in self.executions.values())

    def started_between(self, start, end):
        """Executions that started within [start, end] (time.monotonic())."""
        return [run for runs in self.snapshot().values() for run in runs if start <= run.start <= end]

    def analyse(self, tasks):
        """Compare what was executed with ``tasks`` ({task id: (attempt, status)} of the http_request steps)."""
        now = time.monotonic()
        seen = self.snapshot()
        result = Analysis()
        for key, runs in seen.items():
            if key not in tasks:
                continue
            runs = sorted(runs, key=lambda run: run.start)
            result.executions += len(runs)
            result.keys += 1
            result.cut += sum(1 for run in runs if run.outcome == "client gone")
            overlaps = sum(1 for i, a in enumerate(runs) for b in runs[i + 1 :] if b.start < a.ended(now))
            if overlaps:
                result.parallel_overlaps += overlaps
                result.overlapping_keys.append(key)
            else:
                result.sequential_reruns += len(runs) - 1
            attempt, _ = tasks[key]
            if len(runs) > max(attempt, 1):
                result.uncounted += 1
        result.missing = sum(1 for key, (_, status) in tasks.items() if status == "complete" and not seen.get(key))
        return result

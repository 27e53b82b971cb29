"""Hostile input against a real gunicorn: a clear JSON 4xx, never a 500, and the server keeps answering.

tests/events/test_hostile_input.py checks each answer in-process (Django's test client,
SQLite or DATABASE_URL) and tests/e2e/test_chunked_bodies.py chunked bodies under
gunicorn on SQLite. This test sends the same kinds of input the way an attacker would:
over sockets to gunicorn (2 workers, threads) in front of PostgreSQL (the session's
throw-away cluster, where NaN and NUL used to be 500s) and of SQLite, and big: 250,000
log lines in one PUT, again and again, while another client checks that /healthz stays
quick. It prints one FAULTS line per database with the slowest answers and the size of a
task at the log cap.
"""

import http.client
import json
import re
import socket
import threading
import time

import httpx
import pytest

from . import harness as h

pytestmark = [pytest.mark.faults, pytest.mark.xdist_group("faults"), h.TIMEOUT]

CALLBACK = "/api/external-events/callback/"
LIMIT = 1024 * 1024  # EVENTS_API_MAX_BODY_BYTES, the shipped default
NON_FINITE = ["NaN", "Infinity", "-Infinity", "1e999"]
SLOW_SECONDS = 10  # no single answer here may take longer, on a busy machine
HEALTH_SECONDS = 5  # /healthz, asked every 0.2 s during the floods


def send_chunked(port, method, path, body, headers, *, chunk_size=64 * 1024):
    """``body`` in chunks without Content-Length over a raw socket: (status, headers, body) of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        head = [
            f"{method} {path} HTTP/1.1",
            f"Host: 127.0.0.1:{port}",
            "Transfer-Encoding: chunked",
            "Connection: close",
            *(f"{name}: {value}" for name, value in headers.items()),
        ]
        try:
            sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
            for start in range(0, len(body), chunk_size):
                part = body[start : start + chunk_size]
                sock.sendall(b"%x\r\n%s\r\n" % (len(part), part))
            sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered before the end of the body: read its answer
        response = http.client.HTTPResponse(sock, method=method)
        response.begin()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()


class Client:
    """Every request timed and its status kept, so the test can say: no 5xx at all, and the slowest answer."""

    def __init__(self, base_url, key):
        self.base_url = base_url
        self.http = self.connect()
        self.auth = {"Authorization": f"Bearer {key}"}
        self.answers = []  # (label, status, seconds, bytes)

    def send(self, label, method, path, *, raw=None, auth=True, **kwargs):
        headers = {**(self.auth if auth else {}), **kwargs.pop("headers", {})}
        if raw is not None:
            kwargs["content"] = raw if isinstance(raw, bytes) else raw.encode()
            headers["Content-Type"] = "application/json"
        started = time.monotonic()
        response = self.http.request(method, path, headers=headers, **kwargs)
        self.answers.append((label, response.status_code, time.monotonic() - started, len(response.content)))
        if response.status_code == 413:
            # The server refused the body without reading it, and may close the connection once it has
            # answered (RFC 9112 9.6): a client must not send its next request on that connection.
            self.http.close()
            self.http = self.connect()
        return response

    def connect(self):
        return httpx.Client(base_url=self.base_url, timeout=httpx.Timeout(120, connect=10), follow_redirects=False)

    def slowest(self, prefix=""):
        return max((s for label, _, s, _ in self.answers if label.startswith(prefix)), default=0.0)


def json_error(response, status, code=None):
    assert response.status_code == status, (response.request.url, response.status_code, response.text[:300])
    assert response.headers["content-type"].startswith("application/json"), response.headers["content-type"]
    error = response.json()["error"]
    assert set(error) == {"code", "message", "details"}, error
    if code:
        assert error["code"] == code, error
    return error


def task_row(stack, task_id):
    rows = stack.rows(
        "SELECT status, output, logs, subtext, error FROM events_runtask WHERE id = %s",
        (stack.database.id_param(task_id),),
    )
    return rows[0]


class HealthWatch(threading.Thread):
    """GET /healthz every 0.2 s while the floods run: the slowest answer, and any that was not 200."""

    def __init__(self, base_url):
        super().__init__(daemon=True)
        self.base_url = base_url
        self.stop = threading.Event()
        self.slowest = 0.0
        self.bad = []

    def run(self):
        with httpx.Client(timeout=30) as client:
            while not self.stop.is_set():
                started = time.monotonic()
                try:
                    status = client.get(self.base_url + "/healthz").status_code
                except httpx.HTTPError as exc:
                    status = repr(exc)
                self.slowest = max(self.slowest, time.monotonic() - started)
                if status != 200:
                    self.bad.append(status)
                self.stop.wait(0.2)


@pytest.mark.parametrize("database", ["postgres", "sqlite"])
def test_hostile_input_to_gunicorn_is_a_json_4xx_and_never_a_500(make_stack, recorder, database):
    stack = make_stack(database)
    stack.import_form(
        h.form_document(
            "hostile",
            [
                h.http_step("wait", recorder.url("/wait"), wait_for_callback=True, callback_timeout_seconds=3600),
            ],
        )
    )
    stack.import_form(h.form_document("nan-answer", [h.http_step("nan", recorder.url("/nan", answer="nan"))]))
    key = stack.create_api_key("hostile")
    admin = stack.create_superuser()
    stack.start_web()
    client = Client(stack.web_url, key)
    health = HealthWatch(stack.web_url)
    health.start()
    try:
        figures = _hostile_requests(stack, client, admin)
    finally:
        health.stop.set()
        health.join(30)
    statuses = [status for _, status, _, _ in client.answers]
    server_errors = [(label, status) for label, status, _, _ in client.answers if status >= 500]
    log = stack.web.output()
    h.report(
        f"hostile-input-gunicorn-{database}",
        requests=len(statuses),
        server_errors=len(server_errors),
        **figures,
        slowest_answer=f"{client.slowest():.2f}s",
        healthz_slowest=f"{health.slowest:.2f}s",
        healthz_not_200=len(health.bad),
    )
    assert server_errors == [], server_errors
    assert stack.web.running(), log[-3000:]
    assert "Traceback" not in log and "Internal Server Error" not in log, log[-3000:]
    assert health.bad == [], health.bad[:5]
    assert health.slowest < HEALTH_SECONDS, f"/healthz took {health.slowest:.1f} s during the floods"
    assert client.slowest() < SLOW_SECONDS, sorted(client.answers, key=lambda a: -a[2])[:3]
    assert httpx.get(stack.web_url + "/healthz", timeout=10).status_code == 200


def _hostile_requests(stack, client, admin):
    figures = {}
    tokens = stack.submit("hostile", 4, threads=1)
    assert len(tokens) == 4
    waiting = [t["id"] for t in stack.tasks("http_request") if t["status"] == "awaiting"]
    assert len(waiting) == 4, stack.tasks("http_request")
    nan_task, flood_task, capped_task, chunked_task = waiting

    # 1. NaN, Infinity, 1e999 in a callback's output and logs, and in a progress update's logs.
    before = task_row(stack, nan_task)
    for number in NON_FINITE:
        for label, method, path, raw in [
            (
                "output",
                "POST",
                CALLBACK,
                f'{{"taskId": "{nan_task}", "status": "SUCCESS", "output": {{"x": {number}}}}}',
            ),
            ("logs", "POST", CALLBACK, f'{{"taskId": "{nan_task}", "status": "SUCCESS", "logs": ["ok", {number}]}}'),
            ("progress", "PUT", f"/api/event-workflow-tasks/{nan_task}", f'{{"subtext": "s", "logs": [{number}]}}'),
        ]:
            json_error(client.send(f"nan-{label}", method, path, raw=raw), 400, "malformed_json")
    assert task_row(stack, nan_task) == before, "a refused callback changed the task"

    # 2. An http_request whose answer holds NaN: stored (as text) or failed at once, never left running.
    answered = stack.submit("nan-answer", 1, threads=1)
    assert len(answered) == 1
    nan_steps = [t for t in stack.tasks("http_request") if t["name"] == "nan"]
    assert [t["status"] for t in nan_steps] in (["complete"], ["failed"]), nan_steps
    figures["nan_answer_step"] = nan_steps[0]["status"]

    # 3. 250,000 log lines in one PUT (just under the body limit), five times: a quick 413 each time.
    flood = json.dumps({"subtext": "flood", "logs": ["x"] * 250_000}, separators=(",", ":"))
    assert len(flood) < LIMIT
    for _ in range(5):
        json_error(
            client.send("flood-250k", "PUT", f"/api/event-workflow-tasks/{flood_task}", raw=flood),
            413,
            "too_many_log_lines",
        )
    json_error(
        client.send(
            "flood-250k-callback",
            "POST",
            CALLBACK,
            raw=json.dumps({"taskId": flood_task, "status": "SUCCESS", "logs": ["x"] * 250_000}, separators=(",", ":")),
        ),
        413,
        "too_many_log_lines",
    )
    json_error(
        client.send(
            "flood-over-limit",
            "PUT",
            f"/api/event-workflow-tasks/{flood_task}",
            raw=json.dumps({"subtext": "flood", "logs": ["x" * 10] * 250_000}),
        ),
        413,
        "payload_too_large",
    )
    flood_times = [s for label, _, s, _ in client.answers if label == "flood-250k"]
    figures["flood_250k_put"] = "/".join(f"{s:.2f}" for s in flood_times) + "s"
    assert task_row(stack, flood_task)["subtext"] == "", "a refused flood changed the task"

    # 4. Fill a task past its log cap with the longest lines, in allowed calls; it stays at the cap.
    line = "y" * 2400
    batch = json.dumps({"subtext": "filling", "logs": [line] * 400})
    for _ in range(8):  # 3,200 lines in all: the oldest make way, and each call stays as quick
        response = client.send("fill", "PUT", f"/api/event-workflow-tasks/{capped_task}", raw=batch)
        assert response.status_code == 200, response.text[:300]
    fill_times = [s for label, _, s, _ in client.answers if label == "fill"]
    figures["fill_put"] = "/".join(f"{s:.2f}" for s in fill_times) + "s"
    detail = client.send("task-at-cap", "GET", f"/api/tasks/{capped_task}")
    assert detail.status_code == 200
    logs = detail.json()["logs"]
    assert len(logs) == 1000, len(logs)  # EVENTS_TASK_LOG_MAX_LINES, the shipped default
    assert max(len(entry["line"]) for entry in logs) < 2100  # cut at 2,000 characters, with a marker
    assert len(detail.content) < 2_500_000, len(detail.content)
    figures["task_at_cap_get"] = f"{client.slowest('task-at-cap'):.2f}s/{len(detail.content) // 1024}KiB"

    run_id = stack.rows("SELECT run_id FROM events_runtask WHERE id = %s", (stack.database.id_param(capped_task),))[0][
        "run_id"
    ]
    with httpx.Client(base_url=stack.web_url, timeout=60, follow_redirects=False) as browser:
        login = browser.get("/admin/login/")
        csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', login.text).group(1)
        logged_in = browser.post(
            "/admin/login/?next=/admin/",
            data={"username": admin[0], "password": admin[1], "csrfmiddlewaretoken": csrf, "next": "/admin/"},
            headers={"Referer": stack.web_url + "/admin/login/"},
        )
        assert logged_in.status_code == 302, logged_in.text[:500]
        for label, path in [
            ("admin-run-at-cap", f"/admin/events/run/{run_id}/change/"),
            ("admin-step-at-cap", f"/admin/events/runtask/{capped_task}/change/"),
        ]:
            started = time.monotonic()
            page = browser.get(path)
            took = time.monotonic() - started
            client.answers.append((label, page.status_code, took, len(page.content)))
            assert page.status_code == 200, (label, page.status_code)
            figures[label.replace("-", "_")] = f"{took:.2f}s/{len(page.content) // 1024}KiB"

    # 5. A NUL byte in path tokens and in JSON text.
    for path in ["/r/%00/", "/r/a%00b/", "/r/a%00b/status/", "/r/%00/status/"]:
        response = client.send("nul-page", "GET", path, auth=False)
        assert response.status_code == 404, (path, response.status_code)
    for path in ["/api/tasks/%00", "/api/tasks/a%00b", "/api/runs/%00", "/api/records/a%00b"]:
        json_error(client.send("nul-api", "GET", path), 404)
    json_error(client.send("nul-progress-path", "PUT", "/api/event-workflow-tasks/a%00b", raw='{"subtext": "x"}'), 404)
    json_error(
        client.send("nul-text", "PUT", f"/api/event-workflow-tasks/{chunked_task}", raw='{"subtext": "a\\u0000b"}'), 422
    )

    # 6. Chunked bodies: a valid one is read and applied; one over the limit is a 413 in the JSON shape.
    headers = {
        "Authorization": f"Bearer {client.auth['Authorization'].split()[-1]}",
        "Content-Type": "application/json",
    }
    port = stack.web_port
    started = time.monotonic()
    status, _, body = send_chunked(
        port,
        "PUT",
        f"/api/event-workflow-tasks/{chunked_task}",
        json.dumps({"subtext": "chunked", "logs": ["c1", "c2"]}).encode(),
        headers,
        chunk_size=9,
    )
    client.answers.append(("chunked-valid", status, time.monotonic() - started, len(body)))
    assert status == 200, body[:300]
    assert task_row(stack, chunked_task)["subtext"] == "chunked"
    started = time.monotonic()
    status, answer_headers, body = send_chunked(
        port,
        "PUT",
        f"/api/event-workflow-tasks/{chunked_task}",
        json.dumps({"subtext": "big", "logs": ["z" * 1000] * 2600}).encode(),
        headers,
    )
    client.answers.append(("chunked-over-limit", status, time.monotonic() - started, len(body)))
    assert status == 413, body[:300]
    assert answer_headers["content-type"].startswith("application/json")
    assert json.loads(body)["error"]["code"] == "payload_too_large"
    assert task_row(stack, chunked_task)["subtext"] == "chunked"
    return figures
